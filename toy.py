"""
The zoom world in miniature: a toy teacher and base student for a CPU, the demo, and the result.

    python train.py                 # the demo: build or reuse the toy models, V-Zero, a table
    python toy.py --results         # base vs OPD vs V-Zero vs random crop, 3 seeds: table + plot
    python toy.py --models          # only build (or find) the toy teacher and base student
    python toy_study.py             # when does the gate help? formats x missed boxes x 4 arms x 3 seeds

No Qwen checkpoint can be downloaded here, so this file makes the stand-ins for pretrained ones:
small real-architecture Qwen2.5-VL models (model.py, `small:qwen2_5_vl`, ~9M parameters) trained
from random weights by ordinary SUPERVISED learning on the zoom world (data.py). ANSWER LABELS
ARE USED HERE ONLY, to make the two starting points; V-Zero itself (train.py) never reads one.
- The teacher learns from (x, z+): the full image AND the crop of the boxed target, the view the
  frozen teacher gets in V-Zero. It reads the glyph from the crop; given an irrelevant crop z-
  it can only guess.
- The base student learns from x alone, on COARSER data: the same world with bigger glyphs. It
  answers in the right format (one word, then <|im_end|>), reads coarse glyphs well and the
  task's finer ones poorly, like a VLM that is good at coarse content and weak on fine detail.
Both are saved in transformers format under toy_ckpt/, one folder per setting (a hash of
every knob below), and reused by later runs.

Then V-Zero trains the base student on prompts WITHOUT answers (Example.without_answer) and
both students are scored on a held-out split (another seed of the world) with eval.py.
The measured result, what was tried, and how it maps to the paper: README.md, "The zoom-world
result". The study's conditions are options of this same world (Condition: the answer format and
the fraction of distillation prompts whose z+ box misses the target); the default is the demo's.
Tests: python -m pytest -q tests/test_toy.py
"""

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import statistics
import sys
import time

import torch
import transformers
from PIL import Image, ImageDraw
from tqdm import tqdm

import checkpoint
import data
import model as vlm
import train            # one way: train.py runs this file as a script for its no-argument demo
from eval import evaluate
from plot import panel
from prefix import encode, score
from rollout import decode, sample

# ---------------------------------------------------------------------------------------------
# Settings. Seeds of the world: TRAIN_SEED for every training split, HELDOUT_SEED for evaluation
# (data.synthetic makes example i of a seed the same for any n, so splits never overlap).
TRAIN_SEED, HELDOUT_SEED = 0, 1000
CACHE = "toy_ckpt"
MAX_NEW_TOKENS = 6   # an answer is 2-3 tokens ("plus" = p-l-us here) and <|im_end|>
# The zoom world at toy scale (data.synthetic's knobs). A 112 px canvas is what the tiny processor
# sees without resizing: 8x8 patches, 16 visual tokens, so a CPU step is cheap. The framed target
# is 48 px with a 30 px glyph (6 px cells), among 2 clutter objects (some are decoy frames with
# their own glyph). Measured on this model: with 10-20 px glyphs (the default world has 5-10) a
# student trained from scratch on the full view stays at chance for 150-300 steps, so there is
# no base to distil into; 40 px glyphs are learned in ~100 steps. The teacher's z+ is the 48 px
# box upscaled to 112 px (2.3x), its z- a 48 px crop elsewhere (often holding a decoy's glyph).
WORLD = dict(canvas=112, target_size=48, glyph_px=6, n_distractors=2)


@dataclasses.dataclass(frozen=True)
class Supervised:
    """One supervised run: which view it sees, how long, how fast. Labels: answer + <|im_end|>."""
    view: str            # "pos": (x, z+) as the V-Zero teacher sees it; "full": x as the student
    steps: int
    batch_size: int
    lr: float
    init: str = "small:qwen2_5_vl"   # model.load name: random weights, seeded
    data_seed: int = TRAIN_SEED
    world: dict = dataclasses.field(default_factory=dict)   # changes to WORLD for this run's data
    answer_format: str = "word"      # FORMATS: what the labels (and the question) look like


