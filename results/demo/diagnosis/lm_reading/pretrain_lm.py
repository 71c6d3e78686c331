"""Throwaway: pretrain the demo LM on text-only items whose 'visual' tokens are oracle word-embedding means."""
import argparse, json, math, random, time, torch
from collections import defaultdict
from textvision.train.cli import TextVisionCLI
import oracle

import sys; sys.path.insert(0, __import__("os").path.dirname(__file__)); import mcloss
p = argparse.ArgumentParser()
p.add_argument("--mc", type=float, default=0.0)
p.add_argument("--steps", type=int, default=1500); p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--seed", type=int, default=0); p.add_argument("--eval_every", type=int, default=250)
p.add_argument("--first", type=float, default=0.5); p.add_argument("--out", default="lm.pt")
p.add_argument("--bs", type=int, default=32)
a = p.parse_args()
torch.manual_seed(a.seed); random.seed(a.seed)
cli = TextVisionCLI(args=["-c", "configs/demo.yaml", "--trainer.logger", "false", "--trainer.callbacks", "[]"], run=False)
lm = cli.model.vlm.language_model
tok = lm.tokenizer
cache = {}
def wp(word):
    if word not in cache: cache[word] = tok(word, add_special_tokens=False)["input_ids"]
    return cache[word]
QW = {w: w.split() for w in oracle.QUADRANT_WORDS}
G = oracle.scene.grid
def obj_weights(words, cell):
    r, c = cell // G, cell % G
    pos = ["top" if r < G // 2 else "bottom", "left" if c < G // 2 else "right"]
    ws = words + pos; out = []
    for w in ws:
        ids = wp(w)
        out += [(i, 1.0 / (len(ids) * len(ws))) for i in ids]
    return out
def structure(items, rng):
    rows, cols, vals = [], [], []
    for n, it in enumerate(items):
        objs = it["objects"]; t = it["target"]
        others = [k for k in range(len(objs)) if k != t]; rng.shuffle(others)
        keep = (([t] if t >= 0 else []) + others)[:8]
        if t >= 0 and rng.random() >= a.first:
            rng.shuffle(keep)
        for k in range(len(objs)):
            for i, v in obj_weights(*objs[k]):
                rows.append(n * 9); cols.append(i); vals.append(v / len(objs))
        for j, k in enumerate(keep):
            for i, v in obj_weights(*objs[k]):
                rows.append(n * 9 + 1 + j); cols.append(i); vals.append(v)
    return torch.sparse_coo_tensor(torch.tensor([rows, cols]), torch.tensor(vals), (len(items) * 9, len(tok))).coalesce()
def visual(items, rng, W=None):
    E = lm.base_model.get_input_embeddings().weight
    W = structure(items, rng) if W is None else W
    return torch.sparse.mm(W, E).view(len(items), 9, -1)
params = list(lm.parameters())
opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
warm = int(0.05 * a.steps)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s+1)/max(1,warm)) * (0.1 + 0.9*0.5*(1+math.cos(math.pi*min(1,s/a.steps)))))
val = oracle.batch(10**6, 512, seed=11, split="val")
VW = [structure(val[i:i+64], random.Random(i)) for i in range(0, len(val), 64)]
def evaluate():
    lm.eval(); by = defaultdict(list)
    with torch.no_grad():
        for i in range(0, len(val), 64):
            its = val[i:i+64]
            s = lm.score(visual(its, None, VW[i // 64]), [x["prompt"] for x in its], [x["options"] for x in its])
            for x, pr in zip(its, s.argmax(-1).tolist()): by[x["name"] + "/" + x["category"]].append(int(pr == x["label"]))
    lm.train(); return {k: round(sum(v)/len(v), 3) for k, v in sorted(by.items())}
rng = random.Random(a.seed); t0 = time.time()
for step in range(1, a.steps + 1):
    its = oracle.batch(step * a.bs, a.bs, seed=a.seed + 100)
    l1, l2 = mcloss.losses(lm, visual(its, rng), [x["prompt"] for x in its], [x["answer"] for x in its], [x["options"] for x in its]); loss = l1 + a.mc * l2
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step(); sched.step()
    if step % a.eval_every == 0 or step == a.steps:
        print(step, f"{time.time()-t0:.0f}s loss {loss.item():.3f}", json.dumps(evaluate()), flush=True)
torch.save(lm.state_dict(), a.out)
