"""``PlaceEmbedding``: where in the patch grid each visual token came from, for the LM.

Pruning leaves the LM a few tokens whose order no longer says where they were, so the VLM
concatenates an embedding of each token's place to it before the projector (the role 2-D
position ids play for visual tokens in Qwen2-VL's M-RoPE, Wang et al., arXiv 2409.12191).

Two layouts:

* ``"patch"``: one learned vector per patch of the grid (``1 + H·W`` rows, row 0 for prefix
  tokens). Each vector learns only from the items whose kept token sits on that patch, so with
  64 patches and 8 kept tokens a place is seen rarely and learns slowly.
* ``"row_col"``: a learned row vector plus a learned column vector (``1 + H`` and ``1 + W``
  rows; index 0 of both for prefix tokens), M-RoPE's factorisation into height and width.
  Every token trains its row and its column, 8× more often than a patch vector on an 8 × 8
  grid, and "left half" or "top" is a function of one factor. With the demo's projector and LM
  trained alone on cached encoder outputs, position questions reached 57 % (magnifier) / 85 %
  (mmvp-pairs) after 2,000 steps with ``row_col`` against 22 % / 49 % with ``patch`` (chance
  25 / 50 %, one run each); in the full demo it did not help on seed 0 (47.9 % magnifier against
  52.5 %), so the demo keeps ``patch`` (``results/superseded/demo-2200steps/diagnosis/cached_lm/``).

:class:`PlaceWords` writes the place as text instead: each kept patch's token follows the LM's
word embeddings of its quadrant ("top left", ...), as Shikra (Chen et al., arXiv 2306.15195) writes
coordinates as plain text. On the demo's cached tokens with the option-restricted loss, position
questions reached 80.5 % (magnifier) / 91.9 % (mmvp-pairs) in 500 steps with the words, against
22 % / 50 % with a learned place vector (``results/demo/diagnosis/lm_reading/``, one run each).

Place ids (:func:`place_ids`, used by the VLM and by the encoder-level experiment's
:class:`~textvision.vlm.reader.QuestionReader` alike): 0 for a prefix token, ``1 + n`` for patch
``n`` of the grid in row-major order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from textvision.data.scene import quadrant_of

__all__ = ["PLACE_LAYOUTS", "PlaceEmbedding", "PlaceWords", "place_ids"]

PLACE_LAYOUTS = ("patch", "row_col")


def place_ids(
    kept_indices: Tensor | None,
    *,
    num_prefix_tokens: int,
    num_patches: int,
    batch: int,
    length: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``(B, length)`` long place ids of an encoder's output tokens.

    The first ``num_prefix_tokens`` tokens (CLS, registers) get 0; the next ``K`` get ``1 + n`` for
    the kept patch ``n`` (``kept_indices (B, K)``, or all ``num_patches`` in order when nothing was
    pruned); tokens after them (a merged token) get 0. ``length`` defaults to prefix + ``K``.
    """
    if kept_indices is None:
        kept_indices = torch.arange(num_patches, device=device).expand(batch, -1)
    kept = kept_indices.shape[1]
    length = num_prefix_tokens + kept if length is None else length
    if length < num_prefix_tokens + kept:
        raise ValueError(f"{length} tokens cannot hold {num_prefix_tokens} prefix tokens and {kept} patches")
    places = torch.zeros(batch, length, dtype=torch.long, device=kept_indices.device)
    places[:, num_prefix_tokens : num_prefix_tokens + kept] = kept_indices.long() + 1
    return places


