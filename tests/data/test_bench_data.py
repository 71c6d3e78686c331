"""The data benchmark: runs end to end on a tiny setting, writes its files; the patch probe learns."""

import json

from textvision.bench.perf.data import main, patch_probe, time_generation
from textvision.data.magnifier import MagnifierGenerator
from textvision.data.scene import SceneConfig


def test_bench_writes_results(tmp_path):
    report = main(["--out", str(tmp_path), "--batch-size", "8", "--repeats", "2", "--probe-steps", "0"])
    data = json.loads((tmp_path / "data.json").read_text())
    assert data["batch_size"] == 8 and set(report["results"]) == set(data["results"])
    assert {row["set"] for row in data["results"].values()} == {"magnifier", "mmvp_pairs"}
    assert all(row["median_s"] > 0 for row in data["results"].values())
    assert data["patch_probe"] is None
    assert "| magnifier |" in (tmp_path / "data.md").read_text()
    assert (tmp_path / "data_examples.png").stat().st_size > 10_000


def test_time_generation():
    row = time_generation(MagnifierGenerator(), batch_size=4, repeats=3)
    assert row["repeats"] == 3 and 0 < row["min_s"] <= row["median_s"]


def test_patch_probe_reads_colour_from_one_patch():
    result = patch_probe(SceneConfig(), train_images=150, test_images=40, steps=80)
    accuracy = result["accuracy"]
    assert set(accuracy) == {"shape", "colour", "orientation"}
    assert accuracy["colour"] > 0.6  # chance 1/6
    assert accuracy["shape"] > 2 / 13  # chance 1/13
