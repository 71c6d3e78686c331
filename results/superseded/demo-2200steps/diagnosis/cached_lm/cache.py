"""Cache the demo encoder's outputs (untrained fusion = frozen pretrained ViT + zero-shot scorer)."""
import sys, torch
from textvision.train.cli import TextVisionCLI
n_train = int(sys.argv[1]); n_val = int(sys.argv[2])
cli = TextVisionCLI(args=["-c","configs/demo.yaml","--trainer.logger","false","--trainer.callbacks","[]"], run=False)
model, dm = cli.model, cli.datamodule
dm.setup("fit")
vlm = model.vlm.eval()
def dump(loader, n):
    rec = {"tokens": [], "places": [], "prompt": [], "answer": [], "options": [], "category": [], "id": [], "label": [], "target": [], "kept": []}
    for i, batch in enumerate(loader):
        if i >= n: break
        with torch.no_grad():
            out = vlm.encoder(batch["image"], batch["instruction"])
        rec["tokens"].append(out.tokens); rec["places"].append(vlm.token_places(out, out.tokens.shape[:2]))
        rec["kept"].append(out.kept_indices); rec["target"].append(batch["target_patch"]); rec["label"].append(batch["label"])
        for k in ("prompt", "answer", "options", "category", "id"): rec[k] += list(batch[k])
        if i % 50 == 0: print(i, flush=True)
    for k in ("tokens", "places", "kept", "target", "label"): rec[k] = torch.cat(rec[k])
    return rec
val = dm.val_dataloader()
vals = val if isinstance(val, (list, tuple)) else [val]
torch.save({"train": dump(dm.train_dataloader(), n_train), "val": [dump(v, n_val) for v in vals]}, "cache.pt")
