"""MMVP: the real question file with generated stand-in images; loading, pairing, prompts, scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from textvision.data.images import ImageLoadError
from textvision.eval.cli import cli_main, main
from textvision.eval.mmvp import (
    MMVP_ERRATA,
    MMVPBenchmark,
    build_mmvp_prompt,
    file_label_state,
    read_mmvp_questions,
)
from textvision.eval.run import evaluate_benchmark
from textvision.eval.sources import MissingBenchmarkError

POST = "\nAnswer with the option's letter from the given choices directly."


def test_real_file_loads_as_150_pairs(mmvp_questions_file):
    questions = read_mmvp_questions(mmvp_questions_file)
    assert [q.index for q in questions] == list(range(1, 301))
    assert all(q.answer == ("A" if q.index % 2 else "B") for q in questions)
    for first, second in zip(questions[::2], questions[1::2], strict=True):
        assert first.pair_id == second.pair_id == (first.index - 1) // 2
        assert (first.question, first.options) == (second.question, second.options)
    assert questions[0].options == ("Open", "Closed")
    # quoted field with inner quotes (row 9 of the official file)
    assert questions[8].question == 'Can you see the key "Z" in the image?'


def test_errata_flag_changes_exactly_four_labels(mmvp_questions_file):
    plain = read_mmvp_questions(mmvp_questions_file)
    fixed = read_mmvp_questions(mmvp_questions_file, errata=True)
    changed = {q.index: q.answer for q in fixed if q.errata_applied}
    assert changed == MMVP_ERRATA == {99: "B", 100: "A", 279: "B", 280: "A"}
    assert not any(q.errata_applied for q in plain)
    assert [q.original_answer for q in fixed] == [q.answer for q in plain]


def test_file_label_state(mmvp_questions_file, tmp_path):
    assert file_label_state(read_mmvp_questions(mmvp_questions_file)) == "original"
    fixed = mmvp_questions_file.read_text().splitlines()
    for index, letter in MMVP_ERRATA.items():
        fixed[index] = fixed[index].rsplit(",", 1)[0] + f",({letter.lower()})"
    path = tmp_path / "fixed.csv"
    path.write_text("\n".join(fixed) + "\n")
    fixed_questions = read_mmvp_questions(path)
    assert file_label_state(fixed_questions) == "corrected"
    # the flag is idempotent on a corrected file
    assert [q.answer for q in read_mmvp_questions(path, errata=True)] == [q.answer for q in fixed_questions]
    assert file_label_state(fixed_questions[:10]) == "absent"


def test_samples_follow_the_contract_and_the_lmms_eval_prompt(mmvp_root, kit):
    bench = MMVPBenchmark(mmvp_root, image_size=16)
    assert len(bench) == 300
    sample = bench[0]
    assert sample["image"].shape == (3, 16, 16) and sample["image"].dtype == torch.float32
    assert kit.decode_index(sample["image"]) == 1
    assert sample["instruction"] == "Are the butterfly's wings closer to being open or closed?"
    assert sample["prompt"] == (
        "Are the butterfly's wings closer to being open or closed?\nA. Open\nB. Closed" + POST
    )
    assert (sample["options"], sample["answer"], sample["label"]) == (["A", "B"], "A", 0)
    assert (sample["id"], sample["pair_id"], sample["category"]) == ("1", 0, "")
    second = bench[1]
    assert (second["answer"], second["label"], second["pair_id"]) == ("B", 1, 0)
    assert build_mmvp_prompt("Q?", ["x", "y"]) == "Q?\nA. x\nB. y" + POST
    kept = MMVPBenchmark(mmvp_root)  # no resize: the file's own odd size
    assert kept[2]["image"].shape == (3, 13 + 3 % 3, 17 + 3 % 5)


def _hand_made_replies() -> dict[int, str]:
    """1..20 right (varied reply forms), 99/100 = B/A (the corrected truth), 279/280 = A/A, rest 'A'."""
    forms = {"A": ["A", "(A)", "A.", "The answer is A", "a"], "B": ["B", "(b)", "B. Closed", "Option B", "b"]}
    replies = {i: "A" for i in range(1, 301)}
    for i in range(1, 21):
        gold = "A" if i % 2 else "B"
        replies[i] = forms[gold][i % 5]
    replies.update({99: "B", 100: "A", 279: "A", 280: "A"})
    return replies


@pytest.mark.parametrize("mode", ["generate", "options"])
@pytest.mark.parametrize(("errata", "correct", "pairs_correct"), [(False, 159, 10), (True, 161, 11)])
def test_hand_made_predictions_score_as_hand_computed(
    mmvp_root, scripted_model, mode, errata, correct, pairs_correct
):
    # Without errata: 1..20 right (10 pairs); odd 21..299 right except 99 (139); no even right.
    # With errata: 99 and 100 become right (pair 49 right), 279 wrong, 280 right: 161, 11 pairs.
    replies = _hand_made_replies()
    if mode == "options":  # the option scorer sees letters, not free text
        replies = {
            i: ("B" if r.strip("(). ").upper().startswith(("B", "OPTION B")) else "A")
            for i, r in replies.items()
        }
    model = scripted_model(replies)
    result = evaluate_benchmark(
        model, "mmvp", mmvp_root, mode=mode, errata=errata, image_size=8, batch_size=32, progress=False
    )
    scorer = "lmms-eval" if mode == "generate" else "option-loglik"
    metrics = result["metrics"][scorer]
    assert (metrics["n_correct"], metrics["n"]) == (correct, 300)
    assert (metrics["n_pairs_correct"], metrics["n_pairs"], metrics["n_incomplete_pairs"]) == (
        pairs_correct,
        150,
        0,
    )
    assert metrics["acc"] == pytest.approx(correct / 300)
    assert result["headline"] == {"metric": "pair_acc", "scorer": scorer, "value": pairs_correct / 150}
    assert result["dataset"]["errata"] is errata
    assert len(result["items"]) == 300
    item_99 = next(item for item in result["items"] if item["id"] == "99")
    assert item_99["errata_applied"] is errata and item_99["original_answer"] == "A"
    assert all(call["shape"][-2:] == (8, 8) for call in model.calls)


def test_image_blind_model_gets_no_pair(mmvp_root, scripted_model):
    result = evaluate_benchmark(
        scripted_model({}, default="A"),
        "mmvp",
        mmvp_root,
        mode="generate",
        image_size=8,
        batch_size=64,
        progress=False,
    )
    metrics = result["metrics"]["lmms-eval"]
    assert (metrics["acc"], metrics["pair_acc"]) == (0.5, 0.0)


def _write_csv(kit, root: Path, text: str, *, encoding: str = "utf-8", images=(1, 2)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Questions.csv").write_bytes(text.encode(encoding))
    for index in images:
        kit.write_index_image(root / "MMVP Images" / f"{index}.jpg", index)
    return root


ROWS = (
    '1,"Is the ""Z"" key visible, or not?",(a) Yes (b) No,(a)\n'
    '2,"Is the ""Z"" key visible, or not?",(a) Yes (b) No,(b)\n'
)


@pytest.mark.parametrize(
    "header",
    [
        "Index,Question,Options,Correct Answer\n",
        "lndex,Question,Options,Correct Answer\n",
        "\ufeffIndex,Question,Options,Correct Answer\n",
        "",
    ],
)
def test_header_variants_and_inner_quotes(tmp_path, kit, header):
    bench = MMVPBenchmark(_write_csv(kit, tmp_path / "m", header + ROWS), image_size=8)
    assert [s["id"] for s in (bench[0], bench[1])] == ["1", "2"]
    assert bench[0]["instruction"] == 'Is the "Z" key visible, or not?'
    assert bench[1]["answer"] == "B"


def test_bom_with_crlf_and_trailing_comma(tmp_path, kit):
    text = "Index,Question,Options,Correct Answer\r\n" + ROWS.replace("(a)\n", "(a),\r\n")
    bench = MMVPBenchmark(_write_csv(kit, tmp_path / "m", text, encoding="utf-8-sig"), image_size=8)
    assert len(bench) == 2 and bench[0]["answer"] == "A"


def test_optional_category_column(tmp_path, kit):
    text = (
        "Index,Question,Options,Correct Answer,Category\n"
        "1,Q?,(a) Up (b) Down,(a),Orientation\n2,Q?,(a) Up (b) Down,(b),Orientation\n"
    )
    bench = MMVPBenchmark(_write_csv(kit, tmp_path / "m", text), image_size=8)
    assert bench[1]["category"] == "Orientation"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("3,Only three columns,(a) x (b) y", "line 4: expected 4 columns"),
        ("x3,Q?,(a) x (b) y,(a)", "line 4: Index must be a positive integer"),
        ("2,Q?,(a) x (b) y,(a)", "line 4: Index 2 repeats line 3"),
        ("3,Q?,(a) only one,(a)", "line 4: Options must be"),
        ("3,Q?,(a) x (b) y,(c)", "line 4: MMVP answer must be"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path, kit, row, message):
    path = _write_csv(kit, tmp_path / "m", "Index,Question,Options,Correct Answer\n" + ROWS + row + "\n")
    with pytest.raises(ValueError, match=message) as info:
        read_mmvp_questions(path / "Questions.csv")
    assert "Questions.csv" in str(info.value)


def test_missing_image_raises_naming_it_or_is_skipped_and_counted(tmp_path, kit, scripted_model):
    root = _write_csv(
        kit,
        tmp_path / "m",
        "Index,Question,Options,Correct Answer\n" + ROWS + "3,Q?,(a) x (b) y,(a)\n4,Q?,(a) x (b) y,(b)\n",
        images=(1, 2, 3),
    )
    with pytest.raises(FileNotFoundError, match=r"4\.jpg"):
        MMVPBenchmark(root)
    bench = MMVPBenchmark(root, skip_missing_images=True, image_size=8)
    assert len(bench) == 3 and bench.skipped == [str(root / "MMVP Images" / "4.jpg")]
    result = evaluate_benchmark(
        scripted_model({1: "A", 2: "B", 3: "A"}),
        "mmvp",
        root,
        mode="generate",
        image_size=8,
        skip_missing_images=True,
        progress=False,
    )
    metrics = result["metrics"]["lmms-eval"]
    # the half pair (3, 4) cannot count
    assert (metrics["n_pairs_correct"], metrics["n_pairs"], metrics["n_incomplete_pairs"]) == (1, 1, 1)
    assert (metrics["n_correct"], metrics["n"]) == (3, 3)
    assert result["dataset"]["skipped_missing_images"] == bench.skipped


def test_corrupt_image_error_names_the_file(tmp_path, kit, scripted_model):
    root = _write_csv(kit, tmp_path / "m", "Index,Question,Options,Correct Answer\n" + ROWS)
    (root / "MMVP Images" / "2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageLoadError, match=r"2\.jpg"):
        evaluate_benchmark(scripted_model({}), "mmvp", root, image_size=8, progress=False)


def test_missing_folder_or_file_says_where_the_release_is(tmp_path, kit):
    with pytest.raises(MissingBenchmarkError, match="MMVP/MMVP") as info:
        MMVPBenchmark(tmp_path / "nowhere")
    assert "Questions.csv" in str(info.value) and "MMVP Images" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingBenchmarkError, match=r"Questions\.csv"):
        MMVPBenchmark(tmp_path / "empty")
    _write_csv(kit, tmp_path / "noimg", "Index,Question,Options,Correct Answer\n" + ROWS, images=())
    with pytest.raises(MissingBenchmarkError, match="MMVP Images"):
        MMVPBenchmark(tmp_path / "noimg")


def test_cli_writes_json_and_markdown(mmvp_root, scripted_model, tmp_path, capsys):
    out = tmp_path / "out"
    model = scripted_model(_hand_made_replies())
    main(
        [
            "--benchmark",
            "mmvp",
            "--data",
            str(mmvp_root),
            "--errata",
            "--mode",
            "generate",
            "--out",
            str(out),
            "--image-size",
            "8",
            "--batch-size",
            "50",
            "--no-progress",
            "--device",
            "cpu",
        ],
        model=model,
    )
    data = json.loads((out / "mmvp-generate-errata.json").read_text())
    assert data["dataset"]["errata"] is True and data["run"]["errata"] is True
    assert data["parsers"] == ["lmms-eval"]
    assert data["run"]["model"] == "ScriptedModel" and data["run"]["checkpoint"] is None
    assert data["metrics"]["lmms-eval"]["n_pairs_correct"] == 11
    assert len(data["items"]) == 300 and data["items"][0]["reply"] == model.replies[1]
    markdown = (out / "mmvp-generate-errata.md").read_text()
    assert "pair accuracy 7.3 %" in markdown
    assert "errata applied: **yes** (file labels at 99/100/279/280: original)" in markdown
    assert "| lmms-eval | 53.7 | 161 / 300 | 7.3 | 11 / 150 |" in markdown
    assert "mmvp: pair accuracy" in capsys.readouterr().out


def test_cli_entry_prints_data_errors_in_one_line(tmp_path, capsys):
    code = cli_main(
        [
            "--benchmark",
            "mmvp",
            "--data",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path),
            "--checkpoint",
            str(tmp_path / "missing.ckpt"),
        ]
    )
    assert code == 2 and "checkpoint not found" in capsys.readouterr().err


def test_cli_without_model_or_checkpoint_fails_clearly(mmvp_root, tmp_path):
    with pytest.raises(SystemExit, match="--checkpoint"):
        main(["--benchmark", "mmvp", "--data", str(mmvp_root), "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        main(
            [
                "--benchmark",
                "mmvp",
                "--data",
                str(mmvp_root),
                "--out",
                str(tmp_path),
                "--checkpoint",
                str(tmp_path / "missing.ckpt"),
            ]
        )


def _lmms_lab_copy(kit, questions_file, *, lowercase=False):
    """The real questions as a datasets table with embedded images and labels corrected at source,
    like lmms-lab-eval/MMVP."""
    questions = read_mmvp_questions(questions_file, errata=True)
    names = (
        ("index", "question", "options", "answer", "image")
        if lowercase
        else ("Index", "Question", "Options", "Correct Answer", "image")
    )
    return {
        names[0]: [q.index for q in questions],
        names[1]: [q.question for q in questions],
        names[2]: [
            list(q.options) if lowercase else f"(a) {q.options[0]} (b) {q.options[1]}" for q in questions
        ],
        names[3]: [q.answer if lowercase else f"({q.answer.lower()})" for q in questions],
        names[4]: [kit.index_pil(q.index, size=(9, 7)) for q in questions],
    }


def test_datasets_copy_with_corrected_labels(tmp_path, kit, mmvp_questions_file, scripted_model):
    import datasets

    datasets.Dataset.from_dict(_lmms_lab_copy(kit, mmvp_questions_file)).save_to_disk(str(tmp_path / "disk"))
    datasets.Dataset.from_dict(_lmms_lab_copy(kit, mmvp_questions_file, lowercase=True)).to_parquet(
        str(tmp_path / "mmvp.parquet")
    )
    for source in (tmp_path / "disk", tmp_path / "mmvp.parquet"):
        bench = MMVPBenchmark(source, image_size=8)
        assert bench.describe()["layout"] == "datasets"
        assert bench.describe()["file_labels_at_errata_items"] == "corrected"
        assert (
            bench[0]["prompt"]
            == "Are the butterfly's wings closer to being open or closed?\nA. Open\nB. Closed" + POST
        )
        # labels fixed at source: errata off already scores like the corrected CSV (161 / 11)
        result = evaluate_benchmark(
            scripted_model(_hand_made_replies()),
            "mmvp",
            source,
            mode="generate",
            image_size=8,
            batch_size=100,
            progress=False,
        )
        metrics = result["metrics"]["lmms-eval"]
        assert (metrics["n_correct"], metrics["n_pairs_correct"], metrics["n_pairs"]) == (161, 11, 150), (
            source
        )


def test_datasets_copy_bad_rows(tmp_path, kit, mmvp_questions_file):
    import datasets

    columns = _lmms_lab_copy(kit, mmvp_questions_file)
    broken = dict(columns, Options=["(a) only", *columns["Options"][1:]])
    datasets.Dataset.from_dict(broken).save_to_disk(str(tmp_path / "broken"))
    with pytest.raises(ValueError, match="row 0: Options must be"):
        MMVPBenchmark(tmp_path / "broken")
    columns.pop("Question")
    datasets.Dataset.from_dict(columns).save_to_disk(str(tmp_path / "noq"))
    with pytest.raises(ValueError, match="no 'question' column"):
        MMVPBenchmark(tmp_path / "noq")
    with pytest.raises(MissingBenchmarkError, match="MMVP/MMVP"):
        MMVPBenchmark("lmms-lab-eval/MMVP")  # offline in tests: a clear error, not a hang
