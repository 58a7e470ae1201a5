"""
The contrastive evidence gate of V-Zero (paper Eqs. 17-20): one weight per sampled response.

The frozen teacher has replayed each of the student's responses twice (teacher.py): once with the
full image plus the question-relevant crop z+, once with the full image plus an irrelevant crop
z-. A response whose tokens become much likelier when the teacher sees the real evidence is
grounded in the image; one whose tokens the teacher predicts equally well either way follows the
language prior. The gate turns that contrast into a weight that redistributes the distillation
loss among the G sibling responses of one prompt:

    Delta_k = l+_k - l-_k                                   Eq. 17  token evidence gap
    s_k     = relu(Delta_k) - gamma * relu(-Delta_k)        (release; gamma=1 gives s_k = Delta_k)
    p       = (1/T) sum_k s_k                               Eq. 18  trajectory score
    a       = (p - mean_G p) / (std_G p + eps)              Eq. 19  in-group z-score, population std
    w       = sg[clip(1 + alpha * a, w_min, w_max)]         Eq. 20  (the paper prints alpha = 1)

Pure tensor math, torch only, no model: read it, test it and reuse it alone.
    weights, stats = evidence_gate(lp_pos, lp_neg, mask, group_size=8)
    p, delta = trajectory_scores(lp_pos, lp_neg, mask); a = group_advantages(p, 8)   # the stages
"""

import torch


def evidence_gate(lp_pos, lp_neg, mask, group_size, *, alpha=0.5, gamma=1.0,
                  w_min=0.0, w_max=2.0, eps=1e-6):
    """Gate weights [N] (float32, detached) and a dict of Python-float stats.

    lp_pos, lp_neg: [N, T] teacher log-probs of the sampled tokens under (x, z+) and (x, z-).
    mask: [N, T] bool or 0/1, True at real response tokens (EOS included). N = B * group_size,
    the G siblings of one prompt in contiguous rows b*G .. b*G+G-1.
    Values at masked-out positions are never read: they may be padding, NaN or anything.
    """
    _validate(lp_pos, lp_neg, mask, group_size, alpha, gamma, w_min, w_max, eps)
    score, delta = trajectory_scores(lp_pos, lp_neg, mask, gamma=gamma)   # Eqs. 17-18, [N]
    advantage = group_advantages(score, group_size, eps=eps)              # Eq. 19, [N]
    # Eq. 20: clipped, stop-gradient weight. The paper prints 1 + a (alpha = 1); the released
    # recipe uses alpha = 0.5. w_min = 0 lets the gate switch a response's distillation off.
    weights = (1.0 + alpha * advantage).clamp(w_min, w_max).float()      # [N] float32
    valid_delta = delta[mask.bool()]
    stats = {
        "gate/score_mean": score.mean().item(),
        "gate/score_std": score.std(unbiased=False).item(),
        "gate/score_min": score.min().item(),
        "gate/score_max": score.max().item(),
        "gate/adv_mean": advantage.mean().item(),
        "gate/adv_std": advantage.std(unbiased=False).item(),
        "gate/weight_mean": weights.mean().item(),
        "gate/weight_std": weights.std(unbiased=False).item(),
        "gate/weight_min": weights.min().item(),
        "gate/weight_max": weights.max().item(),
        "gate/weight_at_min_frac": (weights == w_min).float().mean().item(),
        "gate/delta_mean": valid_delta.mean().item() if valid_delta.numel() else 0.0,
        "gate/delta_pos_frac": (valid_delta > 0).double().mean().item() if valid_delta.numel() else 0.0,
    }
    return weights, stats


