"""Pieces shared by the Triton attention kernels: tile policy, autotune configs, jit helpers.

Conventions of every kernel in this package:

- Tensors are ``(B, H, N, D)`` with any strides as long as the last dim is contiguous. Grids are
  one-dimensional: program ``pid`` owns tile ``pid % n_tiles`` of the pair
  ``pid_bh = pid // n_tiles = b·H + h`` (:func:`split_pid`), so ``B·H`` is limited only by
  CUDA's 2^31 - 1 programs on grid axis 0, not by the 65,535 of axes 1 and 2.
- Head dims are padded to ``BLOCK_D`` = the next power of two >= 16 (:func:`head_block`) with a
  column mask, so any ``D <= 128`` runs (SigLIP's 72, ViT-H's 80); ``EVEN_D`` drops the mask when
  ``D`` is a power of two.
- Scores live in base 2 with the softmax scale folded in: ``s2 = q·k · scale · log2(e)``, so
  ``softmax = exp2(s2 - lse2)``. The saved log-sum-exp ``lse2`` is float32, **base 2**, of the
  scaled scores (natural LSE = ``lse2 · ln 2``); it is ``+inf`` for a query row with no valid
  key, which makes ``exp2(s2 - lse2) = 0`` on that row in every recomputation.
- Accumulators are float32. Under ``TRITON_INTERPRET=1`` bfloat16 tiles are upcast to float32
  right after loading (the interpreter computes bfloat16 arithmetic on raw bit patterns).
- Every masked load passes ``other=``; out-of-range reads on the GPU are undefined.

Autotuning. Every tiled kernel is wrapped by :func:`autotuned`: the tile size along the query (or
image) axis and ``num_warps``/``num_stages`` are in the configs; the key holds **buckets** of the
lengths (next power of two, :func:`size_bucket`) and the compile-time tile sizes, never a raw
length, so a new padded text length or batch does not re-benchmark (and CUDA-graph capture
after warm-up never hits the benchmarker). A prune filter keeps the configs that suit the
bucket, fit the register model (:func:`estimated_registers`) and are not in the table of
configs ptxas was seen to spill (``known_spills.json``, written by
``bench/perf/kernels_compile_check.py --all-configs --update-spill-table``). Under the interpreter —
which cannot benchmark — and with ``TEXTVISION_AUTOTUNE=0`` the filter returns one config, the
first that survives (the default);
:func:`forced_config` pins any config (tests and ``bench/perf/gpu_check.py`` force each one once).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
import triton.language as tl

from .dispatch import INTERPRETED

__all__ = [
    "AUTOTUNE",
    "AUTOTUNED",
    "LOG2E",
    "MAX_BLOCK_T",
    "KernelSpec",
    "autotuned",
    "config_name",
    "default_config",
    "dot_precision",
    "eligible_configs",
    "estimated_registers",
    "forced_config",
    "head_block",
    "image_block",
    "key_validity",
    "known_spills",
    "last_dim_contiguous",
    "launched_config",
    "load_rows",
    "size_bucket",
    "spill_key",
    "split_pid",
    "store_rows",
    "text_block",
    "tile_elements",
    "upcast",
]

LOG2E = 1.4426950408889634
# Text (T <= the text tile) fits one key tile, which makes its softmax exact in one step; longer
# text is streamed in tiles. A module attribute so tests can shrink it to exercise streaming.
MAX_BLOCK_T = 128
# Benchmark configs on the GPU (the default); TEXTVISION_AUTOTUNE=0 always takes the default one.
AUTOTUNE = os.environ.get("TEXTVISION_AUTOTUNE", "1").strip().lower() not in ("0", "false", "off", "no")
# A config whose estimate exceeds this is pruned. The model counts score and probability tiles
# separately although ptxas overlaps them, so its units run above real registers. Calibrated on
# ptxas (bench/perf/kernels_compile_check.py --all-configs, fp16, D = 64/128, T = 32/77/200): of the
# 642 configs under the budget 597 compiled without a spill, of the 102 above it 87 spilled. The
# 45 that spill under it (a few bytes at 32-row tiles where ptxas picks 168 registers for
# occupancy, and the fused relevance kernel at BLOCK_T = 128) are in the known-spills table.
# float32's IEEE products run on FMA units and defeat the model (150 of 175 under it spill):
# there the table does the work.
_REGISTER_BUDGET = 300
# Configs that ptxas spilled for a specialisation, written by
# `kernels_compile_check --all-configs --update-spill-table` and excluded by the prune filter.
SPILL_TABLE = Path(__file__).with_name("known_spills.json")
# Constexprs left out of the spill table's key (HEAD_DIM is covered by BLOCK_D and EVEN_D; the
# mask and the interpreter's upcast do not change the register allocation).
_SPILL_KEY_SKIP = frozenset({"HEAD_DIM", "HAS_MASK", "UPCAST"})
# fp16 and bf16 share entries: a config that spilled for either is dropped for both.
_DTYPE_NAMES = {torch.float16: "16bit", torch.bfloat16: "16bit", torch.float32: "fp32"}


def head_block(head_dim: int) -> int:
    """``BLOCK_D``: the head dim padded to a power of two, at least 16 (``tl.dot``'s minimum)."""
    return max(16, triton.next_power_of_2(head_dim))


def _row_bytes(dtype: torch.dtype, head_dim: int) -> int:
    return head_block(head_dim) * (4 if dtype == torch.float32 else 2)


def text_block(n_text: int, dtype: torch.dtype, head_dim: int) -> int:
    """Tile size for the text axis: the next power of two >= ``n_text``, in [16, t_max], with
    ``t_max = MAX_BLOCK_T`` for rows up to 128 bytes (16-bit, D <= 64) and half that for wider
    rows, so that the score tile and the accumulators fit in registers."""
    t_max = MAX_BLOCK_T if _row_bytes(dtype, head_dim) <= 128 else max(16, MAX_BLOCK_T // 2)
    return min(t_max, max(16, triton.next_power_of_2(n_text)))


def image_block(dtype: torch.dtype, head_dim: int) -> int:
    """Image keys per streamed tile (mutual attention) and image keys per dk/dv program: 64, or
    32 for rows of 512 bytes (float32 at D = 128) so operands and accumulators stay in registers."""
    return 32 if _row_bytes(dtype, head_dim) >= 512 else 64


def size_bucket(n: int) -> int:
    """The autotune key of a length: the next power of two, capped at 4096 (beyond it the tiling
    behaves alike)."""
    return min(4096, triton.next_power_of_2(max(1, n)))


def upcast(dtype: torch.dtype) -> bool:
    """Whether loaded tiles are cast to float32 inside the kernels (bfloat16 under the interpreter)."""
    return INTERPRETED and dtype == torch.bfloat16


def dot_precision(dtype: torch.dtype) -> str:
    """float32 inputs get IEEE float32 products (not TF32), matching PyTorch's default."""
    return "ieee" if dtype == torch.float32 else "tf32"


def last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    """Kernels take any strides but need a unit stride on the head dim; copy only if needed."""
    return x if x.stride(-1) == 1 else x.contiguous()


# ---------------------------------------------------------------------------------------------
# Autotune configs, buckets and the prune filter


def estimated_registers(elements: int, num_warps: int) -> int:
    """32-bit registers per thread for ``elements`` live 32-bit values of a program's tiles
    (accumulators, score tiles, operands), spread over ``32·num_warps`` threads, plus 32
    registers of addresses, masks and loop state. A model for the prune filter only; ptxas'
    counts (``bench/perf/kernels_compile_check.py``) are the truth it is calibrated on."""
    return 32 + -(-elements // (32 * num_warps))


def tile_elements(*tiles: tuple[int, int, int]) -> int:
    """Live 32-bit values of ``(rows, cols, bytes per element)`` tiles (16-bit values pack two
    to a register)."""
    return sum(rows * cols * elem_bytes // 4 for rows, cols, elem_bytes in tiles)


@dataclass(frozen=True)
class KernelSpec:
    """How one autotuned kernel prunes its configs.

    Args:
        name: the kernel's name (the key of :data:`AUTOTUNED` and of :func:`forced_config`).
        tile: the config's tile parameter (``BLOCK_M`` or ``BLOCK_N``).
        length_bucket: the kernel argument holding the bucket of the tiled length.
        elements: ``(config kwargs, named args) -> live 32-bit values of one program`` (see
            :func:`tile_elements`) for the register model of the prune filter.
        streams: ``(named args) -> bool``: the kernel has a loop with more than one trip, so
            ``num_stages > 1`` (software pipelining) can help; otherwise only ``num_stages = 1``.
    """

    name: str
    tile: str
    length_bucket: str
    elements: Callable[[dict, dict], int]
    streams: Callable[[dict], bool]


AUTOTUNED: dict[str, triton.runtime.Autotuner] = {}
_FORCED: dict[str, triton.Config] = {}


def _tile_sweep(tile: str, sizes: Sequence[int]) -> list[triton.Config]:
    """The sweep in order of preference (the first kept is the default): tile sizes as given,
    4 then 8 warps, 1 then 2 pipeline stages."""
    configs = []
    for size in sizes:
        for warps in (4, 8):
            for stages in (1, 2):
                configs.append(triton.Config({tile: size}, num_warps=warps, num_stages=stages))
    return configs


def config_name(config: triton.Config) -> str:
    tiles = ",".join(f"{k}={v}" for k, v in sorted(config.kwargs.items()))
    return f"{tiles},w{config.num_warps},s{config.num_stages}"


def spill_key(name: str, named: dict, config: triton.Config) -> str:
    """The key of a (kernel, specialisation, config) in the known-spills table: 16-bit or float32
    inputs, the constexprs that shape the code (the head dim as ``BLOCK_D`` and ``EVEN_D``) and
    the config. fp16 and bf16 share a key; ptxas' quirks differ slightly between them, so the
    table holds the union of both (entries are only ever added)."""
    tensor = next(v for v in named.values() if isinstance(v, torch.Tensor))
    consts = {k: named[k] for k in _constexpr_names(name)
              if k in named and k not in _SPILL_KEY_SKIP and k not in config.kwargs}
    fields = ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in sorted(consts.items()))
    dtype = _DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype))
    return f"{name}|{dtype}|{fields}|{config_name(config)}"


@functools.cache
def _constexpr_names(name: str) -> tuple[str, ...]:
    """The ``tl.constexpr`` parameters of kernel ``name`` (GPU or interpreted)."""
    fn = AUTOTUNED[name].fn
    while hasattr(fn, "fn"):
        fn = fn.fn
    params = inspect.signature(fn).parameters.values()
    return tuple(p.name for p in params if "constexpr" in str(p.annotation))


@functools.cache
def known_spills() -> frozenset[str]:
    """The spill table's keys (empty if the file is missing)."""
    if not SPILL_TABLE.is_file():
        return frozenset()
    return frozenset(json.loads(SPILL_TABLE.read_text())["spills"])


def _valid(spec: KernelSpec, config: triton.Config, named: dict) -> bool:
    tile = config.kwargs[spec.tile]
    # A tile larger than the (bucketed) length computes padding; keep the smallest such tile.
    if tile > max(32, named[spec.length_bucket]):
        return False
    if config.num_stages > 1 and not spec.streams(named):
        return False
    elements = spec.elements(config.kwargs, named)
    if estimated_registers(elements, config.num_warps) > _REGISTER_BUDGET:
        return False
    return spill_key(spec.name, named, config) not in known_spills()


def _model_configs(spec: KernelSpec, configs: list[triton.Config], named: dict) -> list[triton.Config]:
    """The configs the filter keeps, in sweep order; if none, the smallest tile with 4 warps,
    unpipelined."""
    valid = [c for c in configs if _valid(spec, c, named)]
    return valid or [min(configs, key=lambda c: (c.kwargs[spec.tile], c.num_warps, c.num_stages))]


def _prune(spec: KernelSpec) -> Callable:
    def prune(configs: list[triton.Config], named: dict, **kwargs) -> list[triton.Config]:
        forced = _FORCED.get(spec.name)
        if forced is not None:
            return [forced]
        valid = _model_configs(spec, configs, {**named, **kwargs})
        return valid[:1] if INTERPRETED or not AUTOTUNE else valid

    return prune


def autotuned(spec: KernelSpec, sizes: Sequence[int], key: Sequence[str]):
    """``triton.autotune`` with the package's sweep, bucketed ``key`` and prune filter.

    The autotuner is registered in :data:`AUTOTUNED` under ``spec.name``.
    """

    def wrap(fn):
        tuner = triton.autotune(
            configs=_tile_sweep(spec.tile, sizes), key=list(key),
            prune_configs_by={"early_config_prune": _prune(spec)},
        )(fn)
        tuner.spec = spec
        AUTOTUNED[spec.name] = tuner
        return tuner

    return wrap


def eligible_configs(name: str, named: dict) -> list[triton.Config]:
    """The configs the prune filter lets the autotuner benchmark for these launch arguments
    (named arguments and constexprs; ignoring the interpreter / ``TEXTVISION_AUTOTUNE=0``
    single-config rule and any forced config)."""
    tuner = AUTOTUNED[name]
    return _model_configs(tuner.spec, tuner.configs, named)


def default_config(name: str, named: dict) -> triton.Config:
    """The config kernel ``name`` runs without benchmarking (under the interpreter, with
    ``TEXTVISION_AUTOTUNE=0``): the first of its sweep that the prune filter keeps."""
    return eligible_configs(name, named)[0]


@contextlib.contextmanager
def forced_config(name: str, config: triton.Config) -> Iterator[None]:
    """Run kernel ``name`` with ``config`` (one of its sweep) inside the block, bypassing the
    benchmark; the autotuner's cache is cleared on entry and exit."""
    tuner = AUTOTUNED[name]
    if not any(config_name(c) == config_name(config) for c in tuner.configs):
        raise ValueError(f"{config_name(config)} is not a config of {name}")
    tuner.cache.clear()
    _FORCED[name] = config
    try:
        yield
    finally:
        del _FORCED[name]
        tuner.cache.clear()


def launched_config(name: str) -> triton.Config:
    """The config of kernel ``name``'s latest launch."""
    return AUTOTUNED[name].best_config


# ---------------------------------------------------------------------------------------------
# jit helpers


@triton.jit
def split_pid(n: int, BLOCK: tl.constexpr):
    """``(pid_bh, tile)`` of a one-dimensional grid over ``B·H × cdiv(n, BLOCK)`` tiles."""
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(n, BLOCK)
    return pid // n_tiles, pid % n_tiles


@triton.jit
def _row_col_mask(row_mask, offs_d, HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr):
    if EVEN_D:
        mask = row_mask[:, None]
    else:
        mask = row_mask[:, None] & (offs_d[None, :] < HEAD_DIM)
    return mask


@triton.jit
def load_rows(base, offs_rows, stride_row, offs_d, row_mask, HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr,
              UPCAST: tl.constexpr):
    """Load a ``(rows, BLOCK_D)`` tile; masked rows and padded columns read as 0."""
    mask = _row_col_mask(row_mask, offs_d, HEAD_DIM, EVEN_D)
    x = tl.load(base + offs_rows[:, None] * stride_row + offs_d[None, :], mask=mask, other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _round_to_bfloat16(x):
    """Round float32 ``x`` to the nearest bfloat16 value, ties to even, staying float32: the
    interpreter converts float32 to bfloat16 by truncation (the GPU rounds to nearest), so
    interpreted bfloat16 outputs are rounded here first and their conversion becomes exact."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def store_rows(base, offs_rows, stride_row, offs_d, x, row_mask, HEAD_DIM: tl.constexpr,
               EVEN_D: tl.constexpr, UPCAST: tl.constexpr):
    """Store a ``(rows, BLOCK_D)`` tile, converted to the buffer's dtype, skipping padded columns
    (``UPCAST``: interpreted bfloat16, rounded to nearest first)."""
    mask = _row_col_mask(row_mask, offs_d, HEAD_DIM, EVEN_D)
    if UPCAST:
        x = _round_to_bfloat16(x.to(tl.float32))
    tl.store(base + offs_rows[:, None] * stride_row + offs_d[None, :], x.to(base.dtype.element_ty), mask=mask)


@triton.jit
def key_validity(MASK, b, offs, n, stride_mb, HAS_MASK: tl.constexpr):
    """True where ``offs < n`` and, with a mask, where the text token is real."""
    valid = offs < n
    if HAS_MASK:
        real = tl.load(MASK + b * stride_mb + offs, mask=valid, other=0)
        valid = valid & (real != 0)
    return valid
