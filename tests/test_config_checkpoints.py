"""Every shipped config checkpoints the final step, exceptions, SIGTERM and Ctrl-C, into its own
run folder.

Each config is parsed by the real CLI (``--print_config``: the GPU recipes need no weights); its
checkpoint callback is then built from the config's own class and settings (only ``dirpath``
moved to a temporary folder and ``every_n_train_steps`` scaled down to 2) and run in a tiny fit
whose ``max_steps`` is not a multiple of it: ``last.ckpt`` must hold the final step.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(CONFIGS.glob("*.yaml"))


def _class(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _checkpoint_callbacks(config: dict) -> list[dict]:
    return [
        cb
        for cb in config["trainer"].get("callbacks") or []
        if issubclass(_class(cb["class_path"]), ModelCheckpoint)
    ]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_config_saves_the_final_step(path, print_config, tmp_path):
    config = print_config(path)
    callbacks = _checkpoint_callbacks(config)
    assert callbacks, f"{path.name}: no checkpoint callback"
    for spec in callbacks:
        args = dict(spec.get("init_args") or {})
        assert args.get("save_last") and args.get("save_on_exception"), f"{path.name}: {args}"
        args["dirpath"] = str(tmp_path / "ckpt")
        if args.get("every_n_train_steps"):
            args["every_n_train_steps"] = 2
        args.pop("monitor", None)  # the stand-in model logs no val/acc
        args.pop("mode", None)
        callback = _class(spec["class_path"])(**args)
        trainer = Trainer(
            max_steps=3,
            limit_val_batches=0,
            callbacks=[callback],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=str(tmp_path),
        )
        trainer.fit(BoringModel())
        last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
        assert last["global_step"] == 3, f"{path.name}: last.ckpt holds step {last['global_step']} of 3"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_config_writes_into_its_run_folder(path, print_config):
    """No logger or checkpoint path is spelled out: all follow ``trainer.default_root_dir``."""
    config = print_config(path)
    trainer = config["trainer"]
    assert trainer["default_root_dir"]
    for logger in trainer["logger"]:
        assert logger["init_args"]["save_dir"] == "{run_dir}", (path.name, logger)
    for callback in _checkpoint_callbacks(config):
        dirpath = (callback.get("init_args") or {}).get("dirpath")
        assert dirpath is None or str(dirpath).startswith("{run_dir}"), (path.name, dirpath)
