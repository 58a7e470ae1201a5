"""
The demo pipeline end to end at a tiny scale (tiny models, a few steps): `python train.py` with no
arguments builds the toy teacher and base student, runs V-Zero on answer-free prompts and prints
the table; the toy checkpoints are cached; `toy.py --results` writes the table and the plot.
The real scale and its numbers: README.md, "The zoom-world result".

    python -m pytest -q tests/test_toy.py
"""

import json
import os

import pytest
import torch
from PIL import Image

import data
import toy
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
