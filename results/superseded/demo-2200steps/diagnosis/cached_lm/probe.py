import torch, torch.nn.functional as F
C = torch.load("cache.pt", weights_only=False)
tr = C["train"]; va = C["val"][0]
def sel(d, cat):
    idx = [i for i, (c, id_) in enumerate(zip(d["category"], d["id"])) if c == cat and id_.startswith("magnifier")]
    return torch.tensor(idx)
for cat in ("colour", "shape", "position"):
    vocab = sorted({a for i in sel(tr, cat).tolist() for a in [tr["answer"][i]]})
    vi = {w: j for j, w in enumerate(vocab)}
    def xy(d, place=False):
        idx = sel(d, cat)
        right = (d["kept"][idx, 0] == d["target"][idx])
        X = d["tokens"][idx, 1]
        if place: X = F.one_hot(d["places"][idx, 1], 65).float()
        y = torch.tensor([vi.get(d["answer"][i], 0) for i in idx.tolist()])
        return X, y, right
    for place in (False, True):
        X, y, r = xy(tr, place); Xv, yv, rv = xy(va, place)
        W = torch.zeros(X.shape[1], len(vocab), requires_grad=True); b = torch.zeros(len(vocab), requires_grad=True)
        opt = torch.optim.Adam([W, b], lr=1e-2)
        mu, sd = X.mean(0), X.std(0) + 1e-6
        for _ in range(500):
            loss = F.cross_entropy(((X - mu) / sd) @ W + b, y); opt.zero_grad(); loss.backward(); opt.step()
        pred = (((Xv - mu) / sd) @ W + b).argmax(-1)
        print(cat, "place" if place else "feat", "top1-is-target", round(r.float().mean().item(), 3),
              "probe acc", round((pred == yv).float().mean().item(), 3), "when top1 right", round((pred == yv)[rv].float().mean().item(), 3), len(vocab))
