"""Run integrity (train.py, checkpoint.py, data.py): a run directory holds one run, resumed only
under the settings that define it; the metrics log survives a crash mid-line; bad data and bad
settings fail before a model loads, naming file, line and field; broken weights stop the run
naming the step.

    python -m pytest -q tests/test_run.py
"""

import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import data
import model as vlm
import train
from test_train import TINY, weights_of, without_timing


def run(out, *extra):
    return train.train(train.parse_args(TINY + ["--out-dir", str(out), *extra]))


@pytest.fixture
def no_model_may_load(monkeypatch):
    # The checks under test must fire before any model is built or read.
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the settings and the data were checked")
    monkeypatch.setattr(vlm, "load", refuse)


def test_resume_refuses_changed_settings_that_define_the_run_and_applies_the_free_ones(tmp_path, capsys):
    run(tmp_path, "--max-steps", "2", "--save-every", "1")
    for extra, field in ((["--group-size", "2"], "group_size"), (["--student", "tiny:qwen3_vl"], "student"),
                         (["--method", "opd"], "method"), (["--train-data", "synthetic:64:0"], "train_data"),
                         (["--prompts-per-step", "2"], "prompts_per_step")):
        with pytest.raises(ValueError, match=f"define the run.*{field}"):
            run(tmp_path, "--max-steps", "3", "--resume", *extra)
    # Free settings apply for real: at lr 1e-30 step 3 leaves the weights of step 2 as they were,
    # and the new lr is what the run records.
    capsys.readouterr()
    run(tmp_path, "--max-steps", "3", "--resume", "--lr", "1e-30")
    assert "lr 0.001 -> 1e-30" in capsys.readouterr().out
    after = tmp_path / "ckpt-000003"
    assert json.load(open(after / "train_config.json"))["lr"] == 1e-30
    before, now = weights_of(str(tmp_path / "ckpt-000002")), weights_of(str(after))
    assert all(torch.equal(before[k], now[k]) for k in before)


def test_a_fresh_start_in_a_used_directory_is_refused_unless_overwritten(tmp_path):
    run(tmp_path, "--max-steps", "2", "--save-every", "1")
    with pytest.raises(ValueError, match="already holds a run.*--resume.*--overwrite"):
        run(tmp_path, "--max-steps", "1")
    run(tmp_path, "--max-steps", "1", "--overwrite")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "ckpt-000001", "metrics.jsonl", "train_config.json"]
    assert [json.loads(l)["step"] for l in open(tmp_path / "metrics.jsonl")] == [1]


def test_a_metrics_line_cut_short_is_dropped_and_no_step_is_lost(tmp_path, capsys):
    straight = run(tmp_path / "straight", "--max-steps", "3")
    run(tmp_path / "cut", "--max-steps", "2", "--save-every", "2")
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.12')                  # a crash in the middle of a write
    run(tmp_path / "cut", "--max-steps", "3", "--resume")
    assert "cut short" in capsys.readouterr().out
    lines = [json.loads(l) for l in open(tmp_path / "cut" / "metrics.jsonl")]
    assert without_timing(lines) == without_timing(straight)
    # A broken line anywhere else is not a crash artefact: an error naming it, nothing rewritten.
    text = open(tmp_path / "cut" / "metrics.jsonl").read().split("\n")
    text[0] = text[0][:20]
    (tmp_path / "cut" / "metrics.jsonl").write_text("\n".join(text))
    with pytest.raises(ValueError, match="metrics.jsonl line 1 is not JSON"):
        run(tmp_path / "cut", "--max-steps", "4", "--resume")
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == "\n".join(text)


def broken_png(path, size=(64, 48)):
    # A PNG whose chunks all carry correct CRCs (so it looks whole) but whose pixel data is not
    # zlib: it fails only when decoded, as a mid-run surprise would.
    Image.new("RGB", size, (200, 30, 30)).save(path)
    raw = bytearray(path.read_bytes())
    i = raw.index(b"IDAT") - 4
    length = struct.unpack(">I", raw[i:i + 4])[0]
    junk = bytes(np.random.default_rng(0).integers(0, 256, length, dtype=np.uint8))
    raw[i + 8:i + 8 + length] = junk
    raw[i + 8 + length:i + 12 + length] = struct.pack(">I", zlib.crc32(b"IDAT" + junk))
    path.write_bytes(bytes(raw))


def jsonl(tmp_path, rows, name="train.jsonl"):
    for row in rows:
        if not (tmp_path / row["image"]).exists():
            Image.fromarray(np.random.default_rng(len(row["id"])).integers(0, 256, (96, 128, 3), dtype=np.uint8)
                            ).save(tmp_path / row["image"])
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def good_row(i):
    return {"id": f"ex{i}", "image": f"img{i}.png", "question": "Which symbol is in the box?", "bbox": [10, 10, 60, 50]}


