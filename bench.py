"""
What one V-Zero step costs per phase: each prompt encoded once (the training path, prefix.py)
against once per answer (the reference path), on tiny real models at the paper's proportions.

    python bench.py                              # Qwen2.5-VL tiny, ~1,000-token prompts, 32-token answers, G = 8
    python bench.py --family qwen3_5 --prompts 2 --repeats 3

For each phase of a step (rollout, old log-probs, teacher, update) and for the whole step it prints
seconds (median of --repeats, after a warm-up), vision rows encoded (patch rows into the vision
tower), language-model token positions processed (padding included) and the peak extra memory of
the phase (CPU: the process's resident high-water mark, reset before the phase; CUDA: the allocator's
peak); shared vs repeated and their ratio. It also checks that both paths give the same answers.
Counts do not depend on the machine; seconds do: measure ratios on a quiet machine, one run at a time.
The same counters serve tests/test_prefix.py.
"""

import argparse
import ctypes
import gc
import math
import re
import statistics
import time

import numpy as np
import torch
from PIL import Image

import model as vlm
import prefix
from rollout import sample
from teacher import Teacher


class Counter:
    """Forward pre-hooks on a Qwen VLM's vision tower and language model: patch rows encoded and
    token positions processed (rows x columns, padding included) since the last `take()`."""

    def __init__(self, model):
        self.vision = self.tokens = 0
        model.model.visual.register_forward_pre_hook(self._see_vision, with_kwargs=True)
        model.model.language_model.register_forward_pre_hook(self._see_tokens, with_kwargs=True)

    def _see_vision(self, module, args, kwargs):
        self.vision += (args[0] if args else kwargs["hidden_states"]).shape[0]     # pixel rows [patches, D]

    def _see_tokens(self, module, args, kwargs):
        embeds = kwargs["inputs_embeds"]                                            # [n, L, hidden]
        self.tokens += embeds.shape[0] * embeds.shape[1]

    def take(self):
        out, self.vision, self.tokens = (self.vision, self.tokens), 0, 0
        return out


def _kib(field):
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))


def peak_extra_mib(fn, device):
    """(fn's result, the most memory it held above what was held before it, MiB). On CPU this reads
    the resident set (Linux), so malloc is first told to hand every block of 64 KiB or more back to
    the system when freed: otherwise memory an earlier phase freed is reused unseen."""
    gc.collect()            # garbage of earlier phases, freed while fn runs, would hide as much of fn's memory
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, (torch.cuda.max_memory_allocated(device) - before) / 2**20
    ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)      # glibc mallopt(M_MMAP_THRESHOLD, 64 KiB)
    with open("/proc/self/clear_refs", "w") as f:       # Linux: reset the resident high-water mark
        f.write("5")
    before = _kib("VmRSS")
    out = fn()
    return out, (_kib("VmHWM") - before) / 1024


def measure(fn, repeats, device, counters):
    """Median seconds over `repeats` runs after one warm-up run; counts and peak memory of one run."""
    fn()
    for c in counters:
        c.take()
    out, peak = peak_extra_mib(fn, device)
    counts = [c.take() for c in counters]
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    for c in counters:
        c.take()
    vision, tokens = (sum(c[i] for c in counts) for i in (0, 1))
    return out, dict(seconds=statistics.median(seconds), vision=vision, tokens=tokens, peak=peak)


