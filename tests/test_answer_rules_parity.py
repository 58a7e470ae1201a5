# Upstream parity of the official answer rules (answer_rules.py, issue 21): responses of every class
# that moved a score before (A: <think> blocks closed, opened by the template, unclosed; B: lmms-eval's
# <analysis> tags; C: LaTeX; D: surrounding whitespace and trailing lines; E: VLMEvalKit's API-failure
# clause; F: Unicode case mapping, U+0130 and friends), plus lower-case letters, full-width letters and
# punctuation, hedges naming two options, answers given as option text, <answer> tags, and the
# upstream quirks the rules copy. Every expected value below was produced by RUNNING the upstream
# scoring code (the function, file and commit named above each table) on that exact response; none
# was written by hand. Class names: "<wrapper>/<body>" (how the answer is wrapped / what it is).
# Run: python -m pytest -q tests/test_answer_rules_parity.py
import pytest

import answer_rules
import data

GLOVE = ("rubber", "cotton", "kevlar", "leather")
BUSES = ("13", "90", "77", "6", "The image does not feature the buses")
SUITCASE = ("on the book", "beneath the cat", "beneath the bed", "beneath the book")


def example(choices, answer, **meta):
    return data.Example(id="q", question="?", image_source=None, answer=answer,
                        choices=list(choices) if choices else None, meta=meta)


