"""Triton backward kernels shared by cross-attention and modality-mutual attention.

FlashAttention-2's backward (Dao 2023) with the forward's two key sources and text masks:

- :func:`_delta_kernel`: ``delta = rowsum(dO ∘ O)`` per query row, float32.
- :func:`_dq_kernel`: one program per ``BLOCK_M`` query rows (autotuned); walks the text keys
  (masked) and optionally the image keys, recomputing ``p = exp2(s2 - lse2)`` from the saved
  base-2 LSE, and accumulates ``dq = scale · Σ ds·k`` with ``ds = p ∘ (dO vᵀ - delta)``.
- :func:`_dkdv_kernel`: one program per ``BLOCK_K`` keys (text keys or image keys); walks the
  image queries and optionally the text queries (masked rows) in tiles of ``BLOCK_M``
  (autotuned), accumulating ``dv = Σ pᵀ dO`` and ``dk = scale · Σ dsᵀ q``.

Grids are one-dimensional over ``B·H`` × tiles (see ``triton_common``); gradients are allocated in
their input's stride order.

Every gradient element is written by exactly one program: no atomics, deterministic. Query rows
without a valid key have ``lse2 = +inf``, so their ``p`` is 0 and they contribute nothing;
padded keys are masked, so their ``dk``/``dv`` are exactly 0.
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
    image_block,
    key_validity,
    load_rows,
    size_bucket,
    split_pid,
    store_rows,
    text_block,
    tile_elements,
    upcast,
)

__all__ = [
    "DELTA_BLOCK_M",
    "DKDV_SPEC",
    "DQ_SPEC",
    "attention_backward_delta",
    "attention_backward_dkdv",
    "attention_backward_dq",
]

DELTA_BLOCK_M = 64


def _dq_elements(config: dict, a: dict) -> int:
    m, d = config["BLOCK_M"], a["BLOCK_D"]
    keys = max(a["BLOCK_T"], a["BLOCK_N"] if a["HAS_IMAGE_KEYS"] else 0)
    e = a["Q"].element_size()
    # dq (fp32); s/p, dp and ds (fp32); q and dO.
    return tile_elements((m, d, 4), (m, keys, 4), (m, keys, 4), (m, keys, 4), (m, d, e), (m, d, e))


def _dkdv_elements(config: dict, a: dict) -> int:
    m, k, d = config["BLOCK_M"], a["BLOCK_K"], a["BLOCK_D"]
    e = a["K"].element_size()
    # dk, dv (fp32); s/p, dp and ds (fp32); k and v held for the whole program.
    return tile_elements((k, d, 4), (k, d, 4), (m, k, 4), (m, k, 4), (m, k, 4), (k, d, e), (k, d, e))


DQ_SPEC = KernelSpec(
    name="attention_dq",
    tile="BLOCK_M",
    length_bucket="N_Q_BUCKET",
    elements=_dq_elements,
    streams=lambda a: bool(a["HAS_IMAGE_KEYS"]) or a["T_BUCKET"] > a["BLOCK_T"],
)
DKDV_SPEC = KernelSpec(
    name="attention_dkdv",
    tile="BLOCK_M",
    length_bucket="N_QI_BUCKET",
    elements=_dkdv_elements,
    streams=lambda a: a["N_QI_BUCKET"] > 32,
)


@triton.jit
def _delta_kernel(OUT, DO, DELTA, stride_ob, stride_oh, stride_on, stride_db, stride_dh, stride_dn,
                  H, N, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
                  BLOCK_M: tl.constexpr):
    pid_bh, pid_m = split_pid(N, BLOCK_M)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_in = offs_m < N
    o = load_rows(
        OUT + b * stride_ob + h * stride_oh, offs_m, stride_on, offs_d, row_in, HEAD_DIM, EVEN_D, True)
    do = load_rows(
        DO + b * stride_db + h * stride_dh, offs_m, stride_dn, offs_d, row_in, HEAD_DIM, EVEN_D, True)
    tl.store(DELTA + pid_bh.to(tl.int64) * N + offs_m, tl.sum(o * do, 1), mask=row_in)


@triton.jit
def _dq_step(dq, q, do, lse, delta, k, v, valid, qk_scale, PRECISION: tl.constexpr):
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)


@autotuned(DQ_SPEC, sizes=(64, 32, 128), key=[
    "N_Q_BUCKET", "T_BUCKET", "N_I_BUCKET", "BLOCK_D", "BLOCK_T", "BLOCK_N",
    "QUERY_IS_TEXT", "HAS_MASK", "HAS_IMAGE_KEYS",
])
@triton.jit(do_not_specialize=["N_Q_BUCKET", "T_BUCKET", "N_I_BUCKET"])
def _dq_kernel(
    Q, KT, VT, KI, VI, MASK, DO, LSE, DELTA, DQ,
    stride_qb, stride_qh, stride_qn,
    stride_ktb, stride_kth, stride_ktn,
    stride_vtb, stride_vth, stride_vtn,
    stride_kib, stride_kih, stride_kin,
    stride_vib, stride_vih, stride_vin,
    stride_dob, stride_doh, stride_don,
    stride_dqb, stride_dqh, stride_dqn,
    stride_mb,
    H, N_Q, T, N_I, qk_scale, sm_scale,
    N_Q_BUCKET, T_BUCKET, N_I_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
    QUERY_IS_TEXT: tl.constexpr, HAS_MASK: tl.constexpr, HAS_IMAGE_KEYS: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
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
    do = load_rows(
        DO + b * stride_dob + h * stride_doh, offs_m, stride_don, offs_d, row_valid, HEAD_DIM, EVEN_D,
                   UPCAST)
    row_offs = pid_bh.to(tl.int64) * N_Q + offs_m
    lse = tl.load(LSE + row_offs, mask=row_valid, other=float("inf"))
    delta = tl.load(DELTA + row_offs, mask=row_valid, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    kt_base = KT + b * stride_ktb + h * stride_kth
    vt_base = VT + b * stride_vtb + h * stride_vth
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        key_valid = key_validity(MASK, b, offs_t, T, stride_mb, HAS_MASK)
        k = load_rows(kt_base, offs_t, stride_ktn, offs_d, key_valid, HEAD_DIM, EVEN_D, UPCAST)
        v = load_rows(vt_base, offs_t, stride_vtn, offs_d, key_valid, HEAD_DIM, EVEN_D, UPCAST)
        valid = row_valid[:, None] & key_valid[None, :]
        dq = _dq_step(dq, q, do, lse, delta, k, v, valid, qk_scale, PRECISION)
    if HAS_IMAGE_KEYS:
        ki_base = KI + b * stride_kib + h * stride_kih
        vi_base = VI + b * stride_vib + h * stride_vih
        for n0 in range(0, N_I, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            key_in = offs_n < N_I
            k = load_rows(ki_base, offs_n, stride_kin, offs_d, key_in, HEAD_DIM, EVEN_D, UPCAST)
            v = load_rows(vi_base, offs_n, stride_vin, offs_d, key_in, HEAD_DIM, EVEN_D, UPCAST)
            valid = row_valid[:, None] & key_in[None, :]
            dq = _dq_step(dq, q, do, lse, delta, k, v, valid, qk_scale, PRECISION)
    store_rows(DQ + b * stride_dqb + h * stride_dqh, offs_m, stride_dqn, offs_d, dq * sm_scale, row_in,
               HEAD_DIM, EVEN_D, UPCAST)


@triton.jit
def _dkdv_step(dk, dv, q, do, lse, delta, k, v, valid, qk_scale, PRECISION: tl.constexpr):
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
    dv = dv + tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    dk = dk + tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@autotuned(DKDV_SPEC, sizes=(64, 32, 128), key=[
    "N_K_BUCKET", "N_QI_BUCKET", "N_QT_BUCKET", "BLOCK_D", "BLOCK_K",
    "KEY_IS_TEXT", "HAS_MASK", "HAS_TEXT_QUERIES",
])
@triton.jit(do_not_specialize=["N_K_BUCKET", "N_QI_BUCKET", "N_QT_BUCKET"])
def _dkdv_kernel(
    K, V, MASK, QI, DOI, LSEI, DELTAI, QT, DOT, LSET, DELTAT, DK, DV,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_qib, stride_qih, stride_qin,
    stride_doib, stride_doih, stride_doin,
    stride_qtb, stride_qth, stride_qtn,
    stride_dotb, stride_doth, stride_dotn,
    stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    stride_mb,
    H, N_K, N_QI, N_QT, qk_scale, sm_scale,
    N_K_BUCKET, N_QI_BUCKET, N_QT_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
    KEY_IS_TEXT: tl.constexpr, HAS_MASK: tl.constexpr, HAS_TEXT_QUERIES: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    tl.static_assert(BLOCK_K >= 16)
    tl.static_assert(BLOCK_M >= 16)
    tl.static_assert(BLOCK_D >= 16)
    pid_bh, pid_k = split_pid(N_K, BLOCK_K)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    key_in = offs_k < N_K
    if KEY_IS_TEXT:
        key_valid = key_validity(MASK, b, offs_k, N_K, stride_mb, HAS_MASK)
    else:
        key_valid = key_in
    k = load_rows(
        K + b * stride_kb + h * stride_kh, offs_k, stride_kn, offs_d, key_valid, HEAD_DIM, EVEN_D, UPCAST)
    v = load_rows(
        V + b * stride_vb + h * stride_vh, offs_k, stride_vn, offs_d, key_valid, HEAD_DIM, EVEN_D, UPCAST)
    dk = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)

    # Image queries: every row in range is a real query.
    qi_base = QI + b * stride_qib + h * stride_qih
    doi_base = DOI + b * stride_doib + h * stride_doih
    for m0 in range(0, N_QI, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        row_in = offs_m < N_QI
        q = load_rows(qi_base, offs_m, stride_qin, offs_d, row_in, HEAD_DIM, EVEN_D, UPCAST)
        do = load_rows(doi_base, offs_m, stride_doin, offs_d, row_in, HEAD_DIM, EVEN_D, UPCAST)
        row_offs = pid_bh.to(tl.int64) * N_QI + offs_m
        lse = tl.load(LSEI + row_offs, mask=row_in, other=float("inf"))
        delta = tl.load(DELTAI + row_offs, mask=row_in, other=0.0)
        dk, dv = _dkdv_step(dk, dv, q, do, lse, delta, k, v, row_in[:, None] & key_valid[None, :], qk_scale,
                            PRECISION)
    if HAS_TEXT_QUERIES:
        # Text queries (mutual attention): padded rows are masked like padded keys.
        qt_base = QT + b * stride_qtb + h * stride_qth
        dot_base = DOT + b * stride_dotb + h * stride_doth
        for m0 in range(0, N_QT, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            row_valid = key_validity(MASK, b, offs_m, N_QT, stride_mb, HAS_MASK)
            q = load_rows(qt_base, offs_m, stride_qtn, offs_d, row_valid, HEAD_DIM, EVEN_D, UPCAST)
            do = load_rows(dot_base, offs_m, stride_dotn, offs_d, row_valid, HEAD_DIM, EVEN_D, UPCAST)
            row_offs = pid_bh.to(tl.int64) * N_QT + offs_m
            lse = tl.load(LSET + row_offs, mask=row_valid, other=float("inf"))
            delta = tl.load(DELTAT + row_offs, mask=row_valid, other=0.0)
            dk, dv = _dkdv_step(dk, dv, q, do, lse, delta, k, v, row_valid[:, None] & key_valid[None, :],
                                qk_scale, PRECISION)

    dk_base = DK + b * stride_dkb + h * stride_dkh
    dv_base = DV + b * stride_dvb + h * stride_dvh
    store_rows(dk_base, offs_k, stride_dkn, offs_d, dk * sm_scale, key_in, HEAD_DIM, EVEN_D, UPCAST)
    store_rows(dv_base, offs_k, stride_dvn, offs_d, dv, key_in, HEAD_DIM, EVEN_D, UPCAST)


def attention_backward_delta(o: torch.Tensor, do: torch.Tensor) -> torch.Tensor:
    """``delta = rowsum(dO ∘ O)`` ``(B, H, N)`` float32."""
    B, H, N, D = o.shape
    delta = output_buffers.empty((B, H, N), dtype=torch.float32, device=o.device)
    block_d = head_block(D)
    _delta_kernel[(B * H * triton.cdiv(N, DELTA_BLOCK_M),)](
        o, do, delta, *strides3(o), *strides3(do), H, N,
        HEAD_DIM=D, BLOCK_D=block_d, EVEN_D=block_d == D, BLOCK_M=DELTA_BLOCK_M,
    )
    return delta


def attention_backward_dq(
    q: torch.Tensor,
    do: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    k_txt: torch.Tensor,
    v_txt: torch.Tensor,
    k_img: torch.Tensor | None,
    v_img: torch.Tensor | None,
    text_mask: torch.Tensor | None,
    scale: float,
    *,
    query_is_text: bool,
) -> torch.Tensor:
    """``dq`` ``(B, H, N_Q, D)`` (in ``q``'s stride order) for queries over
    ``[text keys ; image keys (optional)]``."""
    B, H, N_Q, D = q.shape
    T = k_txt.shape[2]
    has_image = k_img is not None
    dq = output_buffers.empty_like(q)
    mask = text_mask.view(torch.uint8) if text_mask is not None else q
    k_i, v_i = (k_img, v_img) if has_image else (k_txt, v_txt)
    N_I = k_i.shape[2] if has_image else 0
    block_d = head_block(D)

    def grid(meta):
        return (B * H * triton.cdiv(N_Q, meta["BLOCK_M"]),)

    _dq_kernel[grid](
        q, k_txt, v_txt, k_i, v_i, mask, do, lse, delta, dq,
        *strides3(q), *strides3(k_txt), *strides3(v_txt), *strides3(k_i), *strides3(v_i),
        *strides3(do), *strides3(dq),
        mask.stride(0) if text_mask is not None else 0,
        H, N_Q, T, N_I, scale * LOG2E, scale,
        size_bucket(N_Q), size_bucket(T), size_bucket(N_I),
        HEAD_DIM=D, BLOCK_D=block_d, EVEN_D=block_d == D,
        BLOCK_T=text_block(T, q.dtype, D), BLOCK_N=image_block(q.dtype, D),
        QUERY_IS_TEXT=query_is_text, HAS_MASK=text_mask is not None, HAS_IMAGE_KEYS=has_image,
        UPCAST=upcast(q.dtype), PRECISION=dot_precision(q.dtype),
    )
    return dq


def attention_backward_dkdv(
    k: torch.Tensor,
    v: torch.Tensor,
    image_queries: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    text_queries: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None,
    text_mask: torch.Tensor | None,
    scale: float,
    *,
    key_is_text: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dk, dv)`` ``(B, H, N_K, D)`` of one key source (in the stride order of ``k`` and
    ``v``), summed over every query that sees it.

    Args:
        k, v: the key source ``(B, H, N_K, D)`` (text keys if ``key_is_text``, else image keys).
        image_queries: ``(q, do, lse2, delta)`` of the image queries.
        text_queries: the same for the text queries (mutual attention), or None.
        text_mask: ``(B, T)`` bool or None; masks text keys and text query rows.
        scale: softmax scale (natural units).
    """
    B, H, N_K, D = k.shape
    qi, doi, lsei, deltai = image_queries
    qt, dot, lset, deltat = text_queries if text_queries is not None else image_queries
    N_QT = qt.shape[2] if text_queries is not None else 0
    dk = output_buffers.empty_like(k)
    dv = output_buffers.empty_like(v)
    mask = text_mask.view(torch.uint8) if text_mask is not None else k
    block_k = text_block(N_K, k.dtype, D) if key_is_text else image_block(k.dtype, D)
    block_d = head_block(D)
    _dkdv_kernel[(B * H * triton.cdiv(N_K, block_k),)](
        k, v, mask, qi, doi, lsei, deltai, qt, dot, lset, deltat, dk, dv,
        *strides3(k), *strides3(v), *strides3(qi), *strides3(doi), *strides3(qt), *strides3(dot),
        *strides3(dk), *strides3(dv),
        mask.stride(0) if text_mask is not None else 0,
        H, N_K, qi.shape[2], N_QT, scale * LOG2E, scale,
        size_bucket(N_K), size_bucket(qi.shape[2]), size_bucket(N_QT),
        HEAD_DIM=D, BLOCK_D=block_d, EVEN_D=block_d == D, BLOCK_K=block_k,
        KEY_IS_TEXT=key_is_text, HAS_MASK=text_mask is not None, HAS_TEXT_QUERIES=text_queries is not None,
        UPCAST=upcast(k.dtype), PRECISION=dot_precision(k.dtype),
    )
    return dk, dv
