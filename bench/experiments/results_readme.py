"""Regenerate the README's "Results" section from the JSON/markdown files in ``results/``.

    python -m textvision.bench.experiments.results_readme --out results     # -> results/README_results.md

Every number comes from a file a bench command wrote, and every table is printed with the command
that regenerates it; a missing file becomes a "not run yet" line with its command, never a stale
number. The caveats (synthetic data, small models, CPU, GPU numbers not measured here) head the
section.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textvision.bench.experiments.ablation import ablation_markdown
from textvision.bench.experiments.budget_sweep import sweep_markdown
from textvision.bench.experiments.pruning_curve import curve_markdown
from textvision.bench.experiments.runs import above_chance

__all__ = ["build_results_section", "main"]

CAVEATS = """\
**Read these numbers with their caveats.** They are measured on *synthetic* data (the seeded
magnifier and mmvp-pairs sets of `textvision.data`, 64 px canvases with 12 small objects), with
*small* models trained from scratch for the steps each table states (a 4-block, 128-wide ViT; a 2-layer,
128-wide LM; the real pretrained MiniLM-L6 text encoder, frozen), on a *2-core CPU shared with
other jobs* — so accuracies say which mechanism works under a token budget, not what a real VLM
scores on MMVP or MagnifierBench, and CPU times are noisy (min of several runs is quoted). GPU
numbers (kernel throughput, % of roofline) were **not measured here**: no GPU was available; the
cost model gives the analytic FLOPs and bytes, and `python -m textvision.bench.perf.kernels` measures
them on a CUDA machine."""

_SECTIONS = (
    # (json, title, regenerate command, formatter, figure)
    ("ablation.json", "Fusion ablation at a fixed visual-token budget", ablation_markdown, "ablation.png"),
    (
        "ablation_budget_sweep.json",
        "Where the gap closes: visual-token budget sweep",
        sweep_markdown,
        "ablation_budget_sweep.png",
    ),
    (
        "pruning_curve.json",
        "Pruning curve: accuracy and encoder time vs. keep ratio",
        curve_markdown,
        "pruning_curve.png",
    ),
)
_DEFAULT_COMMANDS = {
    "ablation.json": "python -m textvision.bench.experiments.ablation --out results",
    "ablation_budget_sweep.json": "python -m textvision.bench.experiments.budget_sweep --out results",
    "pruning_curve.json": "python -m textvision.bench.experiments.pruning_curve --out results",
}
# Markdown files other bench commands write, quoted as they are: (file, title, command)
_QUOTED = (
    (
        "cost_model.md",
        "Analytic cost model (FLOPs and bytes)",
        "python -m textvision.bench.perf.cost_model --out results",
    ),
    (
        "kernels.md",
        "Attention kernels (CPU reference and Triton)",
        "python -m textvision.bench.perf.kernels --out results",
    ),
    ("encoder.md", "Encoder throughput (ViT-S/16, 224 px)", "python -m textvision.bench.perf.encoder"),
    (
        "train_step.md",
        "Training-step throughput (demo model)",
        "python -m textvision.bench.perf.train_step --out results",
    ),
    ("data.md", "Synthetic data generation", "python -m textvision.bench.perf.data --out results"),
    ("demo/metrics.md", "The CPU demo (colour questions)", "textvision demo"),
    (
        "demo_all_categories/metrics.md",
        "The CPU demo recipe with every question category",
        "textvision demo --output_dir results/demo_all_categories "
        "--data.init_args.magnifier_categories [colour,shape,position] "
        "--data.init_args.pair_categories [colour,orientation,position,presence]"
        " (recorded as results/demo at commit 1411411)",
    ),
    (
        "demo_curriculum/metrics.md",
        "The CPU demo with the object curriculum",
        "textvision demo --output_dir results/demo_curriculum --trainer.max_steps 1500 "
        "--data.init_args.objects_warmup_steps 900 (configs/demo.yaml of commit 80ebe16: encoder "
        "groups at the LM's learning rate)",
    ),
    (
        "demo_long/metrics.md",
        "The CPU demo recipe with every question category, 6,000 steps",
        "textvision demo --output_dir results/demo_long --trainer.max_steps 6000 "
        "--trainer.val_check_interval 1000 --data.init_args.objects_warmup_steps 3500 "
        "--data.init_args.magnifier_categories [colour,shape,position] "
        "--data.init_args.pair_categories [colour,orientation,position,presence]",
    ),
    (
        "one_object_colour_encoder_lr_1e-4/metrics.md",
        "One-object colour questions, encoder groups at 1e-4 (the demo's rates)",
        "textvision demo --output_dir results/one_object_colour_encoder_lr_1e-4 --trainer.max_steps 300 "
        "--trainer.val_check_interval 300 --data.init_args.num_objects 1 "
        "--data.init_args.objects_warmup_steps 0 --data.init_args.magnifier_categories [colour] "
        "--data.init_args.pair_categories [colour] --object-counts (the two category flags are now "
        "demo.yaml's defaults)",
    ),
    (
        "one_object_colour_encoder_lr_1e-3/metrics.md",
        "One-object colour questions, encoder groups at the old rates (1e-3, fusion 2e-3)",
        "the command above with --output_dir results/one_object_colour_encoder_lr_1e-3 "
        "--model.lr_backbone 1e-3 --model.lr_fusion 2e-3 --model.lr_text_adapter 2e-3",
    ),
    (
        "demo_minilm_decoder_curriculum/metrics.md",
        "The CPU demo with a pretrained MiniLM decoder LM and the object curriculum",
        "textvision demo --config results/demo_minilm_decoder_curriculum/config.yaml "
        "--output_dir results/demo_minilm_decoder_curriculum",
    ),
    (
        "grounding_probe_cls_mean.md",
        "Grounding probe: CLS + mean readout (encoder only, no LM)",
        "python -m textvision.bench.experiments.grounding_probe --out results --tag grounding_probe_cls_mean "
        "--readouts cls_mean --steps 600 --threads 1",
    ),
    (
        "grounding_probe_no_curriculum.md",
        "Grounding probe: 12-object scenes for 1,600 steps, no curriculum (control)",
        "python -m textvision.bench.experiments.grounding_probe --out results "
        "--tag grounding_probe_no_curriculum --categories colour --num-objects 12 --readouts cls_mean "
        "--steps 1600 --threads 1",
    ),
    (
        "grounding_probe_curriculum.md",
        "Grounding probe: a 1 -> 12 objects curriculum",
        "python -m textvision.bench.experiments.grounding_probe --out results "
        "--tag grounding_probe_curriculum --categories colour --num-objects 12 --readouts cls_mean "
        "--curriculum-steps 1000 --steps 1600 "
        "(and `--readouts text_query --fusion none`, see the file)",
    ),
)


def _demote(markdown: str, levels: int = 2) -> str:
    """Drop a leading H1 and push the remaining headings down ``levels`` levels."""
    lines = markdown.strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(
        re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + levels) + " ", line) for line in lines
    ).strip()


def _text_agnostic(run: dict[str, Any]) -> bool:
    encoder = run.get("encoder") or {}
    return encoder.get("fusion_attends_to_text") is False and encoder.get("scorer_attends_to_text") is False


def _headline(name: str, result: dict[str, Any]) -> list[str]:
    """One or two sentences that state what the table shows, from the numbers themselves."""
    out = []
    if name == "ablation.json":
        runs = result["runs"]
        if runs and not any(above_chance(r) for r in runs):
            out.append(
                "- **Every variant is at chance level** on the held-out sets (within 5 points of chance on "
                "every headline metric): at these settings the models did not learn the task, so the "
                "ablation does not rank the fusion variants. The differences below are noise."
            )
        # the text-agnostic run (its fusion and scorer classes declare no attention to the text)
        base = next((r for r in runs if _text_agnostic(r)), None)
        if base is not None:
            for r in runs:
                if r is base:
                    continue
                mag = r["sets"]["magnifier"]["accuracy"] - base["sets"]["magnifier"]["accuracy"]
                pair = r["sets"]["mmvp_pairs"].get("pair_accuracy", 0) - base["sets"]["mmvp_pairs"].get(
                    "pair_accuracy", 0
                )
                out.append(
                    f"- {r['name']} vs. {base['name']}: {100 * mag:+.1f} points magnifier accuracy, "
                    f"{100 * pair:+.1f} points mmvp-pairs pair accuracy "
                    f"({r['visual_tokens_to_lm']} visual tokens to the LM for both)."
                )
    elif name == "ablation_budget_sweep.json":
        gap = result["gap"]
        for row in gap["rows"]:
            g = row["gaps"]
            mag, pair = g.get("magnifier/accuracy"), g.get("mmvp_pairs/pair_accuracy")
            if mag is None or pair is None:
                continue
            out.append(
                f"- {row['keep_tokens']} patches kept: gap {100 * mag:+.1f} points magnifier accuracy, "
                f"{100 * pair:+.1f} points mmvp-pairs pair accuracy."
            )
        out.append(f"- Verdict: {gap['verdict']}.")
        target = "met" if gap["target_met_below_salient_details"] else "**not met**"
        out.append(
            f"- Target (≥ {100 * gap['target']:.0f} points on both below "
            f"{gap['salient_details']} kept patches): {target}."
        )
    elif name == "pruning_curve.json":
        series = result["series"]
        plain = next((points for label, points in series.items() if label.startswith("none model")), None)
        aware = next(
            (points for label, points in series.items() if label.endswith("text-guided scorer")), None
        )
        if plain and aware:
            base = next((p for p in plain if p["keep_ratio"] == 1.0), None)
            base_ms = (base or {}).get("encoder_time", {}).get("ms_per_image_min")
            for point in aware:
                ms = point.get("encoder_time", {}).get("ms_per_image_min")
                if base_ms and ms and point["keep_ratio"] < 1.0:
                    out.append(
                        f"- Text-aware, text-guided pruning to {point['keep_ratio']:g} of the patches: "
                        f"{base_ms / ms:.2f}x the speed of the plain (`none`, unpruned) encoder "
                        f"({ms:.2f} vs. {base_ms:.2f} ms/image, min of the timed forwards)."
                    )
    return out


def build_results_section(results_dir: str | Path, *, heading_level: int = 2) -> str:
    """The markdown "Results" section for ``results_dir`` (figures linked relative to the repo root)."""
    results_dir = Path(results_dir)
    h = "#" * heading_level
    parts = [f"{h} Results", "", CAVEATS, ""]
    for filename, title, formatter, figure in _SECTIONS:
        parts.append(f"{h}# {title}")
        parts.append("")
        path = results_dir / filename
        if not path.is_file():
            parts += [f"Not run yet: `{_DEFAULT_COMMANDS[filename]}`.", ""]
            continue
        result = json.loads(path.read_text())
        parts += _headline(filename, result)
        parts += ["", formatter(result), ""]
        if (results_dir / figure).is_file():
            parts += [f"![{title}]({results_dir.as_posix()}/{figure})", ""]
    for filename, title, command in _QUOTED:
        path = results_dir / filename
        parts.append(f"{h}# {title}")
        parts.append("")
        if path.is_file():
            parts += [f"Command: `{command}` (quoted from `{results_dir.as_posix()}/{filename}`).", ""]
            parts += [_demote(path.read_text(), levels=heading_level + 1), ""]
        else:
            parts += [f"Not run yet: `{command}`.", ""]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m textvision.bench.experiments.results_readme",
        description="Write the README's Results section (markdown) from the bench result files.",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results"), help="results folder to read and write into"
    )
    parser.add_argument("--file", default="README_results.md", help="output file name inside --out")
    args = parser.parse_args(argv)
    if not args.out.is_dir():
        parser.error(f"{args.out} is not a folder (run the bench commands first)")
    target = args.out / args.file
    target.write_text(build_results_section(args.out))
    print(f"wrote {target}")
    return target


if __name__ == "__main__":
    main()
