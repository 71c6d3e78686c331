"""The question-aware reader of the encoder-level experiment."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from textvision.vlm.place import place_ids
from textvision.vlm.reader import QuestionReader


def _reader(**kwargs):
    torch.manual_seed(0)
    words = ["red", "blue", "green", "top left"]
    return QuestionReader(visual_width=16, text_width=8, vocabulary=words, grid=(2, 3), **kwargs)


def test_reader_scores_each_item_s_options_and_its_attention_sums_to_one():
    reader = _reader()
    tokens, sentence = torch.randn(2, 5, 16), torch.randn(2, 8)
    places = place_ids(
        torch.tensor([[0, 2, 3, 5], [1, 2, 4, 5]]), num_prefix_tokens=1, num_patches=6, batch=2
    )
    assert places.tolist() == [[0, 1, 3, 4, 6], [0, 2, 3, 5, 6]]
    assert place_ids(None, num_prefix_tokens=1, num_patches=6, batch=1).tolist() == [[0, 1, 2, 3, 4, 5, 6]]
    out = reader(tokens, sentence, [["red", "blue"], ["green", "red"]], places)
    pieces = (tokens, places)
    assert out.logits.shape == (2, 2) and out.attention.shape == (2, 5)
    assert torch.allclose(out.attention.sum(-1), torch.ones(2))
    full = reader.head(
        torch.cat(
            [
                # recompute the pooled vector by hand from the attention of each head
                _attended(reader, pieces, sentence),
                reader.to_q(sentence),
            ],
            dim=-1,
        )
    )
    assert torch.allclose(out.logits, full.gather(1, torch.tensor([[0, 1], [2, 0]])), atol=1e-5)


def _attended(reader, pieces, sentence):
    tokens, places = pieces
    keys = torch.cat([reader.norm_tokens(tokens), reader.place(places)], dim=-1)
    q, k, v = reader.to_q(sentence), reader.to_k(keys), reader.to_v(keys)
    heads, width = reader.num_heads, q.shape[-1] // reader.num_heads
    out = []
    for h in range(heads):
        part = slice(h * width, (h + 1) * width)
        weights = (torch.einsum("bd,bmd->bm", q[:, part], k[:, :, part]) / width**0.5).softmax(-1)
        out.append(torch.einsum("bm,bmd->bd", weights, v[:, :, part]))
    return torch.cat(out, dim=-1)


def test_reader_learns_to_find_and_read_the_queried_token():
    """Each token holds a key (which object) and a value (its answer); the question names a key."""
    torch.manual_seed(0)
    reader = _reader(dim=32, num_heads=2)
    keys = torch.randn(6, 8)  # the question embedding of "object i"
    answers = ["red", "blue", "green", "top left"]
    optimizer = torch.optim.Adam(reader.parameters(), lr=1e-2)
    for _ in range(200):
        order = torch.stack([torch.randperm(6) for _ in range(32)])  # tokens hold objects in random order
        values = torch.randint(4, (32, 6))
        tokens = torch.cat([keys[order], F.one_hot(values, 4).float(), torch.zeros(32, 6, 4)], dim=-1)
        asked = torch.randint(6, (32,))
        label = values.gather(1, (order == asked[:, None]).float().argmax(1, keepdim=True)).squeeze(1)
        out = reader(
            tokens, keys[asked], [answers] * 32, place_ids(None, num_prefix_tokens=0, num_patches=6, batch=32)
        )
        loss = F.cross_entropy(out.logits, label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3


def test_reader_rejects_unknown_or_ragged_options():
    reader = _reader()
    tokens, sentence = torch.randn(2, 3, 16), torch.randn(2, 8)
    places = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(KeyError, match="purple"):
        reader(tokens, sentence, [["red", "purple"], ["red", "blue"]], places)
    with pytest.raises(ValueError, match="same number of options"):
        reader(tokens, sentence, [["red", "blue", "green"], ["red", "blue"]], places)
    with pytest.raises(ValueError, match="places"):
        reader(tokens, sentence, [["red", "blue"], ["red", "blue"]], places[:, :2])
