"""
Preflight: before a real run, run its WORST step once, phase by phase, on the real models and
settings, and say what it costs. The first command of a real run (README, "Real runs"):

    torchrun --standalone --nproc_per_node=8 train.py --student Qwen/Qwen3.5-4B --teacher Qwen/Qwen3.5-27B \\
        --train-data data/train.parquet --fsdp --shard-teacher --grad-checkpointing --preflight
    python train.py --student tiny:qwen2_5_vl --teacher tiny:qwen2_5_vl@1 --max-new-tokens 32 --preflight   # CPU

The models are loaded exactly as the run loads them (FSDP2, dtype, pixel bounds, budgets). The
worst step is built from the data: every prompt of each rank's batch is the example with the
largest image (after the pixel bounds every larger image costs the most visual tokens) with the
longest question of the data, and every answer is sampled to --max-new-tokens (EOS suppressed
until then). Then train.train_step runs once, the very step a run takes, with a Meter around each
phase: seconds, peak memory (the CUDA allocator's peak; on CPU the process's resident high-water
mark, reset before each phase), the headroom against the device's memory, and the projected wall
time of the whole run. An out-of-memory in a phase stops with a message naming the phase and the
budget flag to lower. Nothing is written: no checkpoint, no metrics, no run directory.
Tests: python -m pytest -q tests/test_preflight.py
"""

import contextlib
import dataclasses
import os
import time

import torch
import torch.distributed as dist

from parallel import all_sum

# The budget that bounds each phase's memory (config.py): what to lower when a phase does not fit.
BUDGETS = {"rollout": "rollout_tokens", "teacher": "score_tokens", "update": "update_tokens"}


def worst_case(examples, cfg):
    """The examples of the worst step: prompts_per_step copies of the example with the largest image
    (ties: the larger box, so the larger z+ crop), asking the longest question of the data."""
    def cost(ex):
        width, height = ex.size                              # image header only
        box = ex.bbox or (0, 0, 0, 0)
        return width * height, (box[2] - box[0]) * (box[3] - box[1])
    largest = max(examples, key=cost)
    longest = max((ex.question for ex in examples), key=len)
    return [dataclasses.replace(largest, question=longest)] * cfg.prompts_per_step


class Phases(dict):
    """Seconds per phase of a step ({"rollout": s, ...}); `with phases("rollout"):` times one."""

    @contextlib.contextmanager
    def __call__(self, name):
        start = time.perf_counter()
        yield
        self[name] = time.perf_counter() - start


class Meter(Phases):
    """Phases that also measure each phase's peak memory and name the budget an out-of-memory
    error asks to lower."""

    def __init__(self, cfg, device):
        super().__init__()
        self.cfg, self.device, self.peak = cfg, device, {}

    @contextlib.contextmanager
    def __call__(self, name):
        _reset_peak(self.device)
        try:
            with super().__call__(name):
                yield
        except (torch.OutOfMemoryError, MemoryError) as error:
            flag = BUDGETS.get(name)
            advice = (f"lower --{flag.replace('_', '-')} (now {getattr(self.cfg, flag)}) to hold fewer token "
                      "positions per forward" if flag else "use smaller models or more GPUs")
            raise SystemExit(f"preflight: out of memory in the {name} phase: {advice}; then run --preflight "
                             f"again. ({type(error).__name__}: {str(error)[:200]})") from None
        self.peak[name] = _peak_bytes(self.device)

    def report(self, cfg, world):
        """The table, every number over all ranks (the largest peak, the slowest phase). Every
        rank must call it (it reduces over ranks)."""
        names = [n for n in ("rollout", "teacher", "update") if n in self]
        peaks = all_sum([self.peak[n] for n in names], self.device, op=dist.ReduceOp.MAX)
        seconds = all_sum([self[n] for n in names], self.device, op=dist.ReduceOp.MAX)
        total = _device_bytes(self.device)
        where = "GPU allocator peak" if self.device.type == "cuda" else "resident high-water mark"
        lines = [f"preflight: the worst step ({cfg.prompts_per_step} prompts x G={cfg.group_size} on {world} "
                 f"rank(s), every answer {cfg.max_new_tokens} tokens); memory is the {where} of the busiest rank",
                 f"  {'phase':<8} {'seconds':>9} {'peak GiB':>9} {'headroom GiB':>13}   budget"]
        for name, peak, secs in zip(names, peaks, seconds):
            flag = BUDGETS[name]
            lines.append(f"  {name:<8} {secs:9.2f} {peak / 2**30:9.2f} {(total - peak) / 2**30:13.2f}   "
                         f"--{flag.replace('_', '-')} {getattr(cfg, flag)}")
        step = sum(seconds)
        lines.append(f"  device memory {total / 2**30:.1f} GiB. Projected: at most {step:.1f} s per step, "
                     f"{step * cfg.max_steps / 3600:.2f} h for --max-steps {cfg.max_steps} (answers that end "
                     "before --max-new-tokens take less; checkpoint saves not included)")
        return "\n".join(lines)


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    elif os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:   # Linux: "5" resets the peak resident size
            f.write("5")


def _peak_bytes(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    with open("/proc/self/status") as f:                 # VmHWM: the resident high-water mark, in kB
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) * 1024


def _device_bytes(device):
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemTotal")) * 1024
