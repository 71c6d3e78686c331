"""Throwaway diagnosis: which visual tokens / which parts does the demo LM read? (test-time ablations)"""

import json
import sys

import torch

from textvision.train.cli import TextVisionCLI

ckpt = sys.argv[1]  # usage (repository root): python token_ablations.py CKPT [OUT.json]
cli = TextVisionCLI(
    args=[
        "-c",
        "configs/demo.yaml",
        "--trainer.logger",
        "false",
        "--trainer.callbacks",
        "[]",
        "--trainer.enable_progress_bar",
        "false",
        "--data.init_args.test_size",
        "256",
    ],
    run=False,
)
model = cli.model
mode = {"name": "normal"}
vlm = model.vlm


def place_hook(mod, inp, out):
    if mode["name"] == "shuffle_place":
        return out[torch.randperm(out.shape[0])]
    if mode["name"] == "zero_place":
        return torch.zeros_like(out)


def proj_hook(mod, inp, out):
    # out (B, M, H): M = 1 CLS + 8 kept (score order)
    if mode["name"] == "only_top1":
        keep = torch.zeros(out.shape[1], dtype=torch.bool)
        keep[1] = True
        return out * keep[None, :, None]
    if mode["name"] == "drop_top1":
        keep = torch.ones(out.shape[1], dtype=torch.bool)
        keep[1] = False
        return out * keep[None, :, None]
    if mode["name"] == "drop_cls":
        keep = torch.ones(out.shape[1], dtype=torch.bool)
        keep[0] = False
        return out * keep[None, :, None]


vlm.place.register_forward_hook(place_hook)
vlm.projector.register_forward_hook(proj_hook)
res = {}
for name in ["normal", "zero_place", "shuffle_place", "only_top1", "drop_top1", "drop_cls"]:
    mode["name"] = name
    torch.manual_seed(0)
    cli.trainer.test(model, datamodule=cli.datamodule, ckpt_path=ckpt, verbose=False)
    r = model.eval_results["test"]
    res[name] = {
        s: {"acc": round(m["acc"], 3), **{c: round(v["acc"], 3) for c, v in m.get("by_category", {}).items()}}
        for s, m in r.items()
    }
    print(name, json.dumps(res[name]), flush=True)
json.dump(res, open(sys.argv[2] if len(sys.argv) > 2 else "token_ablations.json", "w"), indent=1)
