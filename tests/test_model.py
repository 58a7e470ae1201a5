"""Tests of model.py: tiny real Qwen VLMs (random weights), CPU only.

Among them the checks of the REFERENCE scoring path, `repeated_prompt_logprobs` (each prompt
repeated in front of each answer): it must reproduce the log-probs `generate` sampled with, at the
first AND last answer token of every row (docs/method.md sec. 8), with left padding, two image sizes in a
batch and an early EOS, and agree with a naive full-logits path, gradients included. It is the
oracle of tests/test_prefix.py, where the training path (each prompt encoded once) is checked
against it. Run: python -m pytest -q tests/test_model.py
"""

import hashlib
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402

FAMILIES = ["qwen2_5_vl", "qwen3_vl", "qwen3_5"]


def noise_image(seed, height, width):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny():
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = M.build_tiny(family, "tiny", seed=0)
        return cache[family]
    return get


def response_mask_from(response_ids, eos_ids):
    # True up to and including the first EOS of each row, False after it.
    is_eos = torch.isin(response_ids, torch.tensor(eos_ids))
    return (torch.cumsum(is_eos.long(), 1) - is_eos.long()) == 0


def naive_logprobs(model, prompts, response_ids, response_mask):
    # Independent reference: full logits for every position, log_softmax over all of them, then
    # response token k read from the logits at position P - 1 + k.
    p = prompts["input_ids"].shape[1]
    n, t = response_ids.shape
    logits = model(input_ids=torch.cat([prompts["input_ids"], response_ids], 1),
                   attention_mask=torch.cat([prompts["attention_mask"], response_mask.long()], 1),
                   mm_token_type_ids=torch.cat([prompts["mm_token_type_ids"], torch.zeros_like(response_ids)], 1),
                   pixel_values=prompts["pixel_values"], image_grid_thw=prompts["image_grid_thw"]).logits
    logp = logits.float().log_softmax(-1)  # [N, P+T, V]
    positions = p - 1 + torch.arange(t)
    return logp[torch.arange(n)[:, None], positions[None, :], response_ids] * response_mask


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_and_small_models_build_offline_with_stated_sizes(family):
    start = time.perf_counter()
    model, processor = M.build_tiny(family, "tiny")
    assert time.perf_counter() - start < 5.0  # about 0.3 s alone; slack for a shared machine
    params = sum(p.numel() for p in model.parameters())
    assert 0.35e6 < params < 0.7e6, params
    assert type(model).__name__ == M.FAMILIES[family][0] and not model.training
    tok = processor.tokenizer
    assert len(tok) == 1024 == model.config.text_config.vocab_size and tok.padding_side == "left"
    assert model.generation_config.eos_token_id == [tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id]
    assert tok.pad_token == "<|endoftext|>"
    small, _ = M.build_tiny(family, "small")
    assert 7e6 < sum(p.numel() for p in small.parameters()) < 11e6


def test_build_is_seeded_deterministic_and_leaves_global_rng_alone():
    rng_state = torch.get_rng_state()
    a, pa = M.build_tiny("qwen2_5_vl", seed=0)
    b, pb = M.build_tiny("qwen2_5_vl", seed=0)
    c, _ = M.build_tiny("qwen2_5_vl", seed=1)
    assert torch.equal(torch.get_rng_state(), rng_state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["lm_head.weight"], sc["lm_head.weight"])
    assert pa.tokenizer.get_vocab() == pb.tokenizer.get_vocab()
    # The corpus teaches the tokenizer whole question/answer words.
    assert pa.tokenizer.tokenize("What colour is the square? Answer: red") == [
        "What", "Ġcolour", "Ġis", "Ġthe", "Ġsquare", "?", "ĠAnswer", ":", "Ġred"]


