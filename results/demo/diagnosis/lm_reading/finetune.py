"""Train projector + place + LM on cached encoder outputs; per-category val accuracy."""
import argparse, json, math, time, torch
from collections import defaultdict
from torch import nn
from textvision.train.cli import TextVisionCLI
import sys; sys.path.insert(0, __import__("os").path.dirname(__file__)); import mcloss
p = argparse.ArgumentParser()
p.add_argument("--mc", type=float, default=0.0)
p.add_argument("--steps", type=int, default=2000); p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--hidden", type=int, default=128); p.add_argument("--layers", type=int, default=2)
p.add_argument("--top1", action="store_true", help="only the first kept token + CLS")
p.add_argument("--no_options", action="store_true", help="strip the Options: list from prompts")
p.add_argument("--place_scale", type=float, default=1.0)
p.add_argument("--ln", action="store_true", help="LayerNorm tokens before concat")
p.add_argument("--seed", type=int, default=0); p.add_argument("--eval_every", type=int, default=500)
p.add_argument("--extra", default="[]"); p.add_argument("--init", default=""); p.add_argument("--whiten", action="store_true"); p.add_argument("--vocab", action="store_true"); p.add_argument("--caption_mix", action="store_true"); p.add_argument("--mix_only", action="store_true"); p.add_argument("--temp", type=float, default=1.0); p.add_argument("--lm_lr", type=float, default=1.0)
p.add_argument("--place_text", action="store_true", help="each patch token preceded by its quadrant words")
p.add_argument("--place_kind", default="learned", choices=["learned", "rowcol", "sincos"])
a = p.parse_args()
torch.manual_seed(a.seed)
extra = json.loads(a.extra)
cli = TextVisionCLI(args=["-c","configs/demo.yaml","--trainer.logger","false","--trainer.callbacks","[]",
    "--model.vlm.init_args.language_model.init_args.config.hidden_size", str(a.hidden),
    "--model.vlm.init_args.language_model.init_args.config.intermediate_size", str(2*a.hidden),
    "--model.vlm.init_args.language_model.init_args.config.num_hidden_layers", str(a.layers), *extra], run=False)
vlm = cli.model.vlm
lm, proj, place = vlm.language_model, vlm.projector, vlm.place
if a.init: print(lm.load_state_dict(torch.load(a.init)))
class RowCol(nn.Module):
    def __init__(self, width, grid=8, kind="rowcol"):
        super().__init__(); self.grid, self.kind, self.width = grid, kind, width
        self.prefix = nn.Parameter(torch.randn(width))
        if kind == "rowcol":
            self.row = nn.Embedding(grid, width); self.col = nn.Embedding(grid, width)
    def forward(self, pl):
        n = (pl - 1).clamp_min(0); r, c = n // self.grid, n % self.grid
        if self.kind == "rowcol":
            e = self.row(r) + self.col(c)
        else:
            half = self.width // 4
            freq = torch.exp(-math.log(100.0) * torch.arange(half) / half) * math.pi
            def enc(x): x = (x.float() + 0.5)[..., None] / self.grid * freq * self.grid / 2; return torch.cat([x.sin(), x.cos()], -1)
            e = torch.cat([enc(r), enc(c)], -1) * math.sqrt(2)
        return torch.where((pl == 0)[..., None], self.prefix.expand_as(e), e)
if a.place_kind != "learned":
    place = RowCol(place.embedding_dim, kind=a.place_kind)
norm = nn.LayerNorm(vlm.encoder.width) if a.ln else nn.Identity()
C = torch.load("cache.pt", weights_only=False)
tr = C["train"]
if a.whiten:
    x = tr["tokens"][:4000].reshape(-1, tr["tokens"].shape[-1]).double()
    mu = x.mean(0); cov = torch.cov((x - mu).T)
    ev, evec = torch.linalg.eigh(cov)
    Wz = (evec @ torch.diag((ev + 1e-3 * ev.max()).rsqrt()) @ evec.T).float(); mu = mu.float()
    for d in [tr] + C["val"]: d["tokens"] = (d["tokens"] - mu) @ Wz
    print("whitened", ev.max().item(), ev.min().item())
def strip(ps): return [q.split(" Options:")[0] for q in ps] if a.no_options else ps
V = len(lm.tokenizer)
if a.vocab:
    norm = nn.LayerNorm(vlm.encoder.width)
    content = nn.Linear(vlm.encoder.width, V); nn.init.zeros_(content.weight); nn.init.zeros_(content.bias)
    placeword = nn.Embedding(65, V); nn.init.zeros_(placeword.weight)
    proj = nn.ModuleList([content, placeword])
