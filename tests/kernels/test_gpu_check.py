"""``python -m textvision.bench.perf.gpu_check --dry-run``: every section of the GPU check runs on the
CPU under the interpreter at tiny shapes, passes, and writes its JSON and markdown."""

from __future__ import annotations

import json

from textvision.bench.perf import gpu_check
from textvision.kernels.triton_common import AUTOTUNED


def test_gpu_check_dry_run_passes_and_writes_json_and_markdown(tmp_path):
    report = gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    assert report["ok"] and report["dry_run"] and not report.get("errors")
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["ok"] and len(saved["correctness"]) == len(gpu_check.correctness_cases(True))
    cases = saved["correctness"]
    # Every dtype, head dim and text length of the GPU run, both kernels, both relevance paths.
    assert {c["dtype"] for c in cases} == {"fp16", "bf16"} and {c["head_dim"] for c in cases} == {64, 128}
    assert {c["n_text"] for c in cases} == {1, 32, 77, 200} and {c["kernel"] for c in cases} == {
        "cross",
        "mutual",
    }
    paths = {x.get("path") for c in cases for x in c["checks"]}
    assert {"fused", "two_pass"} <= paths
    assert all(any(x["name"] == "bitwise rerun" and x["ok"] for x in c["checks"]) for c in cases)
    # Each autotuned kernel was forced to each of its tile sizes.
    forced = {(r["kernel"], r["config"].split(",")[0]) for r in saved["forced_configs"]}
    assert len(forced) == len(AUTOTUNED) * 3 and all(r["ok"] for r in saved["forced_configs"])
    assert saved["large_grid"]["ok"]
    impls = {(r["mode"], r["impl"]) for r in saved["bench"]}
    assert {
        ("fwd", "ours"),
        ("fwd", "sdpa_mask"),
        ("fwd", "eager"),
        ("fwd+bwd", "ours"),
        ("fwd+relevance", "ours fused"),
        ("fwd+relevance", "ours two-pass"),
        ("fwd+bwd", "ours (3-launch bwd)"),
    } <= impls
    assert all(r.get("ms") for r in saved["bench"] if r["impl"] == "ours")
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "GPU numbers were not measured" in markdown and "## Correctness (against float64)" in markdown