@pytest.mark.parametrize("family", FAMILIES)
def test_save_then_load_gives_identical_logits(family, tiny, tmp_path):
    model, processor = tiny(family)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = M.load(str(tmp_path))
    assert type(loaded) is type(model) and not loaded.training
    assert loaded_processor.tokenizer.padding_side == "left"
    assert loaded.generation_config.eos_token_id == model.generation_config.eos_token_id
    images, questions = [noise_image(0, 224, 224), noise_image(1, 64, 96)], ["What colour?", "How many stars?"]
    prompts = M.student_prompts(processor, images, questions)
    reloaded_prompts = M.student_prompts(loaded_processor, images, questions)
    assert prompts.keys() == reloaded_prompts.keys()
    assert all(torch.equal(prompts[k], reloaded_prompts[k]) for k in prompts)
    with torch.no_grad():
        assert torch.equal(model(**prompts).logits, loaded(**reloaded_prompts).logits)


def test_load_tiny_spec_and_refuse_bad_names(tmp_path):
    model, _ = M.load("tiny:qwen3_vl@3")
    reference, _ = M.build_tiny("qwen3_vl", "tiny", 3)
    assert torch.equal(model.lm_head.weight, reference.lm_head.weight)
    for bad in ["tiny:llama", "huge:qwen3_vl", "tiny-qwen3_vl:x"]:
        with pytest.raises(ValueError, match="tiny|SIZE"):
            M.load(bad)
    AutoConfig.for_model("llama", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'llama'"):
        M.load(str(tmp_path))


# ------------------------------------------------------------------------------------------------
def test_image_token_counts_and_prompt_wording(tiny):
    model, processor = tiny("qwen2_5_vl")
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    full, crop = noise_image(0, 224, 224), noise_image(1, 56, 56)
    student = M.student_prompts(processor, [full], ["What colour is the star?"])
    teacher = M.teacher_prompts(processor, [full], [crop], ["What colour is the star?"])
    # Hand count: 224x224 -> 16x16 patches of 14 -> 8x8 = 64 merged tokens; a 56x56 crop is zoomed
    # up to the 112^2-pixel minimum: 8x8 patches -> 16 tokens.
    assert (student["input_ids"] == image_pad).sum() == 64
    assert (teacher["input_ids"] == image_pad).sum() == 64 + 16
    assert teacher["image_grid_thw"].tolist() == [[1, 16, 16], [1, 8, 8]]
    # Qwen3 (patch 16): 224 -> 14x14 patches -> 49 tokens; 56 -> zoomed up to 128x128 -> 16 tokens.
    _, processor3 = tiny("qwen3_vl")
    teacher3 = M.teacher_prompts(processor3, [full], [crop], ["q?"])
    assert teacher3["image_grid_thw"].tolist() == [[1, 14, 14], [1, 8, 8]]
    text = processor.tokenizer.decode(teacher["input_ids"][0])
    expected = ("<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * 64 + "<|vision_end|><|vision_start|>"
                + "<|image_pad|>" * 16 + "<|vision_end|>" + M.TEACHER_CROP_NOTE
                + "\nWhat colour is the star?<|im_end|>\n<|im_start|>assistant\n")
    assert text == expected  # no system turn, the crop note then the question, generation prompt
    assert processor.tokenizer.decode(student["input_ids"][0]).endswith(
        "<|vision_end|>What colour is the star?<|im_end|>\n<|im_start|>assistant\n")


def test_positive_and_negative_teacher_prompts_differ_only_in_crop_pixels(tiny):
    _, processor = tiny("qwen3_vl")
    full = noise_image(0, 224, 224)
    positive = M.teacher_prompts(processor, [full], [noise_image(1, 56, 56)], ["What is written?"])
    negative = M.teacher_prompts(processor, [full], [noise_image(2, 56, 56)], ["What is written?"])
    for key in ["input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw"]:
        assert torch.equal(positive[key], negative[key])
    full_patches = int(positive["image_grid_thw"][0].prod())
    assert torch.equal(positive["pixel_values"][:full_patches], negative["pixel_values"][:full_patches])
    assert not torch.equal(positive["pixel_values"][full_patches:], negative["pixel_values"][full_patches:])


def test_encode_prompts_refuses_bad_input(tiny):
    _, processor = tiny("qwen2_5_vl")
    image = noise_image(0, 56, 56)
    with pytest.raises(ValueError, match="one image list per text"):
        M.encode_prompts(processor, [[image]], ["a?", "b?"])
    with pytest.raises(ValueError, match="PIL"):
        M.encode_prompts(processor, [[np.zeros((8, 8, 3))]], ["a?"])
    with pytest.raises(ValueError, match="special token.*image_pad"):
        M.encode_prompts(processor, [[image]], ["look <|image_pad|> here"])
    # <|im_end|> in a question would close the user turn early: refused, like every special token.
    for token in ("<|im_end|>", "<|im_start|>", "<|endoftext|>", "<|vision_start|>"):
        with pytest.raises(ValueError, match=re.escape(token)):
            M.encode_prompts(processor, [[image]], [f"What is this?{token}assistant"])
    with pytest.raises(ValueError, match="crops"):
        M.teacher_prompts(processor, [image, image], [image], ["a?", "b?"])


def test_vision_token_ids(tiny):
    _, processor = tiny("qwen2_5_vl")
    tok = processor.tokenizer
    assert M.vision_token_ids(processor) == tok.convert_tokens_to_ids(
        ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_reference_path_reproduces_generate_first_and_last_token(family, tiny):
    model, processor = tiny(family)
    # Two image sizes and question lengths -> different prompt lengths -> left padding.
    images = [noise_image(0, 224, 224), noise_image(1, 96, 160), noise_image(2, 224, 224)]
    questions = ["What colour is the small square in the top left corner?", "How many?", "Which letter?"]
    prompts = M.student_prompts(processor, images, questions)
    assert (prompts["attention_mask"] == 0).any(), "the batch must be left padded"
    response, mask, expected = generated_with_logprobs(model, processor, prompts)
    with torch.no_grad():
        logp = M.repeated_prompt_logprobs(model, prompts, torch.arange(3), response, mask)
    assert logp.dtype == torch.float32 and logp.shape == response.shape
    last = mask.sum(1) - 1
    rows = torch.arange(len(images))
    assert torch.allclose(logp[:, 0], expected[:, 0], atol=1e-4, rtol=0)  # first response token
    assert torch.allclose(logp[rows, last], expected[rows, last], atol=1e-4, rtol=0)  # last (EOS in row 0)
    assert torch.allclose(logp[mask], expected[mask], atol=1e-4, rtol=0)
    assert torch.all(logp[~mask] == 0)
    # Off by one would fail: the neighbouring positions' log-probs are different numbers.
    assert (logp[:, 1:][mask[:, 1:]] - expected[:, :-1][mask[:, 1:]]).abs().max() > 1e-2
    with torch.no_grad():
        naive = naive_logprobs(model, prompts, response, mask)
    assert torch.allclose(logp, naive, atol=1e-5, rtol=0)


def generated_with_logprobs(model, processor, prompts, max_new_tokens=10):
    """Sample from `generate` with its own logits; force an early EOS in row 0 at k = 3. Returns the
    response ids [N, T], mask, and the log-probs generate's own logits give them."""
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**prompts, do_sample=True, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                             suppress_tokens=M.vision_token_ids(processor), output_logits=True,
                             return_dict_in_generate=True)
    response = out.sequences[:, prompts["input_ids"].shape[1]:]  # [N, T]
    sampled = torch.stack(out.logits, 1).float().log_softmax(-1)  # [N, T, V], raw logits
    expected = sampled.gather(-1, response[..., None]).squeeze(-1)
    eos_ids = model.generation_config.eos_token_id
    # The logits at step 3 depend only on tokens < 3, which stay as sampled, so generate's step-3
    # distribution still gives the EOS its log-prob.
    k, eos = 3, eos_ids[0]
    response[0, k], response[0, k + 1:] = eos, processor.tokenizer.pad_token_id
    expected[0, k] = sampled[0, k, eos]
    mask = response_mask_from(response, eos_ids)
    assert mask[0].sum() == k + 1 and not mask[0, k + 1:].any()
    return response, mask, expected * mask


def test_reference_path_gradients_chunks_and_validation(tiny):
    model, processor = tiny("qwen3_vl")
    prompts = M.teacher_prompts(processor, [noise_image(0, 224, 224), noise_image(1, 64, 64)],
                                [noise_image(2, 56, 56), noise_image(3, 40, 72)], ["Which?", "How many dots?"])
    response = torch.randint(10, 1024, (2, 7))
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    rows = torch.arange(2)
    with torch.no_grad():
        reference = M.repeated_prompt_logprobs(model, prompts, rows, response, mask)
        naive = naive_logprobs(model, prompts, response, mask)
    assert torch.allclose(reference, naive, atol=1e-5, rtol=0)
    # With grad (the update): the checkpointed log-softmax chunks give the naive path's gradients.
    weights = torch.randn(2, 7, generator=torch.Generator().manual_seed(0))
    logp = M.repeated_prompt_logprobs(model, prompts, rows, response, mask)
    assert logp.requires_grad and torch.allclose(logp, reference, atol=1e-6, rtol=0)
    (logp * weights).sum().backward()
    chunked_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    (naive_logprobs(model, prompts, response, mask) * weights).sum().backward()
    naive_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    assert chunked_grads.keys() == naive_grads.keys() and "model.visual.patch_embed.proj.weight" in naive_grads
    for name, grad in naive_grads.items():
        assert torch.isfinite(chunked_grads[name]).all()
        assert torch.allclose(chunked_grads[name], grad, atol=1e-5, rtol=1e-4), name
    # Tokens after EOS may hold anything (e.g. -100): they must not matter.
    garbage = response.clone()
    garbage[1, 4:] = -100
    with torch.no_grad():
        assert torch.equal(M.repeated_prompt_logprobs(model, prompts, rows, garbage, mask), reference)
    with pytest.raises(ValueError, match="prefix"):
        M.repeated_prompt_logprobs(model, prompts, rows, response, torch.tensor([[True, False, True] + [False] * 4] * 2))
    with pytest.raises(ValueError, match="prompt row"):
        M.repeated_prompt_logprobs(model, prompts, rows, response[:1], mask[:1])


@pytest.mark.parametrize("chunk_size", [1, 3, 32])
def test_answer_logprobs_chunks_equal_one_log_softmax_with_and_without_grad(chunk_size):
    logits = torch.randn(3, 7, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.arange(7)[None] < torch.tensor([7, 1, 4])[:, None]
    want = logits.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1) * mask
    leaf = logits.clone().requires_grad_()
    got = M.answer_logprobs(leaf, ids, mask, chunk_size=chunk_size)
    torch.testing.assert_close(got, want.float(), rtol=0, atol=1e-6)
    got.sum().backward()
    reference = logits.clone().requires_grad_()
    (reference.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1) * mask).sum().backward()
    torch.testing.assert_close(leaf.grad, reference.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("view", ["student", "teacher"])
def test_select_prompts_repeat_and_micro_batches_match_single_prompts(view, tiny):
    model, processor = tiny("qwen2_5_vl")
    fulls = [noise_image(0, 224, 224), noise_image(1, 56, 84), noise_image(2, 140, 112)]
    crops = [noise_image(3, 56, 56), noise_image(4, 28, 60), noise_image(5, 70, 42)]
    questions = ["What colour is the cup on the left?", "Count?", "Which letter is at the top?"]

    def encode(rows):
        if view == "student":
            return M.student_prompts(processor, [fulls[i] for i in rows], [questions[i] for i in rows])
        return M.teacher_prompts(processor, [fulls[i] for i in rows], [crops[i] for i in rows],
                                 [questions[i] for i in rows])
    prompts = encode([0, 1, 2])
    group = 2
    rows = [0] * group + [1] * group + [2] * group  # siblings contiguous, as the trainer lays them out
    response = torch.randint(10, 1024, (len(rows), 6), generator=torch.Generator().manual_seed(0))
    mask = torch.arange(6)[None, :] < torch.tensor([6, 2, 5, 6, 1, 3])[:, None]
    with torch.no_grad():
        full = M.repeated_prompt_logprobs(model, prompts, rows, response, mask)
        alone = torch.cat([M.repeated_prompt_logprobs(model, encode([i]), [0] * group,
                                                      response[i * group:(i + 1) * group], mask[i * group:(i + 1) * group])
                           for i in range(3)])
        micro = torch.cat([M.repeated_prompt_logprobs(model, prompts, rows[s:s + 2], response[s:s + 2], mask[s:s + 2])
                           for s in range(0, 6, 2)])
    assert torch.allclose(full, alone, atol=1e-5, rtol=0)
    assert torch.allclose(full, micro, atol=1e-5, rtol=0)
    assert not torch.allclose(full[:2], full[2:4], atol=1e-2)  # rows really see different prompts
    # A prompt selected alone is exactly that prompt encoded alone: all-padding columns dropped,
    # and its own image blocks picked out of the flattened patches.
    for i in range(3):
        picked, single = M.select_prompts(prompts, torch.tensor([i])), encode([i])
        assert picked.keys() == single.keys()
        assert all(torch.equal(picked[k], single[k]) for k in single)
    with pytest.raises(ValueError, match="rows"):
        M.select_prompts(prompts, [3])
    with pytest.raises(ValueError, match="rows"):
        M.select_prompts(prompts, [])


def test_select_prompts_cuts_rows_into_pieces_with_their_images(tiny):
    # The teacher's prompts split where the crop begins (teacher.py): the two pieces of each row are
    # its real tokens, in order, and each takes its own image along, however the batch was padded.
    _, processor = tiny("qwen2_5_vl")
    fulls, crops = [noise_image(0, 224, 224), noise_image(1, 56, 84)], [noise_image(3, 56, 56), noise_image(4, 28, 60)]
    prompts = M.teacher_prompts(processor, fulls, crops, ["What colour is the cup on the left?", "Count?"])
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for i in range(2):
        real = prompts["input_ids"][i][prompts["attention_mask"][i].bool()]
        cut = int((real == image_pad).nonzero()[0]) + int(prompts["image_grid_thw"][2 * i].prod()) // 4 + 2
        head, tail = M.select_prompts(prompts, [i], stop=cut), M.select_prompts(prompts, [i], start=cut)
        assert torch.equal(torch.cat([head["input_ids"][0], tail["input_ids"][0]]), real)
        assert head["image_grid_thw"].tolist() == [prompts["image_grid_thw"][2 * i].tolist()]
        assert tail["image_grid_thw"].tolist() == [prompts["image_grid_thw"][2 * i + 1].tolist()]
        alone = M.teacher_prompts(processor, [fulls[i]], [crops[i]], ["x"])   # the same two images
        full_patches = int(alone["image_grid_thw"][0].prod())
        assert torch.equal(head["pixel_values"], alone["pixel_values"][:full_patches])
        assert torch.equal(tail["pixel_values"], alone["pixel_values"][full_patches:])
        # Per-row cuts in one call, and a negative stop (slice semantics).
        both = M.select_prompts(prompts, [i, i], start=[0, cut], stop=[cut, None])
        assert both["attention_mask"].sum(1).tolist() == [cut, len(real) - cut]
        assert torch.equal(M.select_prompts(prompts, [i], stop=-1)["input_ids"][0], real[:-1])
    with pytest.raises(ValueError, match="splits image"):
        M.select_prompts(prompts, [0], stop=10)
    with pytest.raises(ValueError, match="no token"):
        M.select_prompts(prompts, [0], start=5, stop=5)


# ------------------------------------------------------------------------------------------------
def fingerprint(model, processor):
    # One hash of the tokenizer's vocabulary and every weight: equal iff the builds are identical.
    digest = hashlib.sha256(json.dumps(sorted(processor.tokenizer.get_vocab().items())).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.numpy().tobytes())
    return digest.hexdigest()


# Runs in a fresh Python process (another hash seed, as another torchrun rank would have).
FRESH_PROCESS_SCRIPT = textwrap.dedent("""
    import hashlib, json, resource, sys, torch
    sys.path.insert(0, sys.argv[1])
    import model as M
    import prefix as X
    import numpy as np
    from PIL import Image
    torch.set_num_threads(2)
    def peak_mib():  # ru_maxrss: the process's resident-set high-water mark, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model, processor = M.build_tiny("qwen2_5_vl", "tiny", seed=0)
    report = {"fingerprint": fingerprint(model, processor)}
    model.resize_token_embeddings(151936, mean_resizing=False)  # the real Qwen2.5/3-VL row count
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    one = M.student_prompts(processor, [image], ["What colour is the star?"])
    prompts = M.select_prompts(one, [0] * 8)
    n, t, p = 8, 256, prompts["input_ids"].shape[1]
    response = torch.randint(10, 1000, (n, t), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(n, t, dtype=torch.bool)
    rows = torch.zeros(n, dtype=torch.long)
    with torch.no_grad():
        X.score(model, X.encode(model, one, hold_last=True), rows, response[:, :8], mask[:, :8])  # warm up
        before = peak_mib()
        chunked = X.score(model, X.encode(model, one, hold_last=True), rows, response, mask)
        after_chunked = peak_mib()
        logits = model(input_ids=torch.cat([prompts["input_ids"], response], 1),
                       attention_mask=torch.cat([prompts["attention_mask"], mask.long()], 1),
                       mm_token_type_ids=torch.cat([prompts["mm_token_type_ids"], torch.zeros_like(response)], 1),
                       pixel_values=prompts["pixel_values"], image_grid_thw=prompts["image_grid_thw"]).logits
        naive = logits.float().log_softmax(-1)[:, p - 1:-1].gather(-1, response[..., None]).squeeze(-1)
        del logits
        after_naive = peak_mib()
    report.update(prompt_len=p, chunked_mib=after_chunked - before, naive_mib=after_naive - before,
                  max_diff=float((chunked - naive).abs().max()))
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def fresh_process():
    script = inspect.getsource(fingerprint) + FRESH_PROCESS_SCRIPT
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", script, repo], capture_output=True, text=True, timeout=180,
                            env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_tiny_build_is_identical_in_another_process(fresh_process):
    assert fresh_process["fingerprint"] == fingerprint(*M.build_tiny("qwen2_5_vl", "tiny", seed=0))
    assert fresh_process["fingerprint"] != fingerprint(*M.build_tiny("qwen2_5_vl", "tiny", seed=1))


def test_scoring_peak_memory_holds_no_vocabulary_sized_logits(fresh_process):
    # Peak memory on CPU: torch keeps no CPU allocator statistics, so the work runs in a fresh
    # process that reads its resident-set high-water mark (ru_maxrss) before and after. Scoring runs
    # first; the naive pass needs more, so its extra peak is measured from the same baseline.
    # Tensors this large are mmap'ed by malloc and go back to the OS when freed.
    n, t, v = 8, 256, 151936
    kept_logits_mib = n * t * v * 4 / 2**20  # one [N, T, V] fp32 logits tensor: 1187 MiB
    naive_floor_mib = 2 * n * (fresh_process["prompt_len"] + t) * v * 4 / 2**20  # [N, P+T, V] x 2
    chunked_mib, naive_mib = fresh_process["chunked_mib"], fresh_process["naive_mib"]
    assert fresh_process["max_diff"] < 1e-4
    assert naive_mib > 0.8 * naive_floor_mib, (naive_mib, naive_floor_mib)  # the measurement sees it
    assert chunked_mib < 0.25 * kept_logits_mib, (chunked_mib, kept_logits_mib)  # no [N, T, V] logits (head.py)
    assert chunked_mib < 0.5 * naive_mib, (chunked_mib, naive_mib)


# ------------------------------------------------------------------------------------------------
def test_check_compatible_compares_tokenizers_and_templates(tiny):
    _, processor = tiny("qwen2_5_vl")
    _, other_family = tiny("qwen3_vl")
    M.check_compatible(processor, other_family)  # same tokenizer and template: fine
    _, bigger_vocab = M.build_tiny("qwen2_5_vl")
    bigger_vocab.tokenizer.add_tokens(["<|box_start|>"], special_tokens=True)
    with pytest.raises(ValueError, match="tokenizers differ.*<\\|box_start\\|>"):
        M.check_compatible(processor, bigger_vocab)
    _, system_template = M.build_tiny("qwen2_5_vl")
    system_template.chat_template = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + M.CHAT_TEMPLATE
    with pytest.raises(ValueError, match="chat templates render"):
        M.check_compatible(processor, system_template)


def test_pixel_bounds_decide_the_number_of_visual_tokens(tmp_path):
    image = noise_image(0, 224, 224)
    count = lambda proc: int(M.student_prompts(proc, [image], ["q?"])["image_grid_thw"].prod()) // 4  # merged
    _, default = M.load("tiny:qwen2_5_vl")
    _, small = M.load("tiny:qwen2_5_vl", max_pixels=112 * 112)
    _, big = M.load("tiny:qwen2_5_vl", min_pixels=448 * 448, max_pixels=448 * 448)
    assert (count(default), count(small), count(big)) == (64, 16, 256)   # 224^2, 112^2, 448^2 px / 28^2
    small.save_pretrained(tmp_path)                                      # the bounds travel with the processor
    assert count(M.QwenImageProcessor.from_pretrained(tmp_path)) == 16
    with pytest.raises(ValueError, match="min_pixels <= max_pixels"):
        M.load("tiny:qwen2_5_vl", min_pixels=200 * 200, max_pixels=100 * 100)



@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_encoder_equals_the_processor_and_processes_each_image_once(family, tiny):
    # encode_prompts does what the Qwen processor's own call does (same ids, masks, patches, grids),
    # and an image met twice (the full image of both teacher views, then the student's) is processed once.
    _, processor = tiny(family)
    fulls, crops, negs = [noise_image(0, 224, 224), noise_image(1, 96, 160)], [noise_image(2, 56, 56)] * 2, \
        [noise_image(3, 40, 60), noise_image(4, 56, 56)]
    questions = ["What?", "How many cups are there?"]
    rendered = [M._render(processor, 2, f"{M.TEACHER_CROP_NOTE}\n{q}") for q in questions]
    reference = processor(images=[im for f, c in zip(fulls, negs) for im in (f, c)], text=rendered, padding=True,
                          padding_side="left", return_token_type_ids=False, return_tensors="pt")
    calls = []
    real = processor.image_processor.__class__.__call__
    processor.image_processor.__class__.__call__ = lambda self, images, **kw: (calls.append(len(images)),
                                                                             real(self, images, **kw))[1]
    try:
        pixels = {}
        ours = M.teacher_prompts(processor, fulls, negs, questions, pixels=pixels)
        both = M.teacher_prompts(processor, fulls * 2, crops + negs, questions * 2, pixels=pixels)
        M.student_prompts(processor, fulls, questions, pixels=pixels)
    finally:
        processor.image_processor.__class__.__call__ = real
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in reference)
    assert calls == [4, 1]        # fulls + negs, then the one new crop; the student's fulls: none
    # ... and the cached patches are the ones a fresh encoding makes.
    fresh = M.teacher_prompts(processor, fulls * 2, crops + negs, questions * 2)
    assert all(torch.equal(both[k], fresh[k]) for k in fresh)
