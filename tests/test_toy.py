"""
The demo pipeline end to end at a tiny scale (tiny models, a few steps): `python train.py` with no
arguments builds the toy teacher and base student, runs V-Zero on answer-free prompts and prints
the table; the toy checkpoints are cached; `toy.py --results` writes the table and the plot.
The real scale and its numbers: docs/toy.md (summary in README.md, "Results in brief").

    python -m pytest -q tests/test_toy.py
"""

import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import data
import diagnostics
import method
import toy
import toy_study
import train


@pytest.fixture
def tiny_toy(tmp_path, monkeypatch):
    # Everything toy.py knows, shrunk: tiny models, 2 supervised steps, 2 distillation steps.
    monkeypatch.chdir(tmp_path)                        # out/ and toy_ckpt/ land in tmp_path
    monkeypatch.setattr(toy, "TEACHER", toy.Supervised(view="pos", steps=2, batch_size=2, lr=1e-3,
                                                       init="tiny:qwen2_5_vl@1"))
    monkeypatch.setattr(toy, "STUDENT", toy.Supervised(view="full", steps=2, batch_size=2, lr=1e-3,
                                                       init="tiny:qwen2_5_vl@0"))
    monkeypatch.setattr(toy, "DISTILL", {**toy.DISTILL, "prompts_per_step": 2, "group_size": 2,
                                         "max_steps": 2, "save_every": 1})
    monkeypatch.setattr(toy, "N_TRAIN", 8)
    monkeypatch.setattr(toy, "N_HELDOUT", 4)
    return tmp_path


def test_answer_targets_are_what_the_model_generates():
    _, processor = toy.vlm.load("tiny:qwen2_5_vl")
    tok = processor.tokenizer
    ids, mask = toy.answer_targets(tok, ["plus", "ring"])
    assert mask.sum(1).tolist() == [len(tok("plus")["input_ids"]) + 1, len(tok("ring")["input_ids"]) + 1]
    for row, m, word in zip(ids, mask, ["plus", "ring"]):
        assert tok.decode(row[m]) == word + tok.eos_token          # the word, then <|im_end|>
        assert row[m][-1].item() == tok.eos_token_id


def test_supervised_training_learns_its_labels(tiny_toy, monkeypatch):
    # The supervised loop must minimise the cross-entropy of its labels: 40 steps on one repeated
    # example take the tiny model's loss on that answer far below where it started.
    run = toy.Supervised(view="full", steps=40, batch_size=2, lr=1e-2, init="tiny:qwen2_5_vl@0", data_seed=5)
    synthetic = data.synthetic
    monkeypatch.setattr(data, "synthetic", lambda n, seed, **k: synthetic(1, seed, **k) * n)
    out = toy.toy_model(run, "overfit")
    model, processor = toy.vlm.load(out)
    batch = data.synthetic(1, 5, **toy.WORLD)
    ids, mask = toy.answer_targets(processor.tokenizer, [ex.answer for ex in batch])
    fresh, _ = toy.vlm.load("tiny:qwen2_5_vl@0")
    with torch.no_grad():
        prompts = toy._prompts(processor, batch, "full")
        loss = lambda m: -toy.vlm.repeated_prompt_logprobs(m, prompts, [0], ids, mask).sum() / mask.sum()
        assert loss(model) < 0.1 * loss(fresh)
    assert json.load(open(os.path.join(out, "toy_run.json")))["world"] == toy.WORLD   # run.world is empty


