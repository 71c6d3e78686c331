"""Triton modality-mutual attention (interpreted on the CPU) against the float64 reference and
against SDPA over the explicitly concatenated sequence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from textvision.kernels import mutual_attention, triton_common
from textvision.kernels.cross_attention_reference import masked_softmax_attention

NAMES = ("o_img", "o_txt", "rel", "dq_img", "dk_img", "dv_img", "dq_txt", "dk_txt", "dv_txt")


def _mask(B: int, T: int, g: torch.Generator) -> torch.Tensor:
    """2/3 of T real tokens in sample 0, other lengths after, all padding in the last sample."""
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B - 1):
        n = max(1, 2 * T // 3) if b == 0 else 1 + (b * 7919) % T
        mask[b, torch.randperm(T, generator=g)[:n]] = True
    return mask


def _inputs(B, H, N, T, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(B, H, n, D, generator=g).to(dtype) for n in (N, N, N, T, T, T)]
    return xs, _mask(B, T, g), g


def _low_precision_mutual(xs, mask, scale):
    """FlashAttention's `out_pt`: the concatenated attention computed by PyTorch in the input dtype."""
    q_img, k_img, v_img, q_txt, k_txt, v_txt = xs
    B, N = q_img.shape[0], q_img.shape[2]
    image_valid = torch.ones(B, N, dtype=torch.bool)
    cat = lambda a, b: torch.cat([a, b], 2)
    o_img, _, _ = masked_softmax_attention(
        q_img, cat(k_img, k_txt), cat(v_img, v_txt), torch.cat([image_valid, mask], 1), scale
    )
    o_txt, p_txt, _ = masked_softmax_attention(
        q_txt, cat(k_txt, k_img), cat(v_txt, v_img), torch.cat([mask, image_valid], 1), scale
    )
    o_txt = o_txt * mask[:, None, :, None]
    p = p_txt.detach()[..., mask.shape[1]:].double() * mask[:, None, :, None]
    rel = p.sum(dim=(1, 2)) / (q_img.shape[1] * mask.sum(-1, keepdim=True)).clamp_min(1)
    return o_img, o_txt, rel


def _run(xs, mask, backend, upstream, *, dtype=None, scale=None):
    """Forward + backward; returns the 9 results of NAMES as float64."""
    dtype = dtype or xs[0].dtype
    leaves = [x.detach().to(dtype).requires_grad_() for x in xs]
    if backend == "pt":
        o_img, o_txt, rel = _low_precision_mutual(leaves, mask, scale or xs[0].shape[-1] ** -0.5)
    else:
        o_img, o_txt, rel = mutual_attention(
            *leaves, mask, scale=scale, return_relevance=True, backend=backend
        )
        assert not rel.requires_grad and rel.dtype == torch.float32
        assert rel.shape == (xs[0].shape[0], xs[0].shape[2])
    torch.autograd.backward([o_img, o_txt], [upstream[0].to(dtype), upstream[1].to(dtype)])
    outputs = [o_img.detach().double(), o_txt.detach().double(), rel.double()]
    return outputs + [x.grad.double() for x in leaves]


CASES = [
    # B, H, N, T, D, dtype
    (2, 2, 1, 3, 32, torch.float32),
    (3, 2, 17, 32, 64, torch.float16),
    (2, 1, 197, 77, 32, torch.float32),
    (2, 2, 258, 1, 64, torch.float16),
    (3, 1, 70, 5, 32, torch.float16),
]


@pytest.mark.parametrize("B,H,N,T,D,dtype", CASES, ids=lambda x: str(x).replace("torch.", ""))
def test_mutual_attention_matches_float64_reference(B, H, N, T, D, dtype):
    xs, mask, g = _inputs(B, H, N, T, D, dtype, seed=N * 1000 + T * 10 + D)
    upstream = (torch.randn(B, H, N, D, generator=g), torch.randn(B, H, T, D, generator=g))
    got = _run(xs, mask, "triton", upstream)
    ref = _run(xs, mask, "torch", upstream, dtype=torch.float64)
    for name, x in zip(NAMES, got, strict=True):
        assert torch.isfinite(x).all(), name
    if dtype == torch.float32:
        for name, a, r in zip(NAMES, got, ref, strict=True):
            torch.testing.assert_close(a, r, rtol=1e-5, atol=2e-5, msg=lambda m, name=name: f"{name}: {m}")
    else:
        pt = _run(xs, mask, "pt", upstream)
        for name, a, r, p in zip(NAMES, got, ref, pt, strict=True):
            err = (a - r).abs().max().item()
            bound = 2 * (p - r).abs().max().item() + (1e-6 if name == "rel" else 1e-3)
            assert err <= bound, f"{name}: max error {err:.3g} > bound {bound:.3g}"

    o_txt, rel, dq_txt, dk_txt, dv_txt = got[1], got[2], got[6], got[7], got[8]
    padded = ~mask[:, None, :, None].expand_as(o_txt)
    # Padded text rows: zero output, no gradient in or out; no relevance without text.
    assert (o_txt[padded] == 0).all() and (dq_txt[padded] == 0).all()
    assert (dk_txt[padded] == 0).all() and (dv_txt[padded] == 0).all()
    assert (rel[~mask.any(-1)] == 0).all()


def test_mutual_attention_equals_sdpa_on_the_concatenated_sequence():
    B, H, N, T, D = 2, 2, 45, 11, 64
    xs, mask, _ = _inputs(B, H, N, T, D, torch.float32, seed=11)
    o_img, o_txt, rel = mutual_attention(*xs, mask, scale=0.1, backend="triton")
    assert rel is None
    q, k, v = (torch.cat([xs[i], xs[i + 3]], 2) for i in range(3))
    key_valid = torch.cat([torch.ones(B, N, dtype=torch.bool), mask], 1)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=key_valid[:, None, None, :], scale=0.1)
    torch.testing.assert_close(o_img, expected[:, :, :N], rtol=1e-5, atol=1e-5)
    real_rows = mask[:, None, :, None].expand_as(o_txt)
    torch.testing.assert_close(o_txt[real_rows], expected[:, :, N:][real_rows], rtol=1e-5, atol=1e-5)
    assert (o_txt[~real_rows] == 0).all()


def test_mutual_attention_long_text_tiles_and_strided_views(monkeypatch):
    monkeypatch.setattr(triton_common, "MAX_BLOCK_T", 16)
    B, H, N, T, D = 2, 2, 21, 35, 32
    g = torch.Generator().manual_seed(12)
    xs = [torch.randn(B, n, H, D, generator=g).transpose(1, 2) for n in (N, N, N, T, T, T)]
    mask = _mask(B, T, g)
    upstream = (torch.randn(B, H, N, D, generator=g), torch.randn(B, H, T, D, generator=g))
    got = _run(xs, mask, "triton", upstream)
    ref = _run(xs, mask, "torch", upstream, dtype=torch.float64)
    for name, a, r in zip(NAMES, got, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=2e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_mutual_attention_bfloat16_and_no_mask():
    xs, _, _ = _inputs(2, 1, 18, 4, 16, torch.bfloat16, seed=13)
    o_img, o_txt, rel = mutual_attention(*xs, None, return_relevance=True, backend="triton")
    assert o_img.dtype == o_txt.dtype == torch.bfloat16 and rel.dtype == torch.float32
    xs64 = [x.double() for x in xs]
    e_img, e_txt, e_rel = mutual_attention(*xs64, None, return_relevance=True, backend="torch")
    torch.testing.assert_close(o_img.double(), e_img, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(o_txt.double(), e_txt, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(rel.double(), e_rel.double(), rtol=2e-2, atol=1e-3)
