"""Pruning curve on the smoke config: test-time pruning of a trained model, scorers swapped."""

from __future__ import annotations

import json

import pytest

from textvision.bench.experiments.pruning_curve import main, run_pruning_curve


def test_pruning_curve_evaluates_every_scorer_and_ratio(ablation_result, bench_settings, tmp_path):
    families = {"gated_xattn": ("text", "token_norm")}
    result = run_pruning_curve(
        bench_settings, ratios=(1.0, 0.25), train_keep_tokens=4, families=families, out=tmp_path
    )
    assert result["mode"] == "test_time"
    assert list(result["series"]) == [
        "gated_xattn model, text-guided scorer",
        "gated_xattn model, token norm scorer",
    ]
    text, norm = result["series"].values()
    # 16 patches: ratio 1.0 is the unpruned encoder (16 + CLS), 0.25 keeps 4 (+ CLS)
    assert [p["visual_tokens_to_lm"] for p in text] == [17, 5] == [p["visual_tokens_to_lm"] for p in norm]
    assert text[0] is norm[0], "the unpruned point is shared: no scorer plays a part there"
    assert text[1]["spec"]["scorer"] == "text" and norm[1]["spec"]["scorer"] == "token_norm"
    # the text-guided point at the training budget reproduces the trained run's own evaluation
    trained = ablation_result[0]["runs"][1]
    assert text[1]["sets"]["magnifier"]["accuracy"] == trained["sets"]["magnifier"]["accuracy"]
    assert all(p["encoder_time"]["ms_per_image_min"] > 0 for p in text + norm)
    assert all(p["sets"]["magnifier"]["chance"] == pytest.approx(0.25) for p in text + norm)
    on_disk = json.loads((tmp_path / "pruning_curve.json").read_text())
    assert on_disk["trained_runs"]["gated_xattn"] == trained["run_dir"]
    markdown = (tmp_path / "pruning_curve.md").read_text()
    assert "test-time pruning" in markdown and "different experiment" in markdown
    assert (tmp_path / "pruning_curve.png").stat().st_size > 1000


def test_cli_rejects_ratios_outside_the_unit_interval(capsys):
    with pytest.raises(SystemExit):
        main(["--ratios", "0.5", "1.5"])
    assert "--ratios must be in (0, 1]" in capsys.readouterr().err
