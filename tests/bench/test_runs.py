"""``textvision.bench.experiments.runs``: run specs, config derivation, caching identity, counting, timing."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from textvision.bench.experiments.runs import (
    BenchSettings,
    RunSpec,
    add_common_arguments,
    base_max_steps,
    config_hash,
    count_parameters,
    derive_config,
    merge_configs,
    pct,
    settings_from_args,
    time_encoder,
)

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "bench" / "smoke.yaml"
ABLATION_CONFIGS = REPO / "configs" / "ablation"

ENC = ("model", "vlm", "init_args", "encoder", "init_args")


def _encoder(config):
    node = config
    for key in ENC:
        node = node[key]
    return node


@pytest.fixture
def base():
    return yaml.safe_load(SMOKE.read_text())


def test_run_spec_validates_the_budget():
    with pytest.raises(ValueError, match="exactly one"):
        RunSpec("gated_xattn", "text")
    with pytest.raises(ValueError, match="exactly one"):
        RunSpec("gated_xattn", "text", keep_tokens=4, keep_ratio=0.5)
    with pytest.raises(ValueError, match="keep_ratio"):
        RunSpec("none", "cls_attention", keep_ratio=1.5)
    with pytest.raises(ValueError, match="keep_tokens"):
        RunSpec("none", "cls_attention", keep_tokens=0)
    spec = RunSpec("none", "token_norm", keep_ratio=0.25)
    assert spec.slug == "none-token_norm-r0.25"
    assert spec.name == "none + token_norm"
    assert spec.encoder_overrides() == {
        "fusion": "none",
        "scorer": "token_norm",
        "keep_tokens": None,
        "keep_ratio": 0.25,
    }
    # keep ratio 1.0 is the unpruned encoder, not a pruning step that keeps everything
    assert RunSpec("none", "cls_attention", keep_ratio=1.0).encoder_overrides()["prune_at"] == []


def test_derive_config_changes_only_what_the_experiment_varies(base, tmp_path):
    settings = BenchSettings(base_config=SMOKE, steps=7, batch_size=3, seed=5, test_size=10)
    spec = RunSpec("film", "cls_attention", keep_tokens=3)
    derived = derive_config(base, spec, settings, run_dir=tmp_path / "run")
    enc, base_enc = _encoder(derived), _encoder(base)
    assert (enc["fusion"], enc["scorer"], enc["keep_tokens"], enc["keep_ratio"]) == (
        "film",
        "cls_attention",
        3,
        None,
    )
    assert enc["backbone"] == base_enc["backbone"] and enc["prune_at"] == base_enc["prune_at"]
    assert (
        derived["model"]["vlm"]["init_args"]["language_model"]
        == base["model"]["vlm"]["init_args"]["language_model"]
    )
    assert derived["model"]["lr"] == base["model"]["lr"]
    trainer = derived["trainer"]
    assert trainer["max_steps"] == 7 and trainer["limit_val_batches"] == 0
    assert trainer["default_root_dir"] == str(tmp_path / "run")
    assert trainer["logger"][0]["init_args"]["save_dir"] == str(tmp_path / "run")
    data = derived["data"]["init_args"]
    assert (data["seed"], data["test_size"], data["batch_size"]) == (5, 10, 3)
    assert data["canvas_size"] == base["data"]["init_args"]["canvas_size"]
    assert derived["seed_everything"] == 5
    assert _encoder(base)["fusion"] == "gated_xattn", "the base config must not be modified"


def test_derive_config_keeps_the_object_curriculum_fraction(base, tmp_path):
    base = dict(base)
    base["trainer"] = {**base.get("trainer", {}), "max_steps": 2200}
    base["data"] = {**base["data"], "init_args": {**base["data"]["init_args"], "objects_warmup_steps": 1300}}
    spec = RunSpec("none", "cls_attention", keep_tokens=3)
    derived = derive_config(base, spec, BenchSettings(base_config=SMOKE, steps=700), run_dir=tmp_path)
    assert derived["data"]["init_args"]["objects_warmup_steps"] == round(1300 * 700 / 2200)  # 414
    same = derive_config(base, spec, BenchSettings(base_config=SMOKE, steps=2200), run_dir=tmp_path)
    assert same["data"]["init_args"]["objects_warmup_steps"] == 1300
    tiny = derive_config(base, spec, BenchSettings(base_config=SMOKE, steps=1), run_dir=tmp_path)
    assert tiny["data"]["init_args"]["objects_warmup_steps"] == 1  # never 0 (0 turns it off)
    assert base["data"]["init_args"]["objects_warmup_steps"] == 1300, "the base must not change"


def test_derive_config_errors_name_the_problem(base, tmp_path):
    settings = BenchSettings(base_config=SMOKE)
    broken = copy.deepcopy(base)
    del broken["model"]["vlm"]["init_args"]["encoder"]
    with pytest.raises(KeyError, match=r"model\.vlm\.init_args\.encoder"):
        derive_config(broken, RunSpec("none", "cls_attention", keep_tokens=2), settings, run_dir=tmp_path)
    missing = RunSpec("none", "cls_attention", keep_tokens=2, overlay=str(tmp_path / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        derive_config(base, missing, settings, run_dir=tmp_path)
    unpruned = copy.deepcopy(base)
    _encoder(unpruned)["prune_at"] = []
    with pytest.raises(ValueError, match="prune_at"):
        derive_config(unpruned, RunSpec("gated_xattn", "text", keep_tokens=2), settings, run_dir=tmp_path)


def test_overlay_is_merged_before_the_spec(base, tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {"model": {"lr": 0.5, "vlm": {"init_args": {"encoder": {"init_args": {"fusion": "mutual"}}}}}}
        )
    )
    spec = RunSpec("gated_xattn", "text", keep_tokens=2, overlay=str(overlay))
    derived = derive_config(base, spec, BenchSettings(base_config=SMOKE), run_dir=tmp_path)
    assert derived["model"]["lr"] == 0.5  # from the overlay
    assert _encoder(derived)["fusion"] == "gated_xattn"  # the spec wins
    assert _encoder(derived)["backbone"] == _encoder(base)["backbone"]


def test_merge_configs_merges_mappings_and_replaces_the_rest():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 3}
    overlay = {"a": {"c": [9], "e": {"f": 1}}, "d": None}
    merged = merge_configs(base, overlay)
    assert merged == {"a": {"b": 1, "c": [9], "e": {"f": 1}}, "d": None}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 3}
    merged["a"]["e"]["f"] = 2
    assert overlay["a"]["e"]["f"] == 1, "the overlay must be copied, not aliased"


def test_config_hash_ignores_the_run_folder_but_not_the_settings(base, tmp_path):
    spec = RunSpec("none", "cls_attention", keep_tokens=2)
    a = derive_config(base, spec, BenchSettings(base_config=SMOKE, steps=3), run_dir=tmp_path / "a")
    b = derive_config(base, spec, BenchSettings(base_config=SMOKE, steps=3), run_dir=tmp_path / "b")
    c = derive_config(base, spec, BenchSettings(base_config=SMOKE, steps=4), run_dir=tmp_path / "a")
    d = derive_config(
        base,
        RunSpec("none", "cls_attention", keep_tokens=3),
        BenchSettings(base_config=SMOKE, steps=3),
        run_dir=tmp_path / "a",
    )
    assert config_hash(a) == config_hash(b)
    assert len({config_hash(a), config_hash(c), config_hash(d)}) == 3


def test_the_ablation_overlays_only_set_what_the_runner_also_sets(base, tmp_path):
    # The budget sweep and the ablation share cached runs only if an overlay changes nothing but
    # the fusion, the scorer and the run folder; a new key in an overlay would silently split them.
    for path in sorted(Path(ABLATION_CONFIGS).glob("*.yaml")):
        overlay = yaml.safe_load(path.read_text())
        # an overlay that leaves the scorer alone runs with the base config's
        scorer = _encoder(overlay).get("scorer", _encoder(base)["scorer"])
        spec = RunSpec(_encoder(overlay)["fusion"], scorer, keep_tokens=2, overlay=str(path))
        plain = RunSpec(spec.fusion, spec.scorer, keep_tokens=2)
        settings = BenchSettings(base_config=SMOKE)
        with_overlay = derive_config(base, spec, settings, run_dir=tmp_path)
        without = derive_config(base, plain, settings, run_dir=tmp_path)
        assert config_hash(with_overlay) == config_hash(without), path.name


def test_count_parameters_counts_tied_weights_once_and_splits_frozen():
    model = nn.Sequential(nn.Embedding(11, 5), nn.Linear(5, 11, bias=False), nn.Linear(5, 3))
    model[1].weight = model[0].weight  # tied, as the LM's embedding and head
    model[2].requires_grad_(False)
    counts = count_parameters(model, {"emb": [model[0].weight]})
    assert counts["total"] == 11 * 5 + 5 * 3 + 3
    assert counts["trainable"] == 11 * 5
    assert counts["frozen"] == 5 * 3 + 3
    assert counts["trainable_by_group"] == {"emb": 55}


class _StubEncoder(nn.Module):
    """Records how it is called; the vision side must get precomputed text features."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.text_calls = 0

    def encode_text(self, instructions):
        self.text_calls += 1
        return SimpleNamespace(n=len(instructions))

    def forward(self, images, instructions=None, *, text_features=None):
        assert instructions is None and text_features.n == images.shape[0]
        assert not self.training
        self.calls += 1
        return images.sum()


