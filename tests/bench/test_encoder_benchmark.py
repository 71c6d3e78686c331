"""``python -m textvision.bench.perf.encoder`` at toy sizes: the configurations follow the
registry and the demo config, and every one is timed and tabled."""

from __future__ import annotations

import json

from textvision.bench.perf.encoder import main
from textvision.fusion import FUSIONS
from textvision.train.cli import parse_config

from .conftest import REPO


def test_encoder_benchmark_times_the_demo_fusion_and_every_text_attending_variant(tmp_path):
    out = tmp_path / "encoder"
    result = main(
        ["--batch", "2", "--image-size", "32", "--text-tokens", "4", "--repeats", "1", "--warmup", "0",
         "--model", "vit_tiny_patch16_224", "--backend", "torch", "--prune-at", "3", "4", "--out", str(out)]
    )  # fmt: skip
    demo, _ = parse_config(["-c", str(REPO / "configs" / "demo.yaml")])
    headline = demo["model.vlm.init_args.encoder.init_args.fusion"]
    assert result["fusion"] == headline
    assert set(result["compared_fusions"]) == {n for n, c in FUSIONS.items() if c.attends_to_text} - {
        headline
    }
    expected = {"plain", headline, f"{headline}_pruned_at3", f"{headline}_pruned_at4"}
    expected |= {f"{n}{suffix}" for n in result["compared_fusions"] for suffix in ("", "_pruned_at3")}
    assert expected <= set(result["ms_per_image"]) and all(v > 0 for v in result["ms_per_image"].values())
    assert result["pruning"]["kept_patches"] == 1  # 25% of 4 patches
    assert json.loads(out.with_suffix(".json").read_text())["fusion"] == headline
    table = out.with_suffix(".md").read_text()
    assert table.count("| `") == len(result["ms_per_image"]) - 1  # one row per configuration
