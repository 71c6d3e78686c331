"""Collate: images stacked, text kept as lists, ints as long tensors."""

import pytest
import torch

from textvision.data.collate import collate_samples


def _sample(i, size=(6, 9), options=("a", "b")):
    return {
        "image": torch.rand(3, *size),
        "instruction": f"q{i}",
        "prompt": f"q{i} Options: a, b.",
        "answer": options[i % len(options)] if options else "free",
        "options": list(options),
        "label": i % len(options) if options else -1,
        "id": f"id{i}",
        "pair_id": i // 2,
        "category": "colour",
    }


def test_collate_shapes_and_types():
    samples = [_sample(i) for i in range(5)] + [_sample(5, options=())]
    batch = collate_samples(samples)
    assert batch["image"].shape == (6, 3, 6, 9)
    assert torch.equal(batch["image"][2], samples[2]["image"])
    assert batch["label"].dtype == torch.long and batch["label"].tolist() == [0, 1, 0, 1, 0, -1]
    assert batch["pair_id"].tolist() == [0, 0, 1, 1, 2, 2]
    assert batch["options"][-1] == [] and batch["options"][0] == ["a", "b"]
    assert batch["instruction"] == [f"q{i}" for i in range(6)]
    assert batch["id"][3] == "id3" and batch["category"] == ["colour"] * 6


def test_collate_errors_name_the_samples():
    with pytest.raises(ValueError, match="empty"):
        collate_samples([])
    with pytest.raises(ValueError, match="id1"):
        collate_samples([_sample(0), _sample(1, size=(6, 8))])
    broken = _sample(0)
    del broken["answer"]
    with pytest.raises(ValueError, match=r"id0.*answer"):
        collate_samples([broken])


def test_collate_keeps_extras_every_sample_carries():
    samples = [dict(_sample(i), option_texts=["left", "right"], note=i) for i in range(3)]
    del samples[1]["note"]  # carried by some samples only: not batched
    batch = collate_samples(samples)
    assert batch["option_texts"] == [["left", "right"]] * 3
    assert "note" not in batch
    assert batch["target_patch"].tolist() == [-1, -1, -1]  # optional key, always a tensor
