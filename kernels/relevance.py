"""Triton passes computing the instruction relevance of image tokens, ``rel`` ``(B, N_img)``.

Both kernels' relevance has the same form: for image token ``i`` of sample ``b``,

``rel[b, i] = 1 / (H · n_valid[b]) · Σ_h Σ_{valid t} exp2(s2[b, h, t, i] - lse2[b, h, t])``

with ``s2`` the base-2 scaled score between text vector ``t`` and image vector ``i``, and ``lse2``
a per-(b, h, t) log-sum-exp:

- ``cross_attention``: the image vector is the query ``q_i``, the text vector the key ``k_t``,
  and ``lse2`` is taken down the **image** axis (softmax over ``i`` for each text column). It is
  merged here from the per-tile column statistics the tiled forward kernel wrote. (This two-pass
  path serves text longer than one tile and grids too small for the one-launch kernel of
  :mod:`.cross_attention_fused_relevance`.)
- ``mutual_attention``: the image vector is the key ``k_img_i``, the text vector the query
  ``q_txt_t``, and ``lse2`` is the text query's saved row log-sum-exp over ``[text ; image]``
  keys, so the probabilities are exactly those of the attention (not renormalised).

Two launches, no atomics, bitwise deterministic:

1. :func:`_relevance_kernel`, one program per ``(image tile, b, h)`` — a one-dimensional grid of
   ``B·H · cdiv(N_img, BLOCK_N)`` programs, as parallel as the forward — recomputes the
   ``(BLOCK_N, BLOCK_T)`` score tiles (as Paddle's ``calc_reduced_attention_scores`` does from the
   saved softmax LSE) and writes the per-head partial ``Σ_t p`` ``(B, H, N_img)`` float32;
2. :func:`_head_mean_kernel` sums the partials over heads in a fixed order and divides by
   ``H · n_valid[b]``.

The ``(B, H, N, T)`` probability tensor is never written. Cost: one extra read of the image and
text vectors, ``2·B·H·N·T·D`` FLOPs (half the forward's) and 8 bytes per (b, h, image token).
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
    split_pid,
    text_block,
    tile_elements,
    upcast,
)

__all__ = ["HEAD_MEAN_BLOCK", "REL_SPEC", "head_mean", "text_to_image_relevance"]

HEAD_MEAN_BLOCK = 256


def _rel_elements(config: dict, a: dict) -> int:
    n, t, d = config["BLOCK_N"], a["BLOCK_T"], a["BLOCK_D"]
    return tile_elements((n, t, 4), (n, t, 4), (n, d, a["IMG"].element_size()))


REL_SPEC = KernelSpec(
    name="relevance",
    tile="BLOCK_N",
    length_bucket="N_I_BUCKET",
    elements=_rel_elements,
    streams=lambda a: a["T_BUCKET"] > a["BLOCK_T"],
)


@autotuned(REL_SPEC, sizes=(64, 32, 128), key=[
    "N_I_BUCKET", "T_BUCKET", "BLOCK_D", "BLOCK_T", "HAS_MASK", "FROM_COLUMN_STATS",
])
@triton.jit(do_not_specialize=["N_I_BUCKET", "T_BUCKET"])
def _relevance_kernel(
    IMG, TXT, MASK, LSE, COL_MAX, COL_SUM, REL_HEAD,
    stride_ib, stride_ih, stride_in,
    stride_tb, stride_th, stride_tn,
    stride_mb,
    H, N_I, T, STAT_TILES, N_STAT, qk_scale,
    N_I_BUCKET, T_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_MASK: tl.constexpr, FROM_COLUMN_STATS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    tl.static_assert(BLOCK_N >= 16)
    tl.static_assert(BLOCK_T >= 16)
    tl.static_assert(BLOCK_D >= 16)
    pid_bh, pid_n = split_pid(N_I, BLOCK_N)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    bh = pid_bh.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_in = offs_n < N_I
    img = load_rows(
        IMG + b * stride_ib + h * stride_ih, offs_n, stride_in, offs_d, n_in, HEAD_DIM, EVEN_D, UPCAST)

    acc = tl.zeros([BLOCK_N], tl.float32)
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_valid = key_validity(MASK, b, offs_t, T, stride_mb, HAS_MASK)
        txt = load_rows(
            TXT + b * stride_tb + h * stride_th, offs_t, stride_tn, offs_d, t_valid, HEAD_DIM, EVEN_D,
                        UPCAST)
        if FROM_COLUMN_STATS:
            # Merge the forward's per-tile (max, sum) of each text column into its LSE over all
            # image rows, in a fixed order (deterministic).
            m = tl.full([BLOCK_T], float("-inf"), tl.float32)
            z = tl.zeros([BLOCK_T], tl.float32)
            for j in range(0, N_STAT):
                stats = (bh * STAT_TILES + j) * T + offs_t
                tile_max = tl.load(COL_MAX + stats, mask=t_valid, other=float("-inf"))
                tile_sum = tl.load(COL_SUM + stats, mask=t_valid, other=0.0)
                m_new = tl.maximum(m, tile_max)
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                z = z * tl.exp2(m - m_safe) + tile_sum * tl.exp2(tile_max - m_safe)
                m = m_new
            lse = tl.where(z > 0.0, m + tl.log2(tl.where(z > 0.0, z, 1.0)), float("inf"))
        else:
            lse = tl.load(LSE + bh * T + offs_t, mask=t_valid, other=float("inf"))
        s = tl.dot(img, tl.trans(txt), input_precision=PRECISION) * qk_scale
        p = tl.where(n_in[:, None] & t_valid[None, :], tl.exp2(s - lse[None, :]), 0.0)
        acc += tl.sum(p, 1)
    tl.store(REL_HEAD + bh * N_I + offs_n, acc, mask=n_in)


@triton.jit
def _head_mean_kernel(REL_HEAD, MASK, REL, stride_mb, H, N, T,
                      BLOCK: tl.constexpr, BLOCK_T: tl.constexpr, HAS_MASK: tl.constexpr):
    """``rel[b, i] = Σ_h rel_head[b, h, i] / (H · n_valid[b])`` (0 without valid text), in a
    fixed head order. One-dimensional grid over ``B · cdiv(N, BLOCK)``."""
    pid_b, pid = split_pid(N, BLOCK)
    b = pid_b.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    inside = offs < N
    n_valid = tl.zeros([BLOCK_T], tl.int32)
    for t0 in range(0, T, BLOCK_T):
        n_valid += key_validity(MASK, b, t0 + tl.arange(0, BLOCK_T), T, stride_mb, HAS_MASK).to(tl.int32)
    n_valid_total = tl.sum(n_valid, 0)
    acc = tl.zeros([BLOCK], tl.float32)
    for h in range(0, H):
        acc += tl.load(REL_HEAD + (b * H + h) * N + offs, mask=inside, other=0.0)
    denom = tl.maximum(n_valid_total * H, 1).to(tl.float32)
    tl.store(REL + b * N + offs, tl.where(n_valid_total > 0, acc / denom, 0.0), mask=inside)


def head_mean(rel_head: torch.Tensor, text_mask: torch.Tensor | None, n_text: int) -> torch.Tensor:
    """``rel`` ``(B, N)`` float32 from the per-head partials ``(B, H, N)``."""
    B, H, N = rel_head.shape
    rel = output_buffers.empty((B, N), dtype=torch.float32, device=rel_head.device)
    mask = text_mask.view(torch.uint8) if text_mask is not None else rel_head
    _head_mean_kernel[(B * triton.cdiv(N, HEAD_MEAN_BLOCK),)](
        rel_head, mask, rel, mask.stride(0) if text_mask is not None else 0, H, N, n_text,
        BLOCK=HEAD_MEAN_BLOCK, BLOCK_T=min(128, max(16, triton.next_power_of_2(n_text))),
        HAS_MASK=text_mask is not None,
    )
    return rel


def text_to_image_relevance(
    image: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor | None,
    scale: float,
    *,
    text_lse: torch.Tensor | None = None,
    column_stats: tuple[torch.Tensor, torch.Tensor, int] | None = None,
) -> torch.Tensor:
    """Launch the relevance pass.

    Args:
        image: image vectors ``(B, H, N, D)`` (``q`` for cross-attention, ``k_img`` for mutual).
        text: text vectors ``(B, H, T, D)`` (``k`` for cross-attention, ``q_txt`` for mutual).
        text_mask: ``(B, T)`` bool or None.
        scale: softmax scale (natural units).
        text_lse: ``(B, H, T)`` float32 base-2 row LSE of the text queries (mutual attention).
        column_stats: ``(col_max, col_sum, n_tiles)`` from :func:`attention_forward`
            (cross-attention).

    Returns:
        ``rel`` ``(B, N)`` float32.
    """
    if (text_lse is None) == (column_stats is None):
        raise ValueError("pass exactly one of `text_lse` and `column_stats`")
    B, H, N, D = image.shape
    T = text.shape[2]
    rel_head = output_buffers.empty((B, H, N), dtype=torch.float32, device=image.device)
    mask = text_mask.view(torch.uint8) if text_mask is not None else image
    if column_stats is not None:
        col_max, col_sum, n_stat = column_stats
        stat_tiles, lse = col_max.shape[1], col_max
    else:
        col_max = col_sum = lse = text_lse
        stat_tiles = n_stat = 0
    block_d = head_block(D)

    def grid(meta):
        return (B * H * triton.cdiv(N, meta["BLOCK_N"]),)

    _relevance_kernel[grid](
        image, text, mask, lse, col_max, col_sum, rel_head,
        *strides3(image), *strides3(text),
        mask.stride(0) if text_mask is not None else 0,
        H, N, T, stat_tiles, n_stat, scale * LOG2E,
        size_bucket(N), size_bucket(T),
        HEAD_DIM=D, BLOCK_D=block_d, EVEN_D=block_d == D, BLOCK_T=text_block(T, image.dtype, D),
        HAS_MASK=text_mask is not None, FROM_COLUMN_STATS=column_stats is not None,
        UPCAST=upcast(image.dtype), PRECISION=dot_precision(image.dtype),
    )
    return head_mean(rel_head, text_mask, T)
