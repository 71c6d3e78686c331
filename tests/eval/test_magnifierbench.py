"""MagnifierBench rows written in the HF layout: every source form, prompts, both parsers, bad rows."""

from __future__ import annotations

import base64
import io
import json
import time

import datasets
import pytest

from textvision.data.images import ImageLoadError
from textvision.eval.magnifierbench import MAGNIFIER_PROMPT, MagnifierBenchmark
from textvision.eval.run import evaluate_benchmark
from textvision.eval.sources import MissingBenchmarkError

OPTIONS = " A. red, B. blue, C. green, D. white"
# (id, image numbers, question, gold, reply)
ROWS = [
    ("m1", [1], "What colour is the cup?", "B", "(b)"),
    ("m2", [2], "What colour is the kite?", "C", "The answer is C."),
    ("m3", [3], "What colour is the car?", "A", "a"),
    ("m4", [4, 5], "What colour is the sign?", "A", "A"),  # two images: skipped, still in the denominator
    ("m5", [6], "What colour is the door?", "D", ""),
    ("m6", [7], "What colour is the bag?", "A", "A"),
    ("m7", [8], "What colour is the hat?", "B", "It is the blue one"),
]
REPLIES = {numbers[0]: reply for _, numbers, _, _, reply in ROWS}
# lenient: m1 m2 m3 m6 m7 right; strict: m1 m2 m3 m6; denominator 7 (m4 included)
LENIENT, STRICT = 5 / 7, 4 / 7


def _columns(kit, image_key="images"):
    return {
        "id": [r[0] for r in ROWS],
        "instruction": [r[2] + OPTIONS for r in ROWS],
        image_key: [[kit.index_pil(n) for n in r[1]] for r in ROWS],
        "answer": [r[3] for r in ROWS],
    }


@pytest.fixture
def saved_dataset(tmp_path, kit):
    path = tmp_path / "magnifier_disk"
    datasets.Dataset.from_dict(_columns(kit)).save_to_disk(str(path))
    return path


def _png_b64(kit, n: int) -> str:
    buffer = io.BytesIO()
    kit.index_pil(n).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_loading_prompt_and_instruction_split(saved_dataset, kit):
    bench = MagnifierBenchmark(saved_dataset, image_size=12)
    assert (len(bench), bench.total_rows, bench.skipped) == (6, 7, ["m4"])
    sample = bench[0]
    assert sample["prompt"] == f"{MAGNIFIER_PROMPT} What colour is the cup?{OPTIONS}"
    assert sample["prompt"].startswith("Answer with the option letter from the given choices directly. What")
    assert sample["instruction"] == "What colour is the cup?"
    assert sample["option_texts"] == ["red", "blue", "green", "white"]
    assert (sample["options"], sample["answer"], sample["label"]) == (["A", "B", "C", "D"], "B", 1)
    assert sample["image"].shape == (3, 12, 12) and kit.decode_index(sample["image"]) == 1
    assert bench.describe()["skipped_not_one_image"] == ["m4"]


def test_generate_mode_reports_both_parsers_over_all_rows(saved_dataset, scripted_model):
    model = scripted_model(REPLIES)
    result = evaluate_benchmark(
        model, "magnifierbench", saved_dataset, mode="generate", image_size=8, batch_size=4, progress=False
    )
    assert result["parsers"] == ["official-lenient", "strict"]
    lenient, strict = result["metrics"]["official-lenient"], result["metrics"]["strict"]
    assert (lenient["n_correct"], lenient["n"], lenient["acc"]) == (5, 7, pytest.approx(LENIENT))
    assert (strict["n_correct"], strict["n"], strict["acc"]) == (4, 7, pytest.approx(STRICT))
    assert result["headline"]["metric"] == "acc" and result["headline"]["scorer"] == "official-lenient"
    by_id = {item["id"]: item for item in result["items"]}
    assert by_id["m7"]["predictions"] == {"official-lenient": "B", "strict": "other"}
    assert by_id["m7"]["correct"] == {"official-lenient": True, "strict": False}
    assert "m4" not in by_id
    assert model.calls[0]["instructions"][0] == "What colour is the cup?"


