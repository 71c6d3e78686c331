"""``python -m textvision.pretrain fit -c configs/pretrain/demo_vit.yaml [--export_dir DIR]``.

LightningCLI over :class:`VisionPretraining` and :class:`PretrainingDataModule`. With
``--export_dir`` the fitted backbone and alignment heads are written there after training
(:meth:`VisionPretraining.export`), with the backbone's ``class_path``/``init_args`` and the
zero-shot grounding measured on the validation questions (``pretraining.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.cli import ArgsType, LightningCLI

from textvision.pretrain.data import PretrainingDataModule
from textvision.pretrain.module import VisionPretraining

__all__ = ["PretrainCLI", "main"]

#: written by ``--export_dir`` beside the weights
EXPORT_RECORD = "pretraining.json"


class PretrainCLI(LightningCLI):
    """LightningCLI for vision pretraining; ``--export_dir`` exports after ``fit``."""

    def __init__(self, args: ArgsType = None, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(VisionPretraining, PretrainingDataModule, args=args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--export_dir", type=str | None, default=None, help="write the pretrained weights here"
        )

    def after_fit(self) -> None:
        config = self.config.get(self.config.get("subcommand") or "fit", self.config)
        folder = config.get("export_dir")
        if not folder or self.trainer.global_rank != 0:
            return
        self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
        paths = self.model.export(folder)
        backbone = config["model"]["backbone"]
        record = {
            "backbone": {"class_path": backbone["class_path"], "init_args": dict(backbone["init_args"])},
            "steps": self.trainer.global_step,
            "zero_shot_grounding": getattr(self.model, "zero_shot", {}),
            "files": {k: p.name for k, p in paths.items()},
        }
        (Path(folder) / EXPORT_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")


def main(args: ArgsType = None) -> PretrainCLI:
    return PretrainCLI(args=args)
