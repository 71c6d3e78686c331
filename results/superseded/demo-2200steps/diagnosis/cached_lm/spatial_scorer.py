import torch, math
from torch import nn
from textvision.train.cli import TextVisionCLI
cli = TextVisionCLI(args=["-c","configs/demo.yaml","--trainer.logger","false","--trainer.callbacks","[]"], run=False)
model, dm = cli.model, cli.datamodule
dm.setup("fit"); enc = model.vlm.encoder.eval()
sc = [m for m in enc.modules() if type(m).__name__ == "TextSimilarityScorer"][0]
cap = {}
sc.register_forward_hook(lambda m, inp, out: cap.update(p=inp[0].detach(), s=inp[1].detach()))
def run(loader, n):
    r = {"p": [], "s": [], "t": [], "c": []}
    for i, b in enumerate(loader):
        if i >= n: break
        with torch.no_grad(): enc(b["image"], b["instruction"])
        r["p"].append(sc.heads.embed_patches(cap["p"]).detach()); r["s"].append(cap["s"]); r["t"].append(b["target_patch"]); r["c"] += [f"{i_.split('-')[0][:3]}/{c}" for i_, c in zip(b["id"], b["category"])]
    return {k: (torch.cat(v) if k != "c" else v) for k, v in r.items()}
tr = run(dm.train_dataloader(), 300); va = run(dm.val_dataloader()[0], 4); va2 = run(dm.val_dataloader()[1], 4)
for k in ("c",): va[k] += va2[k]
for k in ("p", "s", "t"): va[k] = torch.cat([va[k], va2[k]])
class Spatial(nn.Module):
    def __init__(s, tw, dim=64, grid=8):
        super().__init__(); s.q = nn.Linear(tw, dim); nn.init.zeros_(s.q.weight); nn.init.zeros_(s.q.bias)
        s.row = nn.Parameter(torch.randn(grid, dim) / math.sqrt(dim)); s.col = nn.Parameter(torch.randn(grid, dim) / math.sqrt(dim))
    def forward(s, sent):
        pos = (s.row[:, None] + s.col[None]).flatten(0, 1)  # (64, dim)
        return s.q(sent) @ pos.T
sp = Spatial(tr["s"].shape[1]); heads = sc.heads
def logits(d, idx, use_sp=True):
    text = heads.embed_text(d["s"][idx]); cos = torch.einsum("bd,bnd->bn", text, d["p"][idx]) * heads.log_scale.exp()
    return cos + (sp(d["s"][idx]) if use_sp else 0)
def top1(d, use_sp=True):
    from collections import defaultdict
    by = defaultdict(list)
    with torch.no_grad():
        pr = logits(d, torch.arange(len(d["t"])), use_sp).argmax(-1)
    for j, c in enumerate(d["c"]):
        if d["t"][j] >= 0: by[c].append(int(pr[j] == d["t"][j]))
    return {c: round(sum(v)/len(v), 3) for c, v in sorted(by.items())}
print("zero-shot", top1(va, False))
for lr, steps in ((1e-3, 1500),):
    opt = torch.optim.Adam(sp.parameters(), lr=lr); N = len(tr["t"]); g = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        idx = torch.randint(N, (32,), generator=g); idx = idx[tr["t"][idx] >= 0]
        loss = nn.functional.cross_entropy(logits(tr, idx), tr["t"][idx]); opt.zero_grad(); loss.backward(); opt.step()
        if step in (250, 500, 1000, 1500): print(lr, step, round(loss.item(), 3), top1(va), flush=True)
