"""``adapter_xattn``: the instruction as extra keys/values of the block's own attention (LLaMA-Adapter form).

The block's pretrained query attends to the instruction in a SEPARATE softmax, and the result is
added, per head behind a zero-init tanh gate, to the self-attention heads before the block's own
output projection (Zhang et al. 2023, LLaMA-Adapter, arXiv:2303.16199; per-head gates as in
LLaMA-Adapter V2, arXiv:2304.15010):

    q, k, v   = block.qkv(norm1(x))                                   # pretrained
    k_t, v_t  = Wkv · norm_t(text)                                    # new
    x = x + proj( softmax(q kᵀ) v  +  tanh(g_h) · softmax(q k_tᵀ, masked) v_t )

New parameters per block: the text norm, ``Wkv`` (D → 2D) and ``H`` gates, nothing on the patch
tokens, so it costs a text-side projection plus an ``N x T`` attention: the cheapest text-attending
variant. ``g = 0`` at init adds exact zeros before the projection, so the block is bitwise the
pretrained one. The separate softmax (rather than ``mutual``'s joint one) is what makes that
exact zero-init possible without a second attention pass.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from textvision.fusion.base import Fusion, FusionFlops, FusionOutput, attention_flops, register_fusion
from textvision.kernels import cross_attention
from textvision.vision.backbone import BlockView

__all__ = ["AdapterCrossAttention"]


@register_fusion("adapter_xattn")
class AdapterCrossAttention(Fusion):
    """Text keys/values read by the block's own queries; per-head zero-init gates; shared output proj."""

    attends_to_text = True

    def __init__(self, *, dim: int, num_heads: int, backend: str = "auto") -> None:
        super().__init__(dim=dim, num_heads=num_heads, backend=backend)
        self.norm_text = nn.LayerNorm(dim)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.gate = nn.Parameter(torch.zeros(num_heads))

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        *,
        block: BlockView,
        need_relevance: bool = False,
    ) -> FusionOutput:
        if block.num_heads != self.num_heads or block.head_dim * block.num_heads != self.dim:
            raise ValueError(
                f"adapter_xattn built for {self.num_heads} heads of width {self.dim}; block differs"
            )
        k, v = rearrange(
            self.to_kv(self.norm_text(text)), "b t (two h d) -> two b h t d", two=2, h=self.num_heads
        )
        relevance: list[torch.Tensor] = []

        def text_heads(q: torch.Tensor) -> torch.Tensor:
            result, rel = cross_attention(
                q, k, v, text_mask, scale=block.scale, return_relevance=need_relevance, backend=self.backend
            )
            if rel is not None:
                relevance.append(rel)
            return torch.tanh(self.gate).view(1, -1, 1, 1).to(result.dtype) * result

        x = block.attention_plus(x, text_heads)
        return FusionOutput(x, text, relevance[0] if relevance else None)

    @classmethod
    def flops(cls, *, batch: int, tokens: int, text_tokens: int, dim: int, num_heads: int) -> FusionFlops:
        # k/v over the text only: the queries and the output projection are the block's own
        matmul = 2.0 * batch * text_tokens * dim * 2 * dim
        core = attention_flops(
            batch=batch, heads=num_heads, n_query=tokens, n_key=text_tokens, head_dim=dim // num_heads
        )
        return FusionFlops(matmul, core)
