"""
Evaluate a VLM the way V-Zero is evaluated (paper sec. 7): the model sees the FULL image and the
question, never a crop; greedy by default; each benchmark's own prompt, answer rule and
aggregation. Optional: a blind control (same prompts, grey images), a local LLM judge for what the
rules cannot settle, and diagnostics of the evidence gate (Eqs. 17-20) with an HTML explain page
(gate_eval.py: run with the checkpoint's own method and gate knobs).

    python eval.py --model Qwen/Qwen3-VL-2B-Instruct --bench vstar --data vstar_bench/ --out-dir out/eval/vstar --blind
    torchrun --nproc_per_node=8 eval.py --model out/vzero/ckpt-000060 --bench zoombench --data test.parquet \\
        --out-dir out/eval/zoom --judge Qwen/Qwen3-30B-A3B-Instruct-2507 --setup zwz
    python eval.py --model tiny:qwen2_5_vl --bench zoom --data synthetic:8:1 --out-dir out/eval/zoom \\
        --max-new-tokens 8 --blind --gate-teacher tiny:qwen2_5_vl@1 --explain 2      # CPU smoke run
    python eval.py ... --resume              # after a kill: keeps every finished batch, does the rest

Answer rules (--rules, answer_rules.py). `official` (default) scores the RAW response exactly as
each benchmark's reference scorer does (lmms-eval for V*, VLMEvalKit for HR-Bench, the benchmarks'
own scripts for MME-RealWorld and MMStar, ZwZ's with the mathruler package for ZoomBench): the same
whitespace, the same Unicode case behaviour, every clause, quirks included; agreement with the
upstream code run verbatim is tested case by case (tests/test_answer_rules_parity.py). Reasoning
blocks (--strip-reasoning): `upstream` (default) removes them only where the scorer does by default
(V*: lmms-eval's <think> and <analysis> tags); `on` removes them everywhere (HR-Bench: VLMEvalKit's
SPLIT_THINK=True), `off` nowhere (V*: lmms-eval's --reasoning_tags none). Only V* and HR-Bench have
that switch upstream; results.md names the protocol each number follows and marks the ones that
follow none (stripping where the scorer cannot, or a judge stage where the official protocol has
none: V*, HR-Bench, MME-RealWorld, MMStar). A response no rule can settle ("verdict": null) counts
as wrong, as officially; with --judge MODEL a local LLM decides those (judge.py, ZwZ's protocol, the
official one for ZoomBench only) and the report shows both.
`strict` is the project's own reading, deliberately different from official, case by case:
  all           the answer part only: after the last </think>, inside the last <answer>...</answer>
  V*            a capital A-D standing alone: "Based on the image, D" reads D (official: B, from
                "Based"); a lower-case "b" is no letter (official upper-cases it: B)
  HR-Bench      one option letter as a token anywhere (official: among the last 4 tokens), no
                "answer is X" clause, no API-failure clause
  MME-RealWorld every "The answer is"-style prefix removed (official: two fused, never removed), a
                standalone capital A-E (official: the first anywhere); "" reads nothing (official: A)
  MMStar        the letter at MMStar's positions must stand alone ("cat" is not C; official: C)
  ZoomBench     normalized equality (no mathruler: LaTeX stays unsettled), and an MCQ may be
                settled, right or wrong, by the option letter it names (official: only the judge)
So strict is not uniformly stricter: it reads past "Based on ..." and "Answer: X" and honours
<answer> tags where official does not. Not comparable with published numbers.

Inference setup (--setup): what the model is run with.
  greedy  (default) greedy decoding, the checkpoint's own pixel bounds, no system prompt, 1024
          new tokens: a deterministic number to compare checkpoints by.
  paper   what is known of V-Zero's own (its eval scripts are unreleased; the release's rollout
          and validation settings): temperature 1.0, top-p 1.0, no top-k, thinking off, no system
          prompt, pixels in [65,536, 16,777,216], 2048 new tokens; one sample per item, seeded.
  zwz     ZwZ's eval (mm-eval/infer_without_tool.py), the published ZoomBench protocol:
          temperature 0.7, top-p 0.8, its <answer>-tag system prompt, pixels in [65,536,
          16,777,216], 8192 new tokens. Not reproduced: top-k 20 and presence penalty 1.5
          (rollout.sample has no such knobs), and the system prompt is sent as the first
          paragraph of the user turn (model.student_prompts has no system turn).
--min-pixels / --max-pixels / --max-new-tokens override the setup's values.

--out-dir receives results.md (the tables, also printed), results.json, and one line per item in
predictions.jsonl (response, extracted answer, prediction, verdict, or the error that kept it out),
predictions_blind.jsonl, predictions_crop.jsonl (ZoomBench's ground-truth crop, when the data has
it: the crop-view accuracy and the zooming gap), judge*.jsonl (the judge's raw verdicts),
gate_rollouts.jsonl, explain.html. Items are written per batch, per rank (NAME.rankR.jsonl), and
merged at the end, so a killed run keeps what it scored; --resume continues it (refused if the
settings changed). An item whose benchmark data is bad (benchmarks.BadItem, or an image that does
not decode) is recorded with its id and reason, counted, and left out of every denominator.

Which files each --bench reads, and how they are streamed (each rank decodes only its share's
images; memory holds a batch): benchmarks.py. On one machine prefer `torchrun --standalone`: with
torch 2.13, --master_port=0 reaches the workers as port 0 and they never meet.

From Python (e.g. the zoom-world demo):
    acc, preds = evaluate(model, processor, data.synthetic(64, 1))   # acc["overall"] in [0, 1]
Under torchrun every rank must call it: each evaluates every world-th example, all get all results.
Tests: python -m pytest -q tests/test_eval.py tests/test_judge.py
"""