def noise(seed, side):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="qwen2_5_vl", choices=sorted(vlm.FAMILIES))
    ap.add_argument("--prompts", type=int, default=2, help="B prompts (groups) in the step")
    ap.add_argument("--group-size", type=int, default=8, help="G answers per prompt")
    ap.add_argument("--prompt-tokens", type=int, default=1000, help="about this many visual tokens per full image")
    ap.add_argument("--answer-tokens", type=int, default=32, help="T: answer length sampled")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    B, G, T = args.prompts, args.group_size, args.answer_tokens
    student, processor = vlm.load(f"tiny:{args.family}@0", device=device)
    teacher_model, teacher_processor = vlm.load(f"tiny:{args.family}@1", device=device)
    # Raise the tiny processors' pixel bound so a full image is ~prompt_tokens merged tokens.
    unit = processor.image_processor.patch_size * processor.image_processor.merge_size   # pixels per token side
    side = unit * round(math.sqrt(args.prompt_tokens))
    for proc in (processor, teacher_processor):
        vlm.set_pixel_bounds(proc, min_pixels=112 * 112, max_pixels=side * side)
    fulls = [noise(b, side) for b in range(B)]
    pos, neg = [noise(100 + b, 224) for b in range(B)], [noise(200 + b, 224) for b in range(B)]
    questions = [f"Which symbol is inside the small square with the red frame? Look closely ({b})." for b in range(B)]
    prompts = vlm.student_prompts(processor, fulls, questions).to(device)
    rows = torch.arange(B, device=device).repeat_interleave(G)                   # answer -> its prompt
    s_count, t_count = Counter(student), Counter(teacher_model)
    teacher = Teacher(teacher_model, teacher_processor)
    results, checks = {}, {}

    # Rollout: generate continuing G siblings from one prefill vs generate on G copies of the prompt.
    knobs = dict(max_new_tokens=T, do_sample=True, top_k=0, top_p=1.0, temperature=1.0, repetition_penalty=1.0,
                 suppress_tokens=vlm.vision_token_ids(processor), pad_token_id=student.generation_config.pad_token_id)
    repeated_prompts = vlm.select_prompts(prompts, rows.cpu()).to(device)

    def rollout_repeated():
        torch.manual_seed(0)
        with torch.no_grad():
            return student.generate(**repeated_prompts, **knobs)[:, repeated_prompts["input_ids"].shape[1]:]
    ro, results[("rollout", "shared")] = measure(lambda: sample(student, processor, prompts, group_size=G, max_new_tokens=T,
                                                               seed=0, old_logp=False), args.repeats, device, [s_count])
    ids_rep, results[("rollout", "repeated")] = measure(rollout_repeated, args.repeats, device, [s_count])
    checks["rollout: identical sampled tokens"] = bool(torch.equal(ro.response_ids, ids_rep))
    ids, mask = ro.response_ids, ro.response_mask

    # Old log-probs (no grad): score from one prefix vs the repeated-prompt forward.
    def old_shared():
        with torch.no_grad():
            return prefix.score(student, prefix.encode(student, prompts, hold_last=True), rows, ids, mask)

    def old_repeated():
        with torch.no_grad():
            return vlm.repeated_prompt_logprobs(student, prompts, rows, ids, mask)
    a, results[("old log-probs", "shared")] = measure(old_shared, args.repeats, device, [s_count])
    b, results[("old log-probs", "repeated")] = measure(old_repeated, args.repeats, device, [s_count])
    checks["old log-probs: max |shared - repeated|"] = (a - b).abs().max().item()

    # Teacher: the tree ([template, full image] once, then each crop view, then the answers) vs
    # each view's whole prompt repeated per answer. Both encode their prompts (images) inside.
    def teacher_repeated():
        with torch.no_grad():
            return {v: vlm.repeated_prompt_logprobs(teacher_model, vlm.teacher_prompts(teacher_processor, fulls, crops,
                                                                                        questions).to(device), rows, ids, mask)
                    for v, crops in (("pos", pos), ("neg", neg))}
    a, results[("teacher", "shared")] = measure(lambda: teacher.replay(ro, fulls, questions, pos_crops=pos, neg_crops=neg),
                                                args.repeats, device, [t_count])
    b, results[("teacher", "repeated")] = measure(teacher_repeated, args.repeats, device, [t_count])
    checks["teacher: max |shared - repeated|"] = max((a[v] - b[v]).abs().max().item() for v in b)

    # Update: forward + backward of a weighted sum of the student's log-probs, gradients through the
    # shared prompt (prefix.GroupScorer, as train.py runs it) vs the repeated-prompt forward.
    scorer, weights = prefix.GroupScorer(student).train(), torch.randn(B * G, ids.shape[1], device=device)

    def update(fn):
        student.zero_grad(set_to_none=True)
        (fn() * weights).sum().backward()
        return torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None])
    a, results[("update", "shared")] = measure(lambda: update(lambda: scorer(prompts, rows, ids, mask)),
                                               args.repeats, device, [s_count])
    b, results[("update", "repeated")] = measure(
        lambda: update(lambda: vlm.repeated_prompt_logprobs(student, prompts, rows, ids, mask)), args.repeats, device, [s_count])
    checks["update: |grad shared - grad repeated| / |grad|"] = ((a - b).norm() / b.norm()).item()
    student.zero_grad(set_to_none=True)

    P = prompts["input_ids"].shape[1]
    teacher_P = vlm.teacher_prompts(teacher_processor, fulls, pos, questions)["input_ids"].shape[1]
    print(f"{args.family} tiny, {device.type}, {torch.get_num_threads()} threads: B = {B} prompts of {P} tokens "
          f"(teacher {teacher_P}), G = {G}, answers of {ids.shape[1]} tokens\n")
    header = "| phase | path | seconds | vision rows | LM tokens | peak MiB |"
    print(header + "\n|---|---|---:|---:|---:|---:|")
    totals = {}
    for phase in ("rollout", "old log-probs", "teacher", "update"):
        for path in ("shared", "repeated"):
            r = results[(phase, path)]
            for k in r:
                totals.setdefault(path, {}).setdefault(k, 0.0)
                totals[path][k] = max(totals[path][k], r[k]) if k == "peak" else totals[path][k] + r[k]
            print(f"| {phase} | {path} | {r['seconds']:.3f} | {r['vision']} | {r['tokens']} | {r['peak']:.0f} |")
        s, rep = results[(phase, "shared")], results[(phase, "repeated")]
        # A peak under 1 MiB is below what the resident set resolves: no ratio of it.
        peak_ratio = f"{rep['peak'] / s['peak']:.1f}x" if s["peak"] >= 1 else "-"
        print(f"| {phase} | ratio | {rep['seconds'] / s['seconds']:.1f}x | {rep['vision'] / max(s['vision'], 1):.1f}x | "
              f"{rep['tokens'] / s['tokens']:.1f}x | {peak_ratio} |")
    s, rep = totals["shared"], totals["repeated"]
    print(f"| step | ratio | {rep['seconds'] / s['seconds']:.1f}x | {rep['vision'] / s['vision']:.1f}x | "
          f"{rep['tokens'] / s['tokens']:.1f}x | {rep['peak'] / s['peak']:.1f}x |")
    print("\nchecks: " + "; ".join(f"{k} = {v:.2e}" if isinstance(v, float) else f"{k} = {v}" for k, v in checks.items()))
    return results, checks


if __name__ == "__main__":
    main()
