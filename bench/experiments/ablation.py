"""Fusion ablation under a visual-token budget: does reading the instruction in the ViT pay off?

    # the demo's 2,200 steps per run (~25 min idle CPU per variant)
    python -m textvision.bench.experiments.ablation --out results
    python -m textvision.bench.experiments.ablation --steps 4000 --test-size 1024   # larger

The variants are the overlays ``configs/ablation/*.yaml`` (each says in its header what it
changes), every one merged over ``configs/demo.yaml`` as ``textvision fit -c configs/demo.yaml
-c configs/ablation/<variant>.yaml`` would: same ViT, LM, data, seed, steps and batch; a new
overlay file is a new row, with no edit here.

Identical budgets: all runs keep the same number of patches (``--keep-tokens``, default the demo's
8) plus CLS, so the same number of visual tokens reaches the LM; same steps, batch, data stream
and seed. Parameters are counted two ways and both are reported: *total* (every parameter of the
model, the frozen MiniLM text encoder and the LM included, tied weights once) — the variants are
within 5% of each other on this count — and *trainable*, where the fusion layers are the whole
difference (``gated_xattn`` adds 4·D² per block; see the JSON for exact numbers).

Each run trains through ``TextVisionCLI`` (``bench/experiments/runs.py``), is evaluated on the
held-out test splits through ``textvision.eval.evaluate_benchmark`` (option log-likelihood), and its
encoder is timed (ms/image, CPU, text features precomputed). Writes ``ablation.json``,
``ablation.md`` and ``ablation.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textvision.bench.experiments.plots import plot_ablation
from textvision.bench.experiments.runs import (
    BenchSettings,
    RunSpec,
    above_chance,
    add_common_arguments,
    pct,
    settings_from_args,
    train_and_evaluate,
    write_result,
)
from textvision.bench.experiments.variants import variant_names, variant_spec

__all__ = ["ablation_markdown", "ablation_specs", "main", "parameter_check", "run_ablation", "run_label"]

log = logging.getLogger(__name__)


def ablation_specs(
    keep_tokens: int, variants: Sequence[str] | None = None, *, settings: BenchSettings
) -> list[RunSpec]:
    """One :class:`RunSpec` per variant (default: every overlay of ``settings.variant_configs``)
    at ``keep_tokens`` patches."""
    names = variant_names(settings.variant_configs) if variants is None else variants
    return [variant_spec(v, keep_tokens=keep_tokens, folder=settings.variant_configs) for v in names]


def run_label(run: dict[str, Any]) -> str:
    """``<variant>: <fusion> + <scorer> (text-guided|text-agnostic pruning)`` of a run record."""
    encoder = run.get("encoder")
    if not encoder:  # a record written before runs recorded their encoder
        return run["name"]
    kind = "text-guided" if encoder["scorer_attends_to_text"] else "text-agnostic"
    return f"{run['name']}: {encoder['fusion']} + {encoder['scorer']} ({kind} pruning)"


def parameter_check(runs: Sequence[dict[str, Any]], *, tolerance: float = 0.05) -> dict[str, Any]:
    """Relative parameter-count spread (max/min − 1) over the runs, total and trainable."""
    out: dict[str, Any] = {"tolerance": tolerance}
    for kind in ("total", "trainable"):
        counts = [r["params"][kind] for r in runs]
        spread = max(counts) / min(counts) - 1.0 if counts and min(counts) else 0.0
        out[kind] = {
            "min": min(counts, default=0),
            "max": max(counts, default=0),
            "spread": spread,
            "within_tolerance": spread <= tolerance,
        }
    return out


def run_ablation(
    settings: BenchSettings,
    *,
    keep_tokens: int = 8,
    variants: Sequence[str] | None = None,
    timing: bool = True,
    out: Path | None = None,
) -> dict[str, Any]:
    """Train, evaluate and time every variant; write JSON/markdown/PNG into ``out`` if given."""
    start = time.perf_counter()
    runs = []
    for spec in ablation_specs(keep_tokens, variants, settings=settings):
        record = train_and_evaluate(spec, settings, timing=timing)
        runs.append(record)
        log.info("%s: %s", spec.name, {k: v.get("accuracy") for k, v in record["sets"].items()})
    result = {
        "experiment": "fusion ablation",
        "command": "python -m textvision.bench.experiments.ablation "
        + _flags(settings, keep_tokens, variants),
        "settings": settings.describe(),
        "keep_tokens": keep_tokens,
        "runs": runs,
        "parameters": parameter_check(runs),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    if out is not None:
        write_ablation(result, out)
    return result


def _flags(settings: BenchSettings, keep_tokens: int, variants: Sequence[str] | None) -> str:
    default = BenchSettings()
    flags = [f"--steps {settings.steps}", f"--keep-tokens {keep_tokens}", f"--test-size {settings.test_size}"]
    if settings.batch_size is not None:
        flags.append(f"--batch-size {settings.batch_size}")
    if settings.seed != default.seed:
        flags.append(f"--seed {settings.seed}")
    if variants is not None:
        flags.append("--variants " + " ".join(variants))
    return " ".join(flags)


def ablation_markdown(result: dict[str, Any]) -> str:
    """The ablation table (one row per variant) with the settings and the parameter check."""
    runs = result["runs"]
    lines = [
        "| variant | magnifier acc | mmvp-pairs acc | mmvp-pairs pair acc | tokens to LM | "
        "encoder ms/img (min / median) | answer loss: real / shuffled images | params total | "
        "params trainable | train s (s/step) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        mag, mmvp = r["sets"].get("magnifier", {}), r["sets"].get("mmvp_pairs", {})
        timing = r.get("encoder_time")
        ms = "–" if not timing else f"{timing['ms_per_image_min']:.2f} / {timing['ms_per_image_median']:.2f}"
        dep = r.get("image_dependence", {}).get("magnifier")
        losses = "–" if not dep else f"{dep['loss']:.4f} / {dep['loss_shuffled_images']:.4f}"
        lines.append(
            f"| {run_label(r)} | {pct(mag.get('accuracy'))} | {pct(mmvp.get('accuracy'))} | "
            f"{pct(mmvp.get('pair_accuracy'))} | {r['visual_tokens_to_lm']} | {ms} | {losses} | "
            f"{r['params']['total']:,} | {r['params']['trainable']:,} | {r['seconds']['fit']} "
            f"({r['seconds'].get('per_train_step') or '–'}) |"
        )
    first = runs[0] if runs else {"sets": {}}
    mag, mmvp = first["sets"].get("magnifier", {}), first["sets"].get("mmvp_pairs", {})
    lines.append(
        f"| *chance* | {pct(mag.get('chance'))} | {pct(mmvp.get('chance'))} | {pct(mmvp.get('pair_chance'))} "
        "| | | | | | |"
    )
    params = result["parameters"]
    s = result["settings"]
    items = mag.get("items"), mmvp.get("items")
    cached = sum(bool(r.get("cached")) for r in runs)
    flat = [run_label(r) for r in runs if not above_chance(r)]
    threads = next((r["encoder_time"]["torch_threads"] for r in runs if r.get("encoder_time")), "?")
    notes = [
        "",
        f"Command: `{result['command']}` (wall {result['wall_seconds']} s for this invocation; "
        f"{cached} of {len(runs)} runs read from the run cache; their training time: `train s`). "
        f"Each run: {s['steps']} steps, seed {s['seed']}, base config `{s['base_config']}`; "
        f"held-out test: {items[0]} magnifier items, {items[1]} mmvp-pairs items "
        f"({mmvp.get('pairs')} pairs), option log-likelihood scoring.",
        f"Parameters: total spread {100 * params['total']['spread']:.2f}% "
        f"({'within' if params['total']['within_tolerance'] else 'OUTSIDE'} "
        f"{100 * params['tolerance']:.0f}%; all weights incl. the frozen MiniLM text encoder and the LM); "
        f"trainable spread {100 * params['trainable']['spread']:.2f}% "
        f"({'within' if params['trainable']['within_tolerance'] else 'outside'} "
        f"{100 * params['tolerance']:.0f}%; the fusion layers are the difference).",
        "Encoder time: vision side with fusion and pruning, text features precomputed, batch "
        f"{s['timing_batch']}, min / median of {s['timing_repeats']} forwards, CPU "
        f"({threads} torch threads; shared machine, so read the min).",
        "Answer loss real / shuffled images: mean answer-token loss on the first 64 held-out magnifier "
        "items with their own images vs. the images rolled by one (same questions); equal values mean "
        "the LM does not use the image at all.",
    ]
    if flat:
        notes.append(
            f"**At chance** (no headline metric more than 5 points above its chance level): {', '.join(flat)}"
            + (
                " — no variant learned the task at these settings, so this table cannot rank the fusions."
                if len(flat) == len(runs)
                else "."
            )
        )
    return "\n".join(lines + notes)


def write_ablation(result: dict[str, Any], out: Path) -> None:
    write_result(
        result,
        out,
        "ablation",
        title="Fusion ablation (synthetic sets, CPU)",
        markdown=ablation_markdown(result),
        plot=plot_ablation,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m textvision.bench.experiments.ablation",
        description="Train every fusion variant at one visual-token budget and evaluate it on the "
        "held-out synthetic sets.",
    )
    add_common_arguments(parser)
    parser.add_argument("--keep-tokens", type=int, default=8, help="patches kept after pruning (CLS on top)")
    parser.add_argument(
        "--variants", nargs="+", default=None, help="overlay names in --variant-configs (default: every one)"
    )
    parser.add_argument("--no-timing", action="store_true", help="skip the encoder timing")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.variants or ()) - set(variant_names(args.variant_configs)))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {variant_names(args.variant_configs)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run_ablation(
        settings_from_args(args),
        keep_tokens=args.keep_tokens,
        variants=args.variants,
        timing=not args.no_timing,
        out=args.out,
    )


if __name__ == "__main__":
    main()
