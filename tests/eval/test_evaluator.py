"""The shared evaluator on synthetic-style sets (text and letter options, pairs, categories), the
synthetic factory path through the CLI, and clear errors for misbehaving models or samples."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch

from textvision.eval.cli import infer_image_size, main
from textvision.eval.evaluator import default_parsers, evaluate_multiple_choice, option_records
from textvision.eval.run import evaluate_benchmark, load_benchmark, resolve_callable


def _pairs_set(kit, n_pairs=6, size=10):
    """mmvp-pairs style: two images per pair, same question, opposite text answers."""
    samples = []
    categories = ["orientation", "count", "colour"]
    for p in range(n_pairs):
        for member, answer in enumerate(("left", "right")):
            index = 2 * p + member + 1
            image = torch.tensor(kit.index_colour(index), dtype=torch.float32).div(255).view(3, 1, 1)
            samples.append(
                {
                    "image": image.expand(3, size, size + p).clone(),  # sizes differ between pairs
                    "instruction": "Which way does the arrow point?",
                    "prompt": "Which way does the arrow point? Answer left or right.",
                    "answer": answer,
                    "options": ["left", "right"],
                    "label": member,
                    "id": f"pair{p}-{member}",
                    "pair_id": p,
                    "category": categories[p % 3],
                }
            )
    return samples


def test_text_option_pairs_in_both_modes(kit, scripted_model):
    samples = _pairs_set(kit)
    # pairs 0, 1: right; pair 2: second wrong; pair 3: reply in other case / punctuation (still exact);
    # pairs 4, 5: "left" always
    replies = {
        1: "left",
        2: "right",
        3: "left",
        4: "right",
        5: "left",
        6: "left",
        7: "Left.",
        8: " RIGHT ",
        9: "left",
        10: "left",
        11: "left",
        12: "left",
    }
    for mode in ("generate", "options"):
        table = replies if mode == "generate" else {k: v.strip(" .").lower() for k, v in replies.items()}
        result = evaluate_multiple_choice(
            scripted_model(table), samples, benchmark="mmvp_pairs", mode=mode, batch_size=2, progress=False
        )
        scorer = result["parsers"][0]
        assert scorer == ("option-exact" if mode == "generate" else "option-loglik")
        m = result["metrics"][scorer]
        assert (m["n_correct"], m["n"], m["n_pairs_correct"], m["n_pairs"]) == (9, 12, 3, 6)
        assert (m["chance_acc"], m["chance_pair_acc"]) == (0.5, 0.25)
        per = m["by_category"]
        assert per["orientation"]["n_pairs_correct"] == 2  # pairs 0 and 3
        assert per["count"]["n_pairs_correct"] == 1 and per["colour"]["n_pairs_correct"] == 0
        assert result["headline"]["metric"] == "pair_acc"


def test_letter_options_use_cascade_and_strict_parsers(kit, scripted_model):
    samples = []
    for i in range(1, 5):
        image = torch.tensor(kit.index_colour(i), dtype=torch.float32).div(255).view(3, 1, 1).expand(3, 8, 8)
        samples.append(
            {
                "image": image.clone(),
                "instruction": "What colour?",
                "prompt": "What colour? A. red, B. blue, C. green, D. grey",
                "answer": "C",
                "options": list("ABCD"),
                "label": 2,
                "id": f"m{i}",
                "pair_id": -1,
                "category": "",
            }
        )
    result = evaluate_benchmark(
        scripted_model({1: "C", 2: "The answer is C", 3: "c) green", 4: "D"}),
        "magnifier",
        samples,
        mode="generate",
        progress=False,
    )
    assert result["parsers"] == ["letter-cascade", "strict"]
    assert result["metrics"]["letter-cascade"]["n_correct"] == 3
    assert result["metrics"]["strict"]["n_correct"] == 2
    assert "pair_acc" not in result["metrics"]["strict"]
    assert result["headline"]["metric"] == "acc"


def test_default_parsers_per_benchmark():
    assert list(default_parsers("mmvp")) == ["lmms-eval"]
    assert list(default_parsers("magnifierbench")) == ["official-lenient", "strict"]
    assert list(default_parsers("mmvp_pairs", ["yes", "no"])) == ["option-exact"]


def test_synthetic_factory_through_the_cli(tmp_path, monkeypatch, kit, scripted_model):
    module = tmp_path / "my_synthetic_sets.py"
    module.write_text(
        textwrap.dedent("""
        import torch

        def build(name, *, size, image_size):
            assert name == "mmvp_pairs"
            samples = []
            for p in range(size):
                for member, answer in enumerate(("yes", "no")):
                    samples.append({"image": torch.zeros(3, image_size, image_size), "instruction": "q",
                                    "prompt": "q?", "answer": answer, "options": ["yes", "no"],
                                    "label": member, "id": f"{p}-{member}", "pair_id": p, "category": ""})
            return samples
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    result = main(
        [
            "--benchmark",
            "mmvp_pairs",
            "--synthetic-factory",
            "my_synthetic_sets:build",
            "--synthetic-args",
            '{"size": 3}',
            "--image-size",
            "8",
            "--mode",
            "options",
            "--out",
            str(out),
            "--no-progress",
            "--device",
            "cpu",
        ],
        model=scripted_model({}, default="yes"),
    )
    metrics = result["metrics"]["option-loglik"]
    assert (metrics["n_correct"], metrics["n"], metrics["n_pairs_correct"]) == (3, 6, 0)
    assert json.loads((out / "mmvp_pairs-options.json").read_text())["run"]["image_size"] == 8
    with pytest.raises(ImportError, match="no_such_module"):
        resolve_callable("no_such_module:build")
    with pytest.raises(ValueError, match="generated, not read"):
        load_benchmark("mmvp_pairs", "some/folder")
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("pope", "x")


