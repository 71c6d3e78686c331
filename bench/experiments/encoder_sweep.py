"""The encoder-level experiment: does the question have to enter the ViT? Budgets × variants × seeds.

    python -m textvision.bench.experiments.encoder_sweep --out results/encoder_sweep   # the whole sweep
    python -m textvision.bench.experiments.encoder_sweep --out results/encoder_sweep \
        --variants gated_xattn --budgets 4

Every cell trains **the same question-aware reader** (:class:`textvision.vlm.reader.QuestionReader`)
on the tokens one encoder hands over, on the magnifier set (12 glyphs, every question category),
and scores it on the fixed held-out test split. The encoder is ``configs/demo.yaml`` (the frozen,
text-aligned pretrained ViT) with one variant overlay of ``configs/ablation/*.yaml`` and the
cell's budget, built through the CLI's own parser (``TextVisionCLI(args=[...], run=False)``), so
the configs are the only model definition. The variants are the overlay files (each one's header
says where the question enters: nowhere, only the selection of the final patches, or every
block); a new file is a new row.

Budgets ``k`` kept patches (+ CLS); ``k`` at or above the patch count (64) keeps every patch (no
pruning, so variants that differ only in the selection are one model there and only one of
them is run, :func:`unpruned_duplicates`).

**The same grounding signal for every variant**: the cross-entropy of the reader's attention at
the queried object's token (when it was kept) for every encoder, and of the selection at the
queried patch where the selection is trainable (``text_similarity``). So the comparison measures
where the question enters, not who got supervision.

Each cell's record is a JSON file under ``<out>/cells/`` keyed by its settings: a sweep that is
stopped resumes where it was (cells already recorded are read, not retrained); the tables
(``encoder_sweep.md``/``.json``, mean and every seed, verdicts from the worst seed) and the plot
are rebuilt from the records. A plain training loop, as in ``grounding_probe``: a fixed number of
optimizer steps, no checkpoints to manage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from textvision.bench.experiments.runs import ENCODER, describe_encoder
from textvision.bench.experiments.variants import VARIANT_CONFIGS as VARIANTS_DIR
from textvision.bench.experiments.variants import variant_names
from textvision.train.cli import parse_config

__all__ = ["CellSpec", "build_encoder", "cells", "main", "run_cell", "summarise", "unpruned_duplicates"]

ROOT = Path(__file__).resolve().parents[2]
BASE_CONFIG = ROOT / "configs" / "demo.yaml"
DEFAULT_BUDGETS = (2, 4, 8, 16, 64)


@dataclass(frozen=True)
class CellSpec:
    """One cell of the sweep: a variant overlay, a budget and a seed, and the training settings."""

    variant: str
    budget: int
    seed: int
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    lr_scorer: float = 1e-4
    grounding_weight: float = 1.0
    test_size: int = 512
    base_config: str = str(BASE_CONFIG)

    @property
    def name(self) -> str:
        return f"{self.variant}-k{self.budget}-s{self.seed}"

    def settings(self) -> dict[str, Any]:
        """The spec as recorded: every field, the base config as a path inside the repository."""
        return {**asdict(self), "base_config": _repo_relative(self.base_config)}

    def key(self) -> str:
        """A hash of the settings and of what the encoder and the scenes are built from: the base
        config's ``model.vlm.init_args.encoder`` and ``data`` sections and the variant overlay, as
        parsed YAML. Comments, the base config's trainer settings (the demo's steps, logging) and
        the checkout's path are left out, so editing the demo's schedule or sweeping from a fresh
        clone reads the cells already recorded."""
        base = yaml.safe_load(Path(self.base_config).read_text())
        overlay = yaml.safe_load((VARIANTS_DIR / f"{self.variant}.yaml").read_text())
        blob = json.dumps(
            {
                "spec": self.settings(),
                "encoder": base["model"]["vlm"]["init_args"]["encoder"],
                "data": base["data"],
                "overlay": overlay,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _repo_relative(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside it (checkouts differ in where they are)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def build_encoder(variant: str, budget: int, *, seed: int, base_config: str | Path = BASE_CONFIG):
    """``(encoder, scene)``: the encoder of ``base_config`` + ``configs/ablation/<variant>.yaml`` at
    ``budget`` kept patches (all of them: no pruning), through the CLI's parser and instantiation,
    and the data module's scene (canvas, objects, vocabulary) the reader is trained on."""
    import warnings

    from textvision.train.cli import TextVisionCLI

    overlay = VARIANTS_DIR / f"{variant}.yaml"
    if not overlay.is_file():
        raise FileNotFoundError(f"no variant {variant!r}: choose from {variant_names()}")
    args = ["-c", str(base_config), "-c", str(overlay), "--seed_everything", str(seed)]
    args += [
        "--trainer.logger",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.callbacks",
        "[]",
    ]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        no_pruning = "model: {vlm: {init_args: {encoder: {init_args: {prune_at: [], keep_tokens: null}}}}}"
        probe = TextVisionCLI(args=[*args, "-c", no_pruning], run=False)
        if budget >= probe.model.vlm.encoder.num_tokens() - probe.model.vlm.encoder.num_prefix_tokens:
            cli = probe
        else:
            cli = TextVisionCLI(args=[*args, f"--{ENCODER}.keep_tokens", str(budget)], run=False)
    return cli.model.vlm.encoder, cli.datamodule.scene


