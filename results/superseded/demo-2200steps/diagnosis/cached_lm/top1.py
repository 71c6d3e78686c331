import sys, torch
from collections import defaultdict
from textvision.train.cli import TextVisionCLI
cli = TextVisionCLI(args=["-c","configs/demo.yaml","--trainer.logger","false","--trainer.callbacks","[]"], run=False)
model, dm = cli.model, cli.datamodule
if len(sys.argv) > 1:
    sd = torch.load(sys.argv[1], weights_only=False, map_location="cpu")["state_dict"]
    print(model.load_state_dict(sd, strict=False).unexpected_keys)
dm.setup("fit"); vlm = model.vlm.eval()
for v in dm.val_dataloader():
    by = defaultdict(lambda: [0, 0, 0])
    for batch in v:
        with torch.no_grad(): out = vlm.encoder(batch["image"], batch["instruction"])
        for j, c in enumerate(batch["category"]):
            t = int(batch["target_patch"][j])
            if t < 0: continue
            k = out.kept_indices[j].tolist()
            by[c][0] += k[0] == t; by[c][1] += t in k[:2]; by[c][2] += 1
    print(batch["id"][0].split("-")[0], {c: (round(a/n, 3), round(b/n, 3), n) for c, (a, b, n) in by.items()})
