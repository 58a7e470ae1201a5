# Tests of eval.py, benchmarks.py and answer_rules.py: each benchmark's official answer rule on a
# table of hand-made responses (verdicts as the reference scorer gives them) and the strict rules;
# every reader on small fixture files in the released formats, streamed (lazy image references,
# each rank decoding only its share); bad rows and bad images recorded, not fatal; the reported
# aggregations; kill-and-resume; the crop view and zooming gap; the inference setups; a tiny model
# end to end (CLI and Python API), the blind control, 2-rank sharding, gate diagnostics, the page.
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

import answer_rules
import benchmarks
import data
import eval as ev
import gate_eval
import model as vlm
from config import Config
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


def open_q(answer):
    return data.Example(id="o", question="?", image_source=Image.new("RGB", (8, 8)), answer=answer, meta={"type": "open"})


# ----------------------------------------------------------------------------------------------
# Official answer rules: (response, what the reference scorer reads, its verdict against the gold).
# Hand-made illustrations of each rule's quirks (they are what makes a number comparable with
# published ones). Each row was also run through the upstream scorer itself (the functions named in
# tests/test_answer_rules_parity.py, which holds the cases generated that way) and agrees with it.

GLOVE = ("rubber", "cotton", "kevlar", "leather")                     # gold D
VSTAR = [("D", "D", True), ("(C) kevlar", "C", False), ("D. leather", "D", True),
         ("Based on the image, the answer is D.", "B", False),       # starts with B: lmms-eval reads B
         ("It is a leather glove.", "A", False),                     # the article "a" as a lone letter
         ("The answer is D", "D", True), ("Option (A) says rubber, but it looks worn, so the answer is C.", "C", False),
         ("<think>(A) or (B)?</think>The answer is D", "D", True),   # the reasoning block is removed first
         ("I would say <answer>(A)</answer>", "A", False), ("Sure.", None, None), ("", None, None),
         ("red.", "D", True)]                                        # "D." at a word's end
HRBENCH = [("D", "D", True), ("B. cotton", "B", False), ("The correct answer is **C**, kevlar", "C", False),
           ("The answer is (D) leather because the glove looks like leather", None, None),  # letter too early, long
           ("D is the answer, I am quite sure of it", None, None),   # one letter, but not among the last 4 tokens
           ("(A) and (C) both look plausible.", None, None), ("It is made of cotton.", "B", False),  # option text
           ("Cannot determine the answer", "Z", False),              # VLMEvalKit's refusal prediction
           ("<think>A? B?</think><answer>(D)</answer>", "D", True), ("Based on it, leather or kevlar", None, None),
           ("the answer is blue", "B", False)]                       # "answer is b..." (case-insensitive)
BUSES = ("13", "90", "77", "6", "The image does not feature the buses")  # gold E
MME = [("E", "E", True), ("The best answer is (D).", "D", False), ("<answer>B</answer>", "B", False),
       ("Based on the image, there are clearly a great many buses parked along the road here.", "B", False),
       ("13", "A", False),                                           # part of "(A) 13"
       ("", "A", False),                                             # the empty string is part of every option
       ("there are many buses parked along the road in this picture of a busy city street", None, None),
       ("The answer is E", "E", True), ("Best answer: C", "B", False),  # that prefix is fused upstream: "Best" -> B
       ("does not feature", "E", True)]
SUITCASE = ("on the book", "beneath the cat", "beneath the bed", "beneath the book")  # gold D
MMSTAR = [("D", "D", True), ("(d) The suitcase is beneath the book.", "D", True), ("option d", "D", True),
          ("The answer is D", "D", True), ("Based on the image, D", "B", False),  # the first character
          ("I think it is D", None, None), ("", None, None),
          ("<think>maybe (A)</think>D", None, None),  # MMStar_eval reads the raw output: first character "<"
          ("Answer: D", "A", False), ("cat", "C", False)]


@pytest.mark.parametrize("bench,table,options,gold", [("vstar", VSTAR, GLOVE, "D"), ("hrbench", HRBENCH, GLOVE, "D"),
                                                      ("mmerealworld", MME, BUSES, "E"), ("mmstar", MMSTAR, SUITCASE, "D")])
def test_official_letter_rules(bench, table, options, gold):
    ex = mcq(options, gold)
    for response, pred, verdict in table:
        assert answer_rules.verdict(bench, response, ex)[1:] == (pred, verdict), (bench, response)


