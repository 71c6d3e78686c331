"""The synthetic *magnifier* set: many small objects, one question about one of them.

Named after MagnifierBench (Li et al., "OtterHD", arXiv 2311.04219): the detail that answers the
question is small, and the image holds many such details. Each image has ``K`` glyphs (default 12
on a 64 px canvas, one per 8 px patch) — more than the visual-token budget that reaches the LM
(e.g. 4–8 kept patches) — and the question picks one of them, so only an encoder that reads the
question can keep the patch the answer needs.

**Why a text-agnostic encoder sits at chance.** The queried object is drawn uniformly from all
``K`` objects *after* the scene is drawn, and every object can be named unambiguously by the
question of every category, so the image carries no information about which object is asked:
an encoder that ignores the question keeps it with probability ``budget / K`` at best. The answer
is balanced too: each image holds every colour equally often (when ``K`` is a multiple of twice
the colour count), quadrants hold ``K/4`` objects each, and distractor options are values present
in the image, so a question-blind guess from the whole image is still ``1 / num_options``.
For a question-blind encoder that keeps ``k`` of the ``K`` object patches the expected accuracy is
about ``k/K + (1 − k/K)/num_options`` (0.5 for 4 of 12 with 4 options); ``shape`` questions allow a
little more, because a kept distractor can rule its own shape out of the options.

Scene constraints that make every object nameable:

* shapes are distinct within an image (needs ``len(shapes) ≥ K``);
* the image is split into two halves (left/right or top/bottom, drawn per image) and within each
  half colours are distinct (needs ``len(colours) ≥ 2·ceil(K/4)`` for the ``shape`` category).

Categories (question → answer):

* ``colour``: "What colour is the triangle?" → the target's colour;
* ``shape``: "What shape is the red object on the left?" → the target's shape;
* ``position``: "Where is the triangle?" → its quadrant (``"top left"``, ...).

Counting questions are left out on purpose: they ask about several objects at once, which breaks
the one-object design rule above.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from textvision.data.sample import PROMPT_STYLES, Sample, format_prompt
from textvision.data.scene import (
    QUADRANT_WORDS,
    SceneConfig,
    Scenes,
    quadrant_of,
    render_scenes,
    sample_background,
    sample_balanced_cells,
    sample_offsets,
    sample_rgb,
)
from textvision.data.seeding import IndexRandom, index_seed
from textvision.data.synthetic import SyntheticGenerator

__all__ = ["MAGNIFIER_CATEGORIES", "MagnifierGenerator", "MagnifierQuestions", "magnifier_answer"]

MAGNIFIER_CATEGORIES = ("colour", "shape", "position")

COLOUR_TEMPLATES = (
    "What colour is the {shape}?",
    "What color is the {shape}?",
    "Which colour does the {shape} have?",
    "What is the colour of the {shape}?",
    "Tell me the color of the {shape}.",
    "The {shape} is painted in which colour?",
    "Can you tell me what colour the {shape} is?",
    "Look at the {shape}. What colour is it?",
)
SHAPE_TEMPLATES = (
    "What shape is the {colour} object {where}?",
    "Which shape is {colour} {where}?",
    "What is the {colour} shape {where}?",
    "Name the shape of the {colour} object {where}.",
    "{Where}, what shape is the {colour} one?",
    "Identify the {colour} shape {where}.",
    "What kind of shape is drawn in {colour} {where}?",
)
POSITION_TEMPLATES = (
    "Where is the {shape}?",
    "In which part of the image is the {shape}?",
    "Which quadrant contains the {shape}?",
    "Where in the picture is the {shape} located?",
    "Where can the {shape} be found?",
    "In which corner region of the image is the {shape}?",
    "Which quarter of the image is the {shape} in?",
)
TEMPLATES = {"colour": COLOUR_TEMPLATES, "shape": SHAPE_TEMPLATES, "position": POSITION_TEMPLATES}
# Phrases naming a half: index [axis][half]; axis 0 splits columns (left/right), 1 rows (top/bottom).
HALF_PHRASES = (
    (
        ("on the left", "in the left half", "on the left side"),
        ("on the right", "in the right half", "on the right side"),
    ),
    (
        ("at the top", "in the top half", "in the upper half"),
        ("at the bottom", "in the bottom half", "in the lower half"),
    ),
)
_MAX_TEMPLATES = max(len(t) for t in TEMPLATES.values())


@dataclass
class MagnifierQuestions:
    """The question side of a batch (all ``(B,)`` long tensors unless noted).

    Attributes:
        target: index of the queried object.
        category: index into the generator's ``categories``.
        axis: 0 = halves are left/right, 1 = top/bottom (used by ``shape`` questions).
        template: template index (taken modulo the category's template count).
        phrase: half-phrase index.
        options: ``(B, num_options)`` answer-vocabulary indices, in display order.
        label: position of the answer in ``options``.
    """

    target: Tensor
    category: Tensor
    axis: Tensor
    template: Tensor
    phrase: Tensor
    options: Tensor
    label: Tensor


def half_of(scenes: Scenes, axis: Tensor, grid: int) -> Tensor:
    """``(B, K)`` 0/1: which half each object is in, along each image's ``axis``."""
    rows, cols = scenes.rows_cols(grid)
    return torch.where(axis.unsqueeze(1) == 0, cols >= grid // 2, rows >= grid // 2).long()


def magnifier_answer(scenes: Scenes, target: Tensor, category: str, config: SceneConfig) -> Tensor:
    """``(B,)`` answer-vocabulary index of ``category``'s question about object ``target``.

    Vocabularies: colour → ``config.colours``, shape → ``config.shapes``, position →
    :data:`~textvision.data.scene.QUADRANT_WORDS`. Pure function of the scene: change the target's
    attribute in ``scenes`` and the answer follows.
    """
    pick = target.unsqueeze(1)
    if category == "colour":
        return scenes.colour.gather(1, pick).squeeze(1)
    if category == "shape":
        return scenes.shape.gather(1, pick).squeeze(1)
    if category == "position":
        rows, cols = scenes.rows_cols(config.grid)
        return quadrant_of(rows, cols, config.grid).gather(1, pick).squeeze(1)
    raise ValueError(f"unknown magnifier category {category!r}")


def _choose_options(
    rng: IndexRandom, answer: Tensor, present: Tensor, num_options: int
) -> tuple[Tensor, Tensor]:
    """Answer plus ``num_options - 1`` distractors, preferring values present in the image.

    Args:
        answer: ``(B,)`` vocabulary index of the answer.
        present: ``(B, V)`` bool, values seen in the image.

    Returns:
        ``options (B, num_options)`` in random display order and ``label (B,)``.
    """
    vocab = present.shape[1]
    score = rng.rand(vocab) + 2.0 * present.float()
    score.scatter_(1, answer.unsqueeze(1), float("-inf"))
    distractors = score.topk(num_options - 1, dim=1).indices
    options = torch.cat([answer.unsqueeze(1), distractors], dim=1)
    order = rng.permutation(num_options)
    options = options.gather(1, order)
    label = order.argsort(dim=1)[:, 0]
    return options, label


class MagnifierGenerator(SyntheticGenerator):
    """Seeded, vectorised generator of magnifier questions.

    Args:
        scene: scene geometry and vocabulary.
        categories: which question categories to draw from (uniformly).
        num_options: answer options per question, in ``[2, 4]``.
        prompt_style: ``"short"`` or ``"letters"`` (see :mod:`textvision.data.sample`).
    """

    name = "magnifier"

    def __init__(
        self,
        scene: SceneConfig | None = None,
        *,
        categories: Sequence[str] = MAGNIFIER_CATEGORIES,
        num_options: int = 4,
        prompt_style: str = "short",
    ):
        self.scene = scene if scene is not None else SceneConfig()
        self.categories = tuple(categories)
        unknown = [c for c in self.categories if c not in MAGNIFIER_CATEGORIES]
        if not self.categories or unknown or len(set(self.categories)) != len(self.categories):
            raise ValueError(
                f"categories must be distinct names from {MAGNIFIER_CATEGORIES}, got {categories}"
            )
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}")
        self.prompt_style = prompt_style
        cfg, num = self.scene, self.scene.num_objects
        if len(cfg.shapes) < num:
            raise ValueError(
                f"magnifier needs distinct shapes per image: {len(cfg.shapes)} shapes < {num} objects"
            )
        if "shape" in self.categories and len(cfg.colours) < 2 * -(-num // 4):
            raise ValueError(
                f"shape questions need distinct colours within each half: {len(cfg.colours)} colours "
                f"< 2*ceil({num}/4); use more colours, fewer objects, or drop the 'shape' category"
            )
        limit = min(4, len(cfg.colours), len(cfg.shapes))
        if not 2 <= num_options <= limit:
            raise ValueError(f"num_options must be in [2, {limit}], got {num_options}")
        self.num_options = num_options

    # -- sampling ---------------------------------------------------------------------------
    def sample(self, rng: IndexRandom) -> tuple[Scenes, MagnifierQuestions]:
        """Draw scene specifications and questions for one batch (nothing rendered yet)."""
        cfg, num = self.scene, self.scene.num_objects
        batch = rng.batch_size
        shape = rng.permutation(len(cfg.shapes))[:, :num]
        cell = sample_balanced_cells(rng, cfg, num)
        axis = rng.randint(2)
        colour_perm = rng.permutation(len(cfg.colours), 2)  # (B, 2, C): a colour order per half
        offset = sample_offsets(rng, cfg, num)
        background = sample_background(rng, cfg)
        target = rng.randint(num)
        category = rng.randint(len(self.categories))
        template = rng.randint(_MAX_TEMPLATES)
        phrase = rng.randint(3)
        scenes = Scenes(
            shape=shape,
            colour=torch.zeros_like(shape),
            turn=torch.zeros_like(shape),
            cell=cell,
            offset=offset,
            rgb=torch.zeros(batch, num, 3),
            present=torch.ones_like(shape, dtype=torch.bool),
            background=background,
        )
        half = half_of(scenes, axis, cfg.grid)
        rank = (F.one_hot(half, 2).cumsum(dim=1) - 1).gather(2, half.unsqueeze(-1)).squeeze(-1)
        rows = torch.arange(batch).unsqueeze(1)
        scenes.colour = colour_perm[rows, half, rank % len(cfg.colours)]
        scenes.rgb = sample_rgb(rng, cfg, scenes.colour)
        options, label = self._options(rng, scenes, target, category)
        questions = MagnifierQuestions(target, category, axis, template, phrase, options, label)
        return scenes, questions

    def _options(
        self, rng: IndexRandom, scenes: Scenes, target: Tensor, category: Tensor
    ) -> tuple[Tensor, Tensor]:
        cfg = self.scene
        batch = target.shape[0]
        seen = {
            "colour": F.one_hot(scenes.colour, len(cfg.colours)).amax(1).bool(),
            "shape": F.one_hot(scenes.shape, len(cfg.shapes)).amax(1).bool(),
            "position": torch.ones(batch, len(QUADRANT_WORDS), dtype=torch.bool),
        }
        options = torch.zeros(batch, self.num_options, dtype=torch.long)
        label = torch.zeros(batch, dtype=torch.long)
        # Every category's draws happen for every sample, so the stream never depends on data.
        for name in MAGNIFIER_CATEGORIES:
            answer = magnifier_answer(scenes, target, name, cfg)
            cat_options, cat_label = _choose_options(rng, answer, seen[name], self.num_options)
            if name in self.categories:
                chosen = category == self.categories.index(name)
                options[chosen], label[chosen] = cat_options[chosen], cat_label[chosen]
        return options, label

    # -- text -------------------------------------------------------------------------------
    def vocabulary(self, category: str) -> list[str]:
        """Answer words of a category, indexed like :func:`magnifier_answer`."""
        if category == "colour":
            return list(self.scene.colours)
        if category == "shape":
            return [self.scene.shape_words(i) for i in range(len(self.scene.shapes))]
        if category == "position":
            return list(QUADRANT_WORDS)
        raise ValueError(f"unknown magnifier category {category!r}")

    def question(
        self, scenes: Scenes, questions: MagnifierQuestions, b: int, half: Tensor
    ) -> tuple[str, str]:
        """``(category, question sentence)`` of sample ``b``; ``half`` is :func:`half_of` the batch."""
        cfg = self.scene
        category = self.categories[int(questions.category[b])]
        target = int(questions.target[b])
        templates = TEMPLATES[category]
        template = templates[int(questions.template[b]) % len(templates)]
        shape = cfg.shape_words(int(scenes.shape[b, target]))
        colour = cfg.colours[int(scenes.colour[b, target])]
        axis = int(questions.axis[b])
        where = HALF_PHRASES[axis][int(half[b, target])][int(questions.phrase[b])]
        text = template.format(shape=shape, colour=colour, where=where, Where=where[:1].upper() + where[1:])
        return category, text

    def generate(self, indices: Sequence[int], *, split: str, seed: int) -> list[Sample]:
        indices = [int(i) for i in indices]
        rng = IndexRandom([index_seed(seed, split, i, salt=self.name) for i in indices])
        scenes, questions = self.sample(rng)
        images = render_scenes(scenes, self.scene)
        half = half_of(scenes, questions.axis, self.scene.grid)
        target_cells = scenes.cell.gather(1, questions.target.unsqueeze(1)).squeeze(1).tolist()
        samples: list[Sample] = []
        for b, index in enumerate(indices):
            category, text = self.question(scenes, questions, b, half)
            words = self.vocabulary(category)
            option_words = [words[int(v)] for v in questions.options[b]]
            prompt, options, answer = format_prompt(
                text, option_words, int(questions.label[b]), self.prompt_style
            )
            samples.append(
                Sample(
                    image=images[b],
                    instruction=text,
                    prompt=prompt,
                    answer=answer,
                    options=options,
                    label=int(questions.label[b]),
                    id=f"{self.name}-{split}-{index}",
                    pair_id=-1,
                    category=category,
                    target_patch=target_cells[b],
                )
            )
        return samples
