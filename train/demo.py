"""``textvision demo``: the offline CPU demo, end to end.

1. fit ``configs/demo.yaml`` (real MiniLM text encoder, small ViT from scratch, small LM from a
   config, the synthetic magnifier + mmvp-pairs sets) through :class:`TextVisionCLI`;
2. test the final weights on the fixed held-out test splits of both sets (option scoring), and
   again on held-out scenes with fewer objects (``--object-counts``, default 1 and 4): the
   12-object sets say whether the model grounds the question, the easier ones say what it has
   learned short of that (reading one object, picking one of a few);
3. write ``metrics.json`` (accuracy, pair accuracy, chance levels, token budget, wall time, peak
   memory), ``metrics.md`` (a markdown table) and relevance/pruning PNGs for a few test examples
   with the model's answer into ``--output_dir``.

Extra arguments are passed to LightningCLI, e.g. ``textvision demo --trainer.max_steps 50``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "category_table",
    "default_config",
    "evaluate_with_fewer_objects",
    "main",
    "metrics_table",
    "objects_table",
    "run_demo",
]


def default_config() -> Path:
    """``configs/demo.yaml`` in the working directory, else in the source checkout."""
    candidates = [Path("configs/demo.yaml"), Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        "configs/demo.yaml not found in the working directory or the source checkout; "
        "pass --config PATH (the file ships in the repository's configs/ folder)"
    )


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def metrics_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table of held-out results: accuracy and pair accuracy next to their chance."""
    lines = [
        "| set | items | accuracy | chance | pair accuracy | pair chance | kept target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in results.items():
        lines.append(
            f"| {name} | {m.get('n', 0)} | {_pct(m.get('acc'))} | {_pct(m.get('chance_acc'))} | "
            f"{_pct(m.get('pair_acc'))} | {_pct(m.get('chance_pair_acc'))} | {_pct(m.get('kept_target'))} |"
        )
    return "\n".join(lines)


def category_table(results: dict[str, dict]) -> str:
    """Markdown table of accuracy (and pair accuracy) per question category of every set."""
    lines = [
        "| set | category | items | accuracy | chance | pair accuracy |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, m in results.items():
        for category, c in m.get("by_category", {}).items():
            lines.append(
                f"| {name} | {category} | {c.get('n', 0)} | {_pct(c.get('acc'))} | "
                f"{_pct(c.get('chance_acc'))} | {_pct(c.get('pair_acc'))} |"
            )
    return "\n".join(lines)


def objects_table(by_objects: dict[int, dict[str, dict[str, float]]]) -> str:
    """Markdown table of accuracy per number of objects per image (rows), one column per set."""
    sets = sorted({name for results in by_objects.values() for name in results})
    header = ["objects per image"]
    for name in sets:
        header.append(f"{name} acc (chance)")
        if any("pair_acc" in r.get(name, {}) for r in by_objects.values()):
            header.append(f"{name} pair acc (chance)")
    lines = ["| " + " | ".join(header) + " |", "|" + " ---: |" * len(header)]
    for k in sorted(by_objects):
        cells = [str(k)]
        for name in sets:
            m = by_objects[k].get(name, {})
            cells.append(f"{_pct(m.get('acc'))} ({_pct(m.get('chance_acc'))})")
            if f"{name} pair acc (chance)" in header:
                cells.append(f"{_pct(m.get('pair_acc'))} ({_pct(m.get('chance_pair_acc'))})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate_with_fewer_objects(
    trainer, module, datamodule, counts: list[int]
) -> dict[int, dict[str, dict[str, float]]]:
    """Test ``module`` on held-out scenes with each of ``counts`` objects per image.

    Builds a copy of the synthetic ``datamodule`` (same class, seed, sizes, vocabulary) with
    ``num_objects=k`` and runs ``trainer.test`` on it. Counts above the trained scenes' count are an
    error (the scene grid is sized for it); the trained count itself is skipped (it is the main
    test, whose results the caller already has); non-synthetic data modules have no object count.
    """
    from textvision.train.data_modules import SyntheticDataModule

    if not counts:
        return {}
    if not isinstance(datamodule, SyntheticDataModule):
        raise TypeError(f"--object-counts needs a synthetic data module, got {type(datamodule).__name__}")
    trained = datamodule.scene.num_objects
    bad = [k for k in counts if not 1 <= int(k) <= trained]
    if bad:
        raise ValueError(f"object counts {bad} outside 1..{trained} (the trained scenes' count)")
    out = {}
    # the trained count is the main test, already run; it is not run again
    for k in sorted({int(k) for k in counts} - {trained}):
        # LightningCLI adds bookkeeping keys (`_class_path`, ...) to the saved init arguments.
        args = {name: v for name, v in datamodule.hparams.items() if not name.startswith("_")}
        args.update(num_objects=k, objects_warmup_steps=0)
        easier = type(datamodule)(**args)
        trainer.test(module, datamodule=easier, verbose=False)
        out[k] = module.eval_results["test"]
    return out


@torch.no_grad()
def draw_examples(module, datamodule, out_dir: Path, *, per_set: int = 2) -> list[str]:
    """Relevance heatmap + kept patches for the first ``per_set`` test items of every set, titled
    with the question, the model's option-scored answer and the gold answer."""
    from textvision.data.collate import collate_samples
    from textvision.eval.evaluator import choose_options
    from textvision.visualize import draw_relevance

    vlm = module.vlm.eval()
    encoder = vlm.encoder
    written = []
    for name, dataset in datamodule.test_datasets().items():
        batch = collate_samples([dataset[i] for i in range(per_set)])
        visual, out = vlm.encode(batch["image"], batch["instruction"])
        scores = vlm.language_model.score(visual, batch["prompt"], batch["options"])
        chosen = choose_options(scores, [len(o) for o in batch["options"]])
        for i in range(per_set):
            image = batch["image"][i]
            answer = batch["options"][i][int(chosen[i])] if int(chosen[i]) >= 0 else "(no valid score)"
            verdict = "right" if answer == batch["answer"][i] else "wrong"
            title = f"{batch['instruction'][i]}  model: {answer} ({verdict}), gold: {batch['answer'][i]}"
            path = out_dir / f"{name}_{i}.png"
            figure = draw_relevance(
                image,
                encoder.backbone.patch_grid(image.unsqueeze(0)),
                relevance=None if out.relevance is None else out.relevance[i],
                kept_indices=None if out.kept_indices is None else out.kept_indices[i],
                instruction=title,
                out=path,
            )
            del figure
            written.append(str(path))
    return written


def run_demo(
    config: str | Path,
    output_dir: str | Path,
    *,
    cli_args: list[str] | None = None,
    examples: int = 2,
    object_counts: list[int] | None = None,
) -> dict[str, Any]:
    """Fit, test, and write the demo's JSON, markdown and PNGs; returns the metrics dict."""
    from textvision.train.cli import TextVisionCLI

    start = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # `textvision demo` itself is on sys.argv; LightningCLI only gets the args built here.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        cli = TextVisionCLI(args=["-c", str(config), *(cli_args or [])], run=False)
    built = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fitted = time.perf_counter()
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    tested = time.perf_counter()
    results = cli.model.eval_results["test"]
    pictures = draw_examples(cli.model, cli.datamodule, output_dir, per_set=examples) if examples else []
    by_objects = evaluate_with_fewer_objects(cli.trainer, cli.model, cli.datamodule, object_counts or [])
    if by_objects:
        by_objects[cli.datamodule.scene.num_objects] = results
    encoder = cli.model.vlm.encoder
    metrics = {
        "config": str(config),
        "cli_args": list(cli_args or []),
        "seed": cli.config.get("seed_everything"),
        "test": results,
        "test_by_category": {name: m.get("by_category", {}) for name, m in results.items()},
        "kept_target": {name: m.get("kept_target") for name, m in results.items()},
        "chance_from_data": getattr(cli.datamodule, "chance", None),
        "visual_tokens_to_lm": encoder.num_tokens() if hasattr(encoder, "num_tokens") else None,
        "steps": cli.trainer.global_step,
        "batch_size": getattr(cli.datamodule, "batch_size", None),
        "seconds": {
            "build": round(built - start, 1),
            "fit": round(fitted - built, 1),
            "test": round(tested - fitted, 1),
            "total_in_process": round(time.perf_counter() - start, 1),
        },
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "pictures": pictures,
        "test_by_objects": {str(k): v for k, v in by_objects.items()},
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    table = metrics_table(results)
    (output_dir / "metrics.md").write_text(
        "# textvision demo: held-out synthetic test sets\n\n"
        f"{table}\n\n"
        f"Per question category:\n\n{category_table(results)}\n\n"
        f"Seed {metrics['seed']}; {metrics['steps']} training steps of batch {metrics['batch_size']}, "
        f"{metrics['visual_tokens_to_lm']} visual tokens reach the LM; "
        f"fit {metrics['seconds']['fit']} s, test {metrics['seconds']['test']} s, "
        f"peak RSS {metrics['peak_rss_mb']} MB ({metrics['torch_threads']} torch threads).\n"
        + (
            "\n## Held-out scenes with fewer objects (same model)\n\n"
            "The model was trained for the full object count; these test sets are easier versions "
            "(fewer objects per image, same questions) that show what it learned short of grounding "
            f"among all of them.\n\n{objects_table(by_objects)}\n"
            if by_objects
            else ""
        )
    )
    print(table)
    print(category_table(results))
    if by_objects:
        print(objects_table(by_objects))
    print(f"wrote {output_dir / 'metrics.json'}, {output_dir / 'metrics.md'} and {len(pictures)} pictures")
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="textvision demo",
        description="Train the offline CPU demo, test it on the held-out synthetic sets, write results.",
        epilog="Other arguments go to LightningCLI, e.g. --trainer.max_steps 50.",
    )
    parser.add_argument("--config", default=None, help="LightningCLI YAML (default: configs/demo.yaml)")
    parser.add_argument("--output_dir", default="results/demo", help="where metrics and pictures go")
    parser.add_argument("--examples", type=int, default=2, help="pictures per evaluation set")
    parser.add_argument(
        "--object-counts",
        type=int,
        nargs="*",
        default=[1, 4],
        help="also test on held-out scenes with these fewer objects per image (none to skip)",
    )
    args, cli_args = parser.parse_known_args(argv)
    config = Path(args.config) if args.config else default_config()
    if not config.is_file():
        raise FileNotFoundError(f"demo config {config} not found")
    return run_demo(
        config, args.output_dir, cli_args=cli_args, examples=args.examples, object_counts=args.object_counts
    )