# ZoomBench (ZwZ): extraction, then mathruler's grade_answer; only matches are settled, the rest
# (None) is for the judge. (response, gold, extracted, verdict)
ZOOMBENCH = [("C", "C", "C", True), ("(C) 1", "C", "(C) 1", True),    # sympy: (c)*1 - c == 0
             ("Answer: C", "C", "Answer: C", None), ("<answer>C</answer>", "C", "C", True),
             ("<answer>C", "C", "", None),                           # no </answer>: upstream's span is empty
             ("Let me count.\nThere is one lamp.\nSo the answer is B.", "C", None, None),
             ("C\nwait\nno\nidea", "C", "wait\nno\nidea", None),      # only the last 3 lines
             ("Red", "red", "Red", True), ("red.", "red", "red.", None), ("It is red", "red", "It is red", None),
             ("3.0", "3", "3.0", True), ("three", "3", "three", None), ("3 seconds", "3", "3 seconds", True),  # unit
             ("1,000", "1000", "1,000", True), ("0.5", "1/2", "0.5", True)]


def test_official_zoombench_rule():
    for response, gold, extracted, verdict in ZOOMBENCH:
        ex = mcq(("0", "2", "1", "3"), gold, type="mcq") if gold == "C" else open_q(gold)
        got = answer_rules.verdict("zoombench", response, ex)
        assert got[2] is verdict and (extracted is None or got[0] == extracted), (response, got)


def test_drop_thinking_and_split_thinking():
    # lmms-eval's strip_reasoning_tags with its default tags; VLMEvalKit's split_thinking.
    assert answer_rules.drop_thinking("<think>a</think> B <think>c</think> D") == "B  D"
    assert answer_rules.drop_thinking("reasoning</think>C") == "C"               # the template opened the block
    assert answer_rules.drop_thinking("C <think>cut off") == "C <think>cut off"  # unclosed: left as is
    assert answer_rules.drop_thinking("<analysis>(A)?</analysis>B\n") == "B"     # lmms-eval's second default pair
    assert answer_rules.split_thinking("<think>a</think>B\n") == "B"
    assert answer_rules.split_thinking(" <analysis>a</analysis>B\n") == " <analysis>a</analysis>B\n"  # no </think>


# Strict rules: a letter counts only when it stands alone. (response, letter, or None)
VSTAR_STRICT = [("B", "B"), ("(C) kevlar", "C"), ("D. leather", "D"), ("Based on the image, the answer is D.", "D"),
                ("Based on the image it looks like leather.", None), ("I would say <answer>(A)</answer>", "A"),
                ("<think>(A) or (B)? Probably (B).</think>The answer is C", "C"), ("The glove is made of leather.", None)]
HRBENCH_STRICT = [("B. cotton", "B"), ("Based on the image, the answer is C.", "C"), ("(A) and (C) both look plausible.", None),
                  ("It is made of cotton.", "B"), ("<think>A? B?</think><answer>(D)</answer>", "D"),
                  ("D is the answer, I am quite sure of it", "D")]
MME_STRICT = [("E", "E"), ("The best answer is (D).", "D"), ("<answer>B</answer>", "B"), ("13", "A"),
              ("Based on the image, there are clearly a great many buses parked along the road here.", None),
              ("<think>Could be (A)</think>", None)]
MMSTAR_STRICT = [("A", "A"), ("(b) The suitcase is beneath the cat.", "B"), ("option c", "C"), ("The answer is D", "D"),
                 ("Based on the image, B", None), ("<think>maybe (A)</think>C", "C"), ("I think it is A", None)]


@pytest.mark.parametrize("bench,cases,options", [("vstar", VSTAR_STRICT, GLOVE), ("hrbench", HRBENCH_STRICT, GLOVE),
                                                 ("mmerealworld", MME_STRICT, BUSES), ("mmstar", MMSTAR_STRICT, SUITCASE)])
def test_strict_letter_rules(bench, cases, options):
    ex = mcq(options)
    for response, expected in cases:
        _, pred, verdict = answer_rules.verdict(bench, response, ex, rules="strict")
        assert pred == expected, (bench, response, pred)
        assert verdict is (None if expected is None else expected == "D"), (bench, response, verdict)


def test_strict_zoombench_rule_mcq_and_open():
    ex = mcq(("0", "2", "1", "3"), answer="C", type="mcq")
    for response, pred, verdict in [("(C) 1", "C", True), ("Answer: C", "Answer: C", True),
                                    ("Let me count.\nI think the answer is B.", "B", False),
                                    ("Based on the image there is one lamp", None, None)]:
        assert answer_rules.verdict("zoombench", response, ex, "strict")[1:] == (pred, verdict), response
    assert answer_rules.verdict("zoombench", "(C)\na\nb\nc", ex, "strict")[2] is None  # only the last 3 lines
    assert answer_rules.verdict("zoombench", "<think>blue?</think> red.", open_q("Red"), "strict")[2] is True
    assert answer_rules.verdict("zoombench", "crimson", open_q("Red"), "strict")[2] is None
    with pytest.raises(ValueError, match="unknown rules 'lenient'"):
        answer_rules.verdict("vstar", "A", ex, "lenient")


