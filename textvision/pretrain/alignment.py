"""Dense text-aligned pretraining of a ViT: each object's patch matches its caption's embedding.

The offline stand-in for CLIP. Real VLMs inherit from CLIP patch features that already live in a
space shared with language, so "the triangle" can find the triangle's patch before any VLM
training. A ViT pretrained on attribute labels alone (shape/colour classification) does not give
that: its features separate glyphs, but nothing ties them to words, and a question-aware reader
over them stays at chance (issue 14's calibration). So the pretraining target here is text:

* every object of a scene gets a caption (:mod:`textvision.pretrain.captions`): "a red
  triangle", "a vertical bar", "a blue object on the left", ... — object descriptions, never
  questions;
* the caption is embedded by the **frozen** MiniLM sentence encoder (mean-pooled tokens, as
  sentence-transformers pools it) and mapped by a linear text head; each patch token of the ViT's
  last block by a linear patch head; both are L2-normalised (CLIP's two projections);
* the loss is the **SigLIP** pairwise sigmoid loss (Zhai et al., "Sigmoid Loss for Language Image
  Pre-Training", ICCV 2023) over every (caption, patch) pair of the batch, with targets from
  attribute matching — a caption fits every object it describes, in any image of the batch, and
  no empty patch — plus a **per-image softmax over patches** for each caption (the dense
  region-word alignment of RegionCLIP / GLIP, Zhong et al. CVPR 2022, Li et al. CVPR 2022), whose
  multi-positive cross-entropy makes "which patch is this?" the training question itself.

Why sigmoid and not CLIP's softmax over captions: captions here are often shared ("a red object"
fits three patches), and the sigmoid loss takes any number of positives per row; the softmax over
patches keeps the ranking sharp within an image, which is what zero-shot grounding measures.
The text encoder is locked and only its head learns (the mirror of LiT, Zhai et al. CVPR 2022), so
downstream questions embed with the same frozen MiniLM the VLM reads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DenseAlignmentHeads", "dense_alignment_loss", "mean_pool"]


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Sentence embedding ``(B, Dt)``: the mean of the valid tokens of ``hidden (B, T, Dt)``."""
    weight = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weight).sum(1) / weight.sum(1).clamp_min(1.0)


class DenseAlignmentHeads(nn.Module):
    """CLIP's two projections and the SigLIP temperature and bias.

    Args:
        vision_width: patch token width ``Dv``.
        text_width: sentence embedding width ``Dt``.
        dim: shared embedding width.
    """

    def __init__(self, *, vision_width: int, text_width: int, dim: int = 128) -> None:
        super().__init__()
        self.patch_proj = nn.Linear(vision_width, dim)
        self.text_proj = nn.Linear(text_width, dim)
        # SigLIP's initialisation: t' = log 10, b = -10
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-10.0))

    def embed_patches(self, tokens: Tensor) -> Tensor:
        """``(..., Dv)`` → unit ``(..., dim)``."""
        return F.normalize(self.patch_proj(tokens), dim=-1)

    def embed_text(self, sentences: Tensor) -> Tensor:
        """``(..., Dt)`` sentence embeddings → unit ``(..., dim)``."""
        return F.normalize(self.text_proj(sentences), dim=-1)

    def similarity(self, text: Tensor, patches: Tensor) -> Tensor:
        """Cosine similarity of unit ``text (Q, dim)`` with unit ``patches (..., dim)``: ``(Q, ...)``."""
        return torch.einsum("qd,...d->q...", text, patches)


def dense_alignment_loss(
    heads: DenseAlignmentHeads,
    patch_embed: Tensor,
    text_embed: Tensor,
    targets: Tensor,
    caption_image: Tensor,
) -> dict[str, Tensor]:
    """SigLIP over all (caption, patch) pairs + per-image softmax over patches.

    Args:
        patch_embed: ``(B, N, dim)`` unit patch embeddings.
        text_embed: ``(Q, dim)`` unit caption embeddings (one per captioned object).
        targets: ``(Q, B, N)`` bool, caption ``q`` fits the object at patch ``n`` of image ``b``.
        caption_image: ``(Q,)`` long, the image each caption was written for.

    Returns ``{"loss", "sigmoid", "grounding"}`` (scalars).
    """
    cos = heads.similarity(text_embed, patch_embed)  # (Q, B, N)
    logits = cos * heads.log_scale.exp() + heads.bias
    labels = targets.to(logits.dtype)
    # SigLIP normalises by the number of captions (rows), summing over every pair of a row
    sigmoid = -F.logsigmoid((2.0 * labels - 1.0) * logits).sum(dim=(1, 2)).mean()
    own = logits.gather(1, caption_image.view(-1, 1, 1).expand(-1, 1, logits.shape[2])).squeeze(1)  # (Q, N)
    own_targets = targets.gather(1, caption_image.view(-1, 1, 1).expand(-1, 1, targets.shape[2])).squeeze(1)
    log_prob = own.log_softmax(dim=-1)
    grounding = -(log_prob.masked_fill(~own_targets, float("-inf")).logsumexp(dim=-1)).mean()
    return {"loss": sigmoid / targets.shape[2] + grounding, "sigmoid": sigmoid, "grounding": grounding}
