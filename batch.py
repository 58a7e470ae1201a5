"""
What a training step needs before any model runs: this rank's prompts of the step (the data
order), their views x, z+, z- as the run's method cuts them (method.views_of), and the encoded
prompts of the student and of the teacher's views. train.py prepares the next step's in a background
thread while the current step runs (image decoding, crops and resizing are CPU work: ~1.5 s per
4096^2 image here, paid once per image per step).

    inputs = prepare(cfg, examples, step, rank, world, processor, teacher)     # a StepInputs
Tests: tests/test_train.py (resume is exact: the order is a function of the step), tests/test_run.py.
"""

import time
from dataclasses import dataclass

import torch

import data
import model as vlm
from method import METHODS, views_of

# The data order's seed: seed * 100_003 + epoch, a prime stride so the orders of different base seeds
# start apart. Part of what a run IS (another value orders the data otherwise): it stays.
EPOCH_SEED_STRIDE = 100_003


# Data order: a seeded permutation per epoch; step s takes the next prompts_per_step of the
# stream and rank r every world-th of them. The position is a function of the step: resume is exact.
# Returns this rank's [(stream position, example)]; the position also seeds per-prompt sampling.
def prompts_for_step(examples, step, cfg, rank, world):
    P, n = cfg.prompts_per_step, len(examples)
    orders, batch = {}, []
    for pos in range(step * P, (step + 1) * P):
        epoch, i = divmod(pos, n)
        if epoch not in orders:                              # one permutation per epoch
            seed = cfg.seed * EPOCH_SEED_STRIDE + epoch
            orders[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        batch.append((pos, examples[int(orders[epoch][i])]))
    return data.shard(batch, rank, world)


@dataclass
class StepInputs:
    """What a step needs before any model runs (see the top of this file); `prepare` makes it."""
    step: int
    positions: list           # global stream positions of the examples (they seed per-prompt sampling)
    examples: list
    student_prompts: dict     # [B, P] (model.student_prompts)
    teacher_prompts: object   # teacher.TeacherPrompts of the views the method replays
    seconds: float
    bad_images: int = 0       # replaced by other prompts of the batch (--skip-bad-images)
    max_length: bool = False  # sample every answer to --max-new-tokens (the preflight's worst case)


def prepare(cfg, examples, step, rank, world, processor, teacher):
    start = time.perf_counter()
    method = METHODS[cfg.method]
    batch = prompts_for_step(examples, step, cfg, rank, world)
    views, bad = [], []
    for _, ex in batch:
        try:
            views.append(views_of(ex, cfg))
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
    teacher_inputs = teacher.prompts(full, questions, pos_crops=pos, neg_crops=neg, views=method.views, pixels=pixels)
    return StepInputs(step, [p for p, _ in batch], examples, student_inputs, teacher_inputs,
                      time.perf_counter() - start, len(bad))