def test_zoom_world_rule_uses_match_choice():
    ex = data.synthetic(1, 0)[0]
    other = next(c for c in ex.choices if c != ex.answer)
    assert answer_rules.verdict("zoom", f"It is a {ex.answer}.", ex)[1:] == (ex.answer, True)
    assert answer_rules.verdict("zoom", f"<think>{ex.answer}?</think>{other}", ex)[1:] == (other, False)
    assert answer_rules.verdict("zoom", "no idea", ex)[1:] == (None, None)


def test_strip_reasoning():
    assert answer_rules.strip_reasoning("<think>A</think> B <answer> C </answer>") == "C"
    assert answer_rules.strip_reasoning("x</think>D") == "D"           # template opened <think>
    assert answer_rules.strip_reasoning("E <think>cut off mid-thought") == "E"


# ----------------------------------------------------------------------------------------------
# Readers, on fixtures in the released formats.

def write_tsv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)


def write_parquet(path, rows, **kw):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), path, **kw)


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
    os.remove(root / "relative_position" / "sa_2.json")                      # a missing sidecar: warned, no box
    with pytest.warns(UserWarning, match=r"1 of 2 images have no sidecar box file \(e.g. sa_2.json"):
        assert benchmarks.read("vstar", root / "test_questions.jsonl")[1].bbox is None
    os.remove(root / "relative_position" / "sa_2.jpg")                       # a missing image: that row is out
    good, bad = benchmarks.read("vstar", root)
    assert good.id == "0" and bad.id == "1" and "test_questions.jsonl line 2: column image: file" in bad.reason


def test_vstar_lmms_parquet_and_vlmevalkit_tsv(tmp_path):
    write_parquet(tmp_path / "test.parquet", [{"image": {"bytes": png(), "path": "sa_1.jpg"}, "question_id": 7,
                                               "text": "Q?\n(A) x\n(B) y\nAnswer with the option's letter.",
                                               "label": "B", "category": "relative_position"}])
    (ex,) = benchmarks.read("vstar", tmp_path / "test.parquet")
    assert ex.answer == "B" and ex.image.size == (40, 30) and ex.bbox is None
    # VLMEvalKit's VStarBench.tsv: options in A-D columns (C, D empty for a 2-option question).
    write_tsv(tmp_path / "VStarBench.tsv", [
        {"index": 0, "image": b64(png()), "question": "What is the color of the dustpan?", "A": "purple", "B": "red",
         "C": "blue", "D": "white", "answer": "C", "category": "direct_attributes"},
        {"index": 1, "image": b64(png(20, 20)), "question": "Is the cup left or right of the dog?", "A": "left",
         "B": "right", "C": "", "D": "", "answer": "B", "category": "relative_position"}])
    a, b = benchmarks.read("vstar", tmp_path / "VStarBench.tsv")
    assert a.question == ("What is the color of the dustpan?\n(A) purple\n(B) red\n(C) blue\n(D) white\n"
                          "Answer with the option's letter from the given choices directly.")
    assert (a.id, a.answer, a.meta["category"], b.choices, b.meta["category"]) == \
        ("vstar-0", "C", "attribute", ["left", "right"], "spatial")
    assert b.image.size == (20, 20)


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
    # Streamed: the items hold references into the file, never the pixels.
    kind = benchmarks.TsvImage if fmt == "tsv" else benchmarks.ParquetImage
    assert all(isinstance(ex.image_source, kind) for ex in exs)
    assert [ex.id for ex in benchmarks.read("hrbench", path, limit=2)] == ["hrbench-0", "hrbench-1"]


def test_tsv_stream_finds_each_image_and_reads_no_pixels(tmp_path):
    rows = hrbench_rows()
    rows[1]["question"] = 'A "quoted"\nmulti-line\tquestion'   # csv quotes it: one row over three lines
    rows[2]["image"] = "!" * 100                               # not base64: found only when decoded
    write_tsv(tmp_path / "hr.tsv", rows)
    exs = benchmarks.read("hrbench", tmp_path / "hr.tsv")
    assert "multi-line\tquestion" in exs[1].question and exs[1].image.size == (31, 20)
    assert exs[3].image.size == (33, 20) and exs[3].image_source.where.endswith("row 3 (line 6)")
    with pytest.raises(ValueError, match=r"example hrbench-2: field image_source: .*hr.tsv row 2 .*column image: "
                                         r"not valid base64"):
        exs[2].image


def test_parquet_cursor_reads_rows_in_any_order_and_knows_empty_columns(tmp_path):
    rows = [{"id": f"z{i}", "prompt": f"What colour is lamp {i}?", "answer": "red", "image": {"bytes": png(10 + i, 10),
             "path": None}, "crop_image": None} for i in range(5)]
    write_parquet(tmp_path / "zb.parquet", rows, row_group_size=2)        # 3 row groups
    exs = benchmarks.read("zoombench", tmp_path / "zb.parquet")
    assert [exs[i].image.size[0] for i in (3, 1, 4, 0, 4)] == [13, 11, 14, 10, 14]  # backwards: the cursor restarts
    assert all(ex.pos_crop is None for ex in exs)                         # crop_image all null: no crop view


