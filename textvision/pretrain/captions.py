"""Object captions for text-aligned vision pretraining, and which objects each caption fits.

CLIP learns that an image region and a sentence describe the same thing from captions, never from
the questions a VLM will later be asked. The synthetic stand-in does the same at the level of one
object: every object of a pretraining scene gets a caption drawn from :data:`CAPTION_FORMS`
("a red triangle", "a triangle pointing left", "a blue object on the left", ...), and the
pretraining loss asks the object's patch feature to match the caption's embedding. A caption fits
*every* object whose attributes satisfy it (two red objects both fit "a red object"), so the loss
is a multi-positive one (:func:`caption_matches`).

The caption vocabulary is finite and small (about a thousand strings for the default scene), so
the frozen text encoder embeds it once (:class:`CaptionBank`) and training indexes the table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from textvision.data.glyphs import SHAPES
from textvision.data.scene import QUADRANT_WORDS, SceneConfig, Scenes, quadrant_of
from textvision.data.seeding import IndexRandom

__all__ = ["CAPTION_FORMS", "CaptionBank"]

#: caption templates; the fields they name are the attributes the caption constrains
CAPTION_FORMS = (
    "a {shape}",
    "the {shape}",
    "a {colour} object",
    "a {colour} {shape}",
    "a {shape} {orientation}",
    "a {shape} in the {quadrant}",
    "a {colour} object {half}",
    "a {colour} {shape} {half}",
)

# Half phrases: (axis, side) -> words; axis 0 splits columns (left/right), axis 1 rows (top/bottom).
HALF_WORDS = {
    (0, 0): "on the left",
    (0, 1): "on the right",
    (1, 0): "at the top",
    (1, 1): "at the bottom",
}

_ANY = -1


@dataclass(frozen=True)
class _Caption:
    text: str
    shape: int = _ANY
    colour: int = _ANY
    turns: tuple[int, ...] = ()  # quarter turns that fit; () = any
    quadrant: int = _ANY
    half: tuple[int, int] | None = None  # (axis, side)


def _with_article(text: str) -> str:
    """ "a" before a consonant, "an" before a vowel ("an orange circle", "an hourglass")."""
    head, _, rest = text.partition(" ")
    if head == "a" and (rest[:1] in "aeiou" or rest.startswith(("hour", "x "))):
        return "an " + rest
    return text


def _orientation_phrases(shape_name: str) -> list[tuple[str, tuple[int, ...]]]:
    """``(phrase, turns)`` for an oriented shape: "pointing up" fits turn 0, "horizontal" 0 and 2."""
    words = SHAPES[shape_name].orientation_words
    if words is None:
        return []
    phrases: dict[str, list[int]] = {}
    for turn, word in enumerate(words):
        phrase = word if word in ("horizontal", "vertical") else f"pointing {word}"
        phrases.setdefault(phrase, []).append(turn)
    return [(phrase, tuple(turns)) for phrase, turns in phrases.items()]


class CaptionBank:
    """Every caption of :data:`CAPTION_FORMS` for a scene vocabulary, as attribute constraints.

    Attributes:
        texts: the caption strings, indexed by caption id.
        shape, colour, quadrant: ``(C,)`` long constraints (``-1`` = any).
        turns: ``(C, 4)`` bool, the quarter turns each caption fits (all True when it says none).
        half_axis, half_side: ``(C,)`` long, the half the caption names (``-1`` = none).
        form: ``(C,)`` long, index into :data:`CAPTION_FORMS`.
    """

    def __init__(self, scene: SceneConfig) -> None:
        captions: list[tuple[int, _Caption]] = []
        shapes = list(scene.shapes)
        for form_id, form in enumerate(CAPTION_FORMS):
            for s, shape_name in enumerate(shapes) if "{shape}" in form else [(_ANY, "")]:
                shape_word = scene.shape_words(s) if s != _ANY else ""
                for c, colour in enumerate(scene.colours) if "{colour}" in form else [(_ANY, "")]:
                    if "{orientation}" in form:
                        variants = [
                            (dict(orientation=p), dict(turns=t)) for p, t in _orientation_phrases(shape_name)
                        ]
                    elif "{quadrant}" in form:
                        variants = [
                            (dict(quadrant=w), dict(quadrant=q)) for q, w in enumerate(QUADRANT_WORDS)
                        ]
                    elif "{half}" in form:
                        variants = [(dict(half=w), dict(half=h)) for h, w in HALF_WORDS.items()]
                    else:
                        variants = [({}, {})]
                    for words, constraint in variants:
                        if words.get("orientation") in ("horizontal", "vertical"):
                            text = f"a {words['orientation']} {shape_word}"  # "a vertical bar"
                        else:
                            text = _with_article(form.format(shape=shape_word, colour=colour, **words))
                        captions.append((form_id, _Caption(text, shape=s, colour=c, **constraint)))
        self.scene = scene
        self.texts = [c.text for _, c in captions]
        if len(set(self.texts)) != len(self.texts):
            raise ValueError("caption texts repeat; the scene vocabulary has clashing words")
        self.form = torch.tensor([f for f, _ in captions])
        self.shape = torch.tensor([c.shape for _, c in captions])
        self.colour = torch.tensor([c.colour for _, c in captions])
        self.quadrant = torch.tensor([c.quadrant for _, c in captions])
        self.turns = torch.tensor(
            [[not c.turns or t in c.turns for t in range(4)] for _, c in captions], dtype=torch.bool
        )
        self.half_axis = torch.tensor([c.half[0] if c.half else _ANY for _, c in captions])
        self.half_side = torch.tensor([c.half[1] if c.half else _ANY for _, c in captions])

    def __len__(self) -> int:
        return len(self.texts)

    def object_attributes(self, scenes: Scenes) -> dict[str, Tensor]:
        """``(B, K)`` attributes of each object that captions constrain (``present`` included)."""
        grid = self.scene.grid
        rows, cols = scenes.rows_cols(grid)
        return {
            "shape": scenes.shape,
            "colour": scenes.colour,
            "turn": scenes.turn,
            "quadrant": quadrant_of(rows, cols, grid),
            "col_half": (cols >= grid // 2).long(),
            "row_half": (rows >= grid // 2).long(),
            "present": scenes.present,
        }

    def fits(self, attributes: dict[str, Tensor]) -> Tensor:
        """``(..., C)`` bool: which captions fit objects with ``attributes`` (each ``(...)``)."""
        a = {k: v.unsqueeze(-1) for k, v in attributes.items()}
        half = torch.where(self.half_axis == 0, a["col_half"], a["row_half"])
        ok = (self.shape == _ANY) | (self.shape == a["shape"])
        ok &= (self.colour == _ANY) | (self.colour == a["colour"])
        ok &= (self.quadrant == _ANY) | (self.quadrant == a["quadrant"])
        ok &= (self.half_axis == _ANY) | (self.half_side == half)
        ok &= self.turns[:, attributes["turn"]].movedim(0, -1)
        return ok & a["present"].bool()

    def captions_for(self, scenes: Scenes, rng: IndexRandom) -> Tensor:
        """``(B, K)`` caption ids: a uniform form per object, then a uniform caption of that form
        among the ones that fit the object (a form with none that fits, e.g. an orientation
        caption for a circle, falls back to the object's ``a {colour} {shape}``). Absent objects
        get an id too (ignore it). Two draws per image from ``rng``, whatever the scene holds."""
        fits = self.fits(self.object_attributes(scenes))  # (B, K, C)
        num = fits.shape[1]
        form = rng.randint(len(CAPTION_FORMS), num)
        noise = rng.rand(num, len(self))
        candidates = fits & (self.form.view(1, 1, -1) == form.unsqueeze(-1))
        fallback = fits & (self.form == CAPTION_FORMS.index("a {colour} {shape}")).view(1, 1, -1)
        candidates = torch.where(candidates.any(-1, keepdim=True), candidates, fallback)
        return torch.where(candidates, noise, -1.0).argmax(-1)
