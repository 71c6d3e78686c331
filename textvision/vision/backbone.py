"""What the text-aware encoder needs from a Vision Transformer, independent of the library.

A :class:`VisionBackbone` owns the library's own model object (``self.model``: a timm
``VisionTransformer`` or an open_clip ``VisionTransformer``), so parameter names stay exactly
the library's (``backbone.model.blocks.3.attn.qkv.weight``) and checkpoints saved by the library
load unchanged. It adds what the fused encoder needs and the libraries do not expose as one
uniform surface:

- :meth:`VisionBackbone.embed`: pixel normalisation with the model's mean/std, patch embedding,
  prefix (CLS / register) tokens and the position embedding, resampled for other resolutions;
- :meth:`VisionBackbone.block`: a :class:`BlockView` per transformer block that runs the block's
  attention and MLP sub-layers separately (fusion goes in between) and exposes the attention's
  q/k/v projections (for modality-mutual attention and CLS-attention scoring);
- :meth:`VisionBackbone.final_norm` and :meth:`VisionBackbone.load_checkpoint` with a
  :class:`LoadReport`.

Block views are plain objects created on demand, not sub-modules, so no parameter is registered
twice.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "BlockView",
    "CheckpointMismatchError",
    "LoadReport",
    "VisionBackbone",
    "check_pixels",
    "read_state_dict",
]

_logger = logging.getLogger(__name__)


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not fit the backbone: keys are missing or unexpected (named in the message)."""


