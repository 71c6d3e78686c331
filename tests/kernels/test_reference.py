"""The PyTorch references against a naive float64 computation written with explicit loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from textvision.kernels import cross_attention, mutual_attention


def _random_mask(B: int, T: int, generator: torch.Generator) -> torch.Tensor:
    """A different number of real tokens per sample, not all at the front, one sample empty."""
    mask = torch.rand(B, T, generator=generator) < 0.7
    mask[0, 0] = True
    mask[-1] = False
    return mask


def _naive_softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    z = sum(e)
    return [x / z for x in e]


def _naive_cross(q, k, v, mask, scale):
    """Loop over samples, heads and rows; float64 Python math for the softmaxes."""
    B, H, N, D = q.shape
    T = k.shape[2]
    o = torch.zeros(B, H, N, D, dtype=torch.float64)
    rel = torch.zeros(B, N, dtype=torch.float64)
    s = torch.einsum("bhnd,bhtd->bhnt", q.double(), k.double()) * scale
    for b in range(B):
        valid = [t for t in range(T) if mask[b, t]]
        for h in range(H):
            for i in range(N):
                if valid:
                    p = _naive_softmax([s[b, h, i, t].item() for t in valid])
                    o[b, h, i] = sum(pt * v[b, h, t].double() for pt, t in zip(p, valid, strict=True))
            for t in valid:
                column = _naive_softmax([s[b, h, i, t].item() for i in range(N)])
                rel[b] += torch.tensor(column, dtype=torch.float64) / (H * len(valid))
    return o, rel


@pytest.mark.parametrize("N,T,D", [(1, 3, 8), (17, 5, 16), (6, 1, 4)])
def test_cross_reference_matches_naive(N, T, D):
    g = torch.Generator().manual_seed(N * 100 + T)
    B, H = 3, 2
    q, k, v = (torch.randn(B, H, n, D, generator=g) for n in (N, T, T))
    mask = _random_mask(B, T, g)
    o, rel = cross_attention(q, k, v, mask, scale=0.3, return_relevance=True, backend="torch")
    o_ref, rel_ref = _naive_cross(q, k, v, mask, 0.3)
    assert o.dtype == q.dtype and rel.dtype == torch.float32 and rel.shape == (B, N)
    torch.testing.assert_close(o.double(), o_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rel.double(), rel_ref, rtol=1e-5, atol=1e-6)
    # Each sample with text spreads one unit of relevance; the empty sample gets none.
    has_text = mask.any(-1)
    torch.testing.assert_close(rel.sum(-1)[has_text], torch.ones(int(has_text.sum())))
    assert (rel[~has_text] == 0).all() and (o[~has_text] == 0).all()


def test_cross_reference_default_scale_and_no_mask():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, n, 16, generator=g, dtype=torch.float64) for n in (7, 4, 4))
    o, rel = cross_attention(q, k, v, backend="torch")
    assert rel is None
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(o, expected)


def test_cross_reference_gradients_finite_for_empty_text():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, n, 8, generator=g, dtype=torch.float64).requires_grad_() for n in (5, 3, 3))
    mask = torch.tensor([[True, False, True], [False, False, False]])
    o, rel = cross_attention(q, k, v, mask, return_relevance=True, backend="torch")
    assert not rel.requires_grad
    o.square().sum().backward()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all()
    # Sample 1 has no valid key: no gradient flows anywhere in it; padded keys get none either.
    assert (q.grad[1] == 0).all() and (k.grad[1] == 0).all() and (v.grad[1] == 0).all()
    assert (k.grad[0, :, 1] == 0).all() and (v.grad[0, :, 1] == 0).all()
    torch.autograd.gradcheck(
        lambda q, k, v: cross_attention(q, k, v, mask, backend="torch").o, (q, k, v), eps=1e-6, atol=1e-5
    )


def _sdpa_concat(q_img, k_img, v_img, q_txt, k_txt, v_txt, mask, scale):
    """SDPA over the explicitly concatenated sequence [image ; text] with the padding mask."""
    N = q_img.shape[2]
    q = torch.cat([q_img, q_txt], 2)
    k = torch.cat([k_img, k_txt], 2)
    v = torch.cat([v_img, v_txt], 2)
    key_valid = torch.cat([torch.ones(mask.shape[0], N, dtype=torch.bool), mask], 1)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=key_valid[:, None, None, :], scale=scale)
    return o[:, :, :N], o[:, :, N:] * mask[:, None, :, None]


@pytest.mark.parametrize("N,T", [(1, 4), (19, 6), (5, 1)])
def test_mutual_reference_matches_sdpa_on_concat(N, T):
    g = torch.Generator().manual_seed(N + 7 * T)
    B, H, D = 3, 2, 8
    xs = [torch.randn(B, H, n, D, generator=g, dtype=torch.float64) for n in (N, N, N, T, T, T)]
    mask = _random_mask(B, T, g)
    o_img, o_txt, rel = mutual_attention(*xs, mask, scale=0.4, return_relevance=True, backend="torch")
    e_img, e_txt = _sdpa_concat(*xs, mask, 0.4)
    torch.testing.assert_close(o_img, e_img)
    torch.testing.assert_close(o_txt, e_txt)
    # Relevance: text→image probabilities from an explicit float64 softmax over [text ; image].
    q_txt, k_img, k_txt = xs[3], xs[1], xs[4]
    s = torch.cat([q_txt @ k_txt.transpose(-1, -2), q_txt @ k_img.transpose(-1, -2)], -1) * 0.4
    s = s.masked_fill(~torch.cat([mask, torch.ones(B, N, dtype=torch.bool)], 1)[:, None, None, :], -math.inf)
    p = torch.softmax(s, -1)[..., T:]
    expected = torch.zeros(B, N, dtype=torch.float64)
    for b in range(B):
        n_valid = int(mask[b].sum())
        if n_valid:
            expected[b] = p[b][:, mask[b]].sum(dim=(0, 1)) / (H * n_valid)
    torch.testing.assert_close(rel.double(), expected, rtol=1e-5, atol=1e-7)
    assert (rel[~mask.any(-1)] == 0).all()
    assert torch.isfinite(o_txt).all() and (o_txt[~mask[:, None, :].expand(B, H, T)] == 0).all()


def test_mutual_reference_gradients_finite_for_empty_text():
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(2, 2, n, 8, generator=g).double().requires_grad_() for n in (4, 4, 4, 3, 3, 3)]
    mask = torch.tensor([[True, True, False], [False, False, False]])
    o_img, o_txt, rel = mutual_attention(*xs, mask, backend="torch")
    assert rel is None
    (o_img.sum() + o_txt.square().sum()).backward()
    for x in xs:
        assert torch.isfinite(x.grad).all()
    q_txt, k_txt, v_txt = xs[3:]
    assert (q_txt.grad[1] == 0).all() and (k_txt.grad[1] == 0).all() and (v_txt.grad[1] == 0).all()


def test_auto_backend_on_cpu_uses_reference():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 1, n, 24, generator=g) for n in (3, 2, 2))
    torch.testing.assert_close(cross_attention(q, k, v).o, cross_attention(q, k, v, backend="torch").o)
