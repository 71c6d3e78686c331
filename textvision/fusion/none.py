"""``none``: the text-agnostic baseline — the block's own self-attention, nothing else."""

from __future__ import annotations

import torch

from textvision.fusion.base import Fusion, FusionFlops, FusionOutput, register_fusion
from textvision.vision.backbone import BlockView

__all__ = ["NoFusion"]


@register_fusion("none")
class NoFusion(Fusion):
    """Runs the pretrained attention sub-layer unchanged; the text is passed through untouched."""

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        *,
        block: BlockView,
        need_relevance: bool = False,
    ) -> FusionOutput:
        return FusionOutput(block.attention(x), text, None)

    @classmethod
    def flops(cls, *, batch: int, tokens: int, text_tokens: int, dim: int, num_heads: int) -> FusionFlops:
        return FusionFlops(0.0, 0.0)