@pytest.mark.parametrize("bad, message", [
    ("truncated", "line 2: example ex1: field image_source: cannot decode image"),
    ("im_end", "line 2: example ex1: field question: holds '<|im_end|>'"),
    ("image_pad", "line 2: example ex1: field question: holds '<|image_pad|>'"),
])
def test_bad_rows_are_refused_at_load_with_file_and_line(tmp_path, bad, message):
    rows = [good_row(0), good_row(1), good_row(2)]
    if bad == "truncated":
        jsonl(tmp_path, rows)
        full = (tmp_path / "img1.png").read_bytes()
        (tmp_path / "img1.png").write_bytes(full[:len(full) // 2])           # a copy cut short
        jpeg = tmp_path / "img2.jpg"
        Image.fromarray(np.random.default_rng(2).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(jpeg)
        jpeg.write_bytes(jpeg.read_bytes()[:-2000])                           # and a JPEG too: header intact
    else:
        rows[1]["question"] = "What is this?" + ("<|im_end|>" if bad == "im_end" else "<|image_pad|>")
    path = jsonl(tmp_path, rows)
    with pytest.raises(ValueError, match=rf"train.jsonl {message}".replace("|", r"\|")):
        data.load_examples(path)
    if bad == "truncated":
        one = jsonl(tmp_path, [{**good_row(2), "image": "img2.jpg"}], name="jpeg.jsonl")
        with pytest.raises(ValueError, match="jpeg.jsonl line 1: example ex2: field image_source: cannot decode.*truncated"):
            data.load_examples(one)


def test_a_training_row_without_a_box_is_refused_before_any_model_loads(tmp_path, no_model_may_load):
    rows = [good_row(i) for i in range(4)]
    del rows[2]["bbox"]
    path = jsonl(tmp_path, rows)
    data.load_examples(path)                                # fine for evaluation ...
    with pytest.raises(ValueError, match="line 3: example ex2: field bbox: needed to build the positive view"):
        run(tmp_path / "out", "--train-data", path)         # ... not for training


@pytest.mark.parametrize("extra, message", [
    (["--mini-batches", "0"], "--mini-batches 0: must be >= 1"),
    (["--prompts-per-step", "0"], "--prompts-per-step 0: must be >= 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0: must be >= 1"),
    (["--lr=-1e-3"], "--lr -0.001: must be > 0"),
    (["--top-p", "1.5"], "--top-p 1.5: must be > 0 and <= 1"),
    (["--student", "./no/such/model"], "no/such/model.*no such directory"),
    (["--teacher", "/no/such/teacher"], "/no/such/teacher.*no such directory"),
    (["--resume"], "--resume: no complete checkpoint"),
    (["--gate-alpha", "nan"], "--gate-alpha nan: must be a finite number"),
    (["--kl-clamp", "inf"], "--kl-clamp inf: must be a finite number"),
    (["--dual-clip=-inf"], "--dual-clip -inf: must be a finite number"),
    (["--gate-w-max", "0"], r"--gate-w-max 0.0 must be > --gate-w-min 0.0"),
    (["--gate-w-min", "1e30"], r"--gate-w-max 2.0 must be > --gate-w-min 1e\+30"),
])
def test_bad_settings_fail_before_any_model_loads(tmp_path, no_model_may_load, extra, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, *extra)


def test_out_dir_that_is_a_file_and_stray_directories(tmp_path, no_model_may_load):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ValueError, match="is a file"):
        run(tmp_path / "file")


def test_resume_auto_starts_fresh_then_resumes_and_ignores_stray_directories(tmp_path):
    run(tmp_path, "--max-steps", "1", "--resume", "auto")                   # nothing to resume: a fresh start
    (tmp_path / "ckpt-000005.bak").mkdir()                                   # a user's copy, not a checkpoint
    history = run(tmp_path, "--max-steps", "2", "--resume", "auto")
    assert [m["step"] for m in history] == [2]                               # resumed from ckpt-000001
    assert [json.loads(l)["step"] for l in open(tmp_path / "metrics.jsonl")] == [1, 2]


def test_weights_broken_by_an_update_stop_the_run_naming_the_step(tmp_path):
    with pytest.raises(RuntimeError, match="step 2: the student's outputs are not finite.*lower --lr"):
        run(tmp_path, "--max-steps", "3", "--lr", "1e6")


def test_an_image_that_fails_mid_run_names_its_row_and_can_be_skipped(tmp_path):
    rows = [good_row(i) for i in range(8)]
    path = jsonl(tmp_path, rows)
    broken_png(tmp_path / "img5.png", size=(128, 96))
    examples = data.load_examples(path)                     # whole-looking: passes the load-time check
    with pytest.raises(ValueError, match="train.jsonl line 6: example ex5: field image_source: cannot decode"):
        examples[5].image
    args = ["--train-data", path, "--prompts-per-step", "8", "--max-steps", "1"]
    with pytest.raises(ValueError, match="line 6: example ex5"):
        run(tmp_path / "strict", *args)
    history = run(tmp_path / "skip", *args, "--skip-bad-images")
    assert history[0]["data/bad_images"] == 1


def test_an_update_that_leaves_non_finite_weights_stops_the_run_naming_the_step(tmp_path, monkeypatch):
    real_step = torch.optim.AdamW.step
    calls = []

    def step_then_break(self, *args, **kwargs):          # the 3rd optimizer step (step 2, update 1) ends with a NaN
        out = real_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            self.param_groups[0]["params"][0].data[0] = float("nan")
        return out
    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_break)
    with pytest.raises(RuntimeError, match="step 2, update 1: the optimizer step made 1 weight tensor"):
        run(tmp_path, "--max-steps", "3")
    assert [json.loads(l)["step"] for l in open(tmp_path / "metrics.jsonl")] == [1]   # step 2 never logged



def test_a_data_file_changed_between_stop_and_resume_refuses_the_resume_naming_it(tmp_path, monkeypatch):
    path = jsonl(tmp_path, [good_row(i) for i in range(4)])
    run(tmp_path / "out", "--train-data", path, "--max-steps", "1")
    with open(path, "a") as f:
        f.write(json.dumps({**good_row(0), "id": "ex9"}) + "\n")        # a row appended after the stop
    monkeypatch.setattr(vlm, "load", None)                                # refused before any model loads
    with pytest.raises(ValueError, match=rf"define the run.*train_data_files {path}: '\d+ bytes, crc32 \w+' -> "):
        run(tmp_path / "out", "--train-data", path, "--max-steps", "2", "--resume")