def trajectory_scores(lp_pos, lp_neg, mask, *, gamma=1.0):
    """Eqs. 17-18: the trajectory score p [N] and the token gaps Delta [N, T] (0 where masked).
    Float64 on detached inputs: the gate is a stop-gradient quantity (Eq. 20's sg[.]), and float64
    keeps the group statistics below free of float32 rounding noise."""
    mask = mask.bool()
    # Eq. 17: token evidence gap. torch.where (not multiplication by the mask) so that NaN or inf
    # padding at masked-out positions cannot leak in (NaN * 0 is NaN).
    delta = torch.where(mask, lp_pos.detach().double() - lp_neg.detach().double(), 0.0)   # [N, T]
    # The release's asymmetric token score: gamma < 1 forgives tokens the negative view explains
    # better, gamma > 1 punishes them harder. gamma = 1 gives s_k = Delta_k exactly (Eq. 18).
    token_score = delta.clamp(min=0) - gamma * (-delta).clamp(min=0)    # [N, T], 0 where masked
    # Eq. 18: mean over the response's own tokens. A row with no response tokens has nothing to
    # judge: its score is 0 (clamp avoids 0/0).
    score = token_score.sum(dim=1) / mask.sum(dim=1).clamp(min=1)       # [N]
    return score, delta


def group_advantages(score, group_size, *, eps=1e-6):
    """Eq. 19: z-score [N] of each score within its group of G contiguous siblings. Population
    std (divide by G, not G-1), as the paper and the release. A group of one has a = 0."""
    groups = score.double().view(-1, group_size)                         # [B, G]
    centred = groups - groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, unbiased=False, keepdim=True)
    advantage = centred / (std + eps)                                    # [B, G]
    # Siblings with identical scores carry no contrast (common for short answers: the student
    # samples the same answer G times). Their mean can differ from each score by one float ulp,
    # and that ulp / eps is not zero. Say exactly what we mean: equal scores -> a = 0 -> w = 1.
    no_contrast = (groups == groups[:, :1]).all(dim=1, keepdim=True)     # [B, 1]
    return torch.where(no_contrast, 0.0, advantage).view(-1)            # [N]


def _validate(lp_pos, lp_neg, mask, group_size, alpha, gamma, w_min, w_max, eps):
    # Fail loudly: a silently wrong gate trains a silently wrong model.
    if lp_pos.dim() != 2 or lp_pos.shape != lp_neg.shape or lp_pos.shape != mask.shape:
        raise ValueError(f"evidence_gate: lp_pos {tuple(lp_pos.shape)}, lp_neg {tuple(lp_neg.shape)} "
                         f"and mask {tuple(mask.shape)} must all be the same [N, T] shape")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"evidence_gate: group_size must be a positive int, got {group_size!r}")
    if lp_pos.shape[0] % group_size != 0:
        raise ValueError(f"evidence_gate: N={lp_pos.shape[0]} rows is not divisible by "
                         f"group_size={group_size} (siblings must be contiguous, whole groups)")
    if alpha < 0:
        raise ValueError(f"evidence_gate: alpha must be >= 0, got {alpha}")
    if gamma < 0:
        raise ValueError(f"evidence_gate: gamma must be >= 0, got {gamma}")
    if w_min < 0:
        raise ValueError(f"evidence_gate: w_min must be >= 0, got {w_min}")
    if w_max < w_min:
        raise ValueError(f"evidence_gate: w_max ({w_max}) must be >= w_min ({w_min})")
    if not eps > 0:
        raise ValueError(f"evidence_gate: eps must be > 0, got {eps}")
    m = mask.bool()
    for name, lp in (("lp_pos", lp_pos), ("lp_neg", lp_neg)):
        bad = m & ~torch.isfinite(lp)
        if bad.any():
            row = int(bad.any(dim=1).nonzero()[0])
            raise ValueError(f"evidence_gate: {name} has a non-finite value at a valid response "
                             f"position in row {row} (group {row // group_size})")


def auroc(scores, labels):
    """Area under the ROC curve of `scores` as a detector of boolean `labels` (a diagnostic of the
    gate: how well does a response's weight tell correct from wrong answers?). It is the
    probability that a random positive outscores a random negative, ties counting 1/2
    (Mann-Whitney U). None when only one class is present: the question has no answer then."""
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    labels = torch.as_tensor(labels, dtype=torch.bool).flatten()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    # Pairwise comparison: O(n_pos * n_neg), fine for the few thousand rollouts of a step.
    diff = scores[labels][:, None] - scores[~labels][None, :]
    return ((diff > 0).double() + 0.5 * (diff == 0).double()).mean().item()
