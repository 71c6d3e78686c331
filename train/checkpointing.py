"""Checkpoint files: a safetensors export of every checkpoint, and a checkpoint that is never lost.

:class:`ResumableCheckpoint` is Lightning's ``ModelCheckpoint`` that also saves the final step,
saves on exceptions and on SIGTERM (Lightning's ``save_on_exception`` and its SIGTERM handling),
and turns the first Ctrl-C into the same graceful stop at the end of the current batch.

:class:`SafetensorsCheckpointIO` is a Lightning ``CheckpointIO`` plugin (public plugin API): it
writes the usual ``.ckpt`` (loadable with ``torch.load(..., weights_only=True)``) and, beside it,
``<name>.safetensors`` holding the same ``state_dict`` — which :class:`TextVisionModule` has
already reduced to trainable weights (frozen pretrained weights are rebuilt from their source on
load). Tensors that share memory (tied LM embeddings) are stored once; the aliases are recorded
in the safetensors metadata and restored by :func:`load_state_dict_safetensors`.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import CombinedLoader
from safetensors.torch import load_file, save_file

__all__ = [
    "ResumableCheckpoint",
    "SafetensorsCheckpointIO",
    "load_state_dict_safetensors",
    "save_state_dict_safetensors",
]

log = logging.getLogger(__name__)

#: the signal that stopped the last fit through :class:`ResumableCheckpoint`'s Ctrl-C handling
INTERRUPTED_BY: int | None = None

_ALIASES_KEY = "textvision_aliases"


def save_state_dict_safetensors(
    state: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None
):
    """Write ``state`` to ``path``; tensors sharing storage are written once and recorded as aliases."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    by_storage: dict[tuple, str] = {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            continue
        key = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.dtype,
        )
        if tensor.numel() and key in by_storage:
            aliases[name] = by_storage[key]
            continue
        by_storage[key] = name
        tensors[name] = tensor.detach().contiguous().cpu()
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    meta[_ALIASES_KEY] = json.dumps(aliases)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def load_state_dict_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a file written by :func:`save_state_dict_safetensors`, aliases restored."""
    from safetensors import safe_open

    state = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    for alias, target in json.loads(meta.get(_ALIASES_KEY, "{}")).items():
        state[alias] = state[target]
    return state


class SafetensorsCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that also exports ``state_dict`` as ``<checkpoint stem>.safetensors``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        meta = {"global_step": checkpoint.get("global_step", 0), "epoch": checkpoint.get("epoch", 0)}
        save_state_dict_safetensors(checkpoint["state_dict"], Path(path).with_suffix(".safetensors"), meta)

    def remove_checkpoint(self, path: _PATH) -> None:
        super().remove_checkpoint(path)
        Path(path).with_suffix(".safetensors").unlink(missing_ok=True)


def _rng_state() -> dict[str, Any]:
    """The global random states, in types ``torch.load(weights_only=True)`` reads back."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    numpy = state.get("numpy")
    if numpy is not None:
        keys = numpy["keys"].numpy().astype(np.uint32)
        np.random.set_state((numpy["kind"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached"]))
    if state.get("python") is not None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _train_loaders(trainer) -> list[Any]:
    loaders = trainer.train_dataloader
    if loaders is None:
        return []
    if isinstance(loaders, CombinedLoader):
        return list(loaders.flattened)
    if isinstance(loaders, dict):
        return list(loaders.values())
    if isinstance(loaders, list | tuple):
        return list(loaders)
    return [loaders]


class ResumableCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments) that never loses the steps since the last save.

    * **The final step**: when training ends (``max_steps``, ``max_epochs``, ``should_stop``) and
      the last save was at an earlier step, ``last.ckpt`` is written for the final step
      (Lightning's own ``on_train_end`` writes it only if *nothing* was saved during the run).
    * **Exceptions and SIGTERM**: ``save_on_exception`` defaults to ``True`` (Lightning's option;
      its SIGTERM handler stops the fit at the end of the current batch with ``SIGTERMException``,
      which reaches ``on_exception`` too). A batch that was in flight when the exception came (the
      loader had handed it out but the step never finished) is handed back to a
      :class:`~textvision.data.resumable.ResumableDataLoader` first, so resuming from the
      exception checkpoint trains on it.
    * **Ctrl-C**: the first SIGINT is routed to Lightning's SIGTERM handling (a stop at the end of
      the current batch, a checkpoint, then exit); a second one interrupts at once
      (``KeyboardInterrupt``, also checkpointed by ``save_on_exception``).
    * **Random state**: the checkpoint holds the torch (CPU and CUDA), numpy and Python RNG states
      as they were when the next training batch would have started, and a resumed fit restores
      them at its first batch, so dropout draws the same masks as the run that was stopped
      (Lightning does not save RNG states).
    """

    def __init__(
        self,
        *args: Any,
        save_on_exception: bool = True,
        save_last: bool | Literal["link"] | None = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, save_on_exception=save_on_exception, save_last=save_last, **kwargs)
        self._previous_sigint: Any = None
        self._sigint_installed = False
        self._rng_next_batch: dict[str, Any] | None = None
        self._rng_for_checkpoint: dict[str, Any] | None = None  # set while an exception is saved
        self._rng_to_restore: dict[str, Any] | None = None

    # -- random state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["rng"] = self._rng_for_checkpoint or _rng_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self._rng_to_restore = state_dict.pop("rng", None)
        super().load_state_dict(state_dict)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._rng_to_restore is not None:  # the first batch of a resumed fit
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # what the next batch starts with (other callbacks may fail before this one's batch start)
        self._rng_next_batch = _rng_state()

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._rng_next_batch = _rng_state()

    # -- Ctrl-C ------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        if threading.current_thread() is not threading.main_thread() or self._sigint_installed:
            return
        sigterm_handler = signal.getsignal(signal.SIGTERM)
        previous = signal.getsignal(signal.SIGINT)

        def on_sigint(signum, frame):
            global INTERRUPTED_BY
            INTERRUPTED_BY = signum
            # one graceful stop; a second Ctrl-C gets Python's KeyboardInterrupt
            signal.signal(signal.SIGINT, signal.default_int_handler)
            print(
                f"\nCtrl-C: stopping after step {trainer.global_step + 1} and saving a checkpoint "
                "(Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )
            if callable(sigterm_handler) and sigterm_handler not in (signal.SIG_DFL, signal.SIG_IGN):
                sigterm_handler(signum, frame)  # Lightning's: received_sigterm, stop at the batch end
            else:
                trainer.should_stop = True

        self._previous_sigint = previous
        signal.signal(signal.SIGINT, on_sigint)
        self._sigint_installed = True

    def _restore_sigint(self) -> None:
        if self._sigint_installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_sigint or signal.default_int_handler)
        self._sigint_installed = False

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore_sigint()
        super().teardown(trainer, pl_module, stage)

    # -- the final step ----------------------------------------------------------------------
    def on_train_end(self, trainer, pl_module) -> None:
        if (
            self.save_last
            and not trainer.fast_dev_run
            and trainer.global_step > 0
            and self._last_global_step_saved != trainer.global_step
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)
        self._restore_sigint()

    # -- exceptions --------------------------------------------------------------------------
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        epoch_loop = trainer.fit_loop.epoch_loop
        progress = epoch_loop.batch_progress.current
        in_flight = progress.ready - progress.processed
        if not (self._should_save_on_exception(trainer) and in_flight > 0):
            super().on_exception(trainer, pl_module, exception)
            self._restore_sigint()
            return
        for loader in _train_loaders(trainer):
            if callable(getattr(loader, "rewind", None)):
                loader.rewind(in_flight)
        # the batch will be redone: give it the random state it started with
        self._rng_for_checkpoint = self._rng_next_batch
        # Lightning's restart adds one to its logging step counter unless the checkpoint was
        # taken at a batch end; this one was taken before the batch ran, so take it back.
        stepped = getattr(epoch_loop, "_batches_that_stepped", None)
        if isinstance(stepped, int) and stepped > 0:
            epoch_loop._batches_that_stepped = stepped - 1
        try:
            super().on_exception(trainer, pl_module, exception)
        finally:
            if isinstance(stepped, int):
                epoch_loop._batches_that_stepped = stepped
            self._rng_for_checkpoint = None
            self._restore_sigint()
