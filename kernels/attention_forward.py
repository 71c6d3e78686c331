"""Triton forward kernel shared by cross-attention and modality-mutual attention.

One program owns ``BLOCK_M`` query rows of one ``(b, h)`` and walks up to two key/value sources
with a single running softmax state ``(m, l, acc)`` (FlashAttention-2, Dao 2023):

1. the text keys, masked by the padding mask, in tiles of ``BLOCK_T``. Text up to
   ``MAX_BLOCK_T`` tokens is one tile, so for cross-attention (text keys only) the softmax is
   exact in one step;
2. optionally the image keys, streamed in tiles of ``BLOCK_N`` with the online-softmax update
   (modality-mutual attention). The concatenation ``[text ; image]`` is never built.

Query rows may themselves be text (mutual attention's text queries): padded text rows see no
key, so they get ``o = 0`` and ``lse2 = +inf``.

With ``COLUMN_STATS`` (cross-attention with relevance) the program also writes, for every text
column, the max and the sum of ``exp2(s2 - max)`` over its own query rows into slot ``pid_m`` of
a ``(B·H, STAT_TILES, T)`` float32 pair, a few bytes per tile instead of the ``(B, H, N, T)``
probabilities. The relevance pass merges them into the per-column log-sum-exp over the image
axis. The base-2 row LSE is written only with ``STORE_LSE`` (a gradient or relevance needs it).

Grid: one-dimensional, ``B·H · cdiv(N_Q, BLOCK_M)`` programs (see ``triton_common``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import output_buffers
from .triton_common import (
    LOG2E,
    KernelSpec,
    autotuned,
    dot_precision,
    head_block,
    image_block,
    key_validity,
    launched_config,
    load_rows,
    size_bucket,
    split_pid,
    store_rows,
    text_block,
    tile_elements,
    upcast,
)

__all__ = ["FWD_SPEC", "MIN_BLOCK_M", "attention_forward"]

# The smallest query tile of the sweep: column statistics are allocated for this many tiles.
MIN_BLOCK_M = 32


def _elem_bytes(named: dict) -> int:
    return named["Q"].element_size()


def _fwd_elements(config: dict, a: dict) -> int:
    m, d = config["BLOCK_M"], a["BLOCK_D"]
    keys = max(a["BLOCK_T"], a["BLOCK_N"] if a["HAS_IMAGE_KEYS"] else 0)
    e = _elem_bytes(a)
    scores = 3 if a["COLUMN_STATS"] else 2
    # acc (fp32), scores/probabilities (fp32) and q; the key/value tiles are mma operands in
    # shared memory.
    return tile_elements((m, d, 4), *[(m, keys, 4)] * scores, (m, d, e))


FWD_SPEC = KernelSpec(
    name="attention_fwd",
    tile="BLOCK_M",
    length_bucket="N_Q_BUCKET",
    elements=_fwd_elements,
    streams=lambda a: bool(a["HAS_IMAGE_KEYS"]) or a["T_BUCKET"] > a["BLOCK_T"],
)


@triton.jit
def _online_softmax_step(acc, m_i, l_i, q, k, v, valid, qk_scale, PRECISION: tl.constexpr):
    """Fold one key tile into the running state; returns the masked base-2 scores too."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row that has seen no valid key yet keeps m = -inf; exponentiate against 0 instead so that
    # exp2(-inf - -inf) = NaN never happens (its p and alpha are then exactly 0).
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, l_i, s


