"""
Token-level diagnostics of one training step: where the distillation signal goes and what the gate
saw. train.py's `answer_diagnostics` calls these AFTER the update, on what the step already holds
(the rollouts, the teacher's log-probs, the weights) plus the answers of the prompts, which only
this reads; nothing here feeds a step, runs a model or draws a random number.

    parts = token_parts(tokenizer, ro.response_ids, ro.response_mask, choices)  # [N, T] index into PARTS
    sums = signal_sums(weights, d, mask, correct, parts)     # summed over ranks by the caller, then
    metrics = signal_shares(sums)                            # shares of the signal, adding to 1
    metrics.update(gate_diagnostics(rows))                   # the gate: weights, AUROC, Delta on missed boxes

The loss signal of token k is |A_k| = w * |clamp(d_k)|, the size of its advantage in the k1 loss
(loss.py, Eqs. 23-24): d_k = log pi_s(y_k) - log pi_t(y_k | target view), with log pi_s the student
at sampling time (the first mini-batch's update, where the PPO ratio is 1). OPD has w = 1.
A response's tokens fall into PARTS: the lead-in before the decisive word ("The symbol is a"), the
decisive word (the first symbol named: what the answer is scored on, data.match_choice), the
follow-up after it (the rest, <|im_end|> included), or no_choice (a response that names no symbol).
Tests: tests/test_toy.py (a hand-computed case; the shares add to 1).
"""

import re

import torch

import data
from gate import auroc

PARTS = ("lead_in", "decisive", "follow_up", "no_choice")


def token_parts(tokenizer, response_ids, mask, choices):
    """[N, T] long: the PARTS index of each response token (-1 at padding). choices: N lists."""
    parts = torch.full(response_ids.shape, -1, dtype=torch.long)
    for r, (ids, keep, options) in enumerate(zip(response_ids.tolist(), mask.tolist(), choices)):
        ids = [i for i, k in zip(ids, keep) if k]
        text = tokenizer.decode(ids, skip_special_tokens=True)      # what rollout.decode gives
        choice = data.match_choice(text, options)
        if choice is None:
            parts[r, :len(ids)] = PARTS.index("no_choice")
            continue
        # The decisive word's characters: the first whole-word occurrence of the named choice, as
        # data.match_choice finds it. Its tokens: from the first whose text reaches past the word's
        # start to the first whose text reaches its end.
        word = re.search(rf"(?<!\w){re.escape(choice)}(?!\w)", text, re.IGNORECASE)
        first, last = reaching(tokenizer, ids, word.start()), reaching(tokenizer, ids, word.end() - 1)
        parts[r, :first] = PARTS.index("lead_in")
        parts[r, first:last + 1] = PARTS.index("decisive")
        parts[r, last + 1:len(ids)] = PARTS.index("follow_up")
    return parts


def reaching(tokenizer, ids, chars):
    """The first k whose prefix ids[:k + 1] decodes to more than `chars` characters: the token that
    holds character `chars` of the response. A binary search over the decoded prefixes (their length
    grows with k; special tokens add none), so a 2048-token answer costs ~11 decodes, not 2048."""
    low, high = 0, len(ids)
    while low < high:
        mid = (low + high) // 2
        if len(tokenizer.decode(ids[:mid + 1], skip_special_tokens=True)) > chars:
            high = mid
        else:
            low = mid + 1
    return low


def signal_sums(weights, d, mask, correct, parts):
    """Sums of the loss signal |A_k| = w |d_k| [N, T] by (right / wrong answer) x part, and OPD's
    (w = 1) total. weights [N] (or [N, T]), d [N, T] clamped d_k, mask [N, T], correct [N] bool.
    Python floats: the caller sums them over ranks."""
    mask = mask.bool()
    w = weights[:, None] if weights.dim() == 1 else weights
    signal = torch.where(mask, w.double() * d.double().abs(), 0.0)         # [N, T] |A_k|
    sums = {}
    for name, rows in (("right", correct), ("wrong", ~correct)):
        for i, part in enumerate(PARTS):
            sums[f"{name}/{part}"] = signal[rows[:, None] & (parts == i) & mask].sum().item()
    sums["opd_total"] = torch.where(mask, d.double().abs(), 0.0).sum().item()
    return sums


def signal_shares(sums):
    """diag/signal_share/...: each cell's and each margin's share of the step's signal (the cells
    add to 1), and diag/signal_vs_opd: the signal over OPD's with the same d (1 for OPD itself)."""
    total = sum(v for k, v in sums.items() if k != "opd_total")
    if total <= 0:
        return {}
    out = {f"diag/signal_share/{k}": v / total for k, v in sums.items() if k != "opd_total"}
    for name in ("right", "wrong"):
        out[f"diag/signal_share/{name}"] = sum(sums[f"{name}/{p}"] for p in PARTS) / total
    for part in PARTS:
        out[f"diag/signal_share/{part}"] = (sums[f"right/{part}"] + sums[f"wrong/{part}"]) / total
    out["diag/signal_vs_opd"] = total / sums["opd_total"]
    return out


def gate_diagnostics(rows):
    """The gate over the step's answers (all ranks). rows: (weight, correct, trajectory score p
    (Eq. 18), box misses the target) per answer. diag/gate_auroc (how well the weight tells right
    from wrong answers), diag/weight_right / wrong (mean weights), and, when some prompts' boxes
    miss, p's distribution (mean, p10, p50, p90), the weights' sd and the AUROC on those prompts
    ("missed") and on the others ("hit")."""
    weight, right = [r[0] for r in rows], [r[1] for r in rows]
    out = {"diag/gate_auroc": auroc(weight, right)}
    for name, want in (("right", True), ("wrong", False)):
        picked = [w for w, c in zip(weight, right) if c == want]
        if picked:
            out[f"diag/weight_{name}"] = sum(picked) / len(picked)
    if any(r[3] for r in rows) and all(r[2] is not None for r in rows):
        for name, missed in (("missed", True), ("hit", False)):
            group = [r for r in rows if r[3] == missed]
            if not group:
                continue
            p = torch.tensor([r[2] for r in group], dtype=torch.float64)
            w = torch.tensor([r[0] for r in group], dtype=torch.float64)
            q10, q50, q90 = torch.quantile(p, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
            out.update({f"diag/delta_{name}/mean": p.mean().item(), f"diag/delta_{name}/p10": q10,
                        f"diag/delta_{name}/p50": q50, f"diag/delta_{name}/p90": q90,
                        f"diag/weight_sd_{name}": w.std(unbiased=False).item(),
                        f"diag/gate_auroc_{name}": auroc([r[0] for r in group], [r[1] for r in group])})
    return out
