"""``TextAwareEncoder``: the instruction conditions every ViT block; text-guided pruning inside.

    instruction ─► TextEncoder ─► (B, T, Dt) + mask ─► text_adapter Linear(Dt → Dv) ─► text (B, T, Dv)
    image ─► backbone.embed ─► x (B, P + N, Dv)
        for every block i:   x = fusion_i(x, text, mask, block=view_i)   (pretrained self-attention + text)
                             x = view_i.mlp(x)
                             if i in prune_at: keep prefix + top-k patches by score (+ merged token)
    ─► backbone.final_norm ─► EncoderOutput(tokens, kept_indices, relevance)

All init arguments are modules, factories or plain types (keyword-only), so LightningCLI /
jsonargparse can build the encoder from YAML (``class_path``/``init_args``): ``fusion`` is a short
name or a :class:`~textvision.fusion.Fusion` class with its own settings, built once per block,

    fusion: gated_xattn                                   # a built-in, by its short name
    fusion: {class_path: my_fusions.ScaledBias, init_args: {alpha: 0.5}}   # any Fusion subclass

and ``scorer`` likewise a short name or a :class:`~textvision.pruning.PatchScorer`. Unknown names
and classes fail when the config is parsed. At step 0 (all fusion gates zero) the output equals
the plain backbone's bitwise when no pruning is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from textvision.fusion import FUSIONS, Fusion, FusionFactory, FusionName, resolve_fusion
from textvision.pruning import (
    SCORERS,
    PatchScorer,
    ScorerName,
    ScoringInputs,
    TextSimilarityScorer,
    TokenPruner,
    resolve_scorer,
)
from textvision.text.encoder import TextEncoder, TextFeatures
from textvision.vision.backbone import CheckpointMismatchError, LoadReport, VisionBackbone

__all__ = ["EncoderOutput", "TextAwareEncoder"]

_logger = logging.getLogger(__name__)


class EncoderOutput(NamedTuple):
    """Result of :meth:`TextAwareEncoder.forward`.

    Attributes:
        tokens: ``(B, M, Dv)`` final-normed visual tokens: prefix tokens (CLS first, then
            registers), the kept patches in original spatial order, then the merged token if
            ``merge_dropped``. ``M = P + K (+1)``.
        kept_indices: ``(B, K)`` long, ascending positions of the kept patches in the original
            patch grid (row-major), or None without pruning.
        relevance: ``(B, N)`` float32 instruction relevance over the original patches (mean over
            the blocks that produced it; 0 for patches already dropped there), or None when no
            block attends to the text. With a ``differentiable`` scorer it is the scorer's
            softmax over the patches at the first pruning step (what the selection used).
        selection_logits: ``(B, N)`` log-scores of the first pruning step over the original
            patches (the softmax of which is the selection's distribution), or None without
            pruning. Differentiable only with a ``differentiable`` scorer (the kernels'
            relevance is detached by contract); a grounding loss reads it.
    """

    tokens: torch.Tensor
    kept_indices: torch.Tensor | None
    relevance: torch.Tensor | None
    selection_logits: torch.Tensor | None = None


class TextAwareEncoder(nn.Module):
    """A ViT whose blocks read the instruction, with optional token pruning.

    Args:
        backbone: a :class:`~textvision.vision.TimmViT` or :class:`~textvision.vision.OpenClipViT`.
        text_encoder: a :class:`~textvision.text.TextEncoder`; None when text features are always
            passed precomputed (then give ``text_dim``).
        text_dim: width ``Dt`` of precomputed text features (checked against the text encoder).
        fusion: the fusion variant, built once per fused block as ``fusion(dim=, num_heads=,
            backend=)``: a registered short name (:data:`~textvision.fusion.FUSIONS`), a
            :class:`~textvision.fusion.Fusion` subclass or a factory of one (YAML: ``class_path``
            + ``init_args``).
        fusion_blocks: block indices that get a fusion module (default: every block).
        prune_at: blocks after which patches are pruned (0-based), e.g. ``(4,)``.
        keep_ratio: fraction of the present patches kept at each pruning step.
        keep_tokens: patches kept at each step (one int, or one per step).
        scorer: the pruning scorer: a registered short name (:data:`~textvision.pruning.SCORERS`,
            :mod:`textvision.pruning.scores` describes them) or a
            :class:`~textvision.pruning.PatchScorer` module (YAML: ``class_path`` + ``init_args``).
            What the encoder checks follows from the class's declarations (e.g. a scorer that
            ``reads_fusion_relevance`` needs a text-attending fusion in the pruning blocks).
        similarity: a built scorer used when ``scorer`` is the short name of its class (a
            :class:`~textvision.pruning.TextSimilarityScorer`, whose settings a short name
            cannot carry); dropped with any other scorer. The same as giving it as ``scorer``.
        merge_dropped: fuse the dropped patches into one extra token, score-weighted (EViT).
        keep_order: kept patches in ``"spatial"`` order or best ``"score"`` first.
        relevance_embedding: add ``p_n · e`` to each kept patch ``n`` after the first pruning step,
            ``p`` a ``differentiable`` scorer's softmax over the patches and ``e`` a learned,
            zero-initialised vector: the tokens that reach the LM say how much the question is
            about them (the LM need not re-find the named object among the kept ones), and the
            answer loss reaches the scorer through ``p`` (relevance-weighted tokens).
        backend: attention-kernel backend for the fusion modules: ``auto``/``triton``/``torch``.
        freeze_backbone: keep the pretrained ViT frozen (only fusion + text adapter train).
    """

    def __init__(
        self,
        *,
        backbone: VisionBackbone,
        text_encoder: TextEncoder | None = None,
        text_dim: int | None = None,
        fusion: FusionName | FusionFactory = "gated_xattn",
        fusion_blocks: Sequence[int] | None = None,
        prune_at: Sequence[int] = (),
        keep_ratio: float | None = None,
        keep_tokens: int | Sequence[int] | None = None,
        scorer: ScorerName | PatchScorer = "text",
        similarity: TextSimilarityScorer | None = None,
        merge_dropped: bool = False,
        keep_order: str = "spatial",
        relevance_embedding: bool = False,
        backend: str = "auto",
        freeze_backbone: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, VisionBackbone):
            raise TypeError(
                f"backbone must be a VisionBackbone (TimmViT, OpenClipViT), got {type(backbone).__name__}"
            )
        self.backbone = backbone
        self.text_encoder = text_encoder
        if text_encoder is not None:
            if text_dim is not None and text_dim != text_encoder.width:
                raise ValueError(f"text_dim={text_dim} but the text encoder's width is {text_encoder.width}")
            text_dim = text_encoder.width
        if text_dim is None:
            raise ValueError("give a text_encoder or the width text_dim of the precomputed text features")
        self.text_dim = int(text_dim)
        self.text_adapter = nn.Linear(self.text_dim, backbone.width)
        depth = backbone.depth
        factory = resolve_fusion(fusion)
        blocks = range(depth) if fusion_blocks is None else sorted({int(i) for i in fusion_blocks})
        self._check_indices("fusion_blocks", blocks, depth)
        self.fusion = nn.ModuleDict()
        for i in blocks:
            module = factory(dim=backbone.width, num_heads=backbone.num_heads, backend=backend)
            if not isinstance(module, Fusion):
                raise TypeError(f"fusion {fusion!r} built a {type(module).__name__}, not a Fusion")
            self.fusion[str(i)] = module
        self.pruner = TokenPruner(
            prune_at=prune_at,
            keep_ratio=keep_ratio,
            keep_tokens=keep_tokens,
            merge_dropped=merge_dropped,
            order=keep_order,
        )
        self._check_indices("prune_at", self.pruner.prune_at, depth)
        scorer_module = resolve_scorer(scorer, given=similarity)
        if similarity is not None and scorer_module is not similarity:
            # a config may carry the similarity module while an overlay picks another scorer
            _logger.info("scorer=%r: the similarity module is not used and is dropped", scorer)
        scorer_module.check_widths(vision_width=backbone.width, text_width=self.text_dim)
        # Registered as ``similarity``: the state-dict keys of checkpoints trained with the
        # text-similarity scorer (scorers without parameters add no keys). Read it as ``scorer``.
        self.similarity = scorer_module
        pruning_scorer = type(scorer_module).__name__
        if relevance_embedding and not (self.pruner.enabled and scorer_module.differentiable):
            # it marks kept patches by a differentiable scorer's scores: without them nothing to mark
            _logger.info("relevance_embedding needs pruning with a differentiable scorer; not used")
            relevance_embedding = False
        # zero-init: at step 0 the kept tokens are the backbone's own
        self.relevance_embedding = nn.Parameter(torch.zeros(backbone.width)) if relevance_embedding else None
        if self.pruner.enabled and scorer_module.reads_fusion_relevance:
            blind = [i for i in self.pruner.prune_at if not self._attends(i)]
            if blind:
                attending = sorted(name for name, cls in FUSIONS.items() if cls.attends_to_text)
                others = sorted(name for name, cls in SCORERS.items() if not cls.reads_fusion_relevance)
                raise ValueError(
                    f"scorer {pruning_scorer} reads the relevance of the fusion in the pruning block, "
                    f"but blocks {blind} "
                    f"have no text-attending fusion (fusion={fusion!r}, fusion_blocks={list(blocks)}); "
                    f"use one of {attending} there, or a scorer of {others}"
                )
        if self.pruner.enabled and scorer_module.needs_cls_token and not backbone.has_cls_token:
            raise ValueError(f"scorer {pruning_scorer} needs a backbone with a CLS token")
        if self.pruner.enabled and scorer_module.reads_fusion_relevance:
            self.relevance_blocks = self.pruner.prune_at
        else:
            attending = [i for i in blocks if self._attends(i)]
            self.relevance_blocks = tuple(attending[-1:])
        self.backend = backend
        if freeze_backbone:
            self.backbone.requires_grad_(False)

    @staticmethod
    def _check_indices(name: str, indices: Sequence[int], depth: int) -> None:
        bad = [i for i in indices if not 0 <= i < depth]
        if bad:
            raise ValueError(f"{name} {bad} out of range for a backbone with {depth} blocks (0..{depth - 1})")

    @property
    def scorer(self) -> PatchScorer:
        """The pruning scorer module (registered as ``similarity``, see ``__init__``)."""
        return self.similarity

    def _attends(self, index: int) -> bool:
        module = self.fusion[str(index)] if str(index) in self.fusion else None
        return module is not None and module.attends_to_text

    @property
    def width(self) -> int:
        """Visual token width ``Dv``."""
        return self.backbone.width

    @property
    def num_prefix_tokens(self) -> int:
        return self.backbone.num_prefix_tokens

    def set_backend(self, backend: str) -> None:
        """Switch the attention-kernel backend of every fusion module."""
        self.backend = backend
        for module in self.fusion.values():
            module.backend = backend

    def num_tokens(self, image_size: tuple[int, int] | None = None) -> int:
        """Tokens ``M`` per image in :attr:`EncoderOutput.tokens` for ``image_size`` (default: native)."""
        height, width = image_size or self.backbone.image_size
        n = (height // self.backbone.patch_size[0]) * (width // self.backbone.patch_size[1])
        for step in range(len(self.pruner.prune_at)):
            n = self.pruner.keep(step, n)
        merged = int(self.pruner.enabled and self.pruner.merge_dropped)
        return self.num_prefix_tokens + n + merged

    def encode_text(self, instructions: Sequence[str]) -> TextFeatures:
        """Run the text encoder (cache-aware); the result can be passed back as ``text_features``."""
        if self.text_encoder is None:
            raise RuntimeError("this encoder has no text_encoder; pass text_features to forward()")
        return self.text_encoder(instructions)

    def _text(
        self, batch: int, instructions: Sequence[str] | None, text_features
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if text_features is None:
            if instructions is None:
                raise ValueError("pass instructions (one string per image) or text_features")
            text_features = self.encode_text(instructions)
        hidden, mask = text_features
        if hidden.ndim != 3 or hidden.shape[-1] != self.text_dim:
            raise ValueError(f"text features must be (B, T, {self.text_dim}), got {tuple(hidden.shape)}")
        if mask.shape != hidden.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(
                f"text mask must be bool (B, T) = {tuple(hidden.shape[:2])}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        if hidden.shape[0] != batch:
            raise ValueError(
                f"{hidden.shape[0]} instructions for {batch} images; give one instruction per image"
            )
        return hidden, mask

    def forward(
        self,
        images: torch.Tensor,
        instructions: Sequence[str] | None = None,
        *,
        text_features: TextFeatures | tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> EncoderOutput:
        """Encode images conditioned on their instructions.

        Args:
            images: ``(B, 3, H, W)`` float in [0, 1] (any multiple of the patch size; the position
                embedding is resampled).
            instructions: ``B`` strings (may be empty).
            text_features: precomputed ``(hidden (B, T, Dt), mask (B, T) bool)`` from
                :meth:`encode_text` instead of ``instructions``.
        """
        backbone = self.backbone
        x = backbone.embed(images)
        hidden, mask = self._text(x.shape[0], instructions, text_features)
        text = self.text_adapter(hidden.to(device=x.device, dtype=self.text_adapter.weight.dtype))
        mask = mask.to(x.device)
        batch, prefix = x.shape[0], backbone.num_prefix_tokens
        num_patches = x.shape[1] - prefix
        patch_index = torch.arange(num_patches, device=x.device).expand(batch, -1)
        merged_count: torch.Tensor | None = None
        selection_logits: torch.Tensor | None = None
        selected_relevance: torch.Tensor | None = None
        relevance_sum = torch.zeros(batch, num_patches, device=x.device) if self.relevance_blocks else None
        prune_steps = {block: step for step, block in enumerate(self.pruner.prune_at)}
        for index in range(backbone.depth):
            view = backbone.block(index)
            block_input = x
            relevance = None
            module: Fusion | None = self.fusion[str(index)] if str(index) in self.fusion else None
            if module is None:
                x = view.attention(x)
            else:
                out = module(x, text, mask, block=view, need_relevance=index in self.relevance_blocks)
                x, text, relevance = out.x, out.text, out.relevance
            x = view.mlp(x)
            n = patch_index.shape[1]
            patch_relevance = None if relevance is None else relevance[:, prefix : prefix + n].float()
            if patch_relevance is not None and relevance_sum is not None:
                relevance_sum.scatter_add_(1, patch_index, patch_relevance)
            if index in prune_steps:
                scores, logits = self.scorer.score(
                    ScoringInputs(
                        block=view,
                        block_input=block_input,
                        x=x,
                        num_prefix_tokens=prefix,
                        num_patches=n,
                        backbone=backbone,
                        text_hidden=hidden.to(x.device),
                        text_mask=mask,
                        fusion_relevance=patch_relevance,
                    )
                )
                if selection_logits is None:  # the first step sees every patch, in grid order
                    selection_logits = logits if logits is not None else scores.float().clamp_min(1e-30).log()
                    if logits is not None:
                        selected_relevance = scores.detach().float()
                first_step = prune_steps[index] == 0
                x, patch_index, merged_count = self.pruner(
                    x,
                    scores,
                    patch_index,
                    step=prune_steps[index],
                    num_prefix_tokens=prefix,
                    merged_count=merged_count,
                )
                if self.relevance_embedding is not None and first_step:
                    # at the first step the current patches are the original grid, so the kept
                    # positions index the scores directly
                    kept_scores = scores.gather(1, patch_index).to(x.dtype)  # (B, K), grad to the scorer
                    k = kept_scores.shape[1]
                    marked = x[:, prefix : prefix + k] + kept_scores.unsqueeze(-1) * self.relevance_embedding
                    x = torch.cat([x[:, :prefix], marked, x[:, prefix + k :]], dim=1)
        tokens = backbone.final_norm(x)
        relevance_out = None if relevance_sum is None else relevance_sum / len(self.relevance_blocks)
        if selected_relevance is not None:
            relevance_out = selected_relevance
        return EncoderOutput(
            tokens, patch_index if self.pruner.enabled else None, relevance_out, selection_logits
        )

    # ----------------------------------------------------------------------------------------
    # Parameters and checkpoints

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by role, for per-group optimizer settings.

        Keys: ``fusion`` (fusion layers and their gates), ``text_adapter``, ``backbone``,
        ``text_encoder``, ``scorer`` (the pruning scorer's parameters and the relevance
        embedding); frozen parameters are left out, so a group may be empty.
        """
        groups: dict[str, list[nn.Parameter]] = {
            "fusion": list(self.fusion.parameters()),
            "text_adapter": list(self.text_adapter.parameters()),
            "backbone": list(self.backbone.parameters()),
            "text_encoder": list(self.text_encoder.parameters()) if self.text_encoder is not None else [],
            "scorer": [
                *self.scorer.parameters(),
                *([self.relevance_embedding] if self.relevance_embedding is not None else []),
            ],
        }
        return {name: [p for p in params if p.requires_grad] for name, params in groups.items()}

    def new_keys(self) -> list[str]:
        """State-dict keys that exist only in the text-aware encoder (fusion, gates, text adapter)."""
        return sorted(k for k in self.state_dict() if not k.startswith(("backbone.", "text_encoder.")))

    def _report(self, backbone_report: LoadReport) -> LoadReport:
        loaded = sorted(f"backbone.model.{key}" for key in backbone_report.loaded)
        present = {k for k in self.state_dict() if k.startswith("backbone.")}
        unfilled = sorted(present - set(loaded))
        if unfilled:
            raise CheckpointMismatchError(
                f"backbone tensors not filled by {backbone_report.source}: {unfilled}"
            )
        return LoadReport(
            source=backbone_report.source, loaded=loaded, new=self.new_keys(), ignored=backbone_report.ignored
        )

    @property
    def load_report(self) -> LoadReport | None:
        """Report of the backbone checkpoint loaded at construction (``checkpoint_path``), if any."""
        report = self.backbone.load_report
        return None if report is None else self._report(report)

    def load_backbone_checkpoint(self, path: str | Path) -> LoadReport:
        """Load a timm / open_clip checkpoint file into the backbone; report the new keys.

        Raises:
            CheckpointMismatchError: anything besides the new (fusion, gate, text adapter) keys
                is missing, or the file holds unexpected entries.
        """
        report = self._report(self.backbone.load_checkpoint(path))
        _logger.info("%s", report)
        return report
