"""The Triton paths added for speed, each against the float64 reference under the interpreter:
output layout, LSE only when needed, padded head dims, long text at default tiles, every tile
size of the autotune sweep, the one-dimensional grid, bucketed autotune keys, the prune filter
and the fused-relevance decision."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch

from textvision.kernels import cross_attention, mutual_attention, output_buffers, triton_common
from textvision.kernels.cross_attention import fused_relevance_programs_per_sm, fused_relevance_wins
from textvision.kernels.triton_common import (
    AUTOTUNED,
    config_name,
    eligible_configs,
    forced_config,
    known_spills,
    spill_key,
)

cross_module = importlib.import_module("textvision.kernels.cross_attention")


def _mask(B, T, g):
    """Different real lengths at random positions; the last sample is all padding."""
    mask = torch.rand(B, T, generator=g) < 0.6
    mask[0, 0] = True
    mask[-1] = False
    return mask


def _views(B, H, n, D, g, dtype=torch.float32):
    """(B, n, H, D) storage viewed as (B, H, n, D): the layout a fusion module's projection gives."""
    return torch.randn(B, n, H, D, generator=g).to(dtype).transpose(1, 2)


def _cross(q, k, v, mask, backend, upstream, *, dtype=None, relevance=True):
    """Forward + backward in `dtype`; (o, rel, dq, dk, dv) as float64."""
    leaves = [x.detach().to(dtype or x.dtype).requires_grad_() for x in (q, k, v)]
    o, rel = cross_attention(*leaves, mask, return_relevance=relevance, backend=backend)
    o.backward(upstream.to(o.dtype))
    outs = [o.detach().double()] + ([rel.double()] if relevance else [])
    return outs + [x.grad.double() for x in leaves]


def _close(got, ref, *, rtol=1e-5, atol=2e-5):
    for i, (a, r) in enumerate(zip(got, ref, strict=True)):
        assert torch.isfinite(a).all(), i
        torch.testing.assert_close(a, r, rtol=rtol, atol=atol, msg=lambda m, i=i: f"output {i}: {m}")


def _rel_fro(a, r):
    return ((a - r).norm() / r.norm().clamp_min(1e-12)).item()


# ---------------------------------------------------------------------------------------------
# Layout: outputs and gradients in the inputs' stride order


def test_outputs_and_gradients_follow_the_input_stride_order():
    g = torch.Generator().manual_seed(0)
    B, H, N, T, D = 2, 3, 21, 7, 32
    q, k, v = (_views(B, H, n, D, g).requires_grad_() for n in (N, T, T))
    mask = _mask(B, T, g)
    o, _ = cross_attention(q, k, v, mask, return_relevance=True, backend="triton")
    # o is a dense (B, N, H, D) buffer seen as (B, H, N, D): the fusion reshape is a view.
    assert o.stride() == q.stride()
    flat = o.transpose(1, 2).reshape(B * N, H * D)
    assert flat.data_ptr() == o.data_ptr() and flat._base is not None
    o.backward(torch.randn(B, N, H, D, generator=g).transpose(1, 2))
    assert q.grad.stride() == q.stride() and k.grad.stride() == k.stride() and v.grad.stride() == v.stride()
    # Contiguous inputs keep contiguous outputs.
    qc, kc, vc = (x.detach().contiguous() for x in (q, k, v))
    assert cross_attention(qc, kc, vc, mask, backend="triton").o.is_contiguous()
    # Same numbers either way.
    torch.testing.assert_close(cross_attention(qc, kc, vc, mask, backend="triton").o, o.detach())


