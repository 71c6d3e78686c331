"""Compile every Triton kernel launch for an H100 (sm_90) without a GPU: registers, spills, smem.

``env -u TRITON_INTERPRET python -m textvision.bench.perf.kernels_compile_check [--out results]``

The interpreter tests prove the kernels' arithmetic, not that they compile for a GPU, nor what
they cost there: the real compiler rejects things the interpreter accepts (loop-carried type
changes, dot shapes under 16), a tile that needs more shared memory than the SM has only fails
at launch, and a kernel that runs out of its 255 registers spills to local memory. This tool

1. runs the real launchers (``cross_attention`` / ``mutual_attention`` forward, relevance on
   both paths, backward) on CPU tensors of realistic shapes with every kernel's launch replaced
   by a recorder, so each launch's arguments are exactly those of a GPU run — including
   Triton's specialisation of every pointer and integer (16-byte divisibility hints, ``== 1``
   constants) computed by Triton's own ``native_specialize_impl``;
2. for each distinct specialisation compiles **every autotune config that the prune filter
   keeps** (``--defaults-only``: only the default one, what CI checks; ``--all-configs``: every
   config of the sweep, the pruned ones reported but never failing) through Triton's full
   ahead-of-time pipeline (TTIR → TTGIR → LLVM → PTX → cubin with the bundled ptxas, ``-v``);
3. writes ``kernels_compile_check.json`` and ``.md``: registers, spill stores/loads, stack and
   shared memory per kernel × specialisation × config. With ``--update-spill-table`` it also
   records every config that spilled in ``kernels/known_spills.json``, which the autotune prune
   filter reads (a model cannot predict ptxas' occupancy heuristics; the compiler can).

It fails (exit 1) when a kept config does not compile, needs more than the H100's 227 KiB of
shared memory per block, or spills. It needs no GPU; it needs ``TRITON_INTERPRET`` unset.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import itertools
import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["main", "plan", "record_launches"]

H100_MAX_SHARED_BYTES = 232_448  # 227 KiB opt-in per block on sm_90
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
# Shapes of the recorded launches: ViT-B/16 at 224 px (197 image tokens, 12 heads), batch 2 (the
# batch only sizes the grid), inputs laid out (B, N, H, D) as the fusion modules produce them.
_BATCH, _HEADS, _N_IMG = 2, 12, 197


def _kernels() -> dict[str, object]:
    """Every launchable kernel object by name: the autotuners and the two plain jit kernels."""
    from textvision.kernels import attention_backward, relevance
    from textvision.kernels.triton_common import AUTOTUNED

    return {**AUTOTUNED, "delta": attention_backward._delta_kernel, "head_mean": relevance._head_mean_kernel}


@contextlib.contextmanager
def _recording(launches: list):
    """Replace every kernel's launch by a recorder of ``(name, args, kwargs)``."""
    kernels = _kernels()
    for name, kernel in kernels.items():
        def record(*args, grid=None, warmup=False, _name=name, _kernel=kernel, **kwargs):
            del warmup
            meta = dict(kwargs)
            if hasattr(_kernel, "spec"):  # an autotuner: later launchers read its best config
                from textvision.kernels.triton_common import default_config

                named = dict(zip(_kernel.arg_names, args, strict=False)) | kwargs
                _kernel.best_config = default_config(_name, named)
                meta |= _kernel.best_config.kwargs
            launches.append((_name, args, kwargs, tuple(grid(meta) if callable(grid) else grid)))

        kernel.run = record
    try:
        yield
    finally:
        for kernel in kernels.values():
            del kernel.run