import argparse
import dataclasses
import json
import os
import resource
import sys
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

import answer_rules
import benchmarks
import data
import model as vlm
import parallel
from parallel import gather_lists as _gather, share_of as _share, world_of as _world
from config import Config
from gate_eval import GATE_SETTINGS, explain_page, gate_diagnostics, gate_settings
from judge import Judge, said_yes
from judge import MAX_NEW_TOKENS as JUDGE_MAX_NEW_TOKENS
from rollout import decode, sample
from teacher import Teacher

MAX_NEW_TOKENS = 1024  # prompts ask for a letter or a word; thinking is off

ZWZ_SYSTEM_PROMPT = ("You are a helpful assistant.\n The assistant first thinks about the reasoning process in the "
                     "mind and then provides the user with the answer. The answer are enclosed within <answer> "
                     "</answer> tags, respectively, i.e., reasoning process here <answer> answer here </answer>")
# --setup: temperature (0 = greedy), top_p, min_pixels, max_pixels (None = the checkpoint's own),
# system prompt, max_new_tokens. See the top of this file for where each comes from.
SETUPS = {"greedy": dict(temperature=0.0, top_p=1.0, min_pixels=None, max_pixels=None, system_prompt=None,
                         max_new_tokens=MAX_NEW_TOKENS),
          "paper": dict(temperature=1.0, top_p=1.0, min_pixels=65_536, max_pixels=16_777_216, system_prompt=None,
                        max_new_tokens=2048),
          "zwz": dict(temperature=0.7, top_p=0.8, min_pixels=65_536, max_pixels=16_777_216,
                      system_prompt=ZWZ_SYSTEM_PROMPT, max_new_tokens=8192)}
VIEWS = {"full": "predictions", "blind": "predictions_blind", "crop": "predictions_crop"}  # view -> file


# ----------------------------------------------------------------------------------------------
# Finished records survive a kill: one append-only file per rank, merged at the end.

class Log:
    """The finished records of one output file (NAME.jsonl). Each rank appends every batch to
    NAME.rankR.jsonl and flushes it to disk; `finish` merges them into NAME.jsonl. `done` reads
    NAME.jsonl and every NAME.rank*.jsonl (any earlier number of ranks), keyed by item id."""

    def __init__(self, out_dir, name, rank=0):
        self.dir, self.name = Path(out_dir), name
        self.path = self.dir / f"{name}.rank{rank}.jsonl"

    def parts(self):
        return sorted(self.dir.glob(f"{self.name}.rank*.jsonl"))

    def done(self):
        out = {}
        for f in self.parts() + [p for p in [self.dir / f"{self.name}.jsonl"] if p.exists()]:
            lines = f.read_text(encoding="utf-8").split("\n")  # [..., ""] when the file ends with a newline
            tail_ok = True
            for n, line in enumerate(lines):
                try:
                    if line:
                        r = json.loads(line)
                        out[r["id"]] = r
                except (json.JSONDecodeError, KeyError, TypeError):
                    if n < len(lines) - 1:  # only a file's last line can be cut short (by a kill)
                        raise ValueError(f"{f} line {n + 1}: not a record of eval.py; move this file away") from None
                    tail_ok = False  # that item is asked again
            if f == self.path and lines[-1]:  # our own file, killed mid-line: end the line, or cut it off
                with open(f, "r+b") as fh:
                    if tail_ok:
                        fh.seek(0, os.SEEK_END)
                        fh.write(b"\n")
                    else:
                        fh.truncate(len("\n".join(lines[:-1]).encode()) + (len(lines) > 1))
        return out

    def write(self, records):
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            f.flush()
            os.fsync(f.fileno())  # a kill (or power loss) right after keeps this batch

    def finish(self, records):
        # Rank 0, after every rank's last write (the gather is a barrier): NAME.jsonl replaces the parts.
        tmp = self.dir / f"{self.name}.jsonl.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        os.replace(tmp, self.dir / f"{self.name}.jsonl")
        for part in self.parts():
            part.unlink()