@autotuned(FWD_SPEC, sizes=(64, 32, 128), key=[
    "N_Q_BUCKET", "T_BUCKET", "N_I_BUCKET", "BLOCK_D", "BLOCK_T", "BLOCK_N",
    "QUERY_IS_TEXT", "HAS_MASK", "HAS_IMAGE_KEYS", "COLUMN_STATS", "STORE_LSE",
])
@triton.jit(do_not_specialize=["N_Q_BUCKET", "T_BUCKET", "N_I_BUCKET"])
def _attention_fwd_kernel(
    Q, KT, VT, KI, VI, MASK, OUT, LSE, COL_MAX, COL_SUM,
    stride_qb, stride_qh, stride_qn,
    stride_ktb, stride_kth, stride_ktn,
    stride_vtb, stride_vth, stride_vtn,
    stride_kib, stride_kih, stride_kin,
    stride_vib, stride_vih, stride_vin,
    stride_ob, stride_oh, stride_on,
    stride_mb,
    H, N_Q, T, N_I, STAT_TILES, qk_scale,
    N_Q_BUCKET, T_BUCKET, N_I_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
    QUERY_IS_TEXT: tl.constexpr, HAS_MASK: tl.constexpr, HAS_IMAGE_KEYS: tl.constexpr,
    COLUMN_STATS: tl.constexpr, STORE_LSE: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    # GPU tensor cores need every dot dimension >= 16 (the interpreter would accept less).
    tl.static_assert(BLOCK_M >= 16)
    tl.static_assert(BLOCK_T >= 16)
    tl.static_assert(BLOCK_N >= 16)
    tl.static_assert(BLOCK_D >= 16)
    pid_bh, pid_m = split_pid(N_Q, BLOCK_M)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_in = offs_m < N_Q
    if QUERY_IS_TEXT:
        row_valid = key_validity(MASK, b, offs_m, N_Q, stride_mb, HAS_MASK)
    else:
        row_valid = row_in
    q = load_rows(
        Q + b * stride_qb + h * stride_qh, offs_m, stride_qn, offs_d, row_in, HEAD_DIM, EVEN_D, UPCAST)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    kt_base = KT + b * stride_ktb + h * stride_kth
    vt_base = VT + b * stride_vtb + h * stride_vth
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        key_valid = key_validity(MASK, b, offs_t, T, stride_mb, HAS_MASK)
        # Padded keys/values read as 0 so that garbage (even NaN) in padding cannot leak.
        k = load_rows(kt_base, offs_t, stride_ktn, offs_d, key_valid, HEAD_DIM, EVEN_D, UPCAST)
        v = load_rows(vt_base, offs_t, stride_vtn, offs_d, key_valid, HEAD_DIM, EVEN_D, UPCAST)
        acc, m_i, l_i, s = _online_softmax_step(
            acc, m_i, l_i, q, k, v, row_valid[:, None] & key_valid[None, :], qk_scale, PRECISION
        )
        if COLUMN_STATS:
            # Softmax statistics down each text column over this tile's image rows (s is -inf on
            # rows past N_Q and on padded columns, which get max -inf and sum 0).
            col_max = tl.max(s, 0)
            col_safe = tl.where(col_max == float("-inf"), 0.0, col_max)
            col_sum = tl.sum(tl.exp2(s - col_safe[None, :]), 0)
            stats = (pid_bh.to(tl.int64) * STAT_TILES + pid_m) * T + offs_t
            tl.store(COL_MAX + stats, col_max, mask=offs_t < T)
            tl.store(COL_SUM + stats, col_sum, mask=offs_t < T)

    if HAS_IMAGE_KEYS:
        ki_base = KI + b * stride_kib + h * stride_kih
        vi_base = VI + b * stride_vib + h * stride_vih
        for n0 in range(0, N_I, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            key_in = offs_n < N_I
            k = load_rows(ki_base, offs_n, stride_kin, offs_d, key_in, HEAD_DIM, EVEN_D, UPCAST)
            v = load_rows(vi_base, offs_n, stride_vin, offs_d, key_in, HEAD_DIM, EVEN_D, UPCAST)
            acc, m_i, l_i, s = _online_softmax_step(
                acc, m_i, l_i, q, k, v, row_valid[:, None] & key_in[None, :], qk_scale, PRECISION
            )

    # l == 0 exactly when the row saw no valid key: output 0, lse +inf (see triton_common).
    empty_row = l_i == 0.0
    l_safe = tl.where(empty_row, 1.0, l_i)
    store_rows(OUT + b * stride_ob + h * stride_oh, offs_m, stride_on, offs_d, acc / l_safe[:, None], row_in,
               HEAD_DIM, EVEN_D, UPCAST)
    if STORE_LSE:
        lse = tl.where(empty_row, float("inf"), m_i + tl.log2(l_safe))
        tl.store(LSE + pid_bh.to(tl.int64) * N_Q + offs_m, lse, mask=row_in)


def strides3(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def attention_forward(
    q: torch.Tensor,
    k_txt: torch.Tensor,
    v_txt: torch.Tensor,
    k_img: torch.Tensor | None,
    v_img: torch.Tensor | None,
    text_mask: torch.Tensor | None,
    scale: float,
    *,
    query_is_text: bool,
    store_lse: bool = True,
    column_stats: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor, int] | None]:
    """Launch the forward kernel.

    Args:
        q: queries ``(B, H, N_Q, D)``, unit stride on ``D``.
        k_txt, v_txt: text keys/values ``(B, H, T, D)``.
        k_img, v_img: image keys/values ``(B, H, N_I, D)``, or None (cross-attention).
        text_mask: ``(B, T)`` bool or None (all real).
        scale: softmax scale (natural units).
        query_is_text: query rows are text tokens, masked by ``text_mask``.
        store_lse: write the base-2 row LSE (needed by the backward and by mutual relevance).
        column_stats: also return the per-tile column statistics for the relevance pass
            (text keys only, i.e. ``k_img is None``).

    Returns:
        ``o`` ``(B, H, N_Q, D)`` (dtype of ``q``, in ``q``'s stride order), ``lse2``
        ``(B, H, N_Q)`` float32 base 2 or None, and ``(col_max, col_sum, n_tiles)`` — the
        ``(B·H, cdiv(N_Q, MIN_BLOCK_M), T)`` float32 statistics of which the first ``n_tiles``
        slots per ``(b, h)`` were written — or None.
    """
    B, H, N_Q, D = q.shape
    T = k_txt.shape[2]
    has_image = k_img is not None
    if column_stats and has_image:
        raise ValueError("column statistics are defined for text keys only (cross-attention)")
    device = q.device
    o = output_buffers.empty_like(q)
    lse = output_buffers.empty((B, H, N_Q), dtype=torch.float32, device=device) if store_lse else None
    stat_tiles = triton.cdiv(N_Q, MIN_BLOCK_M)
    if column_stats:
        col_max, col_sum = (
            output_buffers.empty((B * H, stat_tiles, T), dtype=torch.float32, device=device) for _ in range(2)
        )
    else:
        col_max = col_sum = o  # never touched: COLUMN_STATS is off
    mask = text_mask.view(torch.uint8) if text_mask is not None else q
    k_i, v_i = (k_img, v_img) if has_image else (k_txt, v_txt)
    N_I = k_i.shape[2] if has_image else 0
    block_d = head_block(D)

    def grid(meta):
        return (B * H * triton.cdiv(N_Q, meta["BLOCK_M"]),)

    _attention_fwd_kernel[grid](
        q, k_txt, v_txt, k_i, v_i, mask, o, lse if store_lse else o, col_max, col_sum,
        *strides3(q), *strides3(k_txt), *strides3(v_txt), *strides3(k_i), *strides3(v_i), *strides3(o),
        mask.stride(0) if text_mask is not None else 0,
        H, N_Q, T, N_I, stat_tiles, scale * LOG2E,
        size_bucket(N_Q), size_bucket(T), size_bucket(N_I),
        HEAD_DIM=D, BLOCK_D=block_d, EVEN_D=block_d == D,
        BLOCK_T=text_block(T, q.dtype, D), BLOCK_N=image_block(q.dtype, D),
        QUERY_IS_TEXT=query_is_text, HAS_MASK=text_mask is not None, HAS_IMAGE_KEYS=has_image,
        COLUMN_STATS=column_stats, STORE_LSE=store_lse,
        UPCAST=upcast(q.dtype), PRECISION=dot_precision(q.dtype),
    )
    if not column_stats:
        return o, lse, None
    n_tiles = triton.cdiv(N_Q, launched_config(FWD_SPEC.name).kwargs["BLOCK_M"])
    return o, lse, (col_max, col_sum, n_tiles)