def test_bad_rows_become_bad_items_and_a_wrong_file_is_refused(tmp_path):
    rows = hrbench_rows()
    rows[2]["answer"] = "F"
    rows[3]["category"] = ""
    write_tsv(tmp_path / "gold.tsv", rows)
    items = benchmarks.read("hrbench", tmp_path / "gold.tsv")
    assert [type(x).__name__ for x in items] == ["Example", "Example", "BadItem", "BadItem"]
    assert items[2].id == "hrbench-2" and "gold.tsv row 2 (line 4): column answer: 'F' is not one of" in items[2].reason
    assert "column category: missing or empty" in items[3].reason
    write_tsv(tmp_path / "cols.tsv", [{k: v for k, v in r.items() if k != "answer"} for r in hrbench_rows()])
    with pytest.raises(ValueError, match=r"cols.tsv: column\(s\) \['answer'\] missing"):
        benchmarks.read("hrbench", tmp_path / "cols.tsv")
    with pytest.raises(FileNotFoundError, match="nowhere.tsv"):
        benchmarks.read("hrbench", tmp_path / "nowhere.tsv")
    # An HR-Bench file read as MMStar has every MMStar column, but not one MMStar category.
    write_tsv(tmp_path / "hr_bench_8k.tsv", hrbench_rows())
    with pytest.raises(ValueError, match=r"none of the 4 rows can be used; is this the right file .*'single' is not "
                                         r"one of MMStar's categories"):
        benchmarks.read("mmstar", tmp_path / "hr_bench_8k.tsv")


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
    with pytest.raises(ValueError, match=r"none of the 2 rows .*MME_RealWorld.json item 0: field Image: file .*a.jpg"):
        benchmarks.read("mmerealworld", tmp_path / "MME_RealWorld.json", image_root=tmp_path / "elsewhere")


def test_mme_realworld_lmms_parquet_shards(tmp_path):
    (tmp_path / "data").mkdir()
    for shard in range(2):
        write_parquet(tmp_path / "data" / f"train-0000{shard}-of-00002.parquet",
                      [{"bytes": b64(png(20 + shard, 20)), "index": shard, "multi-choice options": MME_CHOICES,
                        "question": "What is the number of buses in the image?", "answer": "E",
                        "category": "Perception/Monitoring", "l2-category": "Vehicle/counting"}])
    exs = benchmarks.read("mmerealworld", tmp_path / "data")
    assert [ex.id for ex in exs] == ["mme-0", "mme-1"] and exs[0].question == MME_PROMPT
    assert [ex.image.size for ex in exs] == [(20, 20), (21, 20)]


def test_mme_realworld_vlmevalkit_tsv(tmp_path):
    # VLMEvalKit TSV: A-E without "(A) ", options also as a Python-list string, and row 1 pointing
    # at row 0's image by its index (images are stored once).
    rows = [{"index": i, "image": b64(png()) if i == 0 else "0", "question": "What is the number of buses in the image?",
             "multi-choice options": str(MME_CHOICES), **{c[1]: c[4:] for c in MME_CHOICES}, "answer": "E",
             "category": "Reasoning/Monitoring", "l2-category": "x"} for i in range(3)]
    rows[2]["image"] = "7"                                       # points at no row
    write_tsv(tmp_path / "MME-RealWorld.tsv", rows)
    a, b, c = benchmarks.read("mmerealworld", tmp_path / "MME-RealWorld.tsv")
    assert a.question == b.question == MME_PROMPT and b.image.size == (40, 30) and b.meta["task"] == "Reasoning"
    assert isinstance(c, benchmarks.BadItem) and "'7' is neither base64 pixels nor the index" in c.reason


MMSTAR_Q = ("Which option describe the object relationship in the image correctly?\nOptions: A: The suitcase is on "
            "the book., B: The suitcase is beneath the cat., C: The suitcase is beneath the bed., D: The suitcase "
            "is beneath the book.")


@pytest.mark.parametrize("fmt", ["tsv", "parquet"])
def test_mmstar_reader_both_option_layouts(tmp_path, fmt):
    image = b64(png()) if fmt == "tsv" else {"bytes": png(), "path": None}
    rows = [{"index": 0, "question": MMSTAR_Q, "image": image, "answer": "A", "category": "coarse perception",
             "l2_category": "image scene and topic", "bench": "MMBench"},
            {"index": 1, "question": "What is the value of x?\n(A) 2\n(B) 4\n(C) 6\n(D) 8", "image": image,
             "answer": "C", "category": "math", "l2_category": "geometry", "bench": "MathVista"}]
    (write_tsv if fmt == "tsv" else write_parquet)(tmp_path / f"mmstar.{fmt}", rows)
    ex, lines = benchmarks.read("mmstar", tmp_path / f"mmstar.{fmt}")
    assert ex.question == MMSTAR_Q + "\nAnswer with the option's letter from the given choices directly"
    assert ex.choices == ["The suitcase is on the book.", "The suitcase is beneath the cat.",
                          "The suitcase is beneath the bed.", "The suitcase is beneath the book."]
    assert lines.choices == ["2", "4", "6", "8"] and lines.answer == "C"            # "(A) ..." lines parse too
    assert ex.meta["category"] == "coarse perception" and ex.image.size == (40, 30)


