"""Per-question accuracy, MMVP pair accuracy, chance levels and per-category breakdowns.

The one definition of every multiple-choice metric in textvision: the LightningModule's
validation/test, ``textvision eval``, the demo's ``metrics.json`` and the bench runner all
summarise their scored items with :func:`summarize`, so the numbers and their names are the same
everywhere.

Every function takes *records*: one mapping per scored item with ``correct`` (bool),
``num_options`` (int, the item's chance is ``1 / num_options``), ``pair_id`` (int, ``-1`` for
none), ``category`` (str, ``""`` for none) and optionally ``invalid`` (bool: the option scores
were NaN/inf, so the item was counted wrong; see
:func:`textvision.eval.evaluator.choose_options`). Accuracies are fractions in [0, 1]; an empty
denominator gives ``None`` (JSON ``null``), never NaN.

Metric names: ``n``, ``n_correct``, ``acc``, ``chance_acc``; with pairs ``n_pairs``,
``n_pairs_correct``, ``pair_acc``, ``chance_pair_acc``, ``n_incomplete_pairs``; ``n_invalid``,
``invalid``; ``by_category`` (the same names per category).

Pair accuracy follows lmms-eval's ``mmvp_aggregate_pair_results`` (and the MMVP paper's
definition): items are grouped by ``pair_id``, a pair counts only when both members are present,
and it is correct only when both are correct; the denominator is the number of complete pairs
(150 on the full MMVP set). Incomplete pairs are excluded, and counted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["pair_accuracy", "per_category", "question_accuracy", "summarize"]

Record = Mapping[str, Any]


def _ratio(numerator: float, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _chance(record: Record) -> float:
    return 1.0 / max(1, int(record["num_options"]))


def question_accuracy(records: Iterable[Record], *, total: int | None = None) -> dict[str, Any]:
    """Per-question accuracy and its chance level.

    Args:
        records: scored items.
        total: denominator override: MagnifierBench divides by all rows of the dataset, including
            the multi-image rows the official loader skips (``accuracy = score / len(data)``).

    Returns:
        ``{"n", "n_correct", "acc", "chance_acc"}`` (``n`` is the denominator; ``chance_acc`` the
        mean chance of the scored items).
    """
    records = list(records)
    correct = sum(bool(record["correct"]) for record in records)
    total = len(records) if total is None else total
    if total < len(records):
        raise ValueError(f"total={total} is smaller than the {len(records)} scored items")
    return {
        "n": total,
        "n_correct": correct,
        "acc": _ratio(correct, total),
        "chance_acc": _ratio(sum(_chance(record) for record in records), len(records)),
    }


def _group_pairs(records: Sequence[Record]) -> dict[int, list[Record]]:
    pairs: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        pair_id = int(record["pair_id"])
        if pair_id >= 0:
            pairs[pair_id].append(record)
    for pair_id, members in pairs.items():
        if len(members) > 2:
            ids = [member.get("id") for member in members]
            raise ValueError(f"pair {pair_id} has {len(members)} members {ids}; a pair has two")
    return pairs


def pair_accuracy(records: Iterable[Record]) -> dict[str, Any]:
    """MMVP pair accuracy: a pair is right only if both of its questions are right.

    Returns:
        ``{"n_pairs", "n_pairs_correct", "pair_acc", "chance_pair_acc", "n_incomplete_pairs"}``;
        ``n_pairs`` counts complete pairs only, ``n_incomplete_pairs`` those with one member
        present (not counted). A pair's chance is the product of its members' chances.
    """
    pairs = _group_pairs(list(records))
    complete = [members for members in pairs.values() if len(members) == 2]
    correct = sum(all(bool(member["correct"]) for member in members) for members in complete)
    chance = sum(math.prod(_chance(member) for member in members) for members in complete)
    return {
        "n_pairs": len(complete),
        "n_pairs_correct": correct,
        "pair_acc": _ratio(correct, len(complete)),
        "chance_pair_acc": _ratio(chance, len(complete)),
        "n_incomplete_pairs": len(pairs) - len(complete),
    }


def per_category(records: Iterable[Record], *, pairs: bool | None = None) -> dict[str, dict[str, Any]]:
    """Question (and pair) accuracy per category, categories in first-seen order.

    Args:
        records: scored items; items with an empty category are left out.
        pairs: include pair accuracy; by default when any record has ``pair_id >= 0``.

    A pair counts in a category only when both of its members are in it (MMVP's pairs always
    are); a pair whose members carry different categories is an incomplete pair in each.
    """
    records = list(records)
    if pairs is None:
        pairs = any(int(record["pair_id"]) >= 0 for record in records)
    by_category: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        if record["category"]:
            by_category[str(record["category"])].append(record)
    result: dict[str, dict[str, Any]] = {}
    for category, members in by_category.items():
        result[category] = question_accuracy(members)
        if pairs:
            result[category].update(pair_accuracy(members))
    return result


def summarize(records: Iterable[Record], *, total: int | None = None) -> dict[str, Any]:
    """Every metric of a set of scored items (the names in the module docstring).

    Question accuracy always; pair accuracy when any item has ``pair_id >= 0``; ``n_invalid`` and
    ``invalid`` (their fraction) when records carry ``invalid``; ``by_category`` when any item
    has a category. ``total`` is :func:`question_accuracy`'s denominator override.
    """
    records = list(records)
    out = question_accuracy(records, total=total)
    has_pairs = any(int(record["pair_id"]) >= 0 for record in records)
    if has_pairs:
        out.update(pair_accuracy(records))
    if any("invalid" in record for record in records):
        invalid = sum(bool(record.get("invalid")) for record in records)
        out.update(n_invalid=invalid, invalid=_ratio(invalid, len(records)))
    categories = per_category(records, pairs=has_pairs)
    if categories:
        out["by_category"] = categories
    return out
