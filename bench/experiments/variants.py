"""The experiments' variants: one overlay YAML each in ``configs/ablation/`` (the file's header says
what it changes), merged over the base config as ``textvision fit -c base -c overlay`` does. A new
file is a new variant of every experiment; which variant is text-agnostic is read from what its
fusion and scorer classes declare, never from its name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textvision.bench.experiments.runs import VARIANT_CONFIGS, BenchSettings, RunSpec, describe_encoder
from textvision.train.cli import parse_config

__all__ = [
    "VARIANT_CONFIGS",
    "default_agnostic",
    "text_agnostic_variants",
    "variant_encoder",
    "variant_names",
    "variant_spec",
]


def variant_names(folder: str | Path = VARIANT_CONFIGS) -> list[str]:
    """The variants: one per overlay YAML in ``folder``."""
    return sorted(p.stem for p in Path(folder).glob("*.yaml"))


def variant_spec(
    variant: str | None,
    *,
    keep_tokens: int | None = None,
    keep_ratio: float | None = None,
    scorer: str | None = None,
    folder: str | Path = VARIANT_CONFIGS,
) -> RunSpec:
    """The :class:`RunSpec` of ``<folder>/<variant>.yaml`` (None: the base config alone) at a budget."""
    if variant is None:
        return RunSpec(None, keep_tokens=keep_tokens, keep_ratio=keep_ratio, scorer=scorer)
    path = Path(folder) / f"{variant}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown variant {variant!r}; choose from {variant_names(folder)} (in {folder})")
    return RunSpec(str(path), keep_tokens=keep_tokens, keep_ratio=keep_ratio, scorer=scorer)


def variant_encoder(variant: str | None, settings: BenchSettings) -> dict[str, Any]:
    """:func:`describe_encoder` of a variant overlay merged over the base config (None: the base)."""
    args = ["-c", str(settings.base_config)]
    if variant is not None:
        args += ["-c", variant_spec(variant, keep_ratio=1.0, folder=settings.variant_configs).overlay]
    return describe_encoder(parse_config(args)[0])


def text_agnostic_variants(settings: BenchSettings) -> list[str]:
    """The variants whose fusion and scorer both declare that they do not attend to the text
    (``attends_to_text`` of their classes)."""
    out = []
    for name in variant_names(settings.variant_configs):
        encoder = variant_encoder(name, settings)
        if not (encoder["fusion_attends_to_text"] or encoder["scorer_attends_to_text"]):
            out.append(name)
    return out


def default_agnostic(settings: BenchSettings) -> str:
    """The text-agnostic variant of ``settings.variant_configs`` (:func:`text_agnostic_variants`);
    an error unless there is exactly one."""
    found = text_agnostic_variants(settings)
    if len(found) != 1:
        raise ValueError(
            f"{settings.variant_configs}: {len(found)} text-agnostic variants ({found}); "
            "name one with --agnostic"
        )
    return found[0]