# V* (gold D unless given; options rubber, cotton, kevlar, leather). Expected letter and verdict from
# lmms-eval @ 75571cfe run verbatim: lmms_eval/api/reasoning.py strip_reasoning_tags with __main__.py's default
# --reasoning_tags (strip "upstream"; "off" = --reasoning_tags none, the raw output), then
# lmms_eval/tasks/vstar_bench/utils.py extract_answer_letter, scored as vstar_process_results does.
# (class, strip, response, gold, letter, correct)
VSTAR = [
    ('none/plain', 'upstream', 'D', 'D', 'D', True),
    ('none/lower', 'upstream', 'd', 'D', 'D', True),
    ('none/text', 'upstream', 'leather', 'D', 'A', False),
    ('none/hedge', 'upstream', 'A or D?', 'D', 'A', False),
    ('none/quirk', 'upstream', 'Based on the image, the answer is D.', 'D', 'B', False),
    ('none/latex', 'upstream', '\\boxed{D}', 'D', None, False),
    ('none/fullwidth', 'upstream', '\uff24', 'D', None, False),
    ('none/E-api', 'upstream', 'Failed to obtain answer via API', 'D', None, False),
    ('none/refusal', 'upstream', 'Cannot determine the answer', 'D', 'C', False),
    ('none/F-unicode', 'upstream', 'THE ANSWER \u0130S A, NOT (D)', 'D', 'A', False),
    ('D-ws/plain', 'upstream', 'D\n\n', 'D', 'D', True),
    ('D-ws/lower', 'upstream', 'd\n\n', 'D', 'D', True),
    ('D-ws/F-unicode', 'upstream', 'THE ANSWER \u0130S A, NOT (D)\n\n', 'D', 'A', False),
    ('A-think/plain', 'upstream', '<think>Maybe A? Or (B)?</think> D', 'D', 'D', True),
    ('A-think/lower', 'upstream', '<think>Maybe A? Or (B)?</think> d', 'D', 'D', True),
    ('A-think/F-unicode', 'upstream', '<think>Maybe A? Or (B)?</think> THE ANSWER \u0130S A, NOT (D)', 'D', 'A', False),
    ('A-open/plain', 'upstream', 'Reasoning about (A)...</think>D', 'D', 'D', True),
    ('A-open/lower', 'upstream', 'Reasoning about (A)...</think>d', 'D', 'D', True),
    ('A-open/F-unicode', 'upstream', 'Reasoning about (A)...</think>THE ANSWER \u0130S A, NOT (D)', 'D', 'A', False),
    ('A-unclosed/plain', 'upstream', '<think>unfinished (D)', 'D', 'D', True),
    ('A-unclosed/lower', 'upstream', '<think>unfinished (d)', 'D', 'D', True),
    ('A-unclosed/F-unicode', 'upstream', '<think>unfinished (THE ANSWER \u0130S A, NOT (D))', 'D', 'A', False),
    ('B-analysis/plain', 'upstream', '<analysis>Comparing ... (A)?</analysis>D', 'D', 'D', True),
    ('B-analysis/lower', 'upstream', '<analysis>Comparing ... (A)?</analysis>d', 'D', 'D', True),
    ('B-analysis/text', 'upstream', '<analysis>Comparing ... (A)?</analysis>The answer is leather', 'D', None, False),
    ('B-analysis/hedge', 'upstream', '<analysis>Comparing ... (A)?</analysis>I think (D), maybe (A)', 'D', 'D', True),
    ('B-analysis/quirk', 'upstream', '<analysis>Comparing ... (A)?</analysis>Based on the image, the answer is D.', 'D', 'B', False),
    ('B-analysis/latex', 'upstream', '<analysis>Comparing ... (A)?</analysis>\\boxed{D}', 'D', None, False),
    ('B-analysis/fullwidth', 'upstream', '<analysis>Comparing ... (A)?</analysis>\uff24', 'D', None, False),
    ('B-analysis/E-api', 'upstream', '<analysis>Comparing ... (A)?</analysis>Failed to obtain answer via API', 'D', None, False),
    ('B-analysis/refusal', 'upstream', '<analysis>Comparing ... (A)?</analysis>Cannot determine the answer', 'D', 'C', False),
    ('answer-tag/plain', 'upstream', '<answer>D</answer>', 'D', None, False),
    ('answer-tag/lower', 'upstream', '<answer>d</answer>', 'D', None, False),
    ('answer-tag/F-unicode', 'upstream', '<answer>THE ANSWER \u0130S A, NOT (D)</answer>', 'D', 'A', False),
    ('D-lines/plain', 'upstream', 'Some reasoning.\nSo:\nD\n\n', 'D', 'D', True),
    ('D-lines/lower', 'upstream', 'Some reasoning.\nSo:\nd\n\n', 'D', 'D', True),
    ('D-lines/F-unicode', 'upstream', 'Some reasoning.\nSo:\nTHE ANSWER \u0130S A, NOT (D)\n\n', 'D', 'A', False),
    ('none/plain', 'off', 'D', 'D', 'D', True),
    ('none/lower', 'off', 'd', 'D', 'D', True),
    ('none/F-unicode', 'off', 'THE ANSWER \u0130S A, NOT (D)', 'D', 'A', False),
    ('D-ws/plain', 'off', 'D\n\n', 'D', 'D', True),
    ('D-ws/lower', 'off', 'd\n\n', 'D', 'D', True),
    ('D-ws/F-unicode', 'off', 'THE ANSWER \u0130S A, NOT (D)\n\n', 'D', 'A', False),
    ('A-think/plain', 'off', '<think>Maybe A? Or (B)?</think> D', 'D', 'B', False),
    ('A-think/lower', 'off', '<think>Maybe A? Or (B)?</think> d', 'D', 'B', False),
    ('A-think/text', 'off', '<think>Maybe A? Or (B)?</think> leather', 'D', 'B', False),
    ('A-think/hedge', 'off', '<think>Maybe A? Or (B)?</think> A or D?', 'D', 'B', False),
    ('A-think/quirk', 'off', '<think>Maybe A? Or (B)?</think> Based on the image, the answer is D.', 'D', 'D', True),
    ('A-think/latex', 'off', '<think>Maybe A? Or (B)?</think> \\boxed{D}', 'D', 'B', False),
    ('A-think/fullwidth', 'off', '<think>Maybe A? Or (B)?</think> \uff24', 'D', 'B', False),
    ('A-think/E-api', 'off', '<think>Maybe A? Or (B)?</think> Failed to obtain answer via API', 'D', 'B', False),
    ('A-think/refusal', 'off', '<think>Maybe A? Or (B)?</think> Cannot determine the answer', 'D', 'B', False),
    ('A-open/plain', 'off', 'Reasoning about (A)...</think>D', 'D', 'A', False),
    ('A-open/lower', 'off', 'Reasoning about (A)...</think>d', 'D', 'A', False),
    ('A-open/text', 'off', 'Reasoning about (A)...</think>The answer is leather', 'D', 'A', False),
    ('A-open/hedge', 'off', 'Reasoning about (A)...</think>I think (D), maybe (A)', 'D', 'A', False),
    ('A-open/quirk', 'off', 'Reasoning about (A)...</think>Based on the image, the answer is D.', 'D', 'D', True),
    ('A-open/latex', 'off', 'Reasoning about (A)...</think>\\boxed{D}', 'D', 'A', False),
    ('A-open/fullwidth', 'off', 'Reasoning about (A)...</think>\uff24', 'D', 'A', False),
    ('A-open/E-api', 'off', 'Reasoning about (A)...</think>Failed to obtain answer via API', 'D', 'A', False),
    ('A-open/refusal', 'off', 'Reasoning about (A)...</think>Cannot determine the answer', 'D', 'A', False),
    ('A-unclosed/plain', 'off', '<think>unfinished (D)', 'D', 'D', True),
    ('A-unclosed/lower', 'off', '<think>unfinished (d)', 'D', 'D', True),
    ('A-unclosed/F-unicode', 'off', '<think>unfinished (THE ANSWER \u0130S A, NOT (D))', 'D', 'A', False),
    ('B-analysis/plain', 'off', '<analysis>Comparing ... (A)?</analysis>D', 'D', 'A', False),
    ('B-analysis/lower', 'off', '<analysis>Comparing ... (A)?</analysis>d', 'D', 'A', False),
    ('B-analysis/text', 'off', '<analysis>Comparing ... (A)?</analysis>leather', 'D', 'A', False),
    ('answer-tag/plain', 'off', '<answer>D</answer>', 'D', None, False),
    ('answer-tag/lower', 'off', '<answer>d</answer>', 'D', None, False),
    ('answer-tag/F-unicode', 'off', '<answer>THE ANSWER \u0130S A, NOT (D)</answer>', 'D', 'A', False),
    ('D-lines/plain', 'off', 'Some reasoning.\nSo:\nD\n\n', 'D', 'D', True),
    ('D-lines/lower', 'off', 'Some reasoning.\nSo:\nd\n\n', 'D', 'D', True),
    ('D-lines/F-unicode', 'off', 'Some reasoning.\nSo:\nTHE ANSWER \u0130S A, NOT (D)\n\n', 'D', 'A', False),
    ('B-analysis', 'upstream', '<analysis>Comparing the glove to (A)?</analysis>B', 'B', 'B', True),
]