# ----------------------------------------------------------------------------------------------
# Evaluation.

def blank(size):
    # The blind control: mid-grey at the real image's size, so the prompt keeps its number of visual
    # tokens and only the pixels are gone. A model that scores as well blind is not using the image.
    return Image.new("RGB", size, (128, 128, 128))


def view_image(ex, view):
    """The image the model sees in `view` ("full", "blind" or "crop": ZoomBench's ground-truth crop,
    ex.pos_crop). Decodes it here, so a bad image raises a ValueError naming the item and field."""
    if view == "crop":
        return dataclasses.replace(ex, image_source=ex.pos_crop).image
    image = ex.image  # decoded once; then the record checked against it (its boxes fit), crops untouched
    dataclasses.replace(ex, image_source=image, pos_crop=None, neg_crop=None).validate()
    return blank(image.size) if view == "blind" else image


@torch.no_grad()
def respond(model, processor, images, questions, *, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, top_p=1.0,
            seeds=None):
    """The model's response to each [image, question]: [(text, truncated)]. Greedy when temperature
    is 0; else one sample each, seeded per item (seeds) so that a rerun, a resume or another number
    of ranks draws the same."""
    prompts = vlm.student_prompts(processor, images, questions)  # left-padded [B, P] + pixel blocks
    # The one sampler of the project (rollout.py): it stops at EOS and never emits vision tokens.
    greedy = temperature == 0
    knobs = {} if greedy else dict(temperature=temperature, top_p=top_p, seed=seeds)
    ro = sample(model, processor, prompts, group_size=1, max_new_tokens=max_new_tokens, greedy=greedy, old_logp=False,
                **knobs)
    return list(zip(decode(processor, ro), ro.truncated.tolist()))  # ro.response_ids [B, T]


def _error(i, item, reason):
    # The record of an item that could not be evaluated: left out of every denominator, counted.
    return {"index": i, "id": item.id, "error": reason, "meta": getattr(item, "meta", {})}


def evaluate(model, processor, examples, bench="zoom", *, view="full", rules="official", strip="upstream", batch_size=8,
             max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, top_p=1.0, system_prompt=None, seed=0, log=None,
             progress=False, distributed=None):
    """(accuracy, records): accuracy {name: value in [0, 1]} as the benchmark reports it, "overall"
    first, rule-only, over the items without an error; records one per item in example order.
    examples may hold benchmarks.BadItem (recorded as errors). bench picks the answer rule and the
    aggregation ("zoom" for zoom-world examples); rules and strip how it reads answers
    (answer_rules.verdict). With a Log, finished batches are appended as they come and the items it
    already holds are not asked again."""
    missing = [ex.id for ex in examples if isinstance(ex, data.Example) and ex.answer is None]
    if missing:
        raise ValueError(f"evaluate: {len(missing)} examples have no answer (field answer), e.g. {missing[:3]}")
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {list(VIEWS)}")
    rank, world_size = _world(distributed)
    ids = {item.id for item in examples}
    done = {k: r for k, r in (log.done() if log else {}).items() if k in ids}  # (an earlier --limit may differ)
    _gather([], world_size)  # every rank has read the log before any rank appends to it
    # The items this call asks the model about: not done, readable, and (crop view) with a crop.
    todo = [i for i, ex in enumerate(examples) if isinstance(ex, data.Example) and ex.id not in done
            and (view != "crop" or ex.pos_crop is not None)]
    share, padded = _share(len(todo), rank, world_size)
    records = []
    for start in tqdm(range(0, len(padded), batch_size), desc=view, disable=not (progress and rank == 0)):
        batch = [(k < len(share), todo[p]) for k, p in enumerate(padded[start:start + batch_size], start)]
        out, asked = [], []  # asked: (is real, index, image) of the items whose image decoded
        for real, i in batch:
            try:
                asked.append((real, i, view_image(examples[i], view)))
            except ValueError as e:  # bad benchmark data: this item is out, the evaluation goes on
                out += [_error(i, examples[i], str(e))] if real else []
        # A batch none of whose images decode still makes its generate call (lockstep), on a stand-in.
        images = [img for _, _, img in asked] or [blank((28, 28))]
        questions = [examples[i].question for _, i, _ in asked] or ["?"]
        if system_prompt:
            questions = [f"{system_prompt}\n\n{q}" for q in questions]
        answers = respond(model, processor, images, questions, max_new_tokens=max_new_tokens, temperature=temperature,
                          top_p=top_p, seeds=[seed * 1_000_003 + i for _, i, _ in asked] or [seed])
        # One record per item: what the model said, what the benchmark's rule read from it, and
        # whether that is right (verdict None: no rule could settle it; it counts as wrong).
        for (real, i, _), (text, truncated) in zip(asked, answers):
            if real:
                ex = examples[i]
                extracted, pred, verdict = answer_rules.verdict(bench, text, ex, rules, strip)
                out.append({"index": i, "id": ex.id, "answer": ex.answer, "response": text, "extracted": extracted,
                            "pred": pred, "verdict": verdict, "correct": verdict is True, "truncated": truncated,
                            "meta": ex.meta})
        if log and out:
            log.write(out)
        records += out
    # Gathered to EVERY rank, so every rank returns the same numbers and a training loop may log
    # them from any rank; then the items of earlier runs and the unreadable rows.
    records = _gather(records, world_size) + list(done.values())
    records += [_error(i, item, item.reason) for i, item in enumerate(examples) if isinstance(item, benchmarks.BadItem)]
    records = sorted(records, key=lambda r: r["index"])
    return {name: acc for name, (acc, _) in benchmarks.aggregate(bench, records).items()}, records


