"""Accuracy and encoder time vs. keep ratio, text-guided vs. text-agnostic pruning scorers.

    python -m textvision.bench.experiments.pruning_curve --out results                   # test-time pruning
    python -m textvision.bench.experiments.pruning_curve --out results --train-per-point  # at each ratio

Keep ratios 1.0, 0.5, 0.25, 0.1 of the 64 patches (64, 32, 16, 7 patches; 1.0 = no pruning).

Two experiments, and the output says which one it holds:

* **test-time pruning** (default, cheap): one model per scorer family is trained at the demo's
  budget (8 patches, shared with the ablation's cache) — ``gated_xattn`` + text-guided pruning and
  ``none`` + CLS-attention pruning — and only evaluated at each keep ratio, with the pruning
  scorer swapped at test time: the text-aware model under its own ``text`` relevance and under the
  text-agnostic ``cls_attention`` and ``token_norm`` scorers (same weights: isolates the scorer),
  the text-agnostic model under ``cls_attention`` and ``token_norm``. A model trained with 9 visual
  tokens that sees 33 or 65 at test time is off its training distribution, so accuracy need not
  rise with the ratio here;
* **trained at each ratio** (``--train-per-point``): every (variant, ratio) point is its own
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

from textvision.bench.experiments.ablation import variant_spec
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

__all__ = ["DEFAULT_RATIOS", "SCORER_FAMILIES", "curve_markdown", "main", "run_pruning_curve"]

log = logging.getLogger(__name__)

DEFAULT_RATIOS = (1.0, 0.5, 0.25, 0.1)
#: trained fusion variant -> scorers evaluated on it (its own first)
SCORER_FAMILIES: dict[str, tuple[str, ...]] = {
    "gated_xattn": ("text", "cls_attention", "token_norm"),
    "none": ("cls_attention", "token_norm"),
}
_SCORER_LABEL = {"text": "text-guided", "cls_attention": "CLS attention", "token_norm": "token norm"}


def _series_name(fusion: str, scorer: str) -> str:
    return f"{fusion} model, {_SCORER_LABEL[scorer]} scorer"


def run_pruning_curve(
    settings: BenchSettings,
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    train_keep_tokens: int = 8,
    train_per_point: bool = False,
    families: Mapping[str, Sequence[str]] = SCORER_FAMILIES,
    out: Path | None = None,
) -> dict[str, Any]:
    """Evaluate (and time) every scorer family at every keep ratio; write outputs into ``out``.

    ``families`` maps a trained fusion variant to the scorers evaluated on it (default
    :data:`SCORER_FAMILIES`); with ``train_per_point`` only each family's own scorer is used.
    """
    start = time.perf_counter()
    series: dict[str, list[dict[str, Any]]] = {}
    trained_on: dict[str, str] = {}
    configs = settings.variant_configs
    for fusion, scorers in families.items():
        own_scorer = variant_spec(fusion, keep_tokens=train_keep_tokens, variant_configs=configs).scorer
        if train_per_point:
            # one run per (fusion, ratio), each with the family's own scorer
            points = []
            for ratio in ratios:
                spec = variant_spec(fusion, keep_ratio=ratio, variant_configs=configs)
                record = train_and_evaluate(spec, settings, timing=True)
                record["keep_ratio"] = ratio
                points.append(record)
            series[_series_name(fusion, own_scorer)] = points
            continue
        record = train_and_evaluate(
            variant_spec(fusion, keep_tokens=train_keep_tokens, variant_configs=configs), settings
        )
        trained_on[fusion] = record["run_dir"]
        unpruned = None
        for scorer in scorers:
            points = []
            for ratio in ratios:
                if ratio == 1.0 and unpruned is not None:
                    points.append(unpruned)  # no pruning: the scorer plays no part
                    continue
                point = evaluate_trained(record, RunSpec(fusion, scorer, keep_ratio=ratio), settings)
                point["keep_ratio"] = ratio
                points.append(point)
                if ratio == 1.0:
                    unpruned = point
            series[_series_name(fusion, scorer)] = points
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
