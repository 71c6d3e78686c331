"""Fixtures for the kernel tests (TRITON_INTERPRET=1 is set by the top-level conftest)."""

from __future__ import annotations

import pytest
import torch

from textvision.kernels import output_buffers


@pytest.fixture(autouse=True)
def nan_poisoned_buffers(monkeypatch):
    """Every buffer a Triton launcher allocates starts as NaN: an element a kernel forgets to
    write shows up as NaN in the result instead of as plausible leftover memory."""

    def nan_empty_strided(shape, stride, *, dtype, device):
        buffer = torch.empty_strided(tuple(shape), tuple(stride), dtype=dtype, device=device)
        return buffer.fill_(float("nan"))

    monkeypatch.setattr(output_buffers, "empty_strided", nan_empty_strided)
