"""A user's fusion variant, as the README's "add a fusion variant" step 1 describes: a zero-gated
bias from the pooled instruction, scaled by ``alpha``. Not imported by the tests: they write this
file into a temporary folder, as a user module outside the package."""

import torch
from torch import nn

from textvision.fusion import Fusion, FusionFlops, FusionOutput


class ScaledBias(Fusion):
    def __init__(self, *, dim: int, num_heads: int, backend: str = "auto", alpha: float = 1.0) -> None:
        super().__init__(dim=dim, num_heads=num_heads, backend=backend)
        self.alpha = alpha
        self.to_bias = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x, text, text_mask, *, block, need_relevance=False):
        weights = text_mask.to(x.dtype).unsqueeze(-1)
        pooled = (text * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        bias = self.alpha * torch.tanh(self.gate) * self.to_bias(pooled)
        return FusionOutput(block.attention(x) + bias.unsqueeze(1), text, None)

    @classmethod
    def flops(cls, *, batch, tokens, text_tokens, dim, num_heads):
        return FusionFlops(2.0 * batch * dim * dim, 0.0)
