"""
Evaluate a VLM the way V-Zero is evaluated (PAPER.md sec. 7): the model sees the FULL image and
the question, never a crop; greedy decoding; each benchmark's own prompt, answer rule and
aggregation (benchmarks.py); no LLM judge. Optional: a blind control (same prompts, grey images)
and diagnostics of the evidence gate (Eqs. 17-20) with a teacher, with an HTML explain page.

    python eval.py --model Qwen/Qwen3-VL-2B-Instruct --bench vstar --data vstar_bench/ --out-dir out/eval/vstar --blind
    torchrun --nproc_per_node=8 eval.py --model out/vzero/ckpt-000060 --bench hrbench \\
        --data hr_bench_4k.parquet --out-dir out/eval/hr4k
    python eval.py --model tiny:qwen2_5_vl --bench zoom --data synthetic:8:1 --out-dir out/eval/zoom \\
        --max-new-tokens 8 --blind --gate-teacher tiny:qwen2_5_vl@1 --explain 2      # CPU smoke run

--out-dir receives results.md (the table, also printed), results.json, predictions.jsonl (one line
per item: response, extracted answer, prediction, correct, judge) and, with the options,
predictions_blind.jsonl, gate_rollouts.jsonl, explain.html. Items from which no rule could read an
answer ("judge": true) would need an LLM judge: they count as wrong, and results.md lists them.

Which files each --bench reads, the prompts, the answer rules and the reported numbers are in
benchmarks.py. On one machine prefer `torchrun --standalone`: with torch 2.13, --master_port=0
reaches the workers as port 0 and they never meet.

From Python (e.g. the zoom-world demo):
    acc, preds = evaluate(model, processor, data.synthetic(64, 1))   # acc["overall"] in [0, 1]
Under torchrun every rank must call it: each evaluates every world-th example, all get all results.
Tests: python -m pytest -q tests/test_eval.py
"""

import argparse
import base64
import html
import io
import json
import math
import os
import sys

import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

import benchmarks
import data
import model as vlm
from gate import auroc, evidence_gate, group_advantages, trajectory_scores
from rollout import decode, sample
from teacher import Teacher

MAX_NEW_TOKENS = 1024  # prompts ask for a letter or a word; thinking is off (PAPER.md sec. 6)


# ----------------------------------------------------------------------------------------------
# Distribution: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a plain process is a world of one.

def _world(distributed):
    # (rank, world size) of this call: sharded over the process group if there is one (or if told).
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    return (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)


def _gather(items, world_size):
    # Every rank's list of picklable records -> their concatenation, on every rank.
    if world_size == 1:
        return items
    parts = [None] * world_size
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def _share(n, rank, world_size):
    # This rank's global example indices (strided: every example exactly once over the ranks), and
    # the same padded with a repeat to ceil(n / world) so that every rank makes the same number of
    # generate calls (an FSDP-sharded model must step in lockstep). Padding results are dropped.
    share = data.shard(list(range(n)), rank, world_size, drop_last=False)
    return share, share + [share[-1] if share else 0] * (math.ceil(n / world_size) - len(share))


# ----------------------------------------------------------------------------------------------
# Greedy evaluation.

def blank(ex):
    # The blind control: mid-grey at the real image's size, so the prompt keeps its number of visual
    # tokens and only the pixels are gone. A model that scores as well blind is not using the image.
    return Image.new("RGB", ex.size, (128, 128, 128))


@torch.no_grad()
def respond(model, processor, examples, *, batch_size=8, max_new_tokens=MAX_NEW_TOKENS, blind=False,
            progress=False):
    """Greedy response of the model to [full image (or grey), ex.question] per example:
    [(text, truncated)]. The prompt is the student's view x, the only view used at test time."""
    out = []
    for start in tqdm(range(0, len(examples), batch_size), desc="blind" if blind else "eval", disable=not progress):
        batch = examples[start:start + batch_size]
        images = [blank(ex) if blind else ex.image for ex in batch]
        prompts = vlm.student_prompts(processor, images, [ex.question for ex in batch])  # left-padded [B, P]
        # The one sampler of the project (rollout.py): it stops at EOS and never emits vision tokens.
        # Greedy, as PAPER.md sec. 8 asks: a temperature-1 eval is a noisy eval.
        ro = sample(model, processor, prompts, group_size=1, max_new_tokens=max_new_tokens, greedy=True,
                    score=False)
        out += zip(decode(processor, ro), ro.truncated.tolist())  # ro.response_ids [B, T]
    return out


