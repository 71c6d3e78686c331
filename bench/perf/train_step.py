"""Training-step throughput of the demo model on CPU (samples/s).

Builds the model and data exactly as ``configs/demo.yaml`` does (through LightningCLI, nothing
is run), pre-generates the batches (data generation is benchmarked in ``bench/perf/data.py``), then times
full optimizer steps: encoder (text features cached after the first sight of an instruction, as
in training) + projector + LM forward, backward, gradient clipping, AdamW. Reports the median and
the spread over timed steps; writes JSON and markdown.

    python -m textvision.bench.perf.train_step --steps 20 --out results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

__all__ = ["main", "measure"]


def measure(config: str, *, steps: int, warmup: int, batch_size: int | None, threads: int | None) -> dict:
    from textvision.train.cli import TextVisionCLI

    if threads:
        torch.set_num_threads(threads)
    args = ["-c", config, "--trainer.logger", "false"]
    if batch_size:
        args += ["--data.init_args.batch_size", str(batch_size)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        cli = TextVisionCLI(args=args, run=False)
    module, datamodule = cli.model, cli.datamodule
    datamodule.setup("fit")
    loader = iter(datamodule.train_dataloader())
    batches = [next(loader) for _ in range(warmup + steps)]
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    times = []
    for index, batch in enumerate(batches):
        start = time.perf_counter()
        loss = module.vlm.loss(batch["image"], batch["instruction"], batch["prompt"], batch["answer"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    size = len(batches[0]["answer"])
    median = statistics.median(times)
    encoder = module.vlm.encoder
    return {
        "config": config,
        "batch_size": size,
        "steps_timed": steps,
        "warmup_steps": warmup,
        "step_seconds_median": round(median, 4),
        "step_seconds_min": round(min(times), 4),
        "step_seconds_max": round(max(times), 4),
        "samples_per_second": round(size / median, 2),
        "trainable_parameters": sum(p.numel() for p in params),
        "visual_tokens_to_lm": encoder.num_tokens() if hasattr(encoder, "num_tokens") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        # Other processes compete for the cores; the 1-minute load average says how much.
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=None, help="default: the config's")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to time")
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)
    results = [
        measure(
            args.config, steps=args.steps, warmup=args.warmup, batch_size=args.batch_size, threads=threads
        )
        for threads in args.threads
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_step.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [
        f"| {r['torch_threads']} | {r['batch_size']} | {r['step_seconds_median']} s | "
        f"{r['step_seconds_min']} s | "
        f"{r['step_seconds_max']} s | {r['samples_per_second']} | {r['trainable_parameters'] / 1e6:.2f} M | "
        f"{r['visual_tokens_to_lm']} | {r['load_average_1min']} |"
        for r in results
    ]
    first = results[0]
    (out / "train_step.md").write_text(
        "# Training-step throughput, demo model, CPU\n\n"
        "| threads | batch | step (median) | min | max | samples/s | trainable params | visual tokens to LM "
        "| load avg (1 min) |\n"
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        + "\n".join(rows)
        + f"\n\n`python -m textvision.bench.perf.train_step --steps {args.steps} --warmup {args.warmup} "
        f"--threads {' '.join(map(str, args.threads))}` on {first['platform']}, torch {first['torch']}, "
        f"{first['cpu_count']} CPUs; full optimizer steps (forward, backward, clipping, AdamW), batches "
        "pre-generated. The load average counts other processes on the same cores during the run.\n"
    )
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
