"""The fusion-ablation runner end to end on the smoke config (2 steps), and its pure helpers."""

from __future__ import annotations

import json

import pytest
import yaml

from textvision.bench.experiments.ablation import (
    VARIANTS,
    ablation_markdown,
    main,
    parameter_check,
    variant_spec,
)
from textvision.bench.experiments.runs import evaluate_trained, train_and_evaluate


def test_ablation_writes_json_markdown_and_png(ablation_result, bench_settings):
    result, out = ablation_result
    on_disk = json.loads((out / "ablation.json").read_text())
    assert [r["spec"]["fusion"] for r in on_disk["runs"]] == ["none", "gated_xattn"]
    assert [r["spec"]["scorer"] for r in on_disk["runs"]] == ["cls_attention", "text"]
    for run in on_disk["runs"]:
        assert run["steps"] == bench_settings.steps
        assert run["visual_tokens_to_lm"] == 4 + 1  # kept patches + CLS
        magnifier, pairs = run["sets"]["magnifier"], run["sets"]["mmvp_pairs"]
        assert magnifier["items"] == pairs["items"] == bench_settings.test_size
        assert pairs["pairs"] == bench_settings.test_size // 2
        for value in (magnifier["accuracy"], pairs["accuracy"], pairs["pair_accuracy"]):
            assert 0.0 <= value <= 1.0
        assert magnifier["chance"] == pytest.approx(0.25) and pairs["pair_chance"] == pytest.approx(0.25)
        assert run["params"]["total"] > run["params"]["trainable"] > 0
        assert run["encoder_time"]["ms_per_image_min"] > 0
        dependence = run["image_dependence"]
        assert set(dependence) == {"magnifier", "mmvp_pairs"}
        for entry in dependence.values():
            assert entry["items"] == bench_settings.test_size
            assert entry["delta"] == pytest.approx(entry["loss_shuffled_images"] - entry["loss"])
        # the run folder holds a config that `textvision fit -c` takes, with the variant's settings
        config = yaml.safe_load(open(run["config"]))
        encoder = config["model"]["vlm"]["init_args"]["encoder"]["init_args"]
        assert (encoder["fusion"], encoder["scorer"], encoder["keep_tokens"]) == (
            run["spec"]["fusion"],
            run["spec"]["scorer"],
            4,
        )
    none, gated = on_disk["runs"]
    assert gated["params"]["trainable_by_group"]["fusion"] > 0
    assert "fusion" not in none["params"]["trainable_by_group"]  # `none` has no fusion parameters
    assert (
        gated["params"]["trainable"] - none["params"]["trainable"]
        == gated["params"]["trainable_by_group"]["fusion"]
    )
    table = (out / "ablation.md").read_text()
    assert "none + CLS attention" in table and "gated_xattn + text-guided" in table
    assert result["command"] in table
    assert (out / "ablation.png").stat().st_size > 1000


def test_cached_runs_are_reused_and_reload_to_the_same_answers(ablation_result, bench_settings):
    result, _ = ablation_result
    gated = result["runs"][1]
    spec = variant_spec("gated_xattn", keep_tokens=4, variant_configs=bench_settings.variant_configs)
    again = train_and_evaluate(spec, bench_settings, timing=True)
    assert again["cached"] is True and again["run_dir"] == gated["run_dir"]
    # re-probed from the rebuilt model: the same losses as measured right after training
    for name, entry in again["image_dependence"].items():
        assert entry["loss"] == pytest.approx(gated["image_dependence"][name]["loss"], rel=1e-5)
    assert again["sets"] == gated["sets"]
    # weights saved, model rebuilt from the run's config, evaluated again: identical answers
    reloaded = evaluate_trained(gated, spec, bench_settings, timing=False)
    for name in ("magnifier", "mmvp_pairs"):
        assert reloaded["sets"][name]["accuracy"] == gated["sets"][name]["accuracy"]
    assert reloaded["sets"]["mmvp_pairs"]["pair_accuracy"] == gated["sets"]["mmvp_pairs"]["pair_accuracy"]


def test_variant_spec_reads_the_overlay_and_falls_back_without_it(tmp_path, bench_settings):
    spec = variant_spec("film", keep_tokens=2, variant_configs=bench_settings.variant_configs)
    assert (spec.fusion, spec.scorer) == ("film", "cls_attention")
    assert spec.overlay is not None and spec.overlay.endswith("film.yaml")
    fallback = variant_spec("mutual", keep_tokens=2, variant_configs=tmp_path)
    assert (fallback.fusion, fallback.scorer, fallback.overlay) == ("mutual", "text", None)
    (tmp_path / VARIANTS["film"][0]).write_text(
        yaml.safe_dump(
            {"model": {"vlm": {"init_args": {"encoder": {"init_args": {"scorer": "token_norm"}}}}}}
        )
    )
    custom = variant_spec("film", keep_ratio=0.5, variant_configs=tmp_path)
    assert (custom.fusion, custom.scorer) == ("film", "token_norm")
    assert "token_norm" in custom.name
    with pytest.raises(ValueError, match="unknown variant"):
        variant_spec("cross", keep_tokens=2)


def test_parameter_check_reports_the_spread_of_both_counts():
    runs = [{"params": {"total": 100, "trainable": 10}}, {"params": {"total": 104, "trainable": 12}}]
    check = parameter_check(runs, tolerance=0.05)
    assert check["total"]["spread"] == pytest.approx(0.04) and check["total"]["within_tolerance"]
    assert check["trainable"]["spread"] == pytest.approx(0.2) and not check["trainable"]["within_tolerance"]


def test_markdown_marks_a_parameter_spread_outside_the_tolerance(ablation_result):
    result, _ = ablation_result
    tampered = json.loads(json.dumps(result))
    tampered["parameters"] = parameter_check(
        [{"params": {"total": 100, "trainable": 1}}, {"params": {"total": 200, "trainable": 1}}]
    )
    assert "OUTSIDE" in ablation_markdown(tampered)


def test_cli_rejects_unknown_variants(capsys):
    with pytest.raises(SystemExit):
        main(["--variants", "cross"])
    assert "invalid choice" in capsys.readouterr().err
