"""Where the gap closes: text-aware vs. text-agnostic encoders as the visual-token budget grows.

    python -m textvision.bench.experiments.budget_sweep --out results   # keep 4, 8, 16, 32 patches

Trains a text-aware encoder (default: the base config's own) and a text-agnostic one (default:
the variant overlay whose fusion and scorer classes both declare that they do not attend to the
text) at each budget — *trained at the budget*, not pruned harder at test time — with everything
else equal (``bench/experiments/runs.py``; a run whose merged config matches one of the
ablation's is read from its cache). The synthetic images hold ``num_objects`` salient details
(12 in the demo) and a question asks about one of them: below that many kept patches, an encoder
that does not read the question must guess which details to keep, so the gap should be large
there and close once the budget covers every object. The issue's target: a gap of ≥ 25 points on
magnifier accuracy and on mmvp-pairs pair accuracy at a budget below the number of details.

Writes ``ablation_budget_sweep.json``, ``.md`` and ``.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textvision.bench.experiments.plots import plot_budget_sweep
from textvision.bench.experiments.runs import (
    BenchSettings,
    above_chance,
    add_common_arguments,
    pct,
    settings_from_args,
    train_and_evaluate,
    write_result,
)
from textvision.bench.experiments.variants import default_agnostic, variant_names, variant_spec
from textvision.train.cli import parse_config

__all__ = [
    "DEFAULT_BUDGETS",
    "gap_analysis",
    "main",
    "run_budget_sweep",
    "sweep_markdown",
]

log = logging.getLogger(__name__)

DEFAULT_BUDGETS = (4, 8, 16, 32)
#: (set, metric) pairs the gap is measured on (the issue's target metrics)
GAP_METRICS = (("magnifier", "accuracy"), ("mmvp_pairs", "pair_accuracy"))


def _value(run: dict[str, Any], set_name: str, metric: str) -> float | None:
    return run["sets"].get(set_name, {}).get(metric)


def gap_analysis(
    aware: Sequence[dict[str, Any]],
    agnostic: Sequence[dict[str, Any]],
    *,
    salient_details: int | None,
    close_below: float = 0.05,
    target: float = 0.25,
) -> dict[str, Any]:
    """Per budget: text-aware minus text-agnostic on each gap metric (fractions, not points).

    ``closes_at``: the smallest budget from which on every later budget all gaps stay below
    ``close_below`` while at least one of the two variants is above chance there (a "gap" of
    zero between two models that both sit at chance is no closing); None if the gap is still
    open at the largest budget or nothing was learned.
    ``target_met``: at every budget below ``salient_details``, all gaps are ≥ ``target``.
    ``verdict``: one sentence saying which of these holds, including "nothing learned".
    """
    by_budget = {r["keep_tokens"]: r for r in agnostic}
    rows = []
    for run in sorted(aware, key=lambda r: r["keep_tokens"]):
        other = by_budget.get(run["keep_tokens"])
        if other is None:
            continue
        gaps = {}
        for set_name, metric in GAP_METRICS:
            a, b = _value(run, set_name, metric), _value(other, set_name, metric)
            gaps[f"{set_name}/{metric}"] = None if a is None or b is None else a - b
        learned = {"aware": above_chance(run), "agnostic": above_chance(other)}
        rows.append({"keep_tokens": run["keep_tokens"], "gaps": gaps, "above_chance": learned})
    closes_at = None
    for i, row in enumerate(rows):
        closed = all(
            g is not None and abs(g) < close_below for later in rows[i:] for g in later["gaps"].values()
        )
        if closed and any(row["above_chance"].values()):
            closes_at = row["keep_tokens"]
            break
    below = [r for r in rows if salient_details is not None and r["keep_tokens"] < salient_details]
    target_met = bool(below) and all(g is not None and g >= target for r in below for g in r["gaps"].values())
    if not any(v for row in rows for v in row["above_chance"].values()):
        verdict = (
            "no run of either variant is above chance (every headline metric within 5 points of it): "
            "the models did not learn the task at these settings, so the sweep cannot show a gap"
        )
    elif closes_at is not None:
        verdict = (
            f"the gap closes (all gaps < {100 * close_below:.0f} points from there on) "
            f"at {closes_at} kept patches"
        )
    else:
        verdict = f"the gap does not close (< {100 * close_below:.0f} points) within the budgets swept"
    return {
        "verdict": verdict,
        "rows": rows,
        "closes_at": closes_at,
        "close_below": close_below,
        "target": target,
        "target_met_below_salient_details": target_met,
        "salient_details": salient_details,
    }


def _salient_details(settings: BenchSettings) -> int | None:
    """The scenes' ``num_objects`` as the CLI parses the base config (None: a data module without)."""
    value = parse_config(["-c", str(settings.base_config)])[0].get("data.init_args.num_objects")
    return None if value is None else int(value)


