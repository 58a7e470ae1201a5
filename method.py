"""
The methods this project trains, each defined once: which views the teacher replays the student's
answers under, which of them the student is distilled toward, and how the per-answer weights are made.

    method = METHODS[cfg.method]
    method.views           # ("pos", "neg"): the teacher views to replay (teacher.py)
    lp = teacher.replay(rollout, prompts)                          # {view: [B*G, T]}
    full, pos, neg = views_of(example, cfg)                       # x, z+, z- as this run cuts them
    weights, stats = method.weights(lp, mask, G, cfg)              # [B*G] (or [B*G, T]), no grad
    loss = opd_loss(logp, old_logp, lp[method.target], mask, weights, ...)     # loss.py, Eqs. 23-24

train.py (prepare, train_step) and eval.py (gate diagnostics) read a method from here and nowhere
else, so a new method is one entry in METHODS (docs/extending.md): a forker's gate variant is the
one the step trains with AND the one the diagnostics show.

The views (docs/method.md sec. 1, 5): "plain" = x (the full image), "pos" = (x, z+) with the crop
of the question-relevant box, "neg" = (x, z-) with an irrelevant crop. `pos_crop` says how z+ is cut
(data.evidence_views): "box" is the method; "random" is the paper's random-crop ablation.
"""

from dataclasses import dataclass
from typing import Callable

import torch

import data
from gate import evidence_gate


def gate_weights(lp, mask, group_size, cfg):
    """V-Zero: the contrastive evidence gate with the run's knobs, one weight per answer (Eqs. 17-20)."""
    return evidence_gate(lp["pos"], lp["neg"], mask, group_size, alpha=cfg.gate_alpha, gamma=cfg.gate_gamma,
                         w_min=cfg.gate_w_min, w_max=cfg.gate_w_max)


def unit_weights(lp, mask, group_size, cfg):
    """Plain OPD: every answer weighs 1 (the gate off); no statistics."""
    return torch.ones(mask.shape[0], device=mask.device), {}


@dataclass(frozen=True)
class Method:
    views: tuple              # teacher views replayed per answer, a subset of teacher.VIEWS
    target: str               # the view whose log-probs the loss distils toward (Eq. 23's l+)
    weights: Callable         # (lp {view: [N, T]}, mask [N, T], G, cfg) -> (weights [N] or [N, T], stats)
    pos_crop: str = "box"     # how z+ is cut (data.POS_MODES)
    min_group_size: int = 1   # the gate compares siblings (Eq. 19): it needs G >= 2
    about: str = ""           # one line for --help and the docs


METHODS = {
    "vzero": Method(("pos", "neg"), "pos", gate_weights, min_group_size=2,
                    about="the gated distillation of the paper (Eqs. 17-24)"),
    "opd": Method(("pos",), "pos", unit_weights,
                  about="weights 1, the teacher sees (x, z+): the gate's ablation"),
    "opd-plain": Method(("plain",), "plain", unit_weights,
                        about="weights 1, the teacher sees x only (the paper's no-gate ablation is ambiguous)"),
    "vzero-random": Method(("pos", "neg"), "pos", gate_weights, pos_crop="random", min_group_size=2,
                           about="V-Zero with z+ cut at a random place: the paper's harmful ablation"),
}


def views_of(example, cfg):
    """(x, z+, z-) of one example as the run `cfg` cuts them (data.py, sec. 5): its method's z+
    (the box, or a random place), its z- mode, crop margin, minimum side and seed."""
    return data.evidence_views(example, cfg.neg_view, pos_mode=METHODS[cfg.method].pos_crop, seed=cfg.seed,
                               margin=cfg.crop_margin, min_side=cfg.crop_min_side)


def answer_weights(weights, mask):
    """[N] one weight per answer: the method's own, or for token-level weights [N, T] their mean over
    the answer's tokens (what diagnostics compare across answers)."""
    if weights.dim() == 1:
        return weights
    mask = mask.bool()
    return torch.where(mask, weights, 0.0).sum(1) / mask.sum(1).clamp(min=1)