def _target_positions(kept: torch.Tensor | None, target: torch.Tensor, prefix: int) -> torch.Tensor:
    """Index of the queried patch among the encoder's output tokens, ``-1`` where it was pruned."""
    if kept is None:
        return target + prefix
    match = kept == target.unsqueeze(1)
    return torch.where(match.any(1), match.float().argmax(1) + prefix, -1)


def _forward(encoder, reader, batch: dict[str, Any]):
    from textvision.pretrain.alignment import mean_pool
    from textvision.vlm.place import place_ids

    features = encoder.encode_text(batch["instruction"])
    out = encoder(batch["image"], text_features=features)
    sentence = mean_pool(features.hidden, features.mask)
    batch_size, length = out.tokens.shape[:2]
    places = place_ids(
        out.kept_indices,
        num_prefix_tokens=encoder.num_prefix_tokens,
        num_patches=reader.place.num_places - 1,
        batch=batch_size,
        length=length,
        device=out.tokens.device,
    )
    read = reader(out.tokens, sentence, batch["options"], places)
    positions = _target_positions(out.kept_indices, batch["target_patch"], encoder.num_prefix_tokens)
    return out, read, positions


def run_cell(spec: CellSpec) -> dict[str, Any]:
    """Train the reader (and the encoder's trainable parts) for ``spec.steps``; test; return a record."""
    from textvision.data.collate import collate_samples
    from textvision.data.magnifier import MAGNIFIER_CATEGORIES, MagnifierGenerator
    from textvision.pruning.selection import grounding_loss
    from textvision.vlm.reader import QuestionReader

    started = time.perf_counter()
    torch.manual_seed(spec.seed)
    encoder, scene = build_encoder(spec.variant, spec.budget, seed=spec.seed, base_config=spec.base_config)
    generator = MagnifierGenerator(scene, categories=MAGNIFIER_CATEGORIES)
    vocabulary = [w for c in MAGNIFIER_CATEGORIES for w in generator.vocabulary(c)]
    torch.manual_seed(spec.seed)  # the reader starts alike for every variant of one seed
    reader = QuestionReader(
        visual_width=encoder.width,
        text_width=encoder.text_dim,
        vocabulary=vocabulary,
        grid=(scene.grid, scene.grid),
    )
    groups = encoder.parameter_groups()
    selection_trains = encoder.pruner.enabled and bool(groups["scorer"])
    encoder_params = [p for name, ps in groups.items() if name != "scorer" for p in ps]
    param_groups = [{"params": list(reader.parameters()), "lr": spec.lr}]
    if encoder_params:
        param_groups.append({"params": encoder_params, "lr": spec.lr})
    if groups["scorer"]:
        param_groups.append({"params": groups["scorer"], "lr": spec.lr_scorer})
    params = [p for g in param_groups for p in g["params"]]
    optimizer = torch.optim.AdamW(param_groups, weight_decay=0.01)
    warmup = max(1, spec.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warmup) / max(1, spec.steps - warmup)))
        ),
    )
    curve = []
    encoder.train()
    for step in range(1, spec.steps + 1):
        indices = range((step - 1) * spec.batch_size, step * spec.batch_size)
        batch = collate_samples(generator.generate(indices, split="train", seed=spec.seed))
        out, read, positions = _forward(encoder, reader, batch)
        loss = F.cross_entropy(read.logits, batch["label"])
        kept = positions >= 0
        reader_grounding = (
            F.nll_loss(read.attention[kept].clamp_min(1e-12).log(), positions[kept])
            if bool(kept.any())
            else 0.0
        )
        total = loss + spec.grounding_weight * reader_grounding
        if selection_trains:
            total = total + spec.grounding_weight * grounding_loss(
                out.selection_logits, batch["target_patch"]
            )
        if not torch.isfinite(total):
            raise FloatingPointError(f"cell {spec.name}: non-finite loss at step {step}")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == spec.steps:
            curve.append(
                {"step": step, "answer_loss": round(loss.item(), 4), "total_loss": round(total.item(), 4)}
            )
    trained = time.perf_counter()
    metrics = evaluate(encoder, reader, generator, spec)
    return {
        "spec": spec.settings(),
        "name": spec.name,
        "key": spec.key(),
        **metrics,
        "curve": curve,
        "trainable_parameters": {
            "reader": sum(p.numel() for p in reader.parameters()),
            "encoder": sum(p.numel() for p in encoder_params) + sum(p.numel() for p in groups["scorer"]),
        },
        "reader_class": f"{type(reader).__module__}.{type(reader).__qualname__}",
        "seconds": {"train": round(trained - started, 1), "total": round(time.perf_counter() - started, 1)},
        "torch_threads": torch.get_num_threads(),
    }


