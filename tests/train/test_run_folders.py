"""Run folders and checkpoints through the real CLI, with the real text-aware encoder (tiny sizes).

* each fresh ``fit`` gets its own ``<default_root_dir>/version_N`` (loggers, checkpoints), so runs
  never write into each other and ``last.ckpt`` is never ``last-v1.ckpt``; the root follows
  ``--trainer.default_root_dir``;
* ``--ckpt_path last`` names the file it loads and refuses one trained with another config;
* ``test --ckpt_path X``: the config given decides the model (a test-time pruning budget is
  honoured), the checkpoint gives the weights; an architecture change is refused, naming it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from textvision.fusion import FUSIONS
from textvision.pruning import SCORERS
from textvision.train.cli import CheckpointConfigError, cli_main, parse_config

ENCODER = "model.vlm.init_args.encoder.init_args"
# Variants and scorers by what their classes declare, from the registries (none named here): the
# trained model prunes by its fusion kernel's relevance; OTHER_FUSION is a second architecture.
FUSION, OTHER_FUSION = sorted(n for n, c in FUSIONS.items() if c.attends_to_text)[:2]
RELEVANCE_SCORER = next(n for n, c in SCORERS.items() if c.reads_fusion_relevance)
PLAIN_SCORER = next(c for c in SCORERS.values() if not c.attends_to_text)


def config(root: Path, **encoder_overrides) -> dict:
    encoder = {
        "backbone": {
            "class_path": "textvision.vision.demo_vit",
            "init_args": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2},
        },
        "text_encoder": {
            "class_path": "textvision.text.TextEncoder",
            "init_args": {"model_name": "all-MiniLM-L6-v2", "max_length": 16},
        },
        "fusion": FUSION,
        "prune_at": [0],
        "keep_tokens": 8,
        "scorer": RELEVANCE_SCORER,
        "freeze_backbone": False,
        **encoder_overrides,
    }
    return {
        "seed_everything": 1,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 2,
            "max_epochs": -1,
            "val_check_interval": 2,
            "check_val_every_n_epoch": None,
            "limit_val_batches": 1,
            "limit_test_batches": 1,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(root),
            "logger": [
                {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": "{run_dir}", "name": "csv"},
                }
            ],
            "callbacks": [
                {
                    "class_path": "textvision.train.checkpointing.ResumableCheckpoint",
                    "init_args": {"save_top_k": 1, "monitor": "val/acc", "mode": "max"},
                }
            ],
        },
        "model": {
            "vlm": {
                "class_path": "textvision.vlm.model.TextAwareVLM",
                "init_args": {
                    "encoder": {"class_path": "textvision.encoder.TextAwareEncoder", "init_args": encoder},
                    "language_model": {
                        "class_path": "textvision.vlm.language_model.LanguageModel",
                        "init_args": {
                            "model_type": "llama",
                            "tokenizer": "all-MiniLM-L6-v2",
                            "config": {
                                "hidden_size": 32,
                                "intermediate_size": 64,
                                "num_hidden_layers": 1,
                                "num_attention_heads": 2,
                                "num_key_value_heads": 2,
                                "max_position_embeddings": 128,
                                "tie_word_embeddings": True,
                            },
                        },
                    },
                },
            },
            "lr": 1e-3,
        },
        "data": {
            "class_path": "textvision.train.data_modules.SyntheticMixDataModule",
            "init_args": {
                "batch_size": 4,
                "eval_batch_size": 16,
                "val_size": 16,
                "test_size": 16,
                "canvas_size": 16,
                "patch_size": 4,
                "glyph_size": 4,
                "num_objects": 4,
                "magnifier_categories": ["colour"],
                "pair_categories": ["colour"],
            },
        },
    }


def write(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two fresh fits of one config (a later test adds one of another fusion in the same root)."""
    base = tmp_path_factory.mktemp("runs")
    root = base / "experiment"
    path = write(base / "trained.yaml", config(root))
    first = cli_main(["fit", "-c", str(path)])
    second = cli_main(["fit", "-c", str(path)])
    return {"base": base, "root": root, "path": path, "first": first, "second": second}


