# Tests of judge.py and eval.py's judge pass, offline: ZwZ's verdict rule on tricky outputs, the
# prompt, a tiny text-only causal LM built from a config (and a tiny Qwen VLM) as the judge, that
# only the items no rule settled reach it, and the CLI's judge files and rule + judge tables.
import json

import pytest
import torch
import transformers

import data
import eval as ev
import model as vlm
from judge import PROMPT, Judge, said_yes


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    # A random 1-layer Qwen2 causal LM with the project's tiny tokenizer (it has a chat template),
    # saved like a hub checkpoint: what `--judge FOLDER` loads.
    tok = vlm._tiny_tokenizer()
    config = transformers.Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                                      eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lm = transformers.Qwen2ForCausalLM(config)
    path = tmp_path_factory.mktemp("judge_lm")
    lm.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_said_yes_is_zwz_rule():
    cases = [("Yes", True), ("yes, it matches", True), ("No", False), ("NO.", False),
             ("YES", False),                                  # ZwZ looks for "Yes" / "yes" only
             ("No, yesterday's answer was different.", True),  # ... anywhere: its substring rule, kept
             ("<think>yes? no, the colour differs.</think>No", False)]  # the reasoning block is dropped first
    for output, expected in cases:
        assert said_yes(output) is expected, output


def test_prompt_follows_zwz_and_the_chat_template(tiny_lm):
    judge = Judge.load(tiny_lm)
    (text,) = judge.prompts([("How many lamps?\n(A) 1\n(B) 2", "B", "two lamps")])
    body = PROMPT.format(question="How many lamps?\n(A) 1\n(B) 2", gold="B", response="two lamps")
    assert text == f"<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"
    assert "The answer is: B\nThe response is: two lamps\n" in body and body.endswith("Directly give me your output.")


def test_tiny_judges_answer_offline_batched(tiny_lm):
    items = [("What colour?", "red", "It is red."), ("How many?", "3", "three"), ("Which?", "C", "(C) 1")]
    for name in (tiny_lm, "tiny:qwen2_5_vl"):  # a text causal LM, and a VLM answering from text alone
        judge = Judge.load(name)
        batched = judge.ask(items, batch_size=2, max_new_tokens=4)
        assert len(batched) == 3 and all(isinstance(o, str) for o in batched)
        assert batched == judge.ask(items, batch_size=1, max_new_tokens=4)  # left padding changes nothing


def test_judge_without_a_chat_template_is_refused(tiny_lm):
    tok = transformers.AutoTokenizer.from_pretrained(tiny_lm)
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template; use an instruction-tuned model"):
        Judge(transformers.AutoModelForCausalLM.from_pretrained(tiny_lm), tok, "base-lm")


class FakeJudge:
    # Says "Yes" to responses containing "2", records what it was asked.
    def __init__(self):
        self.asked = []

    def ask(self, items, **kw):
        self.asked += items
        return ["Yes" if "2" in response else "No" for _, _, response in items]


def test_only_unsettled_items_reach_the_judge():
    examples = [data.Example(id=f"q{i}", question=f"question {i}", image_source=b"", answer="2") for i in range(5)]
    records = [{"index": 0, "id": "q0", "answer": "2", "extracted": "2", "verdict": True, "correct": True},
               {"index": 1, "id": "q1", "answer": "2", "extracted": "3", "verdict": False, "correct": False},
               {"index": 2, "id": "q2", "answer": "2", "extracted": "two, i.e. 2", "verdict": None, "correct": False},
               {"index": 3, "id": "q3", "answer": "2", "extracted": "maybe", "verdict": None, "correct": False},
               {"index": 4, "id": "q4", "error": "f.tsv row 4: column image: empty", "meta": {}}]
    judge = FakeJudge()
    verdicts = ev.judge_records(judge, examples, records, batch_size=1)
    assert judge.asked == [("question 2", "2", "two, i.e. 2"), ("question 3", "2", "maybe")]
    assert [(v["id"], v["output"], v["yes"]) for v in verdicts] == [("q2", "Yes", True), ("q3", "No", False)]
    assert [r["correct_judged"] for r in records] == [True, False, True, False, False]
    assert "judge" not in records[1] and records[2]["judge"] == "Yes"


def test_cli_judge_files_and_tables(tiny_lm, tmp_path, monkeypatch):
    # The tiny student's responses are gibberish: every item is unsettled and goes to the judge. A
    # judge that always says yes must lift rule + judge accuracy to 100%; its raw outputs are saved.
    monkeypatch.setattr(ev, "said_yes", lambda output: True)
    out = tmp_path / "out"
    ev.main(["--model", "tiny:qwen2_5_vl", "--bench", "zoom", "--data", "synthetic:3:1", "--out-dir", str(out),
             "--max-new-tokens", "3", "--judge", tiny_lm, "--judge-max-new-tokens", "3"])
    preds = [json.loads(l) for l in open(out / "predictions.jsonl")]
    unsettled = [p["id"] for p in preds if p["verdict"] is None]
    verdicts = [json.loads(l) for l in open(out / "judge.jsonl")]
    assert unsettled and [v["id"] for v in verdicts] == unsettled and all(isinstance(v["output"], str) for v in verdicts)
    results = json.load(open(out / "results.json"))
    rule = results["accuracy"]["full"]["overall"]["accuracy"]
    assert rule == sum(p["correct"] for p in preds) / 3
    assert results["accuracy_with_judge"]["full"]["overall"]["accuracy"] == 1.0
    table = (out / "results.md").read_text()
    assert "## Accuracy, rules only" in table and f"## Accuracy, rules + judge {tiny_lm}" in table
    assert f"The judge said yes to {len(unsettled)} of them (judge.jsonl)" in table


def test_judge_pass_resumes_from_its_log(tmp_path):
    examples = [data.Example(id=f"q{i}", question=f"question {i}", image_source=b"", answer="2") for i in range(2)]
    records = [{"index": i, "id": f"q{i}", "answer": "2", "extracted": f"maybe {i}", "verdict": None, "correct": False}
               for i in range(2)]
    ev.Log(tmp_path, "judge").write([{"index": 0, "id": "q0", "output": "Yes", "yes": True}])  # a killed run's
    judge = FakeJudge()
    verdicts = ev.judge_records(judge, examples, records, log=ev.Log(tmp_path, "judge"))
    assert judge.asked == [("question 1", "2", "maybe 1")] and [v["id"] for v in verdicts] == ["q0", "q1"]
    assert [r["correct_judged"] for r in records] == [True, False]
    assert len((tmp_path / "judge.rank0.jsonl").read_text().splitlines()) == 2
