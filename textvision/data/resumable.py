"""Training loaders that Lightning resumes mid-epoch, bit for bit.

Lightning saves the state of a training dataloader in every checkpoint when the loader has
``state_dict``/``load_state_dict`` (its ``_Stateful`` protocol; ``FitLoop.on_save_checkpoint``
stores ``CombinedLoader._state_dicts()``), and hands the state back before the first batch of a
resumed fit. :class:`ResumableDataLoader` is a plain ``torch.utils.data.DataLoader`` with that
protocol:

* its state is the number of batches it has handed out in the current pass (and the sampler's
  epoch, for samplers with ``set_epoch``);
* on resume it skips that many batches of *indices* at the start of the next pass, so nothing
  before the resume point is loaded or rendered, and with a sampler whose order is a function of
  the epoch (sequential, :class:`EpochSeededRandomSampler`, ``DistributedSampler``) the resumed
  stream is exactly the uninterrupted one from the next batch on.

:class:`EpochSeededRandomSampler` replaces ``RandomSampler``'s draw from the global RNG (which
depends on everything that ran before) with a permutation seeded by ``(seed, epoch)``.

Why not ``torchdata``'s ``StatefulDataLoader``: the project's datasets are pure functions of the
index, so the position is the whole state, and a ``DataLoader`` subclass keeps the dependency
set as it is (torchdata 0.11 is the last release, and tracks torch internals).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

__all__ = ["EpochSeededRandomSampler", "ResumableDataLoader"]


class EpochSeededRandomSampler(Sampler[int]):
    """A random permutation of ``range(size)`` that depends only on ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` at every epoch start (as for ``DistributedSampler``), so each
    epoch has its own order and a resumed run redraws exactly the same one.
    """

    def __init__(self, size: int, *, seed: int = 0) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.size = int(size)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(self.size, generator=generator).tolist()


class _SkipFirst:
    """The loader's index sampler, skipping the loader's pending resume offset at the next pass."""

    def __init__(self, loader: ResumableDataLoader, inner: Any) -> None:
        self.loader = loader
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        skip, self.loader._skip = self.loader._skip, 0
        indices = iter(self.inner)
        for _ in range(skip):
            if next(indices, _END) is _END:
                return
        yield from indices


_END = object()


class _Counting:
    """Iterator of one pass that counts the batches it hands out into ``loader._position``."""

    def __init__(self, loader: ResumableDataLoader, iterator: Iterator[Any]) -> None:
        self.loader = loader
        self.iterator = iterator

    def __iter__(self) -> _Counting:
        return self

    def __len__(self) -> int:
        return len(self.iterator)  # type: ignore[arg-type]

    def __next__(self) -> Any:
        batch = next(self.iterator)
        self.loader._position += 1
        return batch


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position Lightning saves in checkpoints and restores on resume.

    Takes exactly ``DataLoader``'s arguments (so Lightning can re-create it with a distributed
    sampler). The position counts batches handed to the training loop, not batches that worker
    processes prefetched, so ``num_workers > 0`` resumes at the same place.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._position = 0  # batches handed out in the current pass
        self._skip = 0  # batches to skip at the start of the next pass (set by load_state_dict)

    @property
    def _index_sampler(self):  # the sampler torch's iterators draw indices from
        return _SkipFirst(self, super()._index_sampler)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        self._position = self._skip
        return _Counting(self, super().__iter__())

    def _epoch_sampler(self) -> Any:
        for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if callable(getattr(sampler, "set_epoch", None)):
                return sampler
        return None

    def state_dict(self) -> dict[str, Any]:
        sampler = self._epoch_sampler()
        return {
            "batches": int(self._position),
            "batches_per_pass": len(self),
            "epoch": None if sampler is None else int(getattr(sampler, "epoch", 0)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = int(state.get("batches_per_pass", len(self)))
        if expected != len(self):
            raise ValueError(
                f"cannot resume the training data: the checkpoint's loader had {expected} batches per "
                f"epoch, this one has {len(self)} (batch size, data size or data files differ)"
            )
        batches, epoch = int(state["batches"]), state.get("epoch")
        if batches >= len(self):  # saved at the very end of a pass: the next one starts afresh
            batches = 0
            epoch = None if epoch is None else int(epoch) + 1
        self._skip = self._position = batches
        sampler = self._epoch_sampler()
        if sampler is not None and epoch is not None:
            sampler.set_epoch(int(epoch))

    def rewind(self, batches: int) -> None:
        """Forget the last ``batches`` handed out (they were not trained on: a batch in flight
        when an exception stopped the fit), so a checkpoint saved now resumes with them."""
        self._position = max(0, self._position - int(batches))
