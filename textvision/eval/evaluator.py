"""One evaluator for every multiple-choice set: MMVP, MagnifierBench and the synthetic sets.

A model (:class:`~textvision.eval.protocol.MultipleChoiceModel`) answers each
:class:`~textvision.eval.protocol.EvalSample` in one of two modes:

- ``"options"``: ``score_options`` gives each option's log-likelihood; the prediction is the
  highest-scoring option (the first on a tie). For letter-answer benchmarks (MMVP, MagnifierBench)
  the options are the letters, so the LM scores ``"A"``/``"B"``(/``"C"``/``"D"``) as the
  continuation of the prompt that lists them. No parser is involved.
- ``"generate"``: ``generate`` gives a greedy reply (``max_new_tokens``, 16 as lmms-eval); every
  parser of the benchmark maps it to a prediction, and each parser is scored separately. The
  first parser is the headline one (the official/harness parser).

Batches are :func:`textvision.data.collate.collate_samples`'s, the training loaders' batcher.
Option scores become predictions through :func:`option_records` and scored items become metrics
through :func:`textvision.eval.metrics.summarize`, the same two steps the LightningModule's
validation and test take (``textvision.train.module``): one evaluation path, one set of metric
names.
"""

from __future__ import annotations

import logging
import math
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from textvision.data.collate import collate_samples
from textvision.eval.answer_parsing import (
    extract_choice_letter,
    magnifier_lenient_letter,
    strict_letter,
)
from textvision.eval.metrics import summarize
from textvision.eval.protocol import MultipleChoiceModel, validate_sample

__all__ = [
    "MODES",
    "Parser",
    "choose_options",
    "default_parsers",
    "evaluate_multiple_choice",
    "match_option_text",
    "option_records",
]

MODES = ("options", "generate")

_logger = logging.getLogger(__name__)

# Benchmark-specific sample keys copied into the per-item results when present.
_EXTRA_ITEM_KEYS = ("option_texts", "original_answer", "errata_applied")

#: ``(reply, sample) -> predicted option`` (a string compared with ``sample["answer"]``).
Parser = Callable[[str, Mapping[str, Any]], str]


def match_option_text(reply: str, options: Sequence[str]) -> str:
    """Strict text matching: the option equal to the reply, ignoring case, surrounding whitespace
    and trailing ``.``/``!``; ``""`` if none."""

    def norm(text: str) -> str:
        return re.sub(r"\s+", " ", text.strip().rstrip(".!").strip().lower())

    reply_norm = norm(reply)
    return next((option for option in options if norm(option) == reply_norm), "")


def _letters(options: Sequence[str]) -> str | None:
    joined = "".join(options)
    if all(len(o) == 1 for o in options) and all(c in string.ascii_uppercase for c in joined):
        return joined
    return None


def _letter_cascade(reply: str, sample: Mapping[str, Any]) -> str:
    return extract_choice_letter(reply, _letters(sample["options"]) or "AB")


def _strict(reply: str, sample: Mapping[str, Any]) -> str:
    letters = _letters(sample["options"])
    if letters is None:
        return match_option_text(reply, sample["options"])
    return strict_letter(reply, letters)


def _magnifier_official(reply: str, sample: Mapping[str, Any]) -> str:
    return magnifier_lenient_letter(reply, sample["prompt"])


def default_parsers(benchmark: str, options: Sequence[str] | None = None) -> dict[str, Parser]:
    """The parsers of a benchmark, headline first.

    - ``mmvp``: ``lmms-eval`` (``_extract_answer_letter``).
    - ``magnifierbench``: ``official-lenient`` (Otter ``parse_pred_ans``) and ``strict``.
    - anything else (synthetic sets): ``letter-cascade`` + ``strict`` for letter options,
      ``option-exact`` (:func:`match_option_text`) for text options.
    """
    if benchmark == "mmvp":
        return {"lmms-eval": _letter_cascade}
    if benchmark == "magnifierbench":
        return {"official-lenient": _magnifier_official, "strict": _strict}
    if options is not None and _letters(options) is None:
        return {"option-exact": _strict}
    return {"letter-cascade": _letter_cascade, "strict": _strict}