def test_zoombench_reader_column_namings_crops_and_image_paths(tmp_path):
    q = "How many table lamps are in the image? Select from the following choices.\n(A) 0\n(B) 2\n(C) 1\n(D) 3"
    write_parquet(tmp_path / "official.parquet", [
        {"prompt": "<image>" + q, "answer": "C", "image": {"bytes": png(), "path": None},
         "crop_image": {"bytes": png(12, 12), "path": None}},
        {"prompt": "What colour is the lamp?", "answer": "red", "image": {"bytes": png(), "path": None},
         "crop_image": {"bytes": png(14, 14), "path": None}}])
    mcq_ex, open_ex = benchmarks.read("zoombench", tmp_path / "official.parquet")
    assert (mcq_ex.question, mcq_ex.answer, mcq_ex.meta["type"], mcq_ex.choices) == (q, "C", "mcq", ["0", "2", "1", "3"])
    assert (open_ex.answer, open_ex.meta["type"], open_ex.id) == ("red", "open", "zoombench-1")
    assert ev.view_image(open_ex, "crop").size == (14, 14)                   # the ground-truth crop: z+ and a view
    # Another copy: other column names, and images stored as paths beside the parquet.
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png(16, 16))
    write_parquet(tmp_path / "third.parquet", [
        {"id": "zb-1", "query": q, "response": "(C)", "question_type": "mcq", "image": {"bytes": None, "path": "imgs/a.png"},
         "sub_task": "counting"}])
    (ex,) = benchmarks.read("zoombench", tmp_path / "third.parquet")
    assert (ex.id, ex.answer, ex.meta["category"], ex.image.size, ex.pos_crop) == ("zb-1", "C", "counting", (16, 16), None)
    (ex,) = benchmarks.read("zoombench", tmp_path / "third.parquet", image_root=tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"example zb-1: .*column image: the image is stored as a file path "
                                         r"'imgs/a.png', not bytes, .*pass --image-root"):
        ex.image


def test_project_jsonl(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "1", "image": "a.png", "question": "Colour?", "answer": "red",
                                                  "choices": ["red", "blue"], "bbox": [0, 0, 10, 10]}) + "\n")
    (ex,) = benchmarks.read("jsonl", tmp_path / "d.jsonl")
    assert answer_rules.verdict("jsonl", "It is red.", ex)[2] is True


# ----------------------------------------------------------------------------------------------
# Aggregation: the numbers each benchmark reports.

def rec(correct, error=None, **meta):
    return {"correct": correct, "verdict": correct, "meta": meta, **({"error": error} if error else {})}


def test_aggregations():
    # HR-Bench: accuracy per cycle, then the mean over cycles (not the micro mean over rows).
    rows = [rec(True, category="FSP", cycle="c0"), rec(False, category="FCP", cycle="c0"),
            rec(True, category="FSP", cycle="c1"), rec(True, category="FSP", cycle="c1"),
            rec(True, category="FCP", cycle="c1"), rec(False, error="bad image", category="FCP", cycle="c1")]
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
    judged = [dict(rec(False, category="a"), correct_judged=True), dict(rec(False, category="a"), correct_judged=False)]
    assert benchmarks.aggregate("vstar", judged, "correct_judged")["overall"] == (0.5, 2)


# ----------------------------------------------------------------------------------------------
# Evaluation: records, errors, streaming per rank, resume, views, setups.

def scripted(monkeypatch, texts):
    # respond() stand-in: the given texts in call order; records what it was asked.
    asked, it = [], iter(texts)

    def fake(model, processor, images, questions, **kw):
        asked.append((images, questions, kw))
        return [(next(it), False) for _ in questions]
    monkeypatch.setattr(ev, "respond", fake)
    return asked


def test_evaluate_scores_what_the_model_says(monkeypatch):
    # The gold answer for even items, nothing readable for odd ones; a bad row and a bad image
    # are recorded as errors and left out of the denominator.
    examples = data.synthetic(4, 1)
    examples[3] = data.Example(id="broken", question="?", image_source=b"not an image", answer="x")
    items = examples + [benchmarks.BadItem(id="row9", reason="f.tsv row 9: column answer: missing or empty")]
    scripted(monkeypatch, [f"It is a {examples[0].answer}.", "hmm", f"a {examples[2].answer}"])
    acc, preds = ev.evaluate(None, None, items, batch_size=2)
    assert acc["overall"] == pytest.approx(2 / 3) and [p["id"] for p in preds] == [e.id for e in items]
    assert [p.get("verdict") for p in preds[:3]] == [True, None, True]
    assert "field image_source: cannot read image" in preds[3]["error"] and preds[4]["error"].startswith("f.tsv row 9")
    with pytest.raises(ValueError, match="no answer"):
        ev.evaluate(None, None, [ex.without_answer() for ex in examples[:2]])


