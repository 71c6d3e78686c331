"""Throwaway: full LM loss + option-restricted (trie) loss from one teacher-forced pass."""
import torch
IGN = -100
def losses(lm, visual, prompts, answers, options):
    p_ids = lm._prompt_ids(prompts); a_ids = lm._answer_ids(answers)
    inputs = lm._causal_inputs(visual, p_ids, a_ids)
    full_labels = inputs.pop("labels")
    keep = max(len(a) for a in a_ids)
    logits = lm.model(**inputs, use_cache=False, logits_to_keep=keep + 1).logits[:, -(keep + 1):-1].float()
    labels = full_labels[:, -keep:]
    valid = labels != IGN
    lm_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGN)
    # candidates per answer position (answers are right-aligned in the last `keep` columns)
    rows, cols, cand, gold = [], [], [], []
    for i, (ans, opts) in enumerate(zip(a_ids, options)):
        o_ids = lm._answer_ids(list(opts))
        off = keep - len(ans)
        for t in range(len(ans)):
            c = sorted({o[t] for o in o_ids if len(o) > t and o[:t] == ans[:t]})
            if len(c) > 1:
                rows.append(i); cols.append(off + t); cand.append(c); gold.append(c.index(ans[t]))
    if not rows:
        return lm_loss, lm_loss * 0
    width = max(len(c) for c in cand)
    idx = torch.tensor([c + [c[0]] * (width - len(c)) for c in cand])
    pad = torch.tensor([[False] * len(c) + [True] * (width - len(c)) for c in cand])
    sel = logits[torch.tensor(rows), torch.tensor(cols)]  # (N, V)
    cl = sel.gather(1, idx).masked_fill(pad, float("-inf"))
    return lm_loss, torch.nn.functional.cross_entropy(cl, torch.tensor(gold))
