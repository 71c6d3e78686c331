"""Generation speed of the synthetic sets, and a picture of examples with their questions.

    python -m textvision.bench.perf.data --out results/

writes ``results/data.json`` (timings and the settings they were taken with), ``results/data.md``
(the same as tables) and ``results/data_examples.png`` (magnifier items and mmvp-pairs pairs,
each with its question and answer). It also runs a *patch probe*: a small MLP trained on single
object patches (``patch × patch × 3`` pixels, random colours, turns and offsets) must read each
object's shape, colour and orientation from its own patch, which is what the design needs — the
answer sits in one patch, so keeping that patch is enough.

Timings are the median of ``--repeats`` batches after a warm-up, with 1 torch thread (what a
DataLoader worker uses) and with all of them (``num_workers=0``); the design target is a batch of
64 in well under 0.1 s on a 2-core CPU, so data generation never dominates a training step. On a
busy machine the multi-thread numbers suffer most: every parallel op waits for a descheduled
thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import textwrap
import time
from pathlib import Path

import torch

from textvision.data.glyphs import SHAPES
from textvision.data.magnifier import MagnifierGenerator
from textvision.data.mmvp_pairs import MMVPPairsGenerator
from textvision.data.scene import SceneConfig, render_scenes
from textvision.data.seeding import IndexRandom, index_seed
from textvision.data.synthetic import SyntheticGenerator

__all__ = ["main", "patch_probe", "time_generation"]


def time_generation(generator: SyntheticGenerator, *, batch_size: int, repeats: int) -> dict[str, float]:
    """Median / min seconds to generate one batch of fresh indices (different every repeat)."""
    generator.generate(range(batch_size), split="train", seed=0)  # warm-up
    times = []
    for r in range(repeats):
        start = (r + 1) * batch_size
        t0 = time.perf_counter()
        generator.generate(range(start, start + batch_size), split="train", seed=0)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def _object_patches(
    scene: SceneConfig, count: int, split: str
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pixels ``(N, 3·P·P)`` of every object patch of ``count`` mmvp-style scenes, and its labels.

    Orientation labels index the words ``(up, left, down, right, horizontal, vertical)``; ``-1``
    for shapes without orientation words.
    """
    generator = MMVPPairsGenerator(scene)
    rng = IndexRandom([index_seed(0, split, i, salt="probe") for i in range(count)])
    scenes, _, _ = generator.sample(rng)
    images = render_scenes(scenes, scene)
    grid, patch = scene.grid, scene.patch_size
    cells = images.view(count, 3, grid, patch, grid, patch).permute(0, 2, 4, 1, 3, 5)
    cells = cells.reshape(count, grid * grid, 3 * patch * patch)
    pixels = cells.gather(1, scenes.cell[..., None].expand(-1, -1, cells.shape[-1])).flatten(0, 1)
    words = ("up", "left", "down", "right", "horizontal", "vertical")
    table = torch.full((len(scene.shapes), 4), -1, dtype=torch.long)
    for s, name in enumerate(scene.shapes):
        spec_words = SHAPES[name].orientation_words
        if spec_words is not None:
            table[s] = torch.tensor([words.index(w) for w in spec_words])
    labels = {
        "shape": scenes.shape.flatten(),
        "colour": scenes.colour.flatten(),
        "orientation": table[scenes.shape, scenes.turn].flatten(),
    }
    return pixels, labels