# Held-out: teacher (x, z+) 100%, (x, z-) 28.5%; student 53.5% (73% on its own 35 px glyphs).
TEACHER = Supervised(view="pos", steps=60, batch_size=16, lr=1e-3, init="small:qwen2_5_vl@1")
STUDENT = Supervised(view="full", steps=160, batch_size=16, lr=1e-3, init="small:qwen2_5_vl@0",
                     world=dict(glyph_px=7))


# ---------------------------------------------------------------------------------------------
# The conditions of the toy study (issue 23, toy_study.py), options of the same zoom world: the
# supervised answer FORMAT and the fraction of distillation prompts whose z+ box MISSES the target.
# The default (one word, every box right) is the demo's world, unchanged.
# A format is the decisive word, then 0, 1 or 2 follow-up sentences that name the symbol again and
# no other ("The symbol is a ring. A ring is a square outline, empty in the middle."). The
# examples keep answer = the decisive word: eval.py scores the FIRST choice a response names
# (data.match_choice), which is the decisive word of every format, since nothing before it names a
# symbol. FORMATS: name -> (follow-up sentences, max new tokens: the longest target + EOS + 2).
FORMATS = {"word": (0, MAX_NEW_TOKENS), "sentence": (1, 32), "two-sentences": (2, 50)}
FOLLOW_UPS = {"plus": ("A plus is two straight bars that meet.", "The plus has four equal arms."),
              "cross": ("A cross is two slanted bars that meet.", "The cross has four arms that point to the corners."),
              "ring": ("A ring is a square outline, empty in the middle.", "The ring has four sides and no ink inside."),
              "dot": ("A dot is a small filled square in the middle.", "The dot has no arms and no hole.")}
WORD_INSTRUCTION = " Answer with one word: "      # how data.synthetic's question ends
MISS_SEED = 7                                      # which prompts miss, and where their boxes go


@dataclasses.dataclass(frozen=True)
class Condition:
    answer_format: str = "word"      # FORMATS
    missed_boxes: float = 0.0        # fraction of distillation prompts whose z+ box misses the target

    def __post_init__(self):
        if self.answer_format not in FORMATS or not 0.0 <= self.missed_boxes <= 1.0:
            raise ValueError(f"Condition: answer_format in {list(FORMATS)} and 0 <= missed_boxes <= 1, got {self}")

    @property
    def name(self):
        return f"{self.answer_format}-missed{self.missed_boxes:g}"


DEFAULT = Condition()


def answer_text(label, answer_format):
    """The supervised target of one example: "ring", or "The symbol is a ring. A ring is ..."."""
    follow_ups = FOLLOW_UPS[label][:FORMATS[answer_format][0]]
    return " ".join([f"The symbol is a {label}.", *follow_ups]) if answer_format != "word" else label


def in_format(examples, answer_format):
    """The examples with the question asking for `answer_format` (answer and choices unchanged: the
    decisive word and the symbols). "word" returns them as they are."""
    if answer_format == "word":
        return list(examples)
    out = []
    for ex in examples:
        stem, instruction, _ = ex.question.partition(WORD_INSTRUCTION)
        if not instruction:
            raise ValueError(f"example {ex.id}: field question: not a zoom-world question: {ex.question!r}")
        names = ", ".join(ex.choices[:-1]) + f" or {ex.choices[-1]}"
        more = "one more sentence" if FORMATS[answer_format][0] == 1 else "two more sentences"
        out.append(dataclasses.replace(ex, question=f"{stem} Answer with a sentence that names it ({names}), then "
                                                    f"describe it in {more}."))
    return out


def miss_boxes(examples, fraction, canvas):
    """A fixed, seeded `fraction` of the examples with their box moved off the target: a square in
    the widest free band beside it (left, right, above or below; as wide as the band, at most the
    target's side, >= 32 px on a 112 px canvas with a 48 px target), at a seeded place along it. z+
    then shows clutter, not the glyph; meta["box_misses_target"] marks the example for the
    diagnostics. The same prompts and boxes for every arm and seed (MISS_SEED)."""
    rng = random.Random(MISS_SEED)
    out = list(examples)
    for i in sorted(rng.sample(range(len(examples)), round(fraction * len(examples)))):
        ex = examples[i]
        x0, y0, x1, y1 = (int(v) for v in ex.bbox)
        # (free width, box x-range low / high, box y-range low / high) of each band beside the target
        bands = [(x0, 0, x0, 0, canvas), (canvas - x1, x1, canvas, 0, canvas),
                 (y0, 0, canvas, 0, y0), (canvas - y1, 0, canvas, y1, canvas)]
        free, lo_x, hi_x, lo_y, hi_y = max(bands)
        side = min(free, x1 - x0)
        nx, ny = rng.randint(lo_x, hi_x - side), rng.randint(lo_y, hi_y - side)
        out[i] = dataclasses.replace(ex, bbox=(float(nx), float(ny), float(nx + side), float(ny + side)),
                                     meta={**ex.meta, "box_misses_target": True})
    return out


