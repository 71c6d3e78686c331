"""Fused modality-mutual attention over two K/V sources, with instruction relevance.

``o_img, o_txt, rel = mutual_attention(q_img, k_img, v_img, q_txt, k_txt, v_txt, text_mask, *,
scale=None, return_relevance=False, backend="auto")`` — see :func:`mutual_attention`.
"""

from __future__ import annotations

import torch

from .attention_backward import attention_backward_delta, attention_backward_dkdv, attention_backward_dq
from .attention_forward import attention_forward
from .dispatch import use_triton
from .input_checks import check_attention_inputs, check_scale
from .mutual_attention_reference import mutual_attention_reference
from .outputs import MutualAttentionOutput
from .relevance import text_to_image_relevance
from .triton_common import last_dim_contiguous

__all__ = ["mutual_attention"]


class _MutualAttentionFunction(torch.autograd.Function):
    """Triton forward (+ relevance pass) and backward of :func:`mutual_attention`.

    Forward: two launches of the shared kernel, image queries and text queries, each walking text
    keys then image keys with one running softmax state; the row LSEs are written only when a
    gradient (or, for the text queries, relevance) needs them. Backward: ``delta`` for both
    query sets, ``dq`` for both, and ``dk``/``dv`` for both key sources summed over image and
    text queries.
    """

    @staticmethod
    def forward(ctx, q_img, k_img, v_img, q_txt, k_txt, v_txt, mask, scale, return_relevance, need_grad):
        kv = (k_txt, v_txt, k_img, v_img)
        o_img, lse_img, _ = attention_forward(
            q_img, *kv, mask, scale, query_is_text=False, store_lse=need_grad
        )
        o_txt, lse_txt, _ = attention_forward(
            q_txt, *kv, mask, scale, query_is_text=True, store_lse=need_grad or return_relevance
        )
        rel = None
        if return_relevance:
            rel = text_to_image_relevance(k_img, q_txt, mask, scale, text_lse=lse_txt)
            ctx.mark_non_differentiable(rel)
        if need_grad:
            ctx.save_for_backward(
                q_img, k_img, v_img, q_txt, k_txt, v_txt, o_img, o_txt, lse_img, lse_txt, mask
            )
        ctx.scale = scale
        return o_img, o_txt, rel

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do_img, do_txt, _drel):
        q_img, k_img, v_img, q_txt, k_txt, v_txt, o_img, o_txt, lse_img, lse_txt, mask = ctx.saved_tensors
        scale = ctx.scale
        do_img = last_dim_contiguous(do_img.to(o_img.dtype))
        do_txt = last_dim_contiguous(do_txt.to(o_txt.dtype))
        delta_img = attention_backward_delta(o_img, do_img)
        delta_txt = attention_backward_delta(o_txt, do_txt)
        image_queries = (q_img, do_img, lse_img, delta_img)
        text_queries = (q_txt, do_txt, lse_txt, delta_txt)
        dq_img = attention_backward_dq(
            q_img, do_img, lse_img, delta_img, k_txt, v_txt, k_img, v_img, mask, scale, query_is_text=False
        )
        dq_txt = attention_backward_dq(
            q_txt, do_txt, lse_txt, delta_txt, k_txt, v_txt, k_img, v_img, mask, scale, query_is_text=True
        )
        dk_img, dv_img = attention_backward_dkdv(
            k_img, v_img, image_queries, text_queries, mask, scale, key_is_text=False
        )
        dk_txt, dv_txt = attention_backward_dkdv(
            k_txt, v_txt, image_queries, text_queries, mask, scale, key_is_text=True
        )
        return dq_img, dk_img, dv_img, dq_txt, dk_txt, dv_txt, None, None, None, None


def mutual_attention(
    q_img: torch.Tensor,
    k_img: torch.Tensor,
    v_img: torch.Tensor,
    q_txt: torch.Tensor,
    k_txt: torch.Tensor,
    v_txt: torch.Tensor,
    text_mask: torch.Tensor | None,
    *,
    scale: float | None = None,
    return_relevance: bool = False,
    backend: str = "auto",
) -> MutualAttentionOutput:
    """Modality-mutual attention: one softmax over image and valid text keys, both directions.

    Image queries attend over ``[image keys ; valid text keys]``, text queries over
    ``[valid text keys ; image keys]`` (AKI, arXiv:2503.02597, made bidirectional). The result
    equals SDPA over the concatenated keys/values with the padding mask; the Triton path walks
    the two sources with one running softmax state and never builds the concatenation.

    Args:
        q_img, k_img, v_img: image tokens ``(B, H, N, D)``.
        q_txt, k_txt, v_txt: text tokens ``(B, H, T, D)``.
        text_mask: ``(B, T)`` bool, True = real token; None = every text token is real.
        scale: score scale, defaults to ``D ** -0.5``.
        return_relevance: also return ``rel`` ``(B, N)`` float32, detached: the mean over heads
            and valid text queries of the text→image attention probability on image key ``i``
            (not renormalised); 0 for a sample with no valid text token.
        backend: ``"auto"`` (Triton for CUDA tensors, the PyTorch reference otherwise),
            ``"triton"`` or ``"torch"``.

    Returns:
        :class:`MutualAttentionOutput` ``(o_img (B, H, N, D), o_txt (B, H, T, D), rel (B, N) or
        None)``; padded text query rows of ``o_txt`` are 0. On the Triton path the outputs are
        in the stride order of ``q_img`` / ``q_txt``. Differentiable in all six inputs.
    """
    named = {"q_img": q_img, "k_img": k_img, "v_img": v_img, "q_txt": q_txt, "k_txt": k_txt, "v_txt": v_txt}
    check_attention_inputs(
        named, [("q_img", "k_img"), ("k_img", "v_img"), ("q_txt", "k_txt"), ("k_txt", "v_txt")],
        "text_mask", text_mask, "q_txt",
    )
    scale = check_scale(scale, q_img.shape[-1])
    if not isinstance(return_relevance, bool):
        raise TypeError(f"`return_relevance` must be a bool, got {type(return_relevance).__name__}")
    if use_triton(backend, named):
        if min(q_img.shape) > 0 and q_txt.shape[2] > 0:
            mask = None if text_mask is None else text_mask.contiguous()
            need_grad = torch.is_grad_enabled() and any(x.requires_grad for x in named.values())
            o_img, o_txt, rel = _MutualAttentionFunction.apply(
                *(last_dim_contiguous(x) for x in named.values()), mask, scale, return_relevance, need_grad
            )
            return MutualAttentionOutput(o_img, o_txt, rel)
        # Empty inputs (no image or no text tokens): the reference gives the right result.
    return mutual_attention_reference(
        q_img, k_img, v_img, q_txt, k_txt, v_txt, text_mask, scale=scale, return_relevance=return_relevance
    )
