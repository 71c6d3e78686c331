"""The analytic cost model against hand-computed counts and the research note's worked examples."""

import json

import pytest

from textvision.bench.perf.cost_model import (
    H100_SXM,
    Cost,
    cross_attention_cost,
    encoder_forward_cost,
    kept_patch_count,
    main,
    mutual_attention_cost,
)
from textvision.fusion import FUSIONS


def test_cross_attention_matches_worked_example():
    # research/kernels.md §1: ViT-B/16@224, B64 H12 Nq197 Nk32, D64 -> 1.24 GFLOP, ~45.6 MB, 27 FLOP/B
    cost = cross_attention_cost(batch=64, heads=12, n_img=197, n_text=32, head_dim=64)
    assert cost.flops == 4 * 64 * 12 * 197 * 32 * 64
    assert cost.flops / 1e9 == pytest.approx(1.24, abs=0.01)
    assert cost.bytes / 1e6 == pytest.approx(45.6, rel=0.02)
    assert cost.intensity == pytest.approx(27, abs=1)


def test_relevance_adds_one_recompute_pass_and_backward_is_2_5x():
    kwargs = dict(batch=2, heads=3, n_img=17, n_text=5, head_dim=32)
    plain = cross_attention_cost(**kwargs)
    with_rel = cross_attention_cost(**kwargs, relevance=True)
    assert with_rel.flops == pytest.approx(1.5 * plain.flops)
    assert with_rel.bytes - plain.bytes == 8 * 2 * 3 * 17 + 4 * 2 * 17  # per-head partials + rel
    two_pass = cross_attention_cost(**kwargs, relevance=True, relevance_path="two_pass")
    assert two_pass.flops == with_rel.flops and two_pass.bytes > with_rel.bytes
    with pytest.raises(ValueError, match="relevance_path"):
        cross_attention_cost(**kwargs, relevance=True, relevance_path="atomics")
    assert cross_attention_cost(**kwargs, backward=True).flops == pytest.approx(2.5 * plain.flops)


def test_mutual_attention_counts_all_queries_over_all_keys():
    cost = mutual_attention_cost(batch=2, heads=3, n_img=17, n_text=5, head_dim=32)
    assert cost.flops == 4 * 2 * 3 * 22 * 22 * 32
    assert cost.bytes == 4 * 2 * 3 * 22 * 32 * 2 + 4 * 2 * 3 * 22 + 2 * 5


def test_roofline_bound_and_fraction():
    cost = Cost(flops=989e12, bytes=1.0)
    assert H100_SXM.bound_seconds(cost) == pytest.approx(1.0)
    assert H100_SXM.fraction_of_roofline(cost, 2.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="measured_seconds"):
        H100_SXM.fraction_of_roofline(cost, 0.0)


def test_kept_patch_count_rules():
    assert kept_patch_count(196, keep_ratio=0.25) == 49
    assert kept_patch_count(197, keep_ratio=0.25) == 50  # ceil
    assert kept_patch_count(64, keep_tokens=4) == 4
    assert kept_patch_count(3, keep_tokens=10) == 3
    with pytest.raises(ValueError, match="exactly one"):
        kept_patch_count(10)
    with pytest.raises(ValueError, match="keep_ratio"):
        kept_patch_count(10, keep_ratio=0.0)


def test_encoder_plain_vit_matches_hand_count():
    b, depth, c, heads, n_patch = 1, 2, 8, 2, 4
    n = n_patch + 1
    per_block = 2 * n * c * 3 * c + 2 * n * c * c + 4 * n * n * c + 2 * 2 * n * c * 4 * c
    cost = encoder_forward_cost(
        batch=b, depth=depth, width=c, heads=heads, n_patches=n_patch, n_text=3
    )  # no fusion: the plain ViT
    assert cost["total_flops"] == depth * per_block


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_pruning_shrinks_later_blocks_and_fusion_costs_little(fusion):
    common = dict(batch=1, depth=12, width=384, heads=6, n_patches=196, n_text=32, text_width=384)
    plain = encoder_forward_cost(**{**common, "text_width": None})
    fused = encoder_forward_cost(**common, fusion=fusion)
    pruned = encoder_forward_cost(**common, fusion=fusion, prune_at=(4,), keep_ratio=0.25)
    assert [blk["tokens"] for blk in pruned["blocks"]] == [197] * 5 + [50] * 7
    assert 1.0 <= fused["total_flops"] / plain["total_flops"] < 1.5
    # 5 of 12 blocks at full width: well under the plain ViT whatever the fusion adds
    assert pruned["total_flops"] / plain["total_flops"] < 0.85
    assert pruned["total_flops"] < fused["total_flops"]
    with pytest.raises(ValueError, match="unknown fusion"):
        encoder_forward_cost(**common, fusion="gca_v2")


def test_main_writes_json_and_markdown(tmp_path):
    report = main(["--out", str(tmp_path)])
    saved = json.loads((tmp_path / "cost_model.json").read_text())
    assert saved["kernels"] == report["kernels"] and len(saved["kernels"]) == 16
    assert "| ViT-B/16 @224 | cross_attention |" in (tmp_path / "cost_model.md").read_text()
