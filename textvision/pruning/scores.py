"""Patch scores for token pruning: higher = keep.

- text-guided: the instruction relevance returned by :mod:`textvision.kernels` (passed in by the
  encoder; no function needed here);
- :func:`cls_attention_scores`: the CLS query's attention over the patches, mean over heads
  (EViT, Liang et al. 2022, arXiv:2202.07800; VisionZip's "dominant" tokens);
- :func:`token_norm_scores`: the L2 norm of each patch token;
- ``text_similarity``: question–patch similarity, trainable
  (:class:`~textvision.pruning.text_similarity.TextSimilarityScorer`, given to the encoder).

Only the CLS row of the attention is computed, never the ``N x N`` matrix.
"""

from __future__ import annotations

import torch

from textvision.vision.backbone import BlockView

__all__ = ["SCORERS", "cls_attention_scores", "token_norm_scores"]

SCORERS = ("text", "text_similarity", "cls_attention", "token_norm")


def cls_attention_scores(
    block: BlockView, x: torch.Tensor, *, num_prefix_tokens: int, num_patches: int
) -> torch.Tensor:
    """CLS → patch attention probabilities of ``block``'s self-attention, mean over heads.

    Args:
        block: the block whose attention is read (its pretrained q/k projections).
        x: that block's input ``(B, L, D)``, CLS at position 0.
        num_prefix_tokens: CLS + register tokens before the patches.
        num_patches: patches after the prefix (tokens after them, e.g. a merged token, are ignored).
    Returns:
        ``(B, num_patches)`` float32 (the softmax runs over every token, CLS included).
    """
    q, k, _ = block.qkv(block.norm_attn(x))  # (B, H, L, Dh)
    logits = (q[:, :, :1].float() * block.scale) @ k.float().transpose(-1, -2)  # (B, H, 1, L)
    return logits.softmax(dim=-1).mean(dim=1)[:, 0, num_prefix_tokens : num_prefix_tokens + num_patches]


def token_norm_scores(patches: torch.Tensor) -> torch.Tensor:
    """``(B, n, D)`` → ``(B, n)`` float32 L2 norms."""
    return patches.float().norm(dim=-1)