# HR-Bench (gold D; the same options). Expected from VLMEvalKit @ e8e78f05 run verbatim:
# vlmeval/utils/matching_util.py can_infer (False -> None) on the prediction as HRBenchDataset.evaluate passes it
# (str), hit = (can_infer or 'Z') == gold as vlmeval/dataset/utils/multiple_choice.py extract_answer_from_item /
# eval_vanilla do in exact matching; strip "on" = vlmeval/inference.py split_thinking (SPLIT_THINK=True).
# (class, strip, response, gold, letter, correct)
HRBENCH = [
    ('none/plain', 'upstream', 'D', 'D', 'D', True),
    ('none/lower', 'upstream', 'd', 'D', None, False),
    ('none/text', 'upstream', 'leather', 'D', 'D', True),
    ('none/hedge', 'upstream', 'A or D?', 'D', 'A', False),
    ('none/quirk', 'upstream', 'Based on the image, the answer is D.', 'D', 'D', True),
    ('none/latex', 'upstream', '\\boxed{D}', 'D', 'D', True),
    ('none/fullwidth', 'upstream', '\uff24', 'D', None, False),
    ('none/E-api', 'upstream', 'Failed to obtain answer via API D', 'D', None, False),
    ('none/refusal', 'upstream', 'Cannot determine the answer', 'D', 'Z', False),
    ('D-ws/plain', 'upstream', 'D\n\n', 'D', 'D', True),
    ('D-ws/lower', 'upstream', 'd\n\n', 'D', None, False),
    ('D-ws/E-api', 'upstream', 'Failed to obtain answer via API D\n\n', 'D', None, False),
    ('A-think/plain', 'upstream', '<think>Maybe A? Or (B)?</think> D', 'D', None, False),
    ('A-think/lower', 'upstream', '<think>Maybe A? Or (B)?</think> d', 'D', 'B', False),
    ('A-think/text', 'upstream', '<think>Maybe A? Or (B)?</think> leather', 'D', 'B', False),
    ('A-think/hedge', 'upstream', '<think>Maybe A? Or (B)?</think> A or D?', 'D', None, False),
    ('A-think/quirk', 'upstream', '<think>Maybe A? Or (B)?</think> Best answer: C', 'D', None, False),
    ('A-think/latex', 'upstream', '<think>Maybe A? Or (B)?</think> \\boxed{D}', 'D', None, False),
    ('A-think/fullwidth', 'upstream', '<think>Maybe A? Or (B)?</think> \uff24', 'D', 'B', False),
    ('A-think/E-api', 'upstream', '<think>Maybe A? Or (B)?</think> Failed to obtain answer via API. leather', 'D', None, False),
    ('A-think/refusal', 'upstream', '<think>Maybe A? Or (B)?</think> Z', 'D', 'B', False),
    ('A-think/F-unicode', 'upstream', '<think>Maybe A? Or (B)?</think> \u0130', 'D', 'B', False),
    ('A-open/plain', 'upstream', 'Reasoning about (A)...</think>D', 'D', 'A', False),
    ('A-open/lower', 'upstream', 'Reasoning about (A)...</think>d', 'D', 'A', False),
    ('A-open/text', 'upstream', 'Reasoning about (A)...</think>leather', 'D', 'A', False),
    ('A-open/hedge', 'upstream', 'Reasoning about (A)...</think>Either leather or something else', 'D', None, False),
    ('A-open/quirk', 'upstream', 'Reasoning about (A)...</think>Best answer: C', 'D', None, False),
    ('A-open/latex', 'upstream', 'Reasoning about (A)...</think>\\boxed{D}', 'D', None, False),
    ('A-open/fullwidth', 'upstream', 'Reasoning about (A)...</think>\uff24', 'D', 'A', False),
    ('A-open/E-api', 'upstream', 'Reasoning about (A)...</think>Failed to obtain answer via API. leather', 'D', None, False),
    ('A-open/refusal', 'upstream', 'Reasoning about (A)...</think>Z', 'D', 'A', False),
    ('A-open/F-unicode', 'upstream', 'Reasoning about (A)...</think>\u0130', 'D', 'A', False),
    ('A-unclosed/plain', 'upstream', '<think>unfinished (D)', 'D', 'D', True),
    ('A-unclosed/E-api', 'upstream', '<think>unfinished (Failed to obtain answer via API D)', 'D', None, False),
    ('A-unclosed/F-unicode', 'upstream', '<think>unfinished (\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130 leather)', 'D', None, False),
    ('B-analysis/plain', 'upstream', '<analysis>(A)</analysis><think>(B)</think>D', 'D', None, False),
    ('B-analysis/lower', 'upstream', '<analysis>(A)</analysis><think>(B)</think>d', 'D', None, False),
    ('B-analysis/text', 'upstream', '<analysis>(A)</analysis><think>(B)</think>leather', 'D', 'D', True),
    ('B-analysis/hedge', 'upstream', '<analysis>(A)</analysis><think>(B)</think>A or D?', 'D', None, False),
    ('B-analysis/quirk', 'upstream', '<analysis>(A)</analysis><think>(B)</think>A glove.', 'D', None, False),
    ('B-analysis/latex', 'upstream', '<analysis>(A)</analysis><think>(B)</think>\\(D\\)', 'D', None, False),
    ('B-analysis/fullwidth', 'upstream', '<analysis>(A)</analysis><think>(B)</think>\uff24', 'D', None, False),
    ('B-analysis/refusal', 'upstream', '<analysis>(A)</analysis><think>(B)</think>Z', 'D', None, False),
    ('B-analysis/F-unicode', 'upstream', '<analysis>(A)</analysis><think>(B)</think>\u0130', 'D', None, False),
    ('answer-tag/plain', 'upstream', '<answer>D</answer>', 'D', None, False),
    ('answer-tag/lower', 'upstream', '<answer>d</answer>', 'D', None, False),
    ('answer-tag/E-api', 'upstream', '<answer>Failed to obtain answer via API D', 'D', None, False),
    ('D-lines/plain', 'upstream', 'Some reasoning.\nSo:\nD\n\n', 'D', 'D', True),
    ('D-lines/E-api', 'upstream', 'Some reasoning.\nSo:\nFailed to obtain answer via API D\n\n', 'D', None, False),
    ('D-lines/F-unicode', 'upstream', 'Some reasoning.\nSo:\n\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130 leather\n\n', 'D', None, False),
    ('none/plain', 'on', 'D', 'D', 'D', True),
    ('none/lower', 'on', 'd', 'D', None, False),
    ('none/E-api', 'on', 'Failed to obtain answer via API D', 'D', None, False),
    ('D-ws/plain', 'on', 'D\n\n', 'D', 'D', True),
    ('D-ws/lower', 'on', 'd\n\n', 'D', None, False),
    ('D-ws/E-api', 'on', 'Failed to obtain answer via API D\n\n', 'D', None, False),
    ('A-think/plain', 'on', '<think>Maybe A? Or (B)?</think> D', 'D', 'D', True),
    ('A-think/lower', 'on', '<think>Maybe A? Or (B)?</think> d', 'D', None, False),
    ('A-think/E-api', 'on', '<think>Maybe A? Or (B)?</think> Failed to obtain answer via API D', 'D', None, False),
    ('A-open/plain', 'on', 'Reasoning about (A)...</think>D', 'D', 'D', True),
    ('A-open/lower', 'on', 'Reasoning about (A)...</think>d', 'D', None, False),
    ('A-open/E-api', 'on', 'Reasoning about (A)...</think>Failed to obtain answer via API D', 'D', None, False),
    ('A-unclosed/plain', 'on', '<think>unfinished (D)', 'D', 'D', True),
    ('A-unclosed/E-api', 'on', '<think>unfinished (Failed to obtain answer via API D)', 'D', None, False),
    ('A-unclosed/F-unicode', 'on', '<think>unfinished (\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130 leather)', 'D', None, False),
    ('B-analysis/plain', 'on', '<analysis>(A)</analysis><think>(B)</think>D', 'D', 'D', True),
    ('B-analysis/lower', 'on', '<analysis>(A)</analysis><think>(B)</think>d', 'D', None, False),
    ('B-analysis/text', 'on', '<analysis>(A)</analysis><think>(B)</think>leather', 'D', 'D', True),
    ('answer-tag/plain', 'on', '<answer>D</answer>', 'D', None, False),
    ('answer-tag/lower', 'on', '<answer>d</answer>', 'D', None, False),
    ('answer-tag/E-api', 'on', '<answer>Failed to obtain answer via API D', 'D', None, False),
    ('D-lines/plain', 'on', 'Some reasoning.\nSo:\nD\n\n', 'D', 'D', True),
    ('D-lines/E-api', 'on', 'Some reasoning.\nSo:\nFailed to obtain answer via API D\n\n', 'D', None, False),
    ('D-lines/F-unicode', 'on', 'Some reasoning.\nSo:\n\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130\u0130 leather\n\n', 'D', None, False),
    ('E-api', 'upstream', 'Failed to obtain answer via API. Leather', 'D', 'D', True),
]

