"""Cross-attention backward in one launch when the text fits one tile (``T <= text_block``).

The general backward (:mod:`.attention_backward`) takes three launches — ``delta = rowsum(dO∘O)``,
``dq`` over query tiles, ``dk``/``dv`` over key tiles — and so reads ``q`` and ``dO`` twice and
``o``/``dO`` once more for ``delta``: about 7 passes of query-sized tensors against the minimum
4 (read ``q``, ``o``, ``dO``; write ``dq``). With short text its ``dk``/``dv`` launch has one
program per ``(b, h)`` that already walks every image row in order. This kernel is that program
doing everything: one program per ``(b, h)`` walks the image rows in tiles of ``BLOCK_M``
(autotuned) and for each tile

1. loads ``q``, ``o``, ``dO`` and the row LSE once; ``delta`` is computed in registers;
2. recomputes ``p = exp2(s2 - lse2)`` against the text keys (one tile, re-read from L1/L2);
3. writes that tile's ``dq = scale · ds·k`` and folds ``pᵀ dO`` and ``dsᵀ q`` into the
   ``dk``/``dv`` accumulators held in registers for the whole program.

``dk``/``dv`` are stored once at the end. Query-sized tensors cross HBM exactly the minimum four
times; ``dk``/``dv`` need no partials, no second launch and no atomics, and the accumulation order
is fixed: bitwise deterministic. Rows without a valid key (all-padding samples) have
``lse2 = +inf``, so ``p = 0`` and their ``dq`` is 0; padded keys are masked, so their ``dk``/``dv``
are exactly 0.

Grid: ``B·H`` programs, like the three-launch path's text ``dk``/``dv`` launch that dominates it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import output_buffers
from .attention_forward import strides3
from .triton_common import (
    LOG2E,
    KernelSpec,
    autotuned,
    dot_precision,
    head_block,
    key_validity,
    load_rows,
    size_bucket,
    store_rows,
    text_block,
    tile_elements,
    upcast,
)

__all__ = ["SHORT_BWD_SPEC", "cross_attention_backward_short"]


def _short_bwd_elements(config: dict, a: dict) -> int:
    m, t, d = config["BLOCK_M"], a["BLOCK_T"], a["BLOCK_D"]
    e = a["Q"].element_size()
    # dk, dv accumulators (fp32); s/p, dp, ds (fp32); the tile's dq (fp32); q, o, dO.
    return tile_elements((t, d, 4), (t, d, 4), (m, t, 4), (m, t, 4), (m, t, 4), (m, d, 4),
                         (m, d, e), (m, d, e), (m, d, e))


SHORT_BWD_SPEC = KernelSpec(
    name="cross_bwd_short",
    tile="BLOCK_M",
    length_bucket="N_Q_BUCKET",
    elements=_short_bwd_elements,
    streams=lambda a: a["N_Q_BUCKET"] > 32,  # the loop walks the image rows
)


@autotuned(SHORT_BWD_SPEC, sizes=(64, 32, 128), key=["N_Q_BUCKET", "BLOCK_D", "BLOCK_T", "HAS_MASK"])
@triton.jit(do_not_specialize=["N_Q_BUCKET"])
def _cross_bwd_short_kernel(
    Q, K, V, MASK, OUT, DO, LSE, DQ, DK, DV,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_dob, stride_doh, stride_don,
    stride_dqb, stride_dqh, stride_dqn,
    stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    stride_mb,
    H, N_Q, T, qk_scale, sm_scale,
    N_Q_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    tl.static_assert(BLOCK_M >= 16)
    tl.static_assert(BLOCK_T >= 16)
    tl.static_assert(BLOCK_D >= 16)
    pid_bh = tl.program_id(0)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_T)
    key_valid = key_validity(MASK, b, offs_t, T, stride_mb, HAS_MASK)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    q_base = Q + b * stride_qb + h * stride_qh
    o_base = OUT + b * stride_ob + h * stride_oh
    do_base = DO + b * stride_dob + h * stride_doh
    dq_base = DQ + b * stride_dqb + h * stride_dqh
    row_base = pid_bh.to(tl.int64) * N_Q

    dk = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
    for m0 in range(0, N_Q, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        row_in = offs_m < N_Q
        q = load_rows(q_base, offs_m, stride_qn, offs_d, row_in, HEAD_DIM, EVEN_D, UPCAST)
        do = load_rows(do_base, offs_m, stride_don, offs_d, row_in, HEAD_DIM, EVEN_D, UPCAST)
        o = load_rows(o_base, offs_m, stride_on, offs_d, row_in, HEAD_DIM, EVEN_D, UPCAST)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        lse = tl.load(LSE + row_base + offs_m, mask=row_in, other=float("inf"))
        k = load_rows(k_base, offs_t, stride_kn, offs_d, key_valid, HEAD_DIM, EVEN_D, UPCAST)
        v = load_rows(v_base, offs_t, stride_vn, offs_d, key_valid, HEAD_DIM, EVEN_D, UPCAST)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.where(row_in[:, None] & key_valid[None, :], tl.exp2(s - lse[:, None]), 0.0)
        dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
        store_rows(dq_base, offs_m, stride_dqn, offs_d, dq * sm_scale, row_in, HEAD_DIM, EVEN_D, UPCAST)
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION)

    t_in = offs_t < T
    store_rows(DK + b * stride_dkb + h * stride_dkh, offs_t, stride_dkn, offs_d, dk * sm_scale, t_in,
               HEAD_DIM, EVEN_D, UPCAST)
    store_rows(DV + b * stride_dvb + h * stride_dvh, offs_t, stride_dvn, offs_d, dv, t_in, HEAD_DIM, EVEN_D,
               UPCAST)


def cross_attention_backward_short(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    do: torch.Tensor,
    lse: torch.Tensor,
    text_mask: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` in the stride order of ``q``, ``k``, ``v`` (needs ``T <= text_block``)."""
    B, H, N, D = q.shape
    T = k.shape[2]
    block_t = text_block(T, q.dtype, D)
    if T > block_t:
        raise ValueError(f"the one-launch backward needs T <= {block_t} (one text tile), got {T}")
    dq = output_buffers.empty_like(q)
    dk = output_buffers.empty_like(k)
    dv = output_buffers.empty_like(v)
    mask = text_mask.view(torch.uint8) if text_mask is not None else q
    block_d = head_block(D)
    _cross_bwd_short_kernel[(B * H,)](
        q, k, v, mask, o, do, lse, dq, dk, dv,
        *strides3(q), *strides3(k), *strides3(v), *strides3(o), *strides3(do),
        *strides3(dq), *strides3(dk), *strides3(dv),
        mask.stride(0) if text_mask is not None else 0,
        H, N, T, scale * LOG2E, scale,
        size_bucket(N),
        HEAD_DIM=D, BLOCK_D=block_d, EVEN_D=block_d == D, BLOCK_T=block_t,
        HAS_MASK=text_mask is not None, UPCAST=upcast(q.dtype), PRECISION=dot_precision(q.dtype),
    )
    return dq, dk, dv
