"""Captions fit exactly the objects they describe; pretraining scenes are a pure function of the
index and their batch targets point at the captioned patches."""

from __future__ import annotations

import torch

from textvision.data.scene import SceneConfig
from textvision.pretrain.captions import CAPTION_FORMS, CaptionBank
from textvision.pretrain.scenes import PretrainingScenes


def _attributes(**values):
    base = dict(shape=0, colour=0, turn=0, quadrant=0, col_half=0, row_half=0, present=True)
    base.update(values)
    return {k: torch.tensor([v]) for k, v in base.items()}


def test_caption_bank_covers_every_form_without_repeats():
    bank = CaptionBank(SceneConfig())
    assert len(set(bank.texts)) == len(bank.texts)
    assert set(bank.form.tolist()) == set(range(len(CAPTION_FORMS)))
    assert "a red triangle" in bank.texts and "an arrow pointing left" in bank.texts
    assert "a blue object on the left" in bank.texts and "a vertical bar" in bank.texts


def test_a_caption_fits_exactly_the_objects_it_describes():
    config = SceneConfig()
    bank = CaptionBank(config)
    triangle = config.shapes.index("triangle")
    red = config.colours.index("red")
    blue = config.colours.index("blue")
    idx = {t: i for i, t in enumerate(bank.texts)}
    # a red triangle pointing left (one quarter turn), top right quadrant
    obj = _attributes(shape=triangle, colour=red, turn=1, quadrant=1, col_half=1, row_half=0)
    fits = bank.fits(obj)[0]
    for text in (
        "a triangle",
        "the triangle",
        "a red object",
        "a red triangle",
        "a triangle pointing left",
        "a triangle in the top right",
        "a red object on the right",
        "a red object at the top",
        "a red triangle on the right",
    ):
        assert bool(fits[idx[text]]), text
    for text in (
        "a blue triangle",
        "a triangle pointing up",
        "a triangle in the top left",
        "a red object on the left",
        "a red object at the bottom",
        "a square",
    ):
        assert not bool(fits[idx[text]]), text
    assert bank.texts[int(torch.nonzero(fits).flatten()[0])]  # something fits
    # an empty patch fits nothing
    assert not bool(bank.fits(_attributes(present=False)).any())
    # a bar is horizontal at 0 and 2 quarter turns, vertical at 1 and 3
    bar = config.shapes.index("bar")
    for turn, word in enumerate(("horizontal", "vertical", "horizontal", "vertical")):
        fits = bank.fits(_attributes(shape=bar, colour=blue, turn=turn))[0]
        assert bool(fits[idx[f"a {word} bar"]]) and not bool(
            fits[idx[f"a {'vertical' if word == 'horizontal' else 'horizontal'} bar"]]
        )


def test_pretraining_items_are_pure_functions_of_the_index():
    scenes = PretrainingScenes(SceneConfig(), seed=3)
    a = scenes.__getitems__([5, 9])
    b = scenes.__getitems__([9])
    assert torch.equal(a[1]["image"], b[0]["image"]) and torch.equal(a[1]["caption"], b[0]["caption"])
    other = PretrainingScenes(SceneConfig(), seed=4).__getitems__([9])
    assert not torch.equal(other[0]["image"], b[0]["image"])


def test_batch_targets_mark_each_caption_s_own_patch_and_only_fitting_patches():
    config = SceneConfig()
    scenes = PretrainingScenes(config, seed=0)
    batch = scenes.collate(scenes.__getitems__(list(range(8))))
    q = len(batch["captions"])
    assert batch["targets"].shape == (q, 8, config.grid**2)
    assert q == int(sum(s["attributes"]["present"].sum() for s in scenes.__getitems__(list(range(8)))))
    for i in range(q):
        assert bool(batch["targets"][i, batch["caption_image"][i], batch["caption_patch"][i]])
    # a caption naming a distinct shape fits one patch of its own image
    bank = scenes.captions
    for i, text in enumerate(batch["captions"]):
        form = CAPTION_FORMS[int(bank.form[bank.texts.index(text)])]
        if form in ("a {shape}", "the {shape}"):
            assert int(batch["targets"][i, batch["caption_image"][i]].sum()) == 1
    # empty patches (no glyph drawn there) are never a target
    image = batch["image"][0]
    drawn = torch.zeros(config.grid**2, dtype=torch.bool)
    drawn[batch["caption_patch"][batch["caption_image"] == 0]] = True
    assert not bool(batch["targets"][:, 0, ~drawn].any())
    assert image.shape == (3, config.canvas_size, config.canvas_size)
