"""``gated_xattn``: tanh-gated cross-attention from patches to the instruction after self-attention.

    x = x + attn(norm1(x))                                          # pretrained
    x = x + tanh(g) · proj(xattn(q = Wq·norm_x(x), kv = Wkv·norm_t(text), key_padding_mask))

``g = 0`` at init, so the block is exactly the pretrained one (tanh(0)·y adds zeros). The gate
is Flamingo's (Alayrac et al. 2022, arXiv:2204.14198); placing the cross-attention inside the
attention sub-layer, before the MLP, follows FIBER (Dou et al. 2022, arXiv:2206.07643).
The attention core is :func:`textvision.kernels.cross_attention`, which also returns the
instruction's relevance of every token for text-guided pruning.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from textvision.fusion.base import Fusion, FusionFlops, FusionOutput, attention_flops, register_fusion
from textvision.kernels import cross_attention
from textvision.vision.backbone import BlockView

__all__ = ["GatedCrossAttention"]


@register_fusion("gated_xattn")
class GatedCrossAttention(Fusion):
    """Pre-norm cross-attention (patches → text) with a zero-init scalar tanh gate."""

    attends_to_text = True

    def __init__(self, *, dim: int, num_heads: int, backend: str = "auto") -> None:
        super().__init__(dim=dim, num_heads=num_heads, backend=backend)
        self.norm_x = nn.LayerNorm(dim)
        self.norm_text = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)  # bias-free like Flamingo's, so the gate folds in
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
        q = rearrange(self.to_q(self.norm_x(x)), "b n (h d) -> b h n d", h=self.num_heads)
        k, v = rearrange(
            self.to_kv(self.norm_text(text)), "b t (two h d) -> two b h t d", two=2, h=self.num_heads
        )
        o, relevance = cross_attention(
            q, k, v, text_mask, return_relevance=need_relevance, backend=self.backend
        )
        # The Triton kernel writes o in q's stride order, (b, n, h, d): this reshape is a view.
        o = rearrange(o, "b h n d -> (b n) (h d)")
        # x + tanh(g) · proj(o) as ONE fused multiply-add with the gate folded into the (D, D)
        # weight rather than the (B, N, D) activations: exact at g = 0 (x + o·0 = x).
        gated_weight = torch.tanh(self.gate) * self.proj.weight
        x = torch.addmm(x.reshape(-1, self.dim), o, gated_weight.t()).view_as(x)
        return FusionOutput(x, text, relevance)

    @classmethod
    def flops(cls, *, batch: int, tokens: int, text_tokens: int, dim: int, num_heads: int) -> FusionFlops:
        # q and output projection over the patches, k/v over the text; attention over T keys
        matmul = 2.0 * batch * (2 * tokens * dim * dim + text_tokens * dim * 2 * dim)
        core = attention_flops(
            batch=batch, heads=num_heads, n_query=tokens, n_key=text_tokens, head_dim=dim // num_heads
        )
        return FusionFlops(matmul, core)
