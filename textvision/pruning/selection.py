"""Pure token selection and EViT-style merging for pruning inside the encoder.

Token layout the functions work on: ``x = [prefix (P) ; patches (n) ; merged (0 or 1)]`` with
``patch_index (B, n)`` the patches' positions in the ORIGINAL patch grid.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = [
    "KEEP_ORDERS",
    "PrunedTokens",
    "grounding_loss",
    "keep_count",
    "kept_target_rate",
    "prune_tokens",
    "top_k_sorted",
]


class PrunedTokens(NamedTuple):
    """``x (B, P + k [+1], D)``, ``patch_index (B, k)`` long, ``merged_count (B,)`` (merged patches)."""

    x: torch.Tensor
    patch_index: torch.Tensor
    merged_count: torch.Tensor | None


def keep_count(num_patches: int, *, keep_ratio: float | None = None, keep_tokens: int | None = None) -> int:
    """How many of ``num_patches`` patches to keep: ``keep_tokens``, or ``ceil(keep_ratio · n)`` (≥ 1)."""
    if (keep_ratio is None) == (keep_tokens is None):
        raise ValueError("give exactly one of keep_ratio and keep_tokens")
    if keep_tokens is not None:
        if not 1 <= keep_tokens <= num_patches:
            raise ValueError(
                f"keep_tokens={keep_tokens} must be in [1, {num_patches}] (patches present at this step)"
            )
        return keep_tokens
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    return max(1, min(num_patches, math.ceil(keep_ratio * num_patches - 1e-6)))


#: orders of the kept patches: their original spatial order, or best score first
KEEP_ORDERS = ("spatial", "score")


def top_k_sorted(
    scores: torch.Tensor, k: int, *, order: str = "spatial"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` positions of ``scores (B, n)``, and the rest.

    Ties break towards the lower position (stable sort), so an all-zero score row (an empty
    instruction) keeps the first ``k`` patches deterministically.
    Returns ``(kept (B, k), dropped (B, n - k))`` long positions: ``kept`` ascending
    (``order="spatial"``) or by descending score (``order="score"``), ``dropped`` ascending.
    """
    if order not in KEEP_ORDERS:
        raise ValueError(f"order must be one of {KEEP_ORDERS}, got {order!r}")
    ranked = torch.sort(scores.float(), dim=-1, descending=True, stable=True).indices
    kept = ranked[:, :k] if order == "score" else ranked[:, :k].sort(dim=-1).values
    dropped = ranked[:, k:].sort(dim=-1).values
    return kept, dropped


def _gather_tokens(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return tokens.gather(1, positions.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def prune_tokens(
    x: torch.Tensor,
    scores: torch.Tensor,
    patch_index: torch.Tensor,
    *,
    num_prefix_tokens: int,
    keep: int,
    merge: bool = False,
    merged_count: torch.Tensor | None = None,
    order: str = "spatial",
) -> PrunedTokens:
    """Keep the prefix tokens and the top-``keep`` patches by score, in original spatial order
    (``order="spatial"``) or best first (``order="score"``: the LM reads the patch the question
    is most about first, whatever its place in the grid; position stays in the tokens' features).

    With ``merge``, the dropped patches (and an earlier merged token) are fused into one token
    appended at the end, their average weighted by their scores (EViT's inattentive-token fusion,
    Liang et al. 2022); a previous merged token enters with weight ``count · mean dropped score``
    so it counts like the patches it already holds. Scores that are all zero fall back to a plain
    mean.

    Args:
        x: ``(B, P + n [+1], D)``; a trailing merged token exists iff ``merged_count`` is given.
        scores: ``(B, n)``, non-negative, higher = more relevant.
        patch_index: ``(B, n)`` long, original-grid positions of the current patches.
    """
    batch, n = scores.shape
    has_merged = merged_count is not None
    expected = num_prefix_tokens + n + int(has_merged)
    if x.shape[1] != expected:
        raise ValueError(
            f"x has {x.shape[1]} tokens, expected {expected} (prefix {num_prefix_tokens}, {n} patches)"
        )
    kept, dropped = top_k_sorted(scores, keep, order=order)
    prefix = x[:, :num_prefix_tokens]
    patches = x[:, num_prefix_tokens : num_prefix_tokens + n]
    parts = [prefix, _gather_tokens(patches, kept)]
    new_count = merged_count
    if merge and (dropped.shape[1] or has_merged):
        weights = scores.float().gather(1, dropped).clamp_min(0.0)  # (B, n - k)
        tokens = _gather_tokens(patches, dropped)
        count = torch.full((batch,), float(dropped.shape[1]), device=x.device)
        if has_merged:
            mean_weight = (
                weights.mean(1, keepdim=True) if weights.shape[1] else torch.ones(batch, 1, device=x.device)
            )
            weights = torch.cat([weights, merged_count.float().unsqueeze(1) * mean_weight], dim=1)
            tokens = torch.cat([tokens, x[:, -1:]], dim=1)
            count = count + merged_count.float()
        total = weights.sum(1, keepdim=True)
        weights = torch.where(
            total > 0, weights / total.clamp_min(1e-30), torch.full_like(weights, 1.0 / weights.shape[1])
        )
        parts.append((weights.unsqueeze(-1).to(x.dtype) * tokens).sum(1, keepdim=True))
        new_count = count
    elif has_merged:
        parts.append(x[:, -1:])
    return PrunedTokens(torch.cat(parts, dim=1), patch_index.gather(1, kept), new_count)


def kept_target_rate(
    kept_indices: torch.Tensor | None, target_patch: torch.Tensor, *, reduce: bool = True
) -> torch.Tensor:
    """How often the patch the question is about survives pruning.

    Args:
        kept_indices: ``(B, K)`` original-grid positions of the kept patches; ``None`` means no
            pruning (every patch kept).
        target_patch: ``(B,)`` the queried object's patch, ``-1`` where the data does not name one.

    Returns:
        with ``reduce``, the mean over the items that name a target (a 0-d float tensor; NaN when
        none does); else ``(B,)`` long: 1 kept, 0 dropped, -1 no target.
    """
    target = target_patch.to(torch.long).view(-1)
    if kept_indices is None:
        hit = torch.ones_like(target)
    else:
        hit = (kept_indices == target.to(kept_indices.device).unsqueeze(1)).any(dim=1).long().cpu()
        target = target.cpu()
    hit = torch.where(target >= 0, hit.to(target.device), -1)
    if not reduce:
        return hit
    named = hit >= 0
    return hit[named].float().mean() if bool(named.any()) else torch.tensor(float("nan"))


def grounding_loss(selection_logits: torch.Tensor | None, target_patch: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the selection's distribution over patches at the queried object's patch.

    The referring-expression grounding signal real VLMs get from grounding data (the question
    names an object; the loss says which patch it is), here from the synthetic sets'
    ``target_patch``. Items with ``target_patch == -1`` are left out; with none left the loss is
    a differentiable 0.

    Args:
        selection_logits: ``(B, N)`` log-scores over the original patches
            (``EncoderOutput.selection_logits``).
        target_patch: ``(B,)`` long.
    """
    if selection_logits is None:
        raise ValueError("grounding needs an encoder that prunes (EncoderOutput.selection_logits is None)")
    target = target_patch.to(device=selection_logits.device, dtype=torch.long).view(-1)
    named = target >= 0
    if not bool(named.any()):
        return selection_logits.sum() * 0.0
    return torch.nn.functional.cross_entropy(selection_logits[named].float(), target[named])
