"""Every YAML in configs/ parses through the real CLI (``--print_config``: no model is built, so the
7B recipes are checked without their weights); fusion and scorer choices are checked at parse time."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from textvision.fusion import FUSIONS
from textvision.pruning import SCORERS
from textvision.train.cli import cli_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p for p in CONFIGS.glob("*.yaml"))
ABLATIONS = sorted((CONFIGS / "ablation").glob("*.yaml"))
ENCODER = ("model", "vlm", "init_args", "encoder", "init_args")


def _encoder(config: dict) -> dict:
    for key in ENCODER:
        config = config[key]
    return config


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict) and tree:
        return {k: v for key, value in tree.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def _demo_with_encoder(tmp_path: Path, **settings) -> Path:
    config = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    _encoder(config).update(settings)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _parse_error(path: Path, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "-c", str(path), "--print_config"])
    assert exit_info.value.code not in (0, None)
    return capsys.readouterr().err


def test_configs_exist():
    names = {p.name for p in RECIPES}
    assert {
        "demo.yaml",
        "llava15_vicuna7b.yaml",
        "llava15_flant5.yaml",
        "qwen25_05b_single_gpu.yaml",
    } <= names
    assert ABLATIONS, "configs/ablation/ holds one overlay per ablated variant"


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
def test_ablation_overrides_only_the_fusion_and_scorer(path, print_config):
    base = print_config(CONFIGS / "demo.yaml")
    config = print_config(CONFIGS / "demo.yaml", path)
    overlay = _encoder(yaml.safe_load(path.read_text()))
    encoder = _encoder(config)
    assert encoder["fusion"] == overlay["fusion"]  # what the overlay says, as the CLI merged it
    assert overlay["fusion"] in FUSIONS or "class_path" in overlay["fusion"]
    # same token budget, backbone, text encoder and LM as the demo: only fusion/scorer (and the
    # run folder) change
    changed = {
        key
        for key, value in _flatten(config).items()
        if _flatten(base).get(key, object()) != value and not key.startswith("trainer.default_root_dir")
    }
    prefix = ".".join(ENCODER)
    assert changed <= {f"{prefix}.fusion", f"{prefix}.scorer"} | {
        k for k in changed if k.startswith((f"{prefix}.fusion.", f"{prefix}.scorer."))
    }, changed


def test_a_typo_in_a_config_is_reported(tmp_path, capsys):
    bad = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    _encoder(bad)["fusoin"] = "mutual"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert "fusoin" in _parse_error(path, capsys)


def test_an_unknown_fusion_name_fails_at_parse_time_naming_the_choices(tmp_path, capsys):
    err = _parse_error(_demo_with_encoder(tmp_path, fusion="typo_xattn"), capsys)
    assert "typo_xattn" in err
    assert all(name in err for name in FUSIONS), err


def test_an_unknown_scorer_name_fails_at_parse_time_naming_the_choices(tmp_path, capsys):
    err = _parse_error(_demo_with_encoder(tmp_path, scorer="typo_norm"), capsys)
    assert "typo_norm" in err
    assert all(name in err for name in SCORERS), err


@pytest.mark.parametrize(
    "fusion",
    [
        {"class_path": "textvision.fusion.no_such_module.Fusion"},  # not importable
        {"class_path": "torch.nn.Linear", "init_args": {"in_features": 2, "out_features": 2}},  # no Fusion
        {"class_path": "textvision.fusion.FiLMFusion", "init_args": {"dim": 8}},  # the encoder's to give
        {"class_path": "textvision.fusion.FiLMFusion", "init_args": {"alpha": 0.5}},  # not its setting
    ],
    ids=["missing", "not_a_fusion", "encoder_supplied_arg", "unknown_init_arg"],
)
def test_a_bad_fusion_class_fails_at_parse_time(tmp_path, capsys, fusion):
    err = _parse_error(_demo_with_encoder(tmp_path, fusion=fusion), capsys)
    assert "fusion" in err


def test_a_fusion_class_path_parses_and_the_encoder_supplies_dim_heads_backend(tmp_path, print_config):
    path = _demo_with_encoder(tmp_path, fusion={"class_path": "textvision.fusion.GatedCrossAttention"})
    encoder = _encoder(print_config(path))
    assert encoder["fusion"]["class_path"].endswith(".GatedCrossAttention")
    assert not {"dim", "num_heads", "backend"} & set(encoder["fusion"].get("init_args") or {})


def test_the_old_text_similarity_form_and_a_scorer_class_path_both_parse(tmp_path, print_config):
    demo = _encoder(print_config(CONFIGS / "demo.yaml"))
    assert demo["scorer"] == "text_similarity"
    assert demo["similarity"]["class_path"] == "textvision.pruning.TextSimilarityScorer"
    unified = _demo_with_encoder(tmp_path, scorer=demo["similarity"], similarity=None)
    assert _encoder(print_config(unified))["scorer"]["class_path"].endswith("TextSimilarityScorer")