def test_demo_end_to_end_and_cache(tiny_toy, monkeypatch, capsys):
    seen = {}
    real_train = train.train

    def spy(cfg, *args, examples=None, **kw):
        seen["examples"] = examples
        return real_train(cfg, *args, examples=examples, **kw)
    monkeypatch.setattr(train, "train", spy)
    rows = toy.demo()
    out = capsys.readouterr().out
    # The table: chance, the teacher's two views, base and trained student, all real accuracies.
    assert set(rows) == {"chance", "teacher (x, z+)", "teacher (x, z-)", "base student (x)", "V-Zero student (x)"}
    assert rows["chance"] == 0.25 and all(0.0 <= v <= 1.0 for v in rows.values())
    for name in rows:
        assert name in out
    # V-Zero saw the prompts and never an answer.
    assert len(seen["examples"]) == toy.N_TRAIN and all(ex.answer is None for ex in seen["examples"])
    # Checkpoints in transformers format, the toy models cached under toy_ckpt/NAME-HASH/.
    assert os.path.isfile("out/toy/demo/ckpt-000002/model.safetensors")
    cached = sorted(os.listdir("toy_ckpt"))
    assert [c.split("-")[0] for c in cached] == ["student", "teacher"]
    stamp = {c: os.path.getmtime(os.path.join("toy_ckpt", c, "model.safetensors")) for c in cached}
    # A second build finds them; a changed setting gets a new folder.
    assert os.path.basename(toy.toy_model(toy.TEACHER, "teacher")) in cached
    assert stamp == {c: os.path.getmtime(os.path.join("toy_ckpt", c, "model.safetensors")) for c in cached}
    monkeypatch.setattr(toy, "WORLD", {**toy.WORLD, "n_distractors": 1})
    assert os.path.basename(toy.toy_model(toy.TEACHER, "teacher")) not in cached
    # ... and so does a change to the code that makes them: a stale model is never reused.
    monkeypatch.setattr(toy, "WORLD", {**toy.WORLD, "n_distractors": 2})       # the world the cache was built in
    assert os.path.basename(toy.toy_model(toy.TEACHER, "teacher")) in cached
    version = toy.code_version()
    monkeypatch.setattr(toy, "CODE", toy.CODE + ("gate.py",))                    # other code: another version
    assert toy.code_version() != version
    assert os.path.basename(toy.toy_model(toy.TEACHER, "teacher")) not in cached


def test_results_table_and_plot(tiny_toy, monkeypatch):
    monkeypatch.setattr(toy, "ARMS", {k: toy.ARMS[k] for k in ("opd", "vzero")})
    models, runs = toy.results(seeds=(0, 1), out="out/toy")
    assert set(runs) == {"opd", "vzero"} and all(len(r) == 2 for r in runs.values())
    for arm, per_seed in runs.items():
        for curve, auroc in per_seed:
            assert sorted(curve) == [1, 2]                   # held-out accuracy at every checkpoint
            if arm == "opd":
                assert auroc is None                          # no gate, no gate AUROC
            else:                                             # None only if every rollout agreed
                assert auroc is None or 0.0 <= auroc <= 1.0
    table = open("out/toy/results.md").read()
    assert "| base (no distillation) |" in table and "| vzero |" in table and "| opd |" in table
    img = Image.open("out/toy/accuracy_vs_step.png")
    assert img.size == (640, 400) and len(img.getcolors(1 << 16)) > 3   # something was drawn
    # A finished run is reused, not retrained: its metrics file is untouched.
    path = "out/toy/vzero-s0/metrics.jsonl"
    before = os.path.getmtime(path)
    toy.run_arm("vzero", 0, toy.heldout_split())
    assert os.path.getmtime(path) == before
    # ... but a run of other settings (here another lr) is never silently taken for this one.
    monkeypatch.setattr(toy, "DISTILL", {**toy.DISTILL, "lr": 1e-3})
    with pytest.raises(ValueError, match="other settings.*lr"):
        toy.run_arm("vzero", 0, toy.heldout_split())


def test_train_py_without_arguments_runs_the_toy_demo_script(monkeypatch):
    # train.py does not import toy (toy imports train): with no arguments it runs toy.py as a script.
    ran = []
    monkeypatch.setattr(train.runpy, "run_module", lambda name, run_name: ran.append((name, run_name)))
    train.main([])
    assert ran == [("toy", "__main__")]
    assert "import toy" not in open(train.__file__).read()


# ---------------------------------------------------------------------------------------------
# The study's conditions (issue 23): answer formats and missed boxes, the diagnostics, the command.