def _prompts(processor, examples, view):
    # view -> prompts: "full" the student's x; "pos"/"neg" the teacher's (x, z+) / (x, z-).
    questions = [ex.question for ex in examples]
    if view == "full":
        return vlm.student_prompts(processor, [ex.image for ex in examples], questions)
    views = [data.evidence_views(ex) for ex in examples]     # (full, pos, neg): one render each
    return vlm.teacher_prompts(processor, [v[0] for v in views], [v[1 if view == "pos" else 2] for v in views],
                               questions)


def answer_targets(tokenizer, answers):
    # The supervised target is exactly what the model should generate: "plus<|im_end|>".
    # -> ids [B, T] long (padded), mask [B, T] bool
    rows = [tokenizer(a + tokenizer.eos_token, add_special_tokens=False)["input_ids"] for a in answers]
    T = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (T - len(r)) for r in rows])
    mask = torch.tensor([[True] * len(r) + [False] * (T - len(r)) for r in rows])
    return ids, mask


# The code a toy model depends on: the world's rendering and views (data), the tiny models,
# tokenizer and prompts (model), the scoring (prefix), the supervised loop (this file). Its hash
# is part of the cache key, so a change to any of them builds new models instead of reusing ones
# the current code would not make. (Whole files: a comment edit costs one rebuild, ~3 min.)
CODE = ("data.py", "model.py", "prefix.py", "toy.py")


def code_version() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha1(f"torch {torch.__version__} transformers {transformers.__version__}".encode())
    for name in CODE:
        with open(os.path.join(here, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:12]


def _settings(run: Supervised) -> dict:
    # Everything the model depends on, the world and the code included: the cache key and toy_run.json.
    return {**dataclasses.asdict(run), "world": {**WORLD, **run.world}, "code": code_version()}


def supervised(run: Supervised, out_dir: str):
    """Train run.init on labelled zoom-world examples (cross-entropy on the answer tokens, scored
    with the same `prefix.score` as training) and save it in transformers format."""
    model, processor = vlm.load(run.init)
    examples = in_format(data.synthetic(run.steps * run.batch_size, run.data_seed, **{**WORLD, **run.world}),
                         run.answer_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.lr, weight_decay=0.01)
    warmup = max(1, run.steps // 10)        # linear warm-up, then cosine decay to 0
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / run.steps)))
    model.train()
    bar = tqdm(range(run.steps), desc=f"supervised {run.view}")
    for step in bar:
        batch = examples[step * run.batch_size:(step + 1) * run.batch_size]
        ids, mask = answer_targets(processor.tokenizer, [answer_text(ex.answer, run.answer_format)
                                                         for ex in batch])   # LABELS
        prompts = _prompts(processor, batch, run.view)
        logp = score(model, encode(model, prompts, hold_last=True), torch.arange(len(batch)), ids, mask)  # [B, T]
        loss = -logp.sum() / mask.sum()          # mean cross-entropy per answer token
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    tmp = out_dir + ".tmp"
    checkpoint.save_model_dir(model, processor, tmp)
    with open(os.path.join(tmp, "toy_run.json"), "w") as f:
        json.dump(_settings(run), f, indent=1)
    os.replace(tmp, out_dir)                   # atomic: a killed build leaves no half model


def toy_model(run: Supervised, name: str) -> str:
    """The folder of the model `run` makes, built on first use: toy_ckpt/NAME-HASH/."""
    cache = CACHE
    key = hashlib.sha1(json.dumps(_settings(run), sort_keys=True).encode()).hexdigest()[:10]
    out_dir = os.path.join(cache, f"{name}-{key}")
    if not os.path.isdir(out_dir):
        os.makedirs(cache, exist_ok=True)
        supervised(run, out_dir)
    return out_dir