@torch.no_grad()
def evaluate(encoder, reader, generator, spec: CellSpec) -> dict[str, Any]:
    """Accuracy (overall and per category), kept-target rate and reader-on-target rate on the
    fixed test split (seed 0 for every cell, so all cells score the same items)."""
    from textvision.data.collate import collate_samples
    from textvision.pruning.selection import kept_target_rate

    encoder.eval()
    reader.eval()
    correct, categories, kept, on_target = [], [], [], []
    for start in range(0, spec.test_size, 128):
        indices = range(start, min(spec.test_size, start + 128))
        batch = collate_samples(generator.generate(indices, split="test", seed=0))
        out, read, positions = _forward(encoder, reader, batch)
        correct.append(read.logits.argmax(-1) == batch["label"])
        categories += batch["category"]
        kept.append(kept_target_rate(out.kept_indices, batch["target_patch"], reduce=False))
        on_target.append((read.attention.argmax(-1) == positions) & (positions >= 0))
    correct_t = torch.cat(correct)
    by_category = {
        c: correct_t[torch.tensor([x == c for x in categories])].float().mean().item()
        for c in sorted(set(categories))
    }
    return {
        "accuracy": correct_t.float().mean().item(),
        "by_category": by_category,
        "kept_target": torch.cat(kept).float().mean().item(),
        "reader_on_target": torch.cat(on_target).float().mean().item(),
        "chance": 1.0 / generator.num_options,
        "test_items": int(correct_t.numel()),
    }


# ------------------------------------------------------------------------------ the sweep
#: the encoder's pruning settings: with every patch kept none of them plays a part
_PRUNING_SETTINGS = (
    "prune_at",
    "keep_ratio",
    "keep_tokens",
    "scorer",
    "similarity",
    "merge_dropped",
    "keep_order",
    "relevance_embedding",
)