def test_the_default_condition_is_the_demo_world():
    # One word, every box right: the same questions, boxes and labels as the world itself.
    world = data.synthetic(toy.N_TRAIN, toy.DISTILL_SEED, **toy.WORLD)
    prompts = toy.distill_prompts(keep_answers=True)
    assert [(e.id, e.question, e.bbox, e.answer, e.meta) for e in prompts] == \
        [(e.id, e.question, e.bbox, e.answer, e.meta) for e in world]
    assert [toy.answer_text(label, "word") for label in toy.FOLLOW_UPS] == list(toy.FOLLOW_UPS)
    assert toy.FORMATS["word"][1] == toy.MAX_NEW_TOKENS == 6


def test_answer_formats_build_the_intended_text():
    ex = data.synthetic(1, 0, **toy.WORLD)[0]
    assert toy.answer_text("ring", "sentence") == "The symbol is a ring. A ring is a square outline, empty in the middle."
    assert toy.answer_text("ring", "two-sentences") == ("The symbol is a ring. A ring is a square outline, empty in "
                                                        "the middle. The ring has four sides and no ink inside.")
    for fmt, (n_follow, max_new) in toy.FORMATS.items():
        [asked] = toy.in_format([ex], fmt)
        assert (asked.answer, asked.choices, asked.bbox) == (ex.answer, ex.choices, ex.bbox)    # scored on the word
        assert asked.question.startswith("Which symbol is inside the small square with the red frame?")
        assert asked.question.endswith({0: "or dot.", 1: "in one more sentence.", 2: "in two more sentences."}[n_follow])
        _, processor = toy.vlm.load("tiny:qwen2_5_vl")
        for label in toy.FOLLOW_UPS:
            text = toy.answer_text(label, fmt)
            sentences = [s for s in text.split(".") if s.strip()]
            assert len(sentences) == (1 if fmt == "word" else 1 + n_follow)
            # Each sentence names the symbol and no other: eval scores the decisive word.
            assert all(data.match_choice(s, ex.choices) == label for s in sentences)
            assert all(data.match_choice(s, [c for c in ex.choices if c != label]) is None for s in sentences)
            _, mask = toy.answer_targets(processor.tokenizer, [text])
            assert mask.sum() + 2 <= max_new                  # the whole target fits the new-token budget


def red_pixels(image):
    # The target's frame colour (data.MARKER, (220, 30, 30) +- ~21 of noise); the clutter has no
    # red and the background field's channels stay >= 60 - 21.
    r, g, b = np.asarray(image, dtype=np.int16).transpose(2, 0, 1)
    return int(((r > 195) & (g < 60) & (b < 60)).sum())


def test_missed_boxes_are_seeded_and_miss_the_target(monkeypatch):
    monkeypatch.setattr(toy, "N_TRAIN", 40)
    cond = toy.Condition("sentence", 0.3)
    prompts = toy.distill_prompts(cond, keep_answers=True)
    world = data.synthetic(40, toy.DISTILL_SEED, **toy.WORLD)
    missed = [i for i, ex in enumerate(prompts) if ex.meta.get("box_misses_target")]
    assert len(missed) == 12                                  # 30% of 40
    # The same prompts and boxes on every call (the arms and seeds all get these), answers stripped or not.
    assert [ex.bbox for ex in toy.distill_prompts(cond)] == [ex.bbox for ex in prompts]
    assert all(ex.answer is None for ex in toy.distill_prompts(cond))
    for i, (ex, orig) in enumerate(zip(prompts, world)):
        if i not in missed:
            assert ex.bbox == orig.bbox
            continue
        (x0, y0, x1, y1), (t0, u0, t1, u1) = ex.bbox, orig.bbox
        assert x1 <= t0 or x0 >= t1 or y1 <= u0 or y0 >= u1   # disjoint from the target
        assert 0 <= x0 and 0 <= y0 and x1 <= toy.WORLD["canvas"] and y1 <= toy.WORLD["canvas"]
        assert x1 - x0 == y1 - y0 >= 32                         # a square, not grown by the crop
        _, pos, _ = data.evidence_views(ex)
        _, true_pos, _ = data.evidence_views(orig)
        assert red_pixels(pos) == 0 < red_pixels(true_pos)      # z+ no longer shows the framed target
    assert toy.distill_prompts(toy.Condition("word", 0.3), keep_answers=True)[missed[0]].bbox == prompts[missed[0]].bbox