@torch.no_grad()
def view_accuracy(model, processor, examples, view, max_new_tokens=MAX_NEW_TOKENS, batch_size=32):
    """Greedy accuracy of `model` answering from `view` ("full", "pos" or "neg")."""
    hits = 0
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        ro = sample(model, processor, _prompts(processor, batch, view), group_size=1,
                    max_new_tokens=max_new_tokens, greedy=True, old_logp=False)
        hits += sum(data.match_choice(t, ex.choices) == ex.answer for t, ex in zip(decode(processor, ro), batch))
    return hits / len(examples)


# ---------------------------------------------------------------------------------------------
# Distillation on the toy models: the recipe of train.py scaled to a CPU. Everything not set here
# is the release's default (gate alpha 0.5, w in [0, 2], k1 PPO-clip, clip 0.2 / dual 3, token-mean,
# 2 mini-batches per step). Changed for scale: the lr (1e-6 moves a 4B model; a 9M model trained
# at 1e-3 needs ~5e-5), 6 new tokens for a one-word answer (not 2048; FORMATS), 8 prompts x G = 8 per step.
DISTILL = dict(lr=5e-5, prompts_per_step=8, group_size=8, max_steps=20, save_every=5, keep_last=0,
               attn_implementation="eager")
N_TRAIN, N_HELDOUT = 2048, 256
DISTILL_SEED = TRAIN_SEED + 1      # distillation prompts: unseen by the supervised runs


def heldout_split(cond=DEFAULT):
    # Every box right: the held-out split measures the student, whose view x has no box.
    return in_format(data.synthetic(N_HELDOUT, HELDOUT_SEED, **WORLD), cond.answer_format)


def distill_prompts(cond=DEFAULT, keep_answers=False):
    # Answers are stripped unless asked for: then they feed only the logged diagnostics.
    prompts = in_format(data.synthetic(N_TRAIN, DISTILL_SEED, **WORLD), cond.answer_format)
    prompts = miss_boxes(prompts, cond.missed_boxes, WORLD["canvas"])
    return prompts if keep_answers else [ex.without_answer() for ex in prompts]


def toy_models(cond=DEFAULT):
    """(teacher, student) folders of the condition: its answer format's models (built on first use)."""
    return (toy_model(dataclasses.replace(TEACHER, answer_format=cond.answer_format), "teacher"),
            toy_model(dataclasses.replace(STUDENT, answer_format=cond.answer_format), "student"))


def distill_config(out_dir, cond=DEFAULT, **overrides):
    """train.Config for the toy models of `cond` (built on first use); overrides: method, seed, ..."""
    teacher, student = toy_models(cond)
    data_spec = f"toy.distill_prompts(): synthetic:{N_TRAIN}:{DISTILL_SEED} in toy.WORLD"
    return train.Config(student=student, teacher=teacher, out_dir=out_dir,
                        train_data=data_spec if cond == DEFAULT else f"{data_spec}, {cond}",
                        **{**DISTILL, "max_new_tokens": FORMATS[cond.answer_format][1], **overrides})


def heldout_accuracy(model_dir, examples, max_new_tokens=MAX_NEW_TOKENS):
    # The student's number: eval.py's greedy full-image evaluation, nothing toy-specific.
    model, processor = vlm.load(model_dir)
    acc, _ = evaluate(model.eval(), processor, examples, "zoom", batch_size=32,
                      max_new_tokens=max_new_tokens)
    return acc["overall"]


def check_models(heldout, cond=DEFAULT):
    """Held-out accuracy of the toy teacher (x, z+) and (x, z-) and of the base student (x)."""
    teacher_dir, student_dir = toy_models(cond)
    teacher, processor = vlm.load(teacher_dir)
    tokens = FORMATS[cond.answer_format][1]
    return {"chance": data.chance_accuracy(heldout),
            "teacher (x, z+)": view_accuracy(teacher.eval(), processor, heldout, "pos", tokens),
            "teacher (x, z-)": view_accuracy(teacher, processor, heldout, "neg", tokens),
            "base student (x)": heldout_accuracy(student_dir, heldout, tokens)}


