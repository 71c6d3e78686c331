"""Accuracy and encoder time vs. keep ratio, text-guided vs. text-agnostic pruning scorers.

    python -m textvision.bench.experiments.pruning_curve --out results                   # test-time pruning
    python -m textvision.bench.experiments.pruning_curve --out results --train-per-point  # at each ratio

Keep ratios 1.0, 0.5, 0.25, 0.1 of the 64 patches (64, 32, 16, 7 patches; 1.0 = no pruning).

Two experiments, and the output says which one it holds:

* **test-time pruning** (default, cheap): a text-aware and a text-agnostic model (the budget
  sweep's pair: the base config and the text-agnostic variant overlay) are trained at the demo's
  budget (8 patches, shared with the ablation's cache) and only evaluated at each keep ratio, with
  the pruning scorer swapped at test time: each model under its own scorer and under every
  registered scorer that can run on it without settings (:func:`swappable_scorers`: the
  text-agnostic ones, and the fusion-relevance one on a model whose fusion attends to the text),
  same weights, so the scorer is isolated. A model trained with 9 visual tokens that sees 33 or 65
  at test time is off its training distribution, so accuracy need not rise with the ratio here;
* **trained at each ratio** (``--train-per-point``): every (model, ratio) point is its own
  training run — what a budget really costs — at the price of one run per point.

Encoder time is measured for every point (vision side with fusion and pruning, text features
precomputed). Writes ``pruning_curve.json``, ``.md`` and ``.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from textvision.bench.experiments.plots import plot_pruning_curve
from textvision.bench.experiments.runs import (
    BenchSettings,
    RunSpec,
    add_common_arguments,
    evaluate_trained,
    pct,
    settings_from_args,
    train_and_evaluate,
    write_result,
)
from textvision.bench.experiments.variants import default_agnostic, variant_spec

__all__ = ["DEFAULT_RATIOS", "curve_markdown", "main", "run_pruning_curve", "swappable_scorers"]

log = logging.getLogger(__name__)

DEFAULT_RATIOS = (1.0, 0.5, 0.25, 0.1)


def swappable_scorers(encoder: Mapping[str, Any]) -> list[str]:
    """The registered scorers a trained model (its record's ``encoder``) is also evaluated under:
    those that need no settings and can run on it — every scorer that does not attend to the text,
    and those reading the fusion kernels' relevance when the model's fusion attends to the text
    (what the classes declare)."""
    from textvision.pruning import SCORERS

    out = []
    for name, cls in SCORERS.items():
        if name == encoder["scorer"]:
            continue
        if (cls.reads_fusion_relevance and encoder["fusion_attends_to_text"]) or not cls.attends_to_text:
            out.append(name)
    return out


def run_pruning_curve(
    settings: BenchSettings,
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    train_keep_tokens: int = 8,
    train_per_point: bool = False,
    families: Mapping[str | None, Sequence[str] | None] | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Evaluate (and time) every model and scorer at every keep ratio; write outputs into ``out``.

    ``families`` maps a variant overlay (None: the base config) to the scorers evaluated on the
    model trained with it besides its own (None: :func:`swappable_scorers`); default the base
    config and :func:`~textvision.bench.experiments.budget_sweep.default_agnostic`. With
    ``train_per_point`` only each model's own scorer is used.
    """
    start = time.perf_counter()
    if families is None:
        families = {None: None, default_agnostic(settings): None}
    series: dict[str, list[dict[str, Any]]] = {}
    trained_on: dict[str, str] = {}
    folder = settings.variant_configs
    for variant, extra in families.items():
        if train_per_point:
            # one run per (model, ratio), each with its own scorer
            points = []
            for ratio in ratios:
                record = train_and_evaluate(variant_spec(variant, keep_ratio=ratio, folder=folder), settings)
                record["keep_ratio"] = ratio
                points.append(record)
            series[_series_name(points[0], None)] = points
            continue
        record = train_and_evaluate(
            variant_spec(variant, keep_tokens=train_keep_tokens, folder=folder), settings
        )
        trained_on[RunSpec(**record["spec"]).variant] = record["run_dir"]
        unpruned = None
        scorers = [None, *(swappable_scorers(record["encoder"]) if extra is None else extra)]
        for scorer in scorers:
            points = []
            for ratio in ratios:
                if ratio == 1.0 and unpruned is not None:
                    points.append(unpruned)  # no pruning: the scorer plays no part
                    continue
                spec = variant_spec(variant, keep_ratio=ratio, scorer=scorer, folder=folder)
                point = evaluate_trained(record, spec, settings)
                point["keep_ratio"] = ratio
                points.append(point)
                if ratio == 1.0:
                    unpruned = point
            series[_series_name(record, scorer)] = points
    mode = (
        "trained at each ratio"
        if train_per_point
        else (f"test-time pruning of models trained at {train_keep_tokens} kept patches")
    )
    result = {
        "experiment": "pruning curve",
        "mode": "train_per_point" if train_per_point else "test_time",
        "mode_title": mode,
        "command": "python -m textvision.bench.experiments.pruning_curve "
        f"--steps {settings.steps} --test-size {settings.test_size}"
        + (" --train-per-point" if train_per_point else f" --train-keep-tokens {train_keep_tokens}"),
        "settings": settings.describe(),
        "ratios": list(ratios),
        "trained_runs": trained_on,
        "series": series,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    if out is not None:
        write_pruning_curve(result, out)
    return result


def _series_name(record: Mapping[str, Any], scorer: str | None) -> str:
    """``<variant> model, <scorer> scorer`` (the model's own scorer when ``scorer`` is None)."""
    own = record["encoder"]["scorer"]
    return f"{RunSpec(**record['spec']).variant} model, {scorer or own} scorer"


def curve_markdown(result: dict[str, Any]) -> str:
    """One row per (series, ratio): tokens to the LM, accuracies, encoder ms/image."""
    lines = [
        "| model and scorer | keep ratio | tokens to LM | magnifier acc | mmvp-pairs pair acc | "
        "encoder ms/img (min / median) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, points in result["series"].items():
        for p in points:
            t = p.get("encoder_time")
            ms = "–" if not t else f"{t['ms_per_image_min']:.2f} / {t['ms_per_image_median']:.2f}"
            lines.append(
                f"| {name} | {p['keep_ratio']:g} | {p['visual_tokens_to_lm']} | "
                f"{pct(p['sets'].get('magnifier', {}).get('accuracy'))} | "
                f"{pct(p['sets'].get('mmvp_pairs', {}).get('pair_accuracy'))} | {ms} |"
            )
    lines += [
        "",
        f"Mode: **{result['mode_title']}**. "
        f"Command: `{result['command']}` (wall {result['wall_seconds']} s).",
    ]
    if result["mode"] == "test_time":
        lines.append(
            "Test-time pruning is a different experiment from training at a budget: these models "
            "saw 9 visual tokens in training, so more tokens at test time are off-distribution "
            "for the LM (see the budget sweep for models trained at each budget)."
        )
    return "\n".join(lines)


def write_pruning_curve(result: dict[str, Any], out: Path) -> None:
    write_result(
        result,
        out,
        "pruning_curve",
        title="Pruning curve (synthetic sets, CPU)",
        markdown=curve_markdown(result),
        plot=plot_pruning_curve,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m textvision.bench.experiments.pruning_curve",
        description="Accuracy and encoder time vs. keep ratio for text-guided and text-agnostic scorers.",
    )
    add_common_arguments(parser)
    parser.add_argument("--ratios", type=float, nargs="+", default=list(DEFAULT_RATIOS))
    parser.add_argument(
        "--train-keep-tokens", type=int, default=8, help="budget the test-time models train at"
    )
    parser.add_argument("--train-per-point", action="store_true", help="train one model per ratio instead")
    args = parser.parse_args(argv)
    bad = [r for r in args.ratios if not 0.0 < r <= 1.0]
    if bad:
        parser.error(f"--ratios must be in (0, 1], got {bad}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run_pruning_curve(
        settings_from_args(args),
        ratios=sorted(args.ratios, reverse=True),
        train_keep_tokens=args.train_keep_tokens,
        train_per_point=args.train_per_point,
        out=args.out,
    )


if __name__ == "__main__":
    main()
