"""The loss and dual-update maths on hand-made tensors."""

import math

import pytest
import torch as th

from sb3_r2vpo.r2vpo.objective import dual_update, policy_objective, ratio_variance

F64 = th.float64


@pytest.fixture
def batch():
    generator = th.Generator().manual_seed(0)
    old_log_prob = th.randn(16, generator=generator, dtype=F64)
    log_prob = (old_log_prob + 0.3 * th.randn(16, generator=generator, dtype=F64)).requires_grad_(True)
    advantages = th.randn(16, generator=generator, dtype=F64)
    return log_prob, old_log_prob, advantages


@pytest.mark.parametrize("center", ["mean", "one"])
def test_variance_value_and_gradient_match_analytic_form(center):
    ratio = th.tensor([0.5, 0.9, 1.0, 1.3, 2.2], dtype=F64, requires_grad=True)
    variance = ratio_variance(ratio, center)
    reference = ratio.detach().mean() if center == "mean" else 1.0
    expected = ((ratio.detach() - reference) ** 2).mean()
    assert variance.item() == pytest.approx(expected.item())
    if center == "mean":
        assert variance.item() == pytest.approx(ratio.detach().var(unbiased=False).item())
    (gradient,) = th.autograd.grad(variance, ratio)
    # d/dr_i mean((r - c)^2) = 2 (r_i - c) / n; for the mean centre the d c/d r_i terms sum to zero.
    th.testing.assert_close(gradient, 2 * (ratio.detach() - reference) / ratio.numel())


def test_start_centre_without_start_ratios_is_the_chi_square():
    # On the on-policy path μ is the policy at the start of the update: every r_start is 1.
    ratio = th.tensor([0.5, 0.9, 1.0, 1.3, 2.2], dtype=F64)
    chi_square = ((ratio - 1.0) ** 2).mean().item()
    assert ratio_variance(ratio, "start").item() == pytest.approx(chi_square)
    assert ratio_variance(ratio, "start", th.ones(5, dtype=F64)).item() == pytest.approx(chi_square)


def test_start_centre_counts_only_this_updates_change():
    ratio = th.tensor([0.5, 0.9, 1.0, 1.3, 2.2], dtype=F64, requires_grad=True)
    start_ratio = th.tensor([0.6, 0.9, 1.4, 1.0, 2.0], dtype=F64, requires_grad=True)
    variance = ratio_variance(ratio, "start", start_ratio)
    # (−0.1)², 0, (−0.4)², 0.3², 0.2² → 0.30 / 5
    assert variance.item() == pytest.approx(0.06)
    # A ratio still at its start value adds nothing, however far its behaviour policy lies behind.
    assert ratio_variance(start_ratio.detach(), "start", start_ratio).item() == 0.0
    (gradient,) = th.autograd.grad(variance, ratio)
    th.testing.assert_close(gradient, 2 * (ratio.detach() - start_ratio.detach()) / ratio.numel())
    # The centre is a constant of the update: no gradient reaches it.
    variance = ratio_variance(ratio, "start", start_ratio)
    assert th.autograd.grad(variance, start_ratio, allow_unused=True)[0] is None
    with pytest.raises(ValueError, match=r"start_ratio has shape \(4,\), the ratios \(5,\)"):
        ratio_variance(ratio, "start", start_ratio[:4])


def test_policy_objective_passes_the_start_ratios():
    ratio = th.tensor([0.8, 1.2, 1.5], dtype=F64)
    advantages = th.tensor([1.0, -1.0, 2.0], dtype=F64)
    start_ratio = th.tensor([1.0, 1.0, 1.5], dtype=F64)
    loss, surrogate, variance = policy_objective(ratio, advantages, 2.0, 0.01, "start", start_ratio)
    assert variance.item() == pytest.approx((0.04 + 0.04 + 0.0) / 3)
    assert loss.item() == pytest.approx(surrogate.item() + 2.0 * (variance.item() - 0.01))


def test_unknown_center_is_rejected():
    with pytest.raises(ValueError, match="variance_center"):
        ratio_variance(th.ones(3), "median")


def test_zero_multiplier_gives_unclipped_importance_sampled_gradient(batch):
    log_prob, old_log_prob, advantages = batch
    ratio = th.exp(log_prob - old_log_prob)
    loss, surrogate, _ = policy_objective(ratio, advantages, lagrange_multiplier=0.0, variance_target=0.04)
    assert loss.item() == pytest.approx(surrogate.item())
    (gradient,) = th.autograd.grad(loss, log_prob)
    # d/d log pi_i of -mean(r A) = -r_i A_i / n: every sample keeps its gradient, whatever its ratio.
    expected = -(ratio.detach() * advantages) / ratio.numel()
    th.testing.assert_close(gradient, expected)
    assert th.all(gradient != 0)


