"""``python -m textvision.eval.cli``: evaluate a checkpoint on a benchmark, write JSON + markdown.

Examples::

    # MMVP (official folder: Questions.csv + "MMVP Images/"), lmms-eval protocol, original labels
    python -m textvision.eval.cli --checkpoint last.ckpt --benchmark mmvp --data ~/data/MMVP \\
        --mode generate --out results/eval
    # the same with the label errata fixed, and by option log-likelihood
    python -m textvision.eval.cli --checkpoint last.ckpt --benchmark mmvp --data ~/data/MMVP \\
        --errata --mode options --out results/eval
    # MagnifierBench from a save_to_disk folder (or parquet / JSON / hub name)
    python -m textvision.eval.cli --checkpoint last.ckpt --benchmark magnifierbench \\
        --data ~/data/MagnifierBench --mode generate --out results/eval
    # MMVP-VLM for a CLIP model (the published MMVP-VLM table)
    python -m textvision.eval.cli --benchmark mmvp_vlm --data ~/data/MMVP_VLM \\
        --open-clip-model ViT-L-14 --open-clip-pretrained openai --out results/eval

``main(argv, model=...)`` evaluates an in-memory model instead of a checkpoint (tests, notebooks)
and raises on bad input; ``cli_main(argv)`` (the command) prints every failure — a bad argument,
a missing, corrupt or refused checkpoint, bad data — in one line and returns exit code 2 (set
``TEXTVISION_TRACEBACK=1`` for the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from textvision.eval.evaluator import MODES
from textvision.eval.report import format_markdown, write_report
from textvision.eval.run import BENCHMARKS, DEFAULT_SYNTHETIC_FACTORY, evaluate_benchmark

__all__ = ["build_parser", "cli_main", "infer_image_size", "load_checkpoint_model", "main"]

log = logging.getLogger(__name__)

_IMAGE_SIZE_PATHS = ("image_size", "encoder.image_size", "encoder.backbone.image_size", "visual.image_size")


class _OneLineParser(argparse.ArgumentParser):
    """Argument errors in one line (argparse prints the whole usage first), exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="textvision eval",
        description="Evaluate a checkpoint on MMVP, MMVP-VLM, MagnifierBench or a synthetic set.",
    )
    parser.add_argument(
        "--checkpoint", help="Lightning checkpoint of textvision.train.module.TextVisionModule"
    )
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    parser.add_argument("--data", help="benchmark folder / file / HF dataset name (not for synthetic sets)")
    parser.add_argument("--out", required=True, help="output folder for <benchmark>-<mode>.json / .md")
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="generate",
        help="generate: greedy reply + answer parsers (lmms-eval / official, the default); "
        "options: option log-likelihood argmax",
    )
    parser.add_argument(
        "--errata",
        action="store_true",
        help="MMVP: apply the label errata 99->(b), 100->(a), 279->(b), 280->(a)",
    )
    parser.add_argument("--image-size", type=int, help="model input size (default: read from the model)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=16, help="generation length (lmms-eval: 16)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--split", default="test", help="MagnifierBench split")
    parser.add_argument(
        "--skip-missing-images",
        action="store_true",
        help="MMVP/MMVP-VLM: skip items whose image is missing (counted) instead of failing",
    )
    parser.add_argument(
        "--open-clip-model", help="mmvp_vlm: evaluate this open_clip model instead of a checkpoint"
    )
    parser.add_argument("--open-clip-pretrained", help="mmvp_vlm: open_clip pretrained tag or weights file")
    parser.add_argument(
        "--synthetic-factory",
        default=DEFAULT_SYNTHETIC_FACTORY,
        help="module:callable building a synthetic set, called as factory(name, **args)",
    )
    parser.add_argument("--synthetic-args", default="{}", help="JSON keyword arguments for the factory")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def load_checkpoint_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """Load ``TextVisionModule`` from a Lightning checkpoint; returns ``(module.vlm, hparams)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    from textvision.train.module import TextVisionModule  # lazy: training stack only when needed

    try:
        module = TextVisionModule.load_from_checkpoint(str(path), map_location="cpu")
    except Exception as error:  # corrupt file, foreign checkpoint, weights that do not fit
        raise ValueError(f"cannot load checkpoint {path}: {_one_line(error)}") from error
    vlm = module.vlm.to(device).eval()
    return vlm, json.loads(json.dumps(dict(module.hparams), default=str))


def infer_image_size(model: Any) -> int | None:
    """The model's square input size, from the first of ``image_size``, ``encoder.image_size``,
    ``encoder.backbone.image_size``, ``visual.image_size`` it has; ``None`` if none."""
    for path in _IMAGE_SIZE_PATHS:
        value: Any = model
        for name in path.split("."):
            value = getattr(value, name, None)
            if value is None:
                break
        if isinstance(value, int):
            return value
        if isinstance(value, tuple | list) and len(value) == 2 and value[0] == value[1]:
            return int(value[0])
    return None


def main(argv: Sequence[str] | None = None, *, model: Any = None) -> dict[str, Any]:
    """Run the evaluation CLI; returns the result dict that was written.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when ``None``).
        model: evaluate this in-memory model (a ``MultipleChoiceModel``, or an ``ImageTextScorer``
            for ``mmvp_vlm``) instead of loading ``--checkpoint``; ``--checkpoint`` is then only
            recorded.
    """
    args = build_parser().parse_args(argv)
    config: dict[str, Any] = {}
    if model is None:
        if args.benchmark == "mmvp_vlm" and args.open_clip_model:
            from textvision.eval.mmvp_vlm import OpenCLIPScorer

            model = OpenCLIPScorer.from_pretrained(
                args.open_clip_model, args.open_clip_pretrained, device=args.device
            )
            config = {
                "open_clip_model": args.open_clip_model,
                "open_clip_pretrained": args.open_clip_pretrained,
            }
        elif args.checkpoint:
            model, config = load_checkpoint_model(args.checkpoint, args.device)
        else:
            raise SystemExit("give --checkpoint (or, for mmvp_vlm, --open-clip-model)")
    image_size = args.image_size or infer_image_size(model)
    if image_size is None and args.benchmark == "mmvp_vlm":
        raise SystemExit("cannot read the model's input size; pass --image-size")
    try:
        synthetic_args = json.loads(args.synthetic_args)
    except json.JSONDecodeError as error:
        raise SystemExit(f"--synthetic-args is not JSON: {error}") from None
    result = evaluate_benchmark(
        model,
        args.benchmark,
        args.data,
        mode=args.mode,
        image_size=image_size,
        errata=args.errata,
        skip_missing_images=args.skip_missing_images,
        split=args.split,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        num_workers=args.num_workers,
        device=args.device,
        progress=not args.no_progress,
        synthetic_factory=args.synthetic_factory,
        synthetic_args=synthetic_args,
    )
    result["run"] = {
        "model": getattr(model, "name", None) or type(model).__name__,
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "config": config,
        "argv": list(argv) if argv is not None else sys.argv[1:],
        "errata": args.errata if args.benchmark == "mmvp" else None,
        "image_size": image_size,
        "max_new_tokens": args.max_new_tokens if args.mode == "generate" else None,
    }
    json_path, md_path = write_report(result, args.out)
    print(format_markdown(result))
    print(f"wrote {json_path} and {md_path}")
    return result


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    known = (FileNotFoundError, ImportError, ValueError, TypeError)
    return text if isinstance(error, known) else f"{type(error).__name__}: {text}"


def cli_main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: :func:`main` with every failure printed as one line, exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(argv)
    except KeyboardInterrupt:
        print("textvision eval: interrupted", file=sys.stderr)
        return 130
    except SystemExit as stop:
        if isinstance(stop.code, str):  # main's own refusals
            print(f"textvision eval: error: {stop.code}", file=sys.stderr)
            return 2
        return int(stop.code or 0)  # argparse: its one line is printed; --help: 0
    except Exception as error:
        if os.environ.get("TEXTVISION_TRACEBACK"):
            raise
        print(f"textvision eval: error: {_one_line(error)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
