"""Budget sweep: the gap analysis on hand-made numbers, and the runner on the smoke config."""

from __future__ import annotations

import json

import pytest

from textvision.bench.experiments.budget_sweep import gap_analysis, main, run_budget_sweep
from textvision.bench.experiments.variants import default_agnostic


def _run(keep, magnifier, pair):
    return {
        "keep_tokens": keep,
        "sets": {
            "magnifier": {"accuracy": magnifier, "chance": 0.25},
            "mmvp_pairs": {"pair_accuracy": pair, "pair_chance": 0.25},
        },
    }


def test_gap_analysis_finds_where_the_gap_closes_and_checks_the_target():
    aware = [_run(4, 0.95, 0.90), _run(8, 0.96, 0.92), _run(16, 0.97, 0.93), _run(32, 0.97, 0.94)]
    agnostic = [_run(4, 0.45, 0.30), _run(8, 0.70, 0.60), _run(16, 0.94, 0.90), _run(32, 0.99, 0.93)]
    gap = gap_analysis(aware, agnostic, salient_details=12)
    assert [row["keep_tokens"] for row in gap["rows"]] == [4, 8, 16, 32]
    assert gap["rows"][0]["gaps"]["magnifier/accuracy"] == pytest.approx(0.50)
    assert gap["rows"][3]["gaps"]["magnifier/accuracy"] == pytest.approx(-0.02)
    assert gap["closes_at"] == 16 and "closes" in gap["verdict"] and "16" in gap["verdict"]
    assert gap["target_met_below_salient_details"] is True  # 4 and 8: all gaps >= 25 points


def test_gap_analysis_reports_an_open_gap_and_a_missed_target():
    aware = [_run(4, 0.60, 0.40), _run(8, 0.80, 0.70)]
    agnostic = [_run(4, 0.45, 0.30), _run(8, 0.70, 0.60), _run(16, 0.9, 0.9)]
    gap = gap_analysis(aware, agnostic, salient_details=12)
    assert gap["closes_at"] is None
    assert gap["target_met_below_salient_details"] is False
    assert [row["keep_tokens"] for row in gap["rows"]] == [4, 8]  # budgets without both are left out
    # a gap that re-opens later does not count as closed
    reopened = gap_analysis(
        [_run(4, 0.9, 0.9), _run(8, 0.9, 0.9), _run(16, 0.99, 0.99)],
        [_run(4, 0.5, 0.5), _run(8, 0.88, 0.88), _run(16, 0.80, 0.80)],
        salient_details=12,
    )
    assert reopened["closes_at"] is None


def test_models_at_chance_show_no_gap_and_no_closing():
    # equal numbers at chance are not a "closed gap": nothing was learned
    at_chance = [_run(k, 0.26, 0.24) for k in (4, 8, 16)]
    gap = gap_analysis(at_chance, [_run(k, 0.25, 0.25) for k in (4, 8, 16)], salient_details=12)
    assert gap["closes_at"] is None
    assert gap["target_met_below_salient_details"] is False
    assert "did not learn" in gap["verdict"]
    assert not any(v for row in gap["rows"] for v in row["above_chance"].values())
    # the closing point is the first budget where a model is above chance and the gaps stay small
    late = gap_analysis(
        [_run(4, 0.26, 0.24), _run(8, 0.60, 0.50), _run(16, 0.90, 0.85)],
        [_run(4, 0.25, 0.25), _run(8, 0.58, 0.49), _run(16, 0.89, 0.86)],
        salient_details=12,
    )
    assert late["closes_at"] == 8


def test_budget_sweep_reuses_the_ablation_runs(ablation_result, bench_settings, variants, tmp_path):
    ablation, _ = ablation_result
    # the text-agnostic side defaults to the variant whose classes say so
    assert default_agnostic(bench_settings) == variants["agnostic"]
    result = run_budget_sweep(
        bench_settings, budgets=(2, 4), aware=variants["aware"], timing=False, out=tmp_path
    )
    aware, agnostic = result["series"].values()
    assert list(result["series"]) == [variants["aware"], variants["agnostic"]]
    assert [r["keep_tokens"] for r in aware] == [2, 4] == [r["keep_tokens"] for r in agnostic]
    assert [r["visual_tokens_to_lm"] for r in aware] == [3, 5]
    # budget 4 is the ablation's runs, read from the cache
    assert aware[1]["cached"] and agnostic[1]["cached"]
    assert aware[1]["run_dir"] == ablation["runs"][1]["run_dir"]
    assert agnostic[1]["run_dir"] == ablation["runs"][0]["run_dir"]
    assert result["salient_details"] == 6  # from the smoke config's num_objects
    on_disk = json.loads((tmp_path / "ablation_budget_sweep.json").read_text())
    assert [row["keep_tokens"] for row in on_disk["gap"]["rows"]] == [2, 4]
    markdown = (tmp_path / "ablation_budget_sweep.md").read_text()
    assert "gap magnifier" in markdown and result["command"] in markdown
    assert (tmp_path / "ablation_budget_sweep.png").stat().st_size > 1000


def test_default_agnostic_needs_exactly_one(bench_settings, tmp_path):
    empty = type(bench_settings)(base_config=bench_settings.base_config, variant_configs=tmp_path)
    with pytest.raises(ValueError, match="0 text-agnostic variants"):
        default_agnostic(empty)


def test_cli_rejects_unknown_variants(capsys):
    with pytest.raises(SystemExit):
        main(["--agnostic", "cross"])
    assert "unknown variants ['cross']" in capsys.readouterr().err