class PlaceEmbedding(nn.Module):
    """``places (B, M)`` long → ``(B, M, width)``.

    Args:
        grid: the backbone's patch grid ``(H, W)``.
        width: the embedding width.
        layout: ``"patch"`` (one vector per patch) or ``"row_col"`` (row vector + column vector).
    """

    def __init__(
        self, *, grid: tuple[int, int], width: int, layout: Literal["patch", "row_col"] = "patch"
    ) -> None:
        super().__init__()
        if layout not in PLACE_LAYOUTS:
            raise ValueError(f"place layout must be one of {PLACE_LAYOUTS}, got {layout!r}")
        if width <= 0:
            raise ValueError(f"place width must be > 0, got {width}")
        self.grid = (int(grid[0]), int(grid[1]))
        self.width = int(width)
        self.layout = layout
        self.num_places = 1 + self.grid[0] * self.grid[1]
        if layout == "patch":
            self.patch = nn.Embedding(self.num_places, self.width)
        else:
            self.row = nn.Embedding(1 + self.grid[0], self.width)
            self.col = nn.Embedding(1 + self.grid[1], self.width)

    def forward(self, places: Tensor) -> Tensor:
        if places.dtype != torch.long:
            raise TypeError(f"places must be long ids, got {places.dtype}")
        # one host sync per call, and only a failing call reads the range back
        if bool(((places < 0) | (places >= self.num_places)).any()):
            raise ValueError(
                f"place ids must lie in [0, {self.num_places}) for a {self.grid[0]}x{self.grid[1]} grid, "
                f"got [{int(places.min())}, {int(places.max())}]"
            )
        if self.layout == "patch":
            return self.patch(places)
        patch = (places - 1).clamp_min(0)
        prefix = places == 0
        # rows/columns shift by one so that index 0 of both is the prefix tokens' own vector
        row = torch.where(prefix, 0, patch // self.grid[1] + 1)
        col = torch.where(prefix, 0, patch % self.grid[1] + 1)
        return self.row(row) + self.col(col)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, width={self.width}, layout={self.layout!r}"


class PlaceWords(nn.Module):
    """Interleave each patch token after the word embeddings of its quadrant.

    ``visual (B, M, H)`` and ``places (B, M)`` (:func:`place_ids`: the same prefix/patch layout for
    every item) → ``(B, M + L·P, H)``: ``[prefix tokens, w(q_1), v_1, w(q_2), v_2, ...]``, where
    ``P`` tokens are patches, ``q_j`` is patch ``j``'s quadrant (:func:`~textvision.data.scene.quadrant_of`,
    index into ``word_ids``) and every quadrant's words are ``L`` tokens long.

    Args:
        grid: the backbone's patch grid ``(H, W)``, square with an even side.
        word_ids: the LM's token ids of the four quadrant phrases, in
            :data:`~textvision.data.scene.QUADRANT_WORDS` order, all of one length.
    """

    def __init__(self, *, grid: tuple[int, int], word_ids: list[list[int]]) -> None:
        super().__init__()
        if grid[0] != grid[1] or grid[0] % 2:
            raise ValueError(f"place words need a square grid with an even side, got {grid[0]}x{grid[1]}")
        if len(word_ids) != 4 or len({len(ids) for ids in word_ids}) != 1 or not word_ids[0]:
            raise ValueError(
                f"place words need four quadrant phrases of one token length, got lengths "
                f"{[len(ids) for ids in word_ids]}"
            )
        self.grid = (int(grid[0]), int(grid[1]))
        self.register_buffer("word_ids", torch.tensor(word_ids, dtype=torch.long), persistent=False)

    def forward(self, visual: Tensor, places: Tensor, *, embed: Callable[[Tensor], Tensor]) -> Tensor:
        if places.shape != visual.shape[:2]:
            raise ValueError(
                f"places {tuple(places.shape)} do not match visual tokens {tuple(visual.shape[:2])}"
            )
        is_patch = places[0] > 0
        if not bool((places > 0).eq(is_patch).all()):
            raise ValueError("place words need the same prefix/patch layout in every item (place_ids)")
        patch = (places - 1).clamp_min(0)
        quadrant = quadrant_of(patch // self.grid[1], patch % self.grid[1], self.grid[0])
        words = embed(self.word_ids[quadrant]).to(visual.dtype)  # (B, M, L, H)
        length = words.shape[2]
        full = torch.cat([words, visual.unsqueeze(2)], dim=2)  # (B, M, L + 1, H)
        # prefix tokens keep only their own slot; patch tokens keep their words too
        keep = torch.cat([is_patch[:, None].expand(-1, length), torch.ones_like(is_patch)[:, None]], dim=1)
        return full.flatten(1, 2)[:, keep.flatten()]