def judge_records(judge, examples, records, *, batch_size=8, max_new_tokens=JUDGE_MAX_NEW_TOKENS, log=None,
                  distributed=None, progress=False):
    """Ask `judge` about the records no rule settled (verdict None, no error), sharded over the
    ranks; each judged record gains "judge" (the raw output) and "judge_yes"; every record gains
    "correct_judged" (rule, then judge). Returns the judge's own records (for judge*.jsonl)."""
    rank, world_size = _world(distributed)
    ids = {r["id"] for r in records}
    done = {k: v for k, v in (log.done() if log else {}).items() if k in ids}
    _gather([], world_size)  # every rank has read the log before any rank appends to it
    by_id = {ex.id: ex for ex in examples if isinstance(ex, data.Example)}
    todo = [r for r in records if r.get("verdict", False) is None and not r.get("error") and r["id"] not in done]
    share, _ = _share(len(todo), rank, world_size)  # the judge is never sharded: no lockstep needed
    mine = [todo[p] for p in share]
    verdicts = []
    for start in tqdm(range(0, len(mine), batch_size), desc="judge", disable=not (progress and rank == 0)):
        batch = mine[start:start + batch_size]
        # The judge reads what the rule read (ZwZ: the extracted answer), the question as prompted
        # and the gold answer.
        items = [(by_id[r["id"]].question, r["answer"], r["extracted"]) for r in batch]
        out = [{"index": r["index"], "id": r["id"], "question": q, "gold": g, "response": a, "output": o,
                "yes": said_yes(o)} for r, (q, g, a), o in
               zip(batch, items, judge.ask(items, batch_size=batch_size, max_new_tokens=max_new_tokens))]
        if log:
            log.write(out)
        verdicts += out
    verdicts = sorted(_gather(verdicts, world_size) + list(done.values()), key=lambda v: v["index"])
    judged = {v["id"]: v for v in verdicts}
    for r in records:
        if r["id"] in judged and not r.get("error"):
            r["judge"], r["judge_yes"] = judged[r["id"]]["output"], judged[r["id"]]["yes"]
        r["correct_judged"] = bool(r.get("correct")) or bool(r.get("judge_yes"))
    return verdicts


# ----------------------------------------------------------------------------------------------
# Report.

def _table(bench, preds, key):
    # {view: {name: (accuracy, n)}} for every view that ran.
    return {view: benchmarks.aggregate(bench, rows, key) for view, rows in preds.items()}


def _ids(rows, cap=20):
    ids = [r["id"] for r in rows]
    return ", ".join(ids[:cap]) + (f", ... ({len(ids) - cap} more)" if len(ids) > cap else "")


