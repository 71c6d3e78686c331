"""Every YAML in configs/ parses through the real CLI (``--print_config``: no model is built, so the
7B recipes are checked without their weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from textvision.train.cli import cli_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p for p in CONFIGS.glob("*.yaml"))
ABLATIONS = sorted((CONFIGS / "ablation").glob("*.yaml"))


def test_configs_exist():
    names = {p.name for p in RECIPES}
    assert {
        "demo.yaml",
        "llava15_vicuna7b.yaml",
        "llava15_flant5.yaml",
        "qwen25_05b_single_gpu.yaml",
    } <= names
    assert {p.stem for p in ABLATIONS} == {
        "none_textagnostic",
        "none_text_selection",
        "gated_xattn",
        "mutual",
        "film",
    }


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_parses(path, print_config):
    config = print_config(path)
    vlm = config["model"]["vlm"]
    assert vlm["class_path"] == "textvision.vlm.model.TextAwareVLM"
    encoder = vlm["init_args"]["encoder"]
    assert encoder["class_path"] == "textvision.encoder.TextAwareEncoder"
    assert encoder["init_args"]["text_encoder"]["class_path"] == "textvision.text.TextEncoder"
    assert vlm["init_args"]["language_model"]["init_args"]["trust_remote_code"] is False
    assert config["data"]["class_path"].startswith("textvision.train.data_modules.")
    plugins = config["trainer"]["plugins"]
    assert any(p["class_path"].endswith("SafetensorsCheckpointIO") for p in plugins)


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.stem)
def test_ablation_overrides_only_the_fusion(path, print_config):
    base = print_config(CONFIGS / "demo.yaml")
    config = print_config(CONFIGS / "demo.yaml", path)
    encoder = config["model"]["vlm"]["init_args"]["encoder"]["init_args"]
    expected = {"none_textagnostic": "none", "none_text_selection": "none"}.get(path.stem, path.stem)
    assert encoder["fusion"] == expected
    base_encoder = base["model"]["vlm"]["init_args"]["encoder"]["init_args"]
    # same token budget, backbone, text encoder and LM as the demo: only fusion/scorer change
    for key in ("keep_tokens", "prune_at", "backbone", "text_encoder"):
        assert encoder[key] == base_encoder[key]
    assert (
        config["model"]["vlm"]["init_args"]["language_model"]
        == base["model"]["vlm"]["init_args"]["language_model"]
    )


def test_a_typo_in_a_config_is_reported(tmp_path, capsys):
    bad = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    bad["model"]["vlm"]["init_args"]["encoder"]["init_args"]["fusoin"] = "mutual"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "-c", str(path), "--print_config"])
    assert exit_info.value.code != 0
    assert "fusoin" in capsys.readouterr().err
