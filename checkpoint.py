"""
A run's checkpoints: model directories any transformers / vLLM user loads like a hub checkpoint,
with the exact training state beside them, written atomically, pruned to the last few.

    out_dir/ckpt-000010/
      config.json, generation_config.json, model*.safetensors     the student, in its compute dtype
      tokenizer*, chat_template.jinja, processor_config.json      its family's standard processor
      train_state/        torch.distributed.checkpoint, written by every rank in parallel (its own
                          shards under FSDP2): the fp32 master weights where they differ from the
                          saved ones (bf16 runs), and AdamW's moments
      trainer.pt          step and the RNG state of every rank
      train_config.json   the run's Config

    ckpt = open_run(out_dir, cfg_dict, free, resume, overwrite, rank)   # a fresh start or a resume?
    step = restore(ckpt, model, master, optimizer, rank, device)
    log = MetricsLog(out_dir, step, rank); log.append({"step": step + 1, ...})
    save(out_dir, step, cfg_dict, model, processor, master, optimizer, rank, compute_dtype, keep_last)

A checkpoint is written to ckpt-NNNNNN.tmp and renamed when complete: a killed run never leaves a
half checkpoint under a name `latest` reads. (With several nodes, out_dir must be on a shared
filesystem: every rank writes its part of train_state/ into the same directory.) A run may resume
on another number of ranks: the sharded state is re-cut on load (DCP), the data of a step is the
same global batch.
"""

import json
import os
import re
import shutil
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict


# The standard processor of each family: what AutoProcessor, vLLM and evaluation toolkits load.
STANDARD_PROCESSORS = {"qwen2_vl": ("Qwen2VLProcessor", "Qwen2VLVideoProcessor"),
                       "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"),
                       "qwen3_vl": ("Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
                       "qwen3_vl_moe": ("Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
                       "qwen3_5": ("Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
                       "qwen3_5_moe": ("Qwen3VLProcessor", "Qwen3VLVideoProcessor")}


def save_model_dir(model, processor, path, state_dict=None):
    """Write a model directory of the model's own family: weights (safetensors), config, generation
    config, tokenizer, chat template, and the processor under its family's standard class, so
    `AutoModelForImageTextToText` and `AutoProcessor` (with torchvision), vLLM and evaluation
    toolkits load it like a hub checkpoint; `load` reads it everywhere. state_dict: the weights to
    write (e.g. gathered from FSDP2 shards); default the model's own."""
    model.save_pretrained(path, state_dict=state_dict)
    processor.save_pretrained(path)
    # Our image-only processor class is this project's (it exists because the stock ones need
    # torchvision for video); the files name the family's class and describe its video processor
    # (the family's defaults for everything but the patch geometry, which images and videos share).
    config_path = os.path.join(path, "processor_config.json")
    with open(config_path) as f:
        config = json.load(f)
    processor_class, video_class = STANDARD_PROCESSORS[model.config.model_type]
    image = config["image_processor"]
    config["processor_class"] = processor_class
    config["video_processor"] = {"video_processor_type": video_class, "processor_class": processor_class,
                                 **{k: image[k] for k in ("patch_size", "temporal_patch_size", "merge_size",
                                                          "image_mean", "image_std")}}
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)


NAME = re.compile(r"ckpt-(\d{6})")      # only these count: not .tmp, not a user's ckpt-000003.bak


def checkpoints(out_dir):
    """Complete checkpoints in out_dir, oldest first."""
    names = sorted(d for d in os.listdir(out_dir) if NAME.fullmatch(d)) if os.path.isdir(out_dir) else []
    return [os.path.join(out_dir, d) for d in names]


def latest(out_dir):
    found = checkpoints(out_dir)
    return found[-1] if found else None


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def _optimizer_state(model, master, optimizer, with_master):
    # Named tensors: {"master": {name: fp32 weight}, "exp_avg": ..., "exp_avg_sq": ..., "step": ...}.
    # Under FSDP2 these are each rank's shards (DTensors); DCP writes every shard once, in parallel.
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    state = {k: {} for k in ("exp_avg", "exp_avg_sq", "step")}
    for name, p in zip(names, master.params):
        if p not in optimizer.state:     # a fresh optimizer (restore): AdamW's state, to be loaded into
            optimizer.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                  "exp_avg_sq": torch.zeros_like(p)}
        for k in state:
            state[k][name] = optimizer.state[p][k]
    if with_master:
        state["master"] = dict(zip(names, master.params))
    return state


def save(out_dir, step, cfg_dict, model, processor, master, optimizer, rank, compute_dtype, keep_last=None):
    """Every rank calls this (collectives inside). Returns the checkpoint's path."""
    final = os.path.join(out_dir, f"ckpt-{step:06d}")
    tmp = final + ".tmp"
    # The model directory: full weights gathered on rank 0 (CPU), cast to the compute dtype.
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    rngs = [rng]
    if dist.is_initialized():
        rngs = [None] * dist.get_world_size()
        dist.all_gather_object(rngs, rng)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        save_model_dir(model, processor, tmp, {k: v.to(compute_dtype) for k, v in weights.items()})
        torch.save({"step": step, "rng": rngs}, os.path.join(tmp, "trainer.pt"))
        with open(os.path.join(tmp, "train_config.json"), "w") as f:
            json.dump(cfg_dict, f, indent=2)
    _barrier()
    # The fp32 master weights are needed where the saved ones were rounded (a bf16 run).
    with_master = compute_dtype != torch.float32
    with warnings.catch_warnings():      # one process: DCP says it assumes so
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(_optimizer_state(model, master, optimizer, with_master),
                 checkpoint_id=os.path.join(tmp, "train_state"), no_dist=not dist.is_initialized())
    _barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if keep_last:
            for old in checkpoints(out_dir)[:-keep_last]:
                shutil.rmtree(old)
    _barrier()
    return final


