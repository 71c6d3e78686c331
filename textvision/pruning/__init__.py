"""Token pruning inside the encoder: text-guided (kernel relevance, trainable question–patch
similarity) and text-agnostic scorers; the kept-target rate and the grounding loss."""

from textvision.pruning.pruner import TokenPruner
from textvision.pruning.scores import SCORERS, cls_attention_scores, token_norm_scores
from textvision.pruning.selection import (
    KEEP_ORDERS,
    PrunedTokens,
    grounding_loss,
    keep_count,
    kept_target_rate,
    prune_tokens,
    top_k_sorted,
)
from textvision.pruning.text_similarity import TextSimilarityScorer

__all__ = [
    "KEEP_ORDERS",
    "SCORERS",
    "PrunedTokens",
    "TextSimilarityScorer",
    "TokenPruner",
    "cls_attention_scores",
    "grounding_loss",
    "keep_count",
    "kept_target_rate",
    "prune_tokens",
    "token_norm_scores",
    "top_k_sorted",
]