@dataclass
class LoadReport:
    """What a checkpoint load did, key by key.

    Attributes:
        source: the file or library tag the weights came from.
        loaded: parameter/buffer names (in the receiving module) that were filled from it.
        new: names that exist only in the text-aware encoder (fusion layers, gates, text adapter)
            and therefore keep their initialisation.
        ignored: checkpoint entries that deliberately have no place in the vision encoder (a
            classifier head, CLIP's text tower), listed so nothing is dropped silently.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        if self.new:
            lines.append(f"new (kept at init) {len(self.new)}: " + ", ".join(self.new))
        if self.ignored:
            lines.append(f"ignored checkpoint entries {len(self.ignored)}: " + ", ".join(self.ignored))
        return "\n".join(lines)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``).

    Unwraps the usual containers (``{"state_dict": ...}``, ``{"model": ...}``) and a DDP
    ``module.`` prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for container in ("state_dict", "model", "module"):
        if isinstance(state, Mapping) and container in state and isinstance(state[container], Mapping):
            state = state[container]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(f"{path} does not hold a flat tensor state dict")
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


#: slack above 1 / below 0 for pixel values (rounding in resizes and half precision)
PIXEL_TOLERANCE = 1e-3


def check_pixels(images: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Check encoder input and return it in ``dtype`` (when given): ``(B, 3, H, W)``, floating
    point, finite, in [0, 1].

    Half, bfloat16 and double images are accepted and cast (values in [0, 1] lose nothing that
    matters); integer images are refused (``uint8`` needs ``/ 255``). The error names the batch
    positions at fault, so a bad file in a batch can be found.

    Raises:
        ValueError: wrong shape, NaN/inf values, or values outside [0, 1] (0–255 floats, or images
            already normalised with a mean and std).
        TypeError: integer or boolean images.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must be (B, 3, H, W) RGB floats in [0, 1], got shape {tuple(images.shape)}; "
            "convert grayscale/RGBA/16-bit images with textvision.data.images.to_rgb_tensor"
        )
    if not images.is_floating_point():
        hint = " (uint8 pixels: images.float() / 255)" if images.dtype == torch.uint8 else ""
        raise TypeError(f"images must be floating point in [0, 1], got {images.dtype}{hint}")
    nonfinite = ~torch.isfinite(images)
    outside = (images < -PIXEL_TOLERANCE) | (images > 1 + PIXEL_TOLERANCE)
    bad = (nonfinite | outside).flatten(1).any(1)
    if bool(bad.any()):  # one device sync per batch
        positions = bad.nonzero().flatten().tolist()
        shown = ", ".join(f"images[{i}]" for i in positions[:8]) + (" …" if len(positions) > 8 else "")
        first = positions[0]
        count = int(nonfinite[first].sum())
        if count:
            raise ValueError(
                f"{shown}: {len(positions)} of {len(images)} images hold NaN/inf pixels "
                f"(images[{first}]: {count} values); check the file or the transform that made them"
            )
        lo, hi = images[first].min().item(), images[first].max().item()
        raise ValueError(
            f"{shown}: pixels must be floats in [0, 1], images[{first}] spans [{lo:.4g}, {hi:.4g}] "
            "(0-255 values need / 255; images already normalised with a mean/std must not be: the "
            "backbone normalises itself)"
        )
    if dtype is not None and images.dtype != dtype:
        images = images.to(dtype)
    return images


class BlockView(ABC):
    """One pretrained transformer block, split into the pieces the fused encoder calls.

    ``attention(x)`` and ``mlp(x)`` each return ``x + residual`` computed with exactly the
    operations of the library's own ``block.forward``, so running ``mlp(attention(x))`` is bitwise
    the library's block. Shapes: ``x`` is ``(B, L, D)``; heads ``(B, H, L, Dh)``.
    """

    num_heads: int
    head_dim: int
    scale: float

    @abstractmethod
    def attention_residual(self, x: torch.Tensor) -> torch.Tensor:
        """The self-attention branch ``(B, L, D)`` (after layer scale / drop path), not yet added."""

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attention_residual(x)

    @abstractmethod
    def attention_plus(self, x: torch.Tensor, extra: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``x + proj(o_self + extra(q))``: the block's attention with extra head outputs added.

        ``q (B, H, L, Dh)`` is the block's own query projection of ``norm1(x)``; ``extra(q)``
        returns head outputs of the same shape, projected together with the self-attention's by
        the pretrained output projection (LLaMA-Adapter's form). With ``extra(q) = 0`` the result
        is bitwise the block's own attention sub-layer.
        """

    @abstractmethod
    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """``x + MLP branch``."""

    @abstractmethod
    def norm_attn(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-attention norm (``norm1`` / ``ln_1``)."""

    @abstractmethod
    def qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project normed tokens ``h (B, L, D)`` to ``q, k, v`` each ``(B, H, L, Dh)``."""

    @abstractmethod
    def attention_output(self, o: torch.Tensor) -> torch.Tensor:
        """Head outputs ``(B, H, L, Dh)`` → residual branch ``(B, L, D)`` (output projection, layer scale)."""


class VisionBackbone(nn.Module, ABC):
    """Base class of the library adapters (:class:`TimmViT`, :class:`OpenClipViT`).

    Subclasses set ``self.model`` and fill the attributes below in ``__init__``.

    Attributes:
        width: token width ``Dv``.
        num_heads: attention heads per block.
        num_prefix_tokens: CLS + register tokens in front of the patches (0 for no-CLS models).
        has_cls_token: whether position 0 is a CLS token.
        patch_size: ``(ph, pw)``.
        grid_size: native patch grid ``(gh, gw)`` of the position embedding.
        weights_source: where the weights came from when construction loads them (a library
            tag such as ``timm:vit_base_patch16_clip_224.openai`` or ``open_clip:ViT-L-14/openai``,
            or a file); ``None`` when they are randomly initialised. Rebuilding from the same
            arguments reloads them, so a frozen backbone with a source may be left out of
            checkpoints (``TextAwareVLM.reloadable_frozen_names``); one without is always saved.
    """

    model: nn.Module
    width: int
    num_heads: int
    num_prefix_tokens: int
    has_cls_token: bool
    patch_size: tuple[int, int]
    grid_size: tuple[int, int]
    load_report: LoadReport | None
    weights_source: str | None

    def _set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        # Non-persistent: pixel statistics are configuration, not weights, and must not appear as
        # unexpected keys when a library checkpoint is loaded.
        self.register_buffer("image_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("image_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), False)

    @property
    def depth(self) -> int:
        return len(self.blocks())

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.grid_size[0] * self.patch_size[0], self.grid_size[1] * self.patch_size[1])

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] → the model's input statistics, in the weights' dtype
        (:func:`check_pixels`: finite floats in [0, 1], or a clear error naming the batch position)."""
        weight = next((p for p in self.model.parameters() if p.is_floating_point()), None)
        images = check_pixels(images, dtype=None if weight is None else weight.dtype)
        return (images - self.image_mean.to(images.dtype)) / self.image_std.to(images.dtype)

    def patch_grid(self, images: torch.Tensor) -> tuple[int, int]:
        height, width = images.shape[-2:]
        ph, pw = self.patch_size
        if height % ph or width % pw:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the patch size {ph}x{pw}; "
                "resize it (textvision.data.images.to_rgb_tensor(image, size=...))"
            )
        return height // ph, width // pw

    @abstractmethod
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] → tokens ``(B, P + N, D)`` ready for block 0."""

    @abstractmethod
    def blocks(self) -> Sequence[nn.Module]:
        """The library's block modules, in order."""

    @abstractmethod
    def block(self, index: int) -> BlockView:
        """A :class:`BlockView` of block ``index``."""

    @abstractmethod
    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The norm after the last block, applied to every token."""

    @abstractmethod
    def _checkpoint_to_model_keys(
        self, state: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Map a library checkpoint onto ``self.model``'s keys; return it and the ignored keys."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The plain backbone: ``(B, 3, H, W)`` → final-normed tokens ``(B, P + N, D)``."""
        x = self.embed(images)
        for index in range(self.depth):
            view = self.block(index)
            x = view.mlp(view.attention(x))
        return self.final_norm(x)

    def load_checkpoint(self, path: str | Path) -> LoadReport:
        """Load library weights from a local file into ``self.model``, strictly.

        Raises:
            CheckpointMismatchError: a backbone tensor is missing from the file, or the file has
                entries that fit nowhere (other than the ones the adapter lists as ignorable).
        """
        state, ignored = self._checkpoint_to_model_keys(read_state_dict(path))
        self._resample_checkpoint_pos_embed(state)
        result = self.model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointMismatchError(
                f"checkpoint {path} does not match {type(self.model).__name__}: "
                f"missing {list(result.missing_keys)}, unexpected {list(result.unexpected_keys)}"
            )
        report = LoadReport(source=str(path), loaded=sorted(state), ignored=sorted(ignored))
        self.load_report = report
        # Loaded after construction: rebuilding from the same arguments would not reload these
        # weights, so they must be saved. (The adapters' ``checkpoint_path`` sets the source.)
        self.weights_source = None
        _logger.info("%s", report)
        return report

    def _resample_checkpoint_pos_embed(self, state: dict[str, torch.Tensor]) -> None:
        """Hook for adapters: adapt a checkpoint's position embedding to this model's grid."""