# MME-RealWorld (gold E; options 13, 90, 77, 6, The image does not feature the buses). Expected from
# yfzhang114/MME-RealWorld @ 87096fcf evaluation/eval_your_results.py extract_characters_regex run verbatim
# ("" -> None), correct = (Ground truth == its result). (class, response, gold, letter, correct)
MME = [
    ('none/plain', 'E', 'E', 'E', True),
    ('none/lower', 'e', 'E', 'E', True),
    ('none/text', 'The image does not feature the buses', 'E', 'E', True),
    ('none/hedge', 'A or E?', 'E', 'A', False),
    ('none/quirk', 'Based on the image, the answer is E.', 'E', 'B', False),
    ('none/latex', '\\boxed{E}', 'E', 'E', True),
    ('none/fullwidth', '\uff25', 'E', None, False),
    ('none/E-api', 'Failed to obtain answer via API', 'E', 'A', False),
    ('none/refusal', 'Cannot determine the answer', 'E', 'C', False),
    ('none/F-unicode', '\u0130', 'E', None, False),
    ('D-ws/plain', 'E\n\n', 'E', 'E', True),
    ('D-ws/lower', 'e\n\n', 'E', 'E', True),
    ('D-ws/text', 'The image does not feature the buses\n\n', 'E', 'E', True),
    ('D-ws/hedge', 'A or E?\n\n', 'E', 'A', False),
    ('D-ws/quirk', 'Based on the image, the answer is E.\n\n', 'E', 'B', False),
    ('D-ws/latex', '\\boxed{E}\n\n', 'E', 'E', True),
    ('D-ws/fullwidth', '\uff25\n\n', 'E', None, False),
    ('D-ws/E-api', 'Failed to obtain answer via API\n\n', 'E', 'A', False),
    ('D-ws/refusal', 'Cannot determine the answer\n\n', 'E', 'C', False),
    ('D-ws/F-unicode', '\u0130\n\n', 'E', None, False),
    ('A-think/plain', '<think>Maybe A? Or (B)?</think> E', 'E', 'A', False),
    ('A-think/lower', '<think>Maybe A? Or (B)?</think> e', 'E', 'A', False),
    ('A-think/text', '<think>Maybe A? Or (B)?</think> The image does not feature the buses', 'E', 'A', False),
    ('A-think/hedge', '<think>Maybe A? Or (B)?</think> I think (E), maybe (A)', 'E', 'A', False),
    ('A-think/quirk', '<think>Maybe A? Or (B)?</think> Based on the image, the answer is E.', 'E', 'A', False),
    ('A-think/latex', '<think>Maybe A? Or (B)?</think> \\boxed{E}', 'E', 'A', False),
    ('A-think/fullwidth', '<think>Maybe A? Or (B)?</think> \uff25', 'E', 'A', False),
    ('A-think/E-api', '<think>Maybe A? Or (B)?</think> Failed to obtain answer via API', 'E', 'A', False),
    ('A-think/refusal', '<think>Maybe A? Or (B)?</think> Cannot determine the answer', 'E', 'A', False),
    ('A-think/F-unicode', '<think>Maybe A? Or (B)?</think> \u0130', 'E', 'A', False),
    ('A-open/plain', 'Reasoning about (A)...</think>E', 'E', 'A', False),
    ('A-open/lower', 'Reasoning about (A)...</think>e', 'E', 'A', False),
    ('A-open/text', 'Reasoning about (A)...</think>The image does not feature the buses', 'E', 'A', False),
    ('A-open/hedge', 'Reasoning about (A)...</think>I think (E), maybe (A)', 'E', 'A', False),
    ('A-open/quirk', 'Reasoning about (A)...</think>Based on the image, the answer is E.', 'E', 'A', False),
    ('A-open/latex', 'Reasoning about (A)...</think>\\boxed{E}', 'E', 'A', False),
    ('A-open/fullwidth', 'Reasoning about (A)...</think>\uff25', 'E', 'A', False),
    ('A-open/E-api', 'Reasoning about (A)...</think>Failed to obtain answer via API', 'E', 'A', False),
    ('A-open/refusal', 'Reasoning about (A)...</think>Cannot determine the answer', 'E', 'A', False),
    ('A-open/F-unicode', 'Reasoning about (A)...</think>\u0130', 'E', 'A', False),
    ('A-unclosed/plain', '<think>unfinished (E)', 'E', 'E', True),
    ('A-unclosed/lower', '<think>unfinished (e)', 'E', None, False),
    ('A-unclosed/text', '<think>unfinished (The image does not feature the buses)', 'E', None, False),
    ('B-analysis/plain', '<analysis>Comparing ... (A)?</analysis>E', 'E', 'C', False),
    ('B-analysis/lower', '<analysis>Comparing ... (A)?</analysis>e', 'E', 'C', False),
    ('B-analysis/text', '<analysis>Comparing ... (A)?</analysis>The image does not feature the buses', 'E', 'C', False),
    ('answer-tag/plain', '<answer>E</answer>', 'E', 'E', True),
    ('answer-tag/lower', '<answer>e</answer>', 'E', None, False),
    ('answer-tag/text', '<answer>The image does not feature the buses</answer>', 'E', None, False),
    ('D-lines/plain', 'Some reasoning.\nSo:\nE\n\n', 'E', 'E', True),
    ('D-lines/lower', 'Some reasoning.\nSo:\ne\n\n', 'E', None, False),
    ('D-lines/text', 'Some reasoning.\nSo:\nThe image does not feature the buses\n\n', 'E', None, False),
]