class _BrokenModel:
    def __init__(self, scores=None, replies=None):
        self.scores, self.replies = scores, replies

    def score_options(self, images, instructions, prompts, options):
        return self.scores

    def generate(self, images, instructions, prompts, *, max_new_tokens=16):
        return self.replies


def test_misbehaving_models_and_bad_samples_fail_clearly(kit, caplog):
    samples = _pairs_set(kit, n_pairs=1)
    # a NaN score is never turned into an answer: the item counts wrong, named in a warning
    result = evaluate_multiple_choice(
        _BrokenModel(scores=torch.tensor([[0.0, math.nan], [0.0, 1.0]])),
        samples,
        benchmark="x",
        progress=False,
    )
    metrics = result["metrics"]["option-loglik"]
    assert (metrics["n_invalid"], metrics["n_correct"], metrics["pair_acc"]) == (1, 1, 0.0)
    assert result["items"][0]["prediction"] is None and result["items"][0]["invalid"]
    assert "pair0-0" in caplog.text
    with pytest.raises(ValueError, match=r"option scores are \(2, 1\)"):
        evaluate_multiple_choice(
            _BrokenModel(scores=torch.zeros(2, 1)), samples, benchmark="x", progress=False
        )
    with pytest.raises(ValueError, match="expected 2 strings"):
        evaluate_multiple_choice(
            _BrokenModel(replies=["left"]), samples, benchmark="x", mode="generate", progress=False
        )
    with pytest.raises(ValueError, match="mode must be"):
        evaluate_multiple_choice(_BrokenModel(), samples, benchmark="x", mode="beam")
    model = _BrokenModel(scores=torch.zeros(2, 2))
    mixed = _pairs_set(kit, n_pairs=2)
    with pytest.raises(ValueError, match="textvision eval --image-size"):
        evaluate_multiple_choice(model, mixed[1:3], benchmark="x", progress=False)
    bad = dict(samples[0], answer="right")
    with pytest.raises(ValueError, match="sample 'pair0-0': answer 'right' is not options"):
        evaluate_multiple_choice(model, [bad, samples[1]], benchmark="x", progress=False)
    with pytest.raises(ValueError, match=r"lacks keys \['pair_id'\]"):
        evaluate_multiple_choice(
            model, [{k: v for k, v in s.items() if k != "pair_id"} for s in samples], benchmark="x"
        )
    with pytest.raises(TypeError, match="score_options"):
        evaluate_benchmark(object(), "mmvp_pairs", samples, progress=False)