def unpruned_duplicates(variants: Sequence[str], base_config: str | Path = BASE_CONFIG) -> set[str]:
    """The variants that keeping every patch are the same encoder as another one: their merged
    configs differ only in the pruning settings. Of each such group the one whose scorer does not
    attend to the text is kept (the first when none), the others are returned."""
    groups: dict[str, list[str]] = {}
    text_blind: dict[str, bool] = {}
    for variant in variants:
        config, _ = parse_config(["-c", str(base_config), "-c", str(VARIANTS_DIR / f"{variant}.yaml")])
        encoder = config[ENCODER].clone()
        for key in _PRUNING_SETTINGS:
            encoder[key] = None
        groups.setdefault(json.dumps(encoder.as_dict(), sort_keys=True, default=str), []).append(variant)
        text_blind[variant] = not describe_encoder(config)["scorer_attends_to_text"]
    out: set[str] = set()
    for group in groups.values():
        kept = next((v for v in group if text_blind[v]), group[0])
        out |= set(group) - {kept}
    return out


def cells(
    variants: Sequence[str],
    budgets: Sequence[int],
    seeds: Sequence[int],
    *,
    all_patches: int = 64,
    **settings,
) -> list[CellSpec]:
    """The sweep's cells, by budget then seed; at ``all_patches`` (no pruning) the
    :func:`unpruned_duplicates` are skipped (the same model as a variant that is run)."""
    duplicates = unpruned_duplicates(variants, settings.get("base_config", BASE_CONFIG))
    out = []
    for budget in budgets:
        for seed in seeds:
            for variant in variants:
                if budget >= all_patches and variant in duplicates:
                    continue
                out.append(CellSpec(variant, int(budget), int(seed), **settings))
    return out


def _cell_file(out: Path, spec: CellSpec) -> Path:
    return out / "cells" / f"{spec.name}.json"


