"""The text-aware encoder's forward at the demo's size, per fusion variant and pruning setting."""

from __future__ import annotations

import pytest
import torch

from textvision.encoder import TextAwareEncoder
from textvision.fusion import FUSIONS
from textvision.pruning import SCORERS
from textvision.vision import demo_vit

BATCH, TEXT_TOKENS, TEXT_DIM = 8, 16, 384  # MiniLM-L6 width; features precomputed (a cache hit)

# Every registered variant, unpruned and pruned to 8 patches after block 1: by its fusion kernel's
# relevance when it attends to the text, else by a scorer that does not (the classes declare it).
RELEVANCE = next(n for n, c in SCORERS.items() if c.reads_fusion_relevance)
TEXT_BLIND = next(n for n, c in SCORERS.items() if not c.attends_to_text)
SETTINGS: dict[str, dict] = {}
for _name, _cls in sorted(FUSIONS.items()):
    _scorer = RELEVANCE if _cls.attends_to_text else TEXT_BLIND
    SETTINGS[_name] = dict(fusion=_name)
    SETTINGS[f"{_name}+{_scorer}@8"] = dict(fusion=_name, prune_at=(1,), keep_tokens=8, scorer=_scorer)


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
