"""On-the-fly synthetic splits: a map-style ``Dataset`` over a batched, seeded generator.

Sample ``i`` of a split is a pure function of ``(generator config, seed, split, i)``: the
generator draws from per-index streams (:mod:`textvision.data.seeding`), so any batch holding
``i`` yields the same sample, and the ``val``/``test`` splits use their own streams and never
overlap training. ``__getitems__`` lets ``DataLoader`` fetch a whole batch in one vectorised
render (PyTorch calls it instead of ``__getitem__`` per index when it exists).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

from torch.utils.data import Dataset

from textvision.data.sample import Sample
from textvision.data.seeding import SPLITS, index_seed

__all__ = [
    "ObjectCurriculumSplit",
    "SyntheticGenerator",
    "SyntheticSplit",
    "curriculum_objects",
    "fetch_grouped",
]


def fetch_grouped(located: Sequence[tuple[object, int]], splits: Mapping) -> list[Sample]:
    """Items ``splits[key][index]`` for each ``(key, index)`` of ``located``, in that order, with
    one batched ``__getitems__`` call per distinct key (so each group renders in one batch)."""
    out: list[Sample | None] = [None] * len(located)
    for key in dict.fromkeys(k for k, _ in located):
        positions = [p for p, (k, _) in enumerate(located) if k == key]
        samples = splits[key].__getitems__([located[p][1] for p in positions])
        for p, sample in zip(positions, samples, strict=True):
            out[p] = sample
    return out  # type: ignore[return-value]


def curriculum_objects(progress: float, draw: float, max_objects: int) -> int:
    """Scene size of one item of an object curriculum.

    The largest size grows linearly from 1 to ``max_objects`` as ``progress`` goes from 0 to 1
    (clipped above); ``draw`` (uniform in [0, 1)) picks the largest size so far when below 0.5, else
    a uniform size up to it, so small scenes keep appearing after the ramp.
    """
    largest = 1 + int((max_objects - 1) * min(1.0, progress))
    return largest if draw < 0.5 else 1 + int(2.0 * (draw - 0.5) * largest)


class SyntheticGenerator(ABC):
    """Renders samples for given indices of a split, in one batch."""

    #: set name used in logs and metric keys (e.g. ``"magnifier"``)
    name: str = ""
    #: number of answer options per question
    num_options: int = 0

    @abstractmethod
    def generate(self, indices: Sequence[int], *, split: str, seed: int) -> list[Sample]:
        """The samples at ``indices`` of ``split`` (in that order)."""

    @property
    def chance(self) -> float:
        """Expected accuracy of a uniform random guess (per question)."""
        return 1.0 / self.num_options


class SyntheticSplit(Dataset):
    """``size`` samples of one split of a synthetic set.

    Args:
        generator: the set's generator.
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: number of samples (training can use a very large value: nothing is stored).
        seed: the set's seed; splits of one seed are disjoint streams.
    """

    def __init__(self, generator: SyntheticGenerator, *, split: str, size: int, seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.generator = generator
        self.split = split
        self.size = int(size)
        self.seed = int(seed)

    @property
    def name(self) -> str:
        return self.generator.name

    def __len__(self) -> int:
        return self.size

    def _check(self, index: int) -> int:
        index = int(index)
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.name}/{self.split} of size {self.size}")
        return index % self.size

    def __getitem__(self, index: int) -> Sample:
        return self.generator.generate([self._check(index)], split=self.split, seed=self.seed)[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        return self.generator.generate([self._check(i) for i in indices], split=self.split, seed=self.seed)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}({self.name!r}, split={self.split!r}, size={self.size}, seed={self.seed})"


class ObjectCurriculumSplit(Dataset):
    """A training split whose scenes grow from one object to ``K``: a curriculum (Bengio et al.,
    "Curriculum learning", ICML 2009).

    Why: with ``K`` objects the answer needs the question to *pick* one object, and a model trained
    from scratch must learn to see (colours, shapes) and to ground (the word ``triangle`` finds the
    triangle's patch) at once; ``python -m textvision.bench.experiments.grounding_probe`` measures that the
    second barely starts within the demo's budget. One-object scenes teach seeing with no
    selection to learn; growing scenes then teach grounding on top.

    Item ``i`` has ``objects(i)`` objects: the largest scene size grows linearly from 1 to ``K``
    over the first ``ramp`` items; half of the items (by a seeded per-pair draw) use the largest
    size so far, the others a uniform size up to it, so small scenes keep appearing after the
    ramp. Sizes are drawn per *pair* ``i // 2``, so both images of an mmvp-pairs pair share their
    scene. Like every synthetic split, item ``i`` is a pure function of ``(seed, i)``: resuming at
    any index reproduces the stream.

    Args:
        splits: ``{objects: split}`` for every size ``1..K`` (the same set, split and seed).
        ramp: items over which the largest size grows to ``K`` (``> 0``).
        seed: seed of the size draws.
    """

    def __init__(self, splits: Mapping[int, SyntheticSplit], *, ramp: int, seed: int = 0):
        sizes = sorted(splits)
        if not sizes or sizes != list(range(1, sizes[-1] + 1)):
            raise ValueError(f"need one split per scene size 1..K, got sizes {sizes}")
        if ramp < 1:
            raise ValueError(f"ramp must be positive, got {ramp}")
        names = {s.name for s in splits.values()}
        if len(names) != 1:
            raise ValueError(f"curriculum splits must be one set, got {sorted(names)}")
        self.splits = dict(splits)
        self.max_objects = sizes[-1]
        self.ramp = int(ramp)
        self.seed = int(seed)

    @property
    def name(self) -> str:
        return self.splits[self.max_objects].name

    def __len__(self) -> int:
        return len(self.splits[self.max_objects])

    def objects(self, index: int) -> int:
        """Objects per image of item ``index``."""
        pair = int(index) // 2
        draw = index_seed(self.seed, "train", pair, salt=f"{self.name}/objects") / 2.0**63
        return curriculum_objects(2 * pair / self.ramp, draw, self.max_objects)

    def __getitem__(self, index: int) -> Sample:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        return fetch_grouped([(self.objects(i), i) for i in indices], self.splits)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, objects 1..{self.max_objects}, ramp={self.ramp})"
