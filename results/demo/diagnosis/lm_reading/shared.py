"""Throwaway: LM pretrained on oracle object tokens given in the ViT's text-aligned space (the
caption embeddings through the alignment text head), then moved to the real patch tokens through
the alignment patch head.  phase A: --phase A --out X.pt ; phase B: --phase B --init X.pt"""
import argparse, json, math, random, sys, time, torch
from collections import defaultdict
from torch import nn
sys.path.insert(0, __import__("os").path.dirname(__file__))
import mcloss, oracle
from safetensors.torch import load_file
from textvision.train.cli import TextVisionCLI
from textvision.pretrain.alignment import DenseAlignmentHeads, mean_pool
from textvision.pretrain.cache import alignment_heads_path
from textvision.pretrain.captions import CaptionBank

p = argparse.ArgumentParser()
p.add_argument("--phase", required=True); p.add_argument("--steps", type=int, default=1000)
p.add_argument("--lr", type=float, default=1e-3); p.add_argument("--mc", type=float, default=1.0)
p.add_argument("--seed", type=int, default=0); p.add_argument("--eval_every", type=int, default=250)
p.add_argument("--first", type=float, default=0.5); p.add_argument("--out", default="")
p.add_argument("--init", default=""); p.add_argument("--lm_lr", type=float, default=1.0)
p.add_argument("--noise", type=float, default=0.0)
a = p.parse_args()
torch.manual_seed(a.seed); random.seed(a.seed)
cli = TextVisionCLI(args=["-c", "configs/demo.yaml", "--trainer.logger", "false", "--trainer.callbacks", "[]"], run=False)
vlm = cli.model.vlm
lm = vlm.language_model
H = lm.hidden_size
state = load_file(str(alignment_heads_path("configs/pretrain/demo_vit.yaml")))
heads = DenseAlignmentHeads(vision_width=128, text_width=384, dim=state["patch_proj.weight"].shape[0])
heads.load_state_dict(state); heads.requires_grad_(False)
D = state["patch_proj.weight"].shape[0]
proj = nn.Sequential(nn.Linear(D, H), nn.GELU(), nn.Linear(H, H))
place = nn.Embedding(65, H); nn.init.normal_(place.weight, std=0.5)
if a.init:
    s = torch.load(a.init); lm.load_state_dict(s["lm"]); proj.load_state_dict(s["proj"]); place.load_state_dict(s["place"])

def run_eval(batches):
    lm.eval(); by = defaultdict(list)
    with torch.no_grad():
        for vis, prompts, options, labels, names in batches():
            sc = lm.score(vis, prompts, options)
            for n, pr, l in zip(names, sc.argmax(-1).tolist(), labels): by[n].append(int(pr == l))
    lm.train(); return {k: round(sum(v) / len(v), 3) for k, v in sorted(by.items())}

if a.phase == "A":
    bank = CaptionBank(oracle.scene)
    te = vlm.encoder.text_encoder
    with torch.no_grad():
        feats = []
        for i in range(0, len(bank), 256):
            f = te(bank.texts[i:i + 256]); feats.append(mean_pool(f.hidden, f.mask))
        bank_emb = heads.embed_text(torch.cat(feats))  # (C, D)
    print("bank", bank_emb.shape)
    G = oracle.scene.grid
    def oracle_vec(objs):
        # objs: list of (shape, colour, turn, cell)
        t = torch.tensor(objs)
        rows, cols = t[:, 3] // G, t[:, 3] % G
        attrs = {"shape": t[:, 0], "colour": t[:, 1], "turn": t[:, 2], "quadrant": 2 * (rows >= G // 2).long() + (cols >= G // 2).long(),
                 "col_half": (cols >= G // 2).long(), "row_half": (rows >= G // 2).long(), "present": torch.ones(len(objs), dtype=torch.bool)}
        fits = bank.fits(attrs).float()  # (K, C)
        return nn.functional.normalize(fits @ bank_emb / fits.sum(-1, keepdim=True), dim=-1)
    def items_visual(items, rng):
        vecs, cells = [], []
        for it in items:
            o = it["raw"]; t = it["target"]
            ov = oracle_vec(o)
            others = [k for k in range(len(o)) if k != t]; rng.shuffle(others)
            keep = (([t] if t >= 0 else []) + others)[:8]
            if t >= 0 and rng.random() >= a.first: rng.shuffle(keep)
            cls = nn.functional.normalize(ov.mean(0), dim=-1)
            vecs.append(torch.cat([cls[None], ov[keep]])); cells.append(torch.tensor([0] + [o[k][3] + 1 for k in keep]))
        v = torch.stack(vecs)
        if a.noise: v = nn.functional.normalize(v + a.noise * torch.randn_like(v) / math.sqrt(D), dim=-1)
        return proj(v) + place(torch.stack(cells))
    val = oracle.batch(10**6, 512, seed=11, split="val")
    def val_batches():
        rng = random.Random(1)
        for i in range(0, len(val), 64):
            its = val[i:i + 64]
            yield items_visual(its, rng), [x["prompt"] for x in its], [x["options"] for x in its], [x["label"] for x in its], [x["name"] + "/" + x["category"] for x in its]
    def train_batch(step, rng):
        its = oracle.batch(step * 32, 32, seed=a.seed + 100)
        return items_visual(its, rng), [x["prompt"] for x in its], [x["answer"] for x in its], [x["options"] for x in its]
else:
    C = torch.load("cache.pt", weights_only=False)
    tr = C["train"]; N = tr["tokens"].shape[0]
    def vis_of(tok, pl): return proj(heads.embed_patches(tok)) + place(pl)
    def val_batches():
        for v in C["val"]:
            name = v["id"][0].split("-")[0]
            for i in range(0, v["tokens"].shape[0], 64):
                yield (vis_of(v["tokens"][i:i + 64], v["places"][i:i + 64]), v["prompt"][i:i + 64], v["options"][i:i + 64],
                       v["label"][i:i + 64].tolist(), [name + "/" + c for c in v["category"][i:i + 64]])
    g = torch.Generator().manual_seed(a.seed)
    def train_batch(step, rng):
        idx = torch.randint(N, (32,), generator=g)
        return (vis_of(tr["tokens"][idx], tr["places"][idx]), [tr["prompt"][i] for i in idx], [tr["answer"][i] for i in idx],
                [tr["options"][i] for i in idx])

params = [*lm.parameters(), *proj.parameters(), *place.parameters()]
opt = torch.optim.AdamW([{"params": list(lm.parameters()), "lr": a.lr * a.lm_lr}, {"params": [*proj.parameters(), *place.parameters()]}], lr=a.lr, weight_decay=0.01)
warm = int(0.05 * a.steps)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / max(1, warm)) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1, s / a.steps)))))
print(0, json.dumps(run_eval(val_batches)), flush=True)
rng = random.Random(a.seed); t0 = time.time()
for step in range(1, a.steps + 1):
    vis, prompts, answers, options = train_batch(step, rng)
    l1, l2 = mcloss.losses(lm, vis, prompts, answers, options); loss = l1 + a.mc * l2
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step(); sched.step()
    if step % a.eval_every == 0 or step == a.steps:
        print(step, f"{time.time() - t0:.0f}s loss {loss.item():.3f}", json.dumps(run_eval(val_batches)), flush=True)
if a.out:
    torch.save({"lm": lm.state_dict(), "proj": proj.state_dict(), "place": place.state_dict()}, a.out)
