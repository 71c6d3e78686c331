"""Plain-PyTorch reference for :func:`textvision.kernels.cross_attention`.

Obviously correct rather than fast: it materialises the full score matrix ``(B, H, N, T)``. It is
the CPU path of ``backend="auto"`` and the ground truth the Triton kernels are tested against.
"""

from __future__ import annotations

import torch

from .outputs import CrossAttentionOutput

__all__ = ["cross_attention_reference", "masked_softmax_attention"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision inputs are computed in float32 (the kernels accumulate in float32 too);
    # float32 and float64 inputs keep their precision.
    return torch.promote_types(dtype, torch.float32)


def masked_softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_valid: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention with a per-key validity mask, in the dtype of the inputs.

    Args:
        q: queries ``(B, H, N, D)``.
        k, v: keys and values ``(B, H, T, D)``.
        key_valid: ``(B, T)`` bool, True = the key takes part.
        scale: multiplies ``q kᵀ``.

    Returns:
        ``(o, p, s)``: output ``(B, H, N, D)`` (0 on rows without a valid key), the probabilities
        ``(B, H, N, T)`` (0 on masked keys and on rows without a valid key) and the scaled
        scores ``(B, H, N, T)`` before masking.
    """
    s = (q * scale) @ k.transpose(-1, -2)
    masked = s.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    has_key = key_valid.any(dim=-1)
    if bool(has_key.all()):
        p = torch.softmax(masked, dim=-1)
    else:
        # A row with no valid key would be softmax(-inf, ..., -inf) = NaN; give it finite scores
        # and zero its probabilities afterwards, so neither output nor gradient sees a NaN.
        has_key = has_key[:, None, None, None]
        p = torch.softmax(torch.where(has_key, masked, torch.zeros_like(masked)), dim=-1) * has_key
    o = p @ v
    return o, p, s


def cross_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    return_relevance: bool = False,
) -> CrossAttentionOutput:
    """Cross-attention of image queries over padded text keys, and the instruction relevance.

    ``o = softmax(q kᵀ·scale, masked) v``; a query row with no valid key gives 0.
    ``rel[b, i]`` = mean over heads ``h`` and valid text tokens ``t`` of
    ``softmax_over_i(s[b, h, :, t])[i]``: each valid text token spreads one unit of relevance
    over the image tokens with the same scores, so ``rel`` sums to 1 over ``i`` and is 0 for a
    sample with no valid text token.

    Args:
        q: image queries ``(B, H, N, D)``.
        k, v: text keys/values ``(B, H, T, D)``.
        key_padding_mask: ``(B, T)`` bool, True = real token; None = all real.
        scale: defaults to ``D ** -0.5``.
        return_relevance: also compute ``rel`` ``(B, N)`` float32, detached.

    Returns:
        :class:`CrossAttentionOutput` ``(o, rel)``, ``rel`` None unless ``return_relevance``.
    """
    B, H, N, D = q.shape
    T = k.shape[2]
    scale = D**-0.5 if scale is None else scale
    if key_padding_mask is None:
        key_padding_mask = torch.ones(B, T, dtype=torch.bool, device=q.device)
    dtype = _compute_dtype(q.dtype)
    o, _, s = masked_softmax_attention(q.to(dtype), k.to(dtype), v.to(dtype), key_padding_mask, scale)
    o = o.to(q.dtype)
    if not return_relevance:
        return CrossAttentionOutput(o)
    with torch.no_grad():
        # Softmax over the IMAGE axis (dim -2) for every text column.
        column_p = torch.softmax(s.detach().float(), dim=-2) if N > 0 else s.detach().float()
        valid = key_padding_mask[:, None, None, :].to(column_p.dtype)
        n_valid = key_padding_mask.sum(dim=-1).to(torch.float32)
        rel = (column_p * valid).sum(dim=(1, 3)) / (H * n_valid).clamp_min(1.0)[:, None]
    return CrossAttentionOutput(o, rel.to(torch.float32))
