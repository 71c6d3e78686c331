"""The cost model reads each fusion variant's FLOP count from its class: every registered variant has
rows, and a variant from outside the package is counted with no edit to the cost model."""

from __future__ import annotations

import pytest

from textvision.bench.perf.cost_model import _encoder_rows, encoder_forward_cost
from textvision.fusion import FUSIONS, Fusion, FusionFlops

COMMON = dict(batch=2, depth=3, width=16, heads=2, n_patches=9, n_text=4, text_width=8)


class OneMatmul(Fusion):
    """An unregistered variant whose only cost is a (D, D) projection per token."""

    @classmethod
    def flops(cls, *, batch, tokens, text_tokens, dim, num_heads):
        return FusionFlops(2.0 * batch * tokens * dim * dim, 0.0)


def test_every_registered_variant_has_rows():
    rows = {row["encoder"] for row in _encoder_rows()}
    for name in FUSIONS:
        assert {f"{name}, all blocks", f"{name} + prune to 25% after block 4"} <= rows


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_fused_blocks_cost_the_plain_block_plus_the_class_count(fusion):
    plain = encoder_forward_cost(**{**COMMON, "text_width": None})
    cost = encoder_forward_cost(**COMMON, fusion=fusion, fusion_blocks=(1,))
    own = FUSIONS[fusion].flops(batch=2, tokens=10, text_tokens=4, dim=16, num_heads=2)
    adapter = 2.0 * 2 * 4 * 8 * 16  # the text adapter, once
    assert cost["total_flops"] == pytest.approx(plain["total_flops"] + own.total + adapter)
    assert [b["fusion_flops"] for b in cost["blocks"]] == [0.0, own.total, 0.0]
    assert cost["attention_flops"] == pytest.approx(plain["attention_flops"] + own.attention)


def test_a_user_variant_is_counted_by_its_class():
    cost = encoder_forward_cost(**COMMON, fusion=OneMatmul, prune_at=(0,), keep_tokens=4)
    assert [b["fusion_flops"] for b in cost["blocks"]] == [2.0 * 2 * t * 16 * 16 for t in (10, 5, 5)]
    with pytest.raises(NotImplementedError, match="FLOP count"):
        encoder_forward_cost(**COMMON, fusion=Fusion)
    with pytest.raises(ValueError, match="unknown fusion 'gca_v2'; registered"):
        encoder_forward_cost(**COMMON, fusion="gca_v2")