def test_mutual_outputs_follow_the_stride_order_of_non_dense_qkv_views():
    g = torch.Generator().manual_seed(1)
    B, H, N, T, D = 2, 2, 13, 5, 16
    # q, k, v as unbind(0) of a (3, B, H, L, D) permute of (B, L, 3, H, D): not dense.
    img = torch.randn(B, N, 3, H, D, generator=g).permute(2, 0, 3, 1, 4).unbind(0)
    txt = torch.randn(B, T, 3, H, D, generator=g).permute(2, 0, 3, 1, 4).unbind(0)
    mask = _mask(B, T, g)
    o_img, o_txt, rel = mutual_attention(*img, *txt, mask, return_relevance=True, backend="triton")
    for o in (o_img, o_txt):
        flat = o.transpose(1, 2).reshape(B, -1, H * D)
        assert flat.data_ptr() == o.data_ptr() and flat._base is not None  # a view, no copy
    as64 = [x.double() for x in (*img, *txt)]
    expected = mutual_attention(*as64, mask, return_relevance=True, backend="torch")
    for a, r in zip((o_img, o_txt, rel), expected, strict=True):
        torch.testing.assert_close(a.double(), r.double(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# LSE only when a gradient needs it


def _record_allocations(monkeypatch):
    shapes = []
    original = output_buffers.empty_strided

    def recording(shape, stride, *, dtype, device):
        shapes.append((tuple(shape), dtype))
        return original(shape, stride, dtype=dtype, device=device)

    monkeypatch.setattr(output_buffers, "empty_strided", recording)
    return shapes


@pytest.mark.parametrize("fused", [True, False])
def test_lse_is_neither_allocated_nor_written_without_a_gradient(monkeypatch, fused):
    monkeypatch.setattr(cross_module, "FUSED_RELEVANCE", fused)
    g = torch.Generator().manual_seed(2)
    B, H, N, T, D = 2, 2, 40, 6, 16
    q, k, v = (_views(B, H, n, D, g) for n in (N, T, T))
    mask = _mask(B, T, g)
    shapes = _record_allocations(monkeypatch)
    per_row = ((B, H, N), torch.float32)  # the LSE, and the relevance's per-head partials
    with torch.no_grad():
        o_nograd, rel_nograd = cross_attention(q, k, v, mask, return_relevance=True, backend="triton")
    without = shapes.count(per_row)
    shapes.clear()
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    o_grad, rel_grad = cross_attention(*leaves, mask, return_relevance=True, backend="triton")
    assert shapes.count(per_row) == without + 1  # + the LSE
    assert torch.equal(o_nograd, o_grad.detach()) and torch.equal(rel_nograd, rel_grad)
    # Inputs that need no gradient: no LSE either, even with grad mode on.
    shapes.clear()
    cross_attention(q, k, v, mask, backend="triton")
    assert per_row not in shapes


def test_mutual_writes_only_the_text_lse_for_relevance_without_a_gradient(monkeypatch):
    g = torch.Generator().manual_seed(3)
    B, H, N, T, D = 2, 2, 19, 7, 16
    xs = [_views(B, H, n, D, g) for n in (N, N, N, T, T, T)]
    mask = _mask(B, T, g)
    shapes = _record_allocations(monkeypatch)
    with torch.no_grad():
        o_img, o_txt, rel = mutual_attention(*xs, mask, return_relevance=True, backend="triton")
    # (B, H, N) float32: the relevance's per-head partials only, no image-query LSE.
    assert shapes.count(((B, H, N), torch.float32)) == 1
    assert ((B, H, T), torch.float32) in shapes  # text-query LSE: the relevance needs it
    expected = mutual_attention(*(x.double() for x in xs), mask, return_relevance=True, backend="torch")
    _close([o_img, o_txt, rel], [e.to(torch.float32) for e in expected])


# ---------------------------------------------------------------------------------------------
# Head dims padded to a power of two; long text at the default tiles; D = 128


@pytest.mark.parametrize("D,dtype", [(72, torch.float32), (80, torch.float16), (8, torch.float32),
                                     (128, torch.float16)])
def test_cross_attention_runs_any_head_dim_up_to_128(D, dtype):
    g = torch.Generator().manual_seed(D)
    B, H, N, T = 2, 2, 37, 9
    q, k, v = (_views(B, H, n, D, g) for n in (N, T, T))
    mask = _mask(B, T, g)
    upstream = torch.randn(B, H, N, D, generator=g)
    got = _cross(q, k, v, mask, "triton", upstream, dtype=dtype)
    ref = _cross(q, k, v, mask, "torch", upstream, dtype=torch.float64)
    if dtype == torch.float32:
        _close(got, ref)
    else:
        for name, a, r in zip(("o", "rel", "dq", "dk", "dv"), got, ref, strict=True):
            assert torch.isfinite(a).all() and _rel_fro(a, r) < 3e-3, name


def test_mutual_attention_runs_head_dim_80_with_gradients():
    g = torch.Generator().manual_seed(80)
    B, H, N, T, D = 2, 2, 23, 6, 80
    xs = [_views(B, H, n, D, g) for n in (N, N, N, T, T, T)]
    mask = _mask(B, T, g)
    up = (torch.randn(B, H, N, D, generator=g), torch.randn(B, H, T, D, generator=g))
    results = []
    for backend, dtype in (("triton", torch.float32), ("torch", torch.float64)):
        leaves = [x.detach().to(dtype).requires_grad_() for x in xs]
        o_img, o_txt, rel = mutual_attention(*leaves, mask, return_relevance=True, backend=backend)
        torch.autograd.backward([o_img, o_txt], [u.to(dtype) for u in up])
        results.append([o_img.detach().double(), o_txt.detach().double(), rel.double()]
                       + [x.grad.double() for x in leaves])
    _close(*results)


@pytest.mark.parametrize("D,dtype", [(64, torch.float32), (128, torch.float16)])
def test_long_text_streams_at_the_default_tiles(D, dtype):
    """T = 200 is longer than the largest text tile (128, or 64 at D = 128): streamed text keys,
    the two-pass relevance and streamed text queries in the backward."""
    g = torch.Generator().manual_seed(200 + D)
    B, H, N, T = 2, 1, 33, 200
    q, k, v = (_views(B, H, n, D, g) for n in (N, T, T))
    mask = _mask(B, T, g)
    upstream = torch.randn(B, H, N, D, generator=g)
    got = _cross(q, k, v, mask, "triton", upstream, dtype=dtype)
    ref = _cross(q, k, v, mask, "torch", upstream, dtype=torch.float64)
    if dtype == torch.float32:
        _close(got, ref)
    else:
        for name, a, r in zip(("o", "rel", "dq", "dk", "dv"), got, ref, strict=True):
            assert torch.isfinite(a).all() and _rel_fro(a, r) < 3e-3, name


# ---------------------------------------------------------------------------------------------
# Every tile size of the autotune sweep, forced


def _tile_configs(name):
    """One config per distinct tile size of kernel `name`'s sweep (warps and stages do not
    change the interpreter's arithmetic)."""
    tuner = AUTOTUNED[name]
    seen = {}
    for config in tuner.configs:
        seen.setdefault(config.kwargs[tuner.spec.tile], config)
    return list(seen.values())


@pytest.mark.parametrize("name,short", [("attention_fwd", None), ("attention_dq", False),
                                        ("attention_dkdv", False), ("cross_bwd_short", True)])
def test_every_tile_size_of_the_cross_attention_sweep(monkeypatch, name, short):
    monkeypatch.setattr(cross_module, "SHORT_TEXT_BACKWARD", short)
    g = torch.Generator().manual_seed(4)
    B, H, N, T, D = 2, 2, 150, 20, 32
    q, k, v = (_views(B, H, n, D, g) for n in (N, T, T))
    mask = _mask(B, T, g)
    upstream = torch.randn(B, H, N, D, generator=g)
    ref = _cross(q, k, v, mask, "torch", upstream, dtype=torch.float64, relevance=False)
    for config in _tile_configs(name):
        with forced_config(name, config):
            got = _cross(q, k, v, mask, "triton", upstream, relevance=False)
            assert config_name(AUTOTUNED[name].best_config) == config_name(config)
        _close(got, ref)


@pytest.mark.parametrize("name,fused", [("cross_fwd_relevance", True), ("relevance", False),
                                        ("attention_fwd", False)])
def test_every_tile_size_of_the_relevance_sweeps(monkeypatch, name, fused):
    monkeypatch.setattr(cross_module, "FUSED_RELEVANCE", fused)
    g = torch.Generator().manual_seed(5)
    B, H, N, T, D = 2, 3, 140, 11, 16
    q, k, v = (_views(B, H, n, D, g) for n in (N, T, T))
    mask = _mask(B, T, g)
    q64, k64, v64 = (x.double() for x in (q, k, v))
    expected = cross_attention(q64, k64, v64, mask, return_relevance=True, backend="torch")
    for config in _tile_configs(name):
        with forced_config(name, config):
            o, rel = cross_attention(q, k, v, mask, return_relevance=True, backend="triton")
        _close([o, rel], [expected.o.float(), expected.rel])


def test_every_tile_size_of_the_mutual_sweeps():
    g = torch.Generator().manual_seed(6)
    B, H, N, T, D = 2, 1, 70, 9, 16
    xs = [_views(B, H, n, D, g) for n in (N, N, N, T, T, T)]
    mask = _mask(B, T, g)
    expected = mutual_attention(*(x.double() for x in xs), mask, return_relevance=True, backend="torch")
    for name in ("attention_fwd", "relevance"):
        for config in _tile_configs(name):
            with forced_config(name, config):
                got = mutual_attention(*xs, mask, return_relevance=True, backend="triton")
            _close(list(got), [e.float() for e in expected])


def test_forced_config_must_be_one_of_the_sweep():
    import triton

    with pytest.raises(ValueError, match="not a config of attention_fwd"):
        with forced_config("attention_fwd", triton.Config({"BLOCK_M": 48}, num_warps=4, num_stages=1)):
            pass


def test_interpreted_bfloat16_outputs_are_rounded_to_nearest():
    """The interpreter truncates float32 -> bfloat16; the kernels round first, as the GPU does."""
    g = torch.Generator().manual_seed(11)
    B, H, N, T, D = 2, 2, 40, 7, 32
    q, k, v = (torch.randn(B, H, n, D, generator=g).to(torch.bfloat16) for n in (N, T, T))
    mask = _mask(B, T, g)
    o = cross_attention(q, k, v, mask, backend="triton").o
    # The same math in float32 (inputs are exact bf16 values), rounded to nearest by PyTorch.
    expected = cross_attention(q.float(), k.float(), v.float(), mask, backend="torch").o.to(torch.bfloat16)
    same = (o == expected).double().mean().item()
    assert same > 0.98, same  # truncation agrees on about half the elements only
    ulp = (expected.float().abs() * 2.0**-7).clamp_min(2.0**-133)
    assert ((o.float() - expected.float()).abs() <= ulp).all()


def test_reruns_are_bitwise_identical():
    g = torch.Generator().manual_seed(7)
    B, H, N, T, D = 2, 2, 70, 13, 32
    q, k, v = (_views(B, H, n, D, g, torch.float16) for n in (N, T, T))
    mask = _mask(B, T, g)
    upstream = torch.randn(B, H, N, D, generator=g)
    first = _cross(q, k, v, mask, "triton", upstream)
    second = _cross(q, k, v, mask, "triton", upstream)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype,D", [(torch.float32, 32), (torch.float16, 64), (torch.float32, 80)])
def test_one_launch_and_three_launch_backward_agree_with_float64(monkeypatch, dtype, D):
    """Short text: the one-launch backward (delta in registers, dk/dv accumulated over the image
    tiles) and the delta / dq / dk-dv launches, on the same inputs, with an all-padding sample
    and several image tiles."""
    g = torch.Generator().manual_seed(12 + D)
    B, H, N, T = 3, 2, 150, 19
    q, k, v = (_views(B, H, n, D, g) for n in (N, T, T))
    mask = _mask(B, T, g)
    upstream = torch.randn(B, H, N, D, generator=g)
    ref = _cross(q, k, v, mask, "torch", upstream, dtype=torch.float64, relevance=False)
    results = []
    for short in (True, False):
        monkeypatch.setattr(cross_module, "SHORT_TEXT_BACKWARD", short)
        results.append(_cross(q, k, v, mask, "triton", upstream, dtype=dtype, relevance=False))
    for got in results:
        if dtype == torch.float32:
            _close(got, ref)
        else:
            for name, a, r in zip(("o", "dq", "dk", "dv"), got, ref, strict=True):
                assert torch.isfinite(a).all() and _rel_fro(a, r) < 2e-3, name
        _, dq, dk, dv = got
        padded = ~mask[:, None, :, None].expand_as(dk)
        assert (dk[padded] == 0).all() and (dv[padded] == 0).all()
        assert (dq[~mask.any(-1)] == 0).all()
    # Same arithmetic per element up to accumulation order.
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-3 if dtype == torch.float16 else 1e-5, atol=1e-5)


def test_the_backward_takes_one_launch_for_short_text_and_three_for_long():
    from textvision.bench.perf.kernels_compile_check import record_launches

    def backward_kernels(T):
        launches = record_launches(torch.float16, 64, T, batch=2, heads=2, n_img=40)
        return {name for scenario, name, *_ in launches if scenario == "cross fwd+bwd"} - {"attention_fwd"}

    assert backward_kernels(77) == {"cross_bwd_short"}
    assert backward_kernels(200) == {"delta", "attention_dq", "attention_dkdv"}


# ---------------------------------------------------------------------------------------------
# Grid: one axis, so B·H > 65,535 launches


def test_every_launch_uses_a_one_dimensional_grid_that_fits_cuda_for_large_batch_heads():
    from textvision.bench.perf.kernels_compile_check import record_launches

    B, H = 5834, 12  # B·H = 70,008 > 65,535, the limit of CUDA grid axes 1 and 2
    launches = record_launches(torch.float16, 16, 2, batch=B, heads=H, n_img=1)
    assert {name for _, name, *_ in launches} >= {
        "attention_fwd", "cross_fwd_relevance", "relevance", "head_mean", "delta", "attention_dq",
        "attention_dkdv", "cross_bwd_short"}
    for scenario, name, _args, _kwargs, grid in launches:
        assert len(grid) == 1, (scenario, name, grid)
        assert B <= grid[0] < 2**31, (scenario, name, grid)
        if name != "head_mean":
            assert grid[0] >= B * H


def test_the_one_dimensional_grid_maps_programs_to_heads_and_tiles():
    """Many (b, h) pairs × several query tiles per pair: any mix-up of the pid split shows."""
    g = torch.Generator().manual_seed(8)
    B, H, N, T, D = 3, 5, 70, 4, 16
    q, k, v = (torch.randn(B, H, n, D, generator=g) for n in (N, T, T))
    mask = _mask(B, T, g)
    upstream = torch.randn(B, H, N, D, generator=g)
    _close(_cross(q, k, v, mask, "triton", upstream),
           _cross(q, k, v, mask, "torch", upstream, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# Autotune keys, prune filter, fused-relevance decision


def test_autotune_keys_are_bucketed():
    tuner = AUTOTUNED["attention_fwd"]
    tuner.cache.clear()
    g = torch.Generator().manual_seed(9)
    for N, T in ((150, 20), (180, 30), (200, 17)):  # one bucket: N -> 256, T -> 32
        q, k, v = (torch.randn(1, 1, n, 16, generator=g) for n in (N, T, T))
        cross_attention(q, k, v, backend="triton")
    assert len(tuner.cache) == 1
    q, k, v = (torch.randn(1, 1, n, 16, generator=g) for n in (150, 40, 40))  # T bucket 64
    cross_attention(q, k, v, backend="triton")
    assert len(tuner.cache) == 2


def _fwd_args(dtype, D, T, N, *, image_keys=False, column_stats=False):
    block_d = triton_common.head_block(D)
    return {"Q": torch.empty(0, dtype=dtype), "BLOCK_D": block_d,
            "BLOCK_T": triton_common.text_block(T, dtype, D),
            "BLOCK_N": triton_common.image_block(dtype, D), "HAS_IMAGE_KEYS": image_keys,
            "COLUMN_STATS": column_stats, "N_Q_BUCKET": triton_common.size_bucket(N),
            "T_BUCKET": triton_common.size_bucket(T)}


def test_prune_filter_keeps_configs_that_suit_the_shape():
    kept = eligible_configs("attention_fwd", _fwd_args(torch.bfloat16, 64, 32, 197))
    assert kept, "at least one config"
    for config in kept:
        # One text tile, no image keys: nothing to pipeline.
        assert config.num_stages == 1
    streamed = eligible_configs("attention_fwd", _fwd_args(torch.bfloat16, 64, 32, 197, image_keys=True))
    assert any(c.num_stages > 1 for c in streamed)
    # Eight text queries: no 128-row tile.
    short = eligible_configs("attention_fwd", _fwd_args(torch.bfloat16, 64, 32, 8))
    assert all(c.kwargs["BLOCK_M"] <= 32 for c in short)
    # Wider tiles cost registers: the largest score tile keeps fewer configs than the smallest.
    big = eligible_configs("attention_fwd", _fwd_args(torch.float32, 128, 64, 577, column_stats=True))
    small = eligible_configs("attention_fwd", _fwd_args(torch.bfloat16, 64, 16, 577))
    assert len(big) < len(small)


def test_prune_filter_drops_the_configs_of_the_known_spills_table(monkeypatch):
    args = _fwd_args(torch.bfloat16, 64, 32, 197) | {
        "QUERY_IS_TEXT": False, "HAS_MASK": True, "STORE_LSE": False, "PRECISION": "tf32", "UPCAST": False,
        "EVEN_D": True}
    kept = eligible_configs("attention_fwd", args)
    spilled = kept[0]
    key = spill_key("attention_fwd", args, spilled)
    # The key names the kernel, the element size, the code-shaping constexprs and the config.
    assert key.startswith("attention_fwd|16bit|") and "BLOCK_T=32,COLUMN_STATS=0,EVEN_D=1" in key
    assert key.endswith(config_name(spilled))
    monkeypatch.setattr(triton_common, "known_spills", lambda: frozenset({key}))
    now = eligible_configs("attention_fwd", args)
    assert config_name(spilled) not in {config_name(c) for c in now}
    assert len(now) == len(kept) - 1
    # The shipped table is readable and names real kernels and configs.
    monkeypatch.undo()
    table = known_spills()
    assert table and all(entry.split("|")[0] in AUTOTUNED for entry in table)


def test_the_interpreter_runs_the_default_config_and_forcing_overrides_it():
    tuner = AUTOTUNED["attention_fwd"]
    tuner.cache.clear()
    g = torch.Generator().manual_seed(10)
    q, k, v = (torch.randn(1, 2, n, 32, generator=g) for n in (50, 7, 7))
    cross_attention(q, k, v, backend="triton")
    default = eligible_configs("attention_fwd", _fwd_args(torch.float32, 32, 7, 50))[0]
    assert config_name(tuner.best_config) == config_name(default)
    other = next(c for c in tuner.configs if c.kwargs["BLOCK_M"] != default.kwargs["BLOCK_M"])
    with forced_config("attention_fwd", other):
        cross_attention(q, k, v, backend="triton")
        assert config_name(tuner.best_config) == config_name(other)


H100 = SimpleNamespace(multi_processor_count=132, regs_per_multiprocessor=65536,
                       max_threads_per_multi_processor=2048, shared_memory_per_multiprocessor=233472)


def test_fused_relevance_threshold_comes_from_occupancy():
    kw = {"regs_per_sm": 65536, "max_threads_per_sm": 2048, "smem_per_sm": 233472}
    short = fused_relevance_programs_per_sm(torch.bfloat16, 64, 16, 197, **kw)
    long = fused_relevance_programs_per_sm(torch.bfloat16, 64, 128, 197, **kw)
    assert short > long >= 1  # bigger score tiles, more registers, fewer resident programs
    # Half the register file halves the occupancy (within rounding), so the threshold moves.
    halved = fused_relevance_programs_per_sm(torch.bfloat16, 64, 16, 197, **{**kw, "regs_per_sm": 32768})
    assert halved < short
    # The decision: B·H must fill every SM at that occupancy.
    assert not fused_relevance_wins(132 * short - 1, 197, 16, torch.bfloat16, 64, H100)
    assert fused_relevance_wins(132 * short, 197, 16, torch.bfloat16, 64, H100)
    half = SimpleNamespace(**{**vars(H100), "multi_processor_count": 66})
    assert fused_relevance_wins(66 * short, 197, 16, torch.bfloat16, 64, half)


def test_fused_relevance_decision_on_cuda_tensors(monkeypatch):
    """The CUDA branch of the decision, with the device properties faked."""
    monkeypatch.setattr(cross_module, "FUSED_RELEVANCE", None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: H100)
    fake = SimpleNamespace(shape=(64, 12, 197, 64), dtype=torch.bfloat16, device=torch.device("cuda", 0))
    per_sm = fused_relevance_programs_per_sm(torch.bfloat16, 64, 32, 197, regs_per_sm=65536,
                                             max_threads_per_sm=2048, smem_per_sm=233472)
    assert cross_module._fused_relevance(fake, 32) == (64 * 12 >= 132 * per_sm)
    small = SimpleNamespace(**{**vars(fake), "shape": (1, 12, 197, 64)})
    assert not cross_module._fused_relevance(small, 32)
    assert not cross_module._fused_relevance(fake, 300)  # text longer than one tile: two-pass


def test_gated_xattn_feeds_the_kernel_output_to_its_projection_without_a_copy(monkeypatch):
    """The fusion module's (B, H, N, D) -> (B·N, H·D) reshape of the Triton output is a view: the
    output projection's GEMM reads the kernel's buffer itself."""
    from textvision.fusion import gated_xattn

    module = gated_xattn.GatedCrossAttention(dim=32, num_heads=2, backend="triton")
    with torch.no_grad():
        module.gate.fill_(0.5)
    seen = {}
    real_kernel, real_addmm = gated_xattn.cross_attention, torch.addmm

    def kernel(*args, **kwargs):
        result = real_kernel(*args, **kwargs)
        seen["o"] = result.o.data_ptr()
        return result

    def addmm(bias, mat1, mat2, **kwargs):
        seen["mat1"] = mat1.data_ptr()
        return real_addmm(bias, mat1, mat2, **kwargs)

    monkeypatch.setattr(gated_xattn, "cross_attention", kernel)
    monkeypatch.setattr(torch, "addmm", addmm)
    g = torch.Generator().manual_seed(13)
    x, text = torch.randn(2, 9, 32, generator=g), torch.randn(2, 5, 32, generator=g)
    mask = torch.tensor([[True, True, False, True, False], [False] * 5])
    out = module(x, text, mask, block=SimpleNamespace(attention=lambda t: t))
    assert seen["mat1"] == seen["o"]
    monkeypatch.undo()
    module.backend = "torch"
    expected = module(x, text, mask, block=SimpleNamespace(attention=lambda t: t))
    torch.testing.assert_close(out.x, expected.x, rtol=1e-5, atol=1e-5)