def test_time_encoder_reports_per_image_times_with_cached_text():
    encoder = _StubEncoder().train()
    images = torch.rand(3, 3, 8, 8)
    out = time_encoder(encoder, images, ["a", "b", "c"], repeats=4, warmup=1)
    assert encoder.calls == 5 and encoder.text_calls == 1
    assert encoder.training, "the previous mode is restored"
    assert out["batch"] == 3 and out["repeats"] == 4
    assert 0 < out["ms_per_image_min"] <= out["ms_per_image_median"]
    with pytest.raises(ValueError, match="repeats"):
        time_encoder(encoder, images, ["a", "b", "c"], repeats=0)


def test_pct_formats_fractions_and_missing_values():
    assert pct(0.1234) == "12.3%"
    assert pct(None) == "–"


class _ImageReader(nn.Module):
    """A 'VLM' whose loss reads the image (mean pixel) or ignores it."""

    def __init__(self, reads_image: bool):
        super().__init__()
        self.reads_image = reads_image

    def loss(self, images, instructions, prompts, answers):
        if not self.reads_image:
            return torch.tensor(1.0)
        target = torch.tensor([float(a) for a in answers])
        return ((images.mean(dim=(1, 2, 3)) - target) ** 2).mean()  # 0 when each image is its own


def test_image_dependence_separates_models_that_read_the_image():
    from textvision.bench.experiments.runs import image_dependence

    class Items:
        def __len__(self):
            return 6

        def __getitems__(self, indices):
            return [
                {
                    "image": torch.full((3, 4, 4), float(i)),
                    "instruction": "q",
                    "prompt": "p",
                    "answer": str(i),
                    "options": ["a", "b"],
                    "label": 0,
                    "id": str(i),
                    "pair_id": -1,
                    "category": "",
                }
                for i in indices
            ]

    blind = image_dependence(_ImageReader(False), {"set": Items()}, batch=4)["set"]
    assert blind == {"loss": 1.0, "loss_shuffled_images": 1.0, "delta": 0.0, "items": 4}
    reader = _ImageReader(True).train()
    seen = image_dependence(reader, {"set": Items()}, batch=4)["set"]
    assert reader.training, "the previous mode is restored"
    assert seen["items"] == 4 and seen["loss"] == pytest.approx(0.0)
    # rolled by one: items 0..3 see images 3, 0, 1, 2 -> squared errors 9, 1, 1, 1
    assert seen["loss_shuffled_images"] == pytest.approx(3.0) and seen["delta"] == pytest.approx(3.0)


def test_write_result_writes_json_markdown_and_plot(tmp_path, capsys):
    import json

    from textvision.bench.experiments.runs import write_result

    drawn = []
    out = write_result(
        {"a": 1},
        tmp_path / "r",
        "thing",
        title="A title",
        markdown="| x |",
        plot=lambda r, p: drawn.append((r, p)),
    )
    assert json.loads((out / "thing.json").read_text()) == {"a": 1}
    assert (out / "thing.md").read_text() == "# A title\n\n| x |\n"
    assert drawn == [({"a": 1}, out / "thing.png")]
    assert "| x |" in capsys.readouterr().out


def test_steps_default_to_the_base_configs_max_steps(tmp_path):
    import argparse

    demo = REPO / "configs" / "demo.yaml"
    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    settings = settings_from_args(parser.parse_args(["--base-config", str(demo)]))
    assert settings.steps == yaml.safe_load(demo.read_text())["trainer"]["max_steps"] == base_max_steps(demo)
    assert settings_from_args(parser.parse_args(["--base-config", str(demo), "--steps", "5"])).steps == 5
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer: {max_steps: -1}\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: trainer\.max_steps must be a positive integer"):
        base_max_steps(broken)
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        base_max_steps(tmp_path / "missing.yaml")