def report(args, examples, preds, gate, peak):
    """results.md text: the benchmark's numbers per view (full, blind, crop) rule-only and, with
    --judge, rule + judge; which rules and setup; chance; errors, unsettled items, truncations; the
    gate diagnostics. preds: {view: records}."""
    pct = lambda v: "-" if v is None or v != v else f"{100 * v:.1f}"  # v != v: NaN (an empty group)
    good = [ex for ex in examples if isinstance(ex, data.Example)]
    views = [v for v in VIEWS if v in preds]
    setup = SETUPS[args.setup]
    rule_protocol, judge_protocol = answer_rules.protocol(args.bench, args.rules, args.strip_reasoning, args.judge)
    lines = [f"# {args.model} on {args.bench} ({args.data}), {len(examples)} items", "",
             f"Rules: **{args.rules}**, --strip-reasoning {args.strip_reasoning}.",
             f"Protocol of the rule-only numbers: {rule_protocol}.",
             *([f"Protocol of the rule + judge numbers: {judge_protocol}."] if judge_protocol else []),
             f"Setup: **{args.setup}**: " + ("greedy" if setup["temperature"] == 0 else
                                              f"temperature {setup['temperature']}, top-p {setup['top_p']}, seed {args.seed}")
             + (f", pixels [{args.min_pixels or 'own'}, {args.max_pixels or 'own'}], "
                if args.min_pixels or args.max_pixels else ", the checkpoint's pixel bounds, ")
             + ("system prompt in the user turn" if setup["system_prompt"] else "no system prompt")
             + f", max {args.max_new_tokens} new tokens."]
    for key, title in (("correct", "rules only"), ("correct_judged", f"rules + judge {args.judge}")):
        if key == "correct_judged" and not args.judge:
            continue
        tables = _table(args.bench, preds, key)
        head = "| metric | n | accuracy % |" + "".join({"blind": " blind % |", "crop": " crop view % | n (crop) |"}[v]
                                                       for v in views[1:])
        lines += ["", f"## Accuracy, {title}", "", head, "|---" + "|---:" * (head.count("|") - 2) + "|"]
        for name, (acc, n) in tables["full"].items():
            cells = [f"| {name} | {n} | {pct(acc)} |"]
            for v in views[1:]:
                acc_v, n_v = tables[v].get(name, (None, 0))
                cells.append(f" {pct(acc_v)} |" + (f" {n_v} |" if v == "crop" else ""))
            lines.append("".join(cells))
        if "crop" in preds:  # ZwZ's zooming gap: crop view minus full view, on the items that have both
            full = {r["id"]: r for r in preds["full"] if not r.get("error")}
            both = [(full[r["id"]], r) for r in preds["crop"] if not r.get("error") and r["id"] in full]
            if both:
                gap = sum(bool(c[key]) - bool(f[key]) for f, c in both) / len(both)
                lines.append(f"\nZooming gap (crop view - full view, on the {len(both)} items with both): "
                             f"{100 * gap:+.1f} points.")
    lines.append("")
    if good and all(ex.choices for ex in good):
        lines.append(f"Chance (uniform over each item's options): {pct(data.chance_accuracy(good))}%.")
    if args.bench == "hrbench":
        lines.append("HR-Bench: overall = Avg; each number is the mean over option-rotation cycles.")
    blind = _table(args.bench, preds, "correct").get("blind")
    full = _table(args.bench, preds, "correct")["full"]
    if blind and blind["overall"][0] >= full["overall"][0]:
        lines.append(f"**WARNING: blind accuracy {pct(blind['overall'][0])}% is not below the real "
                     f"{pct(full['overall'][0])}%: the model does not use the image (or the evaluation is broken).**")
    for view in views:
        rows, tag = preds[view], "" if view == "full" else f" ({view} view)"
        errors = [r for r in rows if r.get("error")]
        if errors:
            lines.append(f"\n**{len(errors)} of {len(rows)} items{tag} could not be evaluated** (bad benchmark data) and "
                         f"are left out of every denominator: " + "; ".join(f"{r['id']}: {r['error']}" for r in errors[:10])
                         + (f"; ... ({len(errors) - 10} more)" if len(errors) > 10 else "")
                         + f" (\"error\" in {VIEWS[view]}.jsonl).")
        unsettled = [r for r in rows if not r.get("error") and r["verdict"] is None]
        if unsettled:
            said = (f" The judge said yes to {sum(bool(r.get('judge_yes')) for r in unsettled)} of them "
                    f"(judge{'' if view == 'full' else '_' + view}.jsonl).") if args.judge else \
                " Counted wrong, as the official scorers do; --judge MODEL lets a local LLM decide them."
            lines.append(f"\n{len(unsettled)} responses{tag}: no rule could settle them ({_ids(unsettled)}; "
                         f"\"verdict\": null).{said}")
        truncated = sum(bool(r.get("truncated")) for r in rows)
        if truncated:
            lines.append(f"\n{truncated} responses{tag} hit --max-new-tokens {args.max_new_tokens} before ending.")
    lines.append(f"\nPeak memory of rank 0: {peak}.")
    if gate:
        f = lambda v, spec: "-" if v is None else format(v, spec)
        knobs = ", ".join(f"{k} {v}" for k, v in gate["settings"].items())
        lines += ["", f"## Gate diagnostics: teacher {args.gate_teacher}; settings from {gate['settings_from']}: {knobs}",
                  "", "| rollouts | accuracy % | unsettled | mean Delta, correct | mean Delta, wrong | AUROC(w) | AUROC(p) |",
                  "|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {gate['rollouts']} | {pct(gate['rollout_accuracy'])} | {gate['unsettled']} | "
                  f"{f(gate['delta_correct'], '+.4f')} | {f(gate['delta_wrong'], '+.4f')} | "
                  f"{f(gate['auroc_weight'], '.3f')} | {f(gate['auroc_score'], '.3f')} |",
                  "", "Delta = per-response mean of log pi_t(y|x,z+) - log pi_t(y|x,z-) over its tokens (Eq. 18); "
                  "AUROC of the gate weight w as a detector of correct rollouts (0.5 = no signal; - = one class only)."]
    return "\n".join(lines) + "\n"


