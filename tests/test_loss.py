# Tests of loss.py (Eqs. 2-7, 21-24): invariants, gradients against the formulas, PPO branches.
import pytest
import torch

from loss import opd_loss


def random_batch(N=6, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(N, T, generator=g) * 3).requires_grad_(True)
    teacher = -torch.rand(N, T, generator=g) * 3
    mask = torch.ones(N, T, dtype=torch.bool)
    lengths = torch.randint(1, T + 1, (N,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]             # each row a prefix
    weights = torch.rand(N, generator=g) * 2
    return logp, teacher, mask, weights


def grad_of(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


@pytest.mark.parametrize("estimator", ["k1", "k3"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_teacher_equal_student_gives_zero_loss_and_gradient(estimator, agg):
    logp, _, mask, w = random_batch()
    loss, stats = opd_loss(logp, logp.detach(), logp.detach(), mask, w, estimator=estimator, agg=agg)
    assert loss.item() == 0.0 and float(stats["kl/k1_mean"]) == 0.0
    assert torch.count_nonzero(grad_of(loss, logp)) == 0


def test_k1_gradient_at_ratio_one_is_eq24():
    # Eq. 24's gradient per valid token, token-mean: w_g * d_k / N_tokens
    logp, teacher, mask, w = random_batch()
    loss, stats = opd_loss(logp, logp.detach(), teacher, mask, w)
    d = logp.detach() - teacher
    expected = w[:, None] * d * mask / mask.sum()
    torch.testing.assert_close(grad_of(loss, logp), expected, rtol=1e-6, atol=1e-7)
    assert float(stats["ppo/clip_frac"]) == 0.0
    # The loss value at ratio 1 is the token mean of w * d (the PPO form's -A * 1).
    assert loss.item() == pytest.approx((w[:, None] * d)[mask].sum().item() / mask.sum().item(), rel=1e-6)


def test_weights_one_equal_plain_opd_surrogate():
    # Plain OPD, Eq. 7: surrogate sg[d_k] * log pi_s(y_k), token mean. Same gradient as w = 1.
    logp, teacher, mask, _ = random_batch(seed=3)
    loss, _ = opd_loss(logp, logp.detach(), teacher, mask, torch.ones(len(logp)))
    d = (logp - teacher).detach()
    surrogate = (d * logp)[mask].sum() / mask.sum()
    torch.testing.assert_close(grad_of(loss, logp), grad_of(surrogate, logp), rtol=1e-6, atol=1e-7)


def test_k3_gradient_matches_formula():
    # d/ds [exp(t - s) - (t - s) - 1] = 1 - exp(t - s); token-mean, times w
    logp, teacher, mask, w = random_batch(seed=4)
    loss, _ = opd_loss(logp, logp.detach(), teacher, mask, w, estimator="k3")
    t_minus_s = teacher - logp.detach()
    expected = w[:, None] * (1 - torch.exp(t_minus_s)) * mask / mask.sum()
    torch.testing.assert_close(grad_of(loss, logp), expected, rtol=1e-5, atol=1e-7)
    value = (w[:, None] * (torch.exp(t_minus_s) - t_minus_s - 1))[mask].sum() / mask.sum()
    assert loss.item() == pytest.approx(value.item(), rel=1e-6)


def test_each_ppo_branch_value_and_gradient():
    # Five tokens of one response, w = 1, token-mean over N = 5 tokens.
    # d = logp - teacher: negative -> A = -d > 0; positive -> A < 0. ratio = exp(logp - old).
    logp = torch.full((1, 5), -1.0, requires_grad=True)
    teacher = torch.tensor([[-0.5, -1.5, -1.5, -1.5, -0.5]])        # d = -.5, .5, .5, .5, -.5
    ratio = torch.tensor([[1.5, 0.5, 4.0, 2.0, 0.5]])
    old = logp.detach() - ratio.log()
    loss, stats = opd_loss(logp, old, teacher, torch.ones(1, 5, dtype=torch.bool), torch.ones(1))
    A = torch.tensor([0.5, -0.5, -0.5, -0.5, 0.5])
    expected_value = torch.tensor([
        -0.5 * 1.2,        # A > 0, ratio 1.5 > 1 + 0.2: clipped high, -A * 1.2
        0.5 * 0.8,         # A < 0, ratio 0.5 < 1 - 0.2: clipped low, -A * 0.8
        0.5 * 3.0,         # A < 0, ratio 4 > dual clip 3: -A * 3
        0.5 * 2.0,         # A < 0, ratio 2 inside (1.2, 3): unclipped, -A * ratio
        -0.5 * 0.5,        # A > 0, ratio 0.5: the unclipped term is the larger, -A * ratio
    ])
    assert loss.item() == pytest.approx(expected_value.mean().item(), rel=1e-6)
    # Gradient of -A * ratio wrt logp is -A * ratio; clipped branches are constants.
    expected_grad = torch.tensor([[0.0, 0.0, 0.0, 0.5 * 2.0, -0.5 * 0.5]]) / 5
    torch.testing.assert_close(grad_of(loss, logp), expected_grad, rtol=1e-5, atol=1e-7)
    assert A.tolist() == (-(logp.detach() - teacher)[0]).tolist()
    # The ratio clip bit on the first two tokens (the dual clip is not the ratio clip).
    assert float(stats["ppo/clip_frac"]) == pytest.approx(2 / 5) and int(stats["tokens"]) == 5


def test_kl_clamp_bites():
    logp = torch.zeros(1, 2, requires_grad=True)
    teacher = torch.tensor([[-15.0, -3.0]])                         # d = 15 (clamped to 10), 3
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, stats = opd_loss(logp, logp.detach(), teacher, mask, torch.ones(1))
    torch.testing.assert_close(grad_of(loss, logp), torch.tensor([[10.0, 3.0]]) / 2)
    assert float(stats["kl/k1_mean"]) == pytest.approx(9.0)         # the stat is unclamped
    loss, _ = opd_loss(logp, logp.detach(), teacher, mask, torch.ones(1), kl_clamp=2.0)
    torch.testing.assert_close(grad_of(loss, logp), torch.tensor([[2.0, 2.0]]) / 2)
    # k3 of t - s = -15 is 14 + e^-15, clamped to 10 -> the token's value is exactly 10
    s0 = logp[:, :1]
    loss, _ = opd_loss(s0, s0.detach(), teacher[:, :1], mask[:, :1], torch.ones(1), estimator="k3")
    assert loss.item() == pytest.approx(10.0)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_token_mean_over_micro_batches_equals_one_batch(estimator):
    logp, teacher, mask, w = random_batch(N=8, T=6, seed=5)
    old = logp.detach() + 0.1 * torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    full, _ = opd_loss(logp, old, teacher, mask, w, estimator=estimator)
    total = int(mask.sum())
    halves = [opd_loss(logp[s], old[s], teacher[s], mask[s], w[s], estimator=estimator, num_tokens=total)[0]
              for s in (slice(0, 3), slice(3, 8))]
    torch.testing.assert_close(halves[0] + halves[1], full)
    torch.testing.assert_close(grad_of(halves[0] + halves[1], logp), grad_of(full, logp))


def test_seq_mean_token_mean_is_eq24_by_hand():
    # Two responses, w = (0.5, 2). Row 0: d = (1, 3), T0 = 2. Row 1: d = (2,), T1 = 1 (then pad).
    logp = torch.tensor([[-1.0, -1.0], [-2.0, -9.0]], requires_grad=True)
    teacher = torch.tensor([[-2.0, -4.0], [-4.0, 123.0]])
    mask = torch.tensor([[True, True], [True, False]])
    w = torch.tensor([0.5, 2.0])
    loss, _ = opd_loss(logp, logp.detach(), teacher, mask, w, agg="seq-mean-token-mean")
    # Eq. 24 value of the PPO form at ratio 1: 1/2 [0.5 * (1 + 3)/2 + 2 * 2/1] = 1/2 [1 + 4] = 2.5
    assert loss.item() == pytest.approx(2.5)
    # Eq. 24 gradient: w_g * d_k / (G * T_g)
    expected = torch.tensor([[0.5 * 1 / 4, 0.5 * 3 / 4], [2.0 * 2 / 2, 0.0]])
    torch.testing.assert_close(grad_of(loss, logp), expected)
    # num_seqs: the same responses split into two calls with the global count
    parts = [opd_loss(logp[i:i + 1], logp.detach()[i:i + 1], teacher[i:i + 1], mask[i:i + 1], w[i:i + 1],
                      agg="seq-mean-token-mean", num_seqs=2)[0] for i in range(2)]
    assert (parts[0] + parts[1]).item() == pytest.approx(2.5)


def test_padding_garbage_never_reaches_loss_or_gradient():
    logp, teacher, mask, w = random_batch(seed=6)
    clean, _ = opd_loss(logp, logp.detach(), teacher, mask, w)
    g_clean = grad_of(clean, logp)
    dirty_teacher = torch.where(mask, teacher, float("nan"))
    dirty_old = torch.where(mask, logp.detach(), float("inf"))
    for est in ("k1", "k3"):
        dirty_logp = torch.where(mask, logp, float("-inf"))          # a fresh graph each time
        loss, _ = opd_loss(dirty_logp, dirty_old, dirty_teacher, mask, w, estimator=est)
        g = grad_of(loss, logp)
        assert torch.isfinite(loss) and torch.isfinite(g).all()
    loss, _ = opd_loss(torch.where(mask, logp, float("-inf")), dirty_old, dirty_teacher, mask, w)
    torch.testing.assert_close(loss, clean)
    torch.testing.assert_close(grad_of(loss, logp), g_clean)


def test_weights_are_not_differentiated():
    logp, teacher, mask, _ = random_batch(seed=7)
    w = torch.rand(len(logp), requires_grad=True)
    loss, _ = opd_loss(logp, logp.detach(), teacher, mask, w)
    assert torch.autograd.grad(loss, w, allow_unused=True)[0] is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(estimator="k2"), "estimator"),
    (dict(agg="sum"), "agg"),
    (dict(weights=torch.ones(5)), "weights"),
    (dict(teacher_logp=torch.zeros(6, 4)), "shape"),
    (dict(clip_eps=0.0), "clip_eps"),
    (dict(dual_clip=1.0), "dual_clip"),
])
def test_validation_errors(kwargs, message):
    logp, teacher, mask, w = random_batch()
    args = dict(logp=logp, old_logp=logp.detach(), teacher_logp=teacher, mask=mask, weights=w)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        opd_loss(**args)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_token_level_weights(estimator):
    # [N, T] weights (docs/extending.md): a row's weight repeated over its tokens is the [N] loss,
    # bit for bit; per-token weights scale each token's Eq. 24 gradient w_k * d_k / N_tokens.
    logp, teacher, mask, w = random_batch(seed=8)
    per_answer, _ = opd_loss(logp, logp.detach(), teacher, mask, w, estimator=estimator)
    repeated, _ = opd_loss(logp, logp.detach(), teacher, mask, w[:, None].expand_as(logp), estimator=estimator)
    assert torch.equal(per_answer, repeated)
    if estimator == "k1":
        w_tok = torch.rand(logp.shape, generator=torch.Generator().manual_seed(1))
        loss, _ = opd_loss(logp, logp.detach(), teacher, mask, w_tok)
        expected = w_tok * (logp.detach() - teacher) * mask / mask.sum()
        torch.testing.assert_close(grad_of(loss, logp), expected, rtol=1e-6, atol=1e-7)
