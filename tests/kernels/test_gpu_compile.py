"""The Triton kernels compile for an H100/H200 (sm_90) without spills — checked without a GPU
through Triton's ahead-of-time pipeline on the launchers' real arguments (the interpreter tests
cannot catch compile errors, shared-memory overflows or register spills)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

KERNELS = {"_attention_fwd_kernel", "_cross_fwd_relevance_kernel", "_head_mean_kernel", "_relevance_kernel",
           "_dq_kernel", "_dkdv_kernel", "_delta_kernel", "_cross_bwd_short_kernel"}


def test_default_configs_compile_for_sm90_without_spills(tmp_path):
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    result = subprocess.run(
        [sys.executable, "-m", "textvision.bench.perf.kernels_compile_check", "--combo", "bf16:64:77",
         "--combo", "fp16:128:200", "--defaults-only", "--jobs", "2", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "kernels_compile_check.json").read_text())
    rows = report["rows"]
    assert {row["kernel"] for row in rows} == KERNELS
    assert report["failures"] == 0
    assert all(row["default"] and row["kept"] for row in rows)
    for row in rows:
        assert "error" not in row, row
        # ptxas reported on every kernel: registers within the 255 cap, no spill, smem fits.
        assert row["registers"] is not None and row["registers"] <= 255, row
        assert not row["spills"] and (row["spill_stores"] or 0) == 0, row
        assert row["shared_bytes"] <= report["max_shared_bytes"], row
    # The padded head dim and the streamed text took their own specialisations.
    assert {(row["head_dim"], row["n_text"]) for row in rows} == {(64, 77), (128, 200)}
    assert (tmp_path / "kernels_compile_check.md").read_text().startswith("# Kernel compile check")