def demo():
    """`python train.py` with no arguments: toy models -> V-Zero on answer-free prompts -> table."""
    start = time.time()
    cfg = distill_config(os.path.join("out", "toy", "demo"), method="vzero", seed=0)
    heldout = heldout_split()
    rows = check_models(heldout)
    shutil.rmtree(cfg.out_dir, ignore_errors=True)     # a fresh run every time
    # The answers are stripped before training sees the prompts: V-Zero has nothing to read.
    train.train(cfg, examples=distill_prompts())
    rows["V-Zero student (x)"] = heldout_accuracy(checkpoint.latest(cfg.out_dir), heldout)
    print(f"\nzoom world, {len(heldout)} held-out questions (seed {HELDOUT_SEED}), greedy answers:")
    for name, acc in rows.items():
        print(f"  {name:<22} {100 * acc:5.1f}%")
    gain = 100 * (rows["V-Zero student (x)"] - rows["base student (x)"])
    print(f"V-Zero student - base student: {gain:+.1f} points after {cfg.max_steps} steps without a label "
          f"(one seed; all seeds and arms: python toy.py --results). Wall time {(time.time() - start) / 60:.1f} "
          f"min. Trained student: {checkpoint.latest(cfg.out_dir)}")
    return rows


# ---------------------------------------------------------------------------------------------
# The result: base vs plain OPD vs V-Zero vs V-Zero with random "positive" crops, several seeds,
# the same steps. The prompts keep their answers here ONLY for the logged diagnostics (rollout
# accuracy, gate AUROC); the step never reads them (tests/test_train.py: stripping them trains
# identically). Each run's checkpoints (every save_every steps) give the accuracy-vs-step curve.
ARMS = {"opd": dict(method="opd"), "vzero": dict(method="vzero"),
        "vzero-random": dict(method="vzero-random")}
# The study's arms (issue 23, pre-registered): OPD, V-Zero with the release's alpha 0.5 and the
# paper's alpha 1, and V-Zero whose weights never fall below 1 (it keeps OPD's push-down on wrong
# answers and only raises right ones).
STUDY_ARMS = {"opd": dict(method="opd"), "vzero": dict(method="vzero"),
              "vzero-alpha1": dict(method="vzero", gate_alpha=1.0),
              "vzero-wmin1": dict(method="vzero", gate_w_min=1.0)}


def run_arm(arm, seed, heldout, out="out/toy", cond=DEFAULT, **overrides):
    """Train one arm with one seed (or reuse its finished run) -> {step: held-out acc}, mean AUROC.
    heldout: the split of `cond` (heldout_split(cond))."""
    cfg = distill_config(os.path.join(out, f"{arm}-s{seed}"), cond, seed=seed, **{**ARMS, **STUDY_ARMS}[arm],
                         **overrides)
    done = checkpoint.latest(cfg.out_dir)
    if done is not None:               # reuse only a run of these very settings and toy models
        saved = json.load(open(os.path.join(done, "train_config.json")))
        changed = [k for k, v in dataclasses.asdict(cfg).items() if k != "resume" and saved.get(k) != v]
        if changed:
            raise ValueError(f"{cfg.out_dir} holds a run with other settings ({', '.join(changed)}): "
                             f"move it away or pass another out")
    if done is None or not done.endswith(f"{cfg.max_steps:06d}"):
        # A killed run continues where it stopped; answers kept for the diagnostics only.
        train.train(dataclasses.replace(cfg, resume="auto"), examples=distill_prompts(cond, keep_answers=True))
    curve = heldout_curve(cfg, heldout)
    metrics = [json.loads(line) for line in open(os.path.join(cfg.out_dir, "metrics.jsonl"))]
    aurocs = [m["diag/gate_auroc"] for m in metrics if m.get("diag/gate_auroc") is not None]
    return curve, (statistics.mean(aurocs) if aurocs else None)


