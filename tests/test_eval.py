# Tests of eval.py and benchmarks.py: each benchmark's answer rule on tricky strings, every reader
# on small fixture files in the released formats, the reported aggregations, a tiny model end to
# end (CLI and Python API), the blind control, 2-rank sharding, gate diagnostics, the explain page.
import base64
import csv
import io
import json
import os
import signal
import subprocess
import sys
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import benchmarks
import data
import eval as ev
import model as vlm
from gate import auroc
from teacher import Teacher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def png(w=40, h=30, colour=(200, 30, 30), fmt="PNG"):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, format=fmt)
    return buf.getvalue()


def b64(raw):
    return base64.b64encode(raw).decode()


def mcq(options=("rubber", "cotton", "kevlar", "leather"), answer="D", **meta):
    return data.Example(id="q", question="What is it?", image_source=Image.new("RGB", (8, 8)),
                        answer=answer, choices=list(options), meta=meta)


# ----------------------------------------------------------------------------------------------
# Answer rules: (response, the letter / choice the benchmark's rule reads, or None = judge).

VSTAR = [("B", "B"), ("(C) kevlar", "C"), ("D. leather", "D"),
         ("Based on the image, the answer is D.", "D"),        # lmms-eval's ^([A-D]) would read B
         ("Based on the image it looks like leather.", None),   # no letter at all: a judge's call
         ("Option (A) says rubber, but it looks worn, so the answer is C.", "C"),  # "(A)" in reasoning
         ("<think>(A) or (B)? Probably (B).</think>The answer is C", "C"),        # <think> stripped
         ("I would say <answer>(A)</answer>", "A"), ("The glove is made of leather.", None)]
HRBENCH = [("B. cotton", "B"), ("Based on the image, the answer is C.", "C"),
           ("(A) and (C) both look plausible.", None),            # two letters: can_infer gives up
           ("It is made of cotton.", "B"),                         # no letter: the option text
           ("<think>A? B?</think><answer>(D)</answer>", "D"), ("Based on it, leather or kevlar", None)]
MME = [("E", "E"), ("The best answer is (D).", "D"), ("<answer>B</answer>", "B"),
       ("Based on the image, there are clearly a great many buses parked along the road here.", None),
       ("13", "A"),                                                 # official: part of "(A) 13"
       ("<think>Could be (A)</think>", None)]
MMSTAR = [("A", "A"), ("(b) The suitcase is beneath the cat.", "B"), ("option c", "C"),
          ("The answer is D", "D"), ("Based on the image, B", None),  # official: "b" of "Based"
          ("<think>maybe (A)</think>C", "C"), ("I think it is A", None)]


@pytest.mark.parametrize("bench,cases,options", [
    ("vstar", VSTAR, ("rubber", "cotton", "kevlar", "leather")),
    ("hrbench", HRBENCH, ("rubber", "cotton", "kevlar", "leather")),
    ("mmerealworld", MME, ("13", "90", "77", "6", "The image does not feature the buses")),
    ("mmstar", MMSTAR, ("on the book", "beneath the cat", "beneath the bed", "beneath the book"))])
def test_letter_rules(bench, cases, options):
    ex = mcq(options)
    for response, expected in cases:
        _, pred, verdict = benchmarks.judge(bench, response, ex)
        assert pred == expected, (bench, response, pred)
        assert verdict is (None if expected is None else expected == "D"), (bench, response, verdict)


