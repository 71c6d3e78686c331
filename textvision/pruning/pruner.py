"""``TokenPruner``: the pruning schedule of the encoder (where, how many, merge or not, in which order).

Which patches score highest is the encoder's scorer (:mod:`textvision.pruning.scores`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from textvision.pruning.selection import KEEP_ORDERS, PrunedTokens, keep_count, prune_tokens

__all__ = ["TokenPruner"]


class TokenPruner(nn.Module):
    """Drops patches after the blocks in ``prune_at``.

    Args:
        prune_at: block indices (0-based) after which to prune, e.g. ``(4,)``.
        keep_ratio: fraction of the patches present at each step to keep.
        keep_tokens: patches to keep, one int for every step or one per step.
        merge_dropped: fuse the dropped patches into one extra token (EViT).
        order: kept patches in ``"spatial"`` order (default) or best ``"score"`` first.
    """

    def __init__(
        self,
        *,
        prune_at: Sequence[int] = (),
        keep_ratio: float | None = None,
        keep_tokens: int | Sequence[int] | None = None,
        merge_dropped: bool = False,
        order: str = "spatial",
    ) -> None:
        super().__init__()
        if order not in KEEP_ORDERS:
            raise ValueError(f"order must be one of {KEEP_ORDERS}, got {order!r}")
        self.order = order
        self.prune_at = tuple(sorted(int(i) for i in prune_at))
        if len(set(self.prune_at)) != len(self.prune_at):
            raise ValueError(f"prune_at has repeated blocks: {list(prune_at)}")
        if self.prune_at and (keep_ratio is None) == (keep_tokens is None):
            raise ValueError("pruning needs exactly one of keep_ratio and keep_tokens")
        if isinstance(keep_tokens, Sequence):
            if len(keep_tokens) != len(self.prune_at):
                raise ValueError(
                    f"keep_tokens has {len(keep_tokens)} entries for {len(self.prune_at)} prune steps"
                )
            self.keep_tokens: tuple[int, ...] | None = tuple(int(k) for k in keep_tokens)
        else:
            self.keep_tokens = None if keep_tokens is None else (int(keep_tokens),) * len(self.prune_at)
        if keep_ratio is not None:
            keep_count(1, keep_ratio=keep_ratio)  # validates the range
        self.keep_ratio = keep_ratio
        self.merge_dropped = merge_dropped

    @property
    def enabled(self) -> bool:
        return bool(self.prune_at)

    def keep(self, step: int, num_patches: int) -> int:
        tokens = None if self.keep_tokens is None else self.keep_tokens[step]
        return keep_count(num_patches, keep_ratio=self.keep_ratio, keep_tokens=tokens)

    def forward(
        self,
        x: torch.Tensor,
        scores: torch.Tensor,
        patch_index: torch.Tensor,
        *,
        step: int,
        num_prefix_tokens: int,
        merged_count: torch.Tensor | None,
    ) -> PrunedTokens:
        """One pruning step; see :func:`textvision.pruning.selection.prune_tokens`."""
        return prune_tokens(
            x,
            scores,
            patch_index,
            num_prefix_tokens=num_prefix_tokens,
            keep=self.keep(step, scores.shape[1]),
            merge=self.merge_dropped,
            merged_count=merged_count,
            order=self.order,
        )

    def extra_repr(self) -> str:
        return (
            f"prune_at={self.prune_at}, keep_ratio={self.keep_ratio}, keep_tokens={self.keep_tokens}, "
            f"merge_dropped={self.merge_dropped}, order={self.order!r}"
        )
