"""
How the models are spread over ranks: DDP / FSDP2 wrapping, gathering sharded parameters for a
phase, and the few cross-rank reductions a step needs. torch only; `model.setup_distributed`
starts the process group.

    shard_fsdp(model)                      # FSDP2: every transformer block its own unit, then the root
    with lockstep(teacher_model): ...      # a sharded model: every rank runs as many forwards
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
    """FSDP2 (in place): every transformer block of the language model is a unit, the rest (vision
    tower, embeddings, final norm, lm_head) is the root unit. So every forward of the model runs the
    same collectives whether or not it carries images: what `lockstep` relies on."""
    for layer in net.model.language_model.layers:
        fully_shard(layer)
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


@contextlib.contextmanager
def lockstep(model):
    """For a model that stays sharded (the teacher): every forward gathers its blocks from all
    ranks, so the ranks must run their forwards together, though their data (prompt lengths, how
    many forwards a token budget needs) differ. Before each forward a rank says so (a one-number
    all-reduce, as transformers' synced_gpus does per decoded token); a rank that is done keeps
    answering with one-token forwards until no rank has work. No-op unless `model` is FSDP2-sharded
    over several ranks."""
    if not (isinstance(model, FSDPModule) and dist.is_initialized() and dist.get_world_size() > 1):
        yield
        return
    device = next(model.parameters()).device
    working = lambda flag: all_sum([flag], device)[0] > 0

    def announce(module, args):      # returns None: a pre-hook's return value would replace the arguments
        working(1)
    hook = model.register_forward_pre_hook(announce)
    try:
        yield
    finally:
        hook.remove()
    with torch.no_grad():
        while working(0):
            model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False, logits_to_keep=1)


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
