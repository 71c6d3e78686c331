"""The synthetic *mmvp-pairs* set: image pairs that differ in one visual pattern of one object.

Modelled on MMVP (Tong et al., "Eyes Wide Shut? Exploring the Visual Shortcomings of Multimodal
LLMs", CVPR 2024): both images of a pair get the same question and the same two options, with
opposite answers, and a pair counts as correct only when both answers are (chance 25%). Here the
pattern belongs to one small object among ``K − 1`` distractors (12 glyphs on a 64 px canvas by
default), so the pair also tests whether the encoder keeps the queried object under a small
visual-token budget.

A pair is drawn as scene A plus its twin B, where B changes the target (object 0 of the spec; the
objects are exchangeable, nothing downstream sees their order) in exactly one way:

* ``colour``: its colour ("Is the triangle red or blue?");
* ``orientation``: a half turn for pointing shapes ("Is the arrow pointing up or down?") or a
  quarter turn for the bar ("Is the bar horizontal or vertical?"); only shapes whose
  orientation has words can be asked this;
* ``position``: moved to the mirror cell across the image's mid-line ("Is the triangle on the left
  or on the right?"); the mirror cell is kept free in both images;
* ``presence``: replaced, in place and in the same colour, by the one shape of the vocabulary the
  image does not otherwise hold ("Is there a triangle in the image?" yes/no).

Everything else — distractors, background noise, glyph offsets — is identical between A and B.
Shapes are distinct within an image (so "the triangle" names one object; needs
``len(shapes) ≥ K + 1`` for presence), colours and quarter turns of all objects are random (so a
turned or oddly coloured target stands out from nothing). Which of A/B comes first is random, so
the first item's label is balanced.

Counting ("one or two triangles?") is left out on purpose: the second copy makes one shape appear
twice, a global cue an encoder can pick up without reading the question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from textvision.data.glyphs import SHAPES
from textvision.data.sample import PROMPT_STYLES, Sample, format_prompt
from textvision.data.scene import (
    SceneConfig,
    Scenes,
    render_scenes,
    sample_background,
    sample_offsets,
    sample_rgb,
)
from textvision.data.seeding import IndexRandom, index_seed
from textvision.data.synthetic import SyntheticGenerator

__all__ = ["MMVP_CATEGORIES", "MMVPPairsGenerator", "PairQuestions", "pair_answer_words"]

MMVP_CATEGORIES = ("colour", "orientation", "position", "presence")

COLOUR_TEMPLATES = (
    "Is the {shape} {a} or {b}?",
    "Is the {shape} coloured {a} or {b}?",
    "Does the {shape} look {a} or {b}?",
    "What colour is the {shape}, {a} or {b}?",
    "Is the color of the {shape} {a} or {b}?",
)
DIRECTION_TEMPLATES = (
    "Is the {shape} pointing {a} or {b}?",
    "Which way does the {shape} point, {a} or {b}?",
    "Does the {shape} face {a} or {b}?",
    "Which direction is the {shape} pointing, {a} or {b}?",
)
BAR_TEMPLATES = (
    "Is the {shape} {a} or {b}?",
    "Is the {shape} lying {a} or standing {b}?",
    "Does the {shape} look {a} or {b}?",
    "Is the {shape} oriented {a} or {b}?",
)
POSITION_TEMPLATES = (
    "Is the {shape} on the {a} or on the {b}?",
    "Is the {shape} in the {a} half or the {b} half of the image?",
    "Which half of the image holds the {shape}, the {a} or the {b}?",
    "Is the {shape} closer to the {a} or the {b} edge?",
    "Is the {shape} on the {a} side or the {b} side?",
)
PRESENCE_TEMPLATES = (
    "Is there {article} {shape} in the image?",
    "Can you see {article} {shape}?",
    "Does the picture contain {article} {shape}?",
    "Is {article} {shape} visible anywhere?",
    "Is there any {shape} among the shapes?",
)
_MAX_TEMPLATES = 5
# Side words per axis: axis 0 splits columns (left/right), axis 1 rows (top/bottom).
SIDE_WORDS = (("left", "right"), ("top", "bottom"))


@dataclass
class PairQuestions:
    """The question side of a batch of pairs (``(P,)`` long tensors).

    Attributes:
        category: index into ``MMVP_CATEGORIES``.
        axis: mid-line of ``position`` pairs (0: left/right, 1: top/bottom).
        colour_b: the target's colour in image B (``colour`` pairs).
        template: template index (modulo the template count).
        colour_order: 1 to list B's colour first among the options (``colour`` pairs).
        swap: 1 if image B is the pair's first item.
    """

    category: Tensor
    axis: Tensor
    colour_b: Tensor
    template: Tensor
    colour_order: Tensor
    swap: Tensor


def _article(words: str) -> str:
    return "an" if words[:1].lower() in "aeiox" else "a"


def pair_answer_words(
    scenes: Scenes,
    category: str | Sequence[str],
    *,
    axis: Tensor,
    asked_shape: Tensor,
    config: SceneConfig,
) -> list[str]:
    """The answer word of each scene to its pair's question, as a list of ``B``.

    The question is about the target, object 0 of the spec, named by ``asked_shape`` (``(B,)``,
    the target's shape in image A). ``category`` is one name for the whole batch or one per
    scene. A pure function of the scene specification, so tests can check that the answer follows
    the target's attribute (presence: whether any drawn object has the asked shape).
    """
    batch = scenes.shape.shape[0]
    categories = [category] * batch if isinstance(category, str) else list(category)
    rows, cols = (t[:, 0].tolist() for t in scenes.rows_cols(config.grid))
    shape, colour, turn = (t[:, 0].tolist() for t in (scenes.shape, scenes.colour, scenes.turn))
    found = ((scenes.shape == asked_shape.unsqueeze(1)) & scenes.present).any(dim=1).tolist()
    axes = axis.tolist()
    half = config.grid // 2
    words: list[str] = []
    for b, name in enumerate(categories):
        if name == "colour":
            words.append(config.colours[colour[b]])
        elif name == "orientation":
            spec = SHAPES[config.shapes[shape[b]]]
            if spec.orientation_words is None:
                raise ValueError(f"shape {spec.name!r} has no orientation words")
            words.append(spec.orientation_words[turn[b]])
        elif name == "position":
            line = cols[b] if axes[b] == 0 else rows[b]
            words.append(SIDE_WORDS[axes[b]][int(line >= half)])
        elif name == "presence":
            words.append("yes" if found[b] else "no")
        else:
            raise ValueError(f"unknown mmvp-pairs category {name!r}")
    return words


class MMVPPairsGenerator(SyntheticGenerator):
    """Seeded, vectorised generator of MMVP-style pairs; item ``i`` is member ``i % 2`` of pair ``i // 2``.

    Args:
        scene: scene geometry and vocabulary.
        categories: which patterns to draw from (uniformly among those valid for the target).
        prompt_style: ``"short"`` or ``"letters"`` (see :mod:`textvision.data.sample`).
    """

    name = "mmvp_pairs"
    num_options = 2

    def __init__(
        self,
        scene: SceneConfig | None = None,
        *,
        categories: Sequence[str] = MMVP_CATEGORIES,
        prompt_style: str = "short",
    ):
        self.scene = scene if scene is not None else SceneConfig()
        self.categories = tuple(categories)
        unknown = [c for c in self.categories if c not in MMVP_CATEGORIES]
        if not self.categories or unknown or len(set(self.categories)) != len(self.categories):
            raise ValueError(f"categories must be distinct names from {MMVP_CATEGORIES}, got {categories}")
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}")
        self.prompt_style = prompt_style
        cfg, num = self.scene, self.scene.num_objects
        if len(cfg.shapes) < num + 1:
            raise ValueError(
                f"mmvp-pairs needs distinct shapes per image plus one spare: {len(cfg.shapes)} shapes "
                f"< {num} objects + 1"
            )
        if len(cfg.colours) < 2:
            raise ValueError("mmvp-pairs needs at least two colours")
        if num + 1 > cfg.grid**2:
            raise ValueError(f"{num} objects plus a free mirror cell do not fit {cfg.grid}x{cfg.grid} cells")
        self.orientable = torch.tensor([SHAPES[s].orientation_words is not None for s in cfg.shapes])
        if self.categories == ("orientation",) and not bool(self.orientable.any()):
            raise ValueError("no shape in the vocabulary has orientation words")

    @property
    def pair_chance(self) -> float:
        """Pair accuracy of a uniform random guess: both items right, ``(1/2)²``."""
        return 0.25

    # -- sampling ---------------------------------------------------------------------------
    def sample(self, rng: IndexRandom) -> tuple[Scenes, Scenes, PairQuestions]:
        """Draw pairs: scenes A, scenes B (each batch ``P``) and their questions."""
        cfg, num, grid = self.scene, self.scene.num_objects, self.scene.grid
        num_colours = len(cfg.colours)
        shape_perm = rng.permutation(len(cfg.shapes))
        shape = shape_perm[:, :num]
        spare_shape = shape_perm[:, num]
        colour = rng.randint(num_colours, num)
        turn = rng.randint(4, num)
        axis = rng.randint(2)
        target_cell = rng.randint(grid * grid)
        rows, cols = target_cell // grid, target_cell % grid
        mirror = torch.where(axis == 0, rows * grid + (grid - 1 - cols), (grid - 1 - rows) * grid + cols)
        score = rng.rand(grid * grid)
        score.scatter_(1, target_cell.unsqueeze(1), float("inf"))
        score.scatter_(1, mirror.unsqueeze(1), float("inf"))
        others = score.argsort(dim=1)[:, : num - 1]
        cell = torch.cat([target_cell.unsqueeze(1), others], dim=1)
        offset = sample_offsets(rng, cfg, num)
        background = sample_background(rng, cfg)
        category_u = rng.rand()
        colour_b = (colour[:, 0] + 1 + rng.randint(num_colours - 1)) % num_colours
        template = rng.randint(_MAX_TEMPLATES)
        colour_order = rng.randint(2)
        swap = rng.randint(2)
        rgb_b_target = sample_rgb(rng, cfg, colour_b.unsqueeze(1))

        scenes_a = Scenes(
            shape=shape,
            colour=colour,
            turn=turn,
            cell=cell,
            offset=offset,
            rgb=sample_rgb(rng, cfg, colour),
            present=torch.ones_like(shape, dtype=torch.bool),
            background=background,
        )
        category = self._category(category_u, self.orientable[shape[:, 0]])

        scenes_b = scenes_a.clone()
        is_cat = {name: category == MMVP_CATEGORIES.index(name) for name in MMVP_CATEGORIES}
        # colour: a different colour (and its own jitter).
        scenes_b.colour[:, 0] = torch.where(is_cat["colour"], colour_b, scenes_a.colour[:, 0])
        scenes_b.rgb[:, 0] = torch.where(
            is_cat["colour"].unsqueeze(1), rgb_b_target[:, 0], scenes_a.rgb[:, 0]
        )
        # orientation: a half turn changes up<->down / left<->right; a bar needs a quarter turn.
        target_turn = scenes_a.turn[:, 0]
        words_differ = torch.tensor(
            [
                SHAPES[s].orientation_words is not None
                and SHAPES[s].orientation_words[0] != SHAPES[s].orientation_words[2]
                for s in cfg.shapes
            ]
        )[shape[:, 0]]
        turned = torch.where(words_differ, (target_turn + 2) % 4, (target_turn + 1) % 4)
        scenes_b.turn[:, 0] = torch.where(is_cat["orientation"], turned, target_turn)
        # position: the mirror cell across the mid-line (kept free).
        scenes_b.cell[:, 0] = torch.where(is_cat["position"], mirror, cell[:, 0])
        # presence: same place and colour, the spare shape instead of the target's.
        scenes_b.shape[:, 0] = torch.where(is_cat["presence"], spare_shape, shape[:, 0])
        questions = PairQuestions(category, axis, colour_b, template, colour_order, swap)
        return scenes_a, scenes_b, questions

    def _category(self, u: Tensor, orientable: Tensor) -> Tensor:
        """``(P,)`` category index from one uniform per pair, given the target's shape.

        The target is uniform over the objects whatever the category (so the image says nothing
        about which object is asked); the category then adapts to the target: uniform over the
        enabled categories valid for its shape, except that an orientable target is asked about
        orientation half of the time (only a few shapes have orientation words, so a uniform
        choice would make orientation pairs rare).
        """
        enabled = torch.tensor([c in self.categories for c in MMVP_CATEGORIES], dtype=torch.float32)
        weight = enabled.expand(u.shape[0], -1).clone()
        o = MMVP_CATEGORIES.index("orientation")
        weight[:, o] *= orientable.float()
        others = weight.sum(dim=1) - weight[:, o]
        weight[:, o] *= others.clamp(min=1.0)
        total = weight.sum(dim=1)
        if not bool((total > 0).all()):
            raise ValueError("a target has no valid category; add categories besides 'orientation'")
        edges = weight.cumsum(dim=1) / total.unsqueeze(1)
        return (edges <= u.unsqueeze(1)).sum(dim=1).clamp(max=len(MMVP_CATEGORIES) - 1)

    # -- text -------------------------------------------------------------------------------
    def pair_text(self, scenes_a: Scenes, questions: PairQuestions, p: int) -> tuple[str, str, list[str]]:
        """``(category, question, options)`` of pair ``p`` (options in display order)."""
        cfg = self.scene
        category = MMVP_CATEGORIES[int(questions.category[p])]
        shape_index = int(scenes_a.shape[p, 0])
        spec = SHAPES[cfg.shapes[shape_index]]
        shape = spec.words
        t = int(questions.template[p])
        if category == "colour":
            options = [cfg.colours[int(scenes_a.colour[p, 0])], cfg.colours[int(questions.colour_b[p])]]
            if int(questions.colour_order[p]):
                options.reverse()
            templates = COLOUR_TEMPLATES
        elif category == "orientation":
            words = spec.orientation_words
            assert words is not None
            turn = int(scenes_a.turn[p, 0])
            if words[0] == words[2]:  # bar: horizontal / vertical
                options, templates = [words[0], words[1]], BAR_TEMPLATES
            else:  # pointing: up / down or left / right, in that order
                options = [words[turn % 2], words[turn % 2 + 2]]
                templates = DIRECTION_TEMPLATES
        elif category == "position":
            options = list(SIDE_WORDS[int(questions.axis[p])])
            templates = POSITION_TEMPLATES
        else:
            options, templates = ["yes", "no"], PRESENCE_TEMPLATES
        template = templates[t % len(templates)]
        text = template.format(shape=shape, a=options[0], b=options[1], article=_article(shape))
        return category, text, options

    def generate(self, indices: Sequence[int], *, split: str, seed: int) -> list[Sample]:
        indices = [int(i) for i in indices]
        pair_ids = sorted({i // 2 for i in indices})
        rng = IndexRandom([index_seed(seed, split, p, salt=self.name) for p in pair_ids])
        scenes_a, scenes_b, questions = self.sample(rng)
        images = render_scenes(Scenes.cat([scenes_a, scenes_b]), self.scene)
        num_pairs = len(pair_ids)
        row_of = {p: r for r, p in enumerate(pair_ids)}
        names = [MMVP_CATEGORIES[c] for c in questions.category.tolist()]
        asked = {"axis": questions.axis, "asked_shape": scenes_a.shape[:, 0], "config": self.scene}
        answers_a = pair_answer_words(scenes_a, names, **asked)
        answers_b = pair_answer_words(scenes_b, names, **asked)
        swap = questions.swap.tolist()
        # the queried object is object 0; a position pair moves it to the mirror cell in image B
        cells_a, cells_b = scenes_a.cell[:, 0].tolist(), scenes_b.cell[:, 0].tolist()
        texts = {}
        samples: list[Sample] = []
        for index in indices:
            r = row_of[index // 2]
            if r not in texts:
                texts[r] = self.pair_text(scenes_a, questions, r)
            category, text, options = texts[r]
            member = index % 2
            use_b = member != swap[r]
            image = images[num_pairs + r] if use_b else images[r]
            label = options.index(answers_b[r] if use_b else answers_a[r])
            prompt, shown, answer = format_prompt(text, options, label, self.prompt_style)
            samples.append(
                Sample(
                    image=image,
                    instruction=text,
                    prompt=prompt,
                    answer=answer,
                    options=shown,
                    label=label,
                    id=f"{self.name}-{split}-{index // 2}-{member}",
                    pair_id=index // 2,
                    category=category,
                    target_patch=cells_b[r] if use_b else cells_a[r],
                )
            )
        return samples
