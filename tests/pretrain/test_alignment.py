"""The dense alignment loss: finite, decreasing under training, and minimal when captions match."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from textvision.pretrain.alignment import DenseAlignmentHeads, dense_alignment_loss, mean_pool


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    assert torch.allclose(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(mean_pool(hidden, torch.zeros_like(mask)), torch.zeros(1, 2))  # empty text: no NaN


def test_loss_is_lower_when_patches_match_their_captions():
    torch.manual_seed(0)
    heads = DenseAlignmentHeads(vision_width=8, text_width=8, dim=8)
    with torch.no_grad():
        heads.patch_proj.weight.copy_(torch.eye(8))
        heads.text_proj.weight.copy_(torch.eye(8))
        heads.patch_proj.bias.zero_()
        heads.text_proj.bias.zero_()
    captions = torch.randn(3, 8)
    patches = torch.randn(2, 5, 8)
    targets = torch.zeros(3, 2, 5, dtype=torch.bool)
    targets[0, 0, 1] = targets[1, 0, 3] = targets[2, 1, 4] = True
    image = torch.tensor([0, 0, 1])
    matched = patches.clone()
    matched[0, 1], matched[0, 3], matched[1, 4] = captions[0], captions[1], captions[2]
    t = heads.embed_text(captions)
    random_loss = dense_alignment_loss(heads, heads.embed_patches(patches), t, targets, image)
    matched_loss = dense_alignment_loss(heads, heads.embed_patches(matched), t, targets, image)
    assert all(torch.isfinite(v) for v in random_loss.values())
    assert matched_loss["grounding"] < random_loss["grounding"]
    assert matched_loss["sigmoid"] < random_loss["sigmoid"]


def test_loss_trains_patch_features_towards_their_captions():
    torch.manual_seed(0)
    heads = DenseAlignmentHeads(vision_width=6, text_width=4, dim=4)
    patches = torch.nn.Parameter(torch.randn(2, 4, 6))
    captions = torch.randn(2, 4)
    targets = torch.zeros(2, 2, 4, dtype=torch.bool)
    targets[0, 0, 2] = targets[1, 1, 0] = True
    image = torch.tensor([0, 1])
    optimizer = torch.optim.Adam([patches, *heads.parameters()], lr=0.05)
    first = None
    for _ in range(60):
        loss = dense_alignment_loss(
            heads, heads.embed_patches(patches), heads.embed_text(captions), targets, image
        )
        first = loss["loss"].item() if first is None else first
        optimizer.zero_grad()
        loss["loss"].backward()
        optimizer.step()
    assert loss["loss"].item() < 0.5 * first
    sim = heads.similarity(heads.embed_text(captions), heads.embed_patches(patches))  # (2, 2, 4)
    assert int(sim[0, 0].argmax()) == 2 and int(sim[1, 1].argmax()) == 0
    assert F.normalize(heads.embed_patches(patches), dim=-1).shape == (2, 4, 4)
