"""
The evidence gate at evaluation (eval.py --gate-teacher): does the gate's contrast track
correctness? As in a training step of the run that made the checkpoint, with its own method and
knobs (train_config.json beside --model; flags override and are recorded): G answers per example
sampled from the full image, replayed by the teacher, weighted by the method (method.py); then per
answer the paper's contrast p (Eq. 18), a (Eq. 19), w (Eq. 20) and correctness, the AUROC of w and
of p, and an HTML page with every token coloured by Delta_k (Eq. 17). Answers are read here only,
never by training.

    settings, where = gate_settings(args)
    summary, records = gate_diagnostics(model, processor, teacher, examples, "zoom", settings=settings,
                                        max_new_tokens=64)
    html = explain_page(examples, records, settings, title="...")
Tests: python -m pytest -q tests/test_eval.py tests/test_method.py
"""

import base64
import dataclasses
import html
import io
import json
from pathlib import Path

import torch
from tqdm import tqdm

import answer_rules
import model as vlm
from config import Config
from gate import auroc, group_advantages, trajectory_scores
from method import METHODS, answer_weights, views_of
from parallel import gather_lists, share_of, world_of
from rollout import decode, sample

# The settings of a method that the diagnostics take from the checkpoint's run (train_config.json).
GATE_SETTINGS = ("method", "group_size", "gate_alpha", "gate_gamma", "gate_w_min", "gate_w_max", "neg_view",
                 "crop_margin", "crop_min_side")


def gate_settings(args):
    """(Config, where from): the settings of the run that made --model (its train_config.json, as
    train.py writes it into each checkpoint), else the defaults, then the explicit flags over them.
    The diagnostics must run the method the model was trained with: a run with --gate-alpha 1, or a
    forker's gate variant, is diagnosed with its own gate, not the paper's."""
    path = Path(args.model) / "train_config.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    known = {f.name for f in dataclasses.fields(Config)}
    settings = Config(**{k: v for k, v in saved.items() if k in known})
    where = str(path) if saved else "the defaults (no train_config.json beside --model)"
    flags = {k: getattr(args, k) for k in GATE_SETTINGS if getattr(args, k, None) is not None}
    if flags:
        settings = dataclasses.replace(settings, **flags)
        where += "; flags: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in flags.items())
    if settings.method not in METHODS:
        raise ValueError(f"gate diagnostics: method {settings.method!r} (from {where}) is not one of {sorted(METHODS)}")
    return settings, where


