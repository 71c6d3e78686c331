"""Accuracy, pair accuracy, chance levels and per-category breakdowns on hand-made records."""

from __future__ import annotations

import random

import pytest

from textvision.eval.metrics import pair_accuracy, per_category, question_accuracy, summarize


def _record(item: int, correct: bool, pair: int = -1, category: str = "", options: int = 2) -> dict:
    return {
        "id": str(item),
        "correct": correct,
        "pair_id": pair,
        "category": category,
        "num_options": options,
    }


def test_question_accuracy_and_denominator_override():
    records = [
        _record(i, ok, options=o) for i, (ok, o) in enumerate(zip([1, 0, 1, 1], [2, 2, 4, 4], strict=True))
    ]
    assert question_accuracy(records) == {
        "n": 4,
        "n_correct": 3,
        "acc": 0.75,
        "chance_acc": pytest.approx((0.5 + 0.5 + 0.25 + 0.25) / 4),
    }
    # MagnifierBench: skipped rows stay in the denominator
    assert question_accuracy(records, total=6)["acc"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="smaller"):
        question_accuracy(records, total=3)
    assert question_accuracy([]) == {"n": 0, "n_correct": 0, "acc": None, "chance_acc": None}


def test_pair_accuracy_counts_complete_pairs_only():
    records = [
        _record(1, True, 0),
        _record(2, True, 0),  # right pair
        _record(3, True, 1, options=4),
        _record(4, False, 1),  # half right: wrong pair
        _record(5, True, 2),  # partner missing: not counted, though right (lmms-eval)
        _record(6, True),  # no pair
    ]
    assert pair_accuracy(records) == {
        "n_pairs": 2,
        "n_pairs_correct": 1,
        "pair_acc": 0.5,
        "chance_pair_acc": pytest.approx((0.25 + 0.125) / 2),  # product of the members' chances
        "n_incomplete_pairs": 1,
    }
    assert pair_accuracy([_record(1, True)])["pair_acc"] is None
    with pytest.raises(ValueError, match="pair 0 has 3 members"):
        pair_accuracy([_record(i, True, 0) for i in range(3)])


def test_pair_accuracy_matches_a_direct_count_on_random_records():
    rng = random.Random(7)
    correct = [rng.random() < 0.6 for _ in range(2 * 37)]
    records = [_record(i, ok, i // 2) for i, ok in enumerate(correct)]
    rng.shuffle(records)  # order must not matter
    expected = sum(correct[2 * p] and correct[2 * p + 1] for p in range(37))
    result = pair_accuracy(records)
    assert (result["n_pairs_correct"], result["n_pairs"]) == (expected, 37)


def test_per_category_with_and_without_pairs():
    records = [
        _record(1, True, 0, "colour"),
        _record(2, True, 0, "colour"),
        _record(3, True, 1, "count"),
        _record(4, False, 1, "count"),
        _record(5, False, -1, ""),
    ]
    table = per_category(records)
    assert list(table) == ["colour", "count"]
    assert table["colour"]["pair_acc"] == 1.0 and table["count"]["pair_acc"] == 0.0
    assert table["count"]["acc"] == 0.5 and table["count"]["n"] == 2
    assert "pair_acc" not in per_category([_record(1, True, -1, "a")])["a"]
    mixed = per_category([_record(1, True, 0, "a"), _record(2, True, 0, "b")])
    assert mixed["a"]["n_pairs"] == 0 and mixed["a"]["n_incomplete_pairs"] == 1  # a pair in no category


def test_summarize_gathers_every_metric_under_one_set_of_names():
    records = [
        _record(1, True, 0, "colour"),
        {**_record(2, False, 0, "colour"), "invalid": True},  # NaN scores: counted wrong
        _record(3, True, 1, "shape", options=4),  # pair 1 incomplete: excluded
    ]
    summary = summarize(records)
    assert summary["acc"] == pytest.approx(2 / 3) and summary["n"] == 3
    assert (summary["n_pairs"], summary["pair_acc"], summary["n_incomplete_pairs"]) == (1, 0.0, 1)
    assert (summary["n_invalid"], summary["invalid"]) == (1, pytest.approx(1 / 3))
    assert set(summary["by_category"]) == {"colour", "shape"}
    assert summary["by_category"]["shape"]["n_pairs"] == 0  # its one member has no partner
    plain = summarize([_record(1, True), _record(2, False)])
    assert "pair_acc" not in plain and "by_category" not in plain and "n_invalid" not in plain
