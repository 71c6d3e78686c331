"""The fusion interface, the registry of short names, and the factory type the encoder takes.

A fusion variant is one module per ViT block, called in place of the block's attention sub-layer:

    out = fusion(x, text, text_mask, block=view, need_relevance=False)   # -> FusionOutput
    x = view.mlp(out.x)

It runs the block's pretrained self-attention (``view.attention(x)``) and adds its own text
interaction. ``FusionOutput`` carries the tokens, the (possibly updated) text stream — only
``mutual`` changes it — and, when asked and the variant attends to the text, the kernels'
instruction relevance over ``x``'s tokens.

Every variant is zero-initialised through an explicit gate parameter so that at step 0 the block
computes exactly the plain backbone block (bitwise).

The encoder builds one module per block from a :class:`FusionFactory`: anything called as
``factory(dim=..., num_heads=..., backend=...)`` that returns a :class:`Fusion` — a ``Fusion``
subclass itself, a ``functools.partial`` of one with its own settings, or what jsonargparse makes
of ``{class_path: ..., init_args: {...}}`` in YAML (the init args minus those three). The
built-in variants also have short names (``@register_fusion("name")``), which YAML may write
instead of a class path.

Adding a variant: a ``Fusion`` subclass with ``forward``, ``flops`` (what the cost model counts)
and a zero-init gate, in one file, and a YAML naming it. Inside the package the file goes in
``textvision/fusion/`` with ``@register_fusion("name")`` (the package imports every module there,
and the tests run over every registered class); outside it, the file is any module on the Python
path and the YAML names it by ``class_path``.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple, Protocol

import torch
from torch import nn

from textvision.vision.backbone import BlockView

__all__ = [
    "FUSIONS",
    "Fusion",
    "FusionFactory",
    "FusionFlops",
    "FusionOutput",
    "attention_flops",
    "register_fusion",
    "resolve_fusion",
]


class FusionOutput(NamedTuple):
    """``x (B, L, D)``, ``text (B, T, D)``, ``relevance (B, L)`` float32 or None."""

    x: torch.Tensor
    text: torch.Tensor
    relevance: torch.Tensor | None = None


class FusionFlops(NamedTuple):
    """FLOPs a variant adds to one block's forward, beyond the plain block.

    ``matmul``: its projections (``2·M·K·N`` per ``(M, K) @ (K, N)``); ``attention``: its
    attention cores (``QKᵀ`` and ``PV``, :func:`attention_flops`). Softmax, norms and
    element-wise gates are not counted (bandwidth, not FLOPs).
    """

    matmul: float
    attention: float

    @property
    def total(self) -> float:
        return self.matmul + self.attention


def attention_flops(*, batch: int, heads: int, n_query: int, n_key: int, head_dim: int) -> float:
    """Non-causal attention forward: ``4·B·H·Nq·Nk·D`` FLOPs (``QKᵀ`` and ``PV``)."""
    return 4.0 * batch * heads * n_query * n_key * head_dim


class Fusion(nn.Module):
    """Base class of the fusion variants.

    Attributes:
        attends_to_text: the variant computes attention between patches and text, so it can
            return the kernels' relevance (used by text-guided pruning).
        backend: kernel backend passed to :mod:`textvision.kernels` (``auto``/``triton``/``torch``).

    Subclasses take ``dim``, ``num_heads`` and ``backend`` (keyword-only; the encoder supplies
    them per block) plus their own settings, and define :meth:`forward` and :meth:`flops`.
    """

    attends_to_text: ClassVar[bool] = False

    def __init__(self, *, dim: int, num_heads: int, backend: str = "auto") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.dim = dim
        self.num_heads = num_heads
        self.backend = backend

    def gates(self) -> list[nn.Parameter]:
        """The zero-initialised gate parameters."""
        return [p for name, p in self.named_parameters() if name.split(".")[-1].endswith("gate")]

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        *,
        block: BlockView,
        need_relevance: bool = False,
    ) -> FusionOutput:
        """Args: ``x (B, L, D)`` block input, ``text (B, T, D)``, ``text_mask (B, T)`` bool."""
        raise NotImplementedError

    @classmethod
    def flops(cls, *, batch: int, tokens: int, text_tokens: int, dim: int, num_heads: int) -> FusionFlops:
        """FLOPs this variant adds to one block's forward over ``tokens`` image tokens (CLS
        included) and ``text_tokens`` text tokens of width ``dim`` (read by ``bench/perf/cost_model.py``)."""
        raise NotImplementedError(f"{cls.__qualname__} does not define its FLOP count (classmethod flops)")


class FusionFactory(Protocol):
    """What the encoder calls once per block; jsonargparse builds it from ``class_path`` +
    ``init_args`` (the init args other than these three)."""

    def __call__(self, *, dim: int, num_heads: int, backend: str) -> Fusion: ...


#: short name -> built-in variant; filled by :func:`register_fusion` when the package imports
#: its fusion modules (``textvision.fusion`` imports every one of them)
FUSIONS: dict[str, type[Fusion]] = {}


def register_fusion(name: str):
    """Class decorator giving a :class:`Fusion` subclass the short name ``name`` in :data:`FUSIONS`."""

    def add(cls: type[Fusion]) -> type[Fusion]:
        if name in FUSIONS:
            raise KeyError(f"fusion {name!r} is already registered ({FUSIONS[name].__name__})")
        if not (isinstance(cls, type) and issubclass(cls, Fusion)):
            raise TypeError(f"register_fusion({name!r}) takes a Fusion subclass, got {cls!r}")
        FUSIONS[name] = cls
        return cls

    return add


def resolve_fusion(fusion: str | FusionFactory) -> FusionFactory:
    """A short name's registered class, or ``fusion`` itself when it is already a factory.

    Raises:
        ValueError: an unknown short name (the message lists the registered ones).
    """
    if isinstance(fusion, str):
        if fusion not in FUSIONS:
            raise ValueError(
                f"unknown fusion {fusion!r}; registered: {sorted(FUSIONS)} "
                "(or give a Fusion subclass by class_path)"
            )
        return FUSIONS[fusion]
    if not callable(fusion):
        raise TypeError(f"fusion must be a registered name or a Fusion factory, got {fusion!r}")
    return fusion
