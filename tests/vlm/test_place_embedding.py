"""The VLM's place embedding: each visual token carries where in the grid it came from."""

from __future__ import annotations

import pytest
import torch

from textvision.data.scene import QUADRANT_WORDS
from textvision.encoder import TextAwareEncoder
from textvision.pruning import TextSimilarityScorer
from textvision.vision import TimmViT
from textvision.vlm.language_model import LanguageModel
from textvision.vlm.model import TextAwareVLM
from textvision.vlm.place import PlaceEmbedding, PlaceWords, place_ids

from .test_language_model import LLAMA, TOKENIZER


def _vlm(place_width: int, place_text: bool = False, **encoder_args) -> TextAwareVLM:
    torch.manual_seed(0)
    backbone = TimmViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    encoder = TextAwareEncoder(backbone=backbone, text_dim=12, fusion="gated_xattn", **encoder_args)
    lm = LanguageModel(config=LLAMA, model_type="llama", tokenizer=TOKENIZER)
    return TextAwareVLM(encoder=encoder, language_model=lm, place_width=place_width, place_text=place_text)


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


def test_place_words_put_each_patch_after_its_quadrant_words():
    torch.manual_seed(0)
    embed = torch.nn.Embedding(10, 5)
    words = PlaceWords(grid=(4, 4), word_ids=[[1, 2], [3, 4], [5, 6], [7, 8]])
    visual = torch.randn(2, 4, 5, requires_grad=True)
    # CLS, then patches 0 (top left), 7 (row 1, col 3: top right), 13 (row 3, col 1: bottom left)
    places = torch.tensor([[0, 1, 8, 14], [0, 16, 1, 9]])
    out = words(visual, places, embed=embed)
    assert out.shape == (2, 1 + 3 * 3, 5)
    quadrants = [[0, 1, 2], [3, 0, 2]]  # patch 15: bottom right; patch 8 (row 2, col 0): bottom left
    for i in range(2):
        expected = [visual[i, 0]]
        for j, q in enumerate(quadrants[i]):
            expected += [embed.weight[2 * q + 1], embed.weight[2 * q + 2], visual[i, 1 + j]]
        assert torch.equal(out[i], torch.stack(expected))
    out.sum().backward()
    assert visual.grad is not None and embed.weight.grad[1:9].abs().sum() > 0


def test_place_words_reject_what_they_cannot_write():
    with pytest.raises(ValueError, match="square grid"):
        PlaceWords(grid=(4, 6), word_ids=[[1], [2], [3], [4]])
    with pytest.raises(ValueError, match="one token length"):
        PlaceWords(grid=(4, 4), word_ids=[[1], [2, 3], [4], [5]])
    words = PlaceWords(grid=(4, 4), word_ids=[[1], [2], [3], [4]])
    embed = torch.nn.Embedding(5, 3)
    with pytest.raises(ValueError, match="same prefix/patch layout"):
        words(torch.randn(2, 3, 3), torch.tensor([[0, 1, 2], [1, 0, 2]]), embed=embed)
    with pytest.raises(ValueError, match="do not match"):
        words(torch.randn(2, 3, 3), torch.tensor([[0, 1], [0, 2]]), embed=embed)


class _FixedText(torch.nn.Module):
    """Random (B, 3, 12) instruction features: the encoder needs some text, not a real one."""

    width = 12

    def forward(self, texts):
        return torch.randn(len(texts), 3, 12), torch.ones(len(texts), 3, dtype=torch.bool)


def test_place_text_vlm_gives_the_lm_each_kept_patch_after_its_quadrant_words():
    vlm = _vlm(
        0,
        place_text=True,
        prune_at=[1],
        keep_tokens=3,
        scorer="text_similarity",
        similarity=TextSimilarityScorer(vision_width=32, text_width=12, dim=8),
        keep_order="score",
    )
    assert vlm.place is None and vlm.projector.in_dim == 32
    vlm.encoder.text_encoder = _FixedText()
    lm = vlm.language_model
    ids = lm.word_ids(QUADRANT_WORDS)
    assert [lm.tokenizer.decode(i) for i in ids] == list(QUADRANT_WORDS)
    images = torch.rand(2, 3, 32, 32)
    visual, out = vlm.encode(images, ["what colour is the triangle?", "where is the red square?"])
    assert visual.shape == (2, 1 + 3 * 3, lm.hidden_size)
    rows, cols = out.kept_indices // 4, out.kept_indices % 4
    quadrant = 2 * (rows >= 2).long() + (cols >= 2).long()
    for i in range(2):
        for j in range(3):
            expected = lm.embed(torch.tensor(ids[int(quadrant[i, j])]))
            assert torch.equal(visual[i, 1 + 3 * j : 3 + 3 * j], expected)
    loss = vlm.loss(images, ["a", "b"], ["what colour?", "where?"], ["red", "top left"])
    assert torch.isfinite(loss)
    loss.backward()
    assert vlm.projector.net[0].weight.grad.abs().sum() > 0
    word_grad = lm.model.get_input_embeddings().weight.grad
    assert word_grad[torch.tensor(ids).flatten()].abs().sum() > 0  # the LM learns its place words