def test_each_fit_gets_its_own_run_folder(trained):
    root = trained["root"]
    assert [p.name for p in sorted(root.iterdir()) if p.is_dir()] == ["version_0", "version_1"]
    for run, cli in (("version_0", trained["first"]), ("version_1", trained["second"])):
        ckpts = sorted(p.name for p in (root / run / "checkpoints").glob("*.ckpt"))
        assert "last.ckpt" in ckpts and not any(n.startswith("last-v") for n in ckpts)
        assert torch.load(root / run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
        assert list((root / run / "csv").glob("version_*/metrics.csv"))
        assert Path(cli.trainer.default_root_dir) == root / run
        assert Path(cli.trainer.checkpoint_callback.dirpath) == root / run / "checkpoints"


def test_default_root_dir_on_the_command_line_moves_everything(trained, tmp_path):
    other = tmp_path / "elsewhere"
    cli_main(["fit", "-c", str(trained["path"]), "--trainer.default_root_dir", str(other)])
    assert (other / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert list((other / "version_0" / "csv").glob("version_*/metrics.csv"))


def test_ckpt_path_last_refuses_a_checkpoint_of_another_config(trained, tmp_path):
    # a run with another fusion writes into the same root: its last.ckpt is now the newest
    other = write(tmp_path / "other.yaml", config(trained["root"], fusion=OTHER_FUSION))
    cli_main(["fit", "-c", str(other)])
    newest = trained["root"] / "version_2" / "checkpoints" / "last.ckpt"
    assert newest.is_file()
    with pytest.raises(CheckpointConfigError) as error:
        cli_main(["fit", "-c", str(trained["path"]), "--ckpt_path", "last", "--trainer.max_steps", "3"])
    message = str(error.value)
    assert str(newest) in message
    assert (
        f"vlm.init_args.encoder.init_args.fusion: checkpoint {OTHER_FUSION!r}, config {FUSION!r}" in message
    )


def test_ckpt_path_last_names_the_file_it_resumes(trained, tmp_path, capsys):
    root = tmp_path / "alone"
    path = write(tmp_path / "trained.yaml", config(root))
    cli_main(["fit", "-c", str(path)])
    capsys.readouterr()
    cli = cli_main(["fit", "-c", str(path), "--ckpt_path", "last", "--trainer.max_steps", "3"])
    assert (
        f"resuming from {root / 'version_0' / 'checkpoints' / 'last.ckpt'} (step 2)"
        in capsys.readouterr().err
    )
    assert cli.trainer.global_step == 3 and Path(cli.trainer.default_root_dir) == root / "version_0"


def test_test_uses_the_given_pruning_budget_with_the_checkpoints_weights(trained, capsys):
    ckpt = trained["root"] / "version_0" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    cli = cli_main(
        ["test", "-c", str(trained["path"]), "--ckpt_path", str(ckpt), f"--{ENCODER}.keep_tokens", "2"]
    )
    encoder = cli.model.vlm.encoder
    assert encoder.num_tokens() == 1 + 2  # the budget given, not the checkpoint's 8
    err = capsys.readouterr().err
    assert "keep_tokens=2 (the checkpoint was trained with 8)" in err
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    for name, value in cli.model.state_dict().items():
        if name in saved:
            torch.testing.assert_close(value, saved[name], rtol=0, atol=0, msg=name)
    assert cli.model.eval_results["test"]["magnifier"]["n"] == 16


def test_test_takes_a_scorer_given_as_a_class_path(trained, capsys):
    # the scorer is an evaluation-time setting however it is written: a class path (with its
    # init_args) is as much the scorer as a short name
    ckpt = trained["root"] / "version_0" / "checkpoints" / "last.ckpt"
    path = f"{PLAIN_SCORER.__module__}.{PLAIN_SCORER.__qualname__}"
    capsys.readouterr()
    cli = cli_main(
        [
            "test",
            "-c",
            str(trained["path"]),
            "--ckpt_path",
            str(ckpt),
            f"--{ENCODER}.scorer",
            json.dumps({"class_path": path}),
        ]
    )
    assert type(cli.model.vlm.encoder.similarity) is PLAIN_SCORER
    assert f"scorer.class_path={path!r}" in capsys.readouterr().err
    # an architecture setting inside a class path is still refused
    with pytest.raises(CheckpointConfigError, match=r"backbone\.init_args\.depth"):
        cli_main(
            [
                "test",
                "-c",
                str(trained["path"]),
                "--ckpt_path",
                str(ckpt),
                f"--{ENCODER}.backbone.init_args.depth",
                "3",
            ]
        )


def test_test_refuses_an_architecture_change_naming_each_setting(trained):
    ckpt = trained["root"] / "version_0" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointConfigError) as error:
        cli_main(
            [
                "test",
                "-c",
                str(trained["path"]),
                "--ckpt_path",
                str(ckpt),
                f"--{ENCODER}.fusion",
                OTHER_FUSION,
                f"--{ENCODER}.backbone.init_args.depth",
                "3",
            ]
        )
    message = str(error.value)
    assert str(ckpt) in message
    assert f"encoder.init_args.fusion: checkpoint {FUSION!r}, config {OTHER_FUSION!r}" in message
    assert "backbone.init_args.depth: checkpoint 2, config 3" in message


def test_a_corrupt_checkpoint_is_named_in_one_line(trained, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointConfigError, match=f"cannot read checkpoint {bad}"):
        cli_main(["test", "-c", str(trained["path"]), "--ckpt_path", str(bad)])


def test_console_errors_are_one_line_with_exit_code_2(trained, tmp_path, monkeypatch, capsys):
    import sys

    cfg = copy.deepcopy(config(tmp_path / "x"))
    path = write(tmp_path / "c.yaml", cfg)
    monkeypatch.setattr(sys, "argv", ["textvision", "test", "-c", str(path), "--ckpt_path", "last"])
    assert cli_main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("textvision: error: --ckpt_path last: no last*.ckpt in")


def test_parse_config_merges_like_the_cli_and_builds_nothing(tmp_path):
    root = tmp_path / "never-made"
    base = write(tmp_path / "base.yaml", config(root))
    overlay = write(tmp_path / "overlay.yaml", {"model": {"lr": 0.5}, "trainer": {"max_steps": 9}})
    parsed, text = parse_config(["-c", str(base), "-c", str(overlay), "--trainer.max_steps", "7"])
    assert parsed["model.lr"] == 0.5 and parsed["trainer.max_steps"] == 7  # files in order, then flags
    assert parsed[f"{ENCODER}.fusion"] == FUSION
    assert not root.exists(), "no run folder is made for a config that is only parsed"
    # the YAML is the whole merged config, which the CLI reads back to the same config
    again, text_again = parse_config(["-c", text])
    assert text_again == text and again["model.lr"] == 0.5
