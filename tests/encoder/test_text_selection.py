"""Text-guided selection that can learn: the text_similarity scorer, selection logits, keep order,
the relevance embedding, the grounding loss and the kept-target rate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from textvision.encoder import TextAwareEncoder
from textvision.pretrain.alignment import mean_pool
from textvision.pruning import SCORERS, TextSimilarityScorer, grounding_loss, kept_target_rate, top_k_sorted

from .conftest import tiny_timm

TEXT_DIM = 12


def _encoder(**kwargs) -> TextAwareEncoder:
    torch.manual_seed(0)
    defaults = dict(
        backbone=tiny_timm(),
        text_dim=TEXT_DIM,
        fusion="gated_xattn",
        prune_at=[2],
        keep_tokens=5,
        scorer="text_similarity",
        similarity=TextSimilarityScorer(vision_width=32, text_width=TEXT_DIM, dim=16),
    )
    defaults.update(kwargs)
    return TextAwareEncoder(**defaults)


def _inputs(batch=3, length=4):
    torch.manual_seed(1)
    images = torch.rand(batch, 3, 32, 32)
    hidden = torch.randn(batch, length, TEXT_DIM)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, 2:] = False
    return images, (hidden.masked_fill(~mask[..., None], 0.0), mask)


def test_kept_target_rate_on_a_hand_built_batch():
    kept = torch.tensor([[0, 3, 5], [1, 2, 7], [4, 6, 8], [0, 1, 2]])
    target = torch.tensor([3, 9, 8, -1])
    assert kept_target_rate(kept, target, reduce=False).tolist() == [1, 0, 1, -1]
    assert kept_target_rate(kept, target).item() == pytest.approx(2 / 3)
    assert kept_target_rate(None, target, reduce=False).tolist() == [1, 1, 1, -1]  # nothing pruned
    assert torch.isnan(kept_target_rate(kept, torch.full((4,), -1)))


def test_grounding_loss_is_the_cross_entropy_at_the_named_patch():
    logits = torch.randn(3, 6, requires_grad=True)
    target = torch.tensor([2, -1, 5])
    loss = grounding_loss(logits, target)
    expected = F.cross_entropy(logits[[0, 2]], torch.tensor([2, 5]))
    assert torch.allclose(loss, expected)
    loss.backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0].abs().sum() > 0
    none = grounding_loss(logits, torch.full((3,), -1))
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="prunes"):
        grounding_loss(None, target)


def test_top_k_in_score_order():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.7]])
    assert top_k_sorted(scores, 2)[0].tolist() == [[1, 3]]
    assert top_k_sorted(scores, 2, order="score")[0].tolist() == [[1, 3]]
    assert top_k_sorted(torch.tensor([[0.1, 0.7, 0.3, 0.9]]), 2, order="score")[0].tolist() == [[3, 1]]
    with pytest.raises(ValueError, match="order"):
        top_k_sorted(scores, 2, order="random")


def test_text_similarity_selects_by_the_scorer_and_its_logits_train():
    encoder = _encoder()
    images, features = _inputs()
    out = encoder(images, text_features=features)
    assert out.tokens.shape == (3, 1 + 5, 32)
    assert out.selection_logits.shape == (3, 16) and out.selection_logits.requires_grad
    # the kept patches are the top-5 of the scorer's logits on the final-normed patch tokens
    assert torch.equal(out.kept_indices, top_k_sorted(out.selection_logits.detach(), 5)[0])
    assert torch.allclose(out.relevance, out.selection_logits.detach().softmax(-1))
    loss = grounding_loss(out.selection_logits, torch.tensor([0, 5, 15]))
    loss.backward()
    scorer_grads = [p.grad for p in encoder.similarity.parameters() if p.requires_grad]
    assert len(scorer_grads) == 5  # both projections (weight, bias) and the temperature
    assert all(g is not None and g.abs().sum() > 0 for g in scorer_grads)
    assert set(encoder.parameter_groups()) >= {"scorer", "fusion"} and encoder.parameter_groups()["scorer"]


def test_scorer_logits_are_the_cosine_of_the_projections_times_the_temperature():
    scorer = TextSimilarityScorer(vision_width=32, text_width=TEXT_DIM, dim=16)
    patches, sentence = torch.randn(2, 7, 32), torch.randn(2, TEXT_DIM)
    logits = scorer(patches, sentence)
    heads = scorer.heads
    p = F.normalize(heads.patch_proj(patches), dim=-1)
    t = F.normalize(heads.text_proj(sentence), dim=-1)
    assert torch.allclose(logits, torch.einsum("bd,bnd->bn", t, p) * heads.log_scale.exp(), atol=1e-6)
    with pytest.raises(ValueError, match="expects"):
        scorer(torch.randn(2, 7, 31), sentence)
    with pytest.raises(ValueError, match="pretraining config"):
        TextSimilarityScorer()


def test_score_order_puts_the_best_patch_first_and_the_relevance_embedding_marks_it():
    spatial = _encoder()
    scored = _encoder(keep_order="score", relevance_embedding=True)
    images, features = _inputs()
    a = spatial(images, text_features=features)
    b = scored(images, text_features=features)
    order = b.selection_logits.detach().argsort(-1, descending=True)[:, :5]
    assert torch.equal(b.kept_indices, order)
    assert torch.equal(a.kept_indices, b.kept_indices.sort(-1).values)
    # zero-init: the marked tokens equal the unmarked ones, permuted into score order
    rank = a.kept_indices.unsqueeze(1) == b.kept_indices.unsqueeze(2)  # (B, K, K)
    permuted = torch.einsum("bij,bjd->bid", rank.float(), a.tokens[:, 1:])
    assert torch.allclose(b.tokens[:, 1:], permuted, atol=1e-6)
    with torch.no_grad():  # not a constant vector: the final LayerNorm would remove that
        scored.relevance_embedding.copy_(torch.linspace(-1.0, 1.0, 32))
    c = scored(images, text_features=features)
    assert not torch.allclose(c.tokens[:, 1:], b.tokens[:, 1:])
    # the answer side's gradient reaches the scorer through the marks
    c.tokens.sum().backward()
    assert scored.similarity.heads.patch_proj.weight.grad.abs().sum() > 0
    assert any(p is scored.relevance_embedding for p in scored.parameter_groups()["scorer"])


def test_selection_config_errors_and_unused_scorer_modules():
    with pytest.raises(ValueError, match="scorer='text_similarity' needs its settings"):
        _encoder(similarity=None)
    agnostic = next(
        name for name, cls in SCORERS.items() if not cls.attends_to_text and not cls.differentiable
    )
    plain = _encoder(scorer=agnostic, relevance_embedding=True)
    # dropped: the similarity module (another scorer prunes), the embedding (nothing to mark by)
    assert type(plain.scorer) is SCORERS[agnostic] and plain.relevance_embedding is None
    assert not any(k.startswith("similarity.") for k in plain.state_dict())
    scorer = TextSimilarityScorer(vision_width=16, text_width=TEXT_DIM)
    with pytest.raises(ValueError, match="widths"):
        _encoder(similarity=scorer)
    with pytest.raises(ValueError, match="widths"):
        _encoder(scorer=scorer, similarity=None)


def test_the_scorer_given_as_a_module_equals_the_old_name_plus_similarity_form():
    old = _encoder()
    new = _encoder(scorer=TextSimilarityScorer(vision_width=32, text_width=TEXT_DIM, dim=16), similarity=None)
    assert old.state_dict().keys() == new.state_dict().keys()  # checkpoints keep their keys
    assert any(k.startswith("similarity.") for k in new.state_dict())
    new.load_state_dict(old.state_dict())
    images, features = _inputs()
    a, b = old(images, text_features=features), new(images, text_features=features)
    assert torch.equal(a.kept_indices, b.kept_indices) and torch.equal(a.selection_logits, b.selection_logits)


def test_sentence_embedding_the_scorer_reads_is_the_mean_of_valid_tokens():
    encoder = _encoder()
    images, (hidden, mask) = _inputs()
    out = encoder(images, text_features=(hidden, mask))
    x = encoder.backbone.embed(images)
    for i in range(3):
        view = encoder.backbone.block(i)
        x = view.mlp(encoder.fusion[str(i)](x, encoder.text_adapter(hidden), mask, block=view).x)
    expected = encoder.similarity(encoder.backbone.final_norm(x[:, 1:]), mean_pool(hidden, mask))
    assert torch.allclose(out.selection_logits, expected, atol=1e-5)
