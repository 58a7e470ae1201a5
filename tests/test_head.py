"""Tests of head.py: the sampled token's log-prob from the final hidden states, a vocabulary block at
a time, must equal a full log-softmax over [M, V] logits (the path it replaced), values and
gradients, fp32 and bf16; and through prefix.score it must equal the full-logits reference for a
model whose head is tied to its input embedding (Qwen3.5's and Qwen3-VL's small sizes).

    python -m pytest -q tests/test_head.py
"""

import numpy as np
import pytest
import torch
from PIL import Image

import head
import model as M
import prefix as X
from bench import peak_extra_mib

FAMILIES = ["qwen2_5_vl", "qwen3_vl", "qwen3_5"]


def full_logsoftmax(hidden, weight, ids):
    # The oracle: every logit, [M, V], then the log-softmax in fp32 (as model.answer_logprobs does).
    return (hidden @ weight.T).float().log_softmax(-1).gather(1, ids[:, None]).squeeze(1)


def problem(dtype, m=37, h=24, v=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(m, h, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) / 2).to(dtype).requires_grad_()
    # Ids at both ends of the vocabulary and on both sides of a block edge (blocks of 300 below).
    ids = torch.cat([torch.tensor([0, v - 1, 299, 300, 599, 600]), torch.randint(0, v, (m - 6,), generator=g)])
    return hidden, weight, ids, torch.randn(m, generator=g)


def gradients(fn, hidden, weight, upstream):
    return torch.autograd.grad((fn() * upstream).sum(), [hidden, weight])


def test_blocks_equal_one_full_log_softmax_values_and_gradients(monkeypatch):
    # 37 positions x blocks of 300 columns: 4 blocks, the last one ragged (100 columns).
    monkeypatch.setattr(head, "BLOCK_VALUES", 37 * 300)
    monkeypatch.setattr(head, "MIN_COLUMNS", 1)
    assert head._columns(37, 1000) == 300
    hidden, weight, ids, upstream = problem(torch.float32)
    got, want = head.token_logprobs(hidden, weight, ids), full_logsoftmax(hidden, weight, ids)
    assert got.dtype == torch.float32 and (got < 0).all()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    for a, b in zip(gradients(lambda: head.token_logprobs(hidden, weight, ids), hidden, weight, upstream),
                    gradients(lambda: full_logsoftmax(hidden, weight, ids), hidden, weight, upstream)):
        assert (a - b).norm() <= 1e-5 * b.norm(), ((a - b).norm() / b.norm()).item()
    # One block (the default at this size) gives the same.
    monkeypatch.undo()
    assert head._columns(37, 1000) == 1000
    torch.testing.assert_close(head.token_logprobs(hidden, weight, ids), want, rtol=0, atol=1e-5)


def test_a_head_bias_is_part_of_the_logits(monkeypatch):
    # No Qwen VLM has one, but a test model may (tests/test_rollout_teacher.py steers sampling with it).
    monkeypatch.setattr(head, "BLOCK_VALUES", 37 * 300)
    monkeypatch.setattr(head, "MIN_COLUMNS", 1)
    hidden, weight, ids, upstream = problem(torch.float32)
    bias = torch.randn(1000, generator=torch.Generator().manual_seed(3)).requires_grad_()
    want = lambda: torch.nn.functional.linear(hidden, weight, bias).log_softmax(-1).gather(1, ids[:, None]).squeeze(1)
    got = lambda: head.token_logprobs(hidden, weight, ids, bias)
    torch.testing.assert_close(got(), want(), rtol=0, atol=1e-5)
    for a, b in zip(torch.autograd.grad((got() * upstream).sum(), [hidden, weight, bias]),
                    torch.autograd.grad((want() * upstream).sum(), [hidden, weight, bias])):
        assert (a - b).norm() <= 1e-5 * b.norm(), ((a - b).norm() / b.norm()).item()


def test_bf16_is_as_close_to_the_truth_as_full_bf16_logits(monkeypatch):
    # In bf16 the head's product is rounded to bf16 on both paths (softmax in fp32): the block path
    # must be no further from the fp64 truth than the full-logits path it replaces.
    monkeypatch.setattr(head, "BLOCK_VALUES", 37 * 300)
    monkeypatch.setattr(head, "MIN_COLUMNS", 1)
    hidden, weight, ids, upstream = problem(torch.bfloat16)
    exact = [t.detach().double().requires_grad_() for t in (hidden, weight)]
    truth = full_logsoftmax(*exact, ids).double()
    got, full = head.token_logprobs(hidden, weight, ids), full_logsoftmax(hidden, weight, ids)
    assert (got - truth).abs().max() <= 1.5 * (full - truth).abs().max() + 1e-3
    true_grads = gradients(lambda: full_logsoftmax(*exact, ids).double(), *exact, upstream.double())
    blocks = gradients(lambda: head.token_logprobs(hidden, weight, ids), hidden, weight, upstream)
    fulls = gradients(lambda: full_logsoftmax(hidden, weight, ids), hidden, weight, upstream)
    for a, b, t in zip(blocks, fulls, true_grads):
        assert a.dtype == torch.bfloat16
        error, reference = (a.double() - t).norm(), (b.double() - t).norm()
        assert error <= 1.5 * reference + 1e-3 * t.norm(), (error.item(), reference.item())