def record_launches(
    dtype: torch.dtype, head_dim: int, n_text: int, *,
    batch: int = _BATCH, heads: int = _HEADS, n_img: int = _N_IMG,
) -> list[tuple[str, str, tuple, dict, tuple]]:
    """``(scenario, kernel, args, kwargs, grid)`` of every launch of every code path at one
    shape (``grid`` at the default config), without running any kernel."""
    import importlib

    ca = importlib.import_module("textvision.kernels.cross_attention")
    ma = importlib.import_module("textvision.kernels.mutual_attention")
    g = torch.Generator().manual_seed(0)
    B, H, N, T, D = batch, heads, n_img, n_text, head_dim

    def tokens(n):  # (B, n, H, D) storage viewed as (B, H, n, D)
        return torch.randn(B, n, H, D, generator=g).to(dtype).transpose(1, 2)

    lengths = torch.tensor([T, max(1, T // 2)]).repeat(B)[:B]
    mask = torch.arange(T)[None, :] < lengths[:, None]
    scale = D**-0.5
    out = []

    def run(scenario, fn):
        launches: list = []
        with _recording(launches):
            fn()
        out.extend((scenario, *launch) for launch in launches)

    def cross(relevance, fused, grad):
        def fn():
            q, k, v = (x.requires_grad_(grad) for x in (tokens(N), tokens(T), tokens(T)))
            old = ca.FUSED_RELEVANCE
            ca.FUSED_RELEVANCE = fused
            try:
                o, _ = ca._CrossAttentionFunction.apply(q, k, v, mask, scale, relevance, grad)
            finally:
                ca.FUSED_RELEVANCE = old
            if grad:
                o.backward(torch.randn_like(o))
        return fn

    def mutual(grad):
        def fn():
            xs = [tokens(n).requires_grad_(grad) for n in (N, N, N, T, T, T)]
            o_img, o_txt, _ = ma._MutualAttentionFunction.apply(*xs, mask, scale, True, grad)
            if grad:
                torch.autograd.backward([o_img, o_txt], [torch.randn_like(o_img), torch.randn_like(o_txt)])
        return fn

    run("cross fwd (no grad)", cross(False, None, False))
    run("cross fwd+bwd", cross(False, None, True))
    run("cross fwd+relevance (two-pass)", cross(True, False, False))
    if T <= ca.text_block(T, dtype, D):
        run("cross fwd+relevance (fused)", cross(True, True, False))
        run("cross fwd+relevance (fused) +bwd", cross(True, True, True))
    run("mutual fwd+relevance (no grad)", mutual(False))
    run("mutual fwd+relevance+bwd", mutual(True))
    return out


def _specialise(kernel, args: tuple, kwargs: dict):
    """Signature, constexprs and attributes of a launch, as Triton's JIT computes them."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    jit = kernel
    while not hasattr(jit, "params"):
        jit = jit.fn
    bound = dict(zip(jit.arg_names, args, strict=False)) | kwargs
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(jit.params):
        name = param.name
        if name not in bound:
            continue
        value = bound[name]
        if param.is_constexpr:
            signature[name] = "constexpr"
            constexprs[(i,)] = value
            continue
        kind, spec = native_specialize_impl(
            BaseBackend, value, False, not param.do_not_specialize, not param.do_not_specialize_on_alignment
        )
        signature[name] = kind
        if kind == "constexpr":
            constexprs[(i,)] = spec
        elif isinstance(spec, str):
            attrs[(i,)] = BaseBackend.parse_attr(spec)
    return jit, signature, constexprs, attrs


def _label(bound: dict) -> dict:
    keep = ("BLOCK_D", "BLOCK_T", "BLOCK_N", "BLOCK_K", "QUERY_IS_TEXT", "HAS_IMAGE_KEYS", "COLUMN_STATS",
            "STORE_LSE", "KEY_IS_TEXT", "HAS_TEXT_QUERIES", "FROM_COLUMN_STATS")
    return {k: bound[k] for k in keep if k in bound}


def plan(
    combos: Sequence[tuple[str, int, int]], all_configs: bool = False, defaults_only: bool = False,
    kernels: Sequence[str] | None = None,
) -> list[dict]:
    """Every distinct (specialisation, config) to compile for these (dtype, D, T) combos: the
    configs the prune filter keeps, all of them (``all_configs``) or only the default one."""
    import triton

    from textvision.kernels.triton_common import config_name, eligible_configs, spill_key

    launchable = _kernels()
    jobs: dict[str, dict] = {}
    for dtype_name, head_dim, n_text in combos:
        for scenario, name, args, kwargs, _grid in record_launches(_DTYPES[dtype_name], head_dim, n_text):
            if kernels is not None and name not in kernels:
                continue
            kernel = launchable[name]
            bound = dict(zip(kernel.arg_names, args, strict=False)) | kwargs
            if hasattr(kernel, "spec"):
                kept = eligible_configs(name, bound)
                kept_names = {config_name(c) for c in kept}
                configs = kernel.configs if all_configs else kept
            else:
                configs = [triton.Config({}, num_warps=4, num_stages=1)]
                kept_names = {config_name(configs[0])}
            default_name = config_name(configs[0]) if not hasattr(kernel, "spec") else config_name(kept[0])
            if defaults_only:
                configs = [c for c in configs if config_name(c) == default_name]
            for config in configs:
                jit, signature, constexprs, attrs = _specialise(kernel, args, kwargs | config.kwargs)
                key = repr((jit.__name__, sorted(signature.items()), sorted(constexprs.items()),
                            sorted(attrs.items()), config.num_warps, config.num_stages))
                if key in jobs:
                    jobs[key]["scenarios"].add(f"{dtype_name}:{head_dim}:{n_text} {scenario}")
                    continue
                jobs[key] = {
                    "kernel": jit.__name__, "name": name, "dtype": dtype_name, "head_dim": head_dim,
                    "n_text": n_text, **_label(bound), "config": config_name(config),
                    "kept": config_name(config) in kept_names, "default": config_name(config) == default_name,
                    "spill_key": spill_key(name, bound, config) if hasattr(kernel, "spec") else None,
                    "scenarios": {f"{dtype_name}:{head_dim}:{n_text} {scenario}"},
                    "_compile": (name, signature, constexprs, attrs,
                                 {"num_warps": config.num_warps, "num_stages": config.num_stages}),
                }
    return list(jobs.values())


_PTXAS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack_bytes": re.compile(r"(\d+) bytes stack frame"),
}


def _compile(job: tuple) -> dict:
    """Compile one job (in a worker process); the ptxas ``-v`` log gives registers and spills."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name, signature, constexprs, attrs, options = job
    kernel = _kernels()[name]
    jit = kernel
    while not hasattr(jit, "params"):
        jit = jit.fn
    knobs.nvidia.dump_ptxas_log = True
    knobs.compilation.always_compile = True  # a cached cubin would skip ptxas and its log
    start = time.perf_counter()
    log = io.StringIO()
    row: dict = {}
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(jit, signature, constexprs, attrs),
                                      target=GPUTarget("cuda", 90, 32), options=options)
        text = log.getvalue()
        for field, pattern in _PTXAS.items():
            values = [int(v) for v in pattern.findall(text)]
            row[field] = max(values) if values else None
        row["shared_bytes"] = compiled.metadata.shared
    except Exception as error:  # reported per row; the run fails if the config was kept
        row["error"] = f"{type(error).__name__}: {error}"[:500]
    row["compile_s"] = round(time.perf_counter() - start, 2)
    return row


def _update_spill_table(rows: list[dict], triton_version: str, reset: bool = False) -> None:
    """Add this run's spilling configs to the table (fp16 and bf16 share keys, so an entry is
    never removed by a run of the other dtype); ``reset`` starts from an empty table."""
    from textvision.kernels.triton_common import SPILL_TABLE

    old = json.loads(SPILL_TABLE.read_text())["spills"] if SPILL_TABLE.is_file() and not reset else []
    spilled = {r["spill_key"] for r in rows if r.get("spill_key") and r["spills"]}
    spills = sorted(set(old) | spilled)
    SPILL_TABLE.write_text(json.dumps({
        "about": "autotune configs ptxas spilled for sm_90, by kernel|16bit or fp32|constexprs|config "
                 "(fp16 and bf16 share entries); "
                 "written by `env -u TRITON_INTERPRET python -m textvision.bench.perf.kernels_compile_check "
                 "--all-configs --update-spill-table`; the prune filter excludes them",
        "triton": triton_version, "spills": spills}, indent=1) + "\n")
    print(f"spill table: {len(spills)} entries ({len(spilled)} from this run) in {SPILL_TABLE}")


def _combos(args, parser) -> list[tuple[str, int, int]]:
    if args.combo:
        combos = []
        for combo in args.combo:
            dtype_name, head_dim, n_text = combo.split(":")
            if dtype_name not in _DTYPES:
                parser.error(f"--combo {combo}: dtype must be one of {sorted(_DTYPES)}")
            combos.append((dtype_name, int(head_dim), int(n_text)))
        return combos
    if args.quick:
        return [("bf16", 64, 77), ("fp16", 128, 32)]
    # T = 77 takes the largest text tile of each dtype/D; T = 32 the common short tile; T = 200
    # the streamed text; D = 72 the padded head dim; float32 runs IEEE (FMA) products.
    combos = list(itertools.product(("fp16", "bf16"), (64, 128), (32, 77, 200)))
    combos += [("bf16", 72, 77), ("fp32", 64, 77), ("fp32", 128, 32)]
    return combos


def _markdown(report: dict) -> str:
    lines = ["# Kernel compile check (sm_90, no GPU)", "",
             f"Command: `{report['command']}` · Triton {report['triton']} · "
             f"{len(report['rows'])} compilations, "
             f"{report['failures']} failures (a kept config that fails to compile, exceeds "
             f"{report['max_shared_bytes'] // 1024} KiB of shared memory or spills).", "",
             "Kept = the prune filter lets the autotuner benchmark this config; default = the first kept "
             "(what the interpreter and `TEXTVISION_AUTOTUNE=0` run).", "",
             "| kernel | dtype | D | T | tiles | config | kept | regs | spill st/ld (B) | smem (KiB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        tiles = " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in r.items()
                         if k.isupper() and k not in ("BLOCK_D",))
        kept = ("default" if r["default"] else "yes") if r["kept"] else "no"
        spill = "error" if "error" in r else f"{r['spill_stores'] or 0}/{r['spill_loads'] or 0}"
        smem = "—" if "error" in r else f"{r['shared_bytes'] / 1024:.0f}"
        lines.append(f"| {r['kernel']} | {r['dtype']} | {r['head_dim']} | {r['n_text']} | {tiles} | "
                     f"{r['config']} | {kept} | {r.get('registers', '—')} | {spill} | {smem} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--quick", action="store_true", help="bf16 D=64 T=77 and fp16 D=128 T=32 only")
    parser.add_argument("--combo", action="append", default=None, metavar="DTYPE:HEAD_DIM:T",
                        help="only these shapes, e.g. bf16:64:77 (repeatable)")
    parser.add_argument("--all-configs", action="store_true",
                        help="also compile the configs the prune filter drops (reported, never failing)")
    parser.add_argument("--defaults-only", action="store_true",
                        help="only the default config of each specialisation (what CI checks)")
    parser.add_argument("--update-spill-table", action="store_true",
                        help="add the configs that spilled to kernels/known_spills.json (the prune "
                             "filter excludes them)")
    parser.add_argument("--reset-spill-table", action="store_true",
                        help="with --update-spill-table: drop the old entries first (after a kernel change)")
    parser.add_argument("--kernel", action="append", default=None, metavar="NAME",
                        help="only this kernel (a key of triton_common.AUTOTUNED, 'delta' or 'head_mean'; "
                             "repeatable)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compilations")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: the kernels must be defined as GPU kernels to compile them")
    import triton

    combos = _combos(args, parser)
    if args.all_configs and args.defaults_only:
        parser.error("--all-configs and --defaults-only exclude each other")
    jobs = plan(combos, args.all_configs, args.defaults_only, args.kernel)
    print(f"{len(jobs)} compilations for {len(combos)} shapes, {args.jobs} jobs", flush=True)
    rows, failures = [], 0
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "kernels_compile_check.partial.jsonl"  # survives a run cut short
    partial.write_text("")
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = pool.map(_compile, [job.pop("_compile") for job in jobs])
        for job, result in zip(jobs, results, strict=True):
            row = {**job, "scenarios": sorted(job["scenarios"]), **result}
            row["fits_h100"] = "error" not in row and row["shared_bytes"] <= H100_MAX_SHARED_BYTES
            row["spills"] = bool(row.get("spill_stores") or row.get("spill_loads"))
            failed = row["kept"] and (not row["fits_h100"] or row["spills"])
            failures += failed
            rows.append(row)
            with partial.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{row['dtype']} D={row['head_dim']:3d} T={row['n_text']:3d} {row['kernel']:28s} "
                  f"{row['config']:22s} kept={int(row['kept'])} regs={row.get('registers')} "
                  f"spill={row.get('spill_stores')} smem={row.get('shared_bytes')} "
                  f"{'FAIL ' + row.get('error', '')[:80] if failed else ''}", flush=True)
    options = " --quick" if args.quick else ""
    options += "".join(f" --combo {c}" for c in args.combo) if args.combo else ""
    options += " --all-configs" if args.all_configs else ""
    options += " --defaults-only" if args.defaults_only else ""
    options += "".join(f" --kernel {k}" for k in args.kernel) if args.kernel else ""
    command = "env -u TRITON_INTERPRET python -m textvision.bench.perf.kernels_compile_check" + options
    report = {"target": "cuda sm_90 (H100/H200)", "triton": triton.__version__, "command": command,
              "max_shared_bytes": H100_MAX_SHARED_BYTES, "combos": [":".join(map(str, c)) for c in combos],
              "failures": failures, "rows": rows}
    if args.update_spill_table:
        _update_spill_table(rows, triton.__version__, args.reset_spill_table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels_compile_check.json").write_text(json.dumps(report, indent=2))
    (args.out / "kernels_compile_check.md").write_text(_markdown(report))
    partial.unlink()
    print(f"{len(rows)} compilations, {failures} failures; wrote {args.out / 'kernels_compile_check.json'}")
    if failures:
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
