"""``TextSimilarityScorer``: text-guided patch selection by question–patch similarity, trainable.

The score of patch ``n`` for a question is the CLIP-style similarity of the question's sentence
embedding (the frozen text encoder's mean-pooled tokens, through a text projection) and the patch
token (through a patch projection), both L2-normalised, times a temperature. Started from the
projections of text-aligned pretraining (:mod:`textvision.pretrain`), it selects patches zero-shot
the way TRIM (Song et al., "Less is More: A Simple yet Effective Token Reduction Method for
Efficient Multi-modal LLMs", 2024) and SparseVLM (Zhang et al., 2024) use CLIP's text–patch
similarity, and, unlike the fusion kernels' relevance (detached by contract), its logits are
differentiable, so a grounding loss on them trains the selection (``EncoderOutput.selection_logits``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from textvision.pretrain.alignment import DenseAlignmentHeads, mean_pool
from textvision.pruning.scores import PatchScorer, PatchScores, ScoringInputs, register_scorer

__all__ = ["TextSimilarityScorer"]


@register_scorer("text_similarity")
class TextSimilarityScorer(PatchScorer):
    """Question–patch similarity logits ``(B, n)`` of the final-normed patch tokens.

    Args:
        pretraining: a vision-pretraining config (e.g. ``configs/pretrain/demo_vit.yaml``); its
            cached export's alignment heads initialise the projections (made on first use).
        vision_width, text_width, dim: the projections' shapes when no ``pretraining`` is given
            (randomly initialised).
        cache_dir: the pretraining cache (default ``$TEXTVISION_CACHE``).
        trainable: train the projections and temperature (else frozen).
    """

    attends_to_text = True
    differentiable = True

    def __init__(
        self,
        *,
        pretraining: str | None = None,
        vision_width: int | None = None,
        text_width: int | None = None,
        dim: int = 128,
        cache_dir: str | None = None,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        state = None
        if pretraining is not None:
            from safetensors.torch import load_file

            from textvision.pretrain.cache import alignment_heads_path

            self.source = str(alignment_heads_path(pretraining, cache_dir=cache_dir))
            state = load_file(self.source)
            dim, vision_width = state["patch_proj.weight"].shape
            text_width = state["text_proj.weight"].shape[1]
        elif vision_width is None or text_width is None:
            raise ValueError("give a pretraining config, or vision_width and text_width")
        else:
            self.source = None
        self.heads = DenseAlignmentHeads(
            vision_width=int(vision_width), text_width=int(text_width), dim=int(dim)
        )
        if state is not None:
            self.heads.load_state_dict(state, strict=True)
        self.vision_width = int(vision_width)
        self.text_width = int(text_width)
        self.heads.requires_grad_(trainable)
        # the SigLIP bias shifts every patch alike: a softmax over patches never sees it
        self.heads.bias.requires_grad_(False)

    def forward(self, patches: Tensor, sentence: Tensor) -> Tensor:
        """Logits ``(B, n)`` from ``patches (B, n, Dv)`` and sentence embeddings ``(B, Dt)``."""
        if patches.shape[-1] != self.vision_width or sentence.shape[-1] != self.text_width:
            raise ValueError(
                f"scorer expects patches (..., {self.vision_width}) and sentences (..., {self.text_width}), "
                f"got {tuple(patches.shape)} and {tuple(sentence.shape)}"
            )
        text = self.heads.embed_text(sentence.to(patches.dtype))
        cos = torch.einsum("bd,bnd->bn", text, self.heads.embed_patches(patches))
        return cos * self.heads.log_scale.exp()

    def check_widths(self, *, vision_width: int, text_width: int) -> None:
        if (self.vision_width, self.text_width) != (vision_width, text_width):
            raise ValueError(
                f"similarity scorer is for widths (vision {self.vision_width}, text {self.text_width}), "
                f"the encoder has ({vision_width}, {text_width})"
            )

    def score(self, inputs: ScoringInputs) -> PatchScores:
        # the sentence is the mean of the frozen text encoder's tokens, as in the pretraining
        # that made the projections; the patches are final-normed, as the pretraining saw them
        sentence = mean_pool(inputs.text_hidden.to(inputs.x.dtype), inputs.text_mask)
        logits = self(inputs.backbone.final_norm(inputs.patches), sentence)
        return PatchScores(logits.softmax(dim=-1), logits)