def test_option_records_score_a_collated_batch():
    from textvision.data.collate import collate_samples

    samples = []
    for i, options in enumerate((["a", "b", "c"], ["a", "b"], [], ["x", "y"])):
        samples.append(
            {
                "image": torch.zeros(3, 2, 2),
                "instruction": "q",
                "prompt": "q?",
                "answer": options[1] if options else "free",
                "options": options,
                "label": 1 if options else -1,
                "id": f"i{i}",
                "pair_id": i // 2,
                "category": "c",
            }
        )
    scores = torch.tensor(
        [[0.0, 1.0, 1.0], [2.0, 1.0, -math.inf], [0.0, 0.0, 0.0], [math.inf, 0.0, -math.inf]]
    )
    records = option_records(scores, collate_samples(samples))
    assert [r["id"] for r in records] == ["i0", "i1", "i3"]  # the free-form item is not scored
    assert [r["prediction"] for r in records] == ["b", "a", None]  # first maximum on a tie; +inf: none
    assert [r["correct"] for r in records] == [True, False, False]
    assert [r["invalid"] for r in records] == [False, False, True]
    assert [r["num_options"] for r in records] == [3, 2, 2] and records[1]["scores"] == [2.0, 1.0]


def test_infer_image_size_reads_nested_attributes():
    class Backbone:
        image_size = (24, 24)

    class Encoder:
        backbone = Backbone()

    class Model:
        encoder = Encoder()

    assert infer_image_size(Model()) == 24
    assert infer_image_size(object()) is None


class _LookupModel:
    """Answers from a table keyed by (prompt, rounded image): an oracle built from the dataset itself."""

    def __init__(self, table):
        self.table = table

    @staticmethod
    def key(image, prompt):
        return prompt, tuple(torch.round(image.float() * 1000).flatten()[::7].tolist())

    def generate(self, images, instructions, prompts, *, max_new_tokens=16):
        return [self.table[self.key(image, prompt)] for image, prompt in zip(images, prompts, strict=True)]

    def score_options(self, images, instructions, prompts, options):
        replies = self.generate(images, instructions, prompts)
        return torch.tensor(
            [[0.0 if o == r else -1.0 for o in opts] for r, opts in zip(replies, options, strict=True)]
        )


@pytest.mark.parametrize(
    ("name", "style", "mode"), [("mmvp_pairs", "short", "options"), ("magnifier", "letters", "generate")]
)
def test_real_synthetic_sets_through_the_cli(tmp_path, name, style, mode):
    from textvision.eval.synthetic_sets import build_synthetic_set

    args = {"size": 8, "seed": 3, "prompt_style": style}
    items = [build_synthetic_set(name, **args)[i] for i in range(8)]
    table = {}
    for i, sample in enumerate(items):
        wrong = sample["options"][(sample["label"] + 1) % len(sample["options"])]
        table[_LookupModel.key(sample["image"], sample["prompt"])] = wrong if i == 2 else sample["answer"]
    result = main(
        [
            "--benchmark",
            name,
            "--synthetic-args",
            json.dumps(args),
            "--image-size",
            "64",
            "--mode",
            mode,
            "--out",
            str(tmp_path),
            "--no-progress",
            "--device",
            "cpu",
            "--batch-size",
            "3",
        ],
        model=_LookupModel(table),
    )
    metrics = result["metrics"][result["headline"]["scorer"]]
    assert (metrics["n_correct"], metrics["n"]) == (7, 8)
    if name == "mmvp_pairs":
        assert (metrics["n_pairs_correct"], metrics["n_pairs"]) == (3, 4)  # item 2 breaks pair 1
        assert result["headline"]["metric"] == "pair_acc"
    else:
        assert result["parsers"] == ["letter-cascade", "strict"]
    categories = metrics["by_category"]
    assert sum(c["n"] for c in categories.values()) == 8
    assert result["dataset"]["seed"] == 3 and result["dataset"]["split"] == "test"
    assert [item["id"] for item in result["items"]] == [s["id"] for s in items]


def test_synthetic_set_resizes_to_the_model_input():
    from textvision.eval.synthetic_sets import build_synthetic_set

    bench = build_synthetic_set("magnifier", size=3, image_size=32, num_options=3)
    assert bench[0]["image"].shape == (3, 32, 32) and len(bench[1]["options"]) == 3
    with pytest.raises(ValueError, match="unknown synthetic set"):
        build_synthetic_set("pope")
