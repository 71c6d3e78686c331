"""The sample every dataset yields, and how a multiple-choice prompt is written.

**Sample contract** (a plain ``dict``; :class:`Sample` types it). Every dataset of textvision —
the synthetic *magnifier* and *mmvp-pairs* sets, LLaVA conversation JSON, and the evaluation
benchmarks (``textvision.eval.protocol.EvalSample`` is the same schema) — yields:

==============  ===========  =======================================================================
key             type         meaning
==============  ===========  =======================================================================
``image``       Tensor       ``(3, H, W)`` float32 in [0, 1]
``instruction`` str          what the **text encoder** reads: the natural-language question only,
                             no options, no ``<image>`` tag (EMMA's choice, arXiv 2410.02080)
``prompt``      str          what the **language model** reads before the answer (see below)
``answer``      str          the target text the LM must produce (no leading space, no EOS)
``options``     list[str]    candidate answers, same kind of string as ``answer``; ``[]`` when
                             free-form (LLaVA)
``label``       int          index of ``answer`` in ``options``; ``-1`` when free-form
``id``          str          unique within its dataset split
``pair_id``     int          items sharing it form an MMVP-style pair; ``-1`` when none
``category``    str          question type (``"colour"``, ``"shape"``, ``"position"``,
                             ``"orientation"``, ``"presence"``; ``""`` for LLaVA)
``target_patch`` int         *optional*: row-major index of the patch that holds the object the
                             question is about, where the data knows it (the synthetic sets); it
                             is what the kept-target rate and the grounding loss read
==============  ===========  =======================================================================

Invariants: ``options[label] == answer`` when ``label >= 0``; ``options`` has no duplicates.
The LM input is ``prompt`` followed by ``answer``; the VLM tokenises them separately and applies
its own chat template, so the prompt carries no role tags and no trailing space.

**Prompt styles** (:func:`format_prompt`):

* ``"short"`` (default; for the tiny demo LM): ``"<question> Options: red, blue, green, yellow."``
  and the answer is the option text (``"red"``), scored by each option's log-likelihood.
* ``"letters"`` (LLaVA-1.5 / MMBench style, for real LMs):
  ``"<question>\\nA. red\\nB. blue\\n...\\nAnswer with the option's letter from the given choices
  directly."``; then ``options`` are the letters (``["A", "B", ...]``) and ``answer`` is one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

from torch import Tensor
from typing_extensions import NotRequired  # typing.NotRequired needs Python 3.11

__all__ = ["OPTIONAL_SAMPLE_KEYS", "PROMPT_STYLES", "SAMPLE_KEYS", "Sample", "check_sample", "format_prompt"]

PROMPT_STYLES = ("short", "letters")
LETTERS_POST_PROMPT = "Answer with the option's letter from the given choices directly."


class Sample(TypedDict):
    """One item of any textvision dataset; see the module docstring for the meaning of each key."""

    image: Tensor
    instruction: str
    prompt: str
    answer: str
    options: list[str]
    label: int
    id: str
    pair_id: int
    category: str
    target_patch: NotRequired[int]


#: keys a sample may leave out
OPTIONAL_SAMPLE_KEYS = ("target_patch",)
#: the keys every sample has (with ``from __future__ import annotations`` the TypedDict cannot tell
#: NotRequired keys apart, so the optional ones are listed)
SAMPLE_KEYS = tuple(k for k in Sample.__annotations__ if k not in OPTIONAL_SAMPLE_KEYS)


def format_prompt(
    question: str, options: Sequence[str], label: int, style: str = "short"
) -> tuple[str, list[str], str]:
    """Write the LM prompt for a multiple-choice question.

    Args:
        question: the question sentence (also the sample's ``instruction``).
        options: the answer texts, in display order.
        label: index of the correct option.
        style: ``"short"`` or ``"letters"`` (see the module docstring).

    Returns:
        ``(prompt, options, answer)`` with ``options``/``answer`` in the style's answer space.
    """
    if not 0 <= label < len(options):
        raise ValueError(f"label {label} outside {len(options)} options")
    if style == "short":
        return f"{question} Options: {', '.join(options)}.", list(options), options[label]
    if style == "letters":
        if len(options) > 26:
            raise ValueError(f"letters style supports at most 26 options, got {len(options)}")
        letters = [chr(ord("A") + i) for i in range(len(options))]
        choices = [f"{letter}. {text}" for letter, text in zip(letters, options, strict=True)]
        lines = [question, *choices, LETTERS_POST_PROMPT]
        return "\n".join(lines), letters, letters[label]
    raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")


def check_sample(sample: dict) -> None:
    """Raise ``ValueError`` naming the item if ``sample`` breaks the contract."""
    name = sample.get("id", "<no id>")
    missing = [key for key in SAMPLE_KEYS if key not in sample]
    if missing:
        raise ValueError(f"sample {name!r} lacks keys {missing}")
    image = sample["image"]
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"sample {name!r}: image must be a (3, H, W) tensor")
    if not image.is_floating_point() or not bool(((image >= 0) & (image <= 1)).all()):
        raise ValueError(f"sample {name!r}: image must be float in [0, 1]")
    for key in ("instruction", "prompt", "answer", "id", "category"):
        if not isinstance(sample[key], str):
            raise ValueError(f"sample {name!r}: {key} must be str")
    target = sample.get("target_patch", -1)
    if not isinstance(target, int) or target < -1:
        raise ValueError(f"sample {name!r}: target_patch must be an int >= -1, got {target!r}")
    options, label = sample["options"], sample["label"]
    if label == -1:
        if options:
            raise ValueError(f"sample {name!r}: free-form samples (label -1) have no options")
    else:
        if not 0 <= label < len(options) or options[label] != sample["answer"]:
            raise ValueError(f"sample {name!r}: answer {sample['answer']!r} is not options[{label}]")
        if len(set(options)) != len(options):
            raise ValueError(f"sample {name!r}: duplicate options {options}")
