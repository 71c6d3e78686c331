"""Pruning curve on the smoke config: test-time pruning of a trained model, scorers swapped."""

from __future__ import annotations

import json

import pytest

from textvision.bench.experiments.pruning_curve import main, run_pruning_curve, swappable_scorers
from textvision.pruning import SCORERS

#: a registered scorer without settings (read from the registry, not named)
PLAIN_SCORER = next(n for n, c in SCORERS.items() if not c.attends_to_text)


def test_pruning_curve_evaluates_every_scorer_and_ratio(ablation_result, bench_settings, variants, tmp_path):
    aware_run = ablation_result[0]["runs"][1]
    own = aware_run["encoder"]["scorer"]
    families = {variants["aware"]: [PLAIN_SCORER]}
    result = run_pruning_curve(
        bench_settings, ratios=(1.0, 0.25), train_keep_tokens=4, families=families, out=tmp_path
    )
    assert result["mode"] == "test_time"
    assert list(result["series"]) == [
        f"{variants['aware']} model, {own} scorer",
        f"{variants['aware']} model, {PLAIN_SCORER} scorer",
    ]
    mine, plain = result["series"].values()
    # 16 patches: ratio 1.0 is the unpruned encoder (16 + CLS), 0.25 keeps 4 (+ CLS)
    assert [p["visual_tokens_to_lm"] for p in mine] == [17, 5] == [p["visual_tokens_to_lm"] for p in plain]
    assert mine[0] is plain[0], "the unpruned point is shared: no scorer plays a part there"
    assert mine[1]["encoder"]["scorer"] == own and plain[1]["encoder"]["scorer"] == PLAIN_SCORER
    # the own-scorer point at the training budget reproduces the trained run's own evaluation
    assert mine[1]["sets"]["magnifier"]["accuracy"] == aware_run["sets"]["magnifier"]["accuracy"]
    assert all(p["encoder_time"]["ms_per_image_min"] > 0 for p in mine + plain)
    assert all(p["sets"]["magnifier"]["chance"] == pytest.approx(0.25) for p in mine + plain)
    on_disk = json.loads((tmp_path / "pruning_curve.json").read_text())
    assert on_disk["trained_runs"][variants["aware"]] == aware_run["run_dir"]
    markdown = (tmp_path / "pruning_curve.md").read_text()
    assert "test-time pruning" in markdown and "different experiment" in markdown
    assert (tmp_path / "pruning_curve.png").stat().st_size > 1000


def test_swappable_scorers_follow_what_the_classes_declare():
    attending = {"scorer": None, "fusion_attends_to_text": True}
    blind = {"scorer": None, "fusion_attends_to_text": False}
    for name in swappable_scorers(attending):
        assert not SCORERS[name].attends_to_text or SCORERS[name].reads_fusion_relevance
    assert set(swappable_scorers(blind)) == {n for n, c in SCORERS.items() if not c.attends_to_text}
    relevance = {n for n, c in SCORERS.items() if c.reads_fusion_relevance}
    assert relevance <= set(swappable_scorers(attending)) and not relevance & set(swappable_scorers(blind))
    own = swappable_scorers(blind)[0]
    assert own not in swappable_scorers({**blind, "scorer": own}), "the model's own scorer is not repeated"


def test_cli_rejects_ratios_outside_the_unit_interval(capsys):
    with pytest.raises(SystemExit):
        main(["--ratios", "0.5", "1.5"])
    assert "--ratios must be in (0, 1]" in capsys.readouterr().err
