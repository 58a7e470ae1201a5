"""Tests of prefix.py: each prompt encoded ONCE per phase must give what encoding it once per answer
gives (the oracle: model.repeated_prompt_logprobs and plain `generate` on repeated prompts), for
the three families, Qwen3.5's linear-attention layers included: log-probs, gradients, sampled
tokens, the teacher's three-level tree, and the counts of what each phase encodes.

    python -m pytest -q tests/test_prefix.py
"""

import numpy as np
import pytest
import torch
from PIL import Image

import data
import model as M
from bench import Counter
import prefix as X
import train
from rollout import Rollout, sample
from teacher import Teacher
from update import micro_batches

FAMILIES = ["qwen2_5_vl", "qwen3_vl", "qwen3_5"]
G, T = 3, 7


def noise(seed, height, width):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def batch():
    # Three prompts of different lengths (image sizes, questions): left padding. Answers of uneven
    # length: full, early EOS, and one of a single token (its only logit is the prompt's last).
    fulls = [noise(0, 224, 224), noise(1, 96, 160), noise(2, 112, 112)]
    questions = ["What colour is the small square in the top left corner?", "How many?", "Which?"]
    ids = torch.randint(10, 1000, (3 * G, T), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([7, 1, 3, 7, 7, 2, 5, 4, 7])
    mask = torch.arange(T)[None] < lengths[:, None]
    return fulls, questions, ids, mask


def shared(model, prompts, rows, ids, mask):
    return X.score(model, X.encode(model, prompts, hold_last=True), rows, ids, mask)


def grads(model, fn, weights):
    model.zero_grad(set_to_none=True)
    (fn() * weights).sum().backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def assert_same_gradients(got, want, rel=1e-4):
    # Relative to the norm of the whole gradient: single parameters with tiny gradients (Qwen3.5's
    # decay A_log / dt_bias, whose chunked scan splits at another boundary) differ by more, relatively.
    assert got.keys() == want.keys() and "model.visual.patch_embed.proj.weight" in want
    total = torch.sqrt(sum((g.double() ** 2).sum() for g in want.values()))
    error = torch.sqrt(sum(((got[k].double() - want[k].double()) ** 2).sum() for k in want))
    assert error <= rel * total, (error / total).item()


@pytest.mark.parametrize("family", FAMILIES)
def test_log_probs_and_gradients_equal_the_repeated_prompt_path(family, batch):
    model, processor = M.build_tiny(family, seed=1)
    fulls, questions, ids, mask = batch
    prompts = M.student_prompts(processor, fulls, questions)
    assert (prompts["attention_mask"] == 0).any()
    rows = torch.arange(3).repeat_interleave(G)
    with torch.no_grad():
        want = M.repeated_prompt_logprobs(model, prompts, rows, ids, mask)
        got = shared(model, prompts, rows, ids, mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (got[~mask] == 0).all() and (got[mask] < 0).all()
    last = mask.sum(1) - 1
    torch.testing.assert_close(got[:, 0], want[:, 0], rtol=0, atol=1e-5)                # first answer token
    torch.testing.assert_close(got[torch.arange(9), last], want[torch.arange(9), last], rtol=0, atol=1e-5)
    assert (got[:G] - got[G:2 * G]).abs().max() > 1e-3        # the rows really continue different prompts
    # Micro-batches: a group alone, and part of a group's answers, continue the same prompt.
    with torch.no_grad():
        part = shared(model, M.select_prompts(prompts, [1]), torch.zeros(2, dtype=torch.long), ids[4:6], mask[4:6])
    torch.testing.assert_close(part, want[4:6], rtol=0, atol=1e-5)
    # Gradients of a weighted sum, through the shared prompt (the update).
    weights = torch.randn(9, T, generator=torch.Generator().manual_seed(1))
    model.train()
    want_grads = grads(model, lambda: M.repeated_prompt_logprobs(model, prompts, rows, ids, mask), weights)
    assert_same_gradients(grads(model, lambda: shared(model, prompts, rows, ids, mask), weights), want_grads)
    # ... and with gradient checkpointing: each layer's replay reads the same (immutable) cache.
    X.enable_gradient_checkpointing(model)
    assert_same_gradients(grads(model, lambda: shared(model, prompts, rows, ids, mask), weights), want_grads)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_from_one_prefill_gives_the_repeated_path_tokens(family, batch):
    model, processor = M.build_tiny(family, seed=2)
    fulls, questions, *_ = batch
    prompts = M.student_prompts(processor, fulls, questions)
    knobs = dict(max_new_tokens=9, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                 suppress_tokens=M.vision_token_ids(processor), pad_token_id=model.generation_config.pad_token_id)

    def oracle(rows, seed):
        torch.manual_seed(seed)
        repeated = M.select_prompts(prompts, rows)
        with torch.no_grad():
            return model.generate(**repeated, **knobs)[:, repeated["input_ids"].shape[1]:]
    ro = sample(model, processor, prompts, group_size=G, max_new_tokens=9, seed=7)
    want = oracle(torch.arange(3).repeat_interleave(G), 7)
    assert torch.equal(ro.response_ids, want)
    with torch.no_grad():
        torch.testing.assert_close(ro.old_logp, M.repeated_prompt_logprobs(
            model, prompts, torch.arange(3).repeat_interleave(G), ro.response_ids, ro.response_mask), rtol=0, atol=1e-5)
    # One seeded generate call per prompt: each equals the oracle on that prompt alone.
    per_prompt = sample(model, processor, prompts, group_size=G, max_new_tokens=9, seed=[5, 6, 8])
    for b, seed in enumerate([5, 6, 8]):
        alone = oracle([b] * G, seed)
        assert torch.equal(per_prompt.response_ids[b * G:(b + 1) * G, :alone.shape[1]], alone)


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_tree_equals_each_view_encoded_per_answer(family, batch):
    model, processor = M.build_tiny(family, seed=3)
    fulls, questions, ids, mask = batch
    # The second example's z- is smaller than its z+: its view prompts differ in length, so the
    # views of that example continue the shared part in separate forwards.
    pos = [noise(3, 56, 56), noise(4, 40, 64), noise(5, 60, 60)]
    neg = [noise(6, 56, 56), noise(7, 30, 30), noise(8, 60, 60)]
    ro = Rollout(None, ids, mask, None, None, G)
    rows = torch.arange(3).repeat_interleave(G)
    with torch.no_grad():
        want = {"pos": M.repeated_prompt_logprobs(model, M.teacher_prompts(processor, fulls, pos, questions), rows, ids, mask),
                "neg": M.repeated_prompt_logprobs(model, M.teacher_prompts(processor, fulls, neg, questions), rows, ids, mask),
                "plain": M.repeated_prompt_logprobs(model, M.student_prompts(processor, fulls, questions), rows, ids, mask)}
    for budget in (None, 100):          # 100 positions: every forward scores one answer at a time
        got = Teacher(model, processor, max_tokens=budget).replay(ro, fulls, questions, pos_crops=pos, neg_crops=neg,
                                                                  views=("plain", "pos", "neg"))
        for view in want:
            torch.testing.assert_close(got[view], want[view], rtol=0, atol=1e-5, msg=f"{view}, budget {budget}")
    assert (want["pos"] - want["neg"])[mask].abs().max() > 1e-3              # the crops matter


def test_views_that_differ_before_the_crop_are_refused(monkeypatch):
    # Sharing the [template, full image] part is exact only if every view holds the same one: a
    # teacher prompt builder that gave z- another full image must be refused, not silently shared.
    import teacher as teacher_module
    model, processor = M.build_tiny("qwen2_5_vl")
    real = teacher_module.teacher_prompts
    monkeypatch.setattr(teacher_module, "teacher_prompts",
                        lambda proc, fulls, crops, qs, **kw: real(proc, fulls[:1] + [noise(9, 112, 112)], crops, qs))
    ro = Rollout(None, torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool), None, None, 1)
    with pytest.raises(ValueError, match="differ before the crop"):
        Teacher(model, processor).replay(ro, [noise(0, 112, 112)], ["q?"], pos_crops=[noise(1, 56, 56)],
                                         neg_crops=[noise(2, 56, 56)])


def test_packs_respect_the_budget():
    assert X.packs([3, 3, 3, 5, 1], 6) == [[0, 1], [2], [3, 4]]
    assert X.packs([9, 1, 1], 6) == [[0], [1, 2]]            # an item above the budget alone
    assert X.packs([9, 1, 1], None) == [[0, 1, 2]]
    # The update's micro-batches: whole groups while they fit, a larger group split by answers.
    plan = micro_batches(range(3), [10, 30, 10], 2, 5, 60)
    assert plan == [([0], [0, 1], 1.0), ([1], [2], 1.0), ([1], [3], 1.0), ([2], [4, 5], 1.0)]


def test_each_image_is_encoded_once_per_phase(tmp_path, monkeypatch):
    # One training step on tiny models, hooks on both vision towers and language models. Every
    # phase must encode each distinct image exactly once: the student's full images in the rollout
    # (whose prefill also scores old_logp) and once more in the update; the teacher's full images
    # once for both views, and each crop once.
    cfg = train.parse_args(["--student", "tiny:qwen2_5_vl", "--teacher", "tiny:qwen2_5_vl@1", "--group-size", "4",
                            "--prompts-per-step", "4", "--max-new-tokens", "5", "--out-dir", str(tmp_path)])
    student, processor, teacher, optimizer, master = train.build(cfg, 0, 1, torch.device("cpu"))
    counts = {}
    s_count, t_count = Counter(student.model), Counter(teacher.model)
    real_replay, real_sample = teacher.replay, train.sample

    def spy_sample(*args, **kw):
        out = real_sample(*args, **kw)
        counts["rollout"] = s_count.take()
        return out

    def spy_replay(*args, **kw):
        out = real_replay(*args, **kw)
        counts["teacher"] = t_count.take()
        return out
    monkeypatch.setattr(train, "sample", spy_sample)
    monkeypatch.setattr(teacher, "replay", spy_replay)
    inputs = train.prepare(cfg, data.synthetic(8, 0), 0, 0, 1, processor, teacher)
    train.train_step(cfg, inputs, student, processor, teacher, optimizer, master, 0, 1, torch.device("cpu"))
    counts["update"] = s_count.take()
    examples = inputs.examples
    views = [data.evidence_views(ex, cfg.neg_view, seed=cfg.seed) for ex in examples]
    patches = lambda images: int(processor.image_processor(images=images, return_tensors="pt")["image_grid_thw"].prod(-1).sum())
    full, pos, neg = patches([v[0] for v in views]), patches([v[1] for v in views]), patches([v[2] for v in views])
    assert counts["rollout"][0] == full                  # once, not G = 4 times
    assert counts["update"][0] == full                   # once over the 2 mini-batches
    assert counts["teacher"][0] == full + pos + neg      # the full image once for both views
    # Language-model token positions: the prompts once (not G times) plus the answers.
    prompts = M.student_prompts(processor, [v[0] for v in views], [ex.question for ex in examples])
    P, B = prompts["input_ids"].shape[1], len(examples)
    rollout_tokens = counts["rollout"][1]
    assert rollout_tokens < B * G * P / 2, (rollout_tokens, B * G * P)   # the repeated prefill alone is B*G*P
