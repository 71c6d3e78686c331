"""``mutual``: modality-mutual attention replacing the block's self-attention.

Patch queries attend over ``[patch keys ; valid text keys]`` and text queries over
``[valid text keys ; patch keys]``, each in ONE softmax (AKI, Wang et al. 2025,
arXiv:2503.02597, whose image rows see the question inside the LM; here made bidirectional
inside the ViT). The patch stream reuses the block's pretrained q/k/v and output projection;
the text tokens are projected with the same pretrained q/k/v (after their own new LayerNorm), so
text keys live in the space the patch queries already read. The text stream is carried to the
next block: ``text + tanh(g_t) · proj_t(o_txt)``.

Zero-init with exact equality. A joint softmax cannot leave the patch outputs unchanged with
finite text logits (every valid text key adds ``exp(s)>0`` to the normaliser), and a ``-inf``
logit bias would never receive a gradient. So the mutual branch is blended into the pretrained
self-attention branch by a zero-init gate at the residual:

    a_self   = attn(norm1(x))                                   # the block's own path, bitwise
    a_mutual = proj(mutual_attention(qkv(norm1(x)), qkv(norm_t(text)))_img)
    x = (x + a_self) + tanh(g) · (a_mutual − a_self)

At ``g = 0`` this is ``x + a_self`` exactly; ``∂L/∂g = ⟨∂L/∂x, a_mutual − a_self⟩ ≠ 0``, so the
gate learns from step 1, and at ``tanh(g) = 1`` the block is pure modality-mutual attention.
The price is a second attention pass over the patches (the pretrained one) while training.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from textvision.fusion.base import Fusion, FusionFlops, FusionOutput, attention_flops, register_fusion
from textvision.kernels import mutual_attention
from textvision.vision.backbone import BlockView

__all__ = ["MutualAttentionFusion"]


@register_fusion("mutual")
class MutualAttentionFusion(Fusion):
    """Joint patch/text attention with the block's own weights, blended in by a zero-init gate."""

    attends_to_text = True

    def __init__(self, *, dim: int, num_heads: int, backend: str = "auto") -> None:
        super().__init__(dim=dim, num_heads=num_heads, backend=backend)
        self.norm_text = nn.LayerNorm(dim)
        self.text_proj = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(1))
        self.text_gate = nn.Parameter(torch.zeros(1))

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        *,
        block: BlockView,
        need_relevance: bool = False,
    ) -> FusionOutput:
        a_self = block.attention_residual(x)
        q, k, v = block.qkv(block.norm_attn(x))
        q_txt, k_txt, v_txt = block.qkv(self.norm_text(text))
        # The Triton kernel writes o_img/o_txt in the stride order of q/q_txt, (b, n, h, d), so
        # the output projections' (B, N, H·D) reshapes below are views.
        o_img, o_txt, relevance = mutual_attention(
            q,
            k,
            v,
            q_txt,
            k_txt,
            v_txt,
            text_mask,
            scale=block.scale,
            return_relevance=need_relevance,
            backend=self.backend,
        )
        a_mutual = block.attention_output(o_img)
        x = x + a_self
        x = x + torch.tanh(self.gate) * (a_mutual - a_self)
        text = text + torch.tanh(self.text_gate) * self.text_proj(rearrange(o_txt, "b h t d -> b t (h d)"))
        return FusionOutput(x, text, relevance)

    @classmethod
    def flops(cls, *, batch: int, tokens: int, text_tokens: int, dim: int, num_heads: int) -> FusionFlops:
        # Beside the block's own self-attention (kept for the zero-init blend): q/k/v of the
        # patches again and of the text, the output projection of the mutual patch heads, the
        # text stream's projection; one attention of every query over all N + T keys.
        n_all = tokens + text_tokens
        matmul = 2.0 * batch * (n_all * dim * 3 * dim + tokens * dim * dim + text_tokens * dim * dim)
        core = attention_flops(
            batch=batch, heads=num_heads, n_query=n_all, n_key=n_all, head_dim=dim // num_heads
        )
        return FusionFlops(matmul, core)
