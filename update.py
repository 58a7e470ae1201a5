"""
Phase 4 of a training step: the student update (paper Eqs. 23-24; Algorithm 1, lines 11-13), with
the machinery a real run needs around the three lines of the method (score, loss, backward):

    sums = update(cfg, student, optimizer, master, rollout, target_logp, weights, step, world, device)

- Mini-batches of whole groups, one optimizer step each (the release: 2 per rollout batch).
- Micro-batches of whole groups under a token budget (--update-tokens), gradients accumulated.
- The loss's denominator is the GLOBAL token count of the mini-batch (token-mean over all ranks and
  micro-batches, as the release), so splitting it changes nothing.
- Equal micro-batch counts on every rank (FSDP2 reduce-scatters in each backward, all ranks together).
- fp32 master weights for a bf16 model (parallel.MasterWeights), the grad-norm clip, and two guards:
  a non-finite loss or gradient skips the update on every rank; weights an update made non-finite
  stop the run naming the step.
train.py's train_step calls it; tests: tests/test_train.py, tests/test_parallel.py.
"""

import math

import torch.distributed as dist
import torch

from loss import opd_loss
from model import select_prompts
from parallel import all_sum, gathered, sync_grads
from prefix import packs


def update(cfg, student, optimizer, master, ro, target_logp, weights, step, world, device, progress=print):
    """Every mini-batch of the rollout `ro`: the student's log-probs with grad, the gated loss toward
    `target_logp` [B*G, T] with `weights` [B*G] (or [B*G, T]), backward, clip, AdamW step. step: the
    step's index, for messages.
    Returns sums over the mini-batches: loss and grad_norm (means), k1 and clip (token-weighted sums
    of this rank), skipped (updates skipped by the guard)."""
    G, mask = cfg.group_size, ro.response_mask                                   # [B*G, T]
    groups_per_mini = len(mask) // G // cfg.mini_batches
    prompt_lens = ro.prompt_inputs["attention_mask"].sum(1).tolist()              # [B] real tokens
    sums = dict(loss=0.0, k1=0.0, clip=0.0, grad_norm=0.0, skipped=0.0)
    for mini in range(cfg.mini_batches):
        groups = range(mini * groups_per_mini, (mini + 1) * groups_per_mini)
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
                progress(f"update {mini + 1}/{cfg.mini_batches}: micro-batch {i + 1}/{len(micro)}")
                sync_grads(student, last=i == len(micro) - 1)
                answers = torch.tensor(answers)
                # Answer row r belongs to prompt r // G: its index among this micro-batch's prompts.
                local = torch.searchsorted(torch.tensor(prompt_ids), answers // G)
                # The method: log pi_s(y_k | x, y_<k) with grad [n, T] (the prompt encoded once,
                # prefix.GroupScorer), the gated loss (Eqs. 23-24), backward.
                logp = student(select_prompts(ro.prompt_inputs, prompt_ids).to(device), local.to(device),
                               ro.response_ids[answers], mask[answers])
                loss, stats = opd_loss(logp, ro.old_logp[answers], target_logp[answers], mask[answers],
                                       weights[answers], estimator=cfg.estimator, clip_eps=cfg.clip_eps,
                                       dual_clip=cfg.dual_clip, kl_clamp=cfg.kl_clamp, agg=cfg.agg,
                                       num_tokens=num_tokens, num_seqs=num_seqs)
                # DDP/FSDP average gradients over ranks; the loss is already a global mean: undo it.
                (loss * world * scale).backward()
                mini_loss += loss.item() * scale
                # Logged sums stay tensors (float64): no device sync per micro-batch for them.
                sums["k1"] += stats["kl/k1_mean"] * stats["tokens"] * scale
                sums["clip"] += stats["ppo/clip_frac"] * stats["tokens"] * scale
        grad_norm, mini_loss, stepped = optimizer_step(cfg, optimizer, master, mini_loss, device,
                                                        where=f"step {step + 1}, update {mini + 1}")
        sums["skipped"] += not stepped
        sums["loss"] += mini_loss / cfg.mini_batches
        sums["grad_norm"] += grad_norm / cfg.mini_batches
    optimizer.zero_grad(set_to_none=True)
    return {k: float(v) for k, v in sums.items()}


def optimizer_step(cfg, optimizer, master, mini_loss, device, where):
    """Clip and step, unless the loss or the gradient is not finite (then on no rank). Returns
    (grad norm, the mini-batch's loss summed over ranks, whether the step was taken)."""
    master.collect_grads()                   # bf16 gradients into the fp32 master copies, if any
    grad_norm = torch.nn.utils.clip_grad_norm_(master.params, cfg.grad_clip)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    # Guard: a non-finite loss or gradient anywhere skips this update on every rank (the grad norm
    # is already global; the loss is summed over ranks, so a NaN on one rank reaches all).
    mini_loss, = all_sum([mini_loss], device)
    if not (math.isfinite(mini_loss) and math.isfinite(grad_norm)):
        return grad_norm, mini_loss, False
    optimizer.step()
    master.publish()                         # the stepped fp32 weights back into the bf16 model
    # Cheap, and it names the step: a finite gradient can still step weights to inf / NaN.
    shards = [p.to_local() if hasattr(p, "to_local") else p for p in master.params]
    broken, = all_sum([int(sum(~torch.isfinite(p).all() for p in shards))], device)   # one sync
    if broken:
        raise RuntimeError(f"{where}: the optimizer step made {int(broken)} weight tensor(s) non-finite (lr {cfg.lr}). "
                           "The last checkpoint is intact: resume from it with a lower --lr")
    return grad_norm, mini_loss, True


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
            rows = [r for i in pack for r in range(groups[i] * G, (groups[i] + 1) * G)]
            out.append(([groups[i] for i in pack], rows, 1.0))
    return out
