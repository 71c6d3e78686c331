"""One command for every research result: cost model, fusion ablation, budget sweep, pruning curve,
and the README "Results" section built from them.

    python -m textvision.bench.experiments.run_all --out results                # default sizes, CPU
    python -m textvision.bench.experiments.run_all --out results --steps 4000   # larger

The three training experiments share their runs (``bench/experiments/runs.py`` caches each trained
model by its merged config): at the ablation's budget the budget sweep's text-agnostic run is the
ablation's, and its text-aware run (the base config) is the ablation's overlay that changes
nothing; the test-time pruning curve evaluates those same two models.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textvision.bench.experiments.ablation import run_ablation
from textvision.bench.experiments.budget_sweep import DEFAULT_BUDGETS, run_budget_sweep
from textvision.bench.experiments.pruning_curve import DEFAULT_RATIOS, run_pruning_curve
from textvision.bench.experiments.results_readme import main as write_results_readme
from textvision.bench.experiments.runs import add_common_arguments, settings_from_args
from textvision.bench.perf import cost_model

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m textvision.bench.experiments.run_all", description=__doc__.splitlines()[0]
    )
    add_common_arguments(parser)
    parser.add_argument("--keep-tokens", type=int, default=8, help="the ablation's budget (patches kept)")
    parser.add_argument("--budgets", type=int, nargs="+", default=list(DEFAULT_BUDGETS))
    parser.add_argument("--ratios", type=float, nargs="+", default=list(DEFAULT_RATIOS))
    parser.add_argument("--skip-cost-model", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = settings_from_args(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    if not args.skip_cost_model:
        cost_model.main(["--out", str(out)])
        seconds["cost_model"] = time.perf_counter() - start
    mark = time.perf_counter()
    ablation = run_ablation(settings, keep_tokens=args.keep_tokens, out=out)
    seconds["ablation"] = time.perf_counter() - mark
    mark = time.perf_counter()
    sweep = run_budget_sweep(settings, budgets=sorted(set(args.budgets)), out=out)
    seconds["budget_sweep"] = time.perf_counter() - mark
    mark = time.perf_counter()
    curve = run_pruning_curve(
        settings, ratios=sorted(set(args.ratios), reverse=True), train_keep_tokens=args.keep_tokens, out=out
    )
    seconds["pruning_curve"] = time.perf_counter() - mark
    readme = write_results_readme(["--out", str(out)])
    seconds["total"] = time.perf_counter() - start
    print({name: round(value, 1) for name, value in seconds.items()})
    return {
        "ablation": ablation,
        "budget_sweep": sweep,
        "pruning_curve": curve,
        "readme": readme,
        "seconds": seconds,
    }


if __name__ == "__main__":
    main()
