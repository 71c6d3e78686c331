import pytest
import torch

from textvision.data.magnifier import MagnifierGenerator
from textvision.data.mmvp_pairs import MMVPPairsGenerator
from textvision.data.scene import SceneConfig
from textvision.data.synthetic import ObjectCurriculumSplit, SyntheticSplit
from textvision.train.data_modules import SyntheticMixDataModule

K = 6


def _splits(generator_cls, *, size=4096, seed=3):
    return {
        k: SyntheticSplit(generator_cls(SceneConfig(num_objects=k)), split="train", size=size, seed=seed)
        for k in range(1, K + 1)
    }


def test_scene_sizes_grow_then_stay_mixed():
    split = ObjectCurriculumSplit(_splits(MagnifierGenerator), ramp=400, seed=3)
    assert len(split) == 4096 and split.name == "magnifier"
    assert {split.objects(i) for i in range(40)} == {1}  # the first items need no selection
    for i in range(0, 400, 7):  # never above the ramp's largest size
        assert 1 <= split.objects(i) <= 1 + (K - 1) * i // 400 + 1
    late = [split.objects(i) for i in range(400, 1400)]
    assert set(late) == set(range(1, K + 1))
    assert 0.45 < sum(s == K for s in late) / len(late) < 0.7  # half at K, plus K's share of the rest
    assert [split.objects(i) for i in range(300)] == [split.objects(i) for i in range(300)]


def test_items_come_from_the_split_of_their_size_in_order():
    splits = _splits(MagnifierGenerator)
    split = ObjectCurriculumSplit(splits, ramp=64, seed=3)
    indices = [63, 5, 200, 64, 7, 301]
    items = split.__getitems__(indices)
    for index, item in zip(indices, items, strict=True):
        expected = splits[split.objects(index)][index]
        assert item["id"] == expected["id"] == f"magnifier-train-{index}"
        torch.testing.assert_close(item["image"], expected["image"])
        assert item["prompt"] == expected["prompt"]
    assert split[200]["prompt"] == items[2]["prompt"]


def test_pairs_share_their_scene_size_and_stay_twins():
    splits = _splits(MMVPPairsGenerator)
    split = ObjectCurriculumSplit(splits, ramp=100, seed=3)
    for pair in range(0, 200):
        assert split.objects(2 * pair) == split.objects(2 * pair + 1)
    first, second = split.__getitems__([150, 151])
    size = split.objects(150)
    twins = splits[size].__getitems__([150, 151])
    torch.testing.assert_close(first["image"], twins[0]["image"])
    torch.testing.assert_close(second["image"], twins[1]["image"])
    assert first["prompt"] == second["prompt"] and first["answer"] != second["answer"]


def test_bad_curricula_are_named():
    splits = _splits(MagnifierGenerator, size=8)
    with pytest.raises(ValueError, match="ramp"):
        ObjectCurriculumSplit(splits, ramp=0)
    with pytest.raises(ValueError, match="sizes"):
        ObjectCurriculumSplit({k: v for k, v in splits.items() if k != 2}, ramp=10)
    mixed = dict(splits)
    mixed[1] = SyntheticSplit(MMVPPairsGenerator(SceneConfig(num_objects=1)), split="train", size=8)
    with pytest.raises(ValueError, match="one set"):
        ObjectCurriculumSplit(mixed, ramp=10)


def test_data_module_curriculum_trains_small_scenes_and_evaluates_full_ones():
    dm = SyntheticMixDataModule(batch_size=8, val_size=4, test_size=4, num_objects=K, objects_warmup_steps=10)
    dm.setup("fit")
    train = dm.split("train")
    assert all(isinstance(s, ObjectCurriculumSplit) for s in train)
    assert [s.ramp for s in train] == [40, 40]  # 10 steps x 8 items / 2 sets
    assert all(s.objects(0) == 1 for s in train)
    assert all(type(s) is SyntheticSplit and s.generator.scene.num_objects == K for s in dm.split("test"))
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["id"]) == 8 and batch["id"][0] == "magnifier-train-0"
    # A one-object scene: one patch differs from the background (plus noise).
    image = batch["image"][0]
    cells = image.unfold(1, 8, 8).unfold(2, 8, 8).std(dim=(-1, -2)).amax(0)
    assert int((cells > 0.1).sum()) == 1
    with pytest.raises(ValueError, match="objects_warmup_steps"):
        SyntheticMixDataModule(objects_warmup_steps=-1)


def test_curriculum_objects_and_grouped_fetch():
    from textvision.data.synthetic import curriculum_objects, fetch_grouped

    assert [curriculum_objects(p, 0.0, 12) for p in (0.0, 0.5, 1.0, 3.0)] == [1, 6, 12, 12]
    assert curriculum_objects(1.0, 0.5, 12) == 1 and curriculum_objects(1.0, 0.999, 12) == 12

    class Recorder:
        def __init__(self, tag):
            self.tag, self.calls = tag, []

        def __getitems__(self, indices):
            self.calls.append(list(indices))
            return [f"{self.tag}{i}" for i in indices]

    splits = {"a": Recorder("a"), "b": Recorder("b")}
    assert fetch_grouped([("b", 3), ("a", 1), ("b", 0), ("a", 7)], splits) == ["b3", "a1", "b0", "a7"]
    assert splits["a"].calls == [[1, 7]] and splits["b"].calls == [[3, 0]]  # one batch per key
