"""LightningDataModules: the synthetic sets (alone or mixed) and LLaVA conversation JSON.

All init arguments are plain keyword arguments with defaults, so LightningCLI / jsonargparse can
set them from YAML::

    data:
      class_path: textvision.train.data_modules.SyntheticMixDataModule
      init_args: {batch_size: 32, num_objects: 12, canvas_size: 64, patch_size: 8}

Evaluation sets. ``eval_set_names`` lists the validation/test dataloaders **in order**; the
LightningModule names its metrics after them (``val/<name>/acc``). The synthetic modules expose
the held-out datasets the evaluator scores with :meth:`SyntheticDataModule.test_datasets` (and
``val_datasets``), plus each set's chance level in :attr:`SyntheticDataModule.chance`.

Training order. Synthetic samples are i.i.d. by construction (sample ``i`` is a pure function of
``(seed, split, i)``), so the training loader walks the indices in order by default: no shuffle
is needed, the stream is reproducible, and mmvp-pairs keeps both images of a pair in one batch
(set ``shuffle: true`` to mix them). ``train_size`` may be huge; nothing is stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Subset

from textvision.data.collate import collate_samples
from textvision.data.glyphs import SHAPES
from textvision.data.llava import LlavaConversations
from textvision.data.magnifier import MAGNIFIER_CATEGORIES, MagnifierGenerator
from textvision.data.mmvp_pairs import MMVP_CATEGORIES, MMVPPairsGenerator
from textvision.data.resumable import EpochSeededRandomSampler, ResumableDataLoader
from textvision.data.sample import Sample
from textvision.data.scene import SceneConfig
from textvision.data.synthetic import (
    ObjectCurriculumSplit,
    SyntheticGenerator,
    SyntheticSplit,
    fetch_grouped,
)

__all__ = [
    "LlavaDataModule",
    "MMVPPairsDataModule",
    "MagnifierDataModule",
    "MixedSplit",
    "SyntheticDataModule",
    "SyntheticMixDataModule",
]

DEFAULT_COLOURS = ("red", "green", "blue", "yellow", "white", "purple")


class _SampleDataModule(L.LightningDataModule):
    """Base of every DataModule here: loaders of sample dicts collated by :func:`collate_samples`."""

    num_workers: int

    def _loader(self, dataset: Dataset, *, batch_size: int, shuffle: bool) -> DataLoader:
        """An evaluation loader: in order; under DDP each rank gets every ``world``-th item, with
        no padding, so each item is scored exactly once (``DistributedSampler``, which Lightning
        injects otherwise, repeats items to even out the ranks)."""
        sampler = None
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle if sampler is None else None,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            persistent_workers=self.num_workers > 0,
            # its own generator: an evaluation pass leaves the global RNG (dropout) untouched
            generator=torch.Generator(),
        )

    def _train_loader(self, dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
        """The training loader: resumable mid-epoch (:class:`ResumableDataLoader`), shuffled (when
        asked) by a permutation of ``(seed, epoch)`` only, so a resumed fit sees the same stream."""
        return ResumableDataLoader(
            dataset,
            batch_size=batch_size,
            sampler=EpochSeededRandomSampler(len(dataset), seed=seed) if shuffle else None,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            persistent_workers=self.num_workers > 0,
        )


class MixedSplit(Dataset):
    """Several synthetic splits interleaved in blocks of two items (pairs stay together).

    Item ``i`` is item ``local = (i // (2·S))·2 + i % 2`` of split ``(i // 2) % S`` for ``S``
    splits, so the sets alternate evenly and an mmvp-pairs pair (two consecutive items) is never
    broken. Length: ``S`` times the shortest split, rounded down to a multiple of ``2·S``.
    """

    def __init__(self, splits: Sequence[SyntheticSplit | ObjectCurriculumSplit]):
        if not splits:
            raise ValueError("MixedSplit needs at least one split")
        self.splits = list(splits)
        count = len(self.splits)
        self.size = (min(len(s) for s in self.splits) // 2) * 2 * count

    def __len__(self) -> int:
        return self.size

    def _locate(self, index: int) -> tuple[int, int]:
        index = int(index)
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a mix of size {self.size}")
        count = len(self.splits)
        return (index // 2) % count, (index // (2 * count)) * 2 + index % 2

    def __getitem__(self, index: int) -> Sample:
        which, local = self._locate(index)
        return self.splits[which][local]

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        return fetch_grouped([self._locate(i) for i in indices], dict(enumerate(self.splits)))


class SyntheticDataModule(_SampleDataModule):
    """Base for the synthetic sets: scene geometry, split sizes and loaders.

    Args:
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (default: ``batch_size``).
        num_workers: DataLoader workers (0 generates in the main process; generation is cheap).
        seed: the sets' seed; ``train``/``val``/``test`` are disjoint streams of it.
        train_size: training samples per epoch (nothing is stored; can be very large).
        val_size: held-out validation samples per set (fixed).
        test_size: held-out test samples per set (fixed).
        shuffle: shuffle training indices (not needed: samples are i.i.d.).
        canvas_size: image side in pixels.
        patch_size: the ViT patch size; one object per patch cell.
        glyph_size: object size in pixels (``≤ patch_size``).
        num_objects: objects per image.
        shapes: shape vocabulary (default: all 13 of :data:`textvision.data.glyphs.SHAPES`).
        colours: colour vocabulary (names from :data:`textvision.data.glyphs.COLOURS`).
        background_noise: amplitude of the background's uniform pixel noise.
        prompt_style: ``"short"`` or ``"letters"`` (see :mod:`textvision.data.sample`).
        objects_warmup_steps: training batches over which the scenes grow from 1 object to
            ``num_objects`` (:class:`~textvision.data.synthetic.ObjectCurriculumSplit`); 0 = every
            training scene has ``num_objects``. Validation and test scenes always have
            ``num_objects``.
    """

    def __init__(
        self,
        *,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        train_size: int = 1_000_000,
        val_size: int = 512,
        test_size: int = 1024,
        shuffle: bool = False,
        canvas_size: int = 64,
        patch_size: int = 8,
        glyph_size: int = 6,
        num_objects: int = 12,
        shapes: list[str] | None = None,
        colours: list[str] | None = None,
        background_noise: float = 0.03,
        prompt_style: str = "short",
        objects_warmup_steps: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError("batch sizes must be positive")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if objects_warmup_steps < 0:
            raise ValueError(f"objects_warmup_steps must be >= 0, got {objects_warmup_steps}")
        self.objects_warmup_steps = objects_warmup_steps
        for name, size in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            if size < 2 or size % 2:
                raise ValueError(f"{name} must be a positive even number (pairs), got {size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.shuffle = shuffle
        self.prompt_style = prompt_style
        self.scene = SceneConfig(
            canvas_size=canvas_size,
            patch_size=patch_size,
            glyph_size=glyph_size,
            num_objects=num_objects,
            shapes=tuple(shapes) if shapes is not None else tuple(SHAPES),
            colours=tuple(colours) if colours is not None else DEFAULT_COLOURS,
            noise=background_noise,
        )
        self.generators: list[SyntheticGenerator] = self.build_generators(self.scene)
        self._splits: dict[str, list[SyntheticSplit | ObjectCurriculumSplit]] = {}

    def build_generators(self, scene: SceneConfig) -> list[SyntheticGenerator]:
        """The sets of this module for ``scene`` (subclasses)."""
        raise NotImplementedError

    # -- names and held-out sets ------------------------------------------------------------
    @property
    def eval_set_names(self) -> list[str]:
        """Names of the validation/test dataloaders, in dataloader order."""
        return [g.name for g in self.generators]

    @property
    def chance(self) -> dict[str, dict[str, float]]:
        """Chance levels per set: ``acc`` (and ``pair_acc`` for mmvp-pairs)."""
        out = {}
        for g in self.generators:
            out[g.name] = {"acc": g.chance}
            if isinstance(g, MMVPPairsGenerator):
                out[g.name]["pair_acc"] = g.pair_chance
        return out

    def split(self, name: str) -> list[SyntheticSplit | ObjectCurriculumSplit]:
        """The ``train``/``val``/``test`` datasets of every set, in :attr:`eval_set_names` order."""
        if name not in self._splits:
            if name == "train" and self.objects_warmup_steps:
                self._splits[name] = self._curriculum_splits()
            else:
                self._splits[name] = [
                    SyntheticSplit(g, split=name, size=self.sizes[name], seed=self.seed)
                    for g in self.generators
                ]
        return self._splits[name]

    def _curriculum_splits(self) -> list[ObjectCurriculumSplit]:
        by_objects = {
            k: self.build_generators(self.scene.evolve(num_objects=k))
            for k in range(1, self.scene.num_objects + 1)
        }
        by_objects[self.scene.num_objects] = self.generators
        # The sets share each batch (MixedSplit), so each set sees batch_size / S items per step.
        ramp = max(1, self.objects_warmup_steps * self.batch_size // len(self.generators))
        return [
            ObjectCurriculumSplit(
                {
                    k: SyntheticSplit(gens[j], split="train", size=self.sizes["train"], seed=self.seed)
                    for k, gens in by_objects.items()
                },
                ramp=ramp,
                seed=self.seed,
            )
            for j in range(len(self.generators))
        ]

    def val_datasets(self) -> dict[str, SyntheticSplit]:
        return dict(zip(self.eval_set_names, self.split("val"), strict=True))

    def test_datasets(self) -> dict[str, SyntheticSplit]:
        """The fixed held-out test sets, by name (what the evaluator scores)."""
        return dict(zip(self.eval_set_names, self.split("test"), strict=True))

    # -- Lightning hooks --------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        for name in ("train", "val", "test"):
            self.split(name)

    def train_dataloader(self) -> DataLoader:
        splits = self.split("train")
        dataset = splits[0] if len(splits) == 1 else MixedSplit(splits)
        return self._train_loader(dataset, batch_size=self.batch_size, shuffle=self.shuffle, seed=self.seed)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(s, batch_size=self.eval_batch_size, shuffle=False) for s in self.split("val")]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(s, batch_size=self.eval_batch_size, shuffle=False) for s in self.split("test")]

    def predict_dataloader(self) -> list[DataLoader]:
        return self.test_dataloader()


class MagnifierDataModule(SyntheticDataModule):
    """The synthetic magnifier set (see :mod:`textvision.data.magnifier`).

    Args:
        magnifier_categories: question categories (``colour``, ``shape``, ``position``).
        num_options: options per question (2–4).
        **kwargs: see :class:`SyntheticDataModule`.
    """

    def __init__(
        self,
        *,
        magnifier_categories: list[str] | None = None,
        num_options: int = 4,
        **kwargs,
    ):
        self.magnifier_categories = tuple(magnifier_categories or MAGNIFIER_CATEGORIES)
        self.num_options = num_options
        super().__init__(**kwargs)

    def build_generators(self, scene: SceneConfig) -> list[SyntheticGenerator]:
        return [
            MagnifierGenerator(
                scene,
                categories=self.magnifier_categories,
                num_options=self.num_options,
                prompt_style=self.prompt_style,
            )
        ]


class MMVPPairsDataModule(SyntheticDataModule):
    """The synthetic mmvp-pairs set (see :mod:`textvision.data.mmvp_pairs`).

    Args:
        pair_categories: patterns (``colour``, ``orientation``, ``position``, ``presence``).
        **kwargs: see :class:`SyntheticDataModule`.
    """

    def __init__(self, *, pair_categories: list[str] | None = None, **kwargs):
        self.pair_categories = tuple(pair_categories or MMVP_CATEGORIES)
        super().__init__(**kwargs)

    def build_generators(self, scene: SceneConfig) -> list[SyntheticGenerator]:
        return [MMVPPairsGenerator(scene, categories=self.pair_categories, prompt_style=self.prompt_style)]


class SyntheticMixDataModule(SyntheticDataModule):
    """Magnifier and mmvp-pairs together: mixed 1:1 for training (:class:`MixedSplit`), and two
    validation/test dataloaders in the order ``["magnifier", "mmvp_pairs"]``.

    Args:
        magnifier_categories: see :class:`MagnifierDataModule`.
        num_options: see :class:`MagnifierDataModule`.
        pair_categories: see :class:`MMVPPairsDataModule`.
        **kwargs: see :class:`SyntheticDataModule`.
    """

    def __init__(
        self,
        *,
        magnifier_categories: list[str] | None = None,
        num_options: int = 4,
        pair_categories: list[str] | None = None,
        **kwargs,
    ):
        self.magnifier_categories = tuple(magnifier_categories or MAGNIFIER_CATEGORIES)
        self.num_options = num_options
        self.pair_categories = tuple(pair_categories or MMVP_CATEGORIES)
        super().__init__(**kwargs)

    def build_generators(self, scene: SceneConfig) -> list[SyntheticGenerator]:
        return [
            MagnifierGenerator(
                scene,
                categories=self.magnifier_categories,
                num_options=self.num_options,
                prompt_style=self.prompt_style,
            ),
            MMVPPairsGenerator(scene, categories=self.pair_categories, prompt_style=self.prompt_style),
        ]


class LlavaDataModule(_SampleDataModule):
    """LLaVA-1.5 conversation JSON + image folder (see :mod:`textvision.data.llava`).

    Args:
        json_path: training conversation file.
        image_folder: root of the records' relative image paths.
        image_size: images are resized to ``image_size × image_size``.
        resize: ``"naive"`` (stretch) or ``"pad"`` (LLaVA-1.5: pad to square, then resize).
        val_json_path: optional validation file (same layout; same image folder unless
            ``val_image_folder`` is given). Without it, ``val_size`` samples are held out from the
            training file by a seeded permutation (0: no validation).
        val_image_folder: image folder of ``val_json_path``.
        val_size: samples held out from the training file when there is no ``val_json_path``.
        turns: ``"first"`` or ``"all"`` exchanges per record.
        text_only: ``"skip"`` or ``"blank"`` for records without an image.
        on_error: ``"skip"`` (count, warn once) or ``"raise"`` on bad records.
        verify_images: open every image at setup and skip unreadable ones.
        batch_size, eval_batch_size, num_workers, seed, shuffle: loader settings.
        cache_dir: ``datasets`` cache folder.
    """

    def __init__(
        self,
        json_path: str,
        image_folder: str,
        *,
        image_size: int = 336,
        resize: str = "naive",
        val_json_path: str | None = None,
        val_image_folder: str | None = None,
        val_size: int = 0,
        turns: str = "first",
        text_only: str = "skip",
        on_error: str = "skip",
        verify_images: bool = False,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        cache_dir: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @property
    def eval_set_names(self) -> list[str]:
        return ["llava"] if self.hparams.val_json_path or self.hparams.val_size else []

    def _open(self, json_path: str, image_folder: str) -> LlavaConversations:
        h = self.hparams
        return LlavaConversations(
            json_path,
            image_folder,
            image_size=h.image_size,
            resize=h.resize,
            turns=h.turns,
            text_only=h.text_only,
            on_error=h.on_error,
            verify_images=h.verify_images,
            cache_dir=h.cache_dir,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        import torch

        h = self.hparams
        full = self._open(h.json_path, h.image_folder)
        if h.val_json_path:
            self.train_set = full
            self.val_set = self._open(h.val_json_path, h.val_image_folder or h.image_folder)
        elif h.val_size:
            if h.val_size >= len(full):
                raise ValueError(f"val_size {h.val_size} leaves no training data ({len(full)} samples)")
            order = torch.randperm(len(full), generator=torch.Generator().manual_seed(h.seed)).tolist()
            self.val_set = Subset(full, sorted(order[: h.val_size]))
            self.train_set = Subset(full, sorted(order[h.val_size :]))
        else:
            self.train_set = full

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        return self._train_loader(
            self.train_set, batch_size=self.batch_size, shuffle=self.hparams.shuffle, seed=self.hparams.seed
        )

    def val_dataloader(self) -> list[DataLoader]:
        if self.val_set is None:
            return []
        return [self._loader(self.val_set, batch_size=self.eval_batch_size, shuffle=False)]
