"""Callbacks that stop a fit the way the world does: a signal or an exception at a given step."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from lightning.pytorch import Callback


class SignalAtStep(Callback):
    """Sends ``signal_name`` to this process at the start of the batch after ``step`` optimizer
    steps, i.e. after that step's checkpoint (SIGKILL: the process dies on the spot)."""

    def __init__(self, step: int, signal_name: str = "SIGKILL") -> None:
        self.step = step
        self.signum = getattr(signal, signal_name)
        self.sent = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class FailAtStep(RuntimeError):
    pass


class RaiseInStep(Callback):
    """Raises :class:`FailAtStep` after batch ``step + 1`` was fetched, before it is trained on."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise FailAtStep(f"failed in step {self.step + 1}")


class WriteEvalResults(Callback):
    """Rank 0 writes the module's ``eval_results`` (per-set metrics, item counts) to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_test_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            Path(self.path).write_text(json.dumps(pl_module.eval_results))

    on_validation_end = on_test_end