def test_options_mode_scores_the_letters(saved_dataset, scripted_model):
    letters = {1: "B", 2: "C", 3: "B", 6: "D", 7: "A", 8: "B"}  # m3 wrong
    result = evaluate_benchmark(
        scripted_model(letters), "magnifierbench", saved_dataset, mode="options", image_size=8, progress=False
    )
    metrics = result["metrics"]["option-loglik"]
    assert (metrics["n_correct"], metrics["n"]) == (5, 7)
    assert result["items"][0]["scores"] == [-5.0, 0.0, -5.0, -5.0]


def test_dataset_dict_parquet_and_json_sources_agree(tmp_path, kit, scripted_model):
    columns = _columns(kit)
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(columns)}).save_to_disk(str(tmp_path / "dd"))
    datasets.Dataset.from_dict(columns).to_parquet(str(tmp_path / "mb.parquet"))
    (tmp_path / "pq").mkdir()
    datasets.Dataset.from_dict(columns).to_parquet(str(tmp_path / "pq" / "test-00000-of-00001.parquet"))
    # JSON records: base64 strings, and a path relative to the file for m2
    kit.index_pil(2).save(tmp_path / "m2.png")
    records = [
        {
            "id": r[0],
            "instruction": r[2] + OPTIONS,
            "answer": r[3],
            "images": ["m2.png"] if r[0] == "m2" else [_png_b64(kit, n) for n in r[1]],
        }
        for r in ROWS
    ]
    (tmp_path / "mb.json").write_text(json.dumps(records))
    (tmp_path / "mb.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    (tmp_path / "mimic.json").write_text(
        json.dumps({"data": {r.pop("id"): r for r in json.loads(json.dumps(records))}})
    )
    for source in ("dd", "mb.parquet", "pq", "mb.json", "mb.jsonl", "mimic.json"):
        result = evaluate_benchmark(
            scripted_model(REPLIES),
            "magnifierbench",
            tmp_path / source,
            mode="generate",
            image_size=8,
            progress=False,
        )
        assert result["metrics"]["official-lenient"]["acc"] == pytest.approx(LENIENT), source
        assert result["metrics"]["strict"]["acc"] == pytest.approx(STRICT), source


def test_single_image_column(tmp_path, kit):
    columns = _columns(kit)
    columns.pop("images")
    columns["image"] = [kit.index_pil(r[1][0]) for r in ROWS]
    datasets.Dataset.from_dict(columns).save_to_disk(str(tmp_path / "single"))
    bench = MagnifierBenchmark(tmp_path / "single", image_size=8)
    assert (len(bench), bench.total_rows) == (7, 7)
    assert kit.decode_index(bench[3]["image"]) == 4


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("answer", "E", r"item 'm1': answer 'E' is not one of"),
        ("instruction", "What colour is the cup?", r"item 'm1': no 'A\. \.\.\., B\. \.\.\.' options"),
    ],
)
def test_malformed_rows_name_the_item(tmp_path, kit, field, value, message):
    columns = _columns(kit)
    columns[field][0] = value
    datasets.Dataset.from_dict(columns).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match=message):
        MagnifierBenchmark(tmp_path / "bad")


def test_missing_column_and_bad_image(tmp_path, kit):
    columns = _columns(kit)
    columns.pop("answer")
    datasets.Dataset.from_dict(columns).save_to_disk(str(tmp_path / "noanswer"))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['answer'\]"):
        MagnifierBenchmark(tmp_path / "noanswer")
    records = [{"id": "x1", "instruction": "Q?" + OPTIONS, "answer": "A", "images": ["bm90IGFuIGltYWdl"]}]
    (tmp_path / "bad.json").write_text(json.dumps(records))
    bench = MagnifierBenchmark(tmp_path / "bad.json")
    with pytest.raises(ImageLoadError, match="item 'x1'"):
        bench[0]


def test_missing_source_says_where_the_release_is(tmp_path):
    with pytest.raises(MissingBenchmarkError, match="Otter-AI/MagnifierBench"):
        MagnifierBenchmark(tmp_path / "no" / "such" / "folder")
    start = time.perf_counter()
    with pytest.raises(MissingBenchmarkError, match="hub failed") as info:
        MagnifierBenchmark("Otter-AI/MagnifierBench")  # tests run with HF_DATASETS_OFFLINE=1
    assert "save_to_disk" in str(info.value)
    assert time.perf_counter() - start < 20