def run_budget_sweep(
    settings: BenchSettings,
    *,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    aware: str | None = None,
    agnostic: str | None = None,
    timing: bool = True,
    out: Path | None = None,
) -> dict[str, Any]:
    """Train both variants at every budget; gap table, JSON/markdown/PNG into ``out`` if given.

    ``aware``/``agnostic``: variant overlays of ``settings.variant_configs``; defaults: the base
    config itself, and :func:`default_agnostic`.
    """
    start = time.perf_counter()
    agnostic = agnostic or default_agnostic(settings)
    series: dict[str, list[dict[str, Any]]] = {}
    # budget by budget, both variants at each, so a partial run leaves comparable pairs
    for keep in budgets:
        for variant in (aware, agnostic):
            spec = variant_spec(variant, keep_tokens=keep, folder=settings.variant_configs)
            record = train_and_evaluate(spec, settings, timing=timing)
            record["keep_tokens"] = keep
            series.setdefault(spec.name, []).append(record)
    labels = list(series)
    details = _salient_details(settings)
    result = {
        "experiment": "visual-token budget sweep",
        "command": f"python -m textvision.bench.experiments.budget_sweep --steps {settings.steps} "
        f"--budgets {' '.join(map(str, budgets))} --test-size {settings.test_size}"
        + (f" --aware {aware}" if aware else "")
        + f" --agnostic {agnostic}",
        "settings": settings.describe(),
        "budgets": list(budgets),
        "salient_details": details,
        "series": series,
        "gap": gap_analysis(series[labels[0]], series[labels[1]], salient_details=details),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    if out is not None:
        write_budget_sweep(result, out)
    return result


def sweep_markdown(result: dict[str, Any]) -> str:
    """Accuracy per budget for both variants, and the gap in points."""
    labels = list(result["series"])
    aware, agnostic = (result["series"][name] for name in labels)
    gaps = {row["keep_tokens"]: row["gaps"] for row in result["gap"]["rows"]}
    lines = [
        f"| patches kept (+CLS) | {labels[0]}: magnifier / pair acc | {labels[1]}: magnifier / pair acc | "
        "gap magnifier (points) | gap pair acc (points) | encoder ms/img aware / agnostic |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def points(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:+.1f}"

    def ms(run: dict[str, Any]) -> str:
        t = run.get("encoder_time")
        return "–" if not t else f"{t['ms_per_image_min']:.2f}"

    def both(run: dict[str, Any]) -> str:
        magnifier, pairs = _value(run, "magnifier", "accuracy"), _value(run, "mmvp_pairs", "pair_accuracy")
        return f"{pct(magnifier)} / {pct(pairs)}"

    for a, b in zip(aware, agnostic, strict=True):
        k = a["keep_tokens"]
        g = gaps.get(k, {})
        lines.append(
            f"| {k} | {both(a)} | {both(b)} | "
            f"{points(g.get('magnifier/accuracy'))} | {points(g.get('mmvp_pairs/pair_accuracy'))} | "
            f"{ms(a)} / {ms(b)} |"
        )
    gap = result["gap"]
    mag, mmvp = aware[0]["sets"].get("magnifier", {}), aware[0]["sets"].get("mmvp_pairs", {})
    closes = gap["verdict"]
    target = "met" if gap["target_met_below_salient_details"] else "NOT met"
    lines += [
        "",
        f"Chance: magnifier {pct(mag.get('chance'))}, mmvp-pairs pair {pct(mmvp.get('pair_chance'))}. "
        f"{gap['salient_details']} salient objects per image; {closes}. Target (gap ≥ "
        f"{100 * gap['target']:.0f} points on both metrics at every budget below "
        f"{gap['salient_details']} patches): {target}.",
        f"Command: `{result['command']}` (wall {result['wall_seconds']} s for this invocation, "
        f"{sum(bool(r.get('cached')) for r in aware + agnostic)} of {len(aware) + len(agnostic)} runs read "
        "from the run cache); every point is a model "
        f"trained at that budget for {result['settings']['steps']} steps, same seed and data "
        f"(training time per run: {', '.join(_train_seconds(r) for r in aware + agnostic)}).",
    ]
    return "\n".join(lines)


def _train_seconds(run: dict[str, Any]) -> str:
    return f"{run['keep_tokens']}:{run['name']} {run['seconds']['fit']} s"


def write_budget_sweep(result: dict[str, Any], out: Path) -> None:
    write_result(
        result,
        out,
        "ablation_budget_sweep",
        title="Visual-token budget sweep (synthetic sets, CPU)",
        markdown=sweep_markdown(result),
        plot=plot_budget_sweep,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m textvision.bench.experiments.budget_sweep",
        description="Train a text-aware and a text-agnostic encoder at several visual-token budgets.",
    )
    add_common_arguments(parser)
    parser.add_argument("--budgets", type=int, nargs="+", default=list(DEFAULT_BUDGETS))
    parser.add_argument(
        "--aware", default=None, help="text-aware variant overlay (default: the base config itself)"
    )
    parser.add_argument(
        "--agnostic",
        default=None,
        help="text-agnostic variant overlay (default: the one whose classes say so)",
    )
    parser.add_argument("--no-timing", action="store_true")
    args = parser.parse_args(argv)
    unknown = sorted({args.aware, args.agnostic} - {None, *variant_names(args.variant_configs)})
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {variant_names(args.variant_configs)}")
    if sorted(set(args.budgets)) != sorted(args.budgets) or min(args.budgets) < 1:
        parser.error(f"--budgets must be distinct positive integers, got {args.budgets}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run_budget_sweep(
        settings_from_args(args),
        budgets=sorted(args.budgets),
        aware=args.aware,
        agnostic=args.agnostic,
        timing=not args.no_timing,
        out=args.out,
    )


if __name__ == "__main__":
    main()
