"""TextAwareEncoder end to end: shapes for every variant x backbone x pruning setting, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from textvision.data.images import to_rgb_tensor
from textvision.encoder import TextAwareEncoder
from textvision.fusion import FUSIONS
from textvision.pruning import SCORERS, TextSimilarityScorer
from textvision.text import TextEncoder

FAMILIES = ["timm", "timm_nocls", "open_clip"]
#: pruning schedules (which blocks, how many, merged or not), each run with every registered scorer
SCHEDULES = {
    "no_pruning": ({}, 16),
    "keep5_after1": ({"prune_at": (1,), "keep_tokens": 5}, 5),
    "half_twice_merge": ({"prune_at": (0, 2), "keep_ratio": 0.5, "merge_dropped": True}, 4),
    "keep6_after2_merge": ({"prune_at": (2,), "keep_tokens": 6, "merge_dropped": True}, 6),
}
PRUNING = [("no_pruning", None)] + [(s, scorer) for s in list(SCHEDULES)[1:] for scorer in sorted(SCORERS)]


def _scorer_settings(scorer: str, text_dim: int) -> dict:
    """A registered scorer by its short name, built when its class needs settings."""
    try:
        SCORERS[scorer]()
    except ValueError:  # e.g. the similarity scorer: its widths are given
        return {"scorer": scorer, "similarity": SCORERS[scorer](vision_width=32, text_width=text_dim, dim=8)}
    return {"scorer": scorer}


@pytest.fixture(scope="module")
def bert_encoder(tiny_bert_dir):
    return TextEncoder(model_name=str(tiny_bert_dir), max_length=12)


@pytest.mark.parametrize(("schedule", "scorer"), PRUNING, ids=lambda v: str(v))
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_output_shapes_counts_and_indices(make_backbone, bert_encoder, fusion, family, schedule, scorer):
    config, kept = SCHEDULES[schedule]
    config = {**config, **(_scorer_settings(scorer, bert_encoder.width) if scorer else {})}
    backbone = make_backbone(family)
    declared = SCORERS.get(scorer)
    if declared is not None and declared.reads_fusion_relevance and not FUSIONS[fusion].attends_to_text:
        with pytest.raises(ValueError, match="no text-attending fusion"):
            TextAwareEncoder(backbone=backbone, text_encoder=bert_encoder, fusion=fusion, **config)
        return
    if declared is not None and declared.needs_cls_token and not backbone.has_cls_token:
        with pytest.raises(ValueError, match="CLS token"):
            TextAwareEncoder(backbone=backbone, text_encoder=bert_encoder, fusion=fusion, **config)
        return
    encoder = TextAwareEncoder(
        backbone=backbone, text_encoder=bert_encoder, fusion=fusion, backend="torch", **config
    )
    with torch.no_grad():
        for module in encoder.fusion.values():  # a trained-looking model: gates open
            for gate in module.gates():
                gate.fill_(0.7)
    images = torch.rand(2, 3, 32, 32)
    out = encoder(images, ["what colour is the small circle?", ""])
    prefix = backbone.num_prefix_tokens
    merged = int(config.get("merge_dropped", False))
    assert out.tokens.shape == (2, prefix + kept + merged, encoder.width) == (2, encoder.num_tokens(), 32)
    assert torch.isfinite(out.tokens).all()
    if scorer:
        assert out.kept_indices.shape == (2, kept) and out.kept_indices.dtype == torch.long
        assert (
            (out.kept_indices.diff(dim=1) > 0).all()
            and out.kept_indices.min() >= 0
            and out.kept_indices.max() < 16
        )
    else:
        assert out.kept_indices is None
    if scorer and declared.differentiable:  # the relevance is the scorer's softmax (what it selected by)
        assert out.relevance.shape == (2, 16) and torch.allclose(out.relevance.sum(1), torch.ones(2))
    elif FUSIONS[fusion].attends_to_text:
        assert out.relevance.shape == (2, 16) and out.relevance.dtype == torch.float32
        assert torch.isfinite(out.relevance).all() and (out.relevance >= 0).all()
        assert out.relevance[0].sum() > 0 and out.relevance[1].sum() == 0  # empty instruction: no relevance
    else:
        assert out.relevance is None


def test_text_pruning_keeps_the_most_relevant_patches(make_backbone, bert_encoder):
    encoder = TextAwareEncoder(
        backbone=make_backbone("timm"),
        text_encoder=bert_encoder,
        fusion="gated_xattn",
        prune_at=(1,),
        keep_tokens=4,
        backend="torch",
    ).eval()
    out = encoder(torch.rand(3, 3, 32, 32), ["red cat", "which side is the dog", "count"])
    # one pruning step at the relevance block: relevance of the kept patches is the top 4
    top = out.relevance.topk(4, dim=1).indices.sort(dim=1).values
    assert torch.equal(out.kept_indices, top)


def test_precomputed_text_features_give_the_same_answer(make_backbone, bert_encoder):
    encoder = TextAwareEncoder(
        backbone=make_backbone("open_clip"),
        text_encoder=bert_encoder,
        fusion="mutual",
        prune_at=(1,),
        keep_ratio=0.25,
    ).eval()
    images = torch.rand(2, 3, 32, 32)
    instructions = ["is the cat on the left", "how many objects"]
    direct = encoder(images, instructions)
    cached = encoder(images, text_features=encoder.encode_text(instructions))
    assert torch.equal(direct.tokens, cached.tokens) and torch.equal(direct.kept_indices, cached.kept_indices)


def test_bad_text_input_is_caught(make_backbone, bert_encoder):
    encoder = TextAwareEncoder(backbone=make_backbone("timm"), text_encoder=bert_encoder)
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="1 instructions for 2 images"):
        encoder(images, ["only one"])
    with pytest.raises(ValueError, match="pass instructions"):
        encoder(images)
    with pytest.raises(ValueError, match=r"\(B, T, 24\)"):
        encoder(images, text_features=(torch.zeros(2, 3, 7), torch.ones(2, 3, dtype=torch.bool)))
    with pytest.raises(ValueError, match="bool"):
        encoder(images, text_features=(torch.zeros(2, 3, 24), torch.ones(2, 3)))


def test_all_padding_empty_long_instructions_batch_of_one(make_backbone, bert_encoder):
    encoder = TextAwareEncoder(
        backbone=make_backbone("timm"),
        text_encoder=bert_encoder,
        fusion="gated_xattn",
        prune_at=(1,),
        keep_tokens=3,
        merge_dropped=True,
    )
    with torch.no_grad():
        for module in encoder.fusion.values():
            module.gate.fill_(1.0)
    long = "what is the colour of the cat in the image on the left " * 20
    out = encoder(torch.rand(3, 3, 32, 32), ["", "   ", long])
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.relevance).all()
    assert out.kept_indices[0].tolist() == [0, 1, 2]  # no text: deterministic first patches
    # an all-padding element inside a precomputed batch
    hidden = torch.randn(2, 4, 24)
    mask = torch.tensor([[True, True, False, False], [False, False, False, False]])
    out = encoder(torch.rand(2, 3, 32, 32), text_features=(hidden, mask))
    assert torch.isfinite(out.tokens).all()
    single = encoder(torch.rand(1, 3, 32, 32), ["red cat"])
    assert single.tokens.shape == (1, 1 + 3 + 1, 32)


def test_images_of_any_mode_and_size(make_backbone, bert_encoder):
    encoder = TextAwareEncoder(
        backbone=make_backbone("open_clip"),
        text_encoder=bert_encoder,
        fusion="gated_xattn",
        prune_at=(0,),
        keep_ratio=0.5,
    )
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8), mode="L"),
        Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8), mode="RGBA"),
        Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16)),  # 16-bit
    ]
    assert images[2].mode.startswith("I;16")
    batch = torch.stack([to_rgb_tensor(image, size=32) for image in images])
    out = encoder(batch, ["red", "blue", "green"])
    assert out.tokens.shape == (3, 1 + 8, 32) and torch.isfinite(out.tokens).all()
    other = encoder(
        torch.stack([to_rgb_tensor(image) for image in images]), ["a", "b", "c"]
    )  # 40 px: 5x5 grid
    assert other.tokens.shape == (3, 1 + 13, 32) and other.kept_indices.max() < 25
    with pytest.raises(ValueError, match="multiple of the patch size"):
        encoder(torch.rand(1, 3, 36, 36), ["red"])


def test_config_errors_name_the_setting(make_backbone):
    backbone = make_backbone("timm")
    with pytest.raises(ValueError, match="text_dim"):
        TextAwareEncoder(backbone=backbone)
    with pytest.raises(ValueError, match="unknown fusion 'cross'; registered"):
        TextAwareEncoder(backbone=backbone, text_dim=8, fusion="cross")
    with pytest.raises(ValueError, match="unknown scorer 'random'; registered"):
        TextAwareEncoder(backbone=backbone, text_dim=8, scorer="random")
    with pytest.raises(TypeError, match="not a Fusion"):
        TextAwareEncoder(backbone=backbone, text_dim=8, fusion=lambda **kw: torch.nn.Identity())
    with pytest.raises(ValueError, match=r"fusion_blocks \[7\] out of range"):
        TextAwareEncoder(backbone=backbone, text_dim=8, fusion_blocks=[0, 7])
    with pytest.raises(ValueError, match=r"prune_at \[3\]"):
        TextAwareEncoder(backbone=backbone, text_dim=8, prune_at=(3,), keep_ratio=0.5)
    with pytest.raises(ValueError, match=r"blocks \[1\]"):
        TextAwareEncoder(backbone=backbone, text_dim=8, fusion_blocks=[0], prune_at=(1,), keep_ratio=0.5)
    with pytest.raises(TypeError, match="VisionBackbone"):
        TextAwareEncoder(backbone=torch.nn.Linear(2, 2), text_dim=8)
    encoder = TextAwareEncoder(backbone=backbone, text_dim=8, prune_at=(0,), keep_tokens=20)
    with pytest.raises(ValueError, match="keep_tokens=20"):
        encoder(
            torch.rand(1, 3, 32, 32), text_features=(torch.zeros(1, 2, 8), torch.ones(1, 2, dtype=torch.bool))
        )


def test_builds_from_yaml_through_jsonargparse(tiny_bert_dir):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--encoder", type=TextAwareEncoder)
    config = parser.parse_string(f"""