def test_zoombench_rule_mcq_and_open():
    ex = mcq(("0", "2", "1", "3"), answer="C", type="mcq")
    for response, pred, verdict in [("(C) 1", "C", True), ("Answer: C", "Answer: C", True),
                                    ("Let me count.\nI think the answer is B.", "B", False),
                                    ("Based on the image there is one lamp", None, None)]:
        assert benchmarks.judge("zoombench", response, ex)[1:] == (pred, verdict), response
    # Only the last 3 lines count when there is no "Answer:" (ZwZ): a letter earlier is not read.
    assert benchmarks.judge("zoombench", "(C)\na\nb\nc", ex)[2] is None
    open_q = data.Example(id="o", question="What colour?", image_source=Image.new("RGB", (8, 8)),
                          answer="Red", meta={"type": "open"})
    assert benchmarks.judge("zoombench", "<think>blue?</think> red.", open_q)[2] is True
    assert benchmarks.judge("zoombench", "crimson", open_q)[2] is None      # only a judge can say
    num = data.Example(id="n", question="How many?", image_source=Image.new("RGB", (8, 8)), answer="3",
                       meta={"type": "open"})
    assert benchmarks.judge("zoombench", "3.0", num)[2] is True


def test_zoom_world_rule_uses_match_choice():
    ex = data.synthetic(1, 0)[0]
    other = next(c for c in ex.choices if c != ex.answer)
    assert benchmarks.judge("zoom", f"It is a {ex.answer}.", ex)[1:] == (ex.answer, True)
    assert benchmarks.judge("zoom", f"<think>{ex.answer}?</think>{other}", ex)[1:] == (other, False)
    assert benchmarks.judge("zoom", "no idea", ex)[1:] == (None, None)


def test_strip_reasoning():
    assert benchmarks.strip_reasoning("<think>A</think> B <answer> C </answer>") == "C"
    assert benchmarks.strip_reasoning("x</think>D") == "D"           # template opened <think>
    assert benchmarks.strip_reasoning("E <think>cut off mid-thought") == "E"


# ----------------------------------------------------------------------------------------------
# Readers, on fixtures in the released formats.

def write_tsv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)


def write_parquet(path, rows):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), path)


