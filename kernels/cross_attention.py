"""Fused cross-attention of image queries over padded text keys, with instruction relevance.

``o, rel = cross_attention(q, k, v, key_padding_mask=None, *, scale=None,
return_relevance=False, backend="auto")`` — see :func:`cross_attention`.
"""

from __future__ import annotations

import torch

from .attention_backward import attention_backward_delta, attention_backward_dkdv, attention_backward_dq
from .attention_forward import attention_forward
from .cross_attention_backward_short import cross_attention_backward_short
from .cross_attention_fused_relevance import FUSED_SPEC, cross_attention_forward_with_relevance
from .cross_attention_reference import cross_attention_reference
from .dispatch import use_triton
from .input_checks import check_attention_inputs, check_scale
from .outputs import CrossAttentionOutput
from .relevance import text_to_image_relevance
from .triton_common import (
    default_config,
    estimated_registers,
    head_block,
    last_dim_contiguous,
    size_bucket,
    text_block,
)

__all__ = ["cross_attention", "fused_relevance_programs_per_sm", "fused_relevance_wins"]

# Which relevance path to take: None = decide per call (see `_fused_relevance`); tests force
# True/False to exercise both.
FUSED_RELEVANCE: bool | None = None
# Which backward: None = the one-launch kernel when the text fits one tile, else the three-launch
# path (see `_short_text_backward`); tests force True/False to exercise both.
SHORT_TEXT_BACKWARD: bool | None = None
_MAX_BLOCKS_PER_SM = 32


def fused_relevance_programs_per_sm(
    dtype: torch.dtype, head_dim: int, n_text: int, n_img: int, *,
    regs_per_sm: int, max_threads_per_sm: int, smem_per_sm: int,
) -> int:
    """Resident programs per SM of the fused relevance kernel at its default config, from the
    register model of the prune filter, its thread count and its shared memory (the text K/V
    tiles and one query tile): the occupancy the one-program-per-(b, h) grid has to fill."""
    block_d, block_t = head_block(head_dim), text_block(n_text, dtype, head_dim)
    tensor = torch.empty(0, dtype=dtype)
    named = {"Q": tensor, "BLOCK_D": block_d, "BLOCK_T": block_t, "N_Q_BUCKET": size_bucket(n_img)}
    config = default_config(FUSED_SPEC.name, named)
    threads = 32 * config.num_warps
    regs = estimated_registers(FUSED_SPEC.elements(config.kwargs, named), config.num_warps)
    regs = -(-regs // 8) * 8  # allocation granularity
    smem = (2 * block_t + config.kwargs["BLOCK_M"]) * block_d * tensor.element_size()
    return max(1, min(max_threads_per_sm // threads, regs_per_sm // (regs * threads), smem_per_sm // smem,
                      _MAX_BLOCKS_PER_SM))


def fused_relevance_wins(batch_heads: int, n_img: int, n_text: int, dtype: torch.dtype, head_dim: int,
                         props) -> bool:
    """Whether ``batch_heads`` one-per-(b, h) programs fill every SM of a device with CUDA
    properties ``props`` (``torch.cuda.get_device_properties``) at the fused kernel's occupancy."""
    per_sm = fused_relevance_programs_per_sm(
        dtype, head_dim, n_text, n_img, regs_per_sm=props.regs_per_multiprocessor,
        max_threads_per_sm=props.max_threads_per_multi_processor,
        smem_per_sm=props.shared_memory_per_multiprocessor,
    )
    return batch_heads >= props.multi_processor_count * per_sm


def _fused_relevance(q: torch.Tensor, n_text: int) -> bool:
    """The one-launch relevance kernel runs one program per (b, h) and walks all image rows
    serially: take it when the text fits one tile and the B·H programs fill every SM at the
    kernel's occupancy (one full wave, :func:`fused_relevance_wins`), else the two-pass path,
    whose grid is as wide as the forward's."""
    if FUSED_RELEVANCE is not None:
        return FUSED_RELEVANCE
    B, H, N, D = q.shape
    if n_text > text_block(n_text, q.dtype, D):
        return False
    if q.device.type != "cuda":
        return True  # the interpreter: no SMs to fill
    return fused_relevance_wins(B * H, N, n_text, q.dtype, D, torch.cuda.get_device_properties(q.device))


def _short_text_backward(q: torch.Tensor, n_text: int) -> bool:
    """The one-launch backward (:mod:`.cross_attention_backward_short`) whenever the text fits
    one tile: it moves the minimum bytes and its grid is that of the three-launch path's text
    dk/dv launch, which dominates that path."""
    if SHORT_TEXT_BACKWARD is not None:
        return SHORT_TEXT_BACKWARD
    return n_text <= text_block(n_text, q.dtype, q.shape[-1])


class _CrossAttentionFunction(torch.autograd.Function):
    """Triton forward (+ relevance) and backward of :func:`cross_attention`.

    Relevance comes either from the fused one-launch kernel
    (:mod:`.cross_attention_fused_relevance`) or from the tiled forward's column statistics plus
    the relevance pass (:mod:`.relevance`); both give the same numbers.

    Saved for backward (only when a gradient is needed; otherwise the LSE is not even
    written): ``q, k, v, o`` and the float32 base-2 LSE ``(B, H, N)`` — no probabilities. The
    relevance output is marked non-differentiable. Backward: one launch when the text fits one
    tile (:mod:`.cross_attention_backward_short`), else delta, dq and dk/dv launches.
    """

    @staticmethod
    def forward(ctx, q, k, v, mask, scale, return_relevance, need_grad):
        if return_relevance and _fused_relevance(q, k.shape[2]):
            o, lse, rel = cross_attention_forward_with_relevance(q, k, v, mask, scale, store_lse=need_grad)
        else:
            o, lse, stats = attention_forward(
                q, k, v, None, None, mask, scale, query_is_text=False, store_lse=need_grad,
                column_stats=return_relevance,
            )
            rel = text_to_image_relevance(q, k, mask, scale, column_stats=stats) if return_relevance else None
        if rel is not None:
            ctx.mark_non_differentiable(rel)
        if need_grad:
            ctx.save_for_backward(q, k, v, o, lse, mask)
        ctx.scale = scale
        return o, rel

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, _drel):
        q, k, v, o, lse, mask = ctx.saved_tensors
        do = last_dim_contiguous(do.to(o.dtype))
        if _short_text_backward(q, k.shape[2]):
            dq, dk, dv = cross_attention_backward_short(q, k, v, o, do, lse, mask, ctx.scale)
            return dq, dk, dv, None, None, None, None
        delta = attention_backward_delta(o, do)
        dq = attention_backward_dq(q, do, lse, delta, k, v, None, None, mask, ctx.scale, query_is_text=False)
        dk, dv = attention_backward_dkdv(k, v, (q, do, lse, delta), None, mask, ctx.scale, key_is_text=True)
        return dq, dk, dv, None, None, None, None


def cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    return_relevance: bool = False,
    backend: str = "auto",
) -> CrossAttentionOutput:
    """Image queries attend to (padded) text keys: ``o = softmax(q kᵀ·scale, masked) v``.

    Args:
        q: image queries ``(B, H, N, D)``.
        k, v: text keys and values ``(B, H, T, D)``.
        key_padding_mask: ``(B, T)`` bool, True = real token; None = every key is real.
        scale: score scale, defaults to ``D ** -0.5``.
        return_relevance: also compute the instruction relevance ``rel`` ``(B, N)`` float32,
            detached: ``rel[b, i]`` = mean over heads and valid text tokens ``t`` of
            ``softmax_over_i(s[b, h, :, t])[i]`` with ``s = q kᵀ·scale``. It sums to 1 over ``i``
            and is 0 for a sample with no valid text token.
        backend: ``"auto"`` (Triton for CUDA tensors, the PyTorch reference otherwise),
            ``"triton"`` or ``"torch"``.

    Returns:
        :class:`CrossAttentionOutput` ``(o, rel)``: ``o`` ``(B, H, N, D)`` in the dtype of ``q``
        (0 for a query row with no valid key; on the Triton path in ``q``'s stride order, so a
        ``(B, N, H, D)``-ordered ``q`` gives an ``o`` whose ``(B·N, H·D)`` reshape is a view),
        and ``rel``, or None unless ``return_relevance``. Differentiable in ``q``, ``k``, ``v``.
    """
    check_attention_inputs({"q": q, "k": k, "v": v}, [("k", "v")], "key_padding_mask", key_padding_mask, "k")
    scale = check_scale(scale, q.shape[-1])
    if not isinstance(return_relevance, bool):
        raise TypeError(f"`return_relevance` must be a bool, got {type(return_relevance).__name__}")
    if use_triton(backend, {"q": q, "k": k, "v": v}):
        if min(q.shape) > 0 and k.shape[2] > 0:
            mask = None if key_padding_mask is None else key_padding_mask.contiguous()
            need_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
            o, rel = _CrossAttentionFunction.apply(
                *(last_dim_contiguous(x) for x in (q, k, v)), mask, scale, return_relevance, need_grad
            )
            return CrossAttentionOutput(o, rel)
        # Empty inputs: nothing for a kernel to do; the reference gives the right empty/zero result.
    return cross_attention_reference(
        q, k, v, key_padding_mask, scale=scale, return_relevance=return_relevance
    )

