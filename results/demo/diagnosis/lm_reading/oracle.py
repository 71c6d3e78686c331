"""Throwaway: text-only items with oracle object tokens (word lists) for LM pretraining."""
import torch
from textvision.data.glyphs import SHAPES
from textvision.data.magnifier import MagnifierGenerator, half_of
from textvision.data.mmvp_pairs import MMVPPairsGenerator, MMVP_CATEGORIES, pair_answer_words
from textvision.data.sample import format_prompt
from textvision.data.scene import QUADRANT_WORDS, SceneConfig, Scenes, quadrant_of
from textvision.data.seeding import IndexRandom, index_seed

scene = SceneConfig(canvas_size=64, patch_size=8, num_objects=12)
mag = MagnifierGenerator(scene)
mmvp = MMVPPairsGenerator(scene)


def object_words(scenes, b, k):
    cfg = scene
    s, c, t = int(scenes.shape[b, k]), int(scenes.colour[b, k]), int(scenes.turn[b, k])
    cell = int(scenes.cell[b, k])
    r, col = cell // cfg.grid, cell % cfg.grid
    w = [cfg.colours[c], cfg.shape_words(s)]
    ow = SHAPES[cfg.shapes[s]].orientation_words
    if ow is not None:
        w.append(ow[t])
    return w, cell


def raw(scenes, b):
    return [(int(scenes.shape[b, k]), int(scenes.colour[b, k]), int(scenes.turn[b, k]), int(scenes.cell[b, k])) for k in range(scene.num_objects)]


def magnifier_items(indices, seed=7, split="train"):
    rng = IndexRandom([index_seed(seed, split, i, salt="magnifier") for i in indices])
    scenes, q = mag.sample(rng)
    half = half_of(scenes, q.axis, scene.grid)
    out = []
    for b in range(len(indices)):
        category, text = mag.question(scenes, q, b, half)
        words = mag.vocabulary(category)
        opts = [words[int(v)] for v in q.options[b]]
        prompt, options, answer = format_prompt(text, opts, int(q.label[b]), "short")
        objs = [object_words(scenes, b, k) for k in range(scene.num_objects)]
        out.append(dict(prompt=prompt, answer=answer, options=options, label=int(q.label[b]), category=category,
                        objects=objs, target=int(q.target[b]), name="magnifier", raw=raw(scenes, b)))
    return out


def mmvp_items(indices, seed=7, split="train"):
    pair_ids = sorted({i // 2 for i in indices})
    rng = IndexRandom([index_seed(seed, split, p, salt="mmvp_pairs") for p in pair_ids])
    A, B, q = mmvp.sample(rng)
    row_of = {p: r for r, p in enumerate(pair_ids)}
    names = [MMVP_CATEGORIES[c] for c in q.category.tolist()]
    asked = {"axis": q.axis, "asked_shape": A.shape[:, 0], "config": scene}
    ans_a, ans_b = pair_answer_words(A, names, **asked), pair_answer_words(B, names, **asked)
    out = []
    for index in indices:
        r = row_of[index // 2]
        category, text, options = mmvp.pair_text(A, q, r)
        use_b = (index % 2) != int(q.swap[r])
        sc = B if use_b else A
        label = options.index(ans_b[r] if use_b else ans_a[r])
        prompt, shown, answer = format_prompt(text, options, label, "short")
        objs = [object_words(sc, r, k) for k in range(scene.num_objects)]
        target = 0 if not (category == "presence" and answer == "no") else -1
        out.append(dict(prompt=prompt, answer=answer, options=shown, label=label, category=category,
                        objects=objs, target=target, name="mmvp_pairs", raw=raw(sc, r)))
    return out


def batch(start, size, seed=7, split="train"):
    half = size // 2
    return magnifier_items(range(start, start + half), seed, split) + mmvp_items(range(start, start + size - half), seed, split)