# MMStar (gold D unless given). Expected from MMStar-Benchmark/MMStar @ 88f243ab
# eval/vlmeval/evaluate/mmstar.py MMStar_eval: its per-item hit test (the lines from `answer = ...` to the
# `except`) run verbatim. (class, response, gold, hit)
MMSTAR = [
    ('none/plain', 'D', 'D', True),
    ('none/lower', 'd', 'D', True),
    ('none/text', 'beneath the book', 'D', False),
    ('none/hedge', 'A or D?', 'D', False),
    ('none/quirk', 'Based on the image, the answer is D.', 'D', False),
    ('none/latex', '\\boxed{D}', 'D', False),
    ('none/fullwidth', '\uff24', 'D', False),
    ('none/E-api', 'Failed to obtain answer via API', 'D', False),
    ('none/refusal', 'Cannot determine the answer', 'D', False),
    ('none/F-unicode', '\u0130', 'D', False),
    ('D-ws/plain', 'D\n\n', 'D', True),
    ('D-ws/lower', 'd\n\n', 'D', True),
    ('D-ws/text', 'beneath the book\n\n', 'D', False),
    ('D-ws/hedge', 'A or D?\n\n', 'D', False),
    ('D-ws/quirk', 'Based on the image, the answer is D.\n\n', 'D', False),
    ('D-ws/latex', '\\boxed{D}\n\n', 'D', False),
    ('D-ws/fullwidth', '\uff24\n\n', 'D', False),
    ('D-ws/E-api', 'Failed to obtain answer via API\n\n', 'D', False),
    ('D-ws/refusal', 'Cannot determine the answer\n\n', 'D', False),
    ('D-ws/F-unicode', '\u0130\n\n', 'D', False),
    ('A-think/plain', '<think>Maybe A? Or (B)?</think> D', 'D', False),
    ('A-think/lower', '<think>Maybe A? Or (B)?</think> d', 'D', False),
    ('A-think/text', '<think>Maybe A? Or (B)?</think> beneath the book', 'D', False),
    ('A-think/hedge', '<think>Maybe A? Or (B)?</think> A or D?', 'D', False),
    ('A-think/quirk', '<think>Maybe A? Or (B)?</think> D is the answer, I am quite sure of it', 'D', False),
    ('A-think/latex', '<think>Maybe A? Or (B)?</think> \\boxed{D}', 'D', False),
    ('A-think/fullwidth', '<think>Maybe A? Or (B)?</think> D\u3002', 'D', False),
    ('A-think/E-api', '<think>Maybe A? Or (B)?</think> Failed to obtain answer via API', 'D', False),
    ('A-think/refusal', '<think>Maybe A? Or (B)?</think> Cannot determine the answer', 'D', False),
    ('A-think/F-unicode', '<think>Maybe A? Or (B)?</think> \u0130', 'D', False),
    ('A-open/plain', 'Reasoning about (A)...</think>D', 'D', False),
    ('A-open/lower', 'Reasoning about (A)...</think>d', 'D', False),
    ('A-open/text', 'Reasoning about (A)...</think>beneath the book', 'D', False),
    ('A-open/hedge', 'Reasoning about (A)...</think>A or D?', 'D', False),
    ('A-open/quirk', 'Reasoning about (A)...</think>D is the answer, I am quite sure of it', 'D', False),
    ('A-open/latex', 'Reasoning about (A)...</think>\\boxed{D}', 'D', False),
    ('A-open/fullwidth', 'Reasoning about (A)...</think>D\u3002', 'D', False),
    ('A-open/E-api', 'Reasoning about (A)...</think>Failed to obtain answer via API', 'D', False),
    ('A-open/refusal', 'Reasoning about (A)...</think>Cannot determine the answer', 'D', False),
    ('A-open/F-unicode', 'Reasoning about (A)...</think>\u0130', 'D', False),
    ('A-unclosed/plain', '<think>unfinished (D)', 'D', False),
    ('A-unclosed/lower', '<think>unfinished (d)', 'D', False),
    ('A-unclosed/text', '<think>unfinished (beneath the book)', 'D', False),
    ('B-analysis/plain', '<analysis>Comparing ... (A)?</analysis>D', 'D', False),
    ('B-analysis/lower', '<analysis>Comparing ... (A)?</analysis>d', 'D', False),
    ('B-analysis/text', '<analysis>Comparing ... (A)?</analysis>beneath the book', 'D', False),
    ('answer-tag/plain', '<answer>D</answer>', 'D', False),
    ('answer-tag/lower', '<answer>d</answer>', 'D', False),
    ('answer-tag/text', '<answer>beneath the book</answer>', 'D', False),
    ('D-lines/plain', 'Some reasoning.\nSo:\nD\n\n', 'D', False),
    ('D-lines/lower', 'Some reasoning.\nSo:\nd\n\n', 'D', False),
    ('D-lines/text', 'Some reasoning.\nSo:\nbeneath the book\n\n', 'D', False),
    ('A-think', '<think>Maybe A? Or (B)?</think> B', 'B', False),
]