encoder:
  class_path: textvision.encoder.TextAwareEncoder
  init_args:
    backbone:
      class_path: textvision.vision.TimmViT
      init_args: {{img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4}}
    text_encoder:
      class_path: textvision.text.TextEncoder
      init_args: {{model_name: {tiny_bert_dir}, max_length: 8}}
    fusion: mutual
    prune_at: [1]
    keep_ratio: 0.25
""")
    encoder = parser.instantiate(config).encoder
    assert isinstance(encoder, TextAwareEncoder)
    assert all(type(m) is FUSIONS["mutual"] for m in encoder.fusion.values())
    assert encoder(torch.rand(1, 3, 32, 32), ["red cat"]).tokens.shape == (1, 1 + 4, 32)


def test_fusion_and_scorer_classes_with_their_settings_from_yaml(tiny_bert_dir):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--encoder", type=TextAwareEncoder)
    config = parser.parse_string("""
encoder:
  class_path: textvision.encoder.TextAwareEncoder
  init_args:
    backbone:
      class_path: textvision.vision.TimmViT
      init_args: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4}
    text_dim: 24
    fusion:
      class_path: textvision.fusion.GatedCrossAttention
    prune_at: [1]
    keep_tokens: 3
    scorer:
      class_path: textvision.pruning.TextSimilarityScorer
      init_args: {vision_width: 32, text_width: 24, dim: 8}
""")
    encoder = parser.instantiate(config).encoder
    assert sorted(encoder.fusion) == ["0", "1"]  # one module per block, with the encoder's sizes
    assert all(m.dim == 32 and m.num_heads == 4 for m in encoder.fusion.values())
    assert (
        isinstance(encoder.scorer, TextSimilarityScorer) and encoder.scorer.heads.patch_proj.out_features == 8
    )
    features = (torch.randn(1, 3, 24), torch.ones(1, 3, dtype=torch.bool))
    out = encoder(torch.rand(1, 3, 32, 32), text_features=features)
    assert out.kept_indices.shape == (1, 3) and out.selection_logits.requires_grad