if a.caption_mix:
    from safetensors.torch import load_file
    from textvision.pretrain.alignment import DenseAlignmentHeads, mean_pool
    from textvision.pretrain.cache import alignment_heads_path
    from textvision.pretrain.captions import CaptionBank
    from textvision.data.scene import SceneConfig
    st = load_file(str(alignment_heads_path("configs/pretrain/demo_vit.yaml")))
    heads = DenseAlignmentHeads(vision_width=128, text_width=384, dim=st["patch_proj.weight"].shape[0]); heads.load_state_dict(st); heads.requires_grad_(False)
    bank = CaptionBank(SceneConfig(canvas_size=64, patch_size=8, num_objects=12))
    te = vlm.encoder.text_encoder
    with torch.no_grad():
        f = te(bank.texts); bank_emb = heads.embed_text(mean_pool(f.hidden, f.mask))
    wp = lm.tokenizer(bank.texts, add_special_tokens=False)["input_ids"]
    rows = [r for r, ids in enumerate(wp) for _ in ids]; cols = [i for ids in wp for i in ids]; vals = [1.0 / len(ids) for ids in wp for _ in ids]
    Wc = torch.sparse_coo_tensor(torch.tensor([rows, cols]), torch.tensor(vals), (len(wp), len(lm.tokenizer))).coalesce()
    scale = heads.log_scale.exp().item(); print("captions", len(wp), "scale", scale)
from textvision.data.scene import QUADRANT_WORDS, quadrant_of
QUAD_IDS = torch.tensor([lm.tokenizer(w, add_special_tokens=False)["input_ids"] for w in QUADRANT_WORDS])
def with_place_text(vis, pl):
    """[CLS, q1a, q1b, v1, q2a, q2b, v2, ...]: each patch token after its quadrant's words."""
    n = (pl[:, 1:] - 1); words = lm.embed(QUAD_IDS[quadrant_of(n // 8, n % 8, 8)])  # (B, K, 2, H)
    body = torch.cat([words, vis[:, 1:, None]], 2).flatten(1, 2)
    return torch.cat([vis[:, :1], body], 1)
def visual(tok, pl):
    if a.place_text: return with_place_text(visual_tokens(tok, pl), pl if not a.top1 else pl[:, :2])
    return visual_tokens(tok, pl)
def visual_tokens(tok, pl):
    if a.top1: tok, pl = tok[:, :2], pl[:, :2]
    if a.caption_mix:
        E = lm.base_model.get_input_embeddings().weight
        cap = torch.sparse.mm(Wc, E)  # (C, H) word-mean embedding of each caption
        w = (scale * heads.embed_patches(tok) @ bank_emb.T).softmax(-1)
        mix = w @ cap
        if a.mix_only: return mix + place_lm(pl)
        return proj(torch.cat([norm(tok), a.place_scale * place(pl)], -1)) + mix
    if a.vocab:
        E = lm.base_model.get_input_embeddings().weight
        return (content(norm(tok)) / a.temp).softmax(-1) @ E + (placeword(pl) / a.temp).softmax(-1) @ E
    return proj(torch.cat([norm(tok), a.place_scale * place(pl)], -1))
place_lm = nn.Embedding(65, lm.hidden_size)
params = [*lm.parameters(), *proj.parameters(), *place.parameters(), *norm.parameters(), *place_lm.parameters()]
opt = torch.optim.AdamW([{'params': list(lm.parameters()), 'lr': a.lr * a.lm_lr}, {'params': [*proj.parameters(), *place.parameters(), *norm.parameters(), *place_lm.parameters()]}], lr=a.lr, weight_decay=0.01)
warm = int(0.05 * a.steps)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s+1)/max(1,warm)) * (0.1 + 0.9*0.5*(1+math.cos(math.pi*min(1,s/a.steps)))))
N = tr["tokens"].shape[0]
def evaluate():
    lm.eval(); res = {}
    for v in C["val"]:
        by = defaultdict(list)
        with torch.no_grad():
            for i in range(0, v["tokens"].shape[0], 64):
                vis = visual(v["tokens"][i:i+64], v["places"][i:i+64])
                s = lm.score(vis, strip(v["prompt"][i:i+64]), v["options"][i:i+64])
                pred = s.argmax(-1)
                for j, c in enumerate(v["category"][i:i+64]): by[c].append(int(pred[j] == v["label"][i+j]))
        name = v["id"][0].split("-")[0]
        res[name] = {c: round(sum(x)/len(x), 3) for c, x in sorted(by.items())}
        res[name]["all"] = round(sum(sum(x) for x in by.values()) / sum(len(x) for x in by.values()), 3)
    lm.train(); return res
t0 = time.time(); g = torch.Generator().manual_seed(a.seed)
for step in range(1, a.steps + 1):
    idx = torch.randint(N, (32,), generator=g)
    vis = visual(tr["tokens"][idx], tr["places"][idx])
    l1, l2 = mcloss.losses(lm, vis, strip([tr["prompt"][i] for i in idx]), [tr["answer"][i] for i in idx], [tr["options"][i] for i in idx]); loss = l1 + a.mc * l2
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step(); sched.step()
    if step % a.eval_every == 0 or step == a.steps:
        print(step, f"{time.time()-t0:.0f}s loss {loss.item():.3f}", json.dumps(evaluate()), flush=True)