def patch_probe(
    scene: SceneConfig,
    *,
    train_images: int = 1500,
    test_images: int = 300,
    steps: int = 1500,
    threads: int = 1,
) -> dict:
    """Held-out accuracy of a 1-hidden-layer MLP reading shape / colour / orientation from one patch.

    Runs with ``threads`` torch threads (restored afterwards): the MLP is tiny, and on a busy CPU
    multi-threaded small ops mostly wait for each other.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _patch_probe(scene, train_images=train_images, test_images=test_images, steps=steps)
    finally:
        torch.set_num_threads(previous)


def _patch_probe(scene: SceneConfig, *, train_images: int, test_images: int, steps: int) -> dict:
    x_train, y_train = _object_patches(scene, train_images, "train")
    x_test, y_test = _object_patches(scene, test_images, "test")
    heads = {"shape": len(scene.shapes), "colour": len(scene.colours), "orientation": 6}
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Linear(x_train.shape[1], 256), torch.nn.GELU())
    outs = torch.nn.ModuleDict({k: torch.nn.Linear(256, n) for k, n in heads.items()})
    params = [*trunk.parameters(), *outs.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(x_train), (256,))
        h = trunk(x_train[idx])
        loss = sum(
            torch.nn.functional.cross_entropy(outs[k](h), y_train[k][idx], ignore_index=-1) for k in heads
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        h = trunk(x_test)
        result = {}
        for k in heads:
            keep = y_test[k] >= 0
            result[k] = (outs[k](h)[keep].argmax(1) == y_test[k][keep]).float().mean().item()
    return {"accuracy": result, "steps": steps, "train_images": train_images, "test_images": test_images}


def plot_examples(path: Path, scene: SceneConfig, *, seed: int = 0) -> None:
    """A grid of held-out examples: 8 magnifier items, then 4 mmvp-pairs pairs side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    magnifier = MagnifierGenerator(scene).generate(range(8), split="test", seed=seed)
    pairs = MMVPPairsGenerator(scene).generate(range(8), split="test", seed=seed)
    fig, axes = plt.subplots(4, 4, figsize=(13, 16), layout="constrained")
    for ax, sample in zip(axes[:2].flat, magnifier, strict=True):
        _show(ax, sample, f"[{sample['category']}]")
    for ax, sample in zip(axes[2:].flat, pairs, strict=True):
        _show(ax, sample, f"[pair {sample['pair_id']}: {sample['category']}]")
    fig.suptitle(
        f"Synthetic sets, test split, seed {seed} ({scene.canvas_size} px canvas, "
        f"{scene.grid}x{scene.grid} patches of {scene.patch_size} px, {scene.num_objects} objects)",
        fontsize=12,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _show(ax, sample: dict, tag: str) -> None:
    image = sample["image"].permute(1, 2, 0).numpy()
    size = image.shape[0]
    ax.imshow(image, interpolation="nearest", extent=(0, size, size, 0))
    ax.set_xticks(range(0, size + 1, size // 8))
    ax.set_yticks(range(0, size + 1, size // 8))
    ax.grid(color="0.35", linewidth=0.4)
    ax.tick_params(labelsize=6)
    question = "\n".join(textwrap.wrap(sample["instruction"], 38))
    ax.set_title(
        f"{tag}\n{question}\noptions: {', '.join(sample['options'])}\nanswer: {sample['answer']}", fontsize=8
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--canvas-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--glyph-size", type=int, default=6)
    parser.add_argument("--num-objects", type=int, default=12)
    parser.add_argument("--probe-steps", type=int, default=1500, help="patch probe steps (0: skip)")
    args = parser.parse_args(argv)
    scene = SceneConfig(
        canvas_size=args.canvas_size,
        patch_size=args.patch_size,
        glyph_size=args.glyph_size,
        num_objects=args.num_objects,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    # DataLoader workers run with one torch thread; num_workers=0 generates in the main process
    # with all of them. Measure both.
    default_threads = torch.get_num_threads()
    rows = {}
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        for generator in (MagnifierGenerator(scene), MMVPPairsGenerator(scene)):
            row = time_generation(generator, batch_size=args.batch_size, repeats=args.repeats)
            rows[f"{generator.name}@{threads}"] = {"set": generator.name, "threads": threads, **row}
    torch.set_num_threads(default_threads)
    probe = patch_probe(scene, steps=args.probe_steps) if args.probe_steps > 0 else None
    report = {
        "command": "python -m textvision.bench.perf.data " + " ".join(argv or []),
        "batch_size": args.batch_size,
        "scene": {k: v for k, v in scene.as_dict().items() if k not in ("shapes", "colours")},
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "results": rows,
        "patch_probe": probe,
    }
    (args.out / "data.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"Synthetic data generation, batch of {args.batch_size} ({args.canvas_size} px, "
        f"{args.num_objects} objects), {os.cpu_count()} CPUs, median of {args.repeats} batches",
        "",
        "| set | torch threads | median ms / batch | min ms / batch | samples/s (median) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows.values():
        lines.append(
            f"| {row['set']} | {row['threads']} | {row['median_s'] * 1e3:.1f} | {row['min_s'] * 1e3:.1f} | "
            f"{args.batch_size / row['median_s']:.0f} |"
        )
    if probe is not None:
        acc = probe["accuracy"]
        lines += [
            "",
            f"Patch probe (MLP on one object patch, {probe['steps']} steps, "
            f"{probe['test_images']} held-out images):",
            "",
            "| shape | colour | orientation |",
            "| ---: | ---: | ---: |",
            f"| {acc['shape']:.3f} | {acc['colour']:.3f} | {acc['orientation']:.3f} |",
        ]
    (args.out / "data.md").write_text("\n".join(lines) + "\n")
    plot_examples(args.out / "data_examples.png", scene)
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