def restore(ckpt, model, master, optimizer, rank, device):
    """Load train_state/ into the optimizer (and the master weights, if saved) and this rank's RNG;
    the model's weights were loaded from the checkpoint's model directory. Returns the step."""
    has_master = any(k.startswith("master.") for k in dcp.FileSystemReader(os.path.join(ckpt, "train_state"))
                     .read_metadata().state_dict_metadata)
    state = _optimizer_state(model, master, optimizer, has_master)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=os.path.join(ckpt, "train_state"), no_dist=not dist.is_initialized())
    master.publish()                      # bf16 model weights = the restored fp32 master, rounded
    trainer = torch.load(os.path.join(ckpt, "trainer.pt"), map_location="cpu", weights_only=False)
    if rank < len(trainer["rng"]):       # a rank the saved run did not have keeps its seeded RNG
        rng = trainer["rng"][rank]
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"])
    return trainer["step"]


# ----------------------------------------------------------------------------------------------
# The run directory: one run per out_dir, resumed only under the settings that define it.
def open_run(out_dir, cfg, free, resume, overwrite, rank):
    """Decide what this start is, before any model loads; every rank calls it (rank 0 writes).
    Returns the checkpoint to resume from, or None. cfg: the run's settings (a dict); free: the
    names of those that may change on resume (limits, intervals, memory budgets); the others define
    the run and must match the saved ones. resume: "no", "yes" (a checkpoint must exist) or
    "auto" (resume if one exists: the restart loop of preemptible nodes)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out-dir {out_dir} is a file, not a directory")
    found = latest(out_dir)
    holds_run = found is not None or any(os.path.exists(os.path.join(out_dir, f))
                                         for f in ("metrics.jsonl", "train_config.json"))
    if resume == "yes" and found is None:
        raise ValueError(f"--resume: no checkpoint (ckpt-NNNNNN) in {out_dir}; --resume auto starts fresh then")
    ckpt = found if resume in ("yes", "auto") else None
    if ckpt is None and holds_run and not overwrite:
        raise ValueError(f"{out_dir} already holds a run: continue it with --resume, start over in it with "
                         "--overwrite (deletes its checkpoints and metrics), or choose another --out-dir")
    if ckpt is not None:
        with open(os.path.join(ckpt, "train_config.json")) as f:
            saved = json.load(f)
        differ = [(k, saved.get(k, "<absent>"), v) for k, v in cfg.items() if k not in free and saved.get(k, "<absent>") != v]
        if differ:
            raise ValueError(f"--resume from {ckpt}: these settings define the run and differ from the saved ones "
                             "(saved -> now): " + "; ".join(f"{k} {a!r} -> {b!r}" for k, a, b in differ)
                             + ". Resume with the saved values, or start a new run in another --out-dir")
        changed = [(k, saved[k], v) for k, v in cfg.items() if k in free and k in saved and saved[k] != v]
        if changed and rank == 0:
            print("resuming with changed settings (saved -> now): " + "; ".join(f"{k} {a} -> {b}" for k, a, b in changed))
    _barrier()                           # every rank has looked before rank 0 writes
    if rank == 0:
        if ckpt is None and holds_run:   # --overwrite
            for path in checkpoints(out_dir):
                shutil.rmtree(path)
            for name in ("metrics.jsonl", "train_config.json"):
                if os.path.exists(os.path.join(out_dir, name)):
                    os.remove(os.path.join(out_dir, name))
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "train_config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
    _barrier()
    return ckpt


class MetricsLog:
    """metrics.jsonl: one JSON line per step, appended and flushed as each step ends. Opened after
    a resume has restored its checkpoint: it keeps the lines of the steps that checkpoint holds
    and drops later ones (a killed run logged steps it never saved), and drops a last line cut short
    by a crash, with a warning. Any other unreadable line is an error naming it. Rank 0 writes."""

    def __init__(self, out_dir, resumed_step, rank):
        self.path, self.rank = os.path.join(out_dir, "metrics.jsonl"), rank
        if rank != 0:
            return
        kept = []
        if resumed_step and os.path.exists(self.path):
            with open(self.path) as f:
                lines = f.read().split("\n")
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    if n != len(lines):      # only the very last line, with no newline after it
                        raise ValueError(f"{self.path} line {n} is not JSON: {line[:80]!r}") from None
                    print(f"warning: {self.path} line {n} was cut short by a crash; dropped: {line[:80]!r}")
                    continue
                if record["step"] <= resumed_step:
                    kept.append(json.dumps(record) + "\n")
        # Rewritten whole, atomically: a crash now leaves the old file or the new one.
        with open(self.path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(self.path + ".tmp", self.path)

    def append(self, record):
        if self.rank == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
