"""The text-aware encoder's forward at the demo's size, per fusion variant and pruning setting."""

from __future__ import annotations

import pytest
import torch

from textvision.encoder import TextAwareEncoder
from textvision.vision import demo_vit

BATCH, TEXT_TOKENS, TEXT_DIM = 8, 16, 384  # MiniLM-L6 width; features precomputed (a cache hit)

SETTINGS = {
    "none": dict(fusion="none"),
    "none+cls_attention@8": dict(fusion="none", prune_at=(1,), keep_tokens=8, scorer="cls_attention"),
    "gated_xattn": dict(fusion="gated_xattn"),
    "gated_xattn+text@8": dict(fusion="gated_xattn", prune_at=(1,), keep_tokens=8, scorer="text"),
    "mutual+text@8": dict(fusion="mutual", prune_at=(1,), keep_tokens=8, scorer="text"),
    "film+cls_attention@8": dict(fusion="film", prune_at=(1,), keep_tokens=8, scorer="cls_attention"),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_encoder_forward(benchmark, name):
    backbone = demo_vit(img_size=64, patch_size=8, embed_dim=128, depth=4, num_heads=4)
    encoder = TextAwareEncoder(backbone=backbone, text_dim=TEXT_DIM, backend="torch", **SETTINGS[name]).eval()
    images = torch.rand(BATCH, 3, 64, 64)
    mask = torch.arange(TEXT_TOKENS).expand(BATCH, -1) < torch.randint(4, TEXT_TOKENS + 1, (BATCH, 1))
    features = (torch.randn(BATCH, TEXT_TOKENS, TEXT_DIM), mask)
    with torch.inference_mode():
        out = benchmark(lambda: encoder(images, text_features=features))
    assert out.tokens.shape[1] == encoder.num_tokens()
