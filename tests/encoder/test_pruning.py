"""Pure pruning functions: counts, order, ties, merging; the scorers, every registered one."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch

import textvision.pruning
from textvision.pruning import (
    SCORERS,
    PatchScorer,
    ScoringInputs,
    TokenPruner,
    cls_attention_scores,
    keep_count,
    prune_tokens,
    register_scorer,
    resolve_scorer,
    token_norm_scores,
    top_k_sorted,
)

from .conftest import tiny_timm


def test_keep_count():
    assert keep_count(196, keep_ratio=0.25) == 49
    assert keep_count(10, keep_ratio=0.01) == 1
    assert keep_count(7, keep_tokens=7) == 7
    with pytest.raises(ValueError, match="exactly one"):
        keep_count(10)
    with pytest.raises(ValueError, match=r"keep_tokens=11 must be in \[1, 10\]"):
        keep_count(10, keep_tokens=11)
    with pytest.raises(ValueError, match="keep_ratio"):
        keep_count(10, keep_ratio=1.5)


def test_top_k_sorted_keeps_best_in_spatial_order_and_breaks_ties_low():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    kept, dropped = top_k_sorted(scores, 2)
    assert kept.tolist() == [[1, 3], [0, 1]]
    assert dropped.tolist() == [[0, 2, 4], [2, 3, 4]]


@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_prune_tokens_counts_order_and_indices(prefix):
    torch.manual_seed(0)
    batch, n, dim, keep = 3, 11, 4, 4
    x = torch.randn(batch, prefix + n, dim)
    scores = torch.rand(batch, n)
    index = torch.stack([torch.randperm(50)[:n].sort().values for _ in range(batch)])
    out = prune_tokens(x, scores, index, num_prefix_tokens=prefix, keep=keep)
    assert out.x.shape == (batch, prefix + keep, dim) and out.merged_count is None
    assert torch.equal(out.x[:, :prefix], x[:, :prefix])
    for b in range(batch):
        best = scores[b].topk(keep).indices.sort().values
        assert torch.equal(out.patch_index[b], index[b, best])
        assert torch.equal(out.x[b, prefix:], x[b, prefix + best])
    assert (out.patch_index.diff(dim=1) > 0).all()


def test_merge_is_the_score_weighted_mean_of_dropped_tokens_and_accumulates():
    x = torch.arange(1 + 4, dtype=torch.float32).view(1, 5, 1).repeat(1, 1, 2)  # CLS=0, patches 1..4
    scores = torch.tensor([[0.1, 0.4, 0.3, 0.2]])
    index = torch.arange(4).view(1, 4)
    out = prune_tokens(x, scores, index, num_prefix_tokens=1, keep=2, merge=True)
    # kept patches 1 and 2 (values 2, 3); dropped 0 (w .1, value 1) and 3 (w .2, value 4)
    assert out.patch_index.tolist() == [[1, 2]]
    torch.testing.assert_close(out.x[0, -1], torch.full((2,), (0.1 * 1 + 0.2 * 4) / 0.3))
    assert out.merged_count.tolist() == [2.0]
    again = prune_tokens(
        out.x,
        torch.tensor([[0.0, 0.0]]),
        out.patch_index,
        num_prefix_tokens=1,
        keep=1,
        merge=True,
        merged_count=out.merged_count,
    )
    assert again.x.shape == (1, 3, 2) and again.merged_count.tolist() == [3.0]
    assert torch.isfinite(again.x).all()  # all-zero scores fall back to a plain mean
    torch.testing.assert_close(again.x[0, -1], (out.x[0, 2] + out.x[0, 3]) / 2)


def test_prune_tokens_rejects_inconsistent_layout():
    with pytest.raises(ValueError, match="expected 5"):
        prune_tokens(
            torch.zeros(1, 6, 2),
            torch.zeros(1, 4),
            torch.zeros(1, 4, dtype=torch.long),
            num_prefix_tokens=1,
            keep=2,
        )


def test_scorers():
    backbone = tiny_timm()
    x = backbone.embed(torch.rand(2, 3, 32, 32))
    scores = cls_attention_scores(backbone.block(0), x, num_prefix_tokens=1, num_patches=16)
    assert scores.shape == (2, 16) and (scores >= 0).all() and (scores.sum(1) < 1).all()
    norms = token_norm_scores(x[:, 1:])
    torch.testing.assert_close(norms, x[:, 1:].norm(dim=-1))


def test_token_pruner_config_errors():
    with pytest.raises(ValueError, match="exactly one"):
        TokenPruner(prune_at=(1,))
    with pytest.raises(ValueError, match="2 entries for 1"):
        TokenPruner(prune_at=(1,), keep_tokens=[3, 2])
    pruner = TokenPruner(prune_at=(3, 1), keep_tokens=[8, 4])
    assert pruner.prune_at == (1, 3) and pruner.keep(1, 8) == 4


def _build(cls: type[PatchScorer], *, vision_width: int, text_width: int) -> PatchScorer:
    """A registered scorer, given its widths when it needs settings (the similarity scorer)."""
    try:
        return resolve_scorer(next(name for name, c in SCORERS.items() if c is cls))
    except ValueError:
        return cls(vision_width=vision_width, text_width=text_width, dim=8)


def _scoring_inputs(backbone, x, hidden, mask, relevance) -> ScoringInputs:
    view = backbone.block(0)
    out = view.mlp(view.attention(x))
    return ScoringInputs(
        block=view,
        block_input=x,
        x=out,
        num_prefix_tokens=1,
        num_patches=16,
        backbone=backbone,
        text_hidden=hidden,
        text_mask=mask,
        fusion_relevance=relevance,
    )


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_every_scorer_depends_on_the_text_as_it_declares(name):
    torch.manual_seed(0)
    cls = SCORERS[name]
    backbone = tiny_timm()
    scorer = _build(cls, vision_width=backbone.width, text_width=12)
    x = backbone.embed(torch.rand(2, 3, 32, 32))
    mask = torch.ones(2, 4, dtype=torch.bool)
    # two instructions; the fusion relevance a text-attending block would return for each
    results = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        relevance = torch.rand(2, 16).softmax(-1)
        results.append(scorer.score(_scoring_inputs(backbone, x, torch.randn(2, 4, 12), mask, relevance)))
    for out in results:
        assert out.scores.shape == (2, 16) and (out.scores >= 0).all() and torch.isfinite(out.scores).all()
        assert (out.logits is not None) == cls.differentiable
        if out.logits is not None:
            torch.testing.assert_close(out.logits.softmax(-1), out.scores)
            assert out.logits.requires_grad
    assert torch.equal(results[0].scores, results[1].scores) != cls.attends_to_text


def test_scorer_declarations_are_what_the_encoder_needs():
    backbone = tiny_timm()
    x = backbone.embed(torch.rand(1, 3, 32, 32))
    hidden, mask = torch.randn(1, 4, 12), torch.ones(1, 4, dtype=torch.bool)
    for cls in SCORERS.values():
        scorer = _build(cls, vision_width=backbone.width, text_width=12)
        if cls.reads_fusion_relevance:  # without a text-attending fusion there is nothing to read
            with pytest.raises(ValueError, match="no relevance"):
                scorer.score(_scoring_inputs(backbone, x, hidden, mask, None))
        else:
            scorer.score(_scoring_inputs(backbone, x, hidden, mask, None))
    assert any(c.attends_to_text for c in SCORERS.values()) and not all(
        c.attends_to_text for c in SCORERS.values()
    )


def test_every_scorer_module_of_the_package_is_registered():
    modules = {m.name for m in pkgutil.iter_modules(textvision.pruning.__path__, "textvision.pruning.")}
    for module in modules:
        for obj in vars(importlib.import_module(module)).values():
            if isinstance(obj, type) and issubclass(obj, PatchScorer) and obj is not PatchScorer:
                assert obj in SCORERS.values(), obj


def test_resolve_and_register_scorer_errors():
    with pytest.raises(ValueError, match=r"unknown scorer 'random'; registered: \['"):
        resolve_scorer("random")
    with pytest.raises(TypeError, match="registered name or a PatchScorer"):
        resolve_scorer(3)  # type: ignore[arg-type]
    name = sorted(SCORERS)[0]
    with pytest.raises(KeyError, match="already registered"):
        register_scorer(name)(PatchScorer)
    with pytest.raises(TypeError, match="PatchScorer subclass"):
        register_scorer("test_not_a_scorer")(torch.nn.Linear)
    custom = PatchScorer()
    assert resolve_scorer(custom) is custom
