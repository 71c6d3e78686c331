"""The text-aware VLM: text-aware encoder → projector → language model.

The encoder reads the image *and* the instruction, so the few visual tokens that survive its
text-guided pruning are the ones the question needs; the projector maps them to the LM width and
the LM answers (LLaVA-1.5 layout: visual tokens right after ``<BOS>``, before the prompt). Trained
in one stage as in Prismatic (Karamcheti et al., "Prismatic VLMs", 2024): projector, fusion, text
adapter and the LM (full or LoRA/DoRA) together; what stays frozen is configuration.

The encoder is any module with the :class:`VisualEncoder` shape:
``enc(images (B,3,H,W) in [0,1], instructions list[str]) -> out`` with ``out.tokens (B, M, Dv)``,
``enc.width == Dv`` and ``enc.parameter_groups() -> {group name: [parameters]}``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from textvision.data.scene import QUADRANT_WORDS
from textvision.vision.backbone import VisionBackbone, check_pixels
from textvision.vlm.language_model import LanguageModel
from textvision.vlm.place import PlaceEmbedding, PlaceWords, place_ids
from textvision.vlm.projector import build_projector

__all__ = ["TextAwareVLM", "VisualEncoder"]

log = logging.getLogger(__name__)


@runtime_checkable
class VisualEncoder(Protocol):
    width: int

    def __call__(self, images: Tensor, instructions: list[str]) -> Any: ...

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]: ...


class TextAwareVLM(nn.Module):
    """Encoder + projector + LM with one training loss and two answer modes.

    Args:
        encoder: the text-aware encoder (``textvision.encoder.TextAwareEncoder`` or any
            :class:`VisualEncoder`).
        language_model: the :class:`LanguageModel` (causal LM or T5; its ``finetune`` decides
            whether it is frozen, fully trained, LoRA or DoRA).
        projector: ``mlp2x_gelu`` (LLaVA-1.5), ``linear`` or ``mlp{N}x_gelu``.
        freeze: names of parameter groups to freeze: the encoder's groups (see its
            ``parameter_groups()``, e.g. ``backbone``, ``fusion``, ``text_adapter``) and
            ``projector``.
        share_t5_encoder: make the vision side's T5 text encoder and the T5 LM's encoder one
            module (the seed's "same distribution" idea: the question that conditions the pixels
            is encoded exactly as the LM reads it). Needs a T5 text encoder and a T5 LM of the same
            width; the LM's stack (with any LoRA layers) is the one kept.
        length_normalize: option scoring divides each option's log-likelihood by its token count.
        place_width: when > 0, a learned embedding of each visual token's place (prefix token, or
            its patch in the full grid, from the encoder's ``kept_indices``) of this width is
            concatenated to the token before the projector. Pruning leaves the LM a few tokens
            whose order no longer says where they were; this tells it (the role 2-D position ids
            play for visual tokens in Qwen2-VL's M-RoPE). Part of the ``projector`` group.
        place_layout: ``"patch"`` (one learned vector per patch) or ``"row_col"`` (a row vector
            plus a column vector, M-RoPE's factorisation; learns faster, see
            :mod:`textvision.vlm.place`).
        place_text: each kept patch's visual token reaches the LM after the LM's own word
            embeddings of its quadrant (``"top left"``, ... :data:`~textvision.data.scene.QUADRANT_WORDS`),
            the place written as text as Shikra writes coordinates (Chen et al., arXiv 2306.15195);
            prefix tokens get no words. A learned place vector has to be found by the LM; words it
            can copy. Needs a square backbone patch grid with an even side
            (``results/demo/diagnosis/lm_reading/``).
    """

    def __init__(
        self,
        *,
        encoder: nn.Module,
        language_model: LanguageModel,
        projector: str = "mlp2x_gelu",
        freeze: list[str] | None = None,
        share_t5_encoder: bool = False,
        length_normalize: bool = False,
        place_width: int = 0,
        place_layout: Literal["patch", "row_col"] = "patch",
        place_text: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        if place_width < 0:
            raise ValueError(f"place_width must be >= 0, got {place_width}")
        self.place = None
        self.grid: tuple[int, int] | None = None
        if place_width or place_text:
            grid = getattr(getattr(encoder, "backbone", None), "grid_size", None)
            if grid is None:
                raise ValueError(
                    "place_width and place_text need an encoder with a backbone patch grid "
                    "(backbone.grid_size)"
                )
            self.grid = (int(grid[0]), int(grid[1]))
        if place_width:
            self.place = PlaceEmbedding(grid=self.grid, width=place_width, layout=place_layout)
        self.language_model = language_model
        self.place_words = None
        if place_text:
            self.place_words = PlaceWords(grid=self.grid, word_ids=language_model.word_ids(QUADRANT_WORDS))
        self.projector = build_projector(
            projector, in_dim=int(encoder.width) + place_width, out_dim=language_model.hidden_size
        )
        self.length_normalize = length_normalize
        if share_t5_encoder:
            self._share_t5_encoder()
        self.frozen_groups = sorted(set(freeze or []))
        groups = self._all_groups()
        unknown = [g for g in self.frozen_groups if g not in groups or g == "language_model"]
        if unknown:
            raise ValueError(
                f"cannot freeze {unknown}: known groups are {sorted(set(groups) - {'language_model'})} "
                "(the language model is frozen through language_model.finetune=frozen)"
            )
        for name in self.frozen_groups:
            for p in groups[name]:
                p.requires_grad_(False)

    # ------------------------------------------------------------------ structure
    def _share_t5_encoder(self) -> None:
        from transformers import T5EncoderModel

        if not self.language_model.is_encoder_decoder:
            raise ValueError("share_t5_encoder needs a T5 (encoder-decoder) language model")
        text_models = [m for m in self.encoder.modules() if isinstance(m, T5EncoderModel)]
        if len(text_models) != 1:
            raise ValueError(
                f"share_t5_encoder needs one T5EncoderModel inside the encoder, found {len(text_models)}"
            )
        text_t5 = text_models[0]
        lm_stack = self.language_model.t5_encoder()
        if text_t5.config.d_model != self.language_model.base_model.config.d_model:
            raise ValueError(
                f"cannot share T5 encoders of different widths: text {text_t5.config.d_model}, "
                f"LM {self.language_model.base_model.config.d_model}"
            )
        # Public module assignment: the text side now runs the LM's own encoder stack and embeddings.
        text_t5.encoder = lm_stack
        text_t5.shared = self.language_model.base_model.get_input_embeddings()
        log.info("vision-side T5 text encoder now shares the LM's encoder stack")

    def _all_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {name: list(params) for name, params in self.encoder.parameter_groups().items()}
        groups["projector"] = [
            *self.projector.parameters(),
            *(self.place.parameters() if self.place is not None else []),
        ]
        seen = {id(p) for params in groups.values() for p in params}
        # With a shared T5 encoder, the LM's parameters may already sit in the text-encoder group.
        groups["language_model"] = [p for p in self.language_model.parameters() if id(p) not in seen]
        return groups

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group (encoder groups, ``projector``, ``language_model``)."""
        out = {}
        for name, params in self._all_groups().items():
            trainable = [p for p in params if p.requires_grad]
            if trainable:
                out[name] = trainable
        return out

    def reloadable_frozen_names(self) -> set[str]:
        """Names of frozen parameters that construction reloads from a pretrained source.

        These are what a checkpoint may leave out: the pretrained LM's frozen weights (all of them,
        or the base weights under LoRA/DoRA), the encoder's frozen ``text_encoder`` (always loaded
        by name or path), and a frozen :class:`VisionBackbone` whose weights came from a library
        tag or a file (its ``weights_source``). Frozen weights with a random initialisation are
        never in this set, so they are always saved.
        """
        pretrained: set[int] = set()
        if self.language_model.from_pretrained:
            pretrained |= {id(p) for p in self.language_model.parameters()}
        text_encoder = getattr(self.encoder, "text_encoder", None)
        if isinstance(text_encoder, nn.Module):
            pretrained |= {id(p) for p in text_encoder.parameters()}
        backbone = getattr(self.encoder, "backbone", None)
        if isinstance(backbone, VisionBackbone) and backbone.weights_source is not None:
            pretrained |= {id(p) for p in backbone.parameters()}
        return {
            name
            for name, p in self.named_parameters(remove_duplicate=False)
            if not p.requires_grad and id(p) in pretrained
        }

    # ------------------------------------------------------------------ forward paths
    def encode(self, images: Tensor, instructions: Sequence[str]) -> tuple[Tensor, Any]:
        """Visual tokens in LM width (B, M, H) and the encoder's full output.

        ``images`` must be finite floats in [0, 1] (:func:`~textvision.vision.backbone.check_pixels`;
        half/double are cast to the encoder's dtype).
        """
        if isinstance(getattr(self.encoder, "backbone", None), VisionBackbone):
            # the backbone checks (and casts) the pixels itself, once, before its patch embedding
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        else:
            weight = next((p for p in self.encoder.parameters() if p.is_floating_point()), None)
            images = check_pixels(images, dtype=None if weight is None else weight.dtype)
        if len(instructions) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(instructions)} instructions")
        out = self.encoder(images, list(instructions))
        tokens = out.tokens
        places = None if self.grid is None else self.token_places(out, tokens.shape[:2])
        if self.place is not None:
            tokens = torch.cat([tokens, self.place(places)], dim=-1)
        visual = self.projector(tokens)
        if self.place_words is not None:
            visual = self.place_words(visual, places, embed=self.language_model.embed)
        return visual, out

    def token_places(self, out: Any, shape: tuple[int, int]) -> Tensor:
        """``(B, M)`` place ids of the encoder's output tokens (:func:`~textvision.vlm.place.place_ids`)."""
        if self.grid is None:
            raise ValueError("token_places needs place_width or place_text (a backbone patch grid)")
        batch, length = shape
        return place_ids(
            out.kept_indices,
            num_prefix_tokens=int(self.encoder.num_prefix_tokens),
            num_patches=self.grid[0] * self.grid[1],
            batch=batch,
            length=length,
            device=out.tokens.device,
        )

    def loss(
        self,
        images: Tensor,
        instructions: Sequence[str],
        prompts: Sequence[str],
        answers: Sequence[str],
        options: Sequence[Sequence[str]] | None = None,
    ) -> Tensor:
        """The LM's training loss (:meth:`LanguageModel.loss`: answer cross-entropy, plus its option
        term when ``options`` are given and its ``option_loss_weight`` is set)."""
        visual, _ = self.encode(images, instructions)
        return self.language_model.loss(visual, prompts, answers, options)

    def forward(
        self, images: Tensor, instructions: Sequence[str], prompts: Sequence[str], answers: Sequence[str]
    ) -> Tensor:
        return self.loss(images, instructions, prompts, answers)

    def score_options(
        self, images: Tensor, instructions: list[str], prompts: list[str], options: list[list[str]]
    ) -> Tensor:
        """(B, max_options) log-likelihoods, ``-inf`` where an item has fewer options (eval protocol)."""
        visual, _ = self.encode(images, instructions)
        return self.language_model.score(visual, prompts, options, length_normalize=self.length_normalize)

    def generate(
        self, images: Tensor, instructions: list[str], prompts: list[str], *, max_new_tokens: int = 16
    ) -> list[str]:
        """Greedy replies without the prompt (eval protocol)."""
        visual, _ = self.encode(images, instructions)
        return self.language_model.generate(visual, prompts, max_new_tokens=max_new_tokens)
