"""The kernel benchmark's analytic relevance memory equals what the Triton launchers allocate."""

from __future__ import annotations

import importlib

import pytest
import torch

from textvision.bench.perf.kernels import Shape, relevance_extra_bytes_triton
from textvision.kernels import cross_attention, output_buffers


@pytest.mark.parametrize("fused", [True, False])
def test_relevance_extra_bytes_match_the_launchers(monkeypatch, fused):
    module = importlib.import_module("textvision.kernels.cross_attention")
    monkeypatch.setattr(module, "FUSED_RELEVANCE", fused)
    allocated = []

    def recording_empty_strided(shape, stride, *, dtype, device):
        allocated.append(torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size())
        buffer = torch.empty_strided(tuple(shape), tuple(stride), dtype=dtype, device=device)
        return buffer.fill_(float("nan"))

    monkeypatch.setattr(output_buffers, "empty_strided", recording_empty_strided)
    shape = Shape("tiny", batch=2, heads=3, n_img=70, n_text=9, head_dim=32)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 32, generator=g) for n in (70, 9, 9))
    mask = torch.tensor([[True] * 5 + [False] * 4, [True] * 9])
    cross_attention(q, k, v, mask, backend="triton")
    plain = sum(allocated)
    allocated.clear()
    cross_attention(q, k, v, mask, return_relevance=True, backend="triton")
    expected = relevance_extra_bytes_triton(shape, torch.float32)["fused" if fused else "two_pass"]
    assert sum(allocated) - plain == expected


def test_benchmark_runs_on_cpu_and_writes_json_and_markdown(tmp_path):
    from textvision.bench.perf.kernels import main

    threads = torch.get_num_threads()
    try:
        args = ["--quick", "--device", "cpu", "--threads", "1", "--max-shapes", "1", "--out", str(tmp_path)]
        report = main(args)
    finally:
        torch.set_num_threads(threads)
    assert not report["gpu_measured"]
    impls = {(r["kernel"], r["mode"], r["impl"]) for r in report["rows"]}
    for kernel, baseline in (("cross_attention", "sdpa_mask"), ("mutual_attention", "sdpa_mask_concat")):
        for mode in ("fwd", "fwd+bwd"):
            assert {(kernel, mode, "ours"), (kernel, mode, baseline)} <= impls
    assert ("cross_attention", "fwd+relevance", "eager+reduce") in impls
    assert all(r["ms"] > 0 for r in report["rows"])
    memory = report["relevance_memory"][0]
    eager, fused = (memory[f"{name}_relevance_extra_bytes_{kind}"]
                    for name, kind in (("eager", "measured"), ("triton_fused", "analytic")))
    assert eager > fused
    markdown = (tmp_path / "kernels.md").read_text()
    assert "GPU timings were not measured" in markdown and "| ViT-B/16@224 T=32 |" in markdown