@pytest.mark.parametrize("multiplier", [0.5, 3.0])
def test_penalised_gradient_is_soft_brake(batch, multiplier):
    log_prob, old_log_prob, advantages = batch
    ratio = th.exp(log_prob - old_log_prob)
    loss, _, _ = policy_objective(ratio, advantages, lagrange_multiplier=multiplier, variance_target=0.04)
    (gradient,) = th.autograd.grad(loss, log_prob)
    r = ratio.detach()
    # Per-sample: -(1/n) r_i (A_i - 2 λ (r_i - r̄)), the form given in DESIGN.md.
    expected = -(r * (advantages - 2 * multiplier * (r - r.mean()))) / r.numel()
    th.testing.assert_close(gradient, expected)


def test_multiplier_is_not_differentiated(batch):
    log_prob, old_log_prob, advantages = batch
    loss, _, variance = policy_objective(th.exp(log_prob - old_log_prob), advantages, 2.0, 0.04)
    assert loss.requires_grad and variance.requires_grad
    # λ enters as a Python float: the loss value is the Lagrangian with that constant.
    assert loss.item() == pytest.approx(
        (-(th.exp(log_prob - old_log_prob) * advantages).mean() + 2.0 * (variance - 0.04)).item()
    )


@pytest.mark.parametrize("mode", ["multiplicative", "linear"])
def test_dual_update_signs(mode):
    kwargs = dict(mode=mode, step_size=0.1, step_clip=None, lower=0.0 if mode == "linear" else 1e-3, upper=1e3)
    assert dual_update(1.0, variance=0.08, variance_target=0.04, **kwargs) > 1.0
    assert dual_update(1.0, variance=0.01, variance_target=0.04, **kwargs) < 1.0
    assert dual_update(1.0, variance=0.04, variance_target=0.04, **kwargs) == pytest.approx(1.0)


def test_dual_update_exact_values():
    assert dual_update(2.0, 0.08, 0.04, "multiplicative", 0.1, None, 1e-3, 1e3) == pytest.approx(2.0 * math.exp(0.1))
    assert dual_update(2.0, 0.08, 0.04, "linear", 10.0, None, 0.0, 1e3) == pytest.approx(2.0 + 10.0 * 0.04)


def test_dual_step_clip_bounds_one_wild_minibatch():
    # A variance 1000x over target moves λ by at most exp(η·c) with the clip, by exp(η·999) without it.
    clipped = dual_update(1.0, 40.0, 0.04, "multiplicative", 0.05, 1.0, 1e-3, 1e6)
    assert clipped == pytest.approx(math.exp(0.05))
    unclipped = dual_update(1.0, 40.0, 0.04, "multiplicative", 0.05, None, 1e-3, 1e6)
    assert unclipped == pytest.approx(1e6)
    linear = dual_update(1.0, 40.0, 0.04, "linear", 1.0, 1.0, 0.0, 1e6)
    assert linear == pytest.approx(1.04)


def test_dual_update_respects_bounds_and_returns_plain_float():
    low = dual_update(1e-3, 0.0, 0.04, "multiplicative", 0.5, 1.0, 1e-3, 10.0)
    high = dual_update(10.0, 1.0, 0.04, "multiplicative", 0.5, 1.0, 1e-3, 10.0)
    assert low == 1e-3 and high == 10.0
    assert dual_update(0.01, 0.0, 0.04, "linear", 1.0, None, 0.0, 10.0) == 0.0
    assert type(low) is float


def test_dual_update_refuses_nonfinite_variance():
    with pytest.raises(ValueError, match="finite"):
        dual_update(1.0, float("nan"), 0.04, "multiplicative", 0.05, 1.0, 1e-3, 1e3)


def test_defaults_and_messages_of_the_public_functions():
    ratio = th.tensor([0.5, 1.5, 2.0], dtype=F64)
    # The default centre is the minibatch mean (4/3 here, not 1).
    assert ratio_variance(ratio).item() == pytest.approx(ratio.var(unbiased=False).item())
    assert ratio_variance(ratio).item() != pytest.approx(ratio_variance(ratio, "one").item())
    with pytest.raises(ValueError, match=r"dual_update must be one of \('multiplicative', 'linear'\), got 'quadratic'"):
        dual_update(1.0, 0.1, 0.04, "quadratic", 0.05, 1.0, 1e-3, 1e3)