def heldout_curve(cfg, heldout):
    """{step: held-out accuracy} of every checkpoint of the run, kept in its heldout.json: a second
    call reads it while the checkpoints (names and write times) and the held-out questions are the same."""
    path, steps = os.path.join(cfg.out_dir, "heldout.json"), checkpoint.checkpoints(cfg.out_dir)
    questions = hashlib.sha1(json.dumps([[ex.id, ex.question, ex.answer] for ex in heldout]).encode()).hexdigest()
    saved_at = [[os.path.basename(p), os.path.getmtime(os.path.join(p, "model.safetensors"))] for p in steps]
    key = {"checkpoints": saved_at, "heldout": questions, "max_new_tokens": cfg.max_new_tokens}
    if os.path.exists(path):
        saved = json.load(open(path))
        if saved["key"] == key:
            return {int(k): v for k, v in saved["curve"].items()}
    curve = {int(p[-6:]): heldout_accuracy(p, heldout, cfg.max_new_tokens) for p in steps}
    with open(path, "w") as f:
        json.dump({"key": key, "curve": curve}, f, indent=1)
    return curve


def results(seeds=(0, 1, 2), out="out/toy", **overrides):
    """Every arm x seed (finished runs are reused) -> out/results.md (the table), results.json (the
    curves), accuracy_vs_step.png. The base student has no seed: it is one toy checkpoint."""
    heldout = heldout_split()
    models = check_models(heldout)
    runs = {arm: [run_arm(arm, s, heldout, out, **overrides) for s in seeds] for arm in ARMS}
    base = models["base student (x)"]
    table = ["| student | held-out accuracy % (mean +- sd over seeds) | final - base | gate AUROC |",
             "|---|---|---|---|", f"| base (no distillation) | {100 * base:.1f} | - | - |"]
    for arm, per_seed in runs.items():
        finals = [100 * curve[max(curve)] for curve, _ in per_seed]
        aurocs = [a for _, a in per_seed if a is not None]
        table.append(f"| {arm} | {statistics.mean(finals):.1f} +- {statistics.pstdev(finals):.1f} "
                     f"({', '.join(f'{v:.1f}' for v in finals)}) | {statistics.mean(finals) - 100 * base:+.1f} | "
                     + (f"{statistics.mean(aurocs):.2f}" if aurocs else "-") + " |")
    lines = [f"Zoom world, {len(heldout)} held-out questions (seed {HELDOUT_SEED}), seeds {list(seeds)}; "
             + ", ".join(f"{k} {100 * v:.1f}%" for k, v in models.items()), ""] + table
    print("\n".join(lines))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"models": models, "seeds": list(seeds),
                   "runs": {arm: [{"curve": c, "auroc": a} for c, a in r] for arm, r in runs.items()}}, f, indent=1)
    plot({arm: [c for c, _ in r] for arm, r in runs.items()}, base, os.path.join(out, "accuracy_vs_step.png"))
    return models, runs


COLOURS = {"opd": (230, 120, 20), "vzero": (30, 110, 220), "vzero-random": (150, 150, 150),
           "vzero-alpha1": (120, 40, 160), "vzero-wmin1": (40, 160, 80)}


PLOT_TITLE = "held-out accuracy of the student (greedy), mean and +-sd over seeds, by step"


def plot(curves, base, path, size=(640, 400), title=PLOT_TITLE):
    """Mean held-out accuracy vs step per arm (one line each, a bar for +- sd over seeds), with the
    base student as step 0 and as a reference line (plot.panel: Pillow only)."""
    steps = sorted({s for runs in curves.values() for c in runs for s in c} | {0})
    lines, bands = {}, {}
    for arm, runs in curves.items():
        accs = [[base] * len(runs) if s == 0 else [c[s] for c in runs if s in c] for s in steps]
        lines[arm] = ([statistics.mean(a) for a in accs], COLOURS[arm])
        bands[arm] = [(statistics.mean(a) - statistics.pstdev(a), statistics.mean(a) + statistics.pstdev(a)) for a in accs]
    img = Image.new("RGB", size, "white")
    panel(ImageDraw.Draw(img), (0, 0, *size), steps, lines, title,
          bands=bands, hline=("base student", base), y_format="{:.0%}")
    img.save(path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", action="store_true", help="the 3-seed comparison: table + plot in out/toy")
    parser.add_argument("--models", action="store_true", help="only build (or find) the toy models and check them")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    if args.models:
        for name, acc in check_models(heldout_split()).items():
            print(f"{name:<22} {100 * acc:5.1f}%")
    elif args.results:
        results(tuple(args.seeds))
    else:
        demo()


if __name__ == "__main__":
    main(sys.argv[1:])
