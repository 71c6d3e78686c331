"""``QuestionReader``: the small question-aware answerer every encoder feeds in the encoder-level
experiment (``python -m textvision.bench.experiments.encoder_sweep``).

The research claim is about the encoder: does the question have to enter the ViT (fusion in every
block) for the few visual tokens that survive pruning to hold the answer? A language model
mixes that with its own ability to bind question words to visual tokens (a 2-layer LM from
scratch barely does), so the experiment replaces it with one reader, identical for every
encoder: the question's sentence embedding (the frozen text encoder's mean-pooled tokens) is the
query of one multi-head cross-attention over the visual tokens the encoder hands over (CLS and the
kept patches), and an MLP over ``[attended ; query]`` scores the answer vocabulary; each item's
options are read off it. A text-agnostic encoder with every patch kept can therefore still ground
the question — in the reader — which is what makes it a fair baseline (a Q-Former-like single
query, Li et al., "BLIP-2", 2023).

The reader knows where each token came from, as an LM knows the order of its visual tokens: a
learned embedding of the token's place (CLS, or its patch in the original grid, from the
encoder's ``kept_indices``; the VLM's :class:`~textvision.vlm.place.PlaceEmbedding` and
:func:`~textvision.vlm.place.place_ids`) is concatenated to its normalised features — beside them, not added,
so place and content stay apart and the place is as loud as the content from step 0 — so "where
is the triangle?" and "the red object on the left" can be answered from whichever patches survive.

The reader's attention over the tokens is returned, so the same grounding loss the text-guided
selection gets (cross-entropy at the queried object's patch) can be given to the reader of every
encoder alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from textvision.vlm.place import PlaceEmbedding

__all__ = ["QuestionReader", "ReaderOutput"]


class ReaderOutput(NamedTuple):
    """``logits (B, O)`` over each item's options; ``attention (B, M)`` over the visual tokens
    (mean over heads, sums to 1)."""

    logits: Tensor
    attention: Tensor


class QuestionReader(nn.Module):
    """One cross-attention from the question over the visual tokens, then an answer MLP.

    Args:
        visual_width: visual token width ``Dv``.
        text_width: sentence embedding width ``Dt``.
        vocabulary: every answer string; options are scored by their index in it.
        grid: the encoder's patch grid ``(H, W)`` (for the place embedding).
        place_width: width of the place embedding.
        dim: attention width.
        num_heads: attention heads.
        hidden: width of the answer MLP.
    """

    def __init__(
        self,
        *,
        visual_width: int,
        text_width: int,
        vocabulary: Sequence[str],
        grid: tuple[int, int],
        place_width: int = 32,
        dim: int = 128,
        num_heads: int = 4,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by {num_heads} heads")
        self.index = {word: i for i, word in enumerate(dict.fromkeys(vocabulary))}
        self.num_heads = num_heads
        # place 0 = a prefix token (CLS), 1 + n = patch n of the grid; unit-variance like the
        # normalised features it sits beside
        self.place = PlaceEmbedding(grid=grid, width=place_width, layout="patch")
        self.norm_tokens = nn.LayerNorm(visual_width)
        self.to_q = nn.Linear(text_width, dim)
        self.to_k = nn.Linear(visual_width + place_width, dim)
        self.to_v = nn.Linear(visual_width + place_width, dim)
        self.head = nn.Sequential(
            nn.LayerNorm(2 * dim), nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, len(self.index))
        )

    def option_ids(self, options: Sequence[Sequence[str]]) -> Tensor:
        """``(B, O)`` vocabulary indices of each item's options (all items have ``O`` options)."""
        unknown = sorted({o for row in options for o in row if o not in self.index})
        if unknown:
            raise KeyError(f"options outside the reader's vocabulary: {unknown}")
        lengths = {len(row) for row in options}
        if len(lengths) != 1:
            raise ValueError(f"items of one batch need the same number of options, got {sorted(lengths)}")
        return torch.tensor([[self.index[o] for o in row] for row in options])

    def forward(
        self, tokens: Tensor, sentence: Tensor, options: Sequence[Sequence[str]], places: Tensor
    ) -> ReaderOutput:
        """``tokens (B, M, Dv)``, ``sentence (B, Dt)``, ``options`` (B lists of strings), ``places
        (B, M)`` long (:func:`~textvision.vlm.place.place_ids`)."""
        if places.shape != tokens.shape[:2]:
            raise ValueError(f"places {tuple(places.shape)} do not match tokens {tuple(tokens.shape[:2])}")
        keys = torch.cat([self.norm_tokens(tokens), self.place(places.to(tokens.device))], dim=-1)
        q = rearrange(self.to_q(sentence.to(keys.dtype)), "b (h d) -> b h 1 d", h=self.num_heads)
        k = rearrange(self.to_k(keys), "b m (h d) -> b h m d", h=self.num_heads)
        v = rearrange(self.to_v(keys), "b m (h d) -> b h m d", h=self.num_heads)
        weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)  # (B, H, 1, M)
        attended = rearrange(weights @ v, "b h 1 d -> b (h d)")
        query = rearrange(q, "b h 1 d -> b (h d)")
        logits = self.head(torch.cat([attended, query], dim=-1))
        ids = self.option_ids(options).to(logits.device)
        return ReaderOutput(logits.gather(1, ids), weights.mean(dim=1)[:, 0])
