"""The README "Results" section and the figures, regenerated from result files alone."""

from __future__ import annotations

import json
import shutil

from textvision.bench.experiments.plots import main as plots_main
from textvision.bench.experiments.results_readme import CAVEATS, build_results_section, main


def test_results_section_quotes_every_number_with_its_command(ablation_result, tmp_path):
    result, out = ablation_result
    results = tmp_path / "results"
    shutil.copytree(out, results)
    (results / "cost_model.md").write_text("# Cost model\n\n## Encoder\n\n| a | b |\n| - | - |\n| 1 | 2 |\n")
    target = main(["--out", str(results)])
    text = target.read_text()
    assert target.name == "README_results.md"
    assert text.startswith("## Results") and CAVEATS in text
    flat = " ".join(text.split())
    assert "GPU numbers (kernel throughput, % of roofline) were **not measured here**" in flat
    # the ablation table with its command and figure
    assert result["command"] in text and "ablation.png" in text
    for run in result["runs"]:
        assert f"{100 * run['sets']['magnifier']['accuracy']:.1f}%" in text
    # quoted markdown: H1 dropped, headings demoted under the section, command named
    assert "# Cost model" not in text and "#### Encoder" in text
    assert "python -m textvision.bench.perf.cost_model --out results" in text
    # what has not been run is said so, with the command, never left out silently
    assert "Not run yet: `python -m textvision.bench.experiments.budget_sweep --out results`" in text
    assert "Not run yet: `python -m textvision.bench.experiments.pruning_curve --out results`" in text


def test_empty_results_folder_gives_only_not_run_lines(tmp_path):
    text = build_results_section(tmp_path)
    assert text.count("Not run yet") >= 4
    assert "%" not in text.split(CAVEATS)[1]


def test_plots_redraw_from_json(ablation_result, tmp_path):
    _, out = ablation_result
    shutil.copy(out / "ablation.json", tmp_path / "ablation.json")
    written = plots_main([str(tmp_path)])
    assert [p.name for p in written] == ["ablation.png"]
    assert (tmp_path / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.loads((tmp_path / "ablation.json").read_text())  # untouched


def _point(ratio, tokens, ms, magnifier=0.5, pair=0.3):
    return {
        "keep_ratio": ratio,
        "visual_tokens_to_lm": tokens,
        "sets": {"magnifier": {"accuracy": magnifier, "chance": 0.25}, "mmvp_pairs": {"pair_accuracy": pair}},
        "encoder_time": {"ms_per_image_min": ms, "ms_per_image_median": ms * 1.1},
    }


def test_pruning_curve_headline_states_the_speedup_over_the_plain_encoder(tmp_path):
    curve = {
        "mode": "test_time",
        "mode_title": "test-time pruning of models trained at 8 kept patches",
        "command": "python -m textvision.bench.experiments.pruning_curve --steps 700",
        "wall_seconds": 1.0,
        "series": {
            "gated_xattn model, text-guided scorer": [_point(1.0, 65, 3.0), _point(0.25, 17, 1.5)],
            "none model, CLS attention scorer": [_point(1.0, 65, 2.0), _point(0.25, 17, 1.0)],
        },
    }
    (tmp_path / "pruning_curve.json").write_text(json.dumps(curve))
    text = " ".join(build_results_section(tmp_path).split())
    assert "text-guided pruning to 0.25 of the patches: 1.33x the speed of the plain" in text
    assert "(1.50 vs. 2.00 ms/image" in text
    assert "| gated_xattn model, text-guided scorer | 0.25 | 17 | 50.0% | 30.0% | 1.50 / 1.65 |" in text
