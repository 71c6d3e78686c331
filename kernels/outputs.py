"""The one return type of each attention kernel, whatever the backend and options."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["CrossAttentionOutput", "MutualAttentionOutput"]


class CrossAttentionOutput(NamedTuple):
    """``cross_attention``'s result: ``o`` ``(B, H, N, D)`` and ``rel`` ``(B, N)`` float32
    (detached), or ``rel = None`` when relevance was not asked for."""

    o: torch.Tensor
    rel: torch.Tensor | None = None


class MutualAttentionOutput(NamedTuple):
    """``mutual_attention``'s result: ``o_img`` ``(B, H, N, D)``, ``o_txt`` ``(B, H, T, D)`` and
    ``rel`` ``(B, N)`` float32 (detached), or ``rel = None`` when relevance was not asked for."""

    o_img: torch.Tensor
    o_txt: torch.Tensor
    rel: torch.Tensor | None = None