def vstar_release(tmp_path):
    root = tmp_path / "vstar_bench"
    for folder, name, size, boxes in (("direct_attributes", "sa_1", (60, 50), [[5, 6, 10, 12]]),
                                      ("relative_position", "sa_2", (80, 40), [[2, 3, 4, 5], [50, 20, 10, 10]])):
        (root / folder).mkdir(parents=True)
        (root / folder / f"{name}.jpg").write_bytes(png(*size, fmt="JPEG"))
        (root / folder / f"{name}.json").write_text(json.dumps(
            {"target_object": ["glove"] * len(boxes), "bbox": boxes, "question": "?", "options": ["a", "b"]}))
    rows = [{"image": "direct_attributes/sa_1.jpg", "question_id": 0, "category": "direct_attributes", "label": "A",
             "text": "What is the material of the glove?\n(A) rubber\n(B) cotton\n(C) kevlar\n(D) leather\n"
                     "Answer with the option's letter from the given choices directly."},
            {"image": "relative_position/sa_2.jpg", "question_id": 1, "category": "relative_position", "label": "B",
             "text": "Is the dog on the left or right of the cat?\n(A) left\n(B) right\n"
                     "Answer with the option's letter from the given choices directly."}]
    (root / "test_questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, rows


def test_vstar_reader(tmp_path):
    root, rows = vstar_release(tmp_path)
    a, b = benchmarks.read("vstar", root)
    assert a.question == rows[0]["text"] and a.answer == "A" and a.choices[3] == "leather"
    assert a.bbox == (5, 6, 15, 18) and b.bbox == (2, 3, 60, 30)           # [x,y,w,h] -> union xyxy
    assert (a.meta["category"], b.meta["category"]) == ("attribute", "spatial") and b.choices == ["left", "right"]
    assert a.image.size == (60, 50)
    os.remove(root / "relative_position" / "sa_2.json")                      # sidecars are optional
    assert benchmarks.read("vstar", root / "test_questions.jsonl")[1].bbox is None
    os.remove(root / "relative_position" / "sa_2.jpg")
    with pytest.raises(ValueError, match=r"test_questions.jsonl line 2: column image: file .*sa_2.jpg not found"):
        benchmarks.read("vstar", root)


def test_vstar_lmms_parquet(tmp_path):
    write_parquet(tmp_path / "test.parquet", [{"image": {"bytes": png(), "path": "sa_1.jpg"}, "question_id": 7,
                                               "text": "Q?\n(A) x\n(B) y\nAnswer with the option's letter.",
                                               "label": "B", "category": "relative_position"}])
    (ex,) = benchmarks.read("vstar", tmp_path / "test.parquet")
    assert ex.answer == "B" and ex.image.size == (40, 30) and ex.bbox is None


def hrbench_rows():
    return [{"index": i, "question": f"What is written on sign {i}?", "A": "stop", "B": "go", "C": "wait",
             "D": "exit", "answer": "ABCD"[i % 4], "category": ("single", "cross")[i % 2],
             "cycle_category": f"cycle{i // 2}", "image": b64(png(30 + i, 20))} for i in range(4)]


@pytest.mark.parametrize("fmt", ["tsv", "parquet"])
def test_hrbench_reader(tmp_path, fmt):
    path = tmp_path / f"hr_bench_4k.{fmt}"
    (write_tsv if fmt == "tsv" else write_parquet)(path, hrbench_rows())
    exs = benchmarks.read("hrbench", path)
    assert [ex.answer for ex in exs] == list("ABCD") and exs[3].image.size == (33, 20)
    assert exs[0].question == ("Question: What is written on sign 0?\nOptions:\nA. stop\nB. go\nC. wait\nD. exit\n"
                               "Please select the correct answer from the options above. \n")
    assert [ex.meta["category"] for ex in exs[:2]] == ["FSP", "FCP"] and exs[2].meta["cycle"] == "cycle1"


def test_tsv_errors_name_file_row_and_column(tmp_path):
    rows = hrbench_rows()
    rows[1]["image"] = "not base64 at all!" * 5
    write_tsv(tmp_path / "bad.tsv", rows)
    with pytest.raises(ValueError, match=r"bad.tsv row 1 .*column image: not valid base64"):
        benchmarks.read("hrbench", tmp_path / "bad.tsv")
    write_tsv(tmp_path / "cols.tsv", [{k: v for k, v in r.items() if k != "answer"} for r in hrbench_rows()])
    with pytest.raises(ValueError, match=r"cols.tsv: column\(s\) \['answer'\] missing"):
        benchmarks.read("hrbench", tmp_path / "cols.tsv")
    rows = hrbench_rows()
    rows[2]["answer"] = "F"
    write_tsv(tmp_path / "gold.tsv", rows)
    with pytest.raises(ValueError, match=r"gold.tsv row 2 .*answer 'F' is not one of"):
        benchmarks.read("hrbench", tmp_path / "gold.tsv")
    with pytest.raises(FileNotFoundError, match="nowhere.tsv"):
        benchmarks.read("hrbench", tmp_path / "nowhere.tsv")


def test_parquet_without_pyarrow_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)        # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "hr.parquet").write_bytes(b"PAR1")
    with pytest.raises(ImportError, match=r"hr.parquet: reading parquet needs pyarrow.*pip install pyarrow"):
        benchmarks.read("hrbench", tmp_path / "hr.parquet")


MME_CHOICES = ["(A) 13", "(B) 90", "(C) 77", "(D) 6", "(E) The image does not feature the buses"]
MME_PROMPT = ("What is the number of buses in the image? The choices are listed below: \n" + "\n".join(MME_CHOICES)
              + "\nSelect the best answer to the above multiple-choice question based on the image. Respond with "
                "only the letter (A, B, C, D, or E) of the correct option.\nThe best answer is:")


