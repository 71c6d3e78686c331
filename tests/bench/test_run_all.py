"""``run_all`` orchestration: every experiment once, in order, with the shared settings, then the README."""

from __future__ import annotations

from pathlib import Path

import textvision.bench.experiments.run_all as run_all


def test_run_all_runs_each_experiment_with_the_same_settings(monkeypatch, tmp_path):
    calls = []

    def fake(name):
        def record(settings, **kwargs):
            calls.append((name, settings, kwargs))
            return {"experiment": name}

        return record

    monkeypatch.setattr(run_all, "run_ablation", fake("ablation"))
    monkeypatch.setattr(run_all, "run_budget_sweep", fake("sweep"))
    monkeypatch.setattr(run_all, "run_pruning_curve", fake("curve"))
    monkeypatch.setattr(run_all.cost_model, "main", lambda argv: calls.append(("cost_model", argv, {})))
    out = run_all.main(
        [
            "--out",
            str(tmp_path),
            "--steps",
            "11",
            "--keep-tokens",
            "6",
            "--budgets",
            "8",
            "4",
            "8",
            "--ratios",
            "0.5",
            "1",
        ]
    )
    assert [c[0] for c in calls] == ["cost_model", "ablation", "sweep", "curve"]
    assert calls[0][1] == ["--out", str(tmp_path)]
    settings = {id(c[1]) for c in calls[1:]}
    assert len(settings) == 1 and calls[1][1].steps == 11, "one BenchSettings object shared by all three"
    assert calls[1][2]["keep_tokens"] == 6 and calls[3][2]["train_keep_tokens"] == 6
    assert calls[2][2]["budgets"] == [4, 8]
    assert calls[3][2]["ratios"] == [1.0, 0.5]
    assert all(c[2]["out"] == Path(tmp_path) for c in calls[1:])
    assert Path(out["readme"]) == tmp_path / "README_results.md" and out["readme"].is_file()
    assert "Not run yet" in out["readme"].read_text()  # the fakes wrote no result files