# ZoomBench. Expected from inclusionAI/Zooming-without-Zooming @ fdc0ba1a mm-eval/judge_qwenlm.py run
# verbatim (the extraction lines and the try: grade_answer(gt, extracted) step) with mathruler 0.1.0 from PyPI
# (mathruler/grader.py grade_answer, the same as hiyouga/MathRuler @ 14dadeb0). (class, gold, response,
# extracted, mathruler says correct); "C" is an MCQ gold (options 0, 2, 1, 3).
ZOOMBENCH = [
    ('none', 'C', '\\boxed{C}', '\\boxed{C}', True),
    ('D-ws', 'C', 'C\n\n', 'C\n\n', True),
    ('A-think', 'C', '<think>Maybe A? Or (B)?</think> C', '<think>Maybe A? Or (B)?</think> C', False),
    ('A-open', 'C', 'Reasoning about (A)...</think>C', 'Reasoning about (A)...</think>C', False),
    ('A-unclosed', 'C', ' <think>cut off', ' <think>cut off', False),
    ('B-analysis', 'C', '<analysis>(A)</analysis><think>(B)</think>C', '<analysis>(A)</analysis><think>(B)</think>C', False),
    ('answer-tag', 'C', '<answer>\\boxed{C}</answer>', '\\boxed{C}', True),
    ('D-lines', 'C', 'Some reasoning.\nSo:\nC\n\n', 'C\n\n', True),
    ('none', 'two', 'C', 'C', False),
    ('D-ws', 'two', 'C\n\n', 'C\n\n', False),
    ('A-think', 'two', '<think>Maybe A? Or (B)?</think> C', '<think>Maybe A? Or (B)?</think> C', False),
    ('A-open', 'two', 'Reasoning about (A)...</think>C', 'Reasoning about (A)...</think>C', False),
    ('A-unclosed', 'two', ' <think>cut off', ' <think>cut off', False),
    ('B-analysis', 'two', '<analysis>(A)</analysis><think>(B)</think>C', '<analysis>(A)</analysis><think>(B)</think>C', False),
    ('answer-tag', 'two', '<answer>C</answer>', 'C', False),
    ('D-lines', 'two', 'Some reasoning.\nSo:\nC\n\n', 'C\n\n', False),
    ('none', '1/2', '\\frac12', '\\frac12', True),
    ('D-ws', '1/2', 'C\n\n', 'C\n\n', False),
    ('A-think', '1/2', '<think>Maybe A? Or (B)?</think> C', '<think>Maybe A? Or (B)?</think> C', False),
    ('A-open', '1/2', 'Reasoning about (A)...</think>C', 'Reasoning about (A)...</think>C', False),
    ('A-unclosed', '1/2', ' <think>cut off', ' <think>cut off', False),
    ('B-analysis', '1/2', '<analysis>(A)</analysis><think>(B)</think>C', '<analysis>(A)</analysis><think>(B)</think>C', False),
    ('answer-tag', '1/2', '<answer>\\frac12</answer>', '\\frac12', True),
    ('D-lines', '1/2', 'Some reasoning.\nSo:\nC\n\n', 'C\n\n', False),
    ('none', '20', '\\boxed{20}', '\\boxed{20}', True),
    ('D-ws', '20', 'C\n\n', 'C\n\n', False),
    ('A-think', '20', '<think>Maybe A? Or (B)?</think> C', '<think>Maybe A? Or (B)?</think> C', False),
    ('A-open', '20', 'Reasoning about (A)...</think>C', 'Reasoning about (A)...</think>C', False),
    ('A-unclosed', '20', ' <think>cut off', ' <think>cut off', False),
    ('B-analysis', '20', '<analysis>(A)</analysis><think>(B)</think>C', '<analysis>(A)</analysis><think>(B)</think>C', False),
    ('answer-tag', '20', '<answer>\\boxed{20}</answer>', '\\boxed{20}', True),
    ('D-lines', '20', 'Some reasoning.\nSo:\nC\n\n', 'C\n\n', False),
    ('none', 'blue', '\\(blue\\)', '\\(blue\\)', True),
    ('D-ws', 'blue', 'C\n\n', 'C\n\n', False),
    ('A-think', 'blue', '<think>Maybe A? Or (B)?</think> C', '<think>Maybe A? Or (B)?</think> C', False),
    ('A-open', 'blue', 'Reasoning about (A)...</think>C', 'Reasoning about (A)...</think>C', False),
    ('A-unclosed', 'blue', ' <think>cut off', ' <think>cut off', False),
    ('B-analysis', 'blue', '<analysis>(A)</analysis><think>(B)</think>C', '<analysis>(A)</analysis><think>(B)</think>C', False),
    ('answer-tag', 'blue', '<answer>\\(blue\\)</answer>', '\\(blue\\)', True),
    ('D-lines', 'blue', 'Some reasoning.\nSo:\nC\n\n', 'C\n\n', False),
    ('none', '3', 'C', 'C', False),
    ('D-ws', '3', 'C\n\n', 'C\n\n', False),
    ('A-think', '3', '<think>Maybe A? Or (B)?</think> C', '<think>Maybe A? Or (B)?</think> C', False),
    ('A-open', '3', 'Reasoning about (A)...</think>C', 'Reasoning about (A)...</think>C', False),
    ('A-unclosed', '3', ' <think>cut off', ' <think>cut off', False),
    ('B-analysis', '3', '<analysis>(A)</analysis><think>(B)</think>C', '<analysis>(A)</analysis><think>(B)</think>C', False),
    ('answer-tag', '3', '<answer>C</answer>', 'C', False),
    ('D-lines', '3', 'Some reasoning.\nSo:\nC\n\n', 'C\n\n', False),
    ('none', '(1, 2)', 'C', 'C', False),
    ('D-ws', '(1, 2)', 'C\n\n', 'C\n\n', False),
    ('A-think', '(1, 2)', '<think>Maybe A? Or (B)?</think> C', '<think>Maybe A? Or (B)?</think> C', False),
    ('A-open', '(1, 2)', 'Reasoning about (A)...</think>C', 'Reasoning about (A)...</think>C', False),
    ('A-unclosed', '(1, 2)', ' <think>cut off', ' <think>cut off', False),
    ('B-analysis', '(1, 2)', '<analysis>(A)</analysis><think>(B)</think>C', '<analysis>(A)</analysis><think>(B)</think>C', False),
    ('answer-tag', '(1, 2)', '<answer>C</answer>', 'C', False),
    ('D-lines', '(1, 2)', 'Some reasoning.\nSo:\nC\n\n', 'C\n\n', False),
    ('none', '$5', 'C', 'C', False),
    ('D-ws', '$5', 'C\n\n', 'C\n\n', False),
    ('A-think', '$5', '<think>Maybe A? Or (B)?</think> C', '<think>Maybe A? Or (B)?</think> C', False),
    ('A-open', '$5', 'Reasoning about (A)...</think>C', 'Reasoning about (A)...</think>C', False),
    ('A-unclosed', '$5', ' <think>cut off', ' <think>cut off', False),
    ('B-analysis', '$5', '<analysis>(A)</analysis><think>(B)</think>C', '<analysis>(A)</analysis><think>(B)</think>C', False),
    ('answer-tag', '$5', '<answer>C</answer>', 'C', False),
    ('D-lines', '$5', 'Some reasoning.\nSo:\nC\n\n', 'C\n\n', False),
    ('C-latex', 'A', '\\boxed{A}', '\\boxed{A}', True),
    ('C-latex', 'B', '\\textbf{B}', '\\textbf{B}', True),
    ('C-latex', 'A', '$\\text{A}$', '$\\text{A}$', True),
    ('C-latex', '20', '\\boxed{20}', '\\boxed{20}', True),
    ('C-latex', 'blue', '\\(blue\\)', '\\(blue\\)', True),
    ('C-latex', '1/2', '\\frac12', '\\frac12', True),
    ('D-lines', 'two', 'Let me count.\nSo:\ntwo\n\n', 'two\n\n', True),
    ('D-ws', 'B', 'B\n\n\n', '\n\n', False),
]


