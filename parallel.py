"""
How the models are spread over ranks and kept in precision: FSDP2 sharding (with bf16 compute over
fp32 shards) and loading, gathering sharded parameters for a phase, fp32 master weights for a bf16
model without FSDP, the few cross-rank reductions a step needs, and the process group's start and
end. torch only.

    rank, world, device = setup_distributed()          # torchrun's environment, or a world of one
    model, proc = load_sharded(load, rank, device, torch.bfloat16)   # read once per node, sharded
    shard_fsdp(model)                      # FSDP2: every transformer block its own unit, then the root
    with lockstep(teacher_model): ...      # a sharded model: every rank runs as many forwards
    with gathered(model):                  # FSDP2: parameters gathered once, for a whole phase
        ...                                # (sampling, an update mini-batch): no per-forward all-gather
    total, = all_sum([x], device)          # a list of floats summed (or max-ed) over ranks

Why `gathered`: FSDP2 gathers a unit's parameters at each forward of it and frees them after.
`generate` runs one forward per new token, so a rollout would gather the whole model per token.
And the update's shared-prefix forward (prefix.py) uses every block twice, the prompt call and the
answer call, with the answers' backward flowing into the prompt's keys/values: FSDP2 would free a
block after the answer call's backward while the prompt call's backward still needs it. Both are
solved by gathering once for the phase and freeing once after it.
"""

import contextlib
import gc
import math
import os

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

import data


def shard_fsdp(net, compute_dtype=None):
    """FSDP2 (in place): every transformer block of the language model is a unit, the rest (vision
    tower, embeddings, final norm, lm_head) is the root unit. So every forward of the model runs the
    same collectives whether or not it carries images: what `lockstep` relies on.
    compute_dtype (e.g. bf16 for fp32 parameters): FSDP2's mixed precision. Each rank keeps its fp32
    shard (the optimizer's master weights); gathered parameters, activations and KV caches are in
    compute_dtype; gradients are reduced in fp32."""
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) \
        if compute_dtype is not None and compute_dtype != next(net.parameters()).dtype else MixedPrecisionPolicy()
    for layer in net.model.language_model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(net, mp_policy=policy)
    return net


def load_sharded(load, rank, device, compute_dtype=None):
    """An FSDP2-sharded model read from disk ONCE per node: rank 0 reads the weights (on CPU), every
    rank builds the model on the meta device (no memory), shards it, and receives its shards from rank 0
    (torch.distributed.checkpoint's broadcast_from_rank0). Host memory: one copy of the model, not
    one per rank (a 27B teacher is 54 GB in bf16). `load(device=...)` -> (model, processor)."""
    model, processor = load(device="meta")
    state, buffers = {}, {}
    if rank == 0:
        source, _ = load(device="cpu")
        state, buffers = source.state_dict(), dict(source.named_buffers())
    shard_fsdp(model, compute_dtype)
    model.to_empty(device=device)
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    # Buffers a state dict does not hold (rotary inverse frequencies) come from rank 0 too.
    for name, buffer in model.named_buffers():
        if rank == 0:
            buffer.copy_(buffers[name])
        dist.broadcast(buffer, src=0)
    return model, processor


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
        try:
            unit.unshard()
        except torch.OutOfMemoryError as error:
            raise RuntimeError("the FSDP-sharded student is gathered whole on every GPU for sampling and for the "
                               "update (2 bytes per parameter in bf16), and it does not fit beside the rest: use a "
                               "smaller student, lower --rollout-tokens / --update-tokens, or more memory") from error
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


def sync_grads(model, last):
    """Before each micro-batch's backward: do its gradients cross ranks? DDP all-reduces once, on
    the last micro-batch of a mini-batch (the others accumulate locally). FSDP2 reduce-scatters
    every micro-batch: accumulating without it would hold the full unsharded fp32 gradients (18 GB
    for a 4.5B student), with it each rank accumulates its 1/world shard."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model.require_backward_grad_sync = last


class MasterWeights:
    """The fp32 parameters the optimizer steps. Where the model computes in fp32 (CPU), or FSDP2
    keeps fp32 shards and casts them for compute (shard_fsdp), they ARE the model's parameters. A
    bf16 model that is not FSDP-sharded (one GPU, DDP) gets fp32 copies here: its bf16 gradients are
    copied in before the step (`collect_grads`), the stepped weights copied back after (`publish`),
    so small updates (lr 1e-6 on weights of ~1e-2) are not rounded away in bf16."""

    def __init__(self, model):
        self.model_params = [p for p in model.parameters() if p.requires_grad]
        copies = any(p.dtype != torch.float32 for p in self.model_params)
        self.params = [p.detach().float().clone().requires_grad_() for p in self.model_params] if copies \
            else self.model_params

    def collect_grads(self):
        if self.params is not self.model_params:
            for p, master in zip(self.model_params, self.params):
                master.grad = None if p.grad is None else p.grad.float()
                p.grad = None

    @torch.no_grad()
    def publish(self):
        if self.params is not self.model_params:
            for p, master in zip(self.model_params, self.params):
                p.copy_(master)


def fp32_allreduce(state, bucket):
    """A DDP communication hook: average a bucket of bf16 gradients in fp32 (bf16 sums lose the
    small gradients of a low learning rate), then hand them back in their own dtype."""
    grads = bucket.buffer()
    total = grads.float() / dist.get_world_size()
    return dist.all_reduce(total, async_op=True).get_future().then(lambda fut: grads.copy_(fut.value()[0]))


def all_sum(values, device, op=dist.ReduceOp.SUM):
    """A list of floats reduced over ranks in one collective; identity on one process."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t.tolist()


def setup_distributed():
    """(rank, world size, device) from torchrun's environment (RANK / WORLD_SIZE / LOCAL_RANK):
    nccl on GPUs, gloo on CPUs. A plain `python` process is a world of one and starts no group."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)  # before init: nccl's object collectives use the current device
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def end_distributed():
    """Leave the process group once every rank is done with it, and after the models that use it
    are gone (call it outside the function that held them): with gloo, a rank that tears the group
    down while another still talks to it, or while a DDP / FSDP2 model still holds it, aborts at
    exit ("terminate called without an active exception", 1 run in 5 here). After an error, don't
    call it: the others may never arrive; torchrun stops them."""
    if dist.is_initialized():
        gc.collect()                     # models caught in reference cycles go now, not at exit
        dist.barrier()
        dist.destroy_process_group()


# Evaluation's sharding: each rank scores every world-th item, all ranks get all results.
def world_of(distributed=None):
    # (rank, world size) of this call: sharded over the process group if there is one (or if told).
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    return (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)


def gather_lists(items, world_size):
    # Every rank's list of picklable records -> their concatenation, on every rank. Also a barrier.
    if world_size == 1:
        return items
    parts = [None] * world_size
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def share_of(n, rank, world_size):
    # This rank's positions in a list of n (strided: each exactly once over the ranks), and the
    # same padded with a repeat to ceil(n / world) so that every rank makes the same number of
    # generate calls (an FSDP-sharded model must step in lockstep). Padding results are dropped.
    share = data.shard(list(range(n)), rank, world_size, drop_last=False) if n else []
    return share, share + [share[-1] if share else 0] * (math.ceil(n / world_size) - len(share))
