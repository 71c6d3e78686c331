"""Validation shared by :func:`cross_attention` and :func:`mutual_attention`.

Every check raises a ``TypeError`` or ``ValueError`` whose message names the offending argument,
so a shape bug in a fusion module surfaces at the call, not as a wrong answer or a kernel fault.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "MAX_TRITON_HEAD_DIM",
    "TRITON_DTYPES",
    "check_attention_inputs",
    "check_scale",
    "check_triton_support",
]

# Head dims the Triton kernels run: any D up to 128, padded inside the kernels to the next power
# of two >= 16 with a column mask (`tl.arange` needs a power of two, `tl.dot` on the GPU >= 16).
MAX_TRITON_HEAD_DIM = 128
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_REFERENCE_DTYPES = (*TRITON_DTYPES, torch.float64)


def _check_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"`{name}` must have shape (B, H, N, D) (4 dims), got shape {tuple(x.shape)}")
    if x.dtype not in _REFERENCE_DTYPES:
        raise TypeError(
            f"`{name}` must be a floating tensor (float16/bfloat16/float32/float64), got {x.dtype}"
        )
    return x


def check_attention_inputs(
    named: dict[str, torch.Tensor],
    keys_values: list[tuple[str, str]],
    mask_name: str,
    mask: torch.Tensor | None,
    mask_length_of: str,
) -> None:
    """Check ranks, dtypes, devices and that batch, heads, lengths and head dims agree.

    Args:
        named: every tensor argument by name; the first is the one the others must agree with.
        keys_values: pairs of argument names ``(key, value)`` that must share a length.
        mask_name: the argument name of the padding mask.
        mask: ``(B, T)`` bool or None.
        mask_length_of: the argument whose length ``T`` the mask must match.
    """
    for name, x in named.items():
        _check_tensor(name, x)
    first_name, first = next(iter(named.items()))
    B, H, _, D = first.shape
    for name, x in named.items():
        if x.dtype != first.dtype:
            raise TypeError(
                f"`{name}` has dtype {x.dtype} but `{first_name}` has {first.dtype}; they must match"
            )
        if x.device != first.device:
            raise ValueError(f"`{name}` is on {x.device} but `{first_name}` is on {first.device}")
        if x.shape[0] != B:
            raise ValueError(f"batch size mismatch: `{name}` has B={x.shape[0]}, `{first_name}` has B={B}")
        if x.shape[1] != H:
            raise ValueError(f"head count mismatch: `{name}` has H={x.shape[1]}, `{first_name}` has H={H}")
        if x.shape[3] != D:
            raise ValueError(f"head dim mismatch: `{name}` has D={x.shape[3]}, `{first_name}` has D={D}")
    for k_name, v_name in keys_values:
        if named[k_name].shape[2] != named[v_name].shape[2]:
            raise ValueError(
                f"length mismatch: `{k_name}` has {named[k_name].shape[2]} tokens, "
                f"`{v_name}` has {named[v_name].shape[2]}"
            )
    if D == 0:
        raise ValueError(f"head dim of `{first_name}` is 0")
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"`{mask_name}` must be a bool torch.Tensor of shape (B, T) or None, got {type(mask).__name__}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"`{mask_name}` must have dtype torch.bool (True = real token), got {mask.dtype}")
    T = named[mask_length_of].shape[2]
    if mask.shape != (B, T):
        raise ValueError(
            f"`{mask_name}` must have shape (B, T) = ({B}, {T}) to match `{mask_length_of}`, "
            f"got {tuple(mask.shape)}"
        )
    if mask.device != first.device:
        raise ValueError(f"`{mask_name}` is on {mask.device} but `{first_name}` is on {first.device}")


def check_scale(scale: float | None, head_dim: int) -> float:
    """Return the softmax scale: ``head_dim ** -0.5`` when None, else a finite positive float."""
    if scale is None:
        return head_dim**-0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"`scale` must be a float or None, got {type(scale).__name__}")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"`scale` must be finite and positive, got {scale}")
    return float(scale)


def check_triton_support(name: str, x: torch.Tensor) -> None:
    """Limits of the Triton kernels beyond those of the reference (dtype, head dim)."""
    if x.dtype not in TRITON_DTYPES:
        raise TypeError(
            f"`{name}` has dtype {x.dtype}; the Triton kernels support float16, bfloat16 and float32 "
            "(use backend='torch' for float64)"
        )
    if x.shape[-1] > MAX_TRITON_HEAD_DIM:
        raise ValueError(
            f"head dim {x.shape[-1]} of `{name}` is not supported by the Triton kernels "
            f"(supported: 1 to {MAX_TRITON_HEAD_DIM}); use backend='torch'"
        )
