"""Synthetic data generation: one batch of 64 from each set, rendered on the fly (the demo's scene)."""

from __future__ import annotations

import pytest

from textvision.data.collate import collate_samples
from textvision.data.magnifier import MagnifierGenerator
from textvision.data.mmvp_pairs import MMVPPairsGenerator
from textvision.data.scene import SceneConfig
from textvision.data.synthetic import SyntheticSplit

SCENE = SceneConfig(canvas_size=64, patch_size=8, num_objects=12)


@pytest.mark.parametrize(
    "generator", [MagnifierGenerator, MMVPPairsGenerator], ids=["magnifier", "mmvp_pairs"]
)
def test_generate_and_collate_a_batch_of_64(benchmark, generator):
    split = SyntheticSplit(generator(SCENE), split="train", size=1_000_000, seed=0)
    counter = iter(range(0, 1_000_000, 64))  # a fresh batch each round: nothing is cached

    def batch():
        start = next(counter)
        return collate_samples(split.__getitems__(list(range(start, start + 64))))

    out = benchmark(batch)
    assert out["image"].shape == (64, 3, 64, 64)
