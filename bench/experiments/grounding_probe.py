"""Grounding probe: how many training steps does the encoder need to tie a word to a glyph?

The demo VLM and the fusion ablation sit at chance (see ``results/README_results.md``). This bench
takes the language model out of the question and measures the encoder side alone: the text-aware
encoder of ``configs/demo.yaml`` (or ``--base-config``), optionally with one variant overlay of
``configs/ablation/*.yaml`` (``--variant``), built through the CLI's own parser
(``TextVisionCLI(args=[...], run=False)``, as ``encoder_sweep`` builds it), so the configs are the
only model definition; plus a small option classifier, trained on **one** magnifier question
category at a time on fresh batches of the config's scenes, then scored on a fixed held-out set
of the same category. The encoder's trainable parts (what the config leaves unfrozen) train with
the classifier.

Two scene sizes separate two skills:

* ``num_objects = 1``: the question names the only object, so no selection is needed. This
  measures *learning to see*: reading a glyph's colour, naming its shape.
* ``num_objects = 12`` (the demo's scenes): the question must pick one object of twelve. This
  measures *learning to ground*: the word ``triangle`` must find the triangle's patch.

Readouts:

* ``cls_mean``: the text-aware encoder's CLS token and the mean of its (kept) patch tokens; the
  question only reaches the answer through the fusion layers (the demo's path).
* ``text_query``: the question tokens (after the encoder's text adapter) attend over the encoder's
  tokens and their mean is classified (a Q-Former-like pooling, Li et al., "BLIP-2", 2023); the most
  direct gradient path from the answer to word–patch matching.

    python -m textvision.bench.experiments.grounding_probe --out results --steps 600
    python -m textvision.bench.experiments.grounding_probe --out results \
        --variant none_textagnostic --keep-tokens 8

A plain training loop on purpose: the probe is a measurement with a fixed number of optimizer
steps and no checkpoints, logging or distribution to manage.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textvision.bench.experiments.encoder_sweep import BASE_CONFIG
from textvision.bench.experiments.runs import ENCODER
from textvision.bench.experiments.variants import VARIANT_CONFIGS as VARIANTS_DIR
from textvision.bench.experiments.variants import variant_names

__all__ = ["OptionClassifier", "ProbeSpec", "build_encoder", "main", "run_probe", "to_markdown"]

READOUTS = ("cls_mean", "text_query")


class OptionClassifier(nn.Module):
    """Scores answer options from encoder tokens (and, for ``text_query``, the question tokens).

    Args:
        width: token width ``D``.
        vocabulary: every answer string the probe can see; options are scored by their index.
        readout: ``cls_mean`` or ``text_query`` (see the module docstring).
        num_heads: heads of the ``text_query`` pooling.
        hidden: width of the classifier MLP.
    """

    def __init__(
        self,
        *,
        width: int,
        vocabulary: Sequence[str],
        readout: str = "cls_mean",
        num_heads: int = 4,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.readout = readout
        self.index = {word: i for i, word in enumerate(dict.fromkeys(vocabulary))}
        pooled = 2 * width if readout == "cls_mean" else width
        if readout == "text_query":
            self.norm_text = nn.LayerNorm(width)
            self.norm_tokens = nn.LayerNorm(width)
            self.pool = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.head = nn.Sequential(
            nn.LayerNorm(pooled), nn.Linear(pooled, hidden), nn.GELU(), nn.Linear(hidden, len(self.index))
        )

    def option_ids(self, options: Sequence[Sequence[str]]) -> Tensor:
        """``(B, O)`` vocabulary indices of each item's options."""
        unknown = sorted({o for row in options for o in row if o not in self.index})
        if unknown:
            raise KeyError(f"options outside the probe vocabulary: {unknown}")
        return torch.tensor([[self.index[o] for o in row] for row in options])

    def forward(
        self, tokens: Tensor, text: Tensor, text_mask: Tensor, options: Sequence[Sequence[str]]
    ) -> Tensor:
        """Option logits ``(B, O)`` from ``tokens (B, M, D)``, ``text (B, T, D)``, ``text_mask (B, T)``."""
        if self.readout == "cls_mean":
            pooled = torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1)
        else:
            keys = self.norm_tokens(tokens)
            attended, _ = self.pool(self.norm_text(text), keys, keys, need_weights=False)
            weight = text_mask.to(attended.dtype).unsqueeze(-1)
            pooled = (attended * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)
        logits = self.head(pooled)
        return logits.gather(1, self.option_ids(options).to(logits.device))


