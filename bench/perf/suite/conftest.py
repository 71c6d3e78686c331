"""pytest-benchmark suite for the CPU paths (small shapes), kept out of the default test run.

    pytest bench/perf/suite --benchmark-autosave                 # save a baseline (.benchmarks/)
    pytest bench/perf/suite --benchmark-compare                  # compare against the latest saved one
    pytest bench/perf/suite --benchmark-compare=0001 --benchmark-compare-fail=mean:10%

The default ``pytest`` run collects only ``tests/`` (``testpaths``), so nothing here runs in CI;
``--benchmark-disable`` runs every benchmark body once as a smoke test. Shapes are those of the
CPU demo (64 px, 8 px patches, width 128, 4 blocks; T = 16 text tokens) so the numbers track what
the demo and the ablation pay.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
