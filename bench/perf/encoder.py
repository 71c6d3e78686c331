"""Encoder throughput: text-aware ViT vs. the plain ViT, with and without text-guided pruning.

    python -m textvision.bench.perf.encoder            # CPU, batch 8, ViT-S/16 @ 224 px, T = 32

Configurations, timed in the same process, interleaved round by round (min and median of ``--repeats``;
ratios from the min, the least-disturbed run on a shared machine):

- ``plain``: timm's own ``forward_features`` of ``vit_small_patch16_224`` (12 blocks, 196 patches);
- ``<fusion>``: :class:`TextAwareEncoder` with that fusion variant in all 12 blocks, text features
  precomputed once (``encode_text``, as a frozen text encoder's cache provides them). The headline
  variant is the one ``configs/demo.yaml`` uses (``--fusion`` names another); every other
  registered variant that attends to the text is timed beside it for comparison;
- ``<fusion>_pruned_at3``: the same plus text-guided pruning by the fusion kernel's relevance (the
  registered scorer that ``reads_fusion_relevance``) to 25% of the patches after the 4th block
  (``prune_at=(3,)``, 0-based; ``keep_ratio=0.25``: 196 → 49 patches for the last 8 blocks);
  ``_pruned_at4`` prunes one block later (after the 5th), for the headline variant;
- ``<fusion>_uncached``: the headline variant with the MiniLM-L6 text encoder run in the loop.

Weights are random (timing only). Goals from the issue: headline / plain ≤ 1.25 and
plain / headline pruned ≥ 1.5. Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from textvision.encoder import TextAwareEncoder
from textvision.text import TextEncoder, TextFeatures
from textvision.vision import TimmViT

__all__ = ["main", "run"]

# Long enough that every instruction fills T = 32 MiniLM tokens (truncated with a logged warning).
INSTRUCTIONS = [
    "What colour is the small triangle in the upper left corner of the picture, next to the large blue "
    "circle that touches the border, and is it darker than the square below it?",
    "How many red squares are there in the bottom half of the image, counting the ones that are partly "
    "hidden behind other shapes, and how many of them are larger than the green circle?",
    "Is the dog on the left side or on the right side of the person holding the green umbrella in this "
    "photo taken at the beach, and is it facing the water or the camera?",
    "Which of the two cups on the wooden table is closer to the camera, the white one with the handle or "
    "the striped one without it, and which of them is taller?",
    "Read the number written on the small sign attached to the lamp post behind the parked bicycle, and "
    "tell me whether it is even or odd and whether the sign is blue.",
    "Describe the shape of the object that lies directly below the yellow star near the centre of the "
    "canvas, give its colour too, and say whether it overlaps the star.",
    "Are the two arrows in the image pointing in the same direction or in opposite directions to each "
    "other, which one is longer, and what colour is the shorter one?",
    "What is the colour of the smallest object in the scene, is it touching any of the larger objects "
    "that surround it on the right, and how far is it from the top edge?",
]


def _text_features(batch: int, tokens: int, dim: int) -> tuple[TextFeatures, TextEncoder | None, str]:
    """Real MiniLM-L6 features of ``tokens`` tokens when the packaged model is installed, else random."""
    try:
        encoder = TextEncoder(max_length=tokens, cache_size=0)
    except (FileNotFoundError, OSError):
        hidden = torch.randn(batch, tokens, dim)
        return (
            TextFeatures(hidden, torch.ones(batch, tokens, dtype=torch.bool)),
            None,
            "random (MiniLM not installed)",
        )
    instructions = (INSTRUCTIONS * (batch // len(INSTRUCTIONS) + 1))[:batch]
    with torch.inference_mode():
        features = encoder(instructions)  # logs the truncation to T once
    # the uncached configuration re-encodes the same instructions every round: log it once only
    logging.getLogger("textvision.text.encoder").setLevel(logging.ERROR)
    return features, encoder, "MiniLM-L6 (packaged)"


def _time(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start


def _demo_fusion() -> str:
    """The fusion variant of ``configs/demo.yaml``, as the CLI parses it."""
    from textvision.train.cli import parse_config

    demo = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    value = parse_config(["-c", str(demo)])[0]["model.vlm.init_args.encoder.init_args.fusion"]
    if not isinstance(value, str):
        raise ValueError(f"{demo}: the fusion is given as a class path; name a registered one with --fusion")
    return value


def run(
    *,
    batch: int = 8,
    image_size: int = 224,
    text_tokens: int = 32,
    repeats: int = 15,
    warmup: int = 2,
    device: str = "cpu",
    backend: str = "auto",
    model_name: str = "vit_small_patch16_224",
    fusion: str | None = None,
    prune_at: tuple[int, ...] = (3, 4),
    keep_ratio: float = 0.25,
) -> dict:
    """Time the configurations; returns the result dict written to JSON.

    ``fusion``: the headline variant (default: ``configs/demo.yaml``'s). ``prune_at`` lists the
    0-based block indices to try as the single pruning point (one configuration each for the
    headline variant); the first is the headline (index 3 = after the 4th block).
    """
    from textvision.fusion import FUSIONS
    from textvision.pruning import SCORERS

    torch.manual_seed(0)
    dev = torch.device(device)
    headline = fusion or _demo_fusion()
    if headline not in FUSIONS:
        raise ValueError(f"unknown fusion {headline!r}; registered: {sorted(FUSIONS)}")
    others = sorted(n for n, c in FUSIONS.items() if c.attends_to_text and n != headline)
    scorer = next(n for n, c in SCORERS.items() if c.reads_fusion_relevance)
    features, text_encoder, text_source = _text_features(batch, text_tokens, 384)
    text_dim = features.hidden.shape[-1]
    backbone = TimmViT(model_name=model_name, img_size=image_size).eval()
    images = torch.rand(batch, 3, image_size, image_size, device=dev)
    features = TextFeatures(features.hidden.to(dev), features.mask.to(dev))
    instructions = (INSTRUCTIONS * (batch // len(INSTRUCTIONS) + 1))[:batch]

    def encoder(name: str, blocks: tuple[int, ...] = ()) -> TextAwareEncoder:
        pruning = dict(prune_at=blocks, keep_ratio=keep_ratio, scorer=scorer) if blocks else {}
        return TextAwareEncoder(backbone=backbone, text_dim=text_dim, fusion=name, backend=backend, **pruning)

    configs: dict[str, Callable[[], object]] = {
        "plain": lambda: backbone.model.forward_features(backbone.normalize(images)),
    }
    kept = None
    for name in (headline, *others):
        aware = encoder(name).eval().to(dev)
        configs[name] = lambda aware=aware: aware(images, text_features=features)
        for block in prune_at if name == headline else prune_at[:1]:
            pruned = encoder(name, (block,))
            pruned.load_state_dict(aware.state_dict())  # the same fusion weights, pruning added
            pruned = pruned.eval().to(dev)
            configs[f"{name}_pruned_at{block}"] = lambda pruned=pruned: pruned(images, text_features=features)
            if kept is None:
                with torch.inference_mode():
                    kept = pruned(images, text_features=features).kept_indices.shape[1]
        if name == headline and text_encoder is not None:
            text_encoder.to(dev)
            configs[f"{name}_uncached"] = lambda aware=aware: aware(
                images, text_features=text_encoder(instructions)
            )
    wall: dict[str, list[float]] = {name: [] for name in configs}
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    with torch.inference_mode():
        for round_index in range(warmup + repeats):
            for name, fn in configs.items():
                elapsed, cpu_elapsed = _time(fn, dev)
                if round_index >= warmup:
                    wall[name].append(elapsed)
                    cpu[name].append(cpu_elapsed)
    # On a CPU the statistic is the process CPU time (what the forward costs, immune to other
    # processes taking the cores); on CUDA it is wall time with synchronisation.
    times = cpu if dev.type == "cpu" else wall
    best = {name: min(values) for name, values in times.items()}
    medians = {name: statistics.median(values) for name, values in times.items()}
    pruned_name = f"{headline}_pruned_at{prune_at[0]}"
    ratios = {
        "text_aware_over_plain": best[headline] / best["plain"],
        "plain_over_text_aware_pruned": best["plain"] / best[pruned_name],
        **{f"{n}_over_plain": best[n] / best["plain"] for n in (headline, *others)},
        **{f"plain_over_{n}": best["plain"] / best[n] for n in best if "_pruned_at" in n},
        "median_text_aware_over_plain": medians[headline] / medians["plain"],
        "median_plain_over_text_aware_pruned": medians["plain"] / medians[pruned_name],
    }
    return {
        "benchmark": "encoder_forward",
        "model": model_name,
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_average_at_end": list(os.getloadavg()),
        "batch": batch,
        "image_size": image_size,
        "patches": (image_size // 16) ** 2,
        "text_tokens": features.hidden.shape[1],
        "text_features": text_source,
        "fusion": headline,
        "compared_fusions": others,
        "kernel_backend": backend,
        "pruning": {
            "prune_at": list(prune_at),
            "headline_prune_at": prune_at[0],
            "keep_ratio": keep_ratio,
            "kept_patches": kept,
            "scorer": scorer,
        },
        "repeats": repeats,
        "warmup": warmup,
        "statistic": (
            "process CPU time per batch (time.process_time), min over interleaved rounds; medians also given"
            if dev.type == "cpu"
            else "wall time with CUDA synchronisation, min over interleaved rounds"
        ),
        "min_s_per_batch": best,
        "median_s_per_batch": medians,
        "ms_per_image": {name: 1000.0 * value / batch for name, value in best.items()},
        "median_ms_per_image": {name: 1000.0 * value / batch for name, value in medians.items()},
        "all_cpu_s_per_batch": cpu,
        "all_wall_s_per_batch": wall,
        "min_wall_ms_per_image": {name: 1000.0 * min(values) / batch for name, values in wall.items()},
        "ratios": ratios,
        "goals": {
            "text_aware_over_plain_max": 1.25,
            "plain_over_text_aware_pruned_min": 1.5,
            "met": ratios["text_aware_over_plain"] <= 1.25 and ratios["plain_over_text_aware_pruned"] >= 1.5,
        },
    }


def to_markdown(result: dict, command: str) -> str:
    ratios = result["ratios"]
    pruning = result["pruning"]
    lines = [
        "# Encoder forward time",
        "",
        f"`{command}`",
        "",
        f"{result['model']} at {result['image_size']} px ({result['patches']} patches), "
        f"batch {result['batch']}, T = {result['text_tokens']} text tokens ({result['text_features']}), "
        f"{result['fusion']}, kernel backend `{result['kernel_backend']}`; device {result['device']}, "
        f"{result['threads']} thread(s), torch {result['torch']}. Statistic: {result['statistic']}; "
        f"{result['repeats']} rounds after {result['warmup']} warm-up. The machine is shared (load average "
        f"{result['load_average_at_end'][0]:.1f} at the end), so CPU time, not wall time, is compared.",
        "",
        "| configuration | ms / image (min) | ms / image (median) | wall ms / image (min) | vs. plain |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    plain = result["ms_per_image"]["plain"]
    fusion, kept = result["fusion"], pruning["kept_patches"]

    def label(name: str) -> str:
        if name == "plain":
            return "plain ViT (timm forward_features)"
        if name.endswith("_uncached"):
            return f"`{name[: -len('_uncached')]}` in all blocks, MiniLM-L6 run every batch"
        variant, _, block = name.partition("_pruned_at")
        if block:
            return (
                f"`{variant}` + text-guided pruning to {kept} patches after block {int(block) + 1} "
                f"(`prune_at=({block},)`)"
            )
        return f"`{name}` in all blocks, cached text features"

    for name, value in result["ms_per_image"].items():
        median = result["median_ms_per_image"][name]
        wall = result["min_wall_ms_per_image"][name]
        lines.append(f"| {label(name)} | {value:.1f} | {median:.1f} | {wall:.1f} | {value / plain:.2f}x |")
    met = "met" if result["goals"]["met"] else "NOT met"
    headline = pruning["headline_prune_at"]
    lines += [
        "",
        f"- `{fusion}` / plain = **{ratios['text_aware_over_plain']:.3f}** (goal ≤ 1.25; "
        f"median ratio {ratios['median_text_aware_over_plain']:.3f})",
        f"- plain / `{fusion}` pruned (after block {headline + 1}) = "
        f"**{ratios['plain_over_text_aware_pruned']:.3f}x faster** (goal ≥ 1.5; "
        f"median ratio {ratios['median_plain_over_text_aware_pruned']:.3f})",
    ]
    for block in pruning["prune_at"][1:]:
        lines.append(
            f"- pruning after block {block + 1} instead: "
            f"{ratios[f'plain_over_{fusion}_pruned_at{block}']:.3f}x faster than plain"
        )
    first = pruning["prune_at"][0]
    for other in result["compared_fusions"]:
        lines.append(
            f"- `{other}` instead: {ratios[f'{other}_over_plain']:.3f}x the plain time; with pruning "
            f"{ratios[f'plain_over_{other}_pruned_at{first}']:.3f}x faster than plain"
        )
    lines += [f"- goals (on `{fusion}`) {met}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m textvision.bench.perf.encoder", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument(
        "--fusion", default=None, help="headline fusion variant (default: the one configs/demo.yaml uses)"
    )
    parser.add_argument(
        "--prune-at",
        type=int,
        nargs="+",
        default=[3, 4],
        help="0-based block indices, one pruned configuration each; the first is the headline",
    )
    parser.add_argument("--keep-ratio", type=float, default=0.25)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads; 1 (default) keeps CPU-time measurements stable on a shared machine",
    )
    parser.add_argument("--out", default="results/encoder", help="output path without suffix (.json and .md)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(
        batch=args.batch,
        image_size=args.image_size,
        text_tokens=args.text_tokens,
        repeats=args.repeats,
        warmup=args.warmup,
        device=args.device,
        backend=args.backend,
        model_name=args.model,
        fusion=args.fusion,
        prune_at=tuple(args.prune_at),
        keep_ratio=args.keep_ratio,
    )
    command = "python -m textvision.bench.perf.encoder" + ("" if argv is None else " " + " ".join(argv))
    if argv is None:
        import sys

        command = "python -m textvision.bench.perf.encoder" + "".join(f" {a}" for a in sys.argv[1:])
    result["command"] = command
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(result, command)
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
    return result


if __name__ == "__main__":
    main()