@dataclass(frozen=True)
class ProbeSpec:
    """One probe: a question category, a scene size, a readout and the encoder's config.

    ``variant`` names an overlay of ``configs/ablation/`` applied on the base config (``""``: the
    base config as it is); ``keep_tokens`` overrides its budget (``None``: the config's pruning,
    ``0``: no pruning, ``k``: keep ``k`` patches).
    """

    category: str = "colour"
    num_objects: int = 12
    readout: str = "cls_mean"
    variant: str = ""
    keep_tokens: int | None = None
    curriculum_steps: int = 0  # 0 = always num_objects; else ramp 1 -> num_objects over these steps

    @property
    def name(self) -> str:
        prune = {None: "config_prune", 0: "no_prune"}.get(self.keep_tokens, f"keep{self.keep_tokens}")
        ramp = f"-ramp{self.curriculum_steps}" if self.curriculum_steps else ""
        return f"{self.category}-K{self.num_objects}{ramp}-{self.variant or 'base'}-{prune}-{self.readout}"

    def objects_at(self, step: int, draw: float) -> int:
        """Objects per image in the training batch of ``step`` (1-based); ``draw`` is uniform [0, 1).

        Without a curriculum: ``num_objects``. With one, the largest scene grows linearly from 1
        to ``num_objects`` over ``curriculum_steps``; half the batches use the largest scene so
        far, the other half a uniform size up to it, so the easy scenes are never forgotten.
        """
        from textvision.data.synthetic import curriculum_objects

        if not self.curriculum_steps:
            return self.num_objects
        return curriculum_objects(step / self.curriculum_steps, draw, self.num_objects)


