"""Triton cross-attention (interpreted on the CPU) against the float64 reference.

Errors follow FlashAttention's rule for float16: the kernel's max error against float64 must be
at most twice the error of the same computation done by PyTorch in float16, plus a small atol.
float32 gets tight absolute bounds.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from textvision.kernels import CrossAttentionOutput, cross_attention, dispatch, triton_common
from textvision.kernels.cross_attention_reference import masked_softmax_attention


def _mask(B: int, T: int, g: torch.Generator, *, empty_sample: bool = True) -> torch.Tensor:
    """A different number of real tokens per sample (2/3 of T for the first), at random
    positions; the last sample has none (all padding) when ``empty_sample``."""
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        n = max(1, 2 * T // 3) if b == 0 else 1 + (b * 7919) % T
        mask[b, torch.randperm(T, generator=g)[:n]] = True
    if empty_sample:
        mask[-1] = False
    return mask


def _inputs(B, H, N, T, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, D, generator=g).to(dtype) for n in (N, T, T))
    return q, k, v, _mask(B, T, g, empty_sample=B > 1), g


def _run(q, k, v, mask, backend, *, scale=None, upstream=None, dtype=None):
    """Forward + backward; returns (o, rel, dq, dk, dv) as float64."""
    dtype = dtype or q.dtype
    leaves = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
    if backend == "pt":  # PyTorch, computed in `dtype` itself (FlashAttention's `out_pt`)
        o, _, s = masked_softmax_attention(*leaves, mask, scale or q.shape[-1] ** -0.5)
        column_p = torch.softmax(s.detach(), dim=-2)
        rel = (column_p * mask[:, None, None, :]).sum(dim=(1, 3)).double()
        rel = rel / (q.shape[1] * mask.sum(-1, keepdim=True)).clamp_min(1)
    else:
        o, rel = cross_attention(*leaves, mask, scale=scale, return_relevance=True, backend=backend)
        assert o.requires_grad and not rel.requires_grad and rel.dtype == torch.float32
    o.backward(upstream.to(o.dtype))
    return [o.detach().double(), rel.double()] + [x.grad.double() for x in leaves]


def _check(name, got, ref, pt, atol):
    """FlashAttention's rule: max|got - ref| <= 2 max|pt - ref| + atol."""
    err = (got - ref).abs().max().item()
    bound = 2 * (pt - ref).abs().max().item() + atol
    assert err <= bound, f"{name}: max error {err:.3g} > bound {bound:.3g}"


CASES = [
    # B, H, N, T, D, dtype
    (2, 2, 1, 3, 32, torch.float32),
    (3, 2, 17, 1, 64, torch.float32),
    (2, 1, 258, 32, 32, torch.float32),
    (3, 2, 17, 77, 32, torch.float16),
    (2, 2, 197, 77, 64, torch.float16),
    (2, 2, 65, 3, 64, torch.float16),
]


@pytest.mark.parametrize("B,H,N,T,D,dtype", CASES, ids=lambda x: str(x).replace("torch.", ""))
def test_cross_attention_matches_float64_reference(B, H, N, T, D, dtype):
    q, k, v, mask, g = _inputs(B, H, N, T, D, dtype, seed=N * 1000 + T * 10 + D)
    upstream = torch.randn(B, H, N, D, generator=g)
    got = _run(q, k, v, mask, "triton", upstream=upstream)
    ref = _run(q, k, v, mask, "torch", upstream=upstream, dtype=torch.float64)
    names = ("o", "rel", "dq", "dk", "dv")
    for x in got:
        assert torch.isfinite(x).all()
    if dtype == torch.float32:
        for name, a, r in zip(names, got, ref, strict=True):
            torch.testing.assert_close(a, r, rtol=1e-5, atol=2e-5, msg=lambda m, name=name: f"{name}: {m}")
    else:
        pt = _run(q, k, v, mask, "pt", upstream=upstream)
        for name, a, r, p, atol in zip(names, got, ref, pt, (1e-4, 1e-6, 1e-3, 1e-3, 1e-3), strict=True):
            _check(name, a, r, p, atol)

    o, rel, dq, dk, dv = got
    has_text = mask.any(-1)
    # Relevance: one unit per sample with text, none for the all-padding sample.
    ones = torch.ones(int(has_text.sum()), dtype=torch.float64)
    torch.testing.assert_close(rel.sum(-1)[has_text], ones, rtol=0, atol=1e-5)
    assert (rel[~has_text] == 0).all()
    # The all-padding sample: zero output and zero gradients, no NaN anywhere.
    assert (o[~has_text] == 0).all() and (dq[~has_text] == 0).all()
    assert (dk[~has_text] == 0).all() and (dv[~has_text] == 0).all()
    # Padded keys receive no gradient.
    padded = ~mask[:, None, :, None].expand_as(dk)
    assert (dk[padded] == 0).all() and (dv[padded] == 0).all()


