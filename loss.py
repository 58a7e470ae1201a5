"""
Gated dense distillation: the V-Zero loss (paper Eqs. 2-7 and 21-24). Plain OPD is weights = 1.

On-policy distillation minimises the per-token reverse KL KL(pi_s || pi_t) on the student's own
samples (Eqs. 3-4), estimated from the sampled token alone (Eq. 5 / Eq. 23):

    d_k = sg[ log pi_s(y_k | x, y<k) - log pi_t(y_k | x, z+, y<k) ]              Eq. 23

and V-Zero scales each response's tokens by its gate weight w (gate.py, Eq. 20):

    L = 1/G sum_g w_g 1/T_g sum_k d_k * log pi_s(y_k | x, y<k)                    Eq. 24

Two estimators:
- "k1" (the released recipe): Eq. 24 in policy-gradient form. Advantage A_k = -w * clamp(d_k),
  fed to a PPO clipped surrogate with the sampling-time log-probs as the old policy, plus the
  dual clip. At ratio 1 (the first mini-batch after a rollout) its gradient is w * d_k *
  grad log pi_s: exactly Eq. 24's, up to the aggregation.
- "k3": the low-variance estimator exp(t - s) - (t - s) - 1 of KL(pi_s || pi_t), backpropagated
  directly (its gradient flows through log pi_s inside the expression).

Aggregation: "token-mean" (the release: sum over every valid token of the mini-batch, divided by
the GLOBAL token count across micro-batches and ranks) or "seq-mean-token-mean" (the paper's
Eq. 24: mean over each response's tokens, then over responses).

Pure tensor math, torch only:
    loss, stats = opd_loss(logp, old_logp, teacher_logp, mask, weights)
"""

import torch

ESTIMATORS = ("k1", "k3")
AGGREGATIONS = ("token-mean", "seq-mean-token-mean")


