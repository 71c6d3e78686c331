"""``film``: per-channel scale and shift of every token from the pooled instruction (cheap baseline).

    x = x + attn(norm1(x))                                   # pretrained
    γ, β = Linear(mean_t norm_t(text))
    x = x · (1 + tanh(g)·γ) + tanh(g)·β                      # g = 0 at init → x unchanged

FiLM: Perez et al. 2018, arXiv:1709.07871. No attention, so no relevance for pruning.
"""

from __future__ import annotations

import torch
from torch import nn

from textvision.fusion.base import Fusion, FusionFlops, FusionOutput, register_fusion
from textvision.vision.backbone import BlockView

__all__ = ["FiLMFusion"]


@register_fusion("film")
class FiLMFusion(Fusion):
    """Feature-wise linear modulation from the masked mean of the text tokens, zero-gated."""

    def __init__(self, *, dim: int, num_heads: int, backend: str = "auto") -> None:
        super().__init__(dim=dim, num_heads=num_heads, backend=backend)
        self.norm_text = nn.LayerNorm(dim)
        self.to_scale_shift = nn.Linear(dim, 2 * dim)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        *,
        block: BlockView,
        need_relevance: bool = False,
    ) -> FusionOutput:
        x = block.attention(x)
        weights = text_mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1); an all-padding row pools to 0
        pooled = (self.norm_text(text) * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        scale, shift = self.to_scale_shift(pooled).unsqueeze(1).chunk(2, dim=-1)
        gate = torch.tanh(self.gate)
        return FusionOutput(x * (1 + gate * scale) + gate * shift, text, None)

    @classmethod
    def flops(cls, *, batch: int, tokens: int, text_tokens: int, dim: int, num_heads: int) -> FusionFlops:
        # one (D -> 2D) projection of the pooled text per image; the modulation is element-wise
        return FusionFlops(2.0 * batch * dim * 2 * dim, 0.0)
