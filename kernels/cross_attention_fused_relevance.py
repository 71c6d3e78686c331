"""Cross-attention forward and instruction relevance in one launch (short text).

The relevance of ``cross_attention`` needs, for every text column ``t``, the log-sum-exp of the
scores down the **image** axis — a reduction over all ``N`` query rows — before any image token's
share can be computed. The two-pass path (:mod:`.relevance`) lets the tiled forward write
per-tile column statistics and re-reads ``q`` from memory in a second launch. This kernel instead
gives one program a whole ``(b, h)``:

1. walk the image rows in tiles of ``BLOCK_M``: exact row softmax against the text keys (one
   tile), store ``o`` (and the row LSE when a gradient needs it), and fold the tile into a
   running column (max, sum) held in registers — an online softmax down the columns;
2. walk the image rows again: recompute the ``(BLOCK_M, BLOCK_T)`` scores from ``q`` — which this
   program has just read, so the re-read comes from L2 rather than HBM — and store each row's
   sum over valid text columns of ``exp2(s2 - column_lse2)`` as a per-head partial ``(B, H, N)``.

The text keys and values are re-read from L1/L2 on every row tile rather than kept live across
the loops: an mma operand is replicated across the warps that split the rows, so holding a
``(128, D)`` tile for the whole program is what made this kernel spill at ``BLOCK_T = 128``.
A second tiny kernel (:func:`.relevance.head_mean`) sums the per-head partials in a fixed
order and divides by ``H · n_valid[b]``. No probability tensor is written, no atomics are used
(deterministic), and the
extra HBM traffic is the float32 per-head partial (8 bytes per query row, against 4·D bytes of
``q`` and ``o`` in 16-bit). The grid has ``B·H`` programs, so the launcher uses this kernel only
when that fills every SM at the kernel's occupancy and the text fits one tile
(``cross_attention._fused_relevance``); otherwise it takes the two-pass path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import output_buffers
from .attention_forward import strides3
from .relevance import head_mean
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

__all__ = ["FUSED_SPEC", "cross_attention_forward_with_relevance"]


def _fused_elements(config: dict, a: dict) -> int:
    m, t, d = config["BLOCK_M"], a["BLOCK_T"], a["BLOCK_D"]
    # acc, scores, probabilities and the column update (fp32), q; k/v are mma operands.
    return tile_elements((m, d, 4), (m, t, 4), (m, t, 4), (m, t, 4), (m, d, a["Q"].element_size()))


FUSED_SPEC = KernelSpec(
    name="cross_fwd_relevance",
    tile="BLOCK_M",
    length_bucket="N_Q_BUCKET",
    elements=_fused_elements,
    streams=lambda a: a["N_Q_BUCKET"] > 32,  # the loops walk the image rows
)


@autotuned(FUSED_SPEC, sizes=(64, 32, 128), key=["N_Q_BUCKET", "BLOCK_D", "BLOCK_T", "HAS_MASK", "STORE_LSE"])
@triton.jit(do_not_specialize=["N_Q_BUCKET"])
def _cross_fwd_relevance_kernel(
    Q, K, V, MASK, OUT, LSE, REL_HEAD,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_mb,
    H, N_Q, T, qk_scale,
    N_Q_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_MASK: tl.constexpr, STORE_LSE: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
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
    row_base = pid_bh.to(tl.int64) * N_Q

    col_max = tl.full([BLOCK_T], float("-inf"), tl.float32)
    col_sum = tl.zeros([BLOCK_T], tl.float32)
    for m0 in range(0, N_Q, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        row_in = offs_m < N_Q
        q = load_rows(q_base, offs_m, stride_qn, offs_d, row_in, HEAD_DIM, EVEN_D, UPCAST)
        k = load_rows(k_base, offs_t, stride_kn, offs_d, key_valid, HEAD_DIM, EVEN_D, UPCAST)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        s = tl.where(row_in[:, None] & key_valid[None, :], s, float("-inf"))
        # Exact row softmax: the text is one tile. Rows without a valid key: o = 0, lse = +inf.
        m = tl.max(s, 1)
        p = tl.exp2(s - tl.where(m == float("-inf"), 0.0, m)[:, None])
        row_sum = tl.sum(p, 1)
        empty_row = row_sum == 0.0
        l_safe = tl.where(empty_row, 1.0, row_sum)
        v = load_rows(v_base, offs_t, stride_vn, offs_d, key_valid, HEAD_DIM, EVEN_D, UPCAST)
        o = tl.dot(p.to(v.dtype), v, input_precision=PRECISION) / l_safe[:, None]
        store_rows(o_base, offs_m, stride_on, offs_d, o, row_in, HEAD_DIM, EVEN_D, UPCAST)
        if STORE_LSE:
            lse = tl.where(empty_row, float("inf"), m + tl.log2(l_safe))
            tl.store(LSE + row_base + offs_m, lse, mask=row_in)
        # Online softmax down each column, over the image rows seen so far.
        new_max = tl.maximum(col_max, tl.max(s, 0))
        new_safe = tl.where(new_max == float("-inf"), 0.0, new_max)
        col_sum = col_sum * tl.exp2(col_max - new_safe) + tl.sum(tl.exp2(s - new_safe[None, :]), 0)
        col_max = new_max

    # Padded columns have sum 0: lse +inf makes their probabilities exactly 0 below.
    col_lse = tl.where(col_sum > 0.0, col_max + tl.log2(tl.where(col_sum > 0.0, col_sum, 1.0)), float("inf"))
    for m0 in range(0, N_Q, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        row_in = offs_m < N_Q
        q = load_rows(q_base, offs_m, stride_qn, offs_d, row_in, HEAD_DIM, EVEN_D, UPCAST)
        k = load_rows(k_base, offs_t, stride_kn, offs_d, key_valid, HEAD_DIM, EVEN_D, UPCAST)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.where(row_in[:, None] & key_valid[None, :], tl.exp2(s - col_lse[None, :]), 0.0)
        tl.store(REL_HEAD + row_base + offs_m, tl.sum(p, 1), mask=row_in)


def cross_attention_forward_with_relevance(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    text_mask: torch.Tensor | None,
    scale: float,
    *,
    store_lse: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Launch the fused kernel (needs the text to fit one tile, ``text_block``).

    Returns:
        ``o`` ``(B, H, N, D)`` in ``q``'s stride order, ``lse2`` ``(B, H, N)`` float32 base 2
        (None unless ``store_lse``), ``rel`` ``(B, N)`` float32.
    """
    B, H, N, D = q.shape
    T = k.shape[2]
    block_t = text_block(T, q.dtype, D)
    if T > block_t:
        raise ValueError(f"the fused relevance kernel needs T <= {block_t} (one text tile), got {T}")
    device = q.device
    o = output_buffers.empty_like(q)
    lse = output_buffers.empty((B, H, N), dtype=torch.float32, device=device) if store_lse else None
    rel_head = output_buffers.empty((B, H, N), dtype=torch.float32, device=device)
    mask = text_mask.view(torch.uint8) if text_mask is not None else q
    block_d = head_block(D)
    _cross_fwd_relevance_kernel[(B * H,)](
        q, k, v, mask, o, lse if store_lse else rel_head, rel_head,
        *strides3(q), *strides3(k), *strides3(v), *strides3(o),
        mask.stride(0) if text_mask is not None else 0,
        H, N, T, scale * LOG2E,
        size_bucket(N),
        HEAD_DIM=D, BLOCK_D=block_d, EVEN_D=block_d == D, BLOCK_T=block_t,
        HAS_MASK=text_mask is not None, STORE_LSE=store_lse,
        UPCAST=upcast(q.dtype), PRECISION=dot_precision(q.dtype),
    )
    return o, lse, head_mean(rel_head, text_mask, T)
