"""
Train a VLM student with V-Zero: the plain loop of Algorithm 1, on one process or many.

    torchrun --nproc_per_node=8 train.py --student Qwen/Qwen3-VL-2B-Instruct \\
        --teacher Qwen/Qwen3-VL-8B-Instruct --train-data data/train.jsonl --out-dir out/vzero
    python train.py                 # no arguments: the CPU demo on the zoom world (toy.py), minutes
    python train.py --student tiny:qwen2_5_vl --teacher tiny:qwen2_5_vl@1 --max-steps 2 --prompts-per-step 4 \\
        --group-size 4 --max-new-tokens 16 --out-dir out/smoke --overwrite        # CPU smoke run, ~5 s
    python bench.py                 # what each phase costs: each prompt encoded once vs once per answer

One step (README, "One training step"): this rank's prompts -> the student samples G responses
from the full image (rollout.py) -> the frozen teacher replays them under (x, z+) and (x, z-)
(teacher.py) -> gate weights (gate.py, Eqs. 17-20) -> for each mini-batch: student log-probs with
grad (prefix.py), the gated loss with the GLOBAL token count (loss.py, Eqs. 23-24), backward, clip, AdamW step.
No answer label is read by the step; answers, when the data has them, only feed logged
diagnostics after the update. Defaults are the authors' released recipe (docs/method.md).
"""

import copy
import dataclasses
import math
import os
import resource
import runpy
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from config import FREE, Config, parse_args


# `python train.py --help` answers here, before the imports below (torch and transformers take seconds).
if __name__ == "__main__" and {"-h", "--help"} & set(sys.argv[1:]):
    parse_args(sys.argv[1:], description=__doc__)

import torch  # noqa: E402 (every import from here on is after the fast --help above)
import torch.distributed as dist  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

import checkpoint  # noqa: E402
import data  # noqa: E402
import model as vlm  # noqa: E402
from gate import auroc, evidence_gate  # noqa: E402
from loss import opd_loss  # noqa: E402
from parallel import (MasterWeights, all_sum, end_distributed, fp32_allreduce, gathered, load_sharded,  # noqa: E402
                      setup_distributed, sync_grads)
from prefix import GroupScorer, enable_gradient_checkpointing, packs  # noqa: E402
from rollout import decode, sample, unwrap  # noqa: E402
from teacher import Teacher  # noqa: E402