def test_each_rank_decodes_only_its_share(monkeypatch):
    decoded = []

    def image(i):
        return lambda: decoded.append(i) or Image.new("RGB", (8, 8))
    examples = [data.Example(id=f"e{i}", question="q", image_source=image(i), answer="a") for i in range(7)]
    monkeypatch.setattr(ev, "_world", lambda distributed: (1, 3))          # rank 1 of 3, without a process group
    monkeypatch.setattr(ev, "_gather", lambda items, world_size: items)
    scripted(monkeypatch, ["a"] * 10)
    _, preds = ev.evaluate(None, None, examples, "jsonl", batch_size=2)
    assert set(decoded) == {1, 4} and [p["id"] for p in preds] == ["e1", "e4"]  # (4 twice: the lockstep padding)


@pytest.fixture(scope="module")
def tiny():
    return vlm.load("tiny:qwen2_5_vl")


def test_blind_feeds_grey_images_of_the_same_size(tiny, monkeypatch):
    seen = []
    real = vlm.student_prompts
    monkeypatch.setattr(vlm, "student_prompts", lambda proc, images, qs: seen.extend(images) or real(proc, images, qs))
    examples = data.synthetic(2, 1)
    ev.evaluate(*tiny, examples, view="blind", batch_size=2, max_new_tokens=2)
    assert [im.size for im in seen] == [ex.size for ex in examples]
    assert all(im.getextrema() == ((128, 128),) * 3 for im in seen)
    seen.clear()
    ev.evaluate(*tiny, examples, batch_size=2, max_new_tokens=2)
    assert all(im.getextrema() != ((128, 128),) * 3 for im in seen)


def test_sampled_setup_draws_the_same_per_item_whatever_the_batch(tiny):
    examples = data.synthetic(3, 1)
    kw = dict(max_new_tokens=4, temperature=1.0, top_p=1.0, seed=5)
    one = [r["response"] for r in ev.evaluate(*tiny, examples, batch_size=1, **kw)[1]]
    three = [r["response"] for r in ev.evaluate(*tiny, examples, batch_size=3, **kw)[1]]
    other = [r["response"] for r in ev.evaluate(*tiny, examples, batch_size=3, **dict(kw, seed=6))[1]]
    assert one == three and one != other


def test_setups_set_sampling_pixels_and_system_prompt(monkeypatch, tmp_path):
    args = ev.parse_args(["--model", "m", "--bench", "zoom", "--out-dir", "o", "--setup", "zwz", "--max-pixels", "50176"])
    assert (args.max_new_tokens, args.min_pixels, args.max_pixels) == (8192, 65536, 50176)  # the flag wins
    assert ev.parse_args(["--model", "m", "--bench", "zoom", "--out-dir", "o"]).max_new_tokens == ev.MAX_NEW_TOKENS
    loads = []
    real_load = vlm.load
    monkeypatch.setattr(vlm, "load", lambda name, **kw: loads.append(kw) or real_load(name, **kw))
    asked = scripted(monkeypatch, ["plus"] * 4)
    ev.main(["--model", "tiny:qwen2_5_vl", "--bench", "zoom", "--data", "synthetic:2:1", "--out-dir", str(tmp_path),
             "--setup", "zwz", "--min-pixels", "12544", "--seed", "3"])
    assert (loads[0]["min_pixels"], loads[0]["max_pixels"]) == (12544, 16_777_216)
    images, questions, kw = asked[0]
    assert all(q.startswith(ev.ZWZ_SYSTEM_PROMPT + "\n\n") for q in questions)
    assert (kw["temperature"], kw["top_p"], kw["max_new_tokens"], kw["seeds"]) == (0.7, 0.8, 8192, [3_000_009, 3_000_010])
    assert "Setup: **zwz**: temperature 0.7, top-p 0.8, seed 3, pixels [12544, 16777216]" in \
        (tmp_path / "results.md").read_text()


def test_log_survives_a_line_cut_short(tmp_path):
    log = ev.Log(tmp_path, "predictions", rank=1)
    log.write([{"index": 0, "id": "a"}, {"index": 1, "id": "b"}])
    with open(log.path, "a") as f:
        f.write('{"index": 2, "id": "c", "resp')                    # a kill mid-write
    assert sorted(log.done()) == ["a", "b"]                          # c is asked again ...
    log.write([{"index": 2, "id": "c"}])                             # ... and its line replaces the cut one
    assert [json.loads(l)["id"] for l in log.path.read_text().splitlines()] == ["a", "b", "c"]
    ev.Log(tmp_path, "predictions", rank=0).write([{"index": 3, "id": "d"}])  # an earlier run had 2 ranks
    log = ev.Log(tmp_path, "predictions", rank=0)                    # ... this one has 1
    assert sorted(log.done()) == ["a", "b", "c", "d"] and len(log.parts()) == 2
    log.finish(sorted(log.done().values(), key=lambda r: r["index"]))
    assert not log.parts() and (tmp_path / "predictions.jsonl").read_text().count("\n") == 4


