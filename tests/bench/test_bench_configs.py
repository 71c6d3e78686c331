"""Every YAML in configs/bench/ parses through the real CLI, alone and under each ablation overlay."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BENCH_CONFIGS = sorted((CONFIGS / "bench").glob("*.yaml"))
OVERLAYS = sorted((CONFIGS / "ablation").glob("*.yaml"))


def test_bench_configs_exist():
    assert "smoke.yaml" in {p.name for p in BENCH_CONFIGS}


@pytest.mark.parametrize("path", BENCH_CONFIGS, ids=lambda p: p.name)
def test_bench_config_parses(path, print_config):
    config = print_config(path)
    encoder = config["model"]["vlm"]["init_args"]["encoder"]["init_args"]
    assert encoder["prune_at"], "bench configs set a token budget the runners vary"
    assert config["data"]["init_args"]["test_size"] % 2 == 0


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.stem)
def test_smoke_config_takes_every_ablation_overlay(overlay, print_config):
    config = print_config(CONFIGS / "bench" / "smoke.yaml", overlay)
    expected = yaml.safe_load(overlay.read_text())["model"]["vlm"]["init_args"]["encoder"]["init_args"]
    encoder = config["model"]["vlm"]["init_args"]["encoder"]["init_args"]
    assert {k: encoder[k] for k in expected} == expected
    # the smoke sizes survive the overlay: the backbone is still the smoke pretraining's ViT
    assert encoder["backbone"]["init_args"]["pretraining"] == "configs/pretrain/smoke.yaml"
