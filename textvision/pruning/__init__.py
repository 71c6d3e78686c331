"""Token pruning inside the encoder: text-guided (kernel relevance, trainable question–patch
similarity) and text-agnostic scorers; the kept-target rate and the grounding loss.

Importing this package imports every module in it, so a scorer file dropped here registers its
short name (``@register_scorer``) with no other edit; :data:`ScorerName` is the set of those
names, the type the encoder's ``scorer`` argument accepts beside a class path.
"""

import importlib
import pkgutil
from typing import Literal

from textvision.pruning.pruner import TokenPruner
from textvision.pruning.scores import (
    SCORERS,
    CLSAttentionScorer,
    FusionRelevanceScorer,
    PatchScorer,
    PatchScores,
    ScoringInputs,
    TokenNormScorer,
    cls_attention_scores,
    register_scorer,
    resolve_scorer,
    token_norm_scores,
)
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

# the scorer files not named above (a new one needs no edit here)
for _module in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
    importlib.import_module(_module.name)

# Built after every module has registered: jsonargparse checks a short name against it at parse
# time and names the choices when one is unknown.
ScorerName = Literal[tuple(sorted(SCORERS))]  # type: ignore[valid-type]

__all__ = [
    "KEEP_ORDERS",
    "SCORERS",
    "CLSAttentionScorer",
    "FusionRelevanceScorer",
    "PatchScorer",
    "PatchScores",
    "PrunedTokens",
    "ScorerName",
    "ScoringInputs",
    "TextSimilarityScorer",
    "TokenNormScorer",
    "TokenPruner",
    "cls_attention_scores",
    "grounding_loss",
    "keep_count",
    "kept_target_rate",
    "prune_tokens",
    "register_scorer",
    "resolve_scorer",
    "token_norm_scores",
    "top_k_sorted",
]
