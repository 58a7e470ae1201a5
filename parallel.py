"""
How the models are spread over ranks: DDP / FSDP2 wrapping, gathering sharded parameters for a
phase, and the few cross-rank reductions a step needs. torch only; `model.setup_distributed`
starts the process group.

    shard_fsdp(model)                      # FSDP2: every transformer block its own unit, then the root
    with gathered(model):                  # FSDP2: parameters gathered once, for a whole phase
        ...                                # (sampling, an update micro-batch): no per-forward collectives
    total, = all_sum([x], device)          # a list of floats summed (or max-ed) over ranks

Why `gathered`: FSDP2 gathers a unit's parameters at each forward of it and frees them after.
`generate` runs one forward per new token, so a rollout would gather the whole model per token.
And the update's shared-prefix forward (prefix.py) uses every block twice, the prompt call and the
answer call, with the answers' backward flowing into the prompt's keys/values: FSDP2 would free a
block after the answer call's backward while the prompt call's backward still needs it. Both are
solved by gathering once for the phase and freeing once after it.
"""

import contextlib

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, fully_shard


def shard_fsdp(net):
    """FSDP2 (in place): the vision tower is its own unit, then every transformer block (the
    model's `_no_split_modules`), then the root (embeddings, final norm, lm_head)."""
    blocks = set(getattr(net, "_no_split_modules", None) or [])
    for module in list(net.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(net.model.visual)
    fully_shard(net)
    return net


def fsdp_units(model):
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(model):
    """Inside: every FSDP2 unit of `model` holds its full parameters (one all-gather each, on entry)
    and keeps them through forwards and backwards; on exit they are sharded again. Gradients are
    still reduce-scattered by the backward (when gradient sync is on). No-op for other models."""
    units = fsdp_units(model)
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.set_reshard_after_backward(False, recurse=False)
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)
            unit.set_reshard_after_backward(True, recurse=False)


def sync_grads(model, enabled):
    """Gradient all-reduce (DDP) / reduce-scatter (FSDP2) on the next backward or not: off for all
    but the last micro-batch of a mini-batch, so gradients cross ranks once per optimizer step."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model.require_backward_grad_sync = enabled
    for unit in fsdp_units(model):
        unit.set_requires_gradient_sync(enabled, recurse=False)


def all_sum(values, device, op=dist.ReduceOp.SUM):
    """A list of floats reduced over ranks in one collective; identity on one process."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t.tolist()
