"""Linear probe of the text-aligned pretrained ViT's frozen patch features (vs the same ViT at init).

    python -m textvision.bench.experiments.linear_probe --out results

For held-out pretraining scenes (1–12 glyphs, random attributes) every patch's final-normed token
is taken from the frozen backbone, and one linear classifier per attribute is fitted on the
training scenes' patches: shape (or empty), colour (or empty), quarter turn and quadrant (object
patches only). Per-patch test accuracy says what the features hold linearly; the same ViT with
its random initialisation is the floor (what the architecture and the pixels alone give).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["main", "probe_features"]


@torch.no_grad()
def _features(backbone, scenes, indices: list[int], batch: int = 128) -> tuple[torch.Tensor, dict]:
    """``(P, D)`` patch tokens and ``{attribute: (P,)}`` labels of the scenes at ``indices``."""
    from textvision.pretrain.module import plain_patch_tokens

    tokens, labels = [], {"shape": [], "colour": [], "turn": [], "quadrant": [], "present": []}
    for start in range(0, len(indices), batch):
        items = scenes.__getitems__(indices[start : start + batch])
        images = torch.stack([s["image"] for s in items])
        x = plain_patch_tokens(backbone, images)  # (B, N, D)
        n = x.shape[1]
        for s, feats in zip(items, x, strict=True):
            grid = {k: torch.full((n,), -1, dtype=torch.long) for k in labels}
            present = s["attributes"]["present"]
            cells = s["cell"][present]
            for key in ("shape", "colour", "turn", "quadrant"):
                grid[key][cells] = s["attributes"][key][present].long()
            grid["present"] = torch.zeros(n, dtype=torch.long)
            grid["present"][cells] = 1
            tokens.append(feats)
            for key in labels:
                labels[key].append(grid[key])
    return torch.cat(tokens), {k: torch.cat(v) for k, v in labels.items()}


def probe_features(train_x, train_y, test_x, test_y, *, steps: int = 300, lr: float = 1e-2) -> float:
    """Test accuracy of a linear classifier (AdamW, full batch) on standardised features."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    layer = torch.nn.Linear(train_x.shape[1], classes)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        loss = F.cross_entropy(layer(train_x), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (layer(test_x).argmax(-1) == test_y).float().mean().item()


def main(argv: list[str] | None = None) -> dict:
    from textvision.data.scene import SceneConfig
    from textvision.pretrain.cache import export_record, pretrained_export, pretrained_vit
    from textvision.pretrain.scenes import PretrainingScenes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretraining", default="configs/pretrain/demo_vit.yaml")
    parser.add_argument("--out", default="results")
    parser.add_argument("--train-scenes", type=int, default=512)
    parser.add_argument("--test-scenes", type=int, default=256)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(0)
    pretrained = pretrained_vit(pretraining=args.pretraining).eval()
    spec = export_record(pretrained_export(args.pretraining))["backbone"]
    module, _, name = spec["class_path"].rpartition(".")
    factory = getattr(__import__(module, fromlist=[name]), name)
    init_args = {k: v for k, v in spec["init_args"].items() if k != "checkpoint_path"}
    random_init = factory(**init_args).eval()
    size, patch = init_args.get("img_size", 64), init_args.get("patch_size", 8)
    scene = SceneConfig(canvas_size=size, patch_size=patch, num_objects=min(12, (size // patch) ** 2))
    train = PretrainingScenes(scene, split="train", seed=1)
    test = PretrainingScenes(scene, split="test", seed=1)
    results = {}
    for label, backbone in (("pretrained", pretrained), ("random_init", random_init)):
        tx, ty = _features(backbone, train, list(range(args.train_scenes)))
        vx, vy = _features(backbone, test, list(range(args.test_scenes)))
        row = {}
        # shape and colour over every patch (an extra "empty" class), turn and quadrant on objects
        for key in ("shape", "colour"):
            row[key] = probe_features(tx, ty[key] + 1, vx, vy[key] + 1)
        for key in ("turn", "quadrant"):
            row[key] = probe_features(tx[ty["present"] == 1], ty[key][ty["present"] == 1],
                                      vx[vy["present"] == 1], vy[key][vy["present"] == 1])  # fmt: skip
        results[label] = row
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": "python -m textvision.bench.experiments.linear_probe "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "pretraining": args.pretraining,
        "train_scenes": args.train_scenes,
        "test_scenes": args.test_scenes,
        "accuracy": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "linear_probe.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# Linear probe of frozen patch features (per-patch test accuracy)",
        "",
        f"`{record['command']}`",
        "",
        "| features | shape (+ empty) | colour (+ empty) | quarter turn | quadrant |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, row in results.items():
        cells = " | ".join(f"{100 * row[k]:.1f}%" for k in ("shape", "colour", "turn", "quadrant"))
        lines.append(f"| {label} | {cells} |")
    (out / "linear_probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return record


if __name__ == "__main__":
    main()