def write_outputs(args, examples, preds, verdicts, gate, rollouts, peak):
    """Rank 0 writes everything needed to audit a number: every response and how it was read.
    Returns the results.md text."""
    out = Path(args.out_dir)
    for view, rows in preds.items():
        Log(out, VIEWS[view]).finish(rows)
    for view, rows in verdicts.items():
        Log(out, "judge" if view == "full" else f"judge_{view}").finish(rows)
    if rollouts:  # per-rollout p, a, w, correctness; the token-level lists only go to the page
        Log(out, "gate_rollouts").finish([{k: v for k, v in r.items() if k not in ("tokens", "delta")} for r in rollouts])
    if args.explain:
        (out / "explain.html").write_text(explain_page(examples, rollouts, gate_settings(args)[0],
                                                       title=f"V-Zero gate: {args.model} / teacher {args.gate_teacher} "
                                                             f"on {args.bench}"), encoding="utf-8")
    text = report(args, examples, preds, gate, peak)
    (out / "results.md").write_text(text, encoding="utf-8")
    # {view: {name: {accuracy, n}}}; an empty group's NaN becomes null (NaN is not JSON).
    table = lambda key: {v: {k: {"accuracy": a if a == a else None, "n": n} for k, (a, n) in t.items()}
                         for v, t in _table(args.bench, preds, key).items()}
    with open(out / "results.json", "w", encoding="utf-8") as f:
        protocols = answer_rules.protocol(args.bench, args.rules, args.strip_reasoning, args.judge)
        json.dump({"args": vars(args), "rules": args.rules, "strip_reasoning": args.strip_reasoning,
                   "protocol": {"rules": protocols[0], "rules_and_judge": protocols[1]},
                   "setup": SETUPS[args.setup], "accuracy": table("correct"),
                   "accuracy_with_judge": table("correct_judged") if args.judge else None,
                   "errors": {v: [{"id": r["id"], "error": r["error"]} for r in rows if r.get("error")]
                              for v, rows in preds.items()},
                   "unsettled_ids": {v: [r["id"] for r in rows if not r.get("error") and r["verdict"] is None]
                                     for v, rows in preds.items()},
                   "gate": gate, "peak_memory": peak}, f, indent=1)
    return text


# Arguments that decide what a finished record holds: a resumed run must match them.
RESUME_KEYS = ("model", "bench", "data", "image_root", "rules", "strip_reasoning", "setup", "min_pixels", "max_pixels",
               "max_new_tokens", "seed", "judge", "judge_max_new_tokens")


def model_identity(model):
    """What --resume compares besides the model's name: the same path may hold another model later
    (retrained there with --overwrite). A train.py checkpoint: the CRC-32 of each weight file, from
    its manifest; another local directory: its weight files' sizes and modification times; a hub
    id or a tiny spec: None (the name says it)."""
    path = Path(os.path.expanduser(model))
    if not path.is_dir():
        return None
    manifest = path / "manifest.json"
    if manifest.exists():
        return {name: entry["crc32"] for name, entry in json.loads(manifest.read_text()).items()
                if name.endswith((".safetensors", ".bin"))}
    return {p.name: f"{p.stat().st_size} bytes, modified {p.stat().st_mtime_ns}"
            for p in sorted(path.glob("*")) if p.name.endswith((".safetensors", ".bin"))}


