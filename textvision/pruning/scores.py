"""Patch scorers for token pruning (higher = keep): the interface, the registry, the built-ins.

A scorer is a :class:`PatchScorer` module; the encoder calls ``scorer.score(inputs)`` after each
pruning block with a :class:`ScoringInputs` and keeps the top patches of the returned scores.
What the encoder must check or provide follows from what the class declares, never from its name:

- ``attends_to_text``: the scores depend on the instruction (text-guided pruning);
- ``reads_fusion_relevance``: it reads the relevance of the pruning block's fusion kernel, so that
  block needs a text-attending fusion;
- ``needs_cls_token``: it reads the CLS token;
- ``differentiable``: its ``logits`` carry gradient (a grounding loss and the relevance embedding
  train it); otherwise the encoder's ``selection_logits`` are the log of detached scores.

Built-in scorers (short names for YAML, :data:`SCORERS`):

- ``text`` (:class:`FusionRelevanceScorer`): the instruction relevance the fusion kernels return
  (:mod:`textvision.kernels`);
- ``text_similarity`` (:class:`~textvision.pruning.text_similarity.TextSimilarityScorer`):
  question–patch similarity, trainable;
- ``cls_attention`` (:class:`CLSAttentionScorer`): the CLS query's attention over the patches,
  mean over heads (EViT, Liang et al. 2022, arXiv:2202.07800; VisionZip's "dominant" tokens);
- ``token_norm`` (:class:`TokenNormScorer`): the L2 norm of each patch token.

Only the CLS row of the attention is computed, never the ``N x N`` matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import torch
from torch import nn

from textvision.vision.backbone import BlockView

if TYPE_CHECKING:
    from textvision.vision.backbone import VisionBackbone

__all__ = [
    "SCORERS",
    "CLSAttentionScorer",
    "FusionRelevanceScorer",
    "PatchScorer",
    "PatchScores",
    "ScoringInputs",
    "TokenNormScorer",
    "cls_attention_scores",
    "register_scorer",
    "resolve_scorer",
    "token_norm_scores",
]


@dataclass(frozen=True)
class ScoringInputs:
    """What a scorer may read after a pruning block; ``n`` patches are present.

    Attributes:
        block: the pruning block's view (its pretrained projections).
        block_input: that block's input ``(B, P + n [+1], D)``.
        x: its output ``(B, P + n [+1], D)``, patches at ``[P, P + n)``.
        num_prefix_tokens: ``P`` (CLS + registers).
        num_patches: ``n``.
        backbone: the vision backbone (e.g. its ``final_norm``).
        text_hidden: the text encoder's tokens ``(B, T, Dt)`` (before the text adapter).
        text_mask: ``(B, T)`` bool.
        fusion_relevance: the block's fusion-kernel relevance over the patches ``(B, n)``
            float32, or None when the block's fusion does not attend to the text.
    """

    block: BlockView
    block_input: torch.Tensor
    x: torch.Tensor
    num_prefix_tokens: int
    num_patches: int
    backbone: VisionBackbone
    text_hidden: torch.Tensor
    text_mask: torch.Tensor
    fusion_relevance: torch.Tensor | None = None

    @property
    def patches(self) -> torch.Tensor:
        """The present patch tokens of the block's output ``(B, n, D)``."""
        return self.x[:, self.num_prefix_tokens : self.num_prefix_tokens + self.num_patches]


class PatchScores(NamedTuple):
    """``scores (B, n)`` non-negative (higher = keep); ``logits (B, n)`` differentiable log-scores
    whose softmax is ``scores``, or None (scorers that are not ``differentiable``)."""

    scores: torch.Tensor
    logits: torch.Tensor | None = None


class PatchScorer(nn.Module):
    """Base class of the pruning scorers; see the module docstring for the class attributes."""

    attends_to_text: ClassVar[bool] = False
    reads_fusion_relevance: ClassVar[bool] = False
    needs_cls_token: ClassVar[bool] = False
    differentiable: ClassVar[bool] = False

    def score(self, inputs: ScoringInputs) -> PatchScores:
        """Scores of the ``inputs.num_patches`` present patches."""
        raise NotImplementedError

    def check_widths(self, *, vision_width: int, text_width: int) -> None:
        """Raise ``ValueError`` if the scorer cannot read tokens of these widths (the encoder's)."""


#: short name -> built-in scorer class, filled by :func:`register_scorer`
SCORERS: dict[str, type[PatchScorer]] = {}


def register_scorer(name: str):
    """Class decorator giving a :class:`PatchScorer` subclass the short name ``name`` in :data:`SCORERS`."""

    def add(cls: type[PatchScorer]) -> type[PatchScorer]:
        if name in SCORERS:
            raise KeyError(f"scorer {name!r} is already registered ({SCORERS[name].__name__})")
        if not (isinstance(cls, type) and issubclass(cls, PatchScorer)):
            raise TypeError(f"register_scorer({name!r}) takes a PatchScorer subclass, got {cls!r}")
        SCORERS[name] = cls
        return cls

    return add


def resolve_scorer(scorer: str | PatchScorer, *, given: PatchScorer | None = None) -> PatchScorer:
    """The scorer module for ``scorer``: the module itself, or a short name's class built without
    arguments — or ``given`` when it is an instance of that class (a scorer with settings, such as
    ``text_similarity``, is given built).

    Raises:
        ValueError: an unknown short name (the message lists the registered ones), or a named
            scorer that needs settings and was not given built.
    """
    if isinstance(scorer, PatchScorer):
        return scorer
    if not isinstance(scorer, str):
        raise TypeError(f"scorer must be a registered name or a PatchScorer, got {scorer!r}")
    if scorer not in SCORERS:
        raise ValueError(
            f"unknown scorer {scorer!r}; registered: {sorted(SCORERS)} (or give a PatchScorer by class_path)"
        )
    cls = SCORERS[scorer]
    if isinstance(given, cls):
        return given
    try:
        return cls()
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"scorer={scorer!r} needs its settings ({error}): give the built module "
            f"(class_path {cls.__module__}.{cls.__qualname__} with its init_args)"
        ) from error


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


@register_scorer("text")
class FusionRelevanceScorer(PatchScorer):
    """The instruction relevance of the pruning block's fusion kernel (detached by contract)."""

    attends_to_text = True
    reads_fusion_relevance = True

    def score(self, inputs: ScoringInputs) -> PatchScores:
        if inputs.fusion_relevance is None:
            raise ValueError(
                "the pruning block's fusion returned no relevance (it does not attend to the text)"
            )
        return PatchScores(inputs.fusion_relevance)


@register_scorer("cls_attention")
class CLSAttentionScorer(PatchScorer):
    """EViT's attentiveness: the CLS query's attention over the patches in the pruning block."""

    needs_cls_token = True

    def score(self, inputs: ScoringInputs) -> PatchScores:
        return PatchScores(
            cls_attention_scores(
                inputs.block,
                inputs.block_input,
                num_prefix_tokens=inputs.num_prefix_tokens,
                num_patches=inputs.num_patches,
            )
        )


@register_scorer("token_norm")
class TokenNormScorer(PatchScorer):
    """The L2 norm of each patch token after the pruning block."""

    def score(self, inputs: ScoringInputs) -> PatchScores:
        return PatchScores(token_norm_scores(inputs.patches))
