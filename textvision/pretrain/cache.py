"""The pretrained ViT on first use: run the pretraining config once, cache the export by its content.

``pretrained_vit(pretraining="configs/pretrain/demo_vit.yaml")`` is what ``configs/demo.yaml``
names as its backbone: it looks the config up in the cache (``$TEXTVISION_CACHE``, default
``~/.cache/textvision``, then ``pretrain/<key>/``), runs ``python -m textvision.pretrain fit``
in a subprocess when it is missing (its own process: its seeding, threads and logging never touch
the caller's), and builds the backbone from the export with ``checkpoint_path`` — the same
strict, reported load as any local checkpoint. The key is a hash of the parsed YAML (comments and
formatting do not count) and of :data:`PRETRAINING_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from textvision.pretrain.cli import EXPORT_RECORD
from textvision.pretrain.module import BACKBONE_FILE, HEADS_FILE
from textvision.vision.backbone import VisionBackbone

__all__ = ["PRETRAINING_VERSION", "cache_key", "pretrained_export", "pretrained_vit", "resolve_config"]

_logger = logging.getLogger(__name__)

#: bump when the pretraining code changes what a config produces, so old exports are not reused
PRETRAINING_VERSION = 2


def resolve_config(path: str | Path) -> Path:
    """``path`` as given if it exists, else relative to the source checkout (for ``configs/...``)."""
    path = Path(path)
    candidates = [path] if path.is_absolute() else [path, Path(__file__).resolve().parents[2] / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"pretraining config {str(path)!r} not found (looked in {[str(c) for c in candidates]})"
    )


def cache_key(config: str | Path) -> str:
    """16 hex digits of a hash of the parsed YAML and :data:`PRETRAINING_VERSION`."""
    parsed = yaml.safe_load(resolve_config(config).read_text())
    canonical = json.dumps({"config": parsed, "version": PRETRAINING_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("TEXTVISION_CACHE", Path.home() / ".cache" / "textvision")) / "pretrain"


def pretrained_export(config: str | Path, *, cache_dir: str | Path | None = None) -> Path:
    """The export folder of ``config`` (weights + ``pretraining.json``), made on first use."""
    config = resolve_config(config)
    root = _cache_root(cache_dir)
    folder = root / cache_key(config)
    if (folder / EXPORT_RECORD).is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=root))
    command = [
        sys.executable, "-m", "textvision.pretrain", "fit", "-c", str(config),
        "--export_dir", str(work / "export"), "--trainer.default_root_dir", str(work / "run"),
    ]  # fmt: skip
    _logger.warning("pretraining the vision backbone (%s), cached at %s", config, folder)
    print(f"textvision: pretraining the vision backbone from {config} (once; cached at {folder})", flush=True)
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-30:])
        shutil.rmtree(work, ignore_errors=True)
        raise RuntimeError(f"vision pretraining failed ({' '.join(command)}):\n{tail}")
    try:
        (work / "export").rename(folder)  # atomic: a concurrent run that finished first wins
    except OSError:
        if not (folder / EXPORT_RECORD).is_file():
            raise
    shutil.rmtree(work, ignore_errors=True)
    return folder


def export_record(folder: str | Path) -> dict[str, Any]:
    """The ``pretraining.json`` of an export folder."""
    return json.loads((Path(folder) / EXPORT_RECORD).read_text())


def pretrained_vit(
    *, pretraining: str = "configs/pretrain/demo_vit.yaml", cache_dir: str | None = None
) -> VisionBackbone:
    """The backbone that ``pretraining`` trains, loaded from its cached export.

    Usable from YAML as ``class_path: textvision.pretrain.pretrained_vit``. The backbone's class
    and architecture come from the export record (the pretraining config's ``model.backbone``),
    the weights from ``backbone.safetensors`` through ``checkpoint_path`` (strict, with a load
    report; frozen, it is left out of VLM checkpoints and reloaded from here).
    """
    import importlib

    folder = pretrained_export(pretraining, cache_dir=cache_dir)
    spec = export_record(folder)["backbone"]
    module, _, name = spec["class_path"].rpartition(".")
    factory = getattr(importlib.import_module(module), name)
    init_args = {**spec["init_args"], "checkpoint_path": str(folder / BACKBONE_FILE)}
    return factory(**init_args)


def alignment_heads_path(pretraining: str | Path, *, cache_dir: str | Path | None = None) -> Path:
    """``alignment_heads.safetensors`` of the cached export of ``pretraining``."""
    return pretrained_export(pretraining, cache_dir=cache_dir) / HEADS_FILE
