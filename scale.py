"""
Measurements behind docs/scale.md: what scoring and the update cost at a real vocabulary.

    python scale.py head                      # the output head: full logits (before) vs head.py (after)
    python scale.py head --vocab 151936 --answer-tokens 512 --repeats 3

`head`: tiny Qwen2.5-VL (fp32) with its vocabulary grown to V, one prompt, G answers of T tokens.
For each (V, T) it prints the peak extra memory and the seconds (median of --repeats after a
warm-up) of no-grad scoring (`prefix.score`) and of the update (`prefix.GroupScorer` forward +
backward), the path that held [N, T, V] logits ("before", kept here as the baseline and in the
tests as the oracle) against head.py's ("after"), and the largest difference of their log-probs.
"Before" runs are skipped where their logits alone would pass --memory-limit (GiB).
Peak memory: CPU resident high-water mark above the start (bench.peak_extra_mib); CUDA: allocator.
"""

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

import model as vlm
import prefix
from bench import peak_extra_mib


def score_full_logits(model, pre, rows, answer_ids, answer_mask):
    """The path head.py replaced: the same answer forward, but the model's head applied to every
    answer position ([N, T, V] logits), then the log-softmax in fp32 a chunk at a time."""
    ids, mask = vlm.check_answers(answer_ids, answer_mask, rows)
    inputs = prefix.answer_inputs(pre, torch.as_tensor(rows), ids, mask)
    logits = model(**inputs, logits_to_keep=ids.shape[1]).logits                    # [N, T, V]
    return vlm.answer_logprobs(logits, ids, mask)


class FullLogitsScorer(torch.nn.Module):
    """prefix.GroupScorer with the full-logits answer forward: the update before head.py."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, prompts, rows, answer_ids, answer_mask):
        return score_full_logits(self.model, prefix.encode(self.model, prompts, hold_last=True), rows, answer_ids,
                                 answer_mask)


def timed(fn, repeats, device):
    """(result, peak extra MiB of one run, median seconds of `repeats` runs), after a warm-up."""
    fn()
    out, peak = peak_extra_mib(fn, device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return out, peak, statistics.median(seconds)


def head_benchmark(args):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    G = args.group_size
    print(f"tiny:qwen2_5_vl, fp32, {device.type}, {torch.get_num_threads()} threads, G = {G}, one prompt; "
          f"peak = extra memory above the start (GiB), seconds = median of {args.repeats}\n")
    print("| V | T | phase | before: peak GiB | before: s | after: peak GiB | after: s | peak after/before | "
          "s after/before | max abs diff |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for vocab in args.vocab:
        model, processor = vlm.build_tiny("qwen2_5_vl", "tiny", seed=0)
        model.resize_token_embeddings(vocab, mean_resizing=False)
        model.to(device)
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))
        prompts = vlm.student_prompts(processor, [image], ["What colour is the star?"]).to(device)
        for t in args.answer_tokens:
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(10, vocab, (G, t), generator=g).to(device)
            mask = torch.ones(G, t, dtype=torch.bool, device=device)
            rows = torch.zeros(G, dtype=torch.long, device=device)
            weights = torch.randn(G, t, generator=g).to(device)
            logits_gib = G * t * vocab * 4 / 2**30
            with torch.no_grad():
                pre = prefix.encode(model, prompts, hold_last=True)

            def scoring(fn):
                with torch.no_grad():
                    return fn(model, pre, rows, ids, mask)

            def update(scorer):
                model.zero_grad(set_to_none=True)
                logp = scorer(prompts, rows, ids, mask)
                (logp * weights).sum().backward()
                return logp.detach()
            phases = [("scoring", lambda: scoring(score_full_logits), lambda: scoring(prefix.score), 1.1),
                      ("update", lambda: update(FullLogitsScorer(model)), lambda: update(prefix.GroupScorer(model)), 2.2)]
            for phase, before, after, factor in phases:
                new, new_peak, new_s = timed(after, args.repeats, device)
                if factor * logits_gib > args.memory_limit:       # the full-logits path would not fit here
                    print(f"| {vocab:,} | {t} | {phase} | (skipped: ~{factor * logits_gib:.1f}) | | "
                          f"{new_peak / 1024:.3f} | {new_s:.2f} | | | |")
                    continue
                old, old_peak, old_s = timed(before, args.repeats, device)
                diff = (new - old).abs().max().item()
                print(f"| {vocab:,} | {t} | {phase} | {old_peak / 1024:.3f} | {old_s:.2f} | {new_peak / 1024:.3f} | "
                      f"{new_s:.2f} | 1/{old_peak / max(new_peak, 1e-9):.1f} | {new_s / old_s:.2f} | {diff:.1e} |",
                      flush=True)
            model.zero_grad(set_to_none=True)
        del model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    head = sub.add_parser("head", help="full logits vs head.py: peak memory and seconds")
    head.add_argument("--vocab", type=int, nargs="+", default=[151936, 248320])
    head.add_argument("--answer-tokens", type=int, nargs="+", default=[512, 1024, 2048])
    head.add_argument("--group-size", type=int, default=8)
    head.add_argument("--repeats", type=int, default=3)
    head.add_argument("--memory-limit", type=float, default=9.0, help="GiB the full-logits runs may take")
    head.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "head":
        head_benchmark(args)


if __name__ == "__main__":
    main()
