"""The VLM's place embedding: each visual token carries where in the grid it came from."""

from __future__ import annotations

import pytest
import torch

from textvision.encoder import TextAwareEncoder
from textvision.pruning import TextSimilarityScorer
from textvision.vision import TimmViT
from textvision.vlm.language_model import LanguageModel
from textvision.vlm.model import TextAwareVLM

from .test_language_model import LLAMA, TOKENIZER


def _vlm(place_width: int, **encoder_args) -> TextAwareVLM:
    torch.manual_seed(0)
    backbone = TimmViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    encoder = TextAwareEncoder(backbone=backbone, text_dim=12, fusion="gated_xattn", **encoder_args)
    lm = LanguageModel(config=LLAMA, model_type="llama", tokenizer=TOKENIZER)
    return TextAwareVLM(encoder=encoder, language_model=lm, place_width=place_width)


def _encoded(vlm, images):
    hidden = torch.randn(images.shape[0], 3, 12)
    mask = torch.ones(images.shape[0], 3, dtype=torch.bool)
    return vlm.encoder(images, text_features=(hidden, mask))


def test_places_follow_the_kept_patches_and_reach_the_projector():
    vlm = _vlm(
        8,
        prune_at=[1],
        keep_tokens=3,
        scorer="text_similarity",
        similarity=TextSimilarityScorer(vision_width=32, text_width=12, dim=8),
        keep_order="score",
    )
    assert vlm.projector.in_dim == 32 + 8
    assert any(p is vlm.place.weight for p in vlm.parameter_groups()["projector"])
    images = torch.rand(2, 3, 32, 32)
    out = _encoded(vlm, images)
    places = vlm.token_places(out, out.tokens.shape[:2])
    assert places[:, 0].tolist() == [0, 0]  # CLS
    assert torch.equal(places[:, 1:], out.kept_indices + 1)  # score order, grid positions kept
    # a different place gives the LM a different token
    tokens = torch.cat([out.tokens, vlm.place(places)], dim=-1)
    shuffled = torch.cat([out.tokens, vlm.place(places.flip(1))], dim=-1)
    assert not torch.allclose(vlm.projector(tokens), vlm.projector(shuffled))


def test_places_without_pruning_are_the_whole_grid_and_zero_width_is_off():
    vlm = _vlm(4)
    out = _encoded(vlm, torch.rand(1, 3, 32, 32))
    assert vlm.token_places(out, out.tokens.shape[:2]).tolist() == [[0, *range(1, 17)]]
    off = _vlm(0)
    assert off.place is None and off.projector.in_dim == 32
    with pytest.raises(ValueError, match="place_width"):
        _vlm(-1)