def test_mme_realworld_official_json(tmp_path):
    (tmp_path / "monitoring_images").mkdir()
    (tmp_path / "monitoring_images" / "a.jpg").write_bytes(png(fmt="JPEG"))
    row = {"Question_id": "perception/monitoring/Vehicle/counting/0310", "Image": "monitoring_images/a.jpg",
           "Text": "What is the number of buses in the image?", "Answer choices": MME_CHOICES, "Ground truth": "E",
           "Category": "Vehicle/counting", "Subtask": "Monitoring", "Task": "Perception"}
    (tmp_path / "MME_RealWorld.json").write_text(json.dumps([row, dict(row, Question_id="r/1", Task="Reasoning")]))
    a, b = benchmarks.read("mmerealworld", tmp_path / "MME_RealWorld.json")
    assert a.question == MME_PROMPT and a.answer == "E" and a.choices[0] == "13"
    assert (a.meta["task"], a.meta["subtask"], b.meta["task"]) == ("Perception", "Perception/Monitoring", "Reasoning")
    with pytest.raises(ValueError, match=r"MME_RealWorld.json item 0: field Image: file .*a.jpg not found"):
        benchmarks.read("mmerealworld", tmp_path / "MME_RealWorld.json", image_root=tmp_path / "elsewhere")


def test_mme_realworld_lmms_parquet_shards(tmp_path):
    (tmp_path / "data").mkdir()
    for shard in range(2):
        write_parquet(tmp_path / "data" / f"train-0000{shard}-of-00002.parquet",
                      [{"bytes": b64(png()), "index": shard, "question": "What is the number of buses in the image?",
                        "multi-choice options": MME_CHOICES, "answer": "E", "category": "Perception/Monitoring",
                        "l2-category": "Vehicle/counting"}])
    exs = benchmarks.read("mmerealworld", tmp_path / "data")
    assert [ex.id for ex in exs] == ["mme-0", "mme-1"] and exs[0].question == MME_PROMPT


def test_mme_realworld_vlmevalkit_tsv(tmp_path):
    # VLMEvalKit TSV: A-E without "(A) ", options also as a Python-list string, and row 1 pointing
    # at row 0's image by its index (images are stored once).
    rows = [{"index": i, "image": b64(png()) if i == 0 else "0", "question": "What is the number of buses in the image?",
             "multi-choice options": str(MME_CHOICES), **{c[1]: c[4:] for c in MME_CHOICES}, "answer": "E",
             "category": "Reasoning/Monitoring", "l2-category": "x"} for i in range(2)]
    write_tsv(tmp_path / "MME-RealWorld.tsv", rows)
    a, b = benchmarks.read("mmerealworld", tmp_path / "MME-RealWorld.tsv")
    assert a.question == b.question == MME_PROMPT and b.image.size == (40, 30) and b.meta["task"] == "Reasoning"


MMSTAR_Q = ("Which option describe the object relationship in the image correctly?\nOptions: A: The suitcase is on "
            "the book., B: The suitcase is beneath the cat., C: The suitcase is beneath the bed., D: The suitcase "
            "is beneath the book.")


@pytest.mark.parametrize("fmt", ["tsv", "parquet"])
def test_mmstar_reader(tmp_path, fmt):
    image = b64(png()) if fmt == "tsv" else {"bytes": png(), "path": None}
    row = {"index": 0, "question": MMSTAR_Q, "image": image, "answer": "A", "category": "coarse perception",
           "l2_category": "image scene and topic", "bench": "MMBench"}
    (write_tsv if fmt == "tsv" else write_parquet)(tmp_path / f"mmstar.{fmt}", [row])
    (ex,) = benchmarks.read("mmstar", tmp_path / f"mmstar.{fmt}")
    assert ex.question == MMSTAR_Q + "\nAnswer with the option's letter from the given choices directly"
    assert ex.choices == ["The suitcase is on the book.", "The suitcase is beneath the cat.",
                          "The suitcase is beneath the bed.", "The suitcase is beneath the book."]
    assert ex.meta["category"] == "coarse perception" and ex.image.size == (40, 30)


