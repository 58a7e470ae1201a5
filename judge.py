"""
A local LLM judge for the responses no answer rule can settle, after the protocol of ZwZ ("Zooming
without Zooming", mm-eval/judge_qwenlm.py), the scorer of ZoomBench: rules first (answer_rules.py),
then a text LLM reads the question, the gold answer and the extracted response, greedily, and says
Yes or No; "Yes" or "yes" anywhere in what it says counts as correct. ZwZ's judge is
Qwen3-30B-A3B-Instruct-2507. Only ZoomBench's official protocol (ZwZ's) has this stage: V*'s,
MME-RealWorld's and MMStar's scorers have no LLM, VLMEvalKit's (HR-Bench) asks a GPT model to map
the response to an option letter instead; eval.py's results.md marks rule + judge numbers on those
benchmarks as following no official protocol (answer_rules.protocol).

    judge = Judge.load("Qwen/Qwen3-30B-A3B-Instruct-2507", device="cuda")  # any local causal LM or VLM
    outputs = judge.ask([(question, gold, response), ...])                # raw outputs, batched
    said_yes(outputs[0])

`eval.py --judge MODEL` asks it about the unsettled items only (verdict None), saves every raw
output in judge.jsonl beside predictions.jsonl and reports rule-only and rule + judge accuracy.
The model is loaded with transformers (a hub id or local folder: AutoModelForCausalLM, or
AutoModelForImageTextToText for a VLM, which then answers from text alone; `tiny:`/`small:` specs
via model.load, for tests) and must have a chat template. Decoding is plain greedy `generate`:
rollout.sample is the policy's sampler, built for Qwen VLM prompts (M-RoPE prefixes), not any LM.
Tests: python -m pytest -q tests/test_judge.py
"""

import re
import torch

import model as vlm
from answer_rules import drop_thinking

# ZwZ's judge prompt, word for word (its results are comparable only under the same wording).
PROMPT = ("Your task is to judge whether the response expresses the same meaning as the answer of a question.\n"
          "The question is: {question}\nThe answer is: {gold}\nThe response is: {response}\n"
          "Please check and compare them and then judge. If the response is correct, your output should be Yes. "
          "Otherwise, your output should be No. Directly give me your output.")
MAX_NEW_TOKENS = 2048  # ZwZ's; an instruction-tuned judge stops after "Yes" / "No"


def said_yes(output):
    """ZwZ's verdict rule: correct iff "Yes" or "yes" occurs in the output (a reasoning block, if
    the judge thinks aloud, is dropped first, as lmms-eval drops <think> / <analysis>: it may weigh
    "yes" before saying No)."""
    answer = drop_thinking(output)
    return "Yes" in answer or "yes" in answer


class Judge:
    def __init__(self, model, tokenizer, name="judge"):
        if not tokenizer.chat_template:
            raise ValueError(f"judge {name}: its tokenizer has no chat template; use an instruction-tuned model")
        tokenizer.padding_side = "left"  # generate continues every row from its right end
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if model.generation_config.eos_token_id is None:
            model.generation_config.eos_token_id = tokenizer.eos_token_id
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        self.model, self.tokenizer, self.name = model.eval().requires_grad_(False), tokenizer, name

    @classmethod
    def load(cls, name, *, dtype=torch.float32, device="cpu"):
        if re.fullmatch(r"(tiny|small):.+", name):  # an offline Qwen VLM (tests)
            model, processor = vlm.load(name, dtype=dtype, device=device)
            return cls(model, processor.tokenizer, name)
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
        kind = AutoConfig.from_pretrained(name).model_type
        auto = AutoModelForImageTextToText if kind in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES else AutoModelForCausalLM
        model = auto.from_pretrained(name, dtype=dtype).to(device)
        return cls(model, AutoTokenizer.from_pretrained(name), name)

    def prompts(self, items):
        """One chat-formatted prompt string per (question, gold, response)."""
        turns = [[{"role": "user", "content": PROMPT.format(question=q, gold=g, response=r)}] for q, g, r in items]
        return [self.tokenizer.apply_chat_template(t, tokenize=False, add_generation_prompt=True) for t in turns]

    @torch.no_grad()
    def ask(self, items, *, batch_size=8, max_new_tokens=MAX_NEW_TOKENS):
        """The judge's raw output for each (question, gold, response), greedy, in order."""
        outputs, tok, cfg = [], self.tokenizer, self.model.generation_config
        device = next(self.model.parameters()).device
        for start in range(0, len(items), batch_size):
            texts = self.prompts(items[start:start + batch_size])
            # Text only: input_ids / attention_mask [B, P], left padded (the template has the specials).
            inputs = tok(texts, padding=True, return_tensors="pt", return_token_type_ids=False,
                         add_special_tokens=False).to(device)
            # Plain greedy decoding; a hub generation config's sampling knobs and repetition
            # penalty are overridden so the judge is the same model under every config.
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.0,
                                      eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
            # [B, P + T] -> the T new tokens; after EOS generate pads, and the decoder drops specials.
            outputs += tok.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return outputs
