"""``textvision.bench.experiments.runs``: run specs, configs merged by the CLI, run identity,
counting, timing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from textvision.bench.experiments.runs import (
    ENCODER,
    BenchSettings,
    RunSpec,
    add_common_arguments,
    base_max_steps,
    component_class,
    component_name,
    config_hash,
    count_parameters,
    describe_encoder,
    pct,
    run_arguments,
    settings_from_args,
    time_encoder,
)
from textvision.bench.experiments.variants import variant_spec
from textvision.fusion import FUSIONS
from textvision.pruning import SCORERS
from textvision.train.cli import parse_config

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "bench" / "smoke.yaml"
ABLATION_CONFIGS = REPO / "configs" / "ablation"
#: a registered scorer without settings (read from the registry, not named)
PLAIN_SCORER = next(n for n, c in SCORERS.items() if not c.attends_to_text)


def _merged(spec: RunSpec, settings: BenchSettings):
    return parse_config(run_arguments(spec, settings))


def test_run_spec_validates_the_budget():
    with pytest.raises(ValueError, match="exactly one"):
        RunSpec()
    with pytest.raises(ValueError, match="exactly one"):
        RunSpec(keep_tokens=4, keep_ratio=0.5)
    with pytest.raises(ValueError, match="keep_ratio"):
        RunSpec(keep_ratio=1.5)
    with pytest.raises(ValueError, match="keep_tokens"):
        RunSpec(keep_tokens=0)
    spec = RunSpec("configs/ablation/x.yaml", keep_ratio=0.25, scorer=PLAIN_SCORER)
    assert (spec.variant, spec.budget, spec.name) == ("x", "r0.25", f"x, {PLAIN_SCORER} scorer")
    assert RunSpec(keep_tokens=3).name == "base" and RunSpec(keep_tokens=3, label="L").name == "L"


def test_run_arguments_set_only_what_the_experiment_varies(tmp_path):
    settings = BenchSettings(
        base_config=SMOKE, steps=7, batch_size=3, seed=5, test_size=10, work_dir=tmp_path
    )
    base, _ = parse_config(["-c", str(SMOKE)])
    derived, _ = _merged(RunSpec(keep_tokens=3, scorer=PLAIN_SCORER), settings)
    assert (derived[f"{ENCODER}.keep_tokens"], derived[f"{ENCODER}.keep_ratio"]) == (3, None)
    assert derived[f"{ENCODER}.scorer"] == PLAIN_SCORER
    for key in (f"{ENCODER}.backbone", f"{ENCODER}.prune_at", f"{ENCODER}.fusion", "model.lr"):
        assert derived[key] == base[key], key
    assert derived["model.vlm.init_args.language_model"] == base["model.vlm.init_args.language_model"]
    assert derived["trainer.max_steps"] == 7 and derived["trainer.limit_val_batches"] == 0
    assert [c.class_path for c in derived["trainer.callbacks"]] == [
        "textvision.bench.experiments.runs.StepTimer"
    ]
    assert (derived["data.init_args.seed"], derived["data.init_args.test_size"]) == (5, 10)
    assert derived["data.init_args.batch_size"] == 3
    assert derived["data.init_args.canvas_size"] == base["data.init_args.canvas_size"]
    assert derived["seed_everything"] == 5
    unpruned, _ = _merged(RunSpec(keep_ratio=1.0), settings)
    assert unpruned[f"{ENCODER}.prune_at"] == [] and unpruned[f"{ENCODER}.keep_tokens"] is None
    # an overlay is merged by the CLI before the run's settings
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {"model": {"lr": 0.5, "vlm": {"init_args": {"encoder": {"init_args": {"keep_tokens": 1}}}}}}
        )
    )
    over, _ = _merged(RunSpec(str(overlay), keep_tokens=2), settings)
    assert over["model.lr"] == 0.5 and over[f"{ENCODER}.keep_tokens"] == 2  # the run's budget wins


def test_run_arguments_keep_the_object_curriculum_fraction(tmp_path):
    long = tmp_path / "long.yaml"
    long.write_text(
        yaml.safe_dump(
            {"trainer": {"max_steps": 2200}, "data": {"init_args": {"objects_warmup_steps": 1300}}}
        )
    )
    spec = RunSpec(str(long), keep_tokens=3)

    def warmup(steps: int) -> int:
        config, _ = _merged(spec, BenchSettings(base_config=SMOKE, steps=steps, work_dir=tmp_path))
        return config["data.init_args.objects_warmup_steps"]

    assert warmup(700) == round(1300 * 700 / 2200)  # 414
    assert warmup(2200) == 1300
    assert warmup(1) == 1  # never 0 (0 turns it off)


def test_run_arguments_errors_name_the_problem(tmp_path):
    settings = BenchSettings(base_config=SMOKE, work_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        run_arguments(RunSpec(str(tmp_path / "nope.yaml"), keep_tokens=2), settings)
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        run_arguments(RunSpec(keep_tokens=2), BenchSettings(base_config=tmp_path / "missing.yaml"))
    unpruned = tmp_path / "unpruned.yaml"
    unpruned.write_text(
        yaml.safe_dump({"model": {"vlm": {"init_args": {"encoder": {"init_args": {"prune_at": []}}}}}})
    )
    with pytest.raises(ValueError, match="prune_at"):
        run_arguments(RunSpec(str(unpruned), keep_tokens=2), settings)


def test_config_hash_ignores_the_run_folder_but_not_the_settings(tmp_path):
    def digest(spec, **settings):
        return config_hash(_merged(spec, BenchSettings(base_config=SMOKE, work_dir=tmp_path, **settings))[1])

    a = digest(RunSpec(keep_tokens=2), steps=3)
    assert a == digest(RunSpec(keep_tokens=2, label="another name"), steps=3)
    assert len({a, digest(RunSpec(keep_tokens=2), steps=4), digest(RunSpec(keep_tokens=3), steps=3)}) == 3


def test_every_ablation_overlay_merges_over_the_smoke_config(tmp_path):
    settings = BenchSettings(base_config=SMOKE, work_dir=tmp_path)
    for path in sorted(ABLATION_CONFIGS.glob("*.yaml")):
        spec = variant_spec(path.stem, keep_tokens=2, folder=ABLATION_CONFIGS)
        config, _ = _merged(spec, settings)
        expected = yaml.safe_load(path.read_text())["model"]["vlm"]["init_args"]["encoder"]["init_args"]
        encoder = describe_encoder(config)
        assert encoder["fusion"] == expected["fusion"] and encoder["pruned"], path.name
        # the variant's own run folder is replaced by the run's
        assert config["trainer.default_root_dir"] == str(tmp_path)


def test_component_names_read_short_names_and_class_paths():
    name, cls = next(iter(FUSIONS.items()))
    path = f"{cls.__module__}.{cls.__qualname__}"
    assert component_class(name, FUSIONS) is cls
    assert component_name({"class_path": path, "init_args": {}}, FUSIONS) == name
    # a user's class (here: a subclass outside the registry) is named by its class path
    assert component_name({"class_path": "torch.nn.Identity"}, {}) == "torch.nn.modules.linear.Identity"
    with pytest.raises(KeyError):
        component_class("not-registered", FUSIONS)


def test_describe_encoder_reads_class_path_values(tmp_path):
    fusion = next(c for c in FUSIONS.values() if c.attends_to_text)
    scorer = SCORERS[PLAIN_SCORER]
    overlay = tmp_path / "classes.yaml"
    encoder = {"fusion": {"class_path": f"{fusion.__module__}.{fusion.__qualname__}"}}
    encoder["scorer"] = {"class_path": f"{scorer.__module__}.{scorer.__qualname__}"}
    overlay.write_text(yaml.safe_dump({"model": {"vlm": {"init_args": {"encoder": {"init_args": encoder}}}}}))
    config, _ = parse_config(["-c", str(SMOKE), "-c", str(overlay)])
    described = describe_encoder(config)
    assert described["scorer"] == PLAIN_SCORER and not described["scorer_attends_to_text"]
    assert FUSIONS[described["fusion"]] is fusion and described["fusion_attends_to_text"]


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

    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    settings = settings_from_args(parser.parse_args(["--base-config", str(SMOKE)]))
    assert (
        settings.steps == yaml.safe_load(SMOKE.read_text())["trainer"]["max_steps"] == base_max_steps(SMOKE)
    )
    assert settings_from_args(parser.parse_args(["--base-config", str(SMOKE), "--steps", "5"])).steps == 5
    broken = tmp_path / "broken.yaml"
    broken.write_text(SMOKE.read_text().replace("max_steps: 2", "max_steps: -1"))
    with pytest.raises(ValueError, match=r"broken\.yaml: trainer\.max_steps must be a positive integer"):
        base_max_steps(broken)
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        base_max_steps(tmp_path / "missing.yaml")