def test_zoombench_reader_both_column_namings(tmp_path):
    q = "How many table lamps are in the image? Select from the following choices.\n(A) 0\n(B) 2\n(C) 1\n(D) 3"
    write_parquet(tmp_path / "official.parquet", [
        {"prompt": "<image>" + q, "answer": "C", "image": {"bytes": png(), "path": None}, "crop_image": None},
        {"prompt": "What colour is the lamp?", "answer": "red", "image": {"bytes": png(), "path": None},
         "crop_image": None}])
    mcq_ex, open_ex = benchmarks.read("zoombench", tmp_path / "official.parquet")
    assert (mcq_ex.question, mcq_ex.answer, mcq_ex.meta["type"], mcq_ex.choices) == (q, "C", "mcq", ["0", "2", "1", "3"])
    assert (open_ex.answer, open_ex.meta["type"], open_ex.id) == ("red", "open", "zoombench-1")
    write_parquet(tmp_path / "third.parquet", [
        {"id": "zb-1", "query": q, "response": "(C)", "question_type": "mcq", "image": {"bytes": png(), "path": None},
         "crop_image": {"bytes": png(), "path": None}, "sub_task": "counting"}])
    (ex,) = benchmarks.read("zoombench", tmp_path / "third.parquet")
    assert (ex.id, ex.answer, ex.meta["category"]) == ("zb-1", "C", "counting")


def test_project_jsonl(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "1", "image": "a.png", "question": "Colour?", "answer": "red",
                                                  "choices": ["red", "blue"], "bbox": [0, 0, 10, 10]}) + "\n")
    (ex,) = benchmarks.read("jsonl", tmp_path / "d.jsonl")
    assert benchmarks.judge("jsonl", "It is red.", ex)[2] is True


# ----------------------------------------------------------------------------------------------
# Aggregation: the numbers each benchmark reports.

def rec(correct, **meta):
    return {"correct": correct, "judge": False, "meta": meta}


def test_aggregations():
    # HR-Bench: accuracy per cycle, then the mean over cycles (not the micro mean over rows).
    rows = [rec(True, category="FSP", cycle="c0"), rec(False, category="FCP", cycle="c0"),
            rec(True, category="FSP", cycle="c1"), rec(True, category="FSP", cycle="c1"),
            rec(True, category="FCP", cycle="c1")]
    hr = benchmarks.aggregate("hrbench", rows)
    assert hr["overall"] == (pytest.approx((0.5 + 1.0) / 2), 5) and hr["FSP"][0] == 1.0 and hr["FCP"][0] == 0.5
    mme = benchmarks.aggregate("mmerealworld", [rec(True, task="Perception", subtask="Perception/OCR"),
                                                rec(False, task="Perception", subtask="Perception/OCR"),
                                                rec(True, task="Reasoning", subtask="Reasoning/OCR")])
    assert mme["overall"] == (pytest.approx(2 / 3), 3) and mme["Perception"] == (0.5, 2) and mme["Reasoning"] == (1.0, 1)
    assert mme["Perception/OCR"] == (0.5, 2)
    vs = benchmarks.aggregate("vstar", [rec(True, category="attribute"), rec(False, category="attribute"),
                                        rec(False, category="spatial")])
    assert list(vs) == ["overall", "attribute", "spatial"] and vs["overall"][0] == pytest.approx(1 / 3)
    assert vs["attribute"] == (0.5, 2) and vs["spatial"] == (0.0, 1)


# ----------------------------------------------------------------------------------------------
# A tiny model end to end.

@pytest.fixture(scope="module")
def tiny():
    return vlm.load("tiny:qwen2_5_vl")


def test_evaluate_scores_what_the_model_says(tiny, monkeypatch):
    # Stand-in responses: the gold answer for even items, nothing readable for odd ones.
    examples = data.synthetic(4, 1)
    fake = lambda model, processor, exs, **kw: [(f"It is a {ex.answer}." if i % 2 == 0 else "hmm", False)
                                                for i, ex in enumerate(exs)]
    monkeypatch.setattr(ev, "respond", fake)
    acc, preds = ev.evaluate(*tiny, examples)
    assert acc["overall"] == 0.5 and [p["correct"] for p in preds] == [True, False, True, False]
    assert [p["judge"] for p in preds] == [False, True, False, True] and [p["id"] for p in preds] == [e.id for e in examples]
    with pytest.raises(ValueError, match="no answer"):
        ev.evaluate(*tiny, [ex.without_answer() for ex in examples])


