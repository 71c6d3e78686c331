"""Encoder throughput: text-aware ViT vs. the plain ViT, with and without text-guided pruning.

    python -m textvision.bench.perf.encoder            # CPU, batch 8, ViT-S/16 @ 224 px, T = 32

Configurations, timed in the same process, interleaved round by round (min and median of ``--repeats``;
ratios from the min, the least-disturbed run on a shared machine):

- ``plain``: timm's own ``forward_features`` of ``vit_small_patch16_224`` (12 blocks, 196 patches);
- ``text_aware``: :class:`TextAwareEncoder`, ``gated_xattn`` in all 12 blocks, text features
  precomputed once (``encode_text``, as a frozen text encoder's cache provides them);
- ``text_aware_pruned_at3``: the same plus text-guided pruning to 25% of the patches after the
  4th block (``prune_at=(3,)``, 0-based; ``keep_ratio=0.25``: 196 → 49 patches for the last 8
  blocks); ``text_aware_pruned_at4`` prunes one block later (after the 5th) for comparison;
- ``adapter_xattn`` / ``adapter_xattn_pruned_at3``: the cheaper LLaMA-Adapter-form variant
  (text keys/values read by the block's own queries), without / with the same pruning;
- ``text_aware_uncached``: ``text_aware`` with the MiniLM-L6 text encoder run in the loop (context).

Weights are random (timing only). Goals from the issue: text_aware / plain ≤ 1.25 and
plain / text_aware_pruned ≥ 1.5. Writes ``<out>.json`` and ``<out>.md``.
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
    prune_at: tuple[int, ...] = (3, 4),
    keep_ratio: float = 0.25,
) -> dict:
    """Time the configurations; returns the result dict written to JSON.

    ``prune_at`` lists the 0-based block indices to try as the single pruning point (one
    configuration each); the first is the headline (index 3 = after the 4th block).
    """
    torch.manual_seed(0)
    dev = torch.device(device)
    features, text_encoder, text_source = _text_features(batch, text_tokens, 384)
    text_dim = features.hidden.shape[-1]
    backbone = TimmViT(model_name=model_name, img_size=image_size).eval()
    aware = TextAwareEncoder(
        backbone=backbone, text_dim=text_dim, fusion="gated_xattn", backend=backend
    ).eval()
    pruned = {}
    for block in prune_at:
        encoder = TextAwareEncoder(
            backbone=backbone,
            text_dim=text_dim,
            fusion="gated_xattn",
            prune_at=(block,),
            keep_ratio=keep_ratio,
            scorer="text",
            backend=backend,
        ).eval()
        encoder.fusion.load_state_dict(aware.fusion.state_dict())
        encoder.text_adapter.load_state_dict(aware.text_adapter.state_dict())
        pruned[block] = encoder.to(dev)
    aware.to(dev)
    # the cheaper LLaMA-Adapter form (shared query and output projection), for comparison
    adapter = TextAwareEncoder(backbone=backbone, text_dim=text_dim, fusion="adapter_xattn", backend=backend)
    adapter_pruned = TextAwareEncoder(
        backbone=backbone,
        text_dim=text_dim,
        fusion="adapter_xattn",
        prune_at=(prune_at[0],),
        keep_ratio=keep_ratio,
        scorer="text",
        backend=backend,
    )
    adapter_pruned.load_state_dict(adapter.state_dict())
    adapter, adapter_pruned = adapter.eval().to(dev), adapter_pruned.eval().to(dev)
    if text_encoder is not None:
        text_encoder.to(dev)
    images = torch.rand(batch, 3, image_size, image_size, device=dev)
    features = TextFeatures(features.hidden.to(dev), features.mask.to(dev))
    instructions = (INSTRUCTIONS * (batch // len(INSTRUCTIONS) + 1))[:batch]

    configs: dict[str, Callable[[], object]] = {
        "plain": lambda: backbone.model.forward_features(backbone.normalize(images)),
        "text_aware": lambda: aware(images, text_features=features),
    }
    for block, encoder in pruned.items():
        configs[f"text_aware_pruned_at{block}"] = lambda encoder=encoder: encoder(
            images, text_features=features
        )
    configs["adapter_xattn"] = lambda: adapter(images, text_features=features)
    configs[f"adapter_xattn_pruned_at{prune_at[0]}"] = lambda: adapter_pruned(images, text_features=features)
    if text_encoder is not None:
        configs["text_aware_uncached"] = lambda: aware(images, text_features=text_encoder(instructions))
    wall: dict[str, list[float]] = {name: [] for name in configs}
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    with torch.inference_mode():
        kept = pruned[prune_at[0]](images, text_features=features).kept_indices.shape[1]
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
    headline = f"text_aware_pruned_at{prune_at[0]}"
    ratios = {
        "text_aware_over_plain": best["text_aware"] / best["plain"],
        "plain_over_text_aware_pruned": best["plain"] / best[headline],
        **{
            f"plain_over_text_aware_pruned_at{b}": best["plain"] / best[f"text_aware_pruned_at{b}"]
            for b in prune_at
        },
        "adapter_xattn_over_plain": best["adapter_xattn"] / best["plain"],
        "plain_over_adapter_xattn_pruned": best["plain"] / best[f"adapter_xattn_pruned_at{prune_at[0]}"],
        "median_text_aware_over_plain": medians["text_aware"] / medians["plain"],
        "median_plain_over_text_aware_pruned": medians["plain"] / medians[headline],
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
        "fusion": "gated_xattn in all blocks (adapter_xattn rows for comparison)",
        "kernel_backend": backend,
        "pruning": {
            "prune_at": list(prune_at),
            "headline_prune_at": prune_at[0],
            "keep_ratio": keep_ratio,
            "kept_patches": kept,
            "scorer": "text",
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
    labels = {
        "plain": "plain ViT (timm forward_features)",
        "text_aware": "text-aware, cached text features",
        "text_aware_uncached": "text-aware, MiniLM-L6 run every batch",
        "adapter_xattn": "`adapter_xattn` (shared q/proj) in all blocks, cached text features",
        f"adapter_xattn_pruned_at{pruning['prune_at'][0]}": (
            f"`adapter_xattn` + text-guided pruning after block {pruning['prune_at'][0] + 1}"
        ),
    }
    for block in pruning["prune_at"]:
        labels[f"text_aware_pruned_at{block}"] = (
            f"text-aware + text-guided pruning to {pruning['kept_patches']} patches after block "
            f"{block + 1} (`prune_at=({block},)`)"
        )
    for name, value in result["ms_per_image"].items():
        median = result["median_ms_per_image"][name]
        wall = result["min_wall_ms_per_image"][name]
        lines.append(f"| {labels[name]} | {value:.1f} | {median:.1f} | {wall:.1f} | {value / plain:.2f}x |")
    met = "met" if result["goals"]["met"] else "NOT met"
    headline = pruning["headline_prune_at"]
    lines += [
        "",
        f"- text-aware / plain = **{ratios['text_aware_over_plain']:.3f}** (goal ≤ 1.25; "
        f"median ratio {ratios['median_text_aware_over_plain']:.3f})",
        f"- plain / text-aware-pruned (after block {headline + 1}) = "
        f"**{ratios['plain_over_text_aware_pruned']:.3f}x faster** (goal ≥ 1.5; "
        f"median ratio {ratios['median_plain_over_text_aware_pruned']:.3f})",
    ]
    for block in pruning["prune_at"][1:]:
        lines.append(
            f"- pruning after block {block + 1} instead: "
            f"{ratios[f'plain_over_text_aware_pruned_at{block}']:.3f}x faster than plain"
        )
    lines += [
        f"- `adapter_xattn` instead: {ratios['adapter_xattn_over_plain']:.3f}x the plain time; "
        f"with pruning {ratios['plain_over_adapter_xattn_pruned']:.3f}x faster than plain",
        f"- goals (on `gated_xattn`) {met}",
        "",
    ]
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
