"""Backend resolution for the attention kernels: ``auto`` / ``triton`` / ``torch``.

``TRITON_INTERPRET=1`` must be set **before** ``textvision.kernels`` is imported: ``@triton.jit``
reads it when the kernels are defined. With it, the Triton kernels run on CPU tensors through
Triton's interpreter (how CI tests them); without it they need CUDA tensors.
"""

from __future__ import annotations

import collections
import logging
import os

import torch

from .input_checks import check_triton_support

__all__ = ["BACKENDS", "FALLBACKS", "INTERPRETED", "resolve_backend", "use_triton"]

logger = logging.getLogger(__name__)
# How often `auto` fell back to the reference on CUDA tensors, per reason (process-wide).
FALLBACKS: collections.Counter[str] = collections.Counter()

BACKENDS = ("auto", "triton", "torch")

# Captured at import, i.e. when the kernels below are decorated with @triton.jit.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def resolve_backend(backend: str, device: torch.device) -> str:
    """Return ``"triton"`` or ``"torch"`` for the requested ``backend`` and the inputs' device.

    ``"auto"`` picks Triton for CUDA tensors and the PyTorch reference otherwise (CPU tensors, even
    under the interpreter: it is orders of magnitude slower than the reference).
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(
            f"backend='triton' got tensors on {device}; the Triton kernels need CUDA tensors, or "
            "TRITON_INTERPRET=1 set before `textvision.kernels` is imported to run them on the CPU"
        )
    return "triton"


def use_triton(backend: str, tensors: dict[str, torch.Tensor]) -> bool:
    """Whether to run the Triton kernels for these (already validated) inputs.

    With ``backend="triton"`` an unsupported dtype or head dim raises (naming the argument); with
    ``"auto"`` it falls back to the PyTorch reference, so that e.g. a float64 model or a head dim
    above 128 still runs on the GPU, slowly, instead of failing. Every such fallback is counted
    in :data:`FALLBACKS` and logged: a warning the first time for each reason, then at debug
    level (a training loop would otherwise log it at every block of every step).
    """
    first = next(iter(tensors.values()))
    if resolve_backend(backend, first.device) != "triton":
        return False
    try:
        for name, x in tensors.items():
            check_triton_support(name, x)
    except (TypeError, ValueError) as error:
        if backend == "triton":
            raise
        reason = str(error)
        FALLBACKS[reason] += 1
        level = logging.WARNING if FALLBACKS[reason] == 1 else logging.DEBUG
        logger.log(level, "backend='auto' falls back to the PyTorch reference on %s: %s (%d calls so far)",
                   first.device, reason, FALLBACKS[reason])
        return False
    return True