def evaluate(model, processor, examples, bench="zoom", *, batch_size=8, max_new_tokens=MAX_NEW_TOKENS,
             blind=False, progress=False, distributed=None):
    """(accuracy, predictions): accuracy {name: value in [0, 1]} as the benchmark reports it, "overall"
    first; predictions one record per example, in example order. bench picks the answer rule and
    the aggregation (benchmarks.BENCHES; "zoom" for zoom-world examples)."""
    missing = [ex.id for ex in examples if ex.answer is None]
    if missing:
        raise ValueError(f"evaluate: {len(missing)} examples have no answer (field answer), e.g. {missing[:3]}")
    # Each rank answers its share; the records (small dicts) are then gathered to EVERY rank, so
    # every rank returns the same numbers and a training loop may log them from any rank.
    rank, world_size = _world(distributed)
    share, padded = _share(len(examples), rank, world_size)
    responses = respond(model, processor, [examples[i] for i in padded], batch_size=batch_size,
                        max_new_tokens=max_new_tokens, blind=blind, progress=progress and rank == 0)
    # One record per item: what the model said, what the benchmark's rule read from it, and whether
    # that is right ("judge": no rule could read it, so it counts as wrong and is listed).
    records = []
    for i, (text, truncated) in zip(share, responses):  # zip stops before the padding
        ex = examples[i]
        extracted, pred, verdict = benchmarks.judge(bench, text, ex)
        records.append({"index": i, "id": ex.id, "answer": ex.answer, "response": text, "extracted": extracted,
                        "pred": pred, "correct": verdict is True, "judge": verdict is None,
                        "truncated": truncated, "meta": ex.meta})
    records = sorted(_gather(records, world_size), key=lambda r: r["index"])
    return {name: acc for name, (acc, _) in benchmarks.aggregate(bench, records).items()}, records


# ----------------------------------------------------------------------------------------------
# Gate diagnostics (evaluation only: answers are read here, never by training).

