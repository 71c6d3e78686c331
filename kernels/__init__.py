"""Triton attention kernels (cross-attention, modality-mutual attention) with PyTorch references.

Set ``TRITON_INTERPRET=1`` before importing this package to run the Triton kernels on the CPU
through Triton's interpreter (``@triton.jit`` reads it when the kernels are defined).

Each kernel has one return type whatever the backend and options, a NamedTuple:
``cross_attention(...) -> CrossAttentionOutput(o, rel)`` and
``mutual_attention(...) -> MutualAttentionOutput(o_img, o_txt, rel)``, ``rel`` None unless
``return_relevance=True``.
"""

from .cross_attention import cross_attention
from .cross_attention_reference import cross_attention_reference
from .mutual_attention import mutual_attention
from .mutual_attention_reference import mutual_attention_reference
from .outputs import CrossAttentionOutput, MutualAttentionOutput

__all__ = [
    "CrossAttentionOutput",
    "MutualAttentionOutput",
    "cross_attention",
    "cross_attention_reference",
    "mutual_attention",
    "mutual_attention_reference",
]