def test_blind_feeds_grey_images_of_the_same_size(tiny, monkeypatch):
    seen = []
    real = vlm.student_prompts
    monkeypatch.setattr(vlm, "student_prompts", lambda proc, images, qs: seen.extend(images) or real(proc, images, qs))
    examples = data.synthetic(2, 1)
    ev.respond(*tiny, examples, batch_size=2, max_new_tokens=2, blind=True)
    assert [im.size for im in seen] == [ex.size for ex in examples]
    assert all(im.getextrema() == ((128, 128),) * 3 for im in seen)
    seen.clear()
    ev.respond(*tiny, examples, batch_size=2, max_new_tokens=2)
    assert all(im.getextrema() != ((128, 128),) * 3 for im in seen)


def test_cli_writes_predictions_table_and_warns_when_blind_is_not_lower(tmp_path, capsys):
    out = tmp_path / "out"
    ev.main(["--model", "tiny:qwen2_5_vl", "--bench", "zoom", "--data", "synthetic:3:1", "--out-dir", str(out),
             "--max-new-tokens", "4", "--batch-size", "2", "--blind"])
    preds = [json.loads(l) for l in open(out / "predictions.jsonl")]
    assert [p["id"] for p in preds] == [ex.id for ex in data.synthetic(3, 1)]
    assert all(len(p["response"]) > 0 and p["correct"] in (True, False) for p in preds)
    results = json.load(open(out / "results.json"))
    assert 0.0 <= results["accuracy"]["overall"]["accuracy"] <= 1.0 and results["accuracy"]["overall"]["n"] == 3
    table = (out / "results.md").read_text()
    assert "| metric | n | accuracy % | blind % |" in table and "| overall | 3 |" in table
    assert len(open(out / "predictions_blind.jsonl").readlines()) == 3
    # A random model is as good blind as not: the loud warning must fire (and name the judge items).
    blind_acc = results["blind"]["overall"]["accuracy"]
    if blind_acc >= results["accuracy"]["overall"]["accuracy"]:
        assert "is NOT lower than real accuracy" in capsys.readouterr().err and "WARNING" in table
    judged = [p["id"] for p in preds if p["judge"]]
    assert results["judge_ids"] == judged and all(i in table for i in judged)


def test_report_warns_only_when_blind_is_not_lower():
    args = SimpleNamespace(model="m", bench="zoom", data="d", max_new_tokens=4, gate_teacher=None)
    examples = data.synthetic(2, 1)
    row = lambda ok: {"id": "x", "correct": ok, "judge": False, "truncated": False, "meta": {}}
    assert "WARNING" not in ev.report(args, examples, [row(True), row(True)], [row(False), row(True)], None)
    assert "WARNING" in ev.report(args, examples, [row(True), row(False)], [row(False), row(True)], None)
    assert "Chance (uniform over each item's options): 25.0%" in ev.report(args, examples, [row(True)] * 2, None, None)


def test_two_gloo_ranks_give_the_same_predictions_as_one(tmp_path):
    # 5 examples over 2 ranks: 3 + 2, the short rank padded to lockstep; padding must not leak.
    args = ["--model", "tiny:qwen2_5_vl", "--bench", "zoom", "--data", "synthetic:5:1", "--max-new-tokens", "6",
            "--batch-size", "2", "--gate-teacher", "tiny:qwen2_5_vl@1", "--group-size", "2"]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    # --standalone, not --master_port=0: torch 2.13's torchrun passes MASTER_PORT=0 on to the
    # workers, which then never meet (a silent hang).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "eval.py"), *args, "--out-dir", str(tmp_path / "two")]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: killed whole on timeout
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float reductions as the ranks' OMP_NUM_THREADS=1
    try:
        ev.main(args + ["--out-dir", str(tmp_path / "one")])
        log, _ = proc.communicate(timeout=120)
    finally:
        torch.set_num_threads(threads)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log
    for name in ("predictions.jsonl", "gate_rollouts.jsonl"):
        one, two = ([json.loads(l) for l in open(tmp_path / d / name)] for d in ("one", "two"))
        assert [(r["id"], r.get("g"), r["response"]) for r in one] == [(r["id"], r.get("g"), r["response"]) for r in two]
        for a, b in zip(one, two):
            for k in ("p", "w"):
                if k in a:
                    assert a[k] == pytest.approx(b[k], abs=1e-5)
    assert len(one) == 5 * 2