def test_cross_attention_ignores_garbage_in_padding_and_takes_strided_views():
    B, H, N, T, D = 2, 2, 20, 9, 32
    g = torch.Generator().manual_seed(5)
    # (B, N, H, D) storage viewed as (B, H, N, D), as a fusion module produces it.
    q, k, v = (torch.randn(B, n, H, D, generator=g).transpose(1, 2) for n in (N, T, T))
    mask = _mask(B, T, g)
    k_nan, v_nan = k.clone(), v.clone()
    k_nan.transpose(1, 2)[~mask] = float("nan")
    v_nan.transpose(1, 2)[~mask] = float("inf")
    o, rel = cross_attention(q, k_nan, v_nan, mask, scale=0.2, return_relevance=True, backend="triton")
    o_ref, rel_ref = cross_attention(q, k, v, mask, scale=0.2, return_relevance=True, backend="torch")
    torch.testing.assert_close(o, o_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rel, rel_ref, rtol=1e-5, atol=1e-6)


def test_cross_attention_streams_long_text_in_tiles(monkeypatch):
    # Text longer than one tile: shrink the tile to 16 so T = 40 takes three tiles.
    monkeypatch.setattr(triton_common, "MAX_BLOCK_T", 16)
    q, k, v, mask, g = _inputs(2, 1, 33, 40, 32, torch.float32, seed=6)
    upstream = torch.randn(2, 1, 33, 32, generator=g)
    got = _run(q, k, v, mask, "triton", upstream=upstream)
    ref = _run(q, k, v, mask, "torch", upstream=upstream, dtype=torch.float64)
    for a, r in zip(got, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=2e-5)


def test_cross_attention_bfloat16_and_no_mask():
    q, k, v, _, _ = _inputs(2, 2, 19, 5, 16, torch.bfloat16, seed=7)
    o = cross_attention(q, k, v, backend="triton").o
    assert o.dtype == torch.bfloat16
    ref = cross_attention(q.double(), k.double(), v.double(), backend="torch").o
    torch.testing.assert_close(o.double(), ref, rtol=2e-2, atol=2e-2)


def test_triton_and_torch_backends_agree_without_relevance():
    q, k, v, mask, _ = _inputs(2, 3, 30, 6, 64, torch.float32, seed=8)
    result = cross_attention(q, k, v, mask, backend="triton")
    assert isinstance(result, CrossAttentionOutput) and result.rel is None
    o_torch = cross_attention(q, k, v, mask, backend="torch")
    assert isinstance(o_torch, CrossAttentionOutput) and o_torch.rel is None
    torch.testing.assert_close(result.o, o_torch.o, rtol=1e-5, atol=1e-6)


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(dispatch, "INTERPRETED", False)
    q, k, v, mask, _ = _inputs(2, 1, 3, 2, 16, torch.float32, seed=9)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        cross_attention(q, k, v, mask, backend="triton")
    # auto on CPU picks the reference.
    expected = cross_attention(q, k, v, mask, backend="torch").o
    torch.testing.assert_close(cross_attention(q, k, v, mask).o, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_and_two_pass_relevance_agree(monkeypatch, dtype):
    """The one-launch kernel (one program per (b, h)) and the tiled forward + relevance pass."""
    module = importlib.import_module("textvision.kernels.cross_attention")
    q, k, v, mask, g = _inputs(3, 2, 140, 20, 32, dtype, seed=10)
    upstream = torch.randn(3, 2, 140, 32, generator=g)
    results = []
    for fused in (True, False):
        monkeypatch.setattr(module, "FUSED_RELEVANCE", fused)
        results.append(_run(q, k, v, mask, "triton", upstream=upstream))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    ref = _run(q, k, v, mask, "torch", upstream=upstream, dtype=torch.float64)
    torch.testing.assert_close(results[0][1], ref[1], rtol=1e-4, atol=1e-6)
