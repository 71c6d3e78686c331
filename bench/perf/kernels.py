"""Kernel micro-benchmark: ``cross_attention`` and ``mutual_attention`` at ViT shapes.

``python -m textvision.bench.perf.kernels [--out results] [--quick] [--device auto|cpu|cuda]``

Shapes: ViT-B/16 at 224 px (197 tokens, 12 heads) and ViT-L/14 at 336 px (577 tokens, 16
heads), head dim 64, instructions of 32 and 77 text tokens with a different real length per
sample (between T/2 and T, at the front).

On CUDA (bf16): median time from ``triton.testing.do_bench``, achieved TFLOP/s and GB/s against
the analytic cost model (``textvision.bench.perf.cost_model``), % of the H100 roofline (989 TFLOP/s,
3.35 TB/s), and speed ratios against SDPA with the padding mask, compiled FlexAttention and eager
attention, forward and forward+backward; relevance against eager attention + an explicit
reduction; peak extra memory of relevance from ``torch.cuda.max_memory_allocated``.

On CPU (float32, small batch so the run takes minutes): the PyTorch reference path that
``backend="auto"`` uses on the CPU against SDPA and eager attention, and the peak extra memory of
relevance — measured (torch profiler, op granularity) for the paths that materialise the
probabilities, analytic (exact buffer sizes of the launcher) for the Triton path, which cannot
run natively on a CPU. GPU timings are then reported as not measured.

Writes ``kernels.json`` and ``kernels.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from textvision.bench.perf.cost_model import H100_SXM, Cost, cross_attention_cost, mutual_attention_cost
from textvision.kernels import cross_attention, mutual_attention
from textvision.kernels.attention_forward import MIN_BLOCK_M

__all__ = ["Shape", "main", "relevance_extra_bytes_triton"]


@dataclass(frozen=True)
class Shape:
    """One benchmark shape: ``batch`` images of ``n_img`` tokens, ``n_text`` text tokens."""

    name: str
    batch: int
    heads: int
    n_img: int
    n_text: int
    head_dim: int = 64


def _shapes(device: str, quick: bool) -> list[Shape]:
    # GPU batches fill an H100 (the kernels take 10-50 µs, so small batches would time launches).
    if device == "cuda":
        b_base, b_large = (32, 16) if quick else (128, 32)
    else:
        b_base, b_large = (1, 1) if quick else (4, 2)
    shapes = []
    for n_text in (32, 77):
        shapes.append(Shape(f"ViT-B/16@224 T={n_text}", b_base, 12, 197, n_text))
        shapes.append(Shape(f"ViT-L/14@336 T={n_text}", b_large, 16, 577, n_text))
    return shapes


# ---------------------------------------------------------------------------------------------
# Baselines


def _eager_cross(q, k, v, mask, scale):
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def _eager_cross_relevance(q, k, v, mask, scale):
    """What a pruning method does today: materialise the scores, reduce them explicitly."""
    s = (q @ k.transpose(-1, -2)) * scale
    o = torch.softmax(s.masked_fill(~mask[:, None, None, :], float("-inf")), dim=-1) @ v
    column_p = torch.softmax(s.float(), dim=-2) * mask[:, None, None, :]
    rel = column_p.sum(dim=(1, 3)) / (q.shape[1] * mask.sum(-1, keepdim=True)).clamp_min(1)
    return o, rel


def _sdpa_cross(q, k, v, mask, scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], scale=scale)


def _concat(q_img, k_img, v_img, q_txt, k_txt, v_txt, mask):
    B, N = q_img.shape[0], q_img.shape[2]
    key_valid = torch.cat([torch.ones(B, N, dtype=torch.bool, device=mask.device), mask], 1)
    q, k, v = (torch.cat(pair, 2) for pair in ((q_img, q_txt), (k_img, k_txt), (v_img, v_txt)))
    return q, k, v, key_valid


def _sdpa_mutual(q_img, k_img, v_img, q_txt, k_txt, v_txt, mask, scale):
    """SDPA over the explicitly concatenated sequence (the concatenation is part of the cost)."""
    q, k, v, key_valid = _concat(q_img, k_img, v_img, q_txt, k_txt, v_txt, mask)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=key_valid[:, None, None, :], scale=scale)
    N = q_img.shape[2]
    return o[:, :, :N], o[:, :, N:]


def _eager_mutual(q_img, k_img, v_img, q_txt, k_txt, v_txt, mask, scale):
    q, k, v, key_valid = _concat(q_img, k_img, v_img, q_txt, k_txt, v_txt, mask)
    o = _eager_cross(q, k, v, key_valid, scale)
    N = q_img.shape[2]
    return o[:, :, :N], o[:, :, N:]


def _flex_fns(shape: Shape, lengths: torch.Tensor, device: str):
    """Compiled FlexAttention for both kernels; the block masks are built once, outside timing."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    B, N, T = shape.batch, shape.n_img, shape.n_text

    def text_valid(b, h, q_idx, kv_idx):
        return kv_idx < lengths[b]

    def concat_valid(b, h, q_idx, kv_idx):
        return (kv_idx < N) | (kv_idx - N < lengths[b])

    cross_mask = create_block_mask(text_valid, B, None, N, T, device=device)
    mutual_mask = create_block_mask(concat_valid, B, None, N + T, N + T, device=device)

    def cross(q, k, v, mask, scale):
        return flex(q, k, v, block_mask=cross_mask, scale=scale)

    def mutual(q_img, k_img, v_img, q_txt, k_txt, v_txt, mask, scale):
        q, k, v, _ = _concat(q_img, k_img, v_img, q_txt, k_txt, v_txt, mask)
        o = flex(q, k, v, block_mask=mutual_mask, scale=scale)
        return o[:, :, :N], o[:, :, N:]

    return cross, mutual