@pytest.mark.parametrize("cls,strip,response,gold,letter,correct", VSTAR)
def test_vstar_matches_lmms_eval(cls, strip, response, gold, letter, correct):
    _, pred, verdict = answer_rules.verdict("vstar", response, example(GLOVE, gold), "official", strip)
    assert (pred, verdict is True) == (letter, correct)


@pytest.mark.parametrize("cls,strip,response,gold,letter,correct", HRBENCH)
def test_hrbench_matches_vlmevalkit(cls, strip, response, gold, letter, correct):
    _, pred, verdict = answer_rules.verdict("hrbench", response, example(GLOVE, gold), "official", strip)
    assert (pred, verdict is True) == (letter, correct)


@pytest.mark.parametrize("cls,response,gold,letter,correct", MME)
@pytest.mark.parametrize("verbatim", [True, False])  # the file's "(A) 13" strings, or rebuilt from the texts
def test_mme_realworld_matches_its_script(cls, response, gold, letter, correct, verbatim):
    meta = {"options": [f"({l}) {o}" for l, o in zip("ABCDE", BUSES)]} if verbatim else {}
    _, pred, verdict = answer_rules.verdict("mmerealworld", response, example(BUSES, gold, **meta))
    assert (pred, verdict is True) == (letter, correct)


