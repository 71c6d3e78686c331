"""Where the Triton launchers get their output buffers.

Every buffer a launcher writes (outputs, log-sum-exp, relevance, gradients) comes from
:func:`empty_strided`, uninitialised like ``torch.empty_strided``; :func:`empty` (contiguous)
and :func:`empty_like` (dense, in the stride order of a given tensor) are built on it. Tests
replace :func:`empty_strided` with an allocator that fills buffers with NaN, which proves that
the kernels write every element they return.

Outputs and gradients are allocated **in their input's stride order** (:func:`empty_like`): a
``(B, H, N, D)`` view of ``(B, N, H·D)`` activations — what a fusion module's projection gives —
gets an output that is again a view of a dense ``(B, N, H·D)`` buffer, so the module's
``(B, H, N, D) → (B·N, H·D)`` reshape for the output projection is free instead of a copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["dense_strides_like", "empty", "empty_like", "empty_strided"]


def empty_strided(
    shape: Sequence[int], stride: Sequence[int], *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """An uninitialised buffer (``torch.empty_strided``); the tests' NaN-poisoning hook."""
    return torch.empty_strided(tuple(shape), tuple(stride), dtype=dtype, device=device)


def _contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def empty(shape: Sequence[int], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised contiguous buffer."""
    return empty_strided(shape, _contiguous_strides(shape), dtype=dtype, device=device)


def dense_strides_like(x: torch.Tensor) -> tuple[int, ...]:
    """Strides of a dense tensor of ``x``'s shape whose dims are laid out in ``x``'s stride order.

    The last dim stays innermost (the kernels need it unit-stride); the others are ordered by
    decreasing stride, ties (size-1 dims, whose stride means nothing) in dim order, so a
    contiguous ``x`` gives contiguous strides.
    """
    shape, stride = x.shape, x.stride()
    # Size-1 dims keep their place; the others are sorted among themselves.
    nontrivial = sorted((d for d in range(x.dim() - 1) if shape[d] > 1), key=lambda d: (-stride[d], d))
    order, it = [], iter(nontrivial)
    for d in range(x.dim() - 1):
        order.append(d if shape[d] <= 1 else next(it))
    strides = [0] * x.dim()
    step = 1
    for d in [x.dim() - 1, *reversed(order)]:
        strides[d] = step
        step *= max(shape[d], 1)
    return tuple(strides)


def empty_like(x: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised dense buffer of ``x``'s shape, in ``x``'s stride order."""
    return empty_strided(x.shape, dense_strides_like(x), dtype=dtype or x.dtype, device=x.device)
