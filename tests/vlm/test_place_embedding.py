"""The VLM's place embedding: each visual token carries where in the grid it came from."""

from __future__ import annotations

import pytest
import torch

from textvision.encoder import TextAwareEncoder
from textvision.pruning import TextSimilarityScorer
from textvision.vision import TimmViT
from textvision.vlm.language_model import LanguageModel
from textvision.vlm.model import TextAwareVLM
from textvision.vlm.place import PlaceEmbedding, place_ids

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
    assert any(p is vlm.place.patch.weight for p in vlm.parameter_groups()["projector"])
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


def test_row_col_places_factor_into_a_row_and_a_column_vector():
    torch.manual_seed(0)
    place = PlaceEmbedding(grid=(3, 4), width=5, layout="row_col")
    assert place.num_places == 13
    ids = torch.arange(13).view(1, 13)
    out = place(ids)
    assert out.shape == (1, 13, 5)
    # patch n sits at row n // 4, column n % 4; index 0 of both tables is the prefix tokens'
    for n in range(12):
        expected = place.row.weight[1 + n // 4] + place.col.weight[1 + n % 4]
        torch.testing.assert_close(out[0, 1 + n], expected)
    torch.testing.assert_close(out[0, 0], place.row.weight[0] + place.col.weight[0])
    # two patches of one row differ only by their columns
    torch.testing.assert_close(out[0, 1] - out[0, 2], place.col.weight[1] - place.col.weight[2])
    out.square().sum().backward()
    assert place.row.weight.grad.abs().sum(1).gt(0).all() and place.col.weight.grad.abs().sum(1).gt(0).all()


def test_patch_places_are_one_vector_per_patch():
    place = PlaceEmbedding(grid=(2, 2), width=3, layout="patch")
    ids = torch.tensor([[0, 1, 4]])
    torch.testing.assert_close(place(ids)[0], place.patch.weight[[0, 1, 4]])


def test_bad_places_and_layouts_are_refused():
    place = PlaceEmbedding(grid=(2, 2), width=3, layout="row_col")
    with pytest.raises(ValueError, match=r"place ids must lie in \[0, 5\)"):
        place(torch.tensor([[0, 5]]))
    with pytest.raises(ValueError, match="place ids"):
        place(torch.tensor([[-1]]))
    with pytest.raises(TypeError, match="long"):
        place(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="layout"):
        PlaceEmbedding(grid=(2, 2), width=3, layout="rope")
    with pytest.raises(ValueError, match="width"):
        PlaceEmbedding(grid=(2, 2), width=0)


def test_the_vlm_builds_the_row_col_layout_and_trains_it_with_the_projector():
    torch.manual_seed(0)
    backbone = TimmViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    encoder = TextAwareEncoder(backbone=backbone, text_dim=12, fusion="gated_xattn")
    lm = LanguageModel(config=LLAMA, model_type="llama", tokenizer=TOKENIZER)
    vlm = TextAwareVLM(encoder=encoder, language_model=lm, place_width=6, place_layout="row_col")
    assert vlm.place.layout == "row_col" and vlm.place.grid == (4, 4)
    projector_params = {id(p) for p in vlm.parameter_groups()["projector"]}
    assert {id(vlm.place.row.weight), id(vlm.place.col.weight)} <= projector_params
    out = _encoded(vlm, torch.rand(1, 3, 32, 32))
    places = vlm.token_places(out, out.tokens.shape[:2])
    assert vlm.place(places).shape == (1, 17, 6)


def test_place_ids_mark_prefix_kept_patches_and_trailing_tokens():
    kept = torch.tensor([[5, 0, 63], [1, 2, 3]])
    places = place_ids(kept, num_prefix_tokens=1, num_patches=64, batch=2, length=5)
    # CLS 0, kept patch n -> 1 + n, a trailing (merged) token 0
    assert places.tolist() == [[0, 6, 1, 64, 0], [0, 2, 3, 4, 0]]
    assert place_ids(None, num_prefix_tokens=2, num_patches=3, batch=1).tolist() == [[0, 0, 1, 2, 3]]
    with pytest.raises(ValueError, match="cannot hold"):
        place_ids(kept, num_prefix_tokens=1, num_patches=64, batch=2, length=3)