def check_config(cfg, world):
    """Every knob's range, every impossible combination and every missing local model, before any
    data or model is loaded."""
    for f in dataclasses.fields(Config):
        value, m = getattr(cfg, f.name), f.metadata
        if value is None or isinstance(value, (bool, str)):
            continue
        if not math.isfinite(value):     # NaN passes every comparison below
            raise ValueError(f"--{f.name.replace('_', '-')} {value}: must be a finite number")
        if (m["min"] is not None and value < m["min"]) or (m["above"] is not None and value <= m["above"]) \
                or (m["max"] is not None and value > m["max"]):
            rule = " and ".join(r for r in (m["min"] is not None and f">= {m['min']}", m["above"] is not None
                                            and f"> {m['above']}", m["max"] is not None and f"<= {m['max']}") if r)
            raise ValueError(f"--{f.name.replace('_', '-')} {value}: must be {rule}")
    if not cfg.student or not cfg.teacher:
        raise ValueError("--student and --teacher are required")
    for name in (cfg.student, cfg.teacher):
        vlm.check_model_name(name)
    # The teacher scores the student's token ids: compared from the tokenizer files now (local dirs,
    # cached hub ids), not after minutes of loading a 27B teacher; vlm.check_compatible checks again.
    vocabs = [checkpoint.tokenizer_vocab(name) for name in (cfg.student, cfg.teacher)]
    if None not in vocabs and vocabs[0] != vocabs[1]:
        differ = sorted(set(vocabs[0].items()) ^ set(vocabs[1].items()), key=str)[:3]
        raise ValueError(f"the tokenizers of --student {cfg.student} and --teacher {cfg.teacher} differ "
                         f"({len(vocabs[0])} vs {len(vocabs[1])} tokens; e.g. (token, id) in only one: {differ}): "
                         "the teacher cannot score the student's token ids")
    if not cfg.gate_w_min < cfg.gate_w_max:      # Eq. 20's clip range; w_max 0 would zero every weight
        raise ValueError(f"--gate-w-max {cfg.gate_w_max} must be > --gate-w-min {cfg.gate_w_min} (and > 0: "
                         "the weights are clipped to [w_min, w_max])")
    if cfg.min_pixels and cfg.max_pixels and cfg.min_pixels > cfg.max_pixels:
        raise ValueError(f"--min-pixels {cfg.min_pixels} must be <= --max-pixels {cfg.max_pixels}")
    if cfg.prompts_per_step % world:
        raise ValueError(f"--prompts-per-step {cfg.prompts_per_step} must divide over {world} ranks")
    if (cfg.prompts_per_step // world) % cfg.mini_batches:
        raise ValueError(f"each rank's {cfg.prompts_per_step // world} prompts must split into "
                         f"--mini-batches {cfg.mini_batches} of whole groups")
    if cfg.method == "vzero" and cfg.group_size < 2:
        raise ValueError("vzero needs --group-size >= 2: the gate compares siblings (Eq. 19)")
    if cfg.method == "opd-plain" and cfg.pos_view != "box":
        raise ValueError("--pos-view has no effect with --method opd-plain (the teacher sees no crop)")


def compute_dtype(cfg, device):
    return {"bf16": torch.bfloat16, "fp32": torch.float32}.get(cfg.dtype, torch.bfloat16 if device.type == "cuda"
                                                                 else torch.float32)


def build(cfg, rank, world, device, student_dir=None):
    """(student, processor, teacher, optimizer, master): the student wrapped for the update
    (GroupScorer, DDP or FSDP2), the frozen teacher, AdamW over the fp32 master weights."""
    cuda = device.type == "cuda"
    compute = compute_dtype(cfg, device)
    fsdp, shard_teacher = world > 1 and cfg.fsdp, world > 1 and cfg.shard_teacher   # one process: nothing to shard
    kw = dict(attn_implementation=cfg.attn_implementation, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    # FSDP2 keeps fp32 shards and computes in `compute` (its mixed precision); otherwise the
    # student computes in `compute` and MasterWeights keeps fp32 copies for the optimizer.
    load_student = partial(vlm.load, student_dir or cfg.student, dtype=torch.float32 if fsdp else compute, **kw)
    load_teacher = partial(vlm.load, cfg.teacher, dtype=compute, **kw)
    student, processor = load_sharded(load_student, rank, device, compute) if fsdp else load_student(device=device)
    teacher_model, teacher_processor = load_sharded(load_teacher, rank, device) if shard_teacher \
        else load_teacher(device=device)
    teacher = Teacher(teacher_model, teacher_processor, student_processor=processor, max_tokens=cfg.score_tokens)
    if cfg.grad_checkpointing:
        enable_gradient_checkpointing(student)
    student.train()
    # The update's forward = encode the prompts once + score their answers (prefix.GroupScorer): DDP
    # wants both calls inside one module's forward, so the scorer is what DDP wraps.
    student = GroupScorer(student)
    if world > 1 and not fsdp:
        student = torch.nn.parallel.DistributedDataParallel(student, device_ids=[device] if cuda else None)
        if compute != torch.float32:
            student.register_comm_hook(None, fp32_allreduce)
    # FSDP2 trap: create the optimizer right after sharding, before any forward, or updates of the
    # root-level parameters are silently lost.
    master = MasterWeights(unwrap(student))
    optimizer = torch.optim.AdamW(master.params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    if fsdp:
        # FSDP2 trap: its lazy init must start at the root; run one tiny forward through it.
        warm = vlm.student_prompts(processor, [Image.new("RGB", (64, 64))], ["warm-up"])
        with torch.no_grad():
            unwrap(student)(**{k: v.to(device) for k, v in warm.items()})
        # The root keeps its parameters unsharded after a forward (backward usually follows);
        # reshard so named_parameters() are again the sharded tensors the optimizer holds.
        unwrap(student).reshard()
    return student, processor, teacher, optimizer, master


# ---------------------------------------------------------------------------------------------
# Data order: a seeded permutation per epoch; step s takes the next prompts_per_step of the
# stream and rank r every world-th of them. The position is a function of the step: resume is exact.
# Returns this rank's [(stream position, example)]; the position also seeds per-prompt sampling.
def prompts_for_step(examples, step, cfg, rank, world):
    P, n = cfg.prompts_per_step, len(examples)
    orders, batch = {}, []
    for pos in range(step * P, (step + 1) * P):
        epoch, i = divmod(pos, n)
        if epoch not in orders:                              # one permutation per epoch
            orders[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        batch.append((pos, examples[int(orders[epoch][i])]))
    return data.shard(batch, rank, world)


@dataclass
class StepInputs:
    """What a step needs before any model runs: this rank's prompts, their views, and the encoded
    prompts of the student and of the teacher's views. `prepare` makes them; train() has the next
    step's prepared in a background thread while the current one runs (image decoding, crops and
    resizing are CPU work: ~1.5 s per 4096^2 image here, paid once per image per step)."""
    step: int
    positions: list           # global stream positions of the examples (they seed per-prompt sampling)
    examples: list
    student_prompts: dict     # [B, P] (model.student_prompts)
    teacher_prompts: dict     # Teacher.prompts of the views the method needs
    seconds: float
    bad_images: int = 0       # replaced by other prompts of the batch (--skip-bad-images)


VIEWS_NEEDED = {"vzero": ("pos", "neg"), "opd": ("pos",), "opd-plain": ("plain",)}


def prepare(cfg, examples, step, rank, world, processor, teacher):
    start = time.perf_counter()
    batch = prompts_for_step(examples, step, cfg, rank, world)
    views, bad = [], []
    for _, ex in batch:
        try:
            views.append(data.evidence_views(ex, cfg.neg_view, pos_mode=cfg.pos_view, seed=cfg.seed,
                                             margin=cfg.crop_margin, min_side=cfg.crop_min_side))
        except ValueError as error:          # names file, line, id and field
            if not cfg.skip_bad_images:
                raise
            print(f"warning: step {step + 1}: skipped: {error}")
            views.append(None)
            bad.append(error)
    # --skip-bad-images: a prompt whose image failed is replaced by another of the batch, so every
    # rank keeps its number of groups (they take their forwards in lockstep).
    good = [i for i, v in enumerate(views) if v is not None]
    if not good:
        raise ValueError(f"step {step + 1}: every image of this rank's batch failed to decode: {bad[0]}")
    source = [i if v is not None else good[i % len(good)] for i, v in enumerate(views)]
    batch, views = [batch[i] for i in source], [views[i] for i in source]
    examples = [ex for _, ex in batch]
    full, pos, neg = (list(v) for v in zip(*views))
    questions = [ex.question for ex in examples]
    pixels = {}     # each full image resized and cut into patches once, for the student and the teacher
    student_inputs = vlm.student_prompts(processor, full, questions, pixels=pixels)
    teacher_inputs = teacher.prompts(full, questions, pos_crops=pos, neg_crops=neg, views=VIEWS_NEEDED[cfg.method],
                                     pixels=pixels)
    return StepInputs(step, [p for p, _ in batch], examples, student_inputs, teacher_inputs,
                      time.perf_counter() - start, len(bad))


def train_step(cfg, inputs, student, processor, teacher, optimizer, master, rank, world, device, progress=print):
    """One step of Algorithm 1 on this rank's prompts; returns the step's metrics (over all ranks).
    progress(text): where to say which phase runs (the progress bar)."""
    step, examples = inputs.step, inputs.examples
    G, B = cfg.group_size, len(examples)
    timer = {"prepare": inputs.seconds}
    progress(f"rollout: {B} prompts x {G}")

    # 1. On-policy rollout from the full image only (Alg. 1 lines 5-7).
    # Seeds: per prompt from its global stream position (the same on any number of ranks), or
    # one per rank and step (one batched generate call). Either way a resumed run samples the same.
    t0 = time.perf_counter()
    base = cfg.seed * 1_000_003
    seed = [base + pos for pos in inputs.positions] if cfg.per_prompt_seeds else base + 7_919 * (step * world + rank)
    try:
        ro = sample(student, processor, inputs.student_prompts, group_size=G, max_new_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature, top_p=cfg.top_p, seed=seed, max_tokens=cfg.rollout_tokens)
    except FloatingPointError:      # prefix.encode found the student's outputs non-finite
        raise RuntimeError(f"step {step + 1}: the student's outputs are not finite, so its weights are broken (by "
                           f"the updates of step {step}, lr {cfg.lr}, unless it was loaded so). Resume from the last "
                           "checkpoint with a lower --lr") from None
    timer["rollout"] = time.perf_counter() - t0
    progress(f"teacher: {B * G} answers, {int(ro.response_mask.sum())} tokens")
    # 2. Teacher replay of the same tokens (Alg. 1 lines 8-10), no grad.
    t0 = time.perf_counter()
    lp = teacher.replay(ro, prompts=inputs.teacher_prompts)
    timer["teacher"] = time.perf_counter() - t0

    # 3. Gate (Eqs. 17-20): one weight per response. Plain OPD: every weight is 1.
    mask = ro.response_mask
    if cfg.method == "vzero":
        weights, gate_stats = evidence_gate(lp["pos"], lp["neg"], mask, G, alpha=cfg.gate_alpha,
                                            gamma=cfg.gate_gamma, w_min=cfg.gate_w_min, w_max=cfg.gate_w_max)
    else:
        weights, gate_stats = torch.ones(B * G, device=device), {}
    target = lp["plain" if cfg.method == "opd-plain" else "pos"]

    # 4. Update: the rollout batch is split into mini-batches of whole groups, one optimizer step
    # each; each mini-batch into micro-batches (of whole groups, by tokens) whose gradients accumulate.
    t0 = time.perf_counter()
    groups_per_mini = B // cfg.mini_batches
    prompt_lens = ro.prompt_inputs["attention_mask"].sum(1).tolist()                 # [B] real tokens
    sums = dict(loss=0.0, k1=0.0, clip=0.0, grad_norm=0.0, skipped=0.0)
    for m in range(cfg.mini_batches):
        groups = range(m * groups_per_mini, (m + 1) * groups_per_mini)
        rows = [r for b in groups for r in range(b * G, (b + 1) * G)]
        # Global normalisers, summed over ranks: token-mean divides by ALL tokens of the mini-batch.
        num_tokens, num_seqs = all_sum([mask[rows].sum().item(), (mask[rows].sum(1) > 0).sum().item()], device)
        micro = micro_batches(groups, prompt_lens, G, mask.shape[1], cfg.update_tokens)
        # Every rank runs as many micro-batches (FSDP2 reduce-scatters gradients in each backward,
        # the ranks together): a rank with fewer repeats its last one with a loss weight of 0.
        count, = all_sum([len(micro)], device, op=dist.ReduceOp.MAX)
        micro += [(micro[-1][0], micro[-1][1], 0.0)] * (int(count) - len(micro))
        optimizer.zero_grad(set_to_none=True)
        mini_loss = 0.0
        with gathered(student):      # FSDP2: the student's parameters gathered once for the mini-batch
            for i, (prompt_ids, answers, scale) in enumerate(micro):
                progress(f"update {m + 1}/{cfg.mini_batches}: micro-batch {i + 1}/{len(micro)}")
                sync_grads(student, last=i == len(micro) - 1)
                answers = torch.tensor(answers)
                # answer row r belongs to prompt r // G: its index among this micro-batch's prompts
                local = torch.searchsorted(torch.tensor(prompt_ids), answers // G)
                logp = student(vlm.select_prompts(ro.prompt_inputs, prompt_ids).to(device), local.to(device),
                               ro.response_ids[answers], mask[answers])
                loss, st = opd_loss(logp, ro.old_logp[answers], target[answers], mask[answers], weights[answers],
                                    estimator=cfg.estimator, clip_eps=cfg.clip_eps, dual_clip=cfg.dual_clip,
                                    kl_clamp=cfg.kl_clamp, agg=cfg.agg, num_tokens=num_tokens, num_seqs=num_seqs)
                # DDP/FSDP average gradients over ranks; the loss is already a global mean: undo it.
                (loss * world * scale).backward()
                mini_loss += loss.item() * scale
                sums["k1"] += st["kl/k1_mean"] * st["tokens"] * scale
                sums["clip"] += st["ppo/clip_frac"] * st["tokens"] * scale
        master.collect_grads()                   # bf16 gradients into the fp32 master copies, if any
        grad_norm = torch.nn.utils.clip_grad_norm_(master.params, cfg.grad_clip)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        # Guard: a non-finite loss or gradient anywhere skips this update on every rank.
        mini_loss, = all_sum([mini_loss], device)
        if math.isfinite(mini_loss) and math.isfinite(grad_norm):
            optimizer.step()
            master.publish()                     # the stepped fp32 weights back into the bf16 model
            # Cheap, and it names the step: a finite gradient can still step weights to inf / NaN.
            shards = [p.to_local() if hasattr(p, "to_local") else p for p in master.params]
            broken, = all_sum([int(sum(~torch.isfinite(p).all() for p in shards))], device)   # one sync
            if broken:
                raise RuntimeError(f"step {step + 1}, update {m + 1}: the optimizer step made {int(broken)} weight "
                                   f"tensor(s) non-finite (lr {cfg.lr}). The last checkpoint is intact: resume from "
                                   "it with a lower --lr")
        else:
            sums["skipped"] += 1
        sums["loss"] += mini_loss / cfg.mini_batches
        sums["grad_norm"] += grad_norm / cfg.mini_batches
    optimizer.zero_grad(set_to_none=True)
    timer["update"] = time.perf_counter() - t0

    # Step metrics over ALL ranks (the gate stats are this rank's: the gate never crosses ranks).
    k1, clip, tokens, rows, truncated = all_sum([sums["k1"], sums["clip"], mask.sum().item(), len(mask),
                                                 ro.truncated.sum().item()], device)
    len_max, = all_sum([mask.sum(1).max().item()], device, op=dist.ReduceOp.MAX)
    metrics = {"loss": sums["loss"], "kl/k1_mean": k1 / max(tokens, 1), "ppo/clip_frac": clip / max(tokens, 1),
               "grad_norm": sums["grad_norm"], "skipped_updates": int(sums["skipped"]), **gate_stats,
               "rollout/tokens": int(tokens), "rollout/len_mean": tokens / rows, "rollout/len_max": int(len_max),
               "rollout/truncated_frac": truncated / rows, **{f"time/{k}": v for k, v in timer.items()},
               "rollout/tokens_per_s": tokens / timer["rollout"],
               "tokens_per_s": tokens / (timer["rollout"] + timer["teacher"] + timer["update"]),
               "data/bad_images": int(all_sum([inputs.bad_images], device)[0])}
    # Diagnostics only, AFTER the update: answers never touch the step above.
    metrics.update(answer_diagnostics(examples, ro, weights, processor, cfg, device))
    return metrics


def micro_batches(groups, prompt_lens, G, T, budget):
    """[(prompt indices, answer rows, loss weight 1)] covering `groups`: whole groups packed while their
    G x (prompt + T) token positions fit the budget; a group above it alone is split by answers,
    its prompt then encoded once per part (the only case a prompt is encoded twice)."""
    groups = list(groups)
    out = []
    for pack in packs([G * (prompt_lens[b] + T) for b in groups], budget):
        b = groups[pack[0]]
        if len(pack) == 1 and G * (prompt_lens[b] + T) > budget:
            per_part = max(1, budget // (prompt_lens[b] + T))
            out += [([b], list(range(b * G + s, b * G + min(G, s + per_part))), 1.0) for s in range(0, G, per_part)]
        else:
            out.append(([groups[i] for i in pack], [r for i in pack for r in range(groups[i] * G, (groups[i] + 1) * G)], 1.0))
    return out


def answer_diagnostics(examples, ro, weights, processor, cfg, device):
    # Accuracy of the sampled rollouts and AUROC of the gate weight as a detector of correctness.
    if any(ex.answer is None or not ex.choices for ex in examples):
        return {}
    texts = decode(processor, ro)
    correct = [data.match_choice(t, ex.choices) == ex.answer
               for t, ex in zip(texts, (ex for ex in examples for _ in range(cfg.group_size)))]
    n_correct, n = all_sum([sum(correct), len(correct)], device)
    out = {"diag/rollout_acc": n_correct / n}
    if cfg.method == "vzero":
        pairs = [(float(w), c) for w, c in zip(weights.tolist(), correct)]
        if dist.is_initialized():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, pairs)
            pairs = [p for part in gathered for p in part]
        out["diag/gate_auroc"] = auroc([w for w, _ in pairs], [c for _, c in pairs])
    return out


# ---------------------------------------------------------------------------------------------
def train(cfg, rank=0, world=1, device=torch.device("cpu"), examples=None):
    """Run cfg; returns the per-step metrics of this start. `examples` replaces cfg.train_data with
    examples already in memory (toy.py passes prompts stripped of their answers). A SIGTERM or
    SIGINT ends it after the current step with a checkpoint: SystemExit(128 + signal number)."""
    # Everything that can be wrong with the settings, the data or the run directory fails here,
    # before a model loads.
    check_config(cfg, world)
    if examples is None:
        examples = data.load_examples(cfg.train_data, cfg.skip_bad_images)
        settings = {**dataclasses.asdict(cfg), "train_data_files": data.identity(cfg.train_data)}
    else:
        settings = dataclasses.asdict(cfg)
    if cfg.method != "opd-plain":
        data.check_views(examples, cfg.neg_view)
    ckpt = checkpoint.open_run(cfg.out_dir, settings, FREE, cfg.resume, cfg.overwrite, rank,
                               defaults=dataclasses.asdict(Config()))
    if ckpt and checkpoint.step_of(ckpt) >= cfg.max_steps:
        if rank == 0:
            print(f"nothing to do: {ckpt} is at step {checkpoint.step_of(ckpt)}, --max-steps is "
                  f"{cfg.max_steps}; raise --max-steps to train further")
        checkpoint.release(cfg.out_dir)
        return []
    if rank == 0:
        print(summary(cfg, world, len(examples)))
    transformers.logging.disable_progress_bar()          # no weight-loading bars between ours
    torch.manual_seed(cfg.seed + rank)                         # per-rank seeds
    try:
        student, processor, teacher, optimizer, master = build(cfg, rank, world, device, student_dir=ckpt)
    except Exception as e:
        if ckpt is None:
            raise
        raise RuntimeError(f"loading the models (the student from checkpoint {ckpt}) failed: {e}") from e
    if rank == 0:
        bounds = [f"{name} {p.image_processor.size['shortest_edge']}..{p.image_processor.size['longest_edge']}"
                  for name, p in (("student", processor), ("teacher", teacher.processor))]
        print("image pixels: " + ", ".join(bounds) + " (--min-pixels / --max-pixels)")
    start = checkpoint.restore(ckpt, unwrap(student), master, optimizer, rank, device) if ckpt else 0
    if ckpt and rank == 0:
        print(f"resumed from step {start} of {ckpt}")
    checkpoint.begin(cfg.out_dir, settings, ckpt, rank)        # from here on out_dir holds this run
    log = checkpoint.MetricsLog(cfg.out_dir, start, rank)      # after the checkpoint is known good
    from preempt import StopSignals       # (imported here: the top of train.py is another issue's work)
    history, began, stop = [], time.time(), StopSignals()
    bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps, disable=rank != 0, desc=cfg.method)
    # The next step's inputs are prepared in a background thread while this step runs (PIL and the
    # tokenizer release the GIL for their heavy work); at most one step ahead. The thread has its
    # own copy of the processor: a fast tokenizer must not serve two threads at once.
    ahead, prep_processor = ThreadPoolExecutor(max_workers=1), copy.deepcopy(processor)
    next_inputs = ahead.submit(prepare, cfg, examples, start, rank, world, prep_processor, teacher)
    try:
        for step in bar:
            t0 = time.perf_counter()
            inputs = next_inputs.result()
            waited = time.perf_counter() - t0
            if step + 1 < cfg.max_steps:
                next_inputs = ahead.submit(prepare, cfg, examples, step + 1, rank, world, prep_processor, teacher)
            m = train_step(cfg, inputs, student, processor, teacher, optimizer, master, rank, world, device,
                           progress=bar.set_postfix_str)
            m = {"step": step + 1, **m, "time/data_wait": waited, "peak_mem_mb": peak_memory_mb(device)}
            history.append(m)
            log.append(m)
            bar.set_postfix_str(f"loss {m['loss']:.4f}  kl {m['kl/k1_mean']:.3f}  len {m['rollout/len_mean']:.0f}")
            stopped = stop.agreed(device)          # every rank: did any rank get SIGTERM / SIGINT?
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.max_steps or stopped:
                path = checkpoint.save(cfg.out_dir, step + 1, settings, unwrap(student), processor, master,
                                       optimizer, rank, compute_dtype(cfg, device), cfg.keep_last)
                if rank == 0:
                    bar.write(f"saved {path}")
            if stopped:
                if rank == 0:
                    bar.write(f"stopped by {stopped.name} after step {step + 1} of {cfg.max_steps}: saved {path}; "
                              "continue with --resume auto")
                raise SystemExit(128 + stopped)          # 143 for SIGTERM: the run did not finish
    finally:
        stop.close()
        ahead.shutdown(cancel_futures=True)
        bar.close()
        checkpoint.release(cfg.out_dir)
    if rank == 0 and history:
        last = history[-1]
        print(f"done: steps {start + 1}..{cfg.max_steps} in {(time.time() - began) / 60:.1f} min; last step: loss "
              f"{last['loss']:.4f}, teacher KL {last['kl/k1_mean']:.4f}, answers {last['rollout/len_mean']:.0f} "
              f"tokens; metrics {log.path}; student {checkpoint.latest(cfg.out_dir)}")
    return history


def summary(cfg, world, num_examples):
    # The run in a few lines; every setting is in out_dir/train_config.json.
    return (f"{cfg.method}: student {cfg.student}, teacher {cfg.teacher}\n"
            f"data {cfg.train_data} ({num_examples} examples); {cfg.prompts_per_step} prompts x G={cfg.group_size} "
            f"per step on {world} rank(s), {cfg.mini_batches} updates per step, lr {cfg.lr}, {cfg.max_steps} steps, "
            f"up to {cfg.max_new_tokens} new tokens\n"
            f"out {cfg.out_dir} (all settings: {os.path.join(cfg.out_dir, 'train_config.json')})")


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024        # Linux: KiB


def main(argv=None):
    if not argv:            # `python train.py`: the CPU demo on the zoom world, which is toy.py's
        return runpy.run_module("toy", run_name="__main__")     # (toy imports train, not the other way)
    cfg = parse_args(argv, description=__doc__)
    rank, world, device = setup_distributed()
    try:
        train(cfg, rank, world, device)
    except SystemExit:          # a signal stopped every rank after the same step: they leave together
        end_distributed()
        raise
    except ValueError as e:     # bad settings or data, found alike by every rank: rank 0 says it in full
        if rank != 0:
            sys.exit(f"rank {rank}: {e}")
        raise
    end_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
