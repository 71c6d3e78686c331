"""The attention kernels' PyTorch reference path (what the CPU runs): forward, relevance, backward."""

from __future__ import annotations

import pytest
import torch

from textvision.kernels import cross_attention, mutual_attention

B, H, N, T, D = 8, 4, 65, 16, 32  # demo encoder: 64 patches + CLS, width 128 = 4 heads x 32


def _cross_inputs(requires_grad: bool = False):
    q, k, v = (torch.randn(B, H, n, D, requires_grad=requires_grad) for n in (N, T, T))
    mask = torch.arange(T).expand(B, T) < torch.randint(4, T + 1, (B, 1))
    return q, k, v, mask


@pytest.mark.parametrize("relevance", [False, True], ids=["plain", "relevance"])
def test_cross_attention_forward(benchmark, relevance):
    q, k, v, mask = _cross_inputs()
    with torch.inference_mode():
        benchmark(lambda: cross_attention(q, k, v, mask, return_relevance=relevance, backend="torch"))


def test_cross_attention_forward_backward(benchmark):
    q, k, v, mask = _cross_inputs(requires_grad=True)

    def step():
        out = cross_attention(q, k, v, mask, backend="torch")
        out.square().mean().backward()
        for x in (q, k, v):
            x.grad = None

    benchmark(step)


@pytest.mark.parametrize("relevance", [False, True], ids=["plain", "relevance"])
def test_mutual_attention_forward(benchmark, relevance):
    q_img, k_img, v_img = (torch.randn(B, H, N, D) for _ in range(3))
    q_txt, k_txt, v_txt = (torch.randn(B, H, T, D) for _ in range(3))
    mask = torch.arange(T).expand(B, T) < torch.randint(4, T + 1, (B, 1))
    with torch.inference_mode():
        benchmark(
            lambda: mutual_attention(
                q_img, k_img, v_img, q_txt, k_txt, v_txt, mask, return_relevance=relevance, backend="torch"
            )
        )