def test_ids_outside_the_head_are_refused():
    hidden, weight, ids, _ = problem(torch.float32)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 1000\)"):
        head.token_logprobs(hidden, weight, torch.full_like(ids, 1000))
    with pytest.raises(ValueError, match="need hidden"):
        head.token_logprobs(hidden, weight, ids[:-1])


def tied(family, seed=1):
    # A tiny model whose output head IS its input embedding (tie_word_embeddings, as Qwen3.5-4B and
    # Qwen3-VL-2B): one parameter, gradients from both uses summed.
    model, processor = M.build_tiny(family, seed=seed)
    model.lm_head.weight = model.model.language_model.embed_tokens.weight
    model.config.get_text_config().tie_word_embeddings = True
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return model, processor


@pytest.mark.parametrize("family", FAMILIES)
def test_score_with_a_tied_head_equals_the_full_logits_reference(family):
    model, processor = tied(family)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8))
    prompts = M.student_prompts(processor, [image], ["What colour is the star?"])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (3, 6), generator=g)
    mask = torch.arange(6)[None] < torch.tensor([[6], [2], [4]])
    rows = [0, 0, 0]
    score = lambda: X.score(model, X.encode(model, prompts, hold_last=True), rows, ids, mask)
    reference = lambda: M.repeated_prompt_logprobs(model, prompts, rows, ids, mask)
    with torch.no_grad():
        torch.testing.assert_close(score(), reference(), rtol=0, atol=1e-5)
    weights = torch.randn(3, 6, generator=g)
    shared = model.get_input_embeddings().weight
    got = torch.autograd.grad((score() * weights).sum(), list(model.parameters()), allow_unused=True)
    want = torch.autograd.grad((reference() * weights).sum(), list(model.parameters()), allow_unused=True)
    pairs = [(a, b) for a, b in zip(got, want) if b is not None]
    assert all(a is not None for a, b in zip(got, want) if b is not None)
    total = torch.sqrt(sum((b.double() ** 2).sum() for _, b in pairs))
    error = torch.sqrt(sum(((a.double() - b.double()) ** 2).sum() for a, b in pairs))
    assert error <= 1e-4 * total, (error / total).item()
    # The tied weight's gradient holds both uses: rows of answer tokens (as inputs) AND every row
    # (through the softmax over the vocabulary as a head).
    index = [i for i, p in enumerate(model.parameters()) if p is shared][0]
    assert (got[index].abs().sum(1) > 0).float().mean() > 0.99


def test_scoring_and_update_hold_no_vocabulary_sized_logits():
    # 16 answers x 64 tokens at Qwen2.5-VL's real vocabulary (151,936): one [N, T, V] fp32 logits
    # tensor is 594 MiB, the full-logits path held it (and in backward its gradient too). Now the
    # extra memory of scoring and of forward + backward stays far below it, and max_tokens parts
    # give the same numbers.
    model, processor = M.build_tiny("qwen2_5_vl")
    model.resize_token_embeddings(151936, mean_resizing=False)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8))
    prompts = M.student_prompts(processor, [image], ["Which symbol?"])
    rows = torch.zeros(16, dtype=torch.long)
    ids = torch.randint(10, 1000, (16, 64), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(16, 64, dtype=torch.bool)
    logits_mib, device = 16 * 64 * 151936 * 4 / 2**20, torch.device("cpu")
    with torch.no_grad():
        prefix = X.encode(model, prompts, hold_last=True)
        X.score(model, prefix, rows[:2], ids[:2], mask[:2])                                   # warm up
        whole, whole_mib = peak_extra_mib(lambda: X.score(model, prefix, rows, ids, mask), device)
        parts = X.score(model, prefix, rows, ids, mask, max_tokens=2 * (prefix.mask.shape[1] + 65))
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-5)
    assert whole_mib < 0.25 * logits_mib, whole_mib

    def update():
        model.zero_grad(set_to_none=True)
        X.score(model, X.encode(model, prompts, hold_last=True), rows, ids, mask).sum().backward()
    update()                                                                                   # warm up
    _, update_mib = peak_extra_mib(update, device)
    # The gradient of the [V, H] head (37 MiB) and the rest of the model are allocated inside.
    assert update_mib < 0.25 * logits_mib, update_mib
    model.zero_grad(set_to_none=True)