def test_killed_eval_keeps_every_finished_batch_and_resumes(tiny, tmp_path, monkeypatch):
    args = ["--model", "tiny:qwen2_5_vl", "--bench", "zoom", "--data", "synthetic:5:1", "--max-new-tokens", "3",
            "--batch-size", "2"]
    ev.main(args + ["--out-dir", str(tmp_path / "clean")])
    clean = [json.loads(l) for l in open(tmp_path / "clean" / "predictions.jsonl")]
    real, calls = ev.respond, []

    def killed_on_third_batch(*a, **kw):
        calls.append(len(a[3]))
        if len(calls) == 3:  # the two finished batches are on disk before the third runs
            part = tmp_path / "run" / "predictions.rank0.jsonl"
            assert [json.loads(l)["id"] for l in part.read_text().splitlines()] == [r["id"] for r in clean[:4]]
            raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(ev, "respond", killed_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        ev.main(args + ["--out-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "predictions.jsonl").exists()
    with pytest.raises(SystemExit, match="holds an earlier evaluation .*pass --resume"):
        ev.main(args + ["--out-dir", str(tmp_path / "run")])
    with pytest.raises(SystemExit, match="other settings: rules 'official' \\(now 'strict'\\)"):
        ev.main(args + ["--out-dir", str(tmp_path / "run"), "--resume", "--rules", "strict"])
    calls.clear()
    ev.main(args + ["--out-dir", str(tmp_path / "run"), "--resume"])
    assert calls == [1]                                              # only the item the kill interrupted
    resumed = [json.loads(l) for l in open(tmp_path / "run" / "predictions.jsonl")]
    assert resumed == clean and not list((tmp_path / "run").glob("*.rank*.jsonl"))


def zoombench_file(tmp_path, n=4):
    # n open questions "What is written on sign i?" (gold "word i"); full images 40x30, crops 12x12,
    # item 1's crop undecodable.
    rows = [{"id": f"zb-{i}", "prompt": f"What is written on sign {i}?", "answer": f"word {i}",
             "image": {"bytes": png(), "path": None},
             "crop_image": {"bytes": b"broken" if i == 1 else png(12, 12), "path": None}} for i in range(n)]
    write_parquet(tmp_path / "test.parquet", rows)
    return tmp_path / "test.parquet"


def test_zoombench_crop_view_and_zooming_gap(tmp_path, monkeypatch):
    def answers(model, processor, images, questions, **kw):  # right from the crop, right from the full view for sign 0
        return [(f"word {q.split()[-1][:-1]}" if im.size == (12, 12) or q.endswith("sign 0?") else "no idea", False)
                for im, q in zip(images, questions)]
    monkeypatch.setattr(ev, "respond", answers)
    ev.main(["--model", "tiny:qwen2_5_vl", "--bench", "zoombench", "--data", str(zoombench_file(tmp_path)),
             "--out-dir", str(tmp_path / "out")])
    crop = [json.loads(l) for l in open(tmp_path / "out" / "predictions_crop.jsonl")]
    assert [r.get("verdict") for r in crop] == [True, None, True, True] and "column crop_image" in crop[1]["error"]
    results = json.load(open(tmp_path / "out" / "results.json"))
    assert results["accuracy"]["full"]["overall"] == {"accuracy": 0.25, "n": 4}
    assert results["accuracy"]["crop"]["overall"] == {"accuracy": 1.0, "n": 3}
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| overall | 4 | 25.0 | 100.0 | 3 |" in table
    assert "Zooming gap (crop view - full view, on the 3 items with both): +66.7 points." in table
    assert "1 of 4 items (crop view) could not be evaluated" in table and "zb-1: example zb-1" in table


def test_cli_writes_predictions_table_and_warns_when_blind_is_not_lower(tmp_path, capsys):
    out = tmp_path / "out"
    ev.main(["--model", "tiny:qwen2_5_vl", "--bench", "zoom", "--data", "synthetic:3:1", "--out-dir", str(out),
             "--max-new-tokens", "4", "--batch-size", "2", "--blind"])
    preds = [json.loads(l) for l in open(out / "predictions.jsonl")]
    assert [p["id"] for p in preds] == [ex.id for ex in data.synthetic(3, 1)]
    assert all(len(p["response"]) > 0 and p["correct"] in (True, False) for p in preds)
    results = json.load(open(out / "results.json"))
    full, blind = results["accuracy"]["full"]["overall"], results["accuracy"]["blind"]["overall"]
    assert 0.0 <= full["accuracy"] <= 1.0 and full["n"] == 3 and results["rules"] == "official"
    assert results["strip_reasoning"] == "upstream" and results["protocol"]["rules_and_judge"] is None
    table = (out / "results.md").read_text()
    assert "| metric | n | accuracy % | blind % |" in table and "| overall | 3 |" in table
    assert len(open(out / "predictions_blind.jsonl").readlines()) == 3 and "MiB RSS" in table
    # A random model is as good blind as not: the loud warning must fire (and name the unsettled items).
    if blind["accuracy"] >= full["accuracy"]:
        assert "is NOT lower than real accuracy" in capsys.readouterr().err and "WARNING" in table
    unsettled = [p["id"] for p in preds if p["verdict"] is None]
    assert results["unsettled_ids"]["full"] == unsettled and all(i in table for i in unsettled)


def test_report_counts_errors_and_warns_only_when_blind_is_not_lower():
    args = SimpleNamespace(model="m", bench="zoom", data="d", max_new_tokens=4, gate_teacher=None, judge=None,
                           rules="official", strip_reasoning="upstream", setup="greedy", seed=0, min_pixels=None,
                           max_pixels=None)
    examples = data.synthetic(3, 1)
    row = lambda i, ok: {"index": i, "id": f"x{i}", "correct": ok, "verdict": ok, "truncated": False, "meta": {}}
    bad = {"index": 2, "id": "x2", "error": "hr.tsv row 2: column image: not valid base64", "meta": {}}
    text = ev.report(args, examples, {"full": [row(0, True), row(1, False), bad], "blind": [row(0, False), row(1, False)]},
                     None, "1 MiB RSS")
    assert "| overall | 2 | 50.0 | 0.0 |" in text and "WARNING" not in text
    assert "**1 of 3 items could not be evaluated** (bad benchmark data) and are left out of every denominator: " \
           "x2: hr.tsv row 2: column image: not valid base64" in text
    assert "WARNING" in ev.report(args, examples, {"full": [row(0, True), row(1, False)],
                                                   "blind": [row(0, True), row(1, True)]}, None, "")
    assert "Chance (uniform over each item's options): 25.0%" in text


def test_report_names_each_numbers_protocol_and_marks_the_unofficial_ones():
    args = SimpleNamespace(model="m", bench="mmstar", data="d", max_new_tokens=4, gate_teacher=None, judge="J",
                           rules="official", strip_reasoning="upstream", setup="greedy", seed=0, min_pixels=None,
                           max_pixels=None)
    rows = [{"index": i, "id": f"x{i}", "correct": i == 0, "correct_judged": i < 2, "verdict": True if i == 0 else None,
             "judge_yes": i == 1, "truncated": False, "meta": {"category": "math"}} for i in range(3)]
    text = ev.report(args, data.synthetic(3, 1), {"full": rows}, None, "")
    assert ("Protocol of the rule-only numbers: MMStar eval/vlmeval/evaluate/mmstar.py MMStar_eval @ 88f243ab; "
            "reasoning blocks not removed (the raw output), upstream's default.") in text
    assert ("Protocol of the rule + judge numbers: then judge J on the unsettled items: NOT an official protocol "
            "(MMStar_eval settles every non-hit as wrong).") in text
    args.strip_reasoning, args.judge = "on", None
    text = ev.report(args, data.synthetic(3, 1), {"full": rows}, None, "")
    assert "lmms-eval's <think> and <analysis> tags), NOT an official protocol: this scorer has no such option" in text
    assert "rule + judge" not in text
    base = ["--model", "m", "--bench", "mmstar", "--data", "d", "--out-dir", "o"]
    assert ev.parse_args(base + ["--strip-reasoning", "on"]).strip_reasoning == "on"
    with pytest.raises(SystemExit):  # strict always reads the answer part: the flag would do nothing
        ev.parse_args(base + ["--rules", "strict", "--strip-reasoning", "off"])


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
    assert len(one) == 5 * 2 and not list((tmp_path / "two").glob("*.rank*.jsonl"))


# ----------------------------------------------------------------------------------------------
# Gate diagnostics and the explain page.

@pytest.fixture(scope="module")
def diagnostics(tiny):
    teacher = Teacher(*vlm.load("tiny:qwen2_5_vl@1"), student_processor=tiny[1])
    examples = data.synthetic(3, 1)
    return examples, *gate_eval.gate_diagnostics(*tiny, teacher, examples, settings=Config(group_size=3), batch_size=2, max_new_tokens=5, explain=2)


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
        gate_eval.gate_diagnostics(*tiny, None, [no_box], max_new_tokens=5)


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
    page = gate_eval.explain_page(examples, records, Config(group_size=3), title="t <&>")
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