def choose_options(scores: Tensor, num_options: Sequence[int]) -> Tensor:
    """``(B,)`` index of each item's highest-scoring option (the first on a tie), or ``-1``.

    ``-1`` (no answer) where an item has no options, where any of its option scores is NaN or
    ``+inf``, or where none is finite: a broken score is never turned into an answer (``argmax``
    of a row holding NaN returns the NaN's position). ``scores`` is ``(B, max_options)``;
    columns past an item's ``num_options`` are ignored.
    """
    counts = torch.as_tensor(list(num_options), device=scores.device).view(-1, 1)
    real = torch.arange(scores.shape[-1], device=scores.device).view(1, -1) < counts
    broken = ((torch.isnan(scores) | torch.isposinf(scores)) & real).any(-1)
    some_finite = (torch.isfinite(scores) & real).any(-1)
    ranked = scores.nan_to_num(nan=float("-inf")).masked_fill(~real, float("-inf"))
    pred = ranked.argmax(-1)
    return torch.where(some_finite & ~broken, pred, torch.full_like(pred, -1))


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def option_records(scores: Tensor, batch: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Score a collated batch (:func:`textvision.data.collate.collate_samples`) from its option
    log-likelihoods: one record per item that has options, in batch order, ready for
    :func:`textvision.eval.metrics.summarize`.

    Args:
        scores: ``(B, >= max options)`` log-likelihoods (``MultipleChoiceModel.score_options``).
        batch: needs ``options``, ``answer``, ``id``, ``pair_id`` and ``category``.

    Returns:
        ``{"id", "pair_id", "category", "num_options", "scores", "prediction", "correct",
        "invalid"}`` per item; ``prediction`` is the top-scored option (:func:`choose_options`),
        or ``None`` when the item's scores are NaN/inf (``invalid``: counted wrong, never an
        answer). Free-form items (no options) get no record.

    Raises:
        ValueError: ``scores`` does not have one row per item and a column per option.
    """
    options = batch["options"]
    widest = max((len(o) for o in options), default=0)
    if scores.ndim != 2 or scores.shape[0] != len(options) or scores.shape[1] < widest:
        raise ValueError(f"option scores are {tuple(scores.shape)}, expected ({len(options)}, >={widest})")
    scores = scores.detach().float().cpu()
    chosen = choose_options(scores, [len(o) for o in options]).tolist()
    out = []
    for row, (item_options, choice) in enumerate(zip(options, chosen, strict=True)):
        if not item_options:
            continue
        prediction = item_options[choice] if choice >= 0 else None
        out.append(
            {
                "id": batch["id"][row],
                "pair_id": int(batch["pair_id"][row]),
                "category": batch["category"][row],
                "num_options": len(item_options),
                "scores": [_finite_or_none(float(x)) for x in scores[row, : len(item_options)]],
                "prediction": prediction,
                "correct": prediction == batch["answer"][row],
                "invalid": choice < 0,
            }
        )
    return out


def _collate_checked(samples: list[Mapping[str, Any]]) -> dict[str, Any]:
    """:func:`~textvision.data.collate.collate_samples` after checking every item is scorable."""
    for sample in samples:
        validate_sample(dict(sample))
    return collate_samples(samples)


def _score_batch(model: MultipleChoiceModel, batch: dict[str, Any], images: Tensor) -> list[dict[str, Any]]:
    scores = model.score_options(images, batch["instruction"], batch["prompt"], batch["options"])
    return option_records(scores, batch)


def _generate_batch(
    model: MultipleChoiceModel,
    batch: dict[str, Any],
    images: Tensor,
    max_new_tokens: int,
    parsers: Mapping[str, Parser],
) -> list[dict[str, Any]]:
    replies = model.generate(images, batch["instruction"], batch["prompt"], max_new_tokens=max_new_tokens)
    if len(replies) != len(batch["id"]) or not all(isinstance(r, str) for r in replies):
        raise ValueError(f"generate returned {replies!r}, expected {len(batch['id'])} strings")
    out = []
    for row, reply in enumerate(replies):
        sample = {key: values[row] for key, values in batch.items() if key != "image"}
        out.append(
            {"reply": reply, "predictions": {name: parse(reply, sample) for name, parse in parsers.items()}}
        )
    return out


@torch.inference_mode()
def evaluate_multiple_choice(
    model: MultipleChoiceModel,
    dataset: Sequence[Mapping[str, Any]],
    *,
    benchmark: str,
    mode: str = "options",
    parsers: Mapping[str, Parser] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 16,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    total: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Answer every item of ``dataset`` with ``model`` and score it.

    Args:
        model: implements :class:`~textvision.eval.protocol.MultipleChoiceModel`.
        dataset: indexable samples (an MMVP/MagnifierBench benchmark, a synthetic set).
        benchmark: name used to pick the default parsers and label the result.
        mode: ``"options"`` (log-likelihood argmax) or ``"generate"`` (reply + parsers).
        parsers: generation parsers, headline first; defaults to :func:`default_parsers`.
        batch_size, num_workers: loading (``torch.utils.data.DataLoader``).
        max_new_tokens: generation length.
        device: move images there before calling the model.
        total: accuracy denominator override (MagnifierBench: all rows, skipped ones included);
            defaults to ``dataset.total_rows`` when the dataset has it.
        progress: show a tqdm bar.

    Returns:
        ``{"benchmark", "mode", "parsers", "headline", "metrics": {scorer: {...}}, "items": [...]}``
        where a scorer is a parser name, or ``"option-loglik"`` in options mode, and its metrics
        are :func:`textvision.eval.metrics.summarize`'s (``acc``, ``pair_acc``, ``by_category``,
        ...). In options mode an item whose option scores are NaN/inf is counted wrong
        (``n_invalid``, with a logged warning naming it), never turned into an answer.
    """
    from tqdm.auto import tqdm

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(model, nn.Module):
        model.eval()
    if total is None:
        total = getattr(dataset, "total_rows", None)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate_checked
    )
    items: list[dict[str, Any]] = []
    for batch in tqdm(loader, desc=benchmark, unit="batch", disable=not progress):
        images = batch["image"] if device is None else batch["image"].to(device)
        if mode == "options":
            answers = _score_batch(model, batch, images)
        else:
            if parsers is None:
                parsers = default_parsers(benchmark, batch["options"][0])
            answers = _generate_batch(model, batch, images, max_new_tokens, parsers)
        for row, answer in enumerate(answers):
            record = {
                "id": batch["id"][row],
                "pair_id": int(batch["pair_id"][row]),
                "category": batch["category"][row],
                "num_options": len(batch["options"][row]),
                "instruction": batch["instruction"][row],
                "prompt": batch["prompt"][row],
                "options": batch["options"][row],
                "answer": batch["answer"][row],
                **{key: batch[key][row] for key in _EXTRA_ITEM_KEYS if key in batch},
                **answer,
            }
            items.append(record)
    scorers = ["option-loglik"] if mode == "options" else list(parsers or default_parsers(benchmark))
    if mode == "options":
        invalid = [item["id"] for item in items if item["invalid"]]
        if invalid:
            _logger.warning(
                "%s: %d of %d items had NaN/inf option scores (%s); they are counted as wrong "
                "(metric 'n_invalid')",
                benchmark,
                len(invalid),
                len(items),
                ", ".join(map(str, invalid[:8])) + (" …" if len(invalid) > 8 else ""),
            )
        metrics = {"option-loglik": summarize(items, total=total)}
    else:
        metrics = {}
        for scorer in scorers:
            scored = [{**item, "correct": item["predictions"][scorer] == item["answer"]} for item in items]
            metrics[scorer] = summarize(scored, total=total)
        for item in items:
            item["correct"] = {name: pred == item["answer"] for name, pred in item["predictions"].items()}
    head = metrics[scorers[0]]
    headline_metric = "pair_acc" if "pair_acc" in head else "acc"
    return {
        "benchmark": benchmark,
        "mode": mode,
        "parsers": scorers,
        "headline": {"metric": headline_metric, "scorer": scorers[0], "value": head[headline_metric]},
        "metrics": metrics,
        "items": items,
    }
