"""``PretrainingDataModule``: captioned scenes to train on, the question sets to validate on."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from torch.utils.data import DataLoader

from textvision.data.collate import collate_samples
from textvision.data.magnifier import MAGNIFIER_CATEGORIES, MagnifierGenerator
from textvision.data.mmvp_pairs import MMVP_CATEGORIES, MMVPPairsGenerator
from textvision.data.scene import SceneConfig
from textvision.data.synthetic import SyntheticSplit
from textvision.pretrain.scenes import PretrainingScenes

__all__ = ["PretrainingDataModule"]


class PretrainingDataModule(L.LightningDataModule):
    """Training: :class:`PretrainingScenes` (1..``num_objects`` captioned glyphs, in index order,
    so the stream is a pure function of the seed). Validation: the held-out questions of the
    magnifier and mmvp-pairs sets with ``num_objects`` glyphs (every category), scored for
    zero-shot grounding by :class:`~textvision.pretrain.module.VisionPretraining`.

    Args:
        batch_size: training scenes per step.
        val_size: questions per validation set.
        canvas_size, patch_size, num_objects, colours: the scene (match the downstream sets).
        seed: seed of both the training scenes and the validation questions.
        num_workers: ``DataLoader`` workers.
    """

    def __init__(
        self,
        *,
        batch_size: int = 64,
        val_size: int = 512,
        canvas_size: int = 64,
        patch_size: int = 8,
        num_objects: int = 12,
        colours: Sequence[str] = ("red", "green", "blue", "yellow", "white", "purple"),
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_size = val_size
        self.num_workers = num_workers
        self.scene = SceneConfig(
            canvas_size=canvas_size, patch_size=patch_size, num_objects=num_objects, colours=tuple(colours)
        )
        self.seed = seed
        self.train_set = PretrainingScenes(self.scene, split="train", seed=seed)
        self.val_sets = {
            "magnifier": SyntheticSplit(
                MagnifierGenerator(self.scene, categories=MAGNIFIER_CATEGORIES),
                split="val",
                size=val_size,
                seed=seed,
            ),
            "mmvp_pairs": SyntheticSplit(
                MMVPPairsGenerator(self.scene, categories=MMVP_CATEGORIES),
                split="val",
                size=val_size,
                seed=seed,
            ),
        }

    @property
    def eval_set_names(self) -> list[str]:
        return list(self.val_sets)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self.train_set.collate,
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [
            DataLoader(
                s, batch_size=128, shuffle=False, num_workers=self.num_workers, collate_fn=collate_samples
            )
            for s in self.val_sets.values()
        ]
