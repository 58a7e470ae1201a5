# Tests of gate.py (Eqs. 17-20): hand-computed cases, invariants, validation.
import math

import pytest
import torch

from gate import auroc, evidence_gate, group_advantages, trajectory_scores

# One group of G=2 siblings, T=3. Row 1's last position is padding.
#   Delta row 0 = [-1-(-2), -2-(-2), -3-(-1)] = [1, 0, -2]      Eq. 17
#   Delta row 1 = [-1-(-3), -1-(-1)]          = [2, 0]
LP_POS = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
LP_NEG = torch.tensor([[-2.0, -2.0, -1.0], [-3.0, -1.0, -1.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)


def test_hand_computed_case_every_equation_and_stat():
    eps = 1e-6
    w, stats = evidence_gate(LP_POS, LP_NEG, MASK, group_size=2, alpha=0.5, eps=eps)
    # Eq. 18: p0 = (1 + 0 - 2)/3 = -1/3, p1 = (2 + 0)/2 = 1
    # Eq. 19: mean 1/3, population std 2/3, a = -+(2/3) / (2/3 + eps)
    a = (2 / 3) / (2 / 3 + eps)
    # Eq. 20 with alpha 0.5: w = 1 -+ a/2
    expected = torch.tensor([1 - 0.5 * a, 1 + 0.5 * a], dtype=torch.float32)
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-7)
    assert stats["gate/score_mean"] == pytest.approx(1 / 3)
    assert stats["gate/score_std"] == pytest.approx(2 / 3)
    assert stats["gate/score_min"] == pytest.approx(-1 / 3)
    assert stats["gate/score_max"] == pytest.approx(1.0)
    assert stats["gate/adv_mean"] == pytest.approx(0.0, abs=1e-12)
    assert stats["gate/adv_std"] == pytest.approx(a)
    assert stats["gate/weight_mean"] == pytest.approx(1.0, abs=1e-7)
    assert stats["gate/weight_std"] == pytest.approx(0.5 * a, abs=1e-7)
    assert stats["gate/weight_min"] == pytest.approx(1 - 0.5 * a, abs=1e-7)
    assert stats["gate/weight_max"] == pytest.approx(1 + 0.5 * a, abs=1e-7)
    assert stats["gate/weight_at_min_frac"] == 0.0
    # valid Deltas: 1, 0, -2, 2, 0 -> mean 0.2, two of five positive
    assert stats["gate/delta_mean"] == pytest.approx(0.2)
    assert stats["gate/delta_pos_frac"] == pytest.approx(0.4)
    assert all(isinstance(v, float) for v in stats.values())


def test_stage_functions_hand_case():
    p, delta = trajectory_scores(LP_POS, LP_NEG, MASK)
    assert p.dtype == torch.float64 and p.tolist() == pytest.approx([-1 / 3, 1.0])       # Eq. 18
    assert delta.tolist() == [[1.0, 0.0, -2.0], [2.0, 0.0, 0.0]]                         # Eq. 17
    a = (2 / 3) / (2 / 3 + 1e-6)
    assert group_advantages(p, 2).tolist() == pytest.approx([-a, a], abs=1e-12)           # Eq. 19
    assert group_advantages(p, 1).tolist() == [0.0, 0.0]


def test_gamma_weights_negative_evidence():
    # gamma = 2: s row 0 = [1, 0, -4] -> p0 = -1; p1 = 1 -> mean 0, std 1, a = -+1/(1+eps)
    w, stats = evidence_gate(LP_POS, LP_NEG, MASK, 2, alpha=0.5, gamma=2.0, eps=1e-6)
    a = 1 / (1 + 1e-6)
    torch.testing.assert_close(w, torch.tensor([1 - a / 2, 1 + a / 2]), rtol=0, atol=1e-7)
    assert stats["gate/score_min"] == pytest.approx(-1.0)
    # gamma = 0: only positive evidence counts: p0 = 1/3, p1 = 1
    _, stats0 = evidence_gate(LP_POS, LP_NEG, MASK, 2, gamma=0.0)
    assert stats0["gate/score_min"] == pytest.approx(1 / 3)


def reference_gate(lp_pos, lp_neg, mask, G, alpha, eps):
    # The paper's Eqs. 17-20 written as plain Python loops, independent of gate.py.
    N, T = lp_pos.shape
    p = []
    for i in range(N):
        deltas = [float(lp_pos[i, k] - lp_neg[i, k]) for k in range(T) if mask[i, k]]
        p.append(sum(deltas) / len(deltas))                       # Eq. 18 (gamma = 1)
    w = []
    for b in range(N // G):
        grp = p[b * G:(b + 1) * G]
        mu = sum(grp) / G
        sd = math.sqrt(sum((x - mu) ** 2 for x in grp) / G)
        for x in grp:
            a = (x - mu) / (sd + eps)                              # Eq. 19
            w.append(min(max(1 + alpha * a, 0.0), 2.0))            # Eq. 20
    return torch.tensor(w, dtype=torch.float32)


def test_gamma_one_and_alpha_one_equal_the_printed_equations():
    g = torch.Generator().manual_seed(0)
    lp_pos = -torch.rand(12, 7, generator=g) * 3
    lp_neg = -torch.rand(12, 7, generator=g) * 3
    mask = torch.ones(12, 7, dtype=torch.bool)
    mask[torch.arange(12), torch.randint(1, 7, (12,), generator=g)] = False
    mask = mask.cumprod(dim=1).bool()                                # each row a prefix
    w, _ = evidence_gate(lp_pos, lp_neg, mask, 4, alpha=1.0, gamma=1.0)
    torch.testing.assert_close(w, reference_gate(lp_pos, lp_neg, mask, 4, 1.0, 1e-6), rtol=0, atol=1e-6)
    w, _ = evidence_gate(lp_pos, lp_neg, mask, 4, alpha=0.5)
    torch.testing.assert_close(w, reference_gate(lp_pos, lp_neg, mask, 4, 0.5, 1e-6), rtol=0, atol=1e-6)


def test_clipping_at_both_bounds():
    # alpha = 3: 1 -+ 3a = -2 and 4 -> clipped to w_min and w_max exactly
    w, stats = evidence_gate(LP_POS, LP_NEG, MASK, 2, alpha=3.0)
    assert w.tolist() == [0.0, 2.0]
    assert stats["gate/weight_at_min_frac"] == 0.5
    w, stats = evidence_gate(LP_POS, LP_NEG, MASK, 2, alpha=3.0, w_min=0.25, w_max=1.75)
    assert w.tolist() == [0.25, 1.75]
    assert stats["gate/weight_at_min_frac"] == 0.5


def test_identical_siblings_get_exactly_one():
    g = torch.Generator().manual_seed(1)
    # Values like -0.1 whose float sums round: the mean of G copies is not always the copy.
    row_pos = -torch.rand(1, 9, generator=g) * 0.3
    row_neg = -torch.rand(1, 9, generator=g) * 0.3
    for G in (3, 5, 7, 8):
        w, stats = evidence_gate(row_pos.repeat(G, 1), row_neg.repeat(G, 1),
                                 torch.ones(G, 9, dtype=torch.bool), G)
        assert torch.equal(w, torch.ones(G)), (G, w)
        assert stats["gate/adv_std"] == 0.0
    # A batch mixing a contrast-free group with a normal group: only the first is all ones.
    lp_pos = torch.cat([row_pos.repeat(2, 1), LP_POS.new_zeros(2, 9) - torch.tensor([[1.0], [2.0]])])
    lp_neg = torch.cat([row_neg.repeat(2, 1), LP_NEG.new_zeros(2, 9) - 1.5])
    w, _ = evidence_gate(lp_pos, lp_neg, torch.ones(4, 9, dtype=torch.bool), 2)
    assert torch.equal(w[:2], torch.ones(2)) and not torch.equal(w[2:], torch.ones(2))


def test_group_of_one_and_empty_row():
    w, _ = evidence_gate(LP_POS, LP_NEG, MASK, 1)
    assert torch.equal(w, torch.ones(2))
    # Row 0 has no response tokens -> score 0; row 1 scores 1 -> mean 0.5, std 0.5,
    # a = -+0.5/(0.5 + eps), w = 1 -+ a/2
    mask = torch.tensor([[0, 0, 0], [1, 1, 0]], dtype=torch.bool)
    w, stats = evidence_gate(LP_POS, LP_NEG, mask, 2)
    assert stats["gate/score_min"] == 0.0 and stats["gate/score_max"] == pytest.approx(1.0)
    a = 0.5 / (0.5 + 1e-6)
    torch.testing.assert_close(w, torch.tensor([1 - a / 2, 1 + a / 2]), rtol=0, atol=1e-7)


def test_masked_garbage_is_ignored():
    w_clean, s_clean = evidence_gate(LP_POS, LP_NEG, MASK, 2)
    lp_pos, lp_neg = LP_POS.clone(), LP_NEG.clone()
    lp_pos[1, 2], lp_neg[1, 2] = float("nan"), float("-inf")
    w_dirty, s_dirty = evidence_gate(lp_pos, lp_neg, MASK, 2)
    assert torch.equal(w_clean, w_dirty) and s_clean == s_dirty
    lp_pos[1, 2] = 1e30
    assert torch.equal(evidence_gate(lp_pos, LP_NEG, MASK, 2)[0], w_clean)


def test_permutations_permute_weights():
    g = torch.Generator().manual_seed(2)
    lp_pos, lp_neg = -torch.rand(8, 5, generator=g), -torch.rand(8, 5, generator=g)
    mask = torch.ones(8, 5, dtype=torch.bool)
    w, _ = evidence_gate(lp_pos, lp_neg, mask, 4)
    # swap the two groups
    perm = torch.tensor([4, 5, 6, 7, 0, 1, 2, 3])
    torch.testing.assert_close(evidence_gate(lp_pos[perm], lp_neg[perm], mask, 4)[0], w[perm], rtol=0, atol=0)
    # shuffle siblings inside each group
    perm = torch.tensor([2, 0, 3, 1, 7, 6, 5, 4])
    torch.testing.assert_close(evidence_gate(lp_pos[perm], lp_neg[perm], mask, 4)[0], w[perm], rtol=0, atol=0)
    # in-group normalisation: shifting one group's scores does not change its weights (Eq. 19)
    shifted = lp_pos.clone()
    shifted[:4] += 0.7
    torch.testing.assert_close(evidence_gate(shifted, lp_neg, mask, 4)[0], w, rtol=0, atol=1e-6)


def test_weights_carry_no_gradient():
    lp_pos = LP_POS.clone().requires_grad_(True)
    lp_neg = LP_NEG.clone().requires_grad_(True)
    w, _ = evidence_gate(lp_pos, lp_neg, MASK, 2)
    assert not w.requires_grad and w.grad_fn is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(lp_neg=torch.zeros(2, 4)), "same"),
    (dict(mask=torch.ones(3, 3, dtype=torch.bool)), "same"),
    (dict(group_size=3), "divisible"),
    (dict(group_size=0), "positive"),
    (dict(alpha=-0.1), "alpha"),
    (dict(gamma=-1.0), "gamma"),
    (dict(w_min=-0.5), "w_min"),
    (dict(w_min=1.5, w_max=1.0), "w_max"),
    (dict(eps=0.0), "eps"),
])
def test_validation_errors(kwargs, message):
    args = dict(lp_pos=LP_POS, lp_neg=LP_NEG, mask=MASK, group_size=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        evidence_gate(**args)


def test_non_finite_at_valid_position_names_the_row():
    lp_pos = LP_POS.clone()
    lp_pos[1, 0] = float("nan")
    with pytest.raises(ValueError, match="lp_pos.*row 1"):
        evidence_gate(lp_pos, LP_NEG, MASK, 2)
    lp_neg = LP_NEG.clone()
    lp_neg[0, 2] = float("-inf")
    with pytest.raises(ValueError, match="lp_neg.*row 0"):
        evidence_gate(LP_POS, lp_neg, MASK, 2)


def test_auroc_hand_cases():
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    # positives 0.5, 0.3; negatives 0.5, 0.1: pairs (0.5>0.5 tie=1/2, 0.5>0.1, 0.3<0.5, 0.3>0.1) = 2.5/4
    assert auroc([0.5, 0.3, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.625)
    assert auroc([1.0, 2.0], [True, True]) is None
