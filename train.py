"""
Train a VLM student with V-Zero: the plain loop of Algorithm 1, on one process or many.

    torchrun --nproc_per_node=8 train.py --student Qwen/Qwen3-VL-2B-Instruct \\
        --teacher Qwen/Qwen3-VL-8B-Instruct --train-data data/train.jsonl --out-dir out/vzero
    python train.py                 # no arguments: the CPU demo on the zoom world (toy.py), minutes
    python train.py --student tiny:qwen2_5_vl --teacher tiny:qwen2_5_vl@1 --max-steps 2 --prompts-per-step 4 \\
        --group-size 4 --max-new-tokens 16 --out-dir out/smoke --overwrite        # CPU smoke run, ~5 s
    python bench.py                 # what each phase costs: each prompt encoded once vs once per answer

One step (`train_step`, README "One training step"): this rank's prompts (batch.py) -> 1. the
student samples G responses from the full image (rollout.py) -> 2. the frozen teacher replays them
under the views the method needs, (x, z+) and (x, z-) (teacher.py) -> 3. one weight per response,
the evidence gate (method.py, gate.py, Eqs. 17-20) -> 4. per mini-batch: student log-probs with grad,
the gated loss with the GLOBAL token count (update.py, loss.py, Eqs. 23-24), backward, clip, AdamW.
No answer label is read by the step; answers, when the data has them, only feed logged
diagnostics after the update (diagnostics.py). Defaults are the authors' released recipe (docs/method.md).
`--preflight` runs the worst step once and reports its cost (preflight.py).
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
from functools import partial

from config import FREE, RETIRED, Config, parse_args


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
import diagnostics  # noqa: E402
import model as vlm  # noqa: E402
from batch import prepare  # noqa: E402
from gate import trajectory_scores  # noqa: E402
from method import METHODS, answer_weights, unit_weights  # noqa: E402
from preempt import StopSignals  # noqa: E402
from preflight import Meter, Phases, worst_case  # noqa: E402
from parallel import MasterWeights, all_sum, end_distributed, fp32_allreduce, load_sharded, setup_distributed  # noqa: E402
from prefix import GroupScorer, enable_gradient_checkpointing  # noqa: E402
from rollout import decode, sample, unwrap  # noqa: E402
from teacher import Teacher  # noqa: E402
from update import update  # noqa: E402

def check_config(cfg, world):
    """Every knob's range, every impossible combination and every missing local model, before any
    data or model is loaded."""
    for f in dataclasses.fields(Config):
        value, bounds = getattr(cfg, f.name), f.metadata
        if value is None or isinstance(value, (bool, str)):
            continue
        if not math.isfinite(value):     # NaN passes every comparison below
            raise ValueError(f"--{f.name.replace('_', '-')} {value}: must be a finite number")
        low, above, high = bounds["min"], bounds["above"], bounds["max"]
        if ((low is not None and value < low) or (above is not None and value <= above)
                or (high is not None and value > high)):
            rule = " and ".join(r for r in (low is not None and f">= {low}", above is not None and f"> {above}",
                                            high is not None and f"<= {high}") if r)
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
    if cfg.method not in METHODS:
        raise ValueError(f"--method {cfg.method!r}: choose one of {sorted(METHODS)} (method.py)")
    if cfg.group_size < METHODS[cfg.method].min_group_size:
        raise ValueError(f"{cfg.method} needs --group-size >= {METHODS[cfg.method].min_group_size}: the gate "
                         "compares siblings (Eq. 19)")


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
    teacher_model, teacher_processor = (load_sharded(load_teacher, rank, device) if shard_teacher
                                        else load_teacher(device=device))
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
# Sampling seeds: seed * 1_000_003 + the prompt's stream position (--per-prompt-seeds), or + 7_919 *
# (step * world + rank) (one batched generate per rank and step). Prime strides, so the streams of
# different base seeds start apart; part of what a run IS (other values sample other tokens): they stay.
SAMPLE_SEED_STRIDE = 1_000_003
RANK_STEP_SEED_STRIDE = 7_919


# ---------------------------------------------------------------------------------------------
def train_step(cfg, inputs, student, processor, teacher, optimizer, master, rank, world, device, progress=print,
               seconds=None):
    """One step of Algorithm 1 on this rank's B prompts; returns the step's metrics (over all ranks).
    progress(text): where to say which phase runs (the progress bar). seconds: what times each
    phase (preflight.Phases; the preflight's Meter also measures memory)."""
    method, G, B = METHODS[cfg.method], cfg.group_size, len(inputs.examples)
    seconds = Phases() if seconds is None else seconds
    seconds["prepare"] = inputs.seconds

    # 1. Rollout (Alg. 1 lines 5-7): the student samples G answers per prompt from the full image x.
    #    ro.response_ids, ro.response_mask, ro.old_logp: [B*G, T], the G siblings in contiguous rows.
    progress(f"rollout: {B} prompts x {G}")
    with seconds("rollout"):
        ro = rollout(cfg, inputs, student, processor, rank, world)
    mask = ro.response_mask                                                           # [B*G, T]

    # 2. Teacher replay (lines 8-10): log pi_t(y_k | view, y_<k) of the SAME tokens under each view
    #    the method needs: lp["pos"] under (x, z+), lp["neg"] under (x, z-). [B*G, T] each, no grad.
    progress(f"teacher: {B * G} answers, {int(mask.sum())} tokens")
    with seconds("teacher"):
        lp = teacher.replay(ro, prompts=inputs.teacher_prompts)

    # 3. One weight per answer (V-Zero: the contrastive evidence gate, Eqs. 17-20; OPD: ones). [B*G].
    weights, gate_stats = method.weights(lp, mask, G, cfg)

    # 4. Update (lines 11-13): the weighted distillation loss toward the target view (Eqs. 23-24),
    #    on mini-batches of whole groups, one optimizer step each (update.py: the machinery).
    with seconds("update"):
        sums = update(cfg, student, optimizer, master, ro, lp[method.target], weights, inputs.step, world, device,
                      progress)

    metrics = step_metrics(sums, gate_stats, ro, seconds, inputs.bad_images, device)
    # Diagnostics only, AFTER the update: answers never touch the step above.
    metrics.update(answer_diagnostics(inputs.examples, ro, lp, weights, processor, cfg, device))
    return metrics


def rollout(cfg, inputs, student, processor, rank, world):
    # Seeds: per prompt from its global stream position (the same on any number of ranks), or one
    # per rank and step (one batched generate call). Either way a resumed run samples the same.
    base = cfg.seed * SAMPLE_SEED_STRIDE
    seed = ([base + pos for pos in inputs.positions] if cfg.per_prompt_seeds
            else base + RANK_STEP_SEED_STRIDE * (inputs.step * world + rank))
    try:
        return sample(student, processor, inputs.student_prompts, group_size=cfg.group_size,
                      max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=seed,
                      max_tokens=cfg.rollout_tokens, min_new_tokens=cfg.max_new_tokens if inputs.max_length else None)
    except FloatingPointError:      # prefix.encode found the student's outputs non-finite
        raise RuntimeError(f"step {inputs.step + 1}: the student's outputs are not finite, so its weights are broken "
                           f"(by the updates of step {inputs.step}, lr {cfg.lr}, unless it was loaded so). Resume "
                           "from the last checkpoint with a lower --lr") from None


def step_metrics(sums, gate_stats, ro, seconds, bad_images, device):
    # The step's metrics over ALL ranks (the gate stats are this rank's: the gate never crosses ranks).
    mask = ro.response_mask
    k1, clip, tokens, rows, truncated = all_sum([sums["k1"], sums["clip"], mask.sum().item(), len(mask),
                                                 ro.truncated.sum().item()], device)
    len_max, = all_sum([mask.sum(1).max().item()], device, op=dist.ReduceOp.MAX)
    return {"loss": sums["loss"], "kl/k1_mean": k1 / max(tokens, 1), "ppo/clip_frac": clip / max(tokens, 1),
            "grad_norm": sums["grad_norm"], "skipped_updates": int(sums["skipped"]), **gate_stats,
            "rollout/tokens": int(tokens), "rollout/len_mean": tokens / rows, "rollout/len_max": int(len_max),
            "rollout/truncated_frac": truncated / rows, **{f"time/{k}": v for k, v in seconds.items()},
            "rollout/tokens_per_s": tokens / seconds["rollout"],
            "tokens_per_s": tokens / (seconds["rollout"] + seconds["teacher"] + seconds["update"]),
            "data/bad_images": int(all_sum([bad_images], device)[0])}


def answer_diagnostics(examples, ro, lp, weights, processor, cfg, device):
    # Read after the update from what the step already holds (no model runs, no random draw):
    # the rollouts' accuracy, where the loss signal went and what the gate saw (diagnostics.py).
    if any(ex.answer is None or not ex.choices for ex in examples):
        return {}
    method, mask = METHODS[cfg.method], ro.response_mask                      # [B*G, T]
    per_answer = [ex for ex in examples for _ in range(cfg.group_size)]
    correct = [data.match_choice(t, ex.choices) == ex.answer for t, ex in zip(decode(processor, ro), per_answer)]
    n_correct, n = all_sum([sum(correct), len(correct)], device)
    out = {"diag/rollout_acc": n_correct / n}
    # d_k of the first update (Eq. 23, the student at sampling time), clamped as the loss clamps it.
    d = (ro.old_logp - lp[method.target]).clamp(-cfg.kl_clamp, cfg.kl_clamp)     # [B*G, T]
    parts = diagnostics.token_parts(processor.tokenizer, ro.response_ids, mask, [ex.choices for ex in per_answer])
    sums = diagnostics.signal_sums(weights, d, mask, torch.tensor(correct, device=mask.device),
                                     parts.to(mask.device))
    out.update(diagnostics.signal_shares(dict(zip(sums, all_sum(list(sums.values()), device)))))
    if method.weights is not unit_weights:      # the weights of a gate, not all ones
        # The paper's contrast p (Eq. 18) where the method replays both crop views; else unknown.
        score = (trajectory_scores(lp["pos"], lp["neg"], mask, gamma=cfg.gate_gamma)[0].tolist()
                 if {"pos", "neg"} <= set(lp) else [None] * len(correct))                 # [B*G]
        rows = list(zip(answer_weights(weights, mask).tolist(), correct, score,
                        [bool(ex.meta.get("box_misses_target")) for ex in per_answer]))
        if dist.is_initialized():
            parts_of_ranks = [None] * dist.get_world_size()
            dist.all_gather_object(parts_of_ranks, rows)
            rows = [row for part in parts_of_ranks for row in part]
        out.update(diagnostics.gate_diagnostics(rows))
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
    if set(METHODS[cfg.method].views) & {"pos", "neg"}:       # crops need boxes: refuse rows without, now
        data.check_views(examples, cfg.neg_view)
    ckpt = checkpoint.open_run(cfg.out_dir, settings, FREE, cfg.resume, cfg.overwrite, rank,
                               defaults=dataclasses.asdict(Config()), retired=RETIRED)
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
            metrics = train_step(cfg, inputs, student, processor, teacher, optimizer, master, rank, world, device,
                                 progress=bar.set_postfix_str)
            metrics = {"step": step + 1, **metrics, "time/data_wait": waited, "peak_mem_mb": peak_memory_mb(device)}
            history.append(metrics)
            log.append(metrics)
            bar.set_postfix_str(f"loss {metrics['loss']:.4f}  kl {metrics['kl/k1_mean']:.3f}  "
                                f"len {metrics['rollout/len_mean']:.0f}")
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


def preflight(cfg, rank=0, world=1, device=torch.device("cpu"), examples=None):
    """--preflight: the run's worst step, once, measured phase by phase (preflight.py); writes nothing."""
    check_config(cfg, world)
    examples = examples if examples is not None else data.load_examples(cfg.train_data, cfg.skip_bad_images)
    transformers.logging.disable_progress_bar()
    torch.manual_seed(cfg.seed + rank)
    student, processor, teacher, optimizer, master = build(cfg, rank, world, device)
    inputs = prepare(cfg, worst_case(examples, cfg), 0, rank, world, processor, teacher)
    meter = Meter(cfg, device)
    metrics = train_step(cfg, dataclasses.replace(inputs, max_length=True), student, processor, teacher, optimizer,
                         master, rank, world, device, progress=lambda text: None, seconds=meter)
    report = meter.report(cfg, world)
    if rank == 0:
        print(report)
    return meter, metrics


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
        (preflight if cfg.preflight else train)(cfg, rank, world, device)
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