def build_encoder(spec: ProbeSpec, *, base_config: str | Path = BASE_CONFIG, seed: int = 0):
    """``(encoder, scene)``: the encoder of ``base_config`` (+ the spec's variant overlay and
    budget) through the CLI's parser and instantiation, and the config's synthetic scene."""
    import warnings

    from textvision.train.cli import TextVisionCLI

    args = ["-c", str(base_config)]
    if spec.variant:
        overlay = VARIANTS_DIR / f"{spec.variant}.yaml"
        if not overlay.is_file():
            raise FileNotFoundError(f"no variant {spec.variant!r}: choose from {variant_names()}")
        args += ["-c", str(overlay)]
    args += ["--seed_everything", str(seed), "--trainer.logger", "false"]
    args += ["--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]"]
    if spec.keep_tokens == 0:
        args += ["-c", "model: {vlm: {init_args: {encoder: {init_args: {prune_at: [], keep_tokens: null}}}}}"]
    elif spec.keep_tokens is not None:
        args += [f"--{ENCODER}.keep_tokens", str(spec.keep_tokens)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        cli = TextVisionCLI(args=args, run=False)
    scene = getattr(cli.datamodule, "scene", None)
    if scene is None:
        raise TypeError(f"{base_config}: the probe needs a synthetic data module (one with a scene)")
    return cli.model.vlm.encoder, scene


def _build(spec: ProbeSpec, base_config: str | Path, seed: int):
    from textvision.data.magnifier import MAGNIFIER_CATEGORIES, MagnifierGenerator

    if spec.category not in MAGNIFIER_CATEGORIES:
        raise ValueError(f"category must be one of {MAGNIFIER_CATEGORIES}, got {spec.category!r}")
    encoder, scene = build_encoder(spec, base_config=base_config, seed=seed)
    sizes = range(1, spec.num_objects + 1) if spec.curriculum_steps else [spec.num_objects]
    generators = {
        k: MagnifierGenerator(scene.evolve(num_objects=k), categories=(spec.category,)) for k in sizes
    }
    vocabulary = [w for c in MAGNIFIER_CATEGORIES for w in generators[spec.num_objects].vocabulary(c)]
    head = OptionClassifier(width=encoder.width, vocabulary=vocabulary, readout=spec.readout)
    return encoder, head, generators


def _logits(encoder, head: OptionClassifier, batch: dict) -> Tensor:
    features = encoder.encode_text(batch["instruction"])
    out = encoder(batch["image"], text_features=features)
    text = encoder.text_adapter(features.hidden)
    return head(out.tokens, text, features.mask, batch["options"])


def run_probe(
    spec: ProbeSpec,
    *,
    steps: int,
    batch_size: int = 64,
    eval_size: int = 256,
    eval_every: int = 200,
    lr: float = 1e-3,
    base_config: str | Path = BASE_CONFIG,
    seed: int = 0,
) -> dict:
    """Train encoder + option classifier for ``steps`` and return the held-out learning curve."""
    from textvision.data.collate import collate_samples

    if steps < 1 or batch_size < 1 or eval_size < 1 or eval_every < 1:
        raise ValueError("steps, batch_size, eval_size and eval_every must be positive")
    torch.manual_seed(seed)
    encoder, head, generators = _build(spec, base_config, seed)
    torch.manual_seed(seed)  # the classifier starts alike whatever the encoder's build drew
    generator = generators[spec.num_objects]
    draws = torch.Generator().manual_seed(seed)
    params = [p for p in [*encoder.parameters(), *head.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
        ),
    )
    held_out = collate_samples(generator.generate(range(eval_size), split="val", seed=seed))

    @torch.no_grad()
    def evaluate() -> float:
        encoder.eval()
        head.eval()
        correct = 0
        for start in range(0, eval_size, 128):
            part = {k: v[start : start + 128] for k, v in held_out.items()}
            predicted = _logits(encoder, head, part).argmax(-1)
            correct += int((predicted == torch.as_tensor(part["label"])).sum())
        encoder.train()
        head.train()
        return correct / eval_size

    curve, losses = [], []
    started = time.perf_counter()
    for step in range(1, steps + 1):
        indices = range((step - 1) * batch_size, step * batch_size)
        objects = spec.objects_at(step, float(torch.rand((), generator=draws)))
        batch = collate_samples(generators[objects].generate(indices, split="train", seed=seed))
        loss = F.cross_entropy(_logits(encoder, head, batch), torch.as_tensor(batch["label"]))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"probe {spec.name}: non-finite loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % eval_every == 0 or step == steps:
            window = losses[-eval_every:]
            curve.append(
                {
                    "step": step,
                    "accuracy": round(evaluate(), 4),
                    "train_loss": round(sum(window) / len(window), 4),
                }
            )
    return {
        **asdict(spec),
        "name": spec.name,
        "chance": 1.0 / generator.num_options,
        "steps": steps,
        "batch_size": batch_size,
        "eval_size": eval_size,
        "lr": lr,
        "base_config": str(base_config),
        "curve": curve,
        "final_accuracy": curve[-1]["accuracy"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "trainable_parameters": sum(p.numel() for p in params),
    }


def to_markdown(results: Sequence[dict]) -> str:
    """A table: one row per probe, held-out accuracy at each evaluation step."""
    steps = sorted({point["step"] for r in results for point in r["curve"]})
    header = "| probe | chance | " + " | ".join(f"step {s}" for s in steps) + " | wall s |"
    lines = [header, "|" + "---|" * (len(steps) + 3)]
    for r in results:
        by_step = {p["step"]: f"{100 * p['accuracy']:.1f}%" for p in r["curve"]}
        cells = " | ".join(by_step.get(s, "") for s in steps)
        lines.append(f"| {r['name']} | {100 * r['chance']:.0f}% | {cells} | {r['wall_seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results", help="results folder (JSON + markdown)")
    parser.add_argument("--tag", default="grounding_probe", help="file stem of the JSON and markdown")
    parser.add_argument("--categories", nargs="+", default=["colour", "shape"])
    parser.add_argument("--num-objects", nargs="+", type=int, default=[1, 12])
    parser.add_argument("--readouts", nargs="+", default=["cls_mean"], choices=READOUTS)
    parser.add_argument("--base-config", default=str(BASE_CONFIG), help="textvision config of the encoder")
    parser.add_argument(
        "--variant",
        default="",
        choices=["", *variant_names()],
        help="overlay configs/ablation/<variant>.yaml on the base config (default: none)",
    )
    parser.add_argument(
        "--keep-tokens", type=int, default=None, help="patches kept (0 = no pruning; default: the config's)"
    )
    parser.add_argument("--curriculum-steps", type=int, default=0, help="ramp objects 1 -> K over N steps")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for readout in args.readouts:
        for category in args.categories:
            for num_objects in args.num_objects:
                spec = ProbeSpec(
                    category=category,
                    num_objects=num_objects,
                    readout=readout,
                    variant=args.variant,
                    keep_tokens=args.keep_tokens,
                    curriculum_steps=args.curriculum_steps,
                )
                result = run_probe(
                    spec,
                    steps=args.steps,
                    batch_size=args.batch_size,
                    eval_size=args.eval_size,
                    eval_every=args.eval_every,
                    lr=args.lr,
                    base_config=args.base_config,
                )
                print(f"{spec.name}: {[p['accuracy'] for p in result['curve']]}", flush=True)
                results.append(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python -m textvision.bench.experiments.grounding_probe "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    (out / f"{args.tag}.json").write_text(json.dumps({"meta": meta, "probes": results}, indent=2))
    (out / f"{args.tag}.md").write_text(
        "# Grounding probe (encoder + option classifier, no LM)\n\n"
        f"`{meta['command']}`\n\n" + to_markdown(results)
    )
    return results


if __name__ == "__main__":
    main()