def opd_loss(logp, old_logp, teacher_logp, mask, weights, *, estimator="k1", clip_eps=0.2,
             dual_clip=3.0, kl_clamp=10.0, agg="token-mean", num_tokens=None, num_seqs=None):
    """Scalar loss (with grad through `logp` only) and a dict of 0-dim tensor stats (no device sync
    here: the caller reads what it logs, train.py syncs once per mini-batch).

    logp: [N, T] current student log-probs of the sampled tokens, WITH grad.
    old_logp: [N, T] the student's log-probs at sampling time (rollout.py), no grad.
    teacher_logp: [N, T] the teacher's log-probs under the positive view (x, z+), no grad.
    mask: [N, T] True at real response tokens. weights: [N] gate weights (all ones = plain OPD), or
    [N, T] token-level weights (docs/extending.md).
    num_tokens / num_seqs: global normalisers for token-mean / seq-mean-token-mean when one batch
    is split over micro-batches or ranks (None = this call's own count).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"opd_loss: estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if agg not in AGGREGATIONS:
        raise ValueError(f"opd_loss: agg must be one of {AGGREGATIONS}, got {agg!r}")
    if not (logp.shape == old_logp.shape == teacher_logp.shape == mask.shape) or logp.dim() != 2:
        raise ValueError(f"opd_loss: logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)}, "
                         f"teacher_logp {tuple(teacher_logp.shape)}, mask {tuple(mask.shape)} "
                         f"must all be the same [N, T] shape")
    if weights.shape not in (logp.shape[:1], logp.shape):
        raise ValueError(f"opd_loss: weights must be [N]=[{logp.shape[0]}] or [N, T]={list(logp.shape)}, got "
                         f"{tuple(weights.shape)}")
    if not 0 < clip_eps < 1 or dual_clip <= 1 or kl_clamp <= 0:
        raise ValueError(f"opd_loss: need 0 < clip_eps < 1, dual_clip > 1, kl_clamp > 0; got "
                         f"{clip_eps}, {dual_clip}, {kl_clamp}")

    mask = mask.bool()
    # Zero every input at padding positions first, so padding values (possibly -inf) can never
    # produce NaN in the loss or its gradient: there the ratio is 1, d is 0, the term is 0.
    logp = torch.where(mask, logp, 0.0)
    old_logp = torch.where(mask, old_logp.detach(), 0.0)
    teacher_logp = torch.where(mask, teacher_logp.detach(), 0.0)
    w = weights.detach().to(logp.dtype)                            # stop-gradient (Eq. 20)
    w = w[:, None] if w.dim() == 1 else w                          # [N, 1] per answer, or [N, T] per token

    # Eq. 23: the sampled reverse-KL estimate ("k1"), with the CURRENT student detached, clamped
    # to +-kl_clamp so a single token the teacher finds absurd cannot dominate the batch.
    # OPD as negative-free stop-gradient alignment (paper Sec. 2, Eqs. 9-13): the student is the
    # online branch and the teacher a stop-gradient target. d_k is a constant here, so the only
    # gradient path is through log pi_s below; the teacher term carries no gradient, and no
    # negative pushes the student away from anything. That is why OPD corrects tokens but never
    # judges whole trajectories, and why V-Zero adds the gate w on top.
    k1 = logp.detach() - teacher_logp                               # [N, T]
    d = k1.clamp(-kl_clamp, kl_clamp)
    ratio = torch.exp((logp - old_logp).clamp(-20.0, 20.0))         # [N, T], 1 on the first update
    clipped = torch.zeros_like(mask)

    if estimator == "k1":
        # Eq. 24 in policy-gradient form: per-token reward -d_k, scaled by the response's gate.
        advantage = -w * d                                          # [N, T]
        # PPO clipped surrogate: the loss is the larger (more pessimistic) of the two terms.
        loss_unclipped = -advantage * ratio
        loss_clipped = -advantage * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
        per_token = torch.maximum(loss_unclipped, loss_clipped)
        # Dual clip: for A < 0 a huge ratio would give an unbounded loss; cap it at -A * dual_clip.
        loss_dual = -advantage * dual_clip
        per_token = torch.where(advantage < 0, torch.minimum(per_token, loss_dual), per_token)
        clipped = (loss_clipped > loss_unclipped) & (ratio != 1.0) & mask      # the ratio clip bit
    else:
        # k3 = exp(t - s) - (t - s) - 1 >= 0, with t - s clamped to keep exp finite, and the
        # result clamped to kl_clamp like k1. The gradient flows through s = log pi_s.
        t_minus_s = (teacher_logp - logp).clamp(-20.0, 20.0)
        k3 = torch.exp(t_minus_s) - t_minus_s - 1.0
        per_token = w * k3.clamp(-kl_clamp, kl_clamp)

    per_token = torch.where(mask, per_token, 0.0)                   # [N, T]
    tokens_here = mask.sum()
    if agg == "token-mean":
        # Every valid token of the (global) mini-batch counts once: long responses weigh more.
        denom = tokens_here if num_tokens is None else torch.as_tensor(num_tokens)
        loss = per_token.sum() / denom.clamp(min=1)
    else:
        # Eq. 24 (and Algorithm 1): 1/T_g inside each response, then the mean over responses.
        # A response with no tokens contributes nothing and is not counted.
        row_tokens = mask.sum(dim=1)                                # [N]
        row_mean = per_token.sum(dim=1) / row_tokens.clamp(min=1)   # [N]
        denom = (row_tokens > 0).sum() if num_seqs is None else torch.as_tensor(num_seqs)
        loss = row_mean.sum() / denom.clamp(min=1)

    # What train.py logs, as 0-dim tensors; means over this call's tokens in float64, so a caller
    # can weight them by "tokens" and sum micro-batches exactly.
    n = tokens_here.clamp(min=1)
    stats = {
        "kl/k1_mean": (k1 * mask).sum().double() / n,               # teacher KL estimate (Eq. 5)
        "ppo/clip_frac": clipped.sum().double() / n,                # tokens whose ratio was clipped
        "tokens": tokens_here,
    }
    return loss, stats