@torch.no_grad()
def gate_diagnostics(model, processor, teacher, examples, bench="zoom", *, settings=None, rules="official",
                     strip="upstream", batch_size=4, max_new_tokens, seed=0, explain=0, progress=False,
                     distributed=None):
    """Does the gate's evidence contrast track correctness? As in a training step of the run whose
    `settings` (a train.Config; default: the defaults) are given: G responses per example sampled
    at temperature 1 from the full image, replayed by the teacher under the method's views and
    (x, z+), (x, z-), weighted by the method's own weights (method.py). Then per response the
    mean Delta (Eq. 18's p, with the run's gamma) of correct vs wrong rollouts, and the AUROC of
    the weight w and of p as detectors of correctness. seed: the sampling seed. Returns (summary,
    one record per rollout); the records of examples with index < explain also carry their tokens
    and token Deltas (for explain_page)."""
    settings = settings or Config()
    method, G = METHODS[settings.method], settings.group_size
    views = tuple(dict.fromkeys(method.views + ("pos", "neg")))        # the method's, and the contrast's
    for ex in examples:
        if ex.answer is None or (ex.bbox is None and ex.pos_crop is None):
            raise ValueError(f"gate diagnostics: example {ex.id} needs an answer and a box (fields answer, bbox); "
                             "use data with both, e.g. the zoom world, the project JSONL or V* with its sidecars")
    rank, world_size = world_of(distributed)
    share, padded = share_of(len(examples), rank, world_size)
    records = []
    for start in tqdm(range(0, len(padded), batch_size), desc="gate", disable=not (progress and rank == 0)):
        idx = padded[start:start + batch_size]
        batch = [examples[i] for i in idx]
        full, pos, neg = (list(v) for v in zip(*(views_of(ex, settings) for ex in batch)))
        questions = [ex.question for ex in batch]  # the teacher gets the student's question text
        # One seed per example: the same rollouts whatever the number of ranks or the batch size.
        ro = sample(model, processor, vlm.student_prompts(processor, full, questions), group_size=G,
                    max_new_tokens=max_new_tokens, seed=[seed * 1_000_003 + i for i in idx])
        lp = teacher.replay(ro, prompts=teacher.prompts(full, questions, pos_crops=pos, neg_crops=neg, views=views))
        mask = ro.response_mask.to(lp["pos"].device)
        w = answer_weights(method.weights(lp, mask, G, settings)[0], mask)       # [B*G] the method's own
        # The gate's own stages, for the page: p (Eqs. 17-18), Delta [B*G, T], and a (Eq. 19).
        score, delta = trajectory_scores(lp["pos"], lp["neg"], mask, gamma=settings.gate_gamma)
        adv = group_advantages(score, G)
        # Rollout row r is sibling r % G of example idx[r // G] (siblings are contiguous rows).
        for r, text in enumerate(decode(processor, ro)):
            if start + r // G >= len(share):
                continue  # a padding example (see parallel.share_of)
            ex = examples[idx[r // G]]
            _, pred, verdict = answer_rules.verdict(bench, text, ex, rules, strip)
            rec = {"index": idx[r // G], "id": ex.id, "g": r % G, "p": score[r].item(), "a": adv[r].item(),
                   "w": w[r].item(), "verdict": verdict, "correct": verdict is True, "pred": pred, "response": text}
            if rec["index"] < explain:  # token-level detail for the page: token strings, Delta_k
                ids = ro.response_ids[r][ro.response_mask[r]].tolist()
                rec["tokens"] = [processor.tokenizer.decode([t]) for t in ids]
                rec["delta"] = delta[r][mask[r]].tolist()
            records.append(rec)
    records = sorted(gather_lists(records, world_size), key=lambda r: (r["index"], r["g"]))
    correct = [r["correct"] for r in records]
    mean = lambda xs: sum(xs) / len(xs) if xs else None
    summary = {"rollouts": len(records), "group_size": G, "neg_mode": settings.neg_view,
               "settings": {k: getattr(settings, k) for k in GATE_SETTINGS},
               "rollout_accuracy": mean(correct), "unsettled": sum(r["verdict"] is None for r in records),
               "delta_correct": mean([r["p"] for r in records if r["correct"]]),
               "delta_wrong": mean([r["p"] for r in records if not r["correct"]]),
               "auroc_weight": auroc([r["w"] for r in records], correct),
               "auroc_score": auroc([r["p"] for r in records], correct)}
    return summary, records


# ----------------------------------------------------------------------------------------------
# The explain page: one self-contained HTML file, images inline.

def _png(img, max_side=None):
    if max_side and max(img.size) > max_side:  # a 8K image would make a 50 MB page
        img = img.copy()
        img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _colour(t):
    # Diverging scale (ColorBrewer RdBu ends) for t in [-1, 1]: red = the token is likelier with
    # z- than with z+, white = no difference, blue = the evidence crop z+ supports it.
    r, g, b = (33, 102, 172) if t > 0 else (178, 24, 43)
    a = min(abs(t), 1.0)
    mix = lambda c: round(255 + (c - 255) * a)
    return f"rgb({mix(r)},{mix(g)},{mix(b)})", "#fff" if a > 0.65 else "#111"


VERDICT = {True: ("ok", "&#10003; correct"), False: ("bad", "&#10007; wrong"),
           None: ("judge", "? no rule could read it: a judge would decide (counted wrong)")}

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#111;max-width:1300px}
h1{font-size:20px;margin:0 0 6px} h2{font-size:16px;margin:28px 0 6px;border-top:1px solid #ccc;padding-top:14px}
.legend{display:flex;align-items:center;gap:10px;margin:10px 0 4px}
.bar{width:320px;height:14px;border:1px solid #999;background:linear-gradient(90deg,rgb(178,24,43),#fff,rgb(33,102,172))}
.views{display:flex;gap:18px;align-items:flex-start} figure{margin:0} figcaption{font-size:12px;color:#555}
.full{width:384px} .crop{width:192px;image-rendering:pixelated} .q{white-space:pre-wrap;margin:6px 0}
.rollout{border:1px solid #ddd;border-radius:6px;padding:6px 10px;margin:8px 0}
.stats{font-family:ui-monospace,monospace;font-size:13px;margin-bottom:4px}
.tokens{font-family:ui-monospace,monospace;white-space:pre-wrap;word-break:break-all;line-height:1.9}
.tokens span{border-radius:2px;padding:1px 0;box-shadow:inset -1px 0 0 rgba(0,0,0,.18)} .ok{color:#1a7f37;font-weight:600} .bad{color:#b42318;font-weight:600}
.judge{color:#9a6700;font-weight:600} .note{color:#555;font-size:13px}"""


def explain_page(examples, records, settings, *, title):
    """HTML for every example that has token-level records (gate_diagnostics(explain=N)): the full
    image x, z+ and z- (cut as the run `settings` cuts them), then each sibling rollout, its tokens
    coloured by Delta_k = l+_k - l-_k (Eq. 17), and its p, a, w (Eqs. 18-20) and correctness."""
    shown = {}  # example index -> its sibling records, g = 0 .. G-1
    for r in records:
        if "tokens" in r:
            shown.setdefault(r["index"], []).append(r)
    if not shown:
        raise ValueError("explain_page: no records with tokens (run gate_diagnostics with explain > 0)")
    # One colour scale for the page: the 98th percentile of |Delta|, so one outlier token does not
    # wash out all the others (tokens beyond it get the full colour).
    deltas = sorted(abs(d) for rs in shown.values() for r in rs for d in r["delta"]) or [0.0]
    scale = max(deltas[min(len(deltas) - 1, int(0.98 * len(deltas)))], 1e-3)
    out = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{html.escape(title)}</title>\n"
           f"<style>\n{CSS}\n</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
           "<p class=\"note\">Each rollout was sampled by the student from the full image only. Its tokens are "
           "coloured by the teacher's evidence gap &Delta;<sub>k</sub> = log &pi;<sub>t</sub>(y<sub>k</sub> | x, z+) "
           "&minus; log &pi;<sub>t</sub>(y<sub>k</sub> | x, z&minus;) (Eq. 17); hover a token for its value. "
           "p = mean &Delta; over the response (Eq. 18), a = p normalised among its siblings (Eq. 19), "
           f"w = the weight of the run's method, {html.escape(settings.method)} (Eq. 20 for V-Zero: clip(1 + "
           f"{settings.gate_alpha:g} a, {settings.gate_w_min:g}, {settings.gate_w_max:g})).</p>\n"
           f"<div class=\"legend\"><span>&minus;{scale:.3g}: z&minus; explains it better</span><div class=\"bar\"></div>"
           f"<span>+{scale:.3g}: the crop z+ supports it</span></div>\n"]
    for i, rollouts in sorted(shown.items()):
        ex = examples[i]
        full, pos, neg = views_of(ex, settings)
        out.append(f"<section>\n<h2>{html.escape(ex.id)}</h2>\n<div class=\"q\">{html.escape(ex.question)}</div>\n"
                   f"<div>gold answer: <b>{html.escape(str(ex.answer))}</b></div>\n<div class=\"views\">\n")
        for name, img, cls, caption in (("x", full, "full", f"x: full image, {full.width}x{full.height}"),
                                        ("z+", pos, "crop", f"z+: crop of the box, {pos.width}x{pos.height}"),
                                        ("z-", neg, "crop", f"z&minus;: negative view ({settings.neg_view}), {neg.width}x{neg.height}")):
            out.append(f"<figure><img class=\"{cls}\" alt=\"{name}\" src=\"{_png(img, 768)}\">"
                       f"<figcaption>{caption}</figcaption></figure>\n")
        out.append("</div>\n")
        for r in rollouts:
            cls, label = VERDICT[r["verdict"]]
            read = "" if r["pred"] is None else f" (read: {html.escape(str(r['pred']))})"
            spans = []
            for tok, d in zip(r["tokens"], r["delta"]):
                bg, fg = _colour(d / scale)
                spans.append(f"<span style=\"background:{bg};color:{fg}\" title=\"&Delta;={d:+.3f}\">{html.escape(tok)}</span>")
            out.append(f"<div class=\"rollout\">\n<div class=\"stats\">rollout {r['g'] + 1}/{len(rollouts)}: "
                       f"p = {r['p']:+.3f} &middot; a = {r['a']:+.2f} &middot; w = {r['w']:.2f} &middot; "
                       f"<span class=\"{cls}\">{label}</span>{read}</div>\n"
                       f"<div class=\"tokens\">{''.join(spans)}</div>\n</div>\n")
        out.append("</section>\n")
    out.append("</body>\n</html>\n")
    return "".join(out)
