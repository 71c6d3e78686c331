"""The fusion-ablation runner end to end on the smoke config (2 steps), and its pure helpers."""

from __future__ import annotations

import json

import pytest
import yaml

from textvision.bench.experiments.ablation import (
    ablation_markdown,
    ablation_specs,
    main,
    parameter_check,
    run_label,
)
from textvision.bench.experiments.runs import evaluate_trained, train_and_evaluate
from textvision.bench.experiments.variants import variant_names, variant_spec


def test_ablation_writes_json_markdown_and_png(ablation_result, bench_settings, variants):
    result, out = ablation_result
    on_disk = json.loads((out / "ablation.json").read_text())
    assert [r["name"] for r in on_disk["runs"]] == [variants["agnostic"], variants["aware"]]
    agnostic, aware = on_disk["runs"]
    assert (
        not agnostic["encoder"]["fusion_attends_to_text"]
        and not agnostic["encoder"]["scorer_attends_to_text"]
    )
    assert aware["encoder"]["fusion_attends_to_text"]
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
        # the run folder holds the merged config `textvision fit -c` takes, with the variant's
        # overlay and the run's budget in it
        config = yaml.safe_load(open(run["config"]))
        encoder = config["model"]["vlm"]["init_args"]["encoder"]["init_args"]
        overlay = yaml.safe_load(open(run["spec"]["overlay"]))
        expected = overlay["model"]["vlm"]["init_args"]["encoder"]["init_args"]
        assert {k: encoder[k] for k in expected} == expected
        assert encoder["keep_tokens"] == 4 and config["trainer"]["max_steps"] == bench_settings.steps
        assert config["trainer"]["default_root_dir"] == run["run_dir"]
    assert aware["params"]["trainable_by_group"]["fusion"] > 0
    assert "fusion" not in agnostic["params"]["trainable_by_group"]  # no fusion parameters
    table = (out / "ablation.md").read_text()
    assert run_label(agnostic) in table and run_label(aware) in table
    assert "text-agnostic pruning" in run_label(agnostic)
    assert result["command"] in table
    assert (out / "ablation.png").stat().st_size > 1000


def test_cached_runs_are_reused_and_reload_to_the_same_answers(ablation_result, bench_settings, variants):
    result, _ = ablation_result
    aware = result["runs"][1]
    spec = variant_spec(variants["aware"], keep_tokens=4, folder=bench_settings.variant_configs)
    again = train_and_evaluate(spec, bench_settings, timing=True)
    assert again["cached"] is True and again["run_dir"] == aware["run_dir"]
    # re-probed from the rebuilt model: the same losses as measured right after training
    for name, entry in again["image_dependence"].items():
        assert entry["loss"] == pytest.approx(aware["image_dependence"][name]["loss"], rel=1e-5)
    assert again["sets"] == aware["sets"]
    # weights saved through the trainer's checkpoint, model rebuilt from the run's config,
    # evaluated again: identical answers
    reloaded = evaluate_trained(aware, spec, bench_settings, timing=False)
    for name in ("magnifier", "mmvp_pairs"):
        assert reloaded["sets"][name]["accuracy"] == aware["sets"][name]["accuracy"]
    assert reloaded["sets"]["mmvp_pairs"]["pair_accuracy"] == aware["sets"]["mmvp_pairs"]["pair_accuracy"]


def test_an_overlay_equal_to_the_base_config_is_the_same_run(ablation_result, bench_settings, tmp_path):
    # an overlay that sets only the base's own fusion and a folder trains the base's model: cached
    result, _ = ablation_result
    aware = result["runs"][1]
    same = tmp_path / "same_as_base.yaml"
    same.write_text(
        yaml.safe_dump(
            {
                "trainer": {"default_root_dir": str(tmp_path / "elsewhere")},
                "model": {
                    "vlm": {"init_args": {"encoder": {"init_args": {"fusion": aware["encoder"]["fusion"]}}}}
                },
            }
        )
    )
    base = train_and_evaluate(variant_spec(None, keep_tokens=4), bench_settings)
    other = train_and_evaluate(variant_spec("same_as_base", keep_tokens=4, folder=tmp_path), bench_settings)
    assert base["run_dir"] == other["run_dir"] and other["cached"]
    assert (base["name"], other["name"]) == ("base", "same_as_base")


def test_ablation_specs_are_the_overlay_files(bench_settings, tmp_path):
    specs = ablation_specs(3, settings=bench_settings)
    assert [s.variant for s in specs] == variant_names(bench_settings.variant_configs)
    assert variant_names(bench_settings.variant_configs) == sorted(
        p.stem for p in bench_settings.variant_configs.glob("*.yaml")
    )
    assert all(s.keep_tokens == 3 and s.overlay.endswith(f"{s.variant}.yaml") for s in specs)
    with pytest.raises(ValueError, match="unknown variant 'cross'"):
        variant_spec("cross", keep_tokens=2, folder=tmp_path)


def test_run_label_names_the_encoder_of_a_record():
    record = {
        "name": "v",
        "encoder": {"fusion": "my.Fusion", "scorer": "s", "scorer_attends_to_text": True},
    }
    assert run_label(record) == "v: my.Fusion + s (text-guided pruning)"
    assert run_label({"name": "old"}) == "old"  # a record from before runs recorded the encoder


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
    assert "unknown variants ['cross']" in capsys.readouterr().err