def prepare_out_dir(args, rank):
    """Refuse to mix runs: an out-dir with an earlier evaluation is continued only with --resume and
    only under the same settings (RESUME_KEYS) and the same model (model_identity); a judge may be
    added to a run that had none."""
    out, config = Path(args.out_dir), Path(args.out_dir) / "eval_config.json"
    earlier = sorted(p.name for p in out.glob("*.jsonl")) if out.is_dir() else []
    identity = model_identity(args.model)
    if config.exists() or earlier:
        if not args.resume:
            raise SystemExit(f"{out} holds an earlier evaluation ({', '.join(earlier[:4]) or config.name}); pass "
                             "--resume to continue it, or choose another --out-dir")
        old = json.loads(config.read_text()) if config.exists() else {}
        changed = [k for k in RESUME_KEYS if old.get(k) != getattr(args, k) and not (k == "judge" and old.get(k) is None)
                   and not (k == "judge_max_new_tokens" and old.get("judge") is None)]
        if changed:
            raise SystemExit(f"--resume: {out} was evaluated with other settings: "
                             + ", ".join(f"{k} {old.get(k)!r} (now {getattr(args, k)!r})" for k in changed))
        if "model_identity" in old and old["model_identity"] != identity:   # absent: recorded before identities
            raise SystemExit(f"--resume: the model at {args.model} is not the one {out} evaluated (its weight files "
                             f"differ: {old['model_identity']} then, {identity} now); evaluate it in another --out-dir")
    _gather([], _world(None)[1])  # every rank has looked before rank 0 writes
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps({**{k: getattr(args, k) for k in RESUME_KEYS}, "model_identity": identity},
                                     indent=1))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="hub id, local dir (a train.py checkpoint) or tiny:FAMILY[@SEED]")
    ap.add_argument("--bench", required=True, choices=benchmarks.BENCHES, help="which reader, answer rule and report")
    ap.add_argument("--data", help="the benchmark file or folder (see benchmarks.py); for zoom: synthetic:N:SEED "
                    "(default synthetic:256:1, held out from training's seed 0)")
    ap.add_argument("--image-root", help="folder the image paths of V* / MME-RealWorld JSON (or of a parquet "
                    "that stores paths) are relative to (default: the data file's folder)")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--resume", action="store_true", help="continue the evaluation in --out-dir (same settings)")
    ap.add_argument("--rules", default="official", choices=answer_rules.RULES,
                    help="official: each benchmark's reference scorer (comparable with published numbers); "
                    "strict: the project's own reading (see the top of this file)")
    ap.add_argument("--strip-reasoning", default="upstream", choices=answer_rules.STRIP,
                    help="official rules: remove reasoning blocks where the scorer does by default (upstream), "
                    "everywhere (on) or nowhere (off); recorded in results.md with the rule")
    ap.add_argument("--setup", default="greedy", choices=SETUPS, help="inference setup (see the top of this file)")
    ap.add_argument("--min-pixels", type=int, help="image pixel bounds (default: the setup's, else the checkpoint's)")
    ap.add_argument("--max-pixels", type=int)
    ap.add_argument("--max-new-tokens", type=int, help="default: the setup's (greedy 1024, paper 2048, zwz 8192)")
    ap.add_argument("--blind", action="store_true", help="also evaluate with mid-grey images of the same size")
    ap.add_argument("--judge", help="a local LLM (hub id or folder) that decides the items no rule settles")
    ap.add_argument("--judge-max-new-tokens", type=int, default=JUDGE_MAX_NEW_TOKENS)
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per generate call, per rank")
    ap.add_argument("--limit", type=int, help="only the first N items of the file")
    ap.add_argument("--gate-teacher", help="teacher for the gate diagnostics (needs answers and boxes)")
    # The diagnostics run the method the checkpoint was trained with: its train_config.json (method,
    # G, gate knobs, how z+ and z- are cut); these flags override it and are recorded in the results.
    for name in GATE_SETTINGS:
        field = Config.__dataclass_fields__[name]
        ap.add_argument("--" + name.replace("_", "-"), type=type(field.default), default=None,
                        help=f"gate diagnostics: {field.metadata['help']} (default: the checkpoint's run, else "
                        f"{field.default})")
    ap.add_argument("--explain", type=int, default=0, help="write explain.html for the first N examples (needs --gate-teacher)")
    ap.add_argument("--seed", type=int, default=0, help="seeds sampling (paper / zwz setups), the diagnostics and z- crops")
    args = ap.parse_args(argv)
    if args.data is None:
        if args.bench != "zoom":
            ap.error(f"--data is required for --bench {args.bench}")
        args.data = "synthetic:256:1"
    if args.strip_reasoning != "upstream" and (args.rules == "strict" or args.bench in ("jsonl", "zoom")):
        ap.error("--strip-reasoning applies to the official rules of the benchmarks; strict and the project's own "
                 "formats always read the answer part only")
    if args.explain and not args.gate_teacher:
        ap.error("--explain needs --gate-teacher (the colours are the teacher's evidence gap)")
    for key in ("min_pixels", "max_pixels", "max_new_tokens"):  # explicit flags win over the setup
        if getattr(args, key) is None:
            setattr(args, key, SETUPS[args.setup][key])
    counts = (args.max_new_tokens, args.batch_size, args.group_size or 1, args.judge_max_new_tokens, args.limit or 1,
              args.min_pixels or 1, args.max_pixels or 1)
    if min(counts) < 1:
        ap.error("--max-new-tokens, --batch-size, --group-size, --judge-max-new-tokens, --limit and the pixel bounds "
                 "must be >= 1")
    return args


