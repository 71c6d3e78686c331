"""PNG figures of the bench results (matplotlib, Agg backend; no display needed).

Each function takes the JSON dict its runner writes and a path, so a figure can be redrawn from a
results file alone: ``python -m textvision.bench.experiments.plots results`` redraws every figure it finds.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["plot_ablation", "plot_budget_sweep", "plot_pruning_curve", "redraw"]

# (set, metric, axis label)
_METRICS = (
    ("magnifier", "accuracy", "magnifier accuracy"),
    ("mmvp_pairs", "accuracy", "mmvp-pairs accuracy"),
    ("mmvp_pairs", "pair_accuracy", "mmvp-pairs pair accuracy"),
)


def _metric(run: Mapping[str, Any], set_name: str, metric: str) -> float | None:
    value = run.get("sets", {}).get(set_name, {}).get(metric)
    return None if value is None else 100.0 * value


def _chance(runs: Sequence[Mapping[str, Any]], set_name: str, metric: str) -> float | None:
    key = "pair_chance" if metric == "pair_accuracy" else "chance"
    for run in runs:
        value = run.get("sets", {}).get(set_name, {}).get(key)
        if value is not None:
            return 100.0 * value
    return None


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_ablation(result: Mapping[str, Any], path: str | Path) -> Path:
    """Grouped bars: one group per metric, one bar per variant, chance as a dashed line."""
    runs = result["runs"]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / max(1, len(runs))
    for j, run in enumerate(runs):
        values = [_metric(run, s, m) or 0.0 for s, m, _ in _METRICS]
        xs = [i + (j - (len(runs) - 1) / 2) * width for i in range(len(_METRICS))]
        bars = ax.bar(xs, values, width, label=run["name"])
        for bar, value in zip(bars, values, strict=True):
            ax.annotate(
                f"{value:.0f}",
                (bar.get_x() + bar.get_width() / 2, value),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    for i, (s, m, _) in enumerate(_METRICS):
        chance = _chance(runs, s, m)
        if chance is not None:
            ax.hlines(chance, i - 0.45, i + 0.45, colors="grey", linestyles="--", linewidth=1)
    ax.set_xticks(range(len(_METRICS)), [label for _, _, label in _METRICS])
    ax.set_ylabel("% (held-out test; dashed: chance)")
    ax.set_ylim(0, 105)
    tokens = runs[0].get("visual_tokens_to_lm") if runs else None
    ax.set_title(
        f"Fusion ablation: {tokens} visual tokens reach the LM, {result['settings']['steps']} steps each"
    )
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return _save(fig, path)


def plot_budget_sweep(result: Mapping[str, Any], path: str | Path) -> Path:
    """Accuracy vs. patches kept (log2 x axis), one line per variant, one panel per metric."""
    series = result["series"]
    panels = [(s, m, label) for s, m, label in _METRICS if m != "accuracy" or s == "magnifier"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (s, m, label) in zip(axes[0], panels, strict=True):
        for name, runs in series.items():
            xs = [r["keep_tokens"] for r in runs]
            ys = [_metric(r, s, m) for r in runs]
            ax.plot(xs, ys, marker="o", label=name)
        chance = _chance([r for runs in series.values() for r in runs], s, m)
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
        objects = result.get("salient_details")
        if objects:
            ax.axvline(objects, color="black", linestyle=":", linewidth=1, label=f"{objects} objects")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("patches kept after pruning (+ CLS)")
        ax.set_ylabel(f"{label} (%)")
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Visual-token budget sweep (trained at each budget, {result['settings']['steps']} steps)")
    fig.tight_layout()
    return _save(fig, path)


def plot_pruning_curve(result: Mapping[str, Any], path: str | Path) -> Path:
    """Magnifier accuracy, mmvp-pairs pair accuracy and encoder ms/image vs. keep ratio."""
    series = result["series"]
    panels = [
        ("magnifier", "accuracy", "magnifier accuracy (%)"),
        ("mmvp_pairs", "pair_accuracy", "mmvp-pairs pair accuracy (%)"),
        (None, "ms", "encoder ms / image (CPU)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    for ax, (s, m, label) in zip(axes, panels, strict=True):
        for name, points in series.items():
            xs = [p["keep_ratio"] for p in points]
            if s is None:
                ys = [p.get("encoder_time", {}).get("ms_per_image_min") for p in points]
            else:
                ys = [_metric(p, s, m) for p in points]
            ax.plot(xs, ys, marker="o", label=name)
        if s is not None:
            chance = _chance([p for points in series.values() for p in points], s, m)
            if chance is not None:
                ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
            ax.set_ylim(0, 105)
        else:
            ax.set_ylim(bottom=0)
        ax.set_xscale("log")
        ax.set_xticks([0.1, 0.25, 0.5, 1.0], ["0.1", "0.25", "0.5", "1.0"])
        ax.set_xlabel("keep ratio (patches kept / 64)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"Pruning curve ({result['mode_title']})", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return _save(fig, path)


_FIGURES = {
    "ablation.json": plot_ablation,
    "ablation_budget_sweep.json": plot_budget_sweep,
    "pruning_curve.json": plot_pruning_curve,
}


def redraw(results_dir: str | Path) -> list[Path]:
    """Redraw the PNG of every bench JSON present in ``results_dir``."""
    results_dir = Path(results_dir)
    written = []
    for name, draw in _FIGURES.items():
        source = results_dir / name
        if source.is_file():
            written.append(draw(json.loads(source.read_text()), source.with_suffix(".png")))
    return written


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description="Redraw the bench figures from their JSON files.")
    parser.add_argument("results", type=Path, nargs="?", default=Path("results"))
    args = parser.parse_args(argv)
    written = redraw(args.results)
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
