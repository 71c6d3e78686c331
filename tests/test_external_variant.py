"""A fusion variant from outside the package, as a user adds one: a module of their own on the
Python path plus an overlay YAML naming it by ``class_path`` with its own ``init_args``; nothing in
the package changes. Through the real CLI: ``--print_config``, ``fit`` for 2 steps, ``test`` from
the checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from textvision.train.cli import cli_main
from textvision.visualize import main as visualize_main

MODULE = "tv_user_fusions"  # a name no other test uses: sys.modules keeps it for the session

USER_MODULE = (Path(__file__).parent / "assets" / "user_fusion.py").read_text()

OVERLAY = f"""
# the user's variant on top of the base config: nothing else changes
model:
  vlm:
    init_args:
      encoder:
        init_args:
          fusion:
            class_path: {MODULE}.ScaledBias
            init_args: {{alpha: 0.5}}
"""

LLAMA = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
}


def _base_config(root: Path) -> dict:
    """A seconds-sized text-aware VLM (random tiny ViT, MiniLM text encoder, 1-layer LM)."""
    encoder = {
        "backbone": {
            "class_path": "textvision.vision.demo_vit",
            "init_args": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2},
        },
        "text_encoder": {
            "class_path": "textvision.text.TextEncoder",
            "init_args": {"model_name": "all-MiniLM-L6-v2", "max_length": 16},
        },
        "freeze_backbone": True,
    }
    return {
        "seed_everything": 3,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 2,
            "max_epochs": -1,
            "limit_val_batches": 0,
            "limit_test_batches": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(root),
            "logger": False,
            "callbacks": [
                {
                    "class_path": "textvision.train.checkpointing.ResumableCheckpoint",
                    "init_args": {"save_last": True},
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
                            "config": LLAMA,
                        },
                    },
                },
            },
            "lr": 1e-2,
        },
        "data": {
            "class_path": "textvision.train.data_modules.SyntheticMixDataModule",
            "init_args": {
                "batch_size": 4,
                "eval_batch_size": 8,
                "val_size": 8,
                "test_size": 8,
                "canvas_size": 16,
                "patch_size": 4,
                "glyph_size": 4,
                "num_objects": 4,
                "magnifier_categories": ["colour"],
                "pair_categories": ["colour"],
            },
        },
    }


@pytest.fixture
def user_files(tmp_path, monkeypatch):
    """The two files a user writes: their module (on the path, as PYTHONPATH puts it) and a YAML."""
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / f"{MODULE}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "user"))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(_base_config(tmp_path / "runs")))
    overlay = tmp_path / "scaled_bias.yaml"
    overlay.write_text(OVERLAY)
    return base, overlay


def test_external_fusion_variant_prints_fits_and_tests_through_the_cli(user_files, print_config, capsys):
    base, overlay = user_files
    printed = print_config(base, overlay)
    fusion = printed["model"]["vlm"]["init_args"]["encoder"]["init_args"]["fusion"]
    assert fusion == {"class_path": f"{MODULE}.ScaledBias", "init_args": {"alpha": 0.5}}

    fit = cli_main(["fit", "-c", str(base), "-c", str(overlay)])
    assert fit.trainer.global_step == 2
    encoder = fit.model.vlm.encoder
    modules = list(encoder.fusion.values())
    assert len(modules) == encoder.backbone.depth  # one per block, sized by the encoder
    assert all(type(m).__name__ == "ScaledBias" and m.alpha == 0.5 and m.dim == 32 for m in modules)
    assert all(m.gate.abs().item() > 0 for m in modules)  # the variant trained

    last = Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    saved = checkpoint["hyper_parameters"]["vlm"]["init_args"]["encoder"]["init_args"]["fusion"]
    assert saved["class_path"] == f"{MODULE}.ScaledBias" and saved["init_args"]["alpha"] == 0.5
    gates = {k: v for k, v in checkpoint["state_dict"].items() if k.endswith("gate")}
    assert len(gates) == len(modules)

    capsys.readouterr()
    tested = cli_main(["test", "-c", str(base), "-c", str(overlay), "--ckpt_path", str(last)])
    assert f"weights from {last}" in capsys.readouterr().err
    for key, value in tested.model.vlm.state_dict().items():
        if key.endswith("gate"):
            torch.testing.assert_close(value, checkpoint["state_dict"][f"vlm.{key}"])
    metrics = tested.trainer.callback_metrics
    assert any(name.startswith("test") for name in metrics), sorted(metrics)

    image = base.parent / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(image)
    drawn = visualize_main(
        [
            "--image",
            str(image),
            "--instruction",
            "what colour is the circle?",
            "--config",
            str(base),
            "-c",  # passed on to the CLI's parser after --config: the overlay, as for fit
            str(overlay),
            "--checkpoint",
            str(last),
            "--out",
            str(base.parent / "relevance.png"),
        ]
    )
    assert Image.open(drawn).format == "PNG"