@pytest.mark.parametrize("cls,response,gold,hit", MMSTAR)
def test_mmstar_matches_mmstar_eval(cls, response, gold, hit):
    assert (answer_rules.verdict("mmstar", response, example(SUITCASE, gold))[2] is True) == hit


@pytest.mark.parametrize("cls,gold,response,extracted,correct", ZOOMBENCH)
def test_zoombench_matches_zwz_and_mathruler(cls, gold, response, extracted, correct):
    kind = "mcq" if gold == "C" else "open"
    ex = example(("0", "2", "1", "3") if kind == "mcq" else None, gold, type=kind, gold=gold)
    got, _, verdict = answer_rules.verdict("zoombench", response, ex)
    assert (got, verdict is True) == (extracted, correct)  # only a match is settled; the rest is the judge's


def test_every_class_is_covered():
    # The tables hold each class of issue 21 (a check on the tables, so a pruned table fails here).
    classes = " ".join(row[0] for table in (VSTAR, HRBENCH, MME, MMSTAR, ZOOMBENCH) for row in table)
    for name in ("A-think", "A-open", "A-unclosed", "B-analysis", "latex", "D-ws", "D-lines", "E-api", "F-unicode",
                 "lower", "fullwidth", "hedge", "text", "quirk", "answer-tag"):
        assert name in classes, name
    assert {row[1] for row in VSTAR} == {"upstream", "off"} and {row[1] for row in HRBENCH} == {"upstream", "on"}


def test_strip_options_and_their_protocol_lines():
    ex = example(SUITCASE, "B")
    raw = "<think>Maybe A? Or (B)?</think> B"  # issue 21's MMStar example
    assert answer_rules.verdict("mmstar", raw, ex)[2] is None                   # upstream: first character "<"
    assert answer_rules.verdict("mmstar", raw, ex, "official", "on")[2] is True  # stripped: not MMStar's protocol
    assert "NOT an official protocol" in answer_rules.protocol("mmstar", "official", "on", None)[0]
    assert "NOT" not in answer_rules.protocol("hrbench", "official", "on", None)[0]  # VLMEvalKit's SPLIT_THINK
    assert "NOT" not in answer_rules.protocol("vstar", "official", "off", None)[0]  # lmms-eval --reasoning_tags none
    assert "NOT an official protocol" in answer_rules.protocol("vstar", "official", "upstream", "J")[1]
    assert "NOT" not in answer_rules.protocol("zoombench", "official", "upstream", "J")[1]
    assert "NOT an official protocol" in answer_rules.protocol("zoombench", "strict", "upstream", None)[0]
    with pytest.raises(ValueError, match="strict rules always read the answer part"):
        answer_rules.verdict("mmstar", raw, ex, "strict", "off")
    with pytest.raises(ValueError, match="unknown strip"):
        answer_rules.verdict("mmstar", raw, ex, "official", "yes")
