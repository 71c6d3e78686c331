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

Place ids (:func:`place_ids`, used by the VLM and by the encoder-level experiment's
:class:`~textvision.vlm.reader.QuestionReader` alike): 0 for a prefix token, ``1 + n`` for patch
``n`` of the grid in row-major order.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["PLACE_LAYOUTS", "PlaceEmbedding", "place_ids"]

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
