"""``textvision demo`` end to end on a shrunken copy of configs/demo.yaml (real MiniLM, real
encoder, real synthetic data modules; a few steps), checking every artefact it promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from textvision.train.cli import cli_main
from textvision.train.demo import evaluate_with_fewer_objects, metrics_table, objects_table

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
PRETRAIN = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "demo_vit.yaml"


def tiny_pretraining(tmp_path: Path) -> Path:
    """configs/pretrain/demo_vit.yaml shrunk to a 2-block ViT of width 32 and 2 steps (same scenes)."""
    config = yaml.safe_load(PRETRAIN.read_text())
    config["trainer"].update(max_steps=2, val_check_interval=2, limit_val_batches=1)
    config["model"]["backbone"]["init_args"].update(embed_dim=32, depth=2, num_heads=2)
    config["model"]["dim"] = 32
    config["data"].update(batch_size=4, val_size=8)
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def shrunken_demo(tmp_path: Path) -> Path:
    config = yaml.safe_load(DEMO.read_text())
    trainer = config["trainer"]
    trainer.update(max_steps=3, val_check_interval=3, limit_val_batches=1, enable_progress_bar=False)
    trainer["default_root_dir"] = str(tmp_path / "run")
    for logger in trainer["logger"]:
        logger["init_args"]["save_dir"] = str(tmp_path / "run")
    trainer["callbacks"][0]["init_args"]["dirpath"] = str(tmp_path / "run" / "checkpoints")
    encoder = config["model"]["vlm"]["init_args"]["encoder"]["init_args"]
    pretraining = str(tiny_pretraining(tmp_path))
    encoder["backbone"]["init_args"]["pretraining"] = pretraining
    encoder["similarity"]["init_args"]["pretraining"] = pretraining
    encoder["prune_at"] = [1]  # the last block of the 2-block ViT
    lm = config["model"]["vlm"]["init_args"]["language_model"]["init_args"]["config"]
    lm.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    config["data"]["init_args"].update(batch_size=4, eval_batch_size=8, val_size=8, test_size=8)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_demo_writes_metrics_table_and_pictures(tmp_path):
    out = tmp_path / "results"
    metrics = cli_main(
        [
            "demo",
            "--config",
            str(shrunken_demo(tmp_path)),
            "--output_dir",
            str(out),
            "--examples",
            "1",
            "--object-counts",
            "1",
            "3",
        ]
    )
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["steps"] == metrics["steps"] == 3
    assert set(saved["test"]) == {"magnifier", "mmvp_pairs"}
    mag, pairs = saved["test"]["magnifier"], saved["test"]["mmvp_pairs"]
    assert mag["n"] == pairs["n"] == 8 and 0.0 <= mag["acc"] <= 1.0
    assert mag["chance_acc"] == saved["chance_from_data"]["magnifier"]["acc"]
    assert pairs["chance_pair_acc"] == saved["chance_from_data"]["mmvp_pairs"]["pair_acc"]
    assert saved["visual_tokens_to_lm"] == 9  # CLS + 8 kept patches
    assert saved["seed"] == 0
    # per question category of every set, and they combine to the overall accuracy
    assert set(saved["test_by_category"]["magnifier"]) <= {"colour", "shape", "position"}
    for name, result in saved["test"].items():
        categories = saved["test_by_category"][name]
        assert sum(c["n"] for c in categories.values()) == result["n"]
        overall = sum(c["acc"] * c["n"] for c in categories.values()) / result["n"]
        assert overall == pytest.approx(result["acc"])
        assert 0.0 <= saved["kept_target"][name] <= 1.0
    assert "Per question category" in (out / "metrics.md").read_text()
    assert saved["peak_rss_mb"] > 0 and saved["seconds"]["fit"] > 0
    table = (out / "metrics.md").read_text()
    assert "| magnifier | 8 |" in table and "| mmvp_pairs | 8 |" in table
    # the same model, tested again on easier held-out scenes (1 and 3 objects) + the trained 12
    by_objects = saved["test_by_objects"]
    assert list(by_objects) == ["1", "3", "12"]
    assert by_objects["12"] == saved["test"]
    assert all(r["magnifier"]["n"] == 8 and r["mmvp_pairs"]["n"] == 8 for r in by_objects.values())
    assert "| 1 |" in table and "| 3 |" in table and "| 12 |" in table
    pictures = sorted(out.glob("*.png"))
    assert [p.name for p in pictures] == ["magnifier_0.png", "mmvp_pairs_0.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    # the frozen pretrained MiniLM is rebuilt from its package, not stored
    assert not any(".text_encoder." in key for key in ckpt["state_dict"])
    assert any(".fusion." in key for key in ckpt["state_dict"])
    # ... nor is the frozen pretrained ViT (reloaded from the pretraining cache); the scorer trains
    assert not any(".backbone." in key for key in ckpt["state_dict"])
    assert any(".similarity." in key for key in ckpt["state_dict"])

    # the evaluator loads the checkpoint through `textvision eval` (load_from_checkpoint) and
    # agrees with the demo's own option scoring on the same held-out items
    best = tmp_path / "run" / "checkpoints" / "last.ckpt"
    report = cli_main(
        [
            "eval",
            "--checkpoint",
            str(best),
            "--benchmark",
            "magnifier",
            "--mode",
            "options",
            "--out",
            str(tmp_path / "eval"),
            "--synthetic-args",
            '{"size": 8}',
            "--no-progress",
        ]
    )
    assert report is not None and list((tmp_path / "eval").glob("*.json"))


def test_fewer_objects_checks_counts_and_data(tmp_path):
    from textvision.train.data_modules import LlavaDataModule, SyntheticMixDataModule

    dm = SyntheticMixDataModule(batch_size=4, val_size=4, test_size=4, num_objects=6)
    assert evaluate_with_fewer_objects(None, None, dm, []) == {}

    class RecordingTrainer:  # stands in for Trainer.test: records the data module it is given
        def __init__(self):
            self.seen = []

        def test(self, module, datamodule, verbose):
            self.seen.append(datamodule)
            module.eval_results = {"test": {"objects": datamodule.scene.num_objects}}

    class Module:
        def __init__(self):
            self.eval_results = {}

    curriculum = SyntheticMixDataModule(
        batch_size=4,
        val_size=4,
        test_size=4,
        num_objects=6,
        objects_warmup_steps=5,
        magnifier_categories=["colour"],
    )
    trainer = RecordingTrainer()
    out = evaluate_with_fewer_objects(trainer, Module(), curriculum, [3, 1, 3, 6])
    assert out == {1: {"objects": 1}, 3: {"objects": 3}}  # 6, the trained count, is not rerun
    assert len(trainer.seen) == 2
    easier = trainer.seen[0]
    assert type(easier) is SyntheticMixDataModule and easier.objects_warmup_steps == 0
    assert easier.magnifier_categories == ("colour",) and easier.sizes == curriculum.sizes
    with pytest.raises(ValueError, match=r"object counts \[0, 7\] outside 1..6"):
        evaluate_with_fewer_objects(None, None, dm, [0, 2, 7])
    with pytest.raises(TypeError, match="synthetic data module"):
        evaluate_with_fewer_objects(None, None, LlavaDataModule(str(tmp_path / "x.json"), str(tmp_path)), [1])


def test_objects_table_rows_per_count():
    rows = {
        1: {"s": {"acc": 0.9, "chance_acc": 0.5, "pair_acc": 0.8, "chance_pair_acc": 0.25}},
        12: {"s": {"acc": 0.5, "chance_acc": 0.5, "pair_acc": 0.0, "chance_pair_acc": 0.25}},
    }
    lines = objects_table(rows).splitlines()
    assert lines[0] == "| objects per image | s acc (chance) | s pair acc (chance) |"
    assert lines[2] == "| 1 | 90.0% (50.0%) | 80.0% (25.0%) |"
    assert lines[3] == "| 12 | 50.0% (50.0%) | 0.0% (25.0%) |"


def test_metrics_table_formats_missing_pairs():
    table = metrics_table({"a": {"n": 4, "acc": 0.5, "chance_acc": 0.25}})
    assert table.splitlines()[-1] == "| a | 4 | 50.0% | 25.0% | – | – | – |"
    table = metrics_table({"a": {"n": 4, "acc": 0.5, "chance_acc": 0.25, "kept_target": 0.75}})
    assert table.splitlines()[-1] == "| a | 4 | 50.0% | 25.0% | – | – | 75.0% |"