def test_token_parts_and_signal_shares_by_hand():
    _, processor = toy.vlm.load("tiny:qwen2_5_vl")
    tok = processor.tokenizer
    texts = ["The symbol is a ring.", "plus", "no idea"]     # right (ring), wrong (plus), no symbol
    rows = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    T = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (T - len(r)) for r in rows])
    mask = ids != tok.pad_token_id
    choices = [["plus", "cross", "ring", "dot"]] * 3
    parts = diagnostics.token_parts(tok, ids, mask, choices)
    LEAD, DEC, FOL, NONE = range(4)
    # "The s y m bo l is a" | " ring" | "." <|im_end|>;  "p l us" | <|im_end|>;  "n o i d e a" <|im_end|>
    assert parts[0].tolist() == [LEAD] * 8 + [DEC] + [FOL] * 2
    assert parts[1].tolist() == [DEC] * 3 + [FOL] + [-1] * 7
    assert parts[2].tolist() == [NONE] * 7 + [-1] * 4
    # The binary search equals the plain per-token rule (a token is decisive when its decoded span
    # overlaps the word), here and on answers with the word mid-sentence or repeated.
    more = ["I think it is a cross, not a plus.", "ringring ring dot", "Dot.", "a tee"]
    more_ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in more]
    for row, text in zip(rows + more_ids, texts + more):
        word = re.search(rf"(?<!\w){data.match_choice(text, choices[0]) or '#'}(?!\w)", text, re.IGNORECASE)
        plain = []
        for k in range(len(row)):
            start, end = (len(tok.decode(row[:j], skip_special_tokens=True)) for j in (k, k + 1))
            plain.append(NONE if word is None else LEAD if end <= word.start() else FOL if start >= word.end() else DEC)
        got = diagnostics.token_parts(tok, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.bool), choices[:1])
        assert got[0].tolist() == plain, text
    weights = torch.tensor([1.5, 0.5, 1.0])
    d = torch.tensor([[1.0] * T, [-2.0] * T, [0.5] * T])      # clamped d_k; padding values never read
    sums = diagnostics.signal_sums(weights, d, mask, torch.tensor([True, False, False]), parts)
    # By hand: right 1.5 x (8, 1, 2 tokens); wrong 0.5 x 2 x (3, 1 tokens); no symbol 1.0 x 0.5 x 7.
    assert sums == pytest.approx({"right/lead_in": 12.0, "right/decisive": 1.5, "right/follow_up": 3.0,
                                  "right/no_choice": 0.0, "wrong/lead_in": 0.0, "wrong/decisive": 3.0,
                                  "wrong/follow_up": 1.0, "wrong/no_choice": 3.5, "opd_total": 11 + 8 + 3.5})
    shares = diagnostics.signal_shares(sums)
    total = 24.0
    assert shares["diag/signal_share/right"] == pytest.approx(16.5 / total)
    assert shares["diag/signal_share/wrong"] == pytest.approx(7.5 / total)
    assert shares["diag/signal_share/decisive"] == pytest.approx(4.5 / total)
    assert shares["diag/signal_share/follow_up"] == pytest.approx(4.0 / total)
    assert shares["diag/signal_vs_opd"] == pytest.approx(total / 22.5)
    cells = [v for k, v in shares.items() if k.count("/") == 3]
    assert len(cells) == 8 and sum(cells) == pytest.approx(1.0)
    assert sum(shares[f"diag/signal_share/{p}"] for p in diagnostics.PARTS) == pytest.approx(1.0)
    assert shares["diag/signal_share/right"] + shares["diag/signal_share/wrong"] == pytest.approx(1.0)
    # A per-token weight [N, T] is one weight per answer for the gate's diagnostics: its token mean.
    assert method.answer_weights(weights[:, None].expand(3, T), mask).tolist() == [1.5, 0.5, 1.0]


