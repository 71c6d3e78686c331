import json

import pytest
import torch

from textvision.bench.grounding_probe import OptionClassifier, ProbeSpec, main, run_probe, to_markdown

VOCAB = ["red", "green", "blue", "yellow", "circle", "square"]


@pytest.mark.parametrize("readout", ["cls_mean", "text_query"])
def test_option_classifier_scores_the_given_options(readout):
    torch.manual_seed(0)
    head = OptionClassifier(width=16, vocabulary=VOCAB, readout=readout, num_heads=2, hidden=8)
    tokens, text = torch.randn(3, 5, 16), torch.randn(3, 4, 16)
    mask = torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]])
    options = [["red", "blue"], ["circle", "green"], ["square", "yellow"]]
    logits = head(tokens, text, mask, options)
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    # Options pick their own vocabulary columns: reversing an item's options reverses its logits.
    flipped = head(tokens, text, mask, [row[::-1] for row in options])
    torch.testing.assert_close(flipped, logits.flip(1))
    if readout == "cls_mean":
        full = head.head(torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], -1))
        torch.testing.assert_close(logits, full.gather(1, torch.tensor([[0, 2], [4, 1], [5, 3]])))


def test_text_query_ignores_padded_text_tokens():
    torch.manual_seed(0)
    head = OptionClassifier(width=16, vocabulary=VOCAB, readout="text_query", num_heads=2, hidden=8).eval()
    tokens, text = torch.randn(2, 5, 16), torch.randn(2, 4, 16)
    mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
    poisoned = text.clone()
    poisoned[~mask] = 1e4
    options = [["red", "blue"], ["circle", "green"]]
    torch.testing.assert_close(head(tokens, text, mask, options), head(tokens, poisoned, mask, options))


def test_option_classifier_names_unknown_options():
    head = OptionClassifier(width=8, vocabulary=VOCAB)
    with pytest.raises(KeyError, match="hexagon"):
        head.option_ids([["red", "hexagon"]])
    with pytest.raises(ValueError, match="readout"):
        OptionClassifier(width=8, vocabulary=VOCAB, readout="lm")


def test_run_probe_trains_and_reports_a_curve():
    spec = ProbeSpec(category="colour", num_objects=2, readout="cls_mean", keep_tokens=3)
    result = run_probe(spec, steps=3, batch_size=4, eval_size=6, eval_every=2, depth=2)
    assert [p["step"] for p in result["curve"]] == [2, 3]
    assert all(0.0 <= p["accuracy"] <= 1.0 and p["train_loss"] > 0 for p in result["curve"])
    assert result["chance"] == 0.25 and result["name"] == "colour-K2-gated_xattn-keep3-cls_mean"
    assert result["final_accuracy"] == result["curve"][-1]["accuracy"]
    table = to_markdown([result])
    assert "colour-K2-gated_xattn-keep3-cls_mean" in table and "step 3" in table


def test_run_probe_rejects_bad_settings():
    with pytest.raises(ValueError, match="category"):
        run_probe(ProbeSpec(category="count"), steps=1, depth=1)
    with pytest.raises(ValueError, match="positive"):
        run_probe(ProbeSpec(), steps=0, depth=1)


def test_main_writes_json_and_markdown(tmp_path):
    argv = [
        "--out",
        str(tmp_path),
        "--categories",
        "shape",
        "--num-objects",
        "1",
        "--readouts",
        "text_query",
        "--fusion",
        "none",
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--eval-size",
        "2",
        "--depth",
        "1",
    ]
    main(argv)
    data = json.loads((tmp_path / "grounding_probe.json").read_text())
    assert [p["name"] for p in data["probes"]] == ["shape-K1-none-no_prune-text_query"]
    assert "shape-K1-none-no_prune-text_query" in (tmp_path / "grounding_probe.md").read_text()


def test_curriculum_grows_scenes_to_num_objects():
    fixed = ProbeSpec(num_objects=12)
    assert {fixed.objects_at(s, d) for s in (1, 500) for d in (0.1, 0.9)} == {12}
    ramp = ProbeSpec(num_objects=12, curriculum_steps=100)
    assert ramp.objects_at(1, 0.0) == 1 and ramp.objects_at(50, 0.0) == 6 and ramp.objects_at(100, 0.0) == 12
    sizes = {ramp.objects_at(200, d / 100) for d in range(100)}
    assert sizes == set(range(1, 13))  # after the ramp every size still appears
    assert all(1 <= ramp.objects_at(s, d / 10) <= 1 + 11 * s // 100 for s in range(1, 100) for d in range(10))
    assert "ramp100" in ramp.name
