"""Benchmark by name → dataset → scores: the entry point the CLI and Python users share.

``evaluate_benchmark(model, benchmark, data, ...)`` is the documented way to evaluate a model
object directly (the tests inject scripted models here); the CLI adds checkpoint loading and the
result files.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from textvision.eval.evaluator import evaluate_multiple_choice
from textvision.eval.magnifierbench import MagnifierBenchmark
from textvision.eval.mmvp import MMVPBenchmark
from textvision.eval.mmvp_vlm import MMVPVLMBenchmark, score_mmvp_vlm
from textvision.eval.protocol import ImageTextScorer, MultipleChoiceModel

__all__ = [
    "BENCHMARKS",
    "DEFAULT_SYNTHETIC_FACTORY",
    "SYNTHETIC_BENCHMARKS",
    "evaluate_benchmark",
    "load_benchmark",
    "resolve_callable",
]

SYNTHETIC_BENCHMARKS = ("magnifier", "mmvp_pairs")
BENCHMARKS = ("mmvp", "mmvp_vlm", "magnifierbench", *SYNTHETIC_BENCHMARKS)

#: ``module:callable`` building a synthetic evaluation set:
#: ``factory(name, **kwargs) -> Sequence[EvalSample]`` (kwargs from ``--synthetic-args``).
DEFAULT_SYNTHETIC_FACTORY = "textvision.eval.synthetic_sets:build_synthetic_set"


def resolve_callable(target: str) -> Callable[..., Any]:
    """Import ``"package.module:attribute"``; a clear error if it does not exist."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"expected 'module:callable', got {target!r}")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ImportError(f"cannot import {target!r}: {error}") from error


def load_benchmark(
    benchmark: str,
    data: str | Path | Sequence[Mapping[str, Any]] | None,
    *,
    image_size: int | None = None,
    errata: bool = False,
    skip_missing_images: bool = False,
    split: str = "test",
    synthetic_factory: str = DEFAULT_SYNTHETIC_FACTORY,
    synthetic_args: Mapping[str, Any] | None = None,
) -> Any:
    """Build the dataset of ``benchmark``.

    Args:
        benchmark: one of :data:`BENCHMARKS`.
        data: the benchmark folder / file / hub name; for a synthetic set, an already-built
            sequence of samples or ``None`` to build one with ``synthetic_factory``.
        image_size: model input size (square); MMVP-VLM requires it.
        errata: MMVP label errata.
        skip_missing_images: MMVP / MMVP-VLM: skip items with a missing image instead of raising.
        split: MagnifierBench split.
        synthetic_factory, synthetic_args: how to build a synthetic set when ``data`` is None.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {BENCHMARKS}")
    if benchmark in SYNTHETIC_BENCHMARKS:
        if data is not None and not isinstance(data, str | Path):
            return data
        if data is not None:
            raise ValueError(
                f"{benchmark} is generated, not read: build it with --synthetic-args, not --data"
            )
        factory = resolve_callable(synthetic_factory)
        kwargs = dict(synthetic_args or {})
        if image_size is not None:
            kwargs.setdefault("image_size", image_size)
        return factory(benchmark, **kwargs)
    if data is None:
        raise ValueError(f"{benchmark} needs --data (its folder, file or dataset name)")
    if not isinstance(data, str | Path):
        return data
    if benchmark == "mmvp":
        return MMVPBenchmark(
            data, errata=errata, image_size=image_size, skip_missing_images=skip_missing_images
        )
    if benchmark == "mmvp_vlm":
        if image_size is None:
            raise ValueError("mmvp_vlm needs image_size (the scorer's input size)")
        return MMVPVLMBenchmark(data, image_size=image_size, skip_missing_images=skip_missing_images)
    return MagnifierBenchmark(data, split=split, image_size=image_size)


def evaluate_benchmark(
    model: MultipleChoiceModel | ImageTextScorer,
    benchmark: str,
    data: str | Path | Sequence[Mapping[str, Any]] | None = None,
    *,
    mode: str = "options",
    image_size: int | None = None,
    errata: bool = False,
    skip_missing_images: bool = False,
    split: str = "test",
    batch_size: int = 8,
    max_new_tokens: int = 16,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    synthetic_factory: str = DEFAULT_SYNTHETIC_FACTORY,
    synthetic_args: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``benchmark``; returns the result dict the report writer takes.

    ``model`` implements :class:`~textvision.eval.protocol.MultipleChoiceModel` (every benchmark
    but ``mmvp_vlm``) or :class:`~textvision.eval.protocol.ImageTextScorer` (``mmvp_vlm``). The
    result holds ``dataset`` (the settings that define the numbers: errata, prompt, skips),
    ``metrics`` (:func:`textvision.eval.metrics.summarize`'s names, ``by_category`` inside),
    ``headline`` and ``items``.
    """
    dataset = load_benchmark(
        benchmark,
        data,
        image_size=image_size,
        errata=errata,
        skip_missing_images=skip_missing_images,
        split=split,
        synthetic_factory=synthetic_factory,
        synthetic_args=synthetic_args,
    )
    described = (
        dataset.describe()
        if hasattr(dataset, "describe")
        else {
            "benchmark": benchmark,
            "items": len(dataset),
            "image_size": image_size,
        }
    )
    if benchmark == "mmvp_vlm":
        if not isinstance(model, ImageTextScorer):
            raise TypeError(
                f"mmvp_vlm scores image-text similarity; {type(model).__name__} has no "
                "similarity(images, texts) (wrap a CLIP model in textvision.eval.mmvp_vlm.OpenCLIPScorer)"
            )
        result = score_mmvp_vlm(
            model, dataset, batch_pairs=max(1, batch_size // 2), device=device, progress=progress
        )
        result = {
            "benchmark": benchmark,
            "headline": {"metric": "average", "scorer": "official", "value": result["metrics"]["average"]},
            **result,
        }
    else:
        if not isinstance(model, MultipleChoiceModel):
            raise TypeError(f"{type(model).__name__} lacks score_options/generate (MultipleChoiceModel)")
        result = evaluate_multiple_choice(
            model,
            dataset,
            benchmark=benchmark,
            mode=mode,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            num_workers=num_workers,
            device=device,
            progress=progress,
        )
    return {**result, "dataset": described}
