"""Pretraining scenes: 1 to ``K`` glyphs with every attribute random, one caption per glyph.

Unlike the question sets, nothing here is balanced for a question: colours may repeat, every glyph
gets a random quarter turn, and the object count varies per image, so the encoder sees the range
of scenes the downstream sets draw from (one object, crowded, turned) without any question.
Item ``i`` of a split is a pure function of ``(seed, split, i)``, like every synthetic split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from textvision.data.scene import (
    SceneConfig,
    Scenes,
    render_scenes,
    sample_background,
    sample_balanced_cells,
    sample_offsets,
    sample_rgb,
)
from textvision.data.seeding import SPLITS, IndexRandom, index_seed
from textvision.pretrain.captions import CaptionBank

__all__ = ["PretrainingScenes", "sample_pretraining_scenes"]


def sample_pretraining_scenes(rng: IndexRandom, config: SceneConfig) -> Scenes:
    """``config.num_objects`` object slots per image, the first ``k ~ U{1..K}`` of them drawn;
    shapes are distinct within an image (so "the triangle" names one object), colours and turns
    are free."""
    num = config.num_objects
    shape = rng.permutation(len(config.shapes))[:, :num]
    colour = rng.randint(len(config.colours), num)
    turn = rng.randint(4, num)
    cell = sample_balanced_cells(rng, config, num)
    offset = sample_offsets(rng, config, num)
    background = sample_background(rng, config)
    count = 1 + rng.randint(num)  # (B, 1)
    present = torch.arange(num).unsqueeze(0) < count.view(-1, 1)
    return Scenes(
        shape=shape,
        colour=colour,
        turn=turn,
        cell=cell,
        offset=offset,
        rgb=sample_rgb(rng, config, colour),
        present=present,
        background=background,
    )


class PretrainingScenes(Dataset):
    """``size`` captioned scenes of one split; batches come from :meth:`collate`.

    Args:
        scene: geometry and vocabulary (``num_objects`` is the most objects per image).
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: number of items (nothing is stored; training may use a huge value).
        seed: the set's seed.
    """

    def __init__(self, scene: SceneConfig, *, split: str = "train", size: int = 10**9, seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.scene = scene
        self.split = split
        self.size = int(size)
        self.seed = int(seed)
        self.captions = CaptionBank(scene)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        bad = [int(i) for i in indices if not 0 <= int(i) < self.size]
        if bad:
            raise IndexError(f"indices {bad[:5]} out of range for {self.size} pretraining scenes")
        rng = IndexRandom([index_seed(self.seed, self.split, int(i), salt="pretrain") for i in indices])
        scenes = sample_pretraining_scenes(rng, self.scene)
        caption = self.captions.captions_for(scenes, rng)
        images = render_scenes(scenes, self.scene)
        attributes = self.captions.object_attributes(scenes)
        return [
            {
                "image": images[b],
                "cell": scenes.cell[b],
                "caption": caption[b],
                "attributes": {name: value[b] for name, value in attributes.items()},
            }
            for b in range(len(indices))
        ]

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """A batch: ``image (B, 3, H, W)``, the ``Q`` captions of the drawn objects (``captions``
        strings, ``caption_image (Q,)``, ``caption_patch (Q,)``) and ``targets (Q, B, N)`` bool:
        caption ``q`` fits the object at patch ``n`` of image ``b`` (empty patches fit none)."""
        cell = torch.stack([s["cell"] for s in samples])  # (B, K)
        caption = torch.stack([s["caption"] for s in samples])
        attributes = {k: torch.stack([s["attributes"][k] for s in samples]) for k in samples[0]["attributes"]}
        present = attributes["present"]
        num_patches = self.scene.grid**2
        per_patch = {}
        for name, value in attributes.items():
            per_patch[name] = torch.zeros(cell.shape[0], num_patches, dtype=value.dtype).scatter(
                1, cell, value
            )
        fits = self.captions.fits(per_patch)  # (B, N, C)
        ids = caption[present]
        return {
            "image": torch.stack([s["image"] for s in samples]),
            "captions": [self.captions.texts[int(i)] for i in ids],
            "caption_image": torch.arange(cell.shape[0]).unsqueeze(1).expand_as(cell)[present],
            "caption_patch": cell[present],
            "targets": fits[..., ids].permute(2, 0, 1),
        }