def _run_and_record(args: tuple[CellSpec, str, int]) -> dict[str, Any]:
    spec, out, threads = args
    torch.set_num_threads(threads)
    record = run_cell(spec)
    path = _cell_file(Path(out), spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    print(
        f"{spec.name}: accuracy {100 * record['accuracy']:.1f}%, kept target "
        f"{100 * record['kept_target']:.1f}%, {record['seconds']['total']} s",
        flush=True,
    )
    return record


def cached(out: Path, spec: CellSpec) -> dict[str, Any] | None:
    """The recorded result of ``spec`` if it exists and was made with the same settings and YAMLs."""
    path = _cell_file(out, spec)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("key") == spec.key() else None


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per (variant, budget): mean, min (worst seed) and each seed's accuracy and kept-target rate."""
    table: dict[str, dict[str, Any]] = {}
    for r in records:
        spec = r["spec"]
        cell = table.setdefault(spec["variant"], {}).setdefault(str(spec["budget"]), {"seeds": {}})
        cell["seeds"][str(spec["seed"])] = {
            "accuracy": r["accuracy"],
            "kept_target": r["kept_target"],
            "by_category": r["by_category"],
        }
    for variant in table.values():
        for cell in variant.values():
            accs = [s["accuracy"] for s in cell["seeds"].values()]
            kept = [s["kept_target"] for s in cell["seeds"].values()]
            cell.update(
                mean=sum(accs) / len(accs),
                worst=min(accs),
                kept_mean=sum(kept) / len(kept),
                kept_worst=min(kept),
            )
    return table


def to_markdown(table: dict[str, Any], budgets: Sequence[int]) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    lines = [
        "Magnifier test accuracy (%), 512 items, 12 objects, chance 25 %: **worst seed** / mean "
        "(each seed), and the kept-target rate (%, worst seed).",
        "",
        "| variant | " + " | ".join(f"k = {b}" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for variant in sorted(table):
        cells_md = []
        for b in budgets:
            cell = table[variant].get(str(b))
            if cell is None:
                cells_md.append("–")
                continue
            seeds = ", ".join(pct(s["accuracy"]) for _, s in sorted(cell["seeds"].items()))
            cells_md.append(
                f"**{pct(cell['worst'])}** / {pct(cell['mean'])} ({seeds}); kept {pct(cell['kept_worst'])}"
            )
        lines.append(f"| {variant} | " + " | ".join(cells_md) + " |")
    return "\n".join(lines) + "\n"


def plot(table: dict[str, Any], budgets: Sequence[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for variant in sorted(table):
        xs = [b for b in budgets if str(b) in table[variant]]
        if not xs:
            continue
        mean = [100 * table[variant][str(b)]["mean"] for b in xs]
        low = [100 * table[variant][str(b)]["worst"] for b in xs]
        high = [100 * max(s["accuracy"] for s in table[variant][str(b)]["seeds"].values()) for b in xs]
        (line,) = axis.plot(xs, mean, marker="o", label=variant)
        axis.fill_between(xs, low, high, color=line.get_color(), alpha=0.2)
    axis.axhline(25, color="grey", linestyle=":", label="chance")
    axis.set_xscale("log", base=2)
    axis.set_xticks(list(budgets), [str(b) for b in budgets])
    axis.set_xlabel("kept patches k (+ CLS)")
    axis.set_ylabel("magnifier accuracy (%)")
    axis.set_title("Encoder-level sweep: one reader, seeds' spread shaded")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/encoder_sweep")
    parser.add_argument("--variants", nargs="+", default=None, help="default: every configs/ablation/*.yaml")
    parser.add_argument("--budgets", nargs="+", type=int, default=list(DEFAULT_BUDGETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=CellSpec.steps)
    parser.add_argument("--batch-size", type=int, default=CellSpec.batch_size)
    parser.add_argument("--test-size", type=int, default=CellSpec.test_size)
    parser.add_argument(
        "--base-config", default=str(BASE_CONFIG), help="the VLM config the encoders come from"
    )
    parser.add_argument("--all-patches", type=int, default=64, help="patches per image of the base config")
    parser.add_argument("--workers", type=int, default=1, help="cells trained in parallel (processes)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    args = parser.parse_args(argv)
    variants = args.variants or variant_names()
    unknown = sorted(set(variants) - set(variant_names()))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {variant_names()}")
    out = Path(args.out)
    specs = cells(
        variants,
        args.budgets,
        args.seeds,
        all_patches=args.all_patches,
        base_config=str(Path(args.base_config).resolve()),
        steps=args.steps,
        batch_size=args.batch_size,
        test_size=args.test_size,
    )
    todo = [s for s in specs if cached(out, s) is None]
    print(f"{len(specs)} cells, {len(specs) - len(todo)} recorded, {len(todo)} to train", flush=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.workers))
    started = time.perf_counter()
    jobs = [(s, str(out), threads) for s in todo]
    if args.workers > 1 and len(jobs) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
            for _ in pool.imap_unordered(_run_and_record, jobs):
                pass
    else:
        for job in jobs:
            _run_and_record(job)
    records = [r for r in (cached(out, s) for s in specs) if r is not None]
    table = summarise(records)
    meta = {
        "command": "python -m textvision.bench.experiments.encoder_sweep "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "cells": len(records),
        "trained_now": len(todo),
        "wall_seconds_now": round(time.perf_counter() - started, 1),
        "cell_seconds_total": round(sum(r["seconds"]["total"] for r in records), 1),
        "platform": platform.platform(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "encoder_sweep.json").write_text(json.dumps({"meta": meta, "table": table}, indent=2) + "\n")
    (out / "encoder_sweep.md").write_text(
        "# Encoder-level sweep (one question-aware reader for every encoder)\n\n"
        f"`{meta['command']}`\n\n" + to_markdown(table, args.budgets)
    )
    plot(table, args.budgets, out / "encoder_sweep.png")
    print(to_markdown(table, args.budgets))
    return {"meta": meta, "table": table}


if __name__ == "__main__":
    main()