def _peak_memory(device):
    # Peak resident memory of this process (Linux reports KiB), and the GPU's peak allocation.
    rss = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB RSS"
    return rss + (f", {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB GPU" if device.type == "cuda" else "")


def main(argv=None):
    args = parse_args(argv)
    rank, _, device = parallel.setup_distributed()
    run(args, rank, device)
    parallel.end_distributed()     # after run() has released the models; after an error torchrun stops the others


def run(args, rank, device):
    examples = benchmarks.read(args.bench, args.data, args.image_root, args.limit)
    prepare_out_dir(args, rank)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # CPU bf16 is slow and lossy
    model, processor = vlm.load(args.model, dtype=dtype, device=device, min_pixels=args.min_pixels,
                                max_pixels=args.max_pixels)
    setup = SETUPS[args.setup]
    kw = dict(rules=args.rules, strip=args.strip_reasoning, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
              temperature=setup["temperature"], top_p=setup["top_p"], system_prompt=setup["system_prompt"],
              seed=args.seed, progress=True)
    # The views: full; blind if asked; the ground-truth crop when the data has one (ZoomBench).
    views = ["full"] + ["blind"] * args.blind + ["crop"] * any(getattr(ex, "pos_crop", None) is not None
                                                                for ex in examples)
    preds = {v: evaluate(model, processor, examples, args.bench, view=v, log=Log(args.out_dir, VIEWS[v], rank),
                         **kw)[1] for v in views}
    gate = rollouts = None
    if args.gate_teacher:
        teacher = Teacher(*vlm.load(args.gate_teacher, dtype=dtype, device=device), student_processor=processor)
        ok = {r["id"] for r in preds["full"] if not r.get("error")}  # items whose image decoded
        settings, where = gate_settings(args)
        # Half the examples per call: each brings G rollouts, replayed under two views.
        gate, rollouts = gate_diagnostics(model, processor, teacher,
                                          [ex for ex in examples if isinstance(ex, data.Example) and ex.id in ok],
                                          args.bench, settings=settings, rules=args.rules, strip=args.strip_reasoning,
                                          batch_size=max(1, args.batch_size // 2), max_new_tokens=args.max_new_tokens,
                                          seed=args.seed, explain=args.explain, progress=True)
        gate["settings_from"] = where
        del teacher
    verdicts = {}
    if args.judge:
        del model  # the judge takes the memory the evaluated model held
        if device.type == "cuda":
            torch.cuda.empty_cache()
        judge = Judge.load(args.judge, dtype=dtype, device=device)
        verdicts = {v: judge_records(judge, examples, preds[v], batch_size=args.batch_size,
                                     max_new_tokens=args.judge_max_new_tokens, progress=True,
                                     log=Log(args.out_dir, "judge" if v == "full" else f"judge_{v}", rank))
                    for v in views}
    if rank == 0:  # every rank holds all results (gathered); one writes them
        print(write_outputs(args, examples, preds, verdicts, gate, rollouts, _peak_memory(device)))
        acc = benchmarks.aggregate(args.bench, preds["full"])["overall"][0]
        blind = benchmarks.aggregate(args.bench, preds["blind"])["overall"][0] if args.blind else None
        if blind is not None and blind >= acc:
            print("\n" + "!" * 100 + f"\n!!! WARNING: BLIND accuracy {blind:.3f} is NOT lower than real accuracy "
                  f"{acc:.3f}: the model is not using the image, or the evaluation is broken.\n"
                  + "!" * 100, file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