@torch.no_grad()
def gate_diagnostics(model, processor, teacher, examples, bench="zoom", *, group_size=8, batch_size=4,
                     max_new_tokens=MAX_NEW_TOKENS, neg_mode="paper", seed=0, explain=0, progress=False,
                     distributed=None):
    """Does the gate's evidence contrast track correctness? As in a training step: G responses per
    example sampled at temperature 1 from the full image, replayed by the teacher under (x, z+) and
    (x, z-); then the per-response mean Delta (Eq. 18's p) of correct vs wrong rollouts, and the
    AUROC of the gate weight w (Eq. 20, default knobs) and of p as detectors of correctness.
    Returns (summary, one record per rollout); the records of examples with index < explain also
    carry their tokens and token Deltas (for explain_page)."""
    for ex in examples:
        if ex.answer is None or (ex.bbox is None and ex.pos_crop is None):
            raise ValueError(f"gate diagnostics: example {ex.id} needs an answer and a box (fields answer, bbox); "
                             "use data with both, e.g. the zoom world, the project JSONL or V* with its sidecars")
    rank, world_size = _world(distributed)
    share, padded = _share(len(examples), rank, world_size)
    G, records = group_size, []
    for start in tqdm(range(0, len(padded), batch_size), desc="gate", disable=not (progress and rank == 0)):
        idx = padded[start:start + batch_size]
        batch = [examples[i] for i in idx]
        full, pos, neg = (list(v) for v in zip(*(data.evidence_views(ex, neg_mode, seed=seed) for ex in batch)))
        questions = [ex.question for ex in batch]  # the teacher gets the student's question text
        # One seed per example: the same rollouts whatever the number of ranks or the batch size.
        ro = sample(model, processor, vlm.student_prompts(processor, full, questions), group_size=G,
                    max_new_tokens=max_new_tokens, seed=[seed * 1_000_003 + i for i in idx])
        lp = teacher.replay(ro, full, questions, pos_crops=pos, neg_crops=neg)  # {view: [B*G, T]}
        mask = ro.response_mask.to(lp["pos"].device)
        w, _ = evidence_gate(lp["pos"], lp["neg"], mask, G)                       # [B*G] Eq. 20
        # The gate's own stages, for the page: p (Eqs. 17-18), Delta [B*G, T], and a (Eq. 19).
        score, delta = trajectory_scores(lp["pos"], lp["neg"], mask)
        adv = group_advantages(score, G)
        # Rollout row r is sibling r % G of example idx[r // G] (siblings are contiguous rows).
        for r, text in enumerate(decode(processor, ro)):
            if start + r // G >= len(share):
                continue  # a padding example (see _share)
            ex = examples[idx[r // G]]
            _, pred, verdict = benchmarks.judge(bench, text, ex)
            rec = {"index": idx[r // G], "id": ex.id, "g": r % G, "p": score[r].item(), "a": adv[r].item(),
                   "w": w[r].item(), "correct": verdict is True, "judge": verdict is None, "pred": pred,
                   "response": text}
            if rec["index"] < explain:  # token-level detail for the page: token strings, Delta_k
                ids = ro.response_ids[r][ro.response_mask[r]].tolist()
                rec["tokens"] = [processor.tokenizer.decode([t]) for t in ids]
                rec["delta"] = delta[r][mask[r]].tolist()
            records.append(rec)
    records = sorted(_gather(records, world_size), key=lambda r: (r["index"], r["g"]))
    correct = [r["correct"] for r in records]
    mean = lambda xs: sum(xs) / len(xs) if xs else None
    summary = {"rollouts": len(records), "group_size": G, "neg_mode": neg_mode,
               "rollout_accuracy": mean(correct), "judge": sum(r["judge"] for r in records),
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


def explain_page(examples, records, *, title, neg_mode="paper", seed=0):
    """HTML for every example that has token-level records (gate_diagnostics(explain=N)): the full
    image x, z+ and z-, then each sibling rollout, its tokens coloured by Delta_k = l+_k - l-_k
    (Eq. 17), and its p, a, w (Eqs. 18-20) and correctness."""
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
           "w = clip(1 + 0.5 a, 0, 2), the gate weight (Eq. 20).</p>\n"
           f"<div class=\"legend\"><span>&minus;{scale:.3g}: z&minus; explains it better</span><div class=\"bar\"></div>"
           f"<span>+{scale:.3g}: the crop z+ supports it</span></div>\n"]
    for i, rollouts in sorted(shown.items()):
        ex = examples[i]
        full, pos, neg = data.evidence_views(ex, neg_mode, seed=seed)
        out.append(f"<section>\n<h2>{html.escape(ex.id)}</h2>\n<div class=\"q\">{html.escape(ex.question)}</div>\n"
                   f"<div>gold answer: <b>{html.escape(str(ex.answer))}</b></div>\n<div class=\"views\">\n")
        for name, img, cls, caption in (("x", full, "full", f"x: full image, {full.width}x{full.height}"),
                                        ("z+", pos, "crop", f"z+: crop of the box, {pos.width}x{pos.height}"),
                                        ("z-", neg, "crop", f"z&minus;: negative view ({neg_mode}), {neg.width}x{neg.height}")):
            out.append(f"<figure><img class=\"{cls}\" alt=\"{name}\" src=\"{_png(img, 768)}\">"
                       f"<figcaption>{caption}</figcaption></figure>\n")
        out.append("</div>\n")
        for r in rollouts:
            cls, label = VERDICT[True if r["correct"] else None if r["judge"] else False]
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


# ----------------------------------------------------------------------------------------------
# Report.

def report(args, examples, preds, blind_preds, gate):
    """results.md text: the benchmark's numbers (blind beside them), chance, the items a judge would
    have had to decide, truncations, and the gate diagnostics."""
    table = benchmarks.aggregate(args.bench, preds)  # {name: (accuracy, n)}
    # The blind column sits beside each number: a category that is as good blind is answered from
    # the question's language prior, not the image.
    blind = benchmarks.aggregate(args.bench, blind_preds) if blind_preds else {}
    pct = lambda v: "-" if v is None or v != v else f"{100 * v:.1f}"  # v != v: NaN (an empty group)
    lines = [f"# {args.model} on {args.bench} ({args.data}), {len(examples)} items", "",
             "| metric | n | accuracy % | blind % |" if blind else "| metric | n | accuracy % |",
             "|---|---:|---:|---:|" if blind else "|---|---:|---:|"]
    for name, (acc, n) in table.items():
        lines.append(f"| {name} | {n} | {pct(acc)} |" + (f" {pct(blind[name][0])} |" if blind else ""))
    lines.append("")
    if all(ex.choices for ex in examples):
        lines.append(f"Chance (uniform over each item's options): {pct(data.chance_accuracy(examples))}%.")
    if args.bench == "hrbench":
        lines.append("HR-Bench: overall = Avg; each number is the mean over option-rotation cycles.")
    if blind and blind["overall"][0] >= table["overall"][0]:
        lines.append(f"**WARNING: blind accuracy {pct(blind['overall'][0])}% is not below the real "
                     f"{pct(table['overall'][0])}%: the model does not use the image (or the evaluation is broken).**")
    for tag, rows in (("", preds), (" (blind)", blind_preds or [])):
        judged = [r["id"] for r in rows if r["judge"]]
        if judged:
            more = f", ... ({len(judged) - 20} more)" if len(judged) > 20 else ""
            lines.append(f"\n{len(judged)} of {len(rows)} responses{tag}: no rule could read an answer; an LLM judge "
                         f"would have to decide them. Counted wrong. Ids: {', '.join(judged[:20])}{more} "
                         "(\"judge\": true in the predictions file).")
        truncated = sum(r["truncated"] for r in rows)
        if truncated:
            lines.append(f"\n{truncated} responses{tag} hit --max-new-tokens {args.max_new_tokens} before ending.")
    if gate:
        f = lambda v, spec: "-" if v is None else format(v, spec)
        lines += ["", f"## Gate diagnostics: teacher {args.gate_teacher}, G = {gate['group_size']}, z- = {gate['neg_mode']}",
                  "", "| rollouts | accuracy % | judge | mean Delta, correct | mean Delta, wrong | AUROC(w) | AUROC(p) |",
                  "|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {gate['rollouts']} | {pct(gate['rollout_accuracy'])} | {gate['judge']} | "
                  f"{f(gate['delta_correct'], '+.4f')} | {f(gate['delta_wrong'], '+.4f')} | "
                  f"{f(gate['auroc_weight'], '.3f')} | {f(gate['auroc_score'], '.3f')} |",
                  "", "Delta = per-response mean of log pi_t(y|x,z+) - log pi_t(y|x,z-) over its tokens (Eq. 18); "
                  "AUROC of the gate weight w as a detector of correct rollouts (0.5 = no signal; - = one class only)."]
    return "\n".join(lines) + "\n"


def write_outputs(args, examples, preds, blind_preds, gate, rollouts):
    """Rank 0 writes everything needed to audit a number: every response and how it was read.
    Returns the results.md text."""
    os.makedirs(args.out_dir, exist_ok=True)
    path = lambda name: os.path.join(args.out_dir, name)

    def jsonl(name, rows):
        with open(path(name), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    def table(rows):  # {name: {accuracy, n}}; an empty group's NaN becomes null (NaN is not JSON)
        return {k: {"accuracy": a if a == a else None, "n": n} for k, (a, n) in benchmarks.aggregate(args.bench, rows).items()}

    jsonl("predictions.jsonl", preds)
    if blind_preds:
        jsonl("predictions_blind.jsonl", blind_preds)
    if rollouts:  # per-rollout p, a, w, correctness; the token-level lists only go to the page
        jsonl("gate_rollouts.jsonl", [{k: v for k, v in r.items() if k not in ("tokens", "delta")} for r in rollouts])
    if args.explain:
        with open(path("explain.html"), "w", encoding="utf-8") as f:
            f.write(explain_page(examples, rollouts, neg_mode=args.neg_mode, seed=args.seed,
                                 title=f"V-Zero gate: {args.model} / teacher {args.gate_teacher} on {args.bench}"))
    text = report(args, examples, preds, blind_preds, gate)
    with open(path("results.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(path("results.json"), "w", encoding="utf-8") as f:
        json.dump({"args": vars(args), "accuracy": table(preds), "blind": table(blind_preds) if blind_preds else None,
                   "judge_ids": [r["id"] for r in preds if r["judge"]], "gate": gate}, f, indent=1)
    return text


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="hub id, local dir (a train.py checkpoint) or tiny:FAMILY[@SEED]")
    ap.add_argument("--bench", required=True, choices=benchmarks.BENCHES, help="which reader, answer rule and report")
    ap.add_argument("--data", help="the benchmark file or folder (see benchmarks.py); for zoom: synthetic:N:SEED "
                    "(default synthetic:256:1, held out from training's seed 0)")
    ap.add_argument("--image-root", help="folder the image paths of V* / MME-RealWorld JSON are relative to "
                    "(default: the JSON file's folder)")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--blind", action="store_true", help="also evaluate with mid-grey images of the same size")
    ap.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per generate call, per rank")
    ap.add_argument("--limit", type=int, help="only the first N items of the file")
    ap.add_argument("--gate-teacher", help="teacher for the gate diagnostics (needs answers and boxes)")
    ap.add_argument("--group-size", type=int, default=8, help="G rollouts per example for the gate diagnostics")
    ap.add_argument("--neg-mode", default="paper", choices=data.NEG_MODES, help="z- for the diagnostics (paper: sec. 5)")
    ap.add_argument("--explain", type=int, default=0, help="write explain.html for the first N examples (needs --gate-teacher)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the diagnostics' sampling and z- crops")
    args = ap.parse_args(argv)
    if args.data is None:
        if args.bench != "zoom":
            ap.error(f"--data is required for --bench {args.bench}")
        args.data = "synthetic:256:1"
    if args.explain and not args.gate_teacher:
        ap.error("--explain needs --gate-teacher (the colours are the teacher's evidence gap)")
    if min(args.max_new_tokens, args.batch_size, args.group_size) < 1 or (args.limit is not None and args.limit < 1):
        ap.error("--max-new-tokens, --batch-size, --group-size and --limit must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    rank, _, device = vlm.setup_distributed()
    try:
        examples = benchmarks.read(args.bench, args.data, args.image_root)[:args.limit]
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # CPU bf16 is slow and lossy
        model, processor = vlm.load(args.model, dtype=dtype, device=device)
        kw = dict(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, progress=True)
        acc, preds = evaluate(model, processor, examples, args.bench, **kw)
        blind_preds = evaluate(model, processor, examples, args.bench, blind=True, **kw)[1] if args.blind else None
        gate = rollouts = None
        if args.gate_teacher:
            teacher = Teacher(*vlm.load(args.gate_teacher, dtype=dtype, device=device), student_processor=processor)
            # Half the examples per call: each brings G rollouts, replayed under two views.
            gate, rollouts = gate_diagnostics(model, processor, teacher, examples, args.bench,
                                              group_size=args.group_size, batch_size=max(1, args.batch_size // 2),
                                              max_new_tokens=args.max_new_tokens, neg_mode=args.neg_mode,
                                              seed=args.seed, explain=args.explain, progress=True)
        if rank == 0:  # every rank holds all results (gathered); one writes them
            print(write_outputs(args, examples, preds, blind_preds, gate, rollouts))
            blind = benchmarks.aggregate(args.bench, blind_preds)["overall"][0] if blind_preds else None
            if blind is not None and blind >= acc["overall"]:
                print("\n" + "!" * 100 + f"\n!!! WARNING: BLIND accuracy {blind:.3f} is NOT lower than real accuracy "
                      f"{acc['overall']:.3f}: the model is not using the image, or the evaluation is broken.\n"
                      + "!" * 100, file=sys.stderr)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
