"""
Measurements behind docs/scale.md: what scoring and the update cost at a real vocabulary.

    python scale.py head                      # the output head: full logits (before) vs head.py (after)
    python scale.py head --vocab 151936 --answer-tokens 512 --repeats 3
    python scale.py units                     # unit memory costs at real width and vocabulary, cut depth

`head`: tiny Qwen2.5-VL (fp32) with its vocabulary grown to V, one prompt, G answers of T tokens.
For each (V, T) it prints the peak extra memory and the seconds (median of --repeats after a
warm-up) of no-grad scoring (`prefix.score`) and of the update (`prefix.GroupScorer` forward +
backward), the path that held [N, T, V] logits ("before", kept here as the baseline and in the
tests as the oracle) against head.py's ("after"), and the largest difference of their log-probs.
"Before" runs are skipped where their logits alone would pass --memory-limit (GiB).
Peak memory: CPU resident high-water mark above the start (bench.peak_extra_mib); CUDA: allocator.

`units`: a real-width model (default shape:qwen3_5-4b, bf16, the real run's compute dtype) cut to
4 and 8 language-model layers and 1 and 2 vision layers. Each phase (no-grad scoring: encode +
score, as the old log-probs and the teacher run it; the update: GroupScorer forward + backward
under gradient checkpointing, gradients allocated beforehand) is run at a base size and with more
answer tokens (4 x 64 -> 4 x 256), more prompt text (+~1,000 question tokens: the language model
alone), a larger image (196 -> 784 patches) or more layers; the differences of the peaks are the
unit costs (bytes per answer token, per prompt token, per patch, per layer, per vision layer),
which docs/scale.md multiplies by the real depth and sizes. The base is also run with the
full-logits path: the logits part before and after head.py. About 13 min on 2 CPU cores.
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


def unit_costs(args):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    G, T0, T1, side0, side1, text = args.group_size, 64, 256, 224, 448, args.text_tokens
    # A run: (layers, vision layers, image side, extra question tokens, answer tokens). The base,
    # then one size grown at a time: the answers (T1), the prompt's TEXT (LM tokens alone, the
    # per-prompt-token cost), the image (patches: vision tower + their LM tokens), the depth.
    base = (4, 1, side0, 0, T0)
    runs = [base, (4, 1, side0, 0, T1), (4, 1, side0, text, T0), (4, 1, side1, 0, T0),
            (8, 1, side0, 0, T0), (8, 1, side0, 0, T1), (8, 1, side0, text, T0), (4, 2, side0, 0, T0)]
    peaks, sizes = {}, {}
    print(f"{args.shape}, {args.dtype}, {device.type}, {torch.get_num_threads()} threads: peak extra memory of "
          f"each phase (MiB) and its seconds\n")
    print("| layers | vision layers | prompt tokens | patches | answers | phase | peak MiB | s |")
    print("|---:|---:|---:|---:|---|---|---:|---:|")
    for layers, vision_layers in dict.fromkeys(r[:2] for r in runs):
        model, processor = vlm.load(f"{args.shape}:layers={layers}:vision_layers={vision_layers}", dtype=dtype,
                                    device=device, min_pixels=112 * 112, max_pixels=side1 * side1)
        prefix.enable_gradient_checkpointing(model)
        model.train()                              # checkpointing acts in training mode (no dropout in Qwen)
        vocab = model.get_output_embeddings().weight.shape[0]
        decoder = model.model.language_model.layers
        layer_bytes = sum(p.numel() * p.element_size() for p in decoder.parameters()) / len(decoder)
        for p in model.parameters():               # gradients allocated once: the peaks are activations
            p.grad = torch.zeros_like(p)
        for i, key in enumerate([r for r in runs if r[:2] == (layers, vision_layers)]):
            _, _, side, extra, t = key
            image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))
            filler = " The star may be red, green or blue."     # repeated to ~`extra` more tokens
            question = "What colour is the star?" + filler * (extra // len(processor.tokenizer(filler).input_ids))
            prompts = vlm.student_prompts(processor, [image], [question]).to(device)
            ids = torch.randint(10, vocab, (G, t), generator=torch.Generator().manual_seed(0)).to(device)
            mask, rows = torch.ones(G, t, dtype=torch.bool, device=device), torch.zeros(G, dtype=torch.long, device=device)

            def scoring(score=prefix.score):
                with torch.no_grad():
                    return score(model, prefix.encode(model, prompts, hold_last=True), rows, ids, mask)

            def update(scorer=prefix.GroupScorer):
                model.zero_grad(set_to_none=False)
                scorer(model)(prompts, rows, ids, mask).sum().backward()
            phases = [("scoring", scoring), ("update", update)]
            if key == base:
                phases += [("scoring, full logits", lambda: scoring(score_full_logits)),
                           ("update, full logits", lambda: update(FullLogitsScorer))]
            if i == 0:                                       # warm up (first-call allocations) once per model
                scoring()
                update()
            sizes[key] = (prompts["input_ids"].shape[1], int(prompts["image_grid_thw"].prod()), G * t)
            for phase, fn in phases:
                start = time.perf_counter()
                peaks[key + (phase,)] = peak_extra_mib(fn, device)[1] * 2**20
                print(f"| {layers} | {vision_layers} | {sizes[key][0]} | {sizes[key][1]} | {G} x {t} | {phase} | "
                      f"{peaks[key + (phase,)] / 2**20:,.1f} | {time.perf_counter() - start:.0f} |", flush=True)
        del model
    # Unit costs: differences of peaks over differences of sizes (bytes).
    longer, texted, imaged = (4, 1, side0, 0, T1), (4, 1, side0, text, T0), (4, 1, side1, 0, T0)
    deep = lambda run: (8,) + run[1:]
    print(f"\n{args.shape}, {args.dtype}, {device.type}; base: 4 layers, 1 vision layer, a prompt of "
          f"{sizes[base][0]} tokens ({sizes[base][1]} patches), G = {G} answers of {T0}; one decoder layer's "
          f"parameters {layer_bytes / 2**20:,.1f} MiB (the mean of the 3 : 1 mix); bytes\n")
    print("| phase | per answer token: 4 layers / per layer | per prompt token: 4 layers / per layer | "
          "per patch (its LM tokens included), 4 layers | per layer at base | per vision layer at base |")
    print("|---|---:|---:|---:|---:|---:|")
    for phase in ("scoring", "update"):
        at = lambda run: peaks[run + (phase,)]
        # field of sizes: 0 prompt tokens, 1 patches, 2 answer tokens
        slope = lambda big, small, field: (at(big) - at(small)) / (sizes[big][field] - sizes[small][field])
        answer4, answer8 = slope(longer, base, 2), slope(deep(longer), deep(base), 2)
        prompt4, prompt8 = slope(texted, base, 0), slope(deep(texted), deep(base), 0)
        print(f"| {phase} | {answer4:,.0f} / {(answer8 - answer4) / 4:,.0f} | {prompt4:,.0f} / {(prompt8 - prompt4) / 4:,.0f} "
              f"| {slope(imaged, base, 1):,.0f} | {(at(deep(base)) - at(base)) / 4:,.0f} | {at((4, 2) + base[2:]) - at(base):,.0f} |")
    for phase in ("scoring", "update"):
        full, chunked = peaks[base + (f"{phase}, full logits",)], peaks[base + (phase,)]
        print(f"\n{phase}: full logits {full / 2**20:.1f} MiB, head.py {chunked / 2**20:.1f} MiB at the base; the logits "
              f"part per answer token: {(full - chunked) / (G * T0):,.0f} bytes before, 0 after (V = {vocab:,})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    head = sub.add_parser("head", help="full logits vs head.py: peak memory and seconds")
    head.add_argument("--vocab", type=int, nargs="+", default=[151936, 248320])
    head.add_argument("--answer-tokens", type=int, nargs="+", default=[512, 1024, 2048])
    head.add_argument("--group-size", type=int, default=8)
    head.add_argument("--repeats", type=int, default=3)
    head.add_argument("--memory-limit", type=float, default=9.0, help="GiB the full-logits runs may take")
    units = sub.add_parser("units", help="unit memory costs at real width and vocabulary, cut depth")
    units.add_argument("--shape", default="shape:qwen3_5-4b")
    units.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    units.add_argument("--group-size", type=int, default=4)
    units.add_argument("--text-tokens", type=int, default=1024, help="question tokens added for the per-prompt-token cost")
    for p in (head, units):
        p.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    (head_benchmark if args.command == "head" else unit_costs)(args)


if __name__ == "__main__":
    main()
