"""ResumableDataLoader: the position survives state_dict/load_state_dict, skipped batches are not
loaded, and the data modules hand Lightning loaders it can resume (its ``_Stateful`` check)."""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.utilities.types import _Stateful
from torch.utils.data import Dataset

from textvision.data.resumable import EpochSeededRandomSampler, ResumableDataLoader
from textvision.train.data_modules import SyntheticMixDataModule


class Recording(Dataset):
    def __init__(self, size: int) -> None:
        self.size = size
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        self.loaded.append(int(index))
        return int(index)


def _batches(loader, count=None):
    out = []
    for batch in loader:
        out.append(batch.tolist())
        if count is not None and len(out) == count:
            break
    return out


@pytest.mark.parametrize("shuffle", [False, True])
def test_resume_continues_the_pass_without_loading_skipped_items(shuffle):
    def make(data):
        sampler = EpochSeededRandomSampler(len(data), seed=3) if shuffle else None
        return ResumableDataLoader(data, batch_size=4, sampler=sampler)

    full = _batches(make(Recording(22)))
    first = make(Recording(22))
    head = _batches(first, count=2)
    state = first.state_dict()
    assert state["batches"] == 2 and state["batches_per_pass"] == 6

    data = Recording(22)
    resumed = make(data)
    resumed.load_state_dict(state)
    tail = _batches(resumed)
    assert head + tail == full
    assert sorted(data.loaded) == sorted(i for batch in full[2:] for i in batch)  # nothing before
    assert _batches(resumed) == full  # the next pass (same epoch) is whole again


def test_epoch_seeded_order_depends_on_seed_and_epoch_only():
    sampler = EpochSeededRandomSampler(50, seed=1)
    torch.manual_seed(0)
    a = list(sampler)
    torch.manual_seed(123)  # the global RNG plays no part
    assert list(sampler) == a
    sampler.set_epoch(1)
    assert list(sampler) != a and sorted(sampler) == list(range(50))


def test_state_at_the_end_of_a_pass_starts_the_next_epoch():
    sampler = EpochSeededRandomSampler(8, seed=0)
    loader = ResumableDataLoader(Recording(8), batch_size=4, sampler=sampler)
    _batches(loader)
    state = loader.state_dict()
    assert state == {"batches": 2, "batches_per_pass": 2, "epoch": 0}
    fresh = ResumableDataLoader(Recording(8), batch_size=4, sampler=EpochSeededRandomSampler(8, seed=0))
    fresh.load_state_dict(state)
    assert fresh.sampler.epoch == 1 and len(_batches(fresh)) == 2


def test_a_different_stream_is_refused():
    loader = ResumableDataLoader(Recording(8), batch_size=4)
    with pytest.raises(ValueError, match="2 batches per epoch, this one has 4"):
        ResumableDataLoader(Recording(8), batch_size=2).load_state_dict(
            {"batches": 1, "batches_per_pass": loader.state_dict()["batches_per_pass"], "epoch": None}
        )


def test_worker_processes_resume_at_the_same_batch():
    full = _batches(ResumableDataLoader(Recording(20), batch_size=4))
    loader = ResumableDataLoader(Recording(20), batch_size=4, num_workers=2)
    head = _batches(loader, count=3)  # workers have prefetched further; the position is what was handed out
    state = loader.state_dict()
    assert state["batches"] == 3
    resumed = ResumableDataLoader(Recording(20), batch_size=4, num_workers=2)
    resumed.load_state_dict(state)
    assert head + _batches(resumed) == full


def test_data_modules_give_lightning_a_stateful_training_loader():
    module = SyntheticMixDataModule(
        batch_size=4, train_size=40, val_size=8, test_size=8, objects_warmup_steps=3
    )
    module.setup("fit")
    train = module.train_dataloader()
    assert isinstance(train, _Stateful)
    assert not any(isinstance(loader, _Stateful) for loader in module.val_dataloader())