# ---------------------------------------------------------------------------------------------
# Timing and memory


def _time_cpu(fn: Callable[[], object], quick: bool) -> tuple[float, float]:
    """(median, min) seconds over repeats on the CPU, after one warm-up call."""
    fn()
    runs, budget, start = [], 0.3 if quick else 1.5, time.perf_counter()
    while len(runs) < 5 or (time.perf_counter() - start < budget and len(runs) < 50):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), min(runs)


def _time_cuda(fn: Callable[[], object], grad_to_none: Sequence[torch.Tensor] | None) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, grad_to_none=grad_to_none, return_mode="median") / 1e3


def _peak_cpu_bytes(fn: Callable[[], object]) -> int:
    """Peak of the running sum of CPU allocations during ``fn``, from the torch profiler
    (op granularity: allocations inside one op count at its start)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    current = peak = 0
    for event in events:
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def _peak_cuda_bytes(fn: Callable[[], object]) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def relevance_extra_bytes_triton(shape: Shape, dtype: torch.dtype = torch.bfloat16) -> dict[str, int]:
    """Exact bytes the Triton relevance paths of ``cross_attention`` allocate beyond the plain call.

    - ``fused`` (one program per (b, h), used when B·H fills the GPU): the per-head float32
      partials ``B·H·N · 4`` and ``rel`` ``B·N · 4``.
    - ``two_pass`` (tiled forward + relevance pass): the forward's per-tile column (max, sum),
      ``2 · B·H·cdiv(N, MIN_BLOCK_M)·T · 4`` (allocated for the smallest query tile of the
      autotune sweep), the per-head partials and ``rel``.
    """
    del dtype  # the relevance buffers are float32 whatever the input dtype
    B, H, N, T = shape.batch, shape.heads, shape.n_img, shape.n_text
    tiles = math.ceil(N / MIN_BLOCK_M)
    partials = B * H * N * 4 + B * N * 4
    return {"fused": partials, "two_pass": 2 * B * H * tiles * T * 4 + partials}


# ---------------------------------------------------------------------------------------------


def _inputs(shape: Shape, device: str, dtype: torch.dtype, generator: torch.Generator):
    B, H, N, T, D = shape.batch, shape.heads, shape.n_img, shape.n_text, shape.head_dim
    lengths = torch.randint(T // 2, T + 1, (B,), generator=generator)
    mask = torch.arange(T)[None, :] < lengths[:, None]

    def rand(n):
        return torch.randn(B, H, n, D, generator=generator).to(device=device, dtype=dtype)

    cross = (rand(N), rand(T), rand(T))
    mutual = (rand(N), rand(N), rand(N), rand(T), rand(T), rand(T))
    return cross, mutual, mask.to(device), lengths.to(device)


def _fwd_bwd(fn, leaves):
    """A callable running ``fn`` forward and backward with a fixed random upstream gradient."""
    def tensors(outputs):  # our kernels return NamedTuples whose `rel` is None here
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return [o for o in outputs if o is not None]

    upstream = [torch.randn_like(o) for o in tensors(fn(*leaves))]

    def run():
        torch.autograd.backward(tensors(fn(*leaves)), upstream)

    return run


def _row(shape, kernel, mode, impl, times, cost: Cost | None, gpu: bool) -> dict:
    seconds, min_seconds = times
    row = {"shape": shape.name, "batch": shape.batch, "heads": shape.heads, "n_img": shape.n_img,
           "n_text": shape.n_text, "head_dim": shape.head_dim, "kernel": kernel, "mode": mode,
           "impl": impl, "ms": None if seconds is None else seconds * 1e3}
    if min_seconds is not None:
        row["min_ms"] = min_seconds * 1e3
    if gpu and seconds is not None and cost is not None:
        row["tflops"] = cost.flops / seconds / 1e12
        row["gbps"] = cost.bytes / seconds / 1e9
        row["pct_roofline"] = 100 * H100_SXM.fraction_of_roofline(cost, seconds)
    return row


def _bench_shape(shape: Shape, device: str, quick: bool) -> tuple[list[dict], dict]:
    gpu = device == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32
    g = torch.Generator().manual_seed(0)
    cross_in, mutual_in, mask, lengths = _inputs(shape, device, dtype, g)
    scale = shape.head_dim**-0.5
    dims = {"batch": shape.batch, "heads": shape.heads, "n_img": shape.n_img, "n_text": shape.n_text,
            "head_dim": shape.head_dim, "dtype_bytes": 2 if gpu else 4}

    cross_impls = {
        "ours": lambda q, k, v: cross_attention(q, k, v, mask, scale=scale),
        "sdpa_mask": lambda q, k, v: _sdpa_cross(q, k, v, mask, scale),
        "eager": lambda q, k, v: _eager_cross(q, k, v, mask, scale),
    }
    mutual_impls = {
        "ours": lambda *x: mutual_attention(*x, mask, scale=scale),
        "sdpa_mask_concat": lambda *x: _sdpa_mutual(*x, mask, scale),
        "eager_concat": lambda *x: _eager_mutual(*x, mask, scale),
    }
    flex_error = None
    if gpu:
        try:
            flex_cross, flex_mutual = _flex_fns(shape, lengths, device)
            flex_cross(*cross_in, mask, scale)  # compile now, not inside the timing
            cross_impls["flex_compiled"] = lambda q, k, v: flex_cross(q, k, v, mask, scale)
            mutual_impls["flex_compiled_concat"] = lambda *x: flex_mutual(*x, mask, scale)
        except Exception as error:  # a FlexAttention limitation is a result, not a crash
            flex_error = f"{type(error).__name__}: {error}"[:300]

    def timed(fn, leaves, backward):
        try:
            if backward:
                leaves = [x.detach().requires_grad_() for x in leaves]
                run = _fwd_bwd(fn, leaves)
            else:
                def run():
                    with torch.no_grad():
                        fn(*leaves)
            if gpu:
                return _time_cuda(run, leaves if backward else None), None
            return _time_cpu(run, quick)
        except Exception as error:
            print(f"  {shape.name}: failed: {type(error).__name__}: {error}")
            return None, None

    rows = []
    for kernel, impls, leaves, cost_fn in (
        ("cross_attention", cross_impls, cross_in, cross_attention_cost),
        ("mutual_attention", mutual_impls, mutual_in, mutual_attention_cost),
    ):
        for mode, backward in (("fwd", False), ("fwd+bwd", True)):
            cost = cost_fn(**dims)
            if backward:
                cost = cost + cost_fn(**dims, backward=True)
            for impl, fn in impls.items():
                rows.append(_row(shape, kernel, mode, impl, timed(fn, leaves, backward), cost, gpu))
                ms = rows[-1]["ms"] or float("nan")
                print(f"  {kernel:16s} {mode:8s} {impl:22s} {ms:9.3f} ms", flush=True)

    # Relevance: our fused path vs eager attention + an explicit reduction.
    rel_impls = {
        "ours": lambda q, k, v: cross_attention(q, k, v, mask, scale=scale, return_relevance=True),
        "eager+reduce": lambda q, k, v: _eager_cross_relevance(q, k, v, mask, scale),
    }
    rel_cost = cross_attention_cost(**dims, relevance=True)
    for impl, fn in rel_impls.items():
        times = timed(fn, cross_in, False)
        rows.append(_row(shape, "cross_attention", "fwd+relevance", impl, times, rel_cost, gpu))
        print(f"  {'cross_attention':16s} {'fwd+rel':8s} {impl:22s} {rows[-1]['ms'] or float('nan'):9.3f} ms")

    memory = {
        "shape": shape.name, "batch": shape.batch, "heads": shape.heads, "n_img": shape.n_img,
        "n_text": shape.n_text,
        "probabilities_bytes_fp32": shape.batch * shape.heads * shape.n_img * shape.n_text * 4,
        **{f"triton_{path}_relevance_extra_bytes_analytic": n
           for path, n in relevance_extra_bytes_triton(shape).items()},
    }
    q, k, v = cross_in
    with torch.no_grad():
        if gpu:
            base = _peak_cuda_bytes(lambda: cross_attention(q, k, v, mask, scale=scale))
            memory["ours_relevance_extra_bytes_measured"] = _peak_cuda_bytes(
                lambda: cross_attention(q, k, v, mask, scale=scale, return_relevance=True)) - base
            memory["eager_relevance_extra_bytes_measured"] = _peak_cuda_bytes(
                lambda: _eager_cross_relevance(q, k, v, mask, scale)) - base
        else:
            base = _peak_cpu_bytes(lambda: cross_attention(q, k, v, mask, scale=scale))
            memory["reference_relevance_extra_bytes_measured"] = _peak_cpu_bytes(
                lambda: cross_attention(q, k, v, mask, scale=scale, return_relevance=True)) - base
            memory["eager_relevance_extra_bytes_measured"] = _peak_cpu_bytes(
                lambda: _eager_cross_relevance(q, k, v, mask, scale)) - _peak_cpu_bytes(
                lambda: _eager_cross(q, k, v, mask, scale))
    if flex_error:
        memory["flex_error"] = flex_error
    return rows, memory


def _ratios(rows: list[dict]) -> None:
    """Add ``speedup_vs_ours`` = baseline time / our time to every baseline row."""
    ours = {(r["shape"], r["kernel"], r["mode"]): r["ms"] for r in rows if r["impl"] == "ours"}
    for r in rows:
        mine = ours.get((r["shape"], r["kernel"], r["mode"]))
        r["ours_speedup"] = (r["ms"] / mine) if (mine and r["ms"]) else None


def _fmt(x, spec=".3f"):
    return "—" if x is None else format(x, spec)


def _markdown(report: dict) -> str:
    gpu = report["gpu_measured"]
    lines = ["# Kernel benchmark", "", f"Command: `{report['command']}`", "",
             f"Device: {report['device_name']} · dtype {report['dtype']} · torch {report['torch']} · "
             f"triton {report['triton']} · {report['threads']} CPU threads", ""]
    lines += [f"- {note}" for note in report["notes"]]
    if report.get("compile_check"):
        c = report["compile_check"]
        lines.append(f"- GPU compile check (`bench/perf/kernels_compile_check.py`, no GPU needed): "
                     f"{c['specialisations']} kernel specialisations compiled for sm_90 with Triton "
                     f"{c['triton']}, {c['failures']} failures, max shared memory "
                     f"{c['max_shared_bytes'] / 1024:.0f} KiB of 227 KiB.")
    lines.append("")
    header = "| shape | B | kernel | mode | impl | median ms | ours ×faster |"
    sep = "|---|---|---|---|---|---|---|"
    if not gpu:
        header += " min ms |"
        sep += "---|"
    else:
        header = header[:-1] + " TFLOP/s | GB/s | % roofline |"
        sep += "---|---|---|"
    lines += ["## Time", "", header, sep]
    for r in report["rows"]:
        speedup = _fmt(r["ours_speedup"], ".2f") if r["impl"] != "ours" else ""
        line = (f"| {r['shape']} | {r['batch']} | {r['kernel']} | {r['mode']} | {r['impl']} | "
                f"{_fmt(r['ms'])} | {speedup} |")
        if not gpu:
            line += f" {_fmt(r.get('min_ms'))} |"
        else:
            line += (f" {_fmt(r.get('tflops'), '.1f')} | {_fmt(r.get('gbps'), '.0f')} | "
                     f"{_fmt(r.get('pct_roofline'), '.1f')} |")
        lines.append(line)
    lines += ["", "## Extra memory of relevance (cross_attention)", "",
              "| shape | B | probabilities fp32 (MB) | Triton fused / two-pass, analytic (MB) | measured: "
              + ("ours (MB) | eager+reduce (MB) |" if gpu else "reference (MB) | eager+reduce (MB) |"),
              "|---|---|---|---|---|---|"]
    for m in report["relevance_memory"]:
        ours_key = ("ours" if gpu else "reference") + "_relevance_extra_bytes_measured"
        lines.append(f"| {m['shape']} | {m['batch']} | {m['probabilities_bytes_fp32'] / 1e6:.2f} | "
                     f"{m['triton_fused_relevance_extra_bytes_analytic'] / 1e6:.3f} / "
                     f"{m['triton_two_pass_relevance_extra_bytes_analytic'] / 1e6:.3f} | "
                     f"{m[ours_key] / 1e6:.2f} | "
                     f"{m['eager_relevance_extra_bytes_measured'] / 1e6:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for kernels.json/.md")
    parser.add_argument("--quick", action="store_true", help="smaller batches and fewer repeats")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--max-shapes", type=int, default=None, help="only the first N shapes (a quick look)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    gpu = device == "cuda"
    import triton

    notes = []
    if gpu:
        notes.append("Times: median of triton.testing.do_bench; TFLOP/s, GB/s and % roofline use the "
                     "analytic cost model (bench/perf/cost_model.py) against the H100 SXM5 spec "
                     "(989 TFLOP/s bf16, 3.35 TB/s).")
        notes.append("ours = Triton kernels (backend='auto' on CUDA); "
                     "ours ×faster = baseline time / our time.")
    else:
        notes.append("GPU timings were not measured (no GPU on this machine): the Triton kernels ran only "
                     "under the interpreter in the tests, where timing them is meaningless.")
        notes.append("CPU: ours = the PyTorch reference path that backend='auto' uses on CPU tensors; "
                     "float32; batches reduced to keep the run to minutes. "
                     "ours ×faster = baseline median / our median.")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        notes.append(f"CPU load average at the start: {load:.1f} on {os.cpu_count()} cores; the machine was "
                     "shared with other jobs, so medians are noisy (min ms is the least disturbed run).")
        notes.append("Relevance memory: 'Triton fused / two-pass, analytic' is the exact size of the "
                     "buffers the Triton launchers allocate for relevance (fused: per-head partials + rel; "
                     "two-pass: per-tile column max/sum + rel) for bf16 on a GPU, not a measurement; "
                     "the measured columns are peaks of CPU allocations (torch profiler, op granularity) "
                     "above the same call without relevance.")
    shapes = _shapes(device, args.quick)[: args.max_shapes]
    print(f"device={device} shapes={len(shapes)}", flush=True)
    rows, memory = [], []
    for shape in shapes:
        print(f"{shape.name} B={shape.batch}", flush=True)
        shape_rows, shape_memory = _bench_shape(shape, device, args.quick)
        rows += shape_rows
        memory.append(shape_memory)
    _ratios(rows)
    report = {
        "command": "python -m textvision.bench.perf.kernels" + (" --quick" if args.quick else "")
        + (f" --device {args.device}" if args.device != "auto" else "")
        + (f" --threads {args.threads}" if args.threads is not None else "")
        + (f" --max-shapes {args.max_shapes}" if args.max_shapes is not None else ""),
        "device": device,
        "device_name": torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine(),
        "gpu_measured": gpu,
        "dtype": "bfloat16" if gpu else "float32",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "threads": torch.get_num_threads(),
        "notes": notes,
        "rows": rows,
        "relevance_memory": memory,
    }
    compile_check = args.out / "kernels_compile_check.json"
    if compile_check.is_file():
        checked = json.loads(compile_check.read_text())
        report["compile_check"] = {
            "specialisations": len(checked["rows"]), "failures": checked["failures"],
            "triton": checked["triton"],
            "max_shared_bytes": max((r.get("shared_bytes", 0) for r in checked["rows"]), default=0),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels.json").write_text(json.dumps(report, indent=2))
    (args.out / "kernels.md").write_text(_markdown(report))
    print(f"wrote {args.out / 'kernels.json'} and {args.out / 'kernels.md'}")
    return report


if __name__ == "__main__":
    main()