def test_gate_diagnostics_by_hand():
    # (weight, correct, trajectory score p, box misses the target)
    rows = [(1.5, True, 0.4, False), (0.5, False, -0.4, False), (1.0, True, 0.0, True), (1.0, False, 0.1, True),
            (1.2, False, 0.2, True)]
    out = diagnostics.gate_diagnostics(rows)
    assert out["diag/weight_right"] == pytest.approx(1.25) and out["diag/weight_wrong"] == pytest.approx(2.7 / 3)
    # right {1.5, 1.0} vs wrong {0.5, 1.0, 1.2}: 1.5 wins 3 pairs; 1.0 wins 1, ties 1, loses 1
    assert out["diag/gate_auroc"] == pytest.approx((3 + 1 + 0.5) / 6)
    assert out["diag/gate_auroc_hit"] == 1.0 and out["diag/gate_auroc_missed"] == pytest.approx(0.25)
    assert out["diag/delta_missed/mean"] == pytest.approx(0.1) and out["diag/delta_missed/p50"] == pytest.approx(0.1)
    assert out["diag/delta_missed/p10"] == pytest.approx(0.02) and out["diag/delta_hit/p90"] == pytest.approx(0.32)
    assert out["diag/weight_sd_hit"] == pytest.approx(0.5)
    assert "diag/delta_missed/mean" not in diagnostics.gate_diagnostics([r[:3] + (False,) for r in rows])


def test_study_end_to_end_and_reuse(tiny_toy, monkeypatch):
    cond = toy.Condition("sentence", 0.5)
    monkeypatch.setattr(toy_study, "GRID", (cond,))
    monkeypatch.setattr(toy, "DISTILL", {**toy.DISTILL, "save_every": 2})     # one held-out evaluation per run
    results = toy_study.study(seeds=(0,), out="out/study", grid=toy_study.GRID)
    runs = results[cond.name]["runs"]
    assert set(runs) == set(toy.STUDY_ARMS) and all(len(r) == 1 for r in runs.values())
    # Each arm trained with its own settings, on the sentence format's models and token budget.
    for arm, settings in toy.STUDY_ARMS.items():
        saved = json.load(open(f"out/study/{cond.name}/{arm}-s0/ckpt-000002/train_config.json"))
        assert {k: saved[k] for k in settings} == settings
        assert saved["max_new_tokens"] == toy.FORMATS["sentence"][1] and "sentence" in saved["train_data"]
        metrics = [json.loads(line) for line in open(f"out/study/{cond.name}/{arm}-s0/metrics.jsonl")]
        for m in metrics:           # the logged shares of the signal add to 1
            cells = [v for k, v in m.items() if k.startswith("diag/signal_share/") and k.count("/") == 3]
            assert len(cells) == 8 and sum(cells) == pytest.approx(1.0)
        if arm != "opd":            # the missed prompts' Delta is logged by the gated arms
            assert any("diag/delta_missed/mean" in m for m in metrics)
        assert sorted(runs[arm][0]["curve"]) == [2] and "diag/signal_vs_opd" in runs[arm][0]["diag"]
    assert sorted(c.split("-")[0] for c in os.listdir("toy_ckpt")) == ["student", "teacher"]
    assert all(json.load(open(os.path.join("toy_ckpt", c, "toy_run.json")))["answer_format"] == "sentence"
               for c in os.listdir("toy_ckpt"))
    table = open("out/study/results.md").read()
    assert f"| {cond.name} | vzero-wmin1 |" in table and "paired t-statistic" in table
    assert json.load(open("out/study/results.json"))["conditions"][cond.name]["runs"]["opd"][0]["seed"] == 0
    assert Image.open(f"out/study/accuracy_{cond.name}.png").size == (640, 400)
    # A second call reuses every run and its held-out curve: no training, one evaluation (the base student).
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("a finished run was retrained"))
    evaluated = []
    real = toy.heldout_accuracy
    monkeypatch.setattr(toy, "heldout_accuracy", lambda *a, **k: evaluated.append(a[0]) or real(*a, **k))
    again = toy_study.study(seeds=(0,), out="out/study", grid=toy_study.GRID)
    assert len(evaluated) == 1 and again[cond.name]["runs"] == runs
