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

    save(out_dir, step, cfg_dict, model, processor, master, optimizer, rank, compute_dtype, keep_last)
    ckpt = latest(out_dir); step = restore(ckpt, model, master, optimizer, rank, device)

A checkpoint is written to ckpt-NNNNNN.tmp and renamed when complete: a killed run never leaves a
half checkpoint under a name `latest` reads. (With several nodes, out_dir must be on a shared
filesystem: every rank writes its part of train_state/ into the same directory.)
"""

import json
import os
import re
import shutil

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from model import save_model_dir

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
    dcp.save(_optimizer_state(model, master, optimizer, with_master), checkpoint_id=os.path.join(tmp, "train_state"),
             no_dist=not dist.is_initialized())
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
    dcp.load(state, checkpoint_id=os.path.join(ckpt, "train_state"), no_dist=not dist.is_initialized())
    master.publish()                      # bf16 model weights = the restored fp32 master, rounded
    trainer = torch.load(os.path.join(ckpt, "trainer.pt"), map_location="cpu", weights_only=False)
    rng = trainer["rng"][rank]
    torch.set_rng_state(rng["cpu"])
    if rng["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"])
    return trainer["step"]