# ----------------------------------------------------------------------------------------------
# Gate diagnostics and the explain page.

@pytest.fixture(scope="module")
def diagnostics(tiny):
    teacher = Teacher(*vlm.load("tiny:qwen2_5_vl@1"), student_processor=tiny[1])
    examples = data.synthetic(3, 1)
    return examples, *ev.gate_diagnostics(*tiny, teacher, examples, group_size=3, batch_size=2, max_new_tokens=5, explain=2)


def test_gate_diagnostics_records_follow_eqs_17_to_20(diagnostics):
    examples, summary, records = diagnostics
    assert summary["rollouts"] == len(records) == 9 and [r["g"] for r in records[:3]] == [0, 1, 2]
    for i in range(3):
        group = [r for r in records if r["index"] == i]
        p = torch.tensor([r["p"] for r in group], dtype=torch.float64)
        a = (p - p.mean()) / (p.std(unbiased=False) + 1e-6)                           # Eq. 19
        assert [r["a"] for r in group] == pytest.approx(a.tolist(), abs=1e-4)
        assert [r["w"] for r in group] == pytest.approx((1 + 0.5 * a).clamp(0, 2).tolist(), abs=1e-5)  # Eq. 20
        for r in group:
            if i < 2:  # explained examples carry one Delta per token; p is their mean (Eq. 18)
                assert len(r["tokens"]) == len(r["delta"]) > 0
                assert r["p"] == pytest.approx(sum(r["delta"]) / len(r["delta"]), abs=1e-5)
            else:
                assert "tokens" not in r
    correct = [r["correct"] for r in records]
    assert summary["auroc_weight"] == auroc([r["w"] for r in records], correct)
    wrong = [r["p"] for r in records if not r["correct"]]
    assert summary["delta_wrong"] == pytest.approx(sum(wrong) / len(wrong))


def test_gate_diagnostics_need_boxes(tiny):
    ex = data.synthetic(1, 1)[0]
    no_box = data.Example(id="nb", question=ex.question, image_source=ex.image, answer=ex.answer, choices=ex.choices)
    with pytest.raises(ValueError, match="example nb needs an answer and a box"):
        ev.gate_diagnostics(*tiny, None, [no_box])


class TagChecker(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.imgs, self.rollouts = [], [], [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.imgs.append(attrs["src"])
        if attrs.get("class") == "rollout":
            self.rollouts += 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def test_explain_page_is_valid_html_with_every_sibling_and_three_images(diagnostics):
    examples, _, records = diagnostics
    page = ev.explain_page(examples, records, title="t <&>")
    checker = TagChecker()
    checker.feed(page)
    checker.close()
    assert page.startswith("<!DOCTYPE html>") and not checker.errors and not checker.stack
    assert checker.rollouts == 2 * 3                                  # every sibling of the 2 examples
    assert len(checker.imgs) == 2 * 3                                 # x, z+, z- per example
    full, pos, neg = data.evidence_views(examples[0], "paper")
    sizes = [Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size for src in checker.imgs[:3]]
    assert sizes == [full.size, pos.size, neg.size] and all(s.startswith("data:image/png;base64,") for s in checker.imgs)
    for r in records[:6]:
        assert f"p = {r['p']:+.3f}" in page and f"w = {r['w']:.2f}" in page
    assert "t &lt;&amp;&gt;" in page and examples[2].id not in page
