"""Batching samples: images stacked, text kept as lists (the VLM owns the tokenisers and pads)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch
from torch import Tensor

from textvision.data.sample import SAMPLE_KEYS

__all__ = ["Batch", "collate_samples"]


class Batch(TypedDict):
    """A collated batch of ``B`` samples (see :mod:`textvision.data.sample` for each key).

    ``image`` is ``(B, 3, H, W)``; ``label``, ``pair_id`` and ``target_patch`` (``-1`` for samples
    that do not name it) are ``(B,)`` long tensors; every other key is a list of length ``B``
    (``options`` a list of lists, lengths may differ). Keys beyond the sample contract that every
    sample of the batch carries (a benchmark's extras, e.g. MMVP's ``option_texts``) are kept as
    lists too, so the evaluator can copy them into its per-item results.
    """

    image: Tensor
    instruction: list[str]
    prompt: list[str]
    answer: list[str]
    options: list[list[str]]
    label: Tensor
    id: list[str]
    pair_id: Tensor
    category: list[str]
    target_patch: Tensor


def collate_samples(samples: Sequence[dict]) -> Batch:
    """Stack images and gather the text fields of ``samples`` into a :class:`Batch`.

    Raises:
        ValueError: empty batch, a sample missing a key, or images of different sizes (the message
            names the offending sample ids; resize images when loading, e.g. ``image_size``).
    """
    if len(samples) == 0:
        raise ValueError("cannot collate an empty batch")
    for sample in samples:
        missing = [key for key in SAMPLE_KEYS if key not in sample]
        if missing:
            raise ValueError(f"sample {sample.get('id', '<no id>')!r} lacks keys {missing}")
    shapes = {tuple(s["image"].shape) for s in samples}
    if len(shapes) > 1:
        first = tuple(samples[0]["image"].shape)
        odd = [s["id"] for s in samples if tuple(s["image"].shape) != first][:5]
        raise ValueError(
            f"images of one batch must share a size: {samples[0]['id']!r} is {first}, "
            f"but {odd} differ (all sizes: {sorted(shapes)}); resize them when loading "
            "(image_size; `textvision eval --image-size`)"
        )
    known = {*SAMPLE_KEYS, "target_patch"}
    extras = [key for key in samples[0] if key not in known and all(key in s for s in samples[1:])]
    batch = Batch(
        image=torch.stack([s["image"] for s in samples]),
        instruction=[s["instruction"] for s in samples],
        prompt=[s["prompt"] for s in samples],
        answer=[s["answer"] for s in samples],
        options=[list(s["options"]) for s in samples],
        label=torch.tensor([int(s["label"]) for s in samples], dtype=torch.long),
        id=[s["id"] for s in samples],
        pair_id=torch.tensor([int(s["pair_id"]) for s in samples], dtype=torch.long),
        category=[s["category"] for s in samples],
        target_patch=torch.tensor([int(s.get("target_patch", -1)) for s in samples], dtype=torch.long),
    )
    for key in extras:
        batch[key] = [s[key] for s in samples]  # type: ignore[literal-required]
    return batch
