"""The R²VPO objective: ratio-variance penalty and the dual update of its Lagrange multiplier.

Kept free of SB3 so that the maths can be tested on hand-made tensors.
"""

import math

import torch as th

VARIANCE_CENTERS = ("mean", "one", "start")
DUAL_UPDATES = ("multiplicative", "linear")
# The value of ``lagrange_multiplier_floor`` that takes the floor fraction from the rollout size.
FLOOR_BY_ROLLOUT_SIZE = "auto"
DUAL_UPDATE_FREQUENCIES = ("minibatch", "epoch", "rollout")
DUAL_VARIANCE_ESTIMATES = ("minibatch", "rollout")
#: Smallest variance target used in training: a schedule that anneals δ to 0 (like PPO's ``lin_0.2`` clip)
#: is held here at its end, so that ``V/δ`` and ``1/(2√δ)`` stay finite.
MIN_VARIANCE_TARGET = 1e-6

StepClip = float | tuple[float, float] | None


def ratio_variance(ratio: th.Tensor, center: str = "mean", start_ratio: th.Tensor | None = None) -> th.Tensor:
    """
    Second moment of the policy ratio over a minibatch.

    :param ratio: Importance ratios ``pi_theta(a|s) / mu(a|s)``, shape ``(batch,)``.
    :param center: ``"mean"`` centres on the minibatch mean (second central moment, biased estimator);
        ``"one"`` centres on 1, the chi-square estimate ``mean((r - 1)^2)`` (``E_mu[r] = 1``); ``"start"`` centres
        each ratio on its own value at the start of the update, ``mean((r - r_start)^2)``: what this update
        changes. On fresh samples ``r_start = 1`` (μ is the policy at the start of the update), so ``"start"``
        equals ``"one"`` on the on-policy path; on a replayed sample ``r_start = pi_start / mu`` carries the drift
        of earlier updates, which this update cannot undo and ``"one"`` would count against δ.
    :param start_ratio: ``r_start`` per sample, shape ``(batch,)``, no gradient; ``None``: 1 for every sample.
        Only read under ``"start"``.
    :return: Scalar tensor, differentiable with respect to ``ratio``.
    """
    if center == "mean":
        return th.mean((ratio - ratio.mean()) ** 2)
    if center == "one" or (center == "start" and start_ratio is None):
        return th.mean((ratio - 1.0) ** 2)
    if center == "start":
        if start_ratio.shape != ratio.shape:
            raise ValueError(f"start_ratio has shape {tuple(start_ratio.shape)}, the ratios {tuple(ratio.shape)}")
        return th.mean((ratio - start_ratio.detach()) ** 2)
    raise ValueError(f"variance_center must be one of {VARIANCE_CENTERS}, got {center!r}")


def policy_objective(
    ratio: th.Tensor,
    advantages: th.Tensor,
    lagrange_multiplier: float,
    variance_target: float,
    center: str = "mean",
    start_ratio: th.Tensor | None = None,
) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    """
    Lagrangian of the variance-constrained surrogate, to be minimised over the policy with λ held fixed:
    ``L = -mean(r * A) + λ * (Var(r) - δ)``.

    :param ratio: Importance ratios, shape ``(batch,)``.
    :param advantages: Advantage estimates, shape ``(batch,)``.
    :param lagrange_multiplier: Current λ (a plain float, so no gradient flows into it).
    :param variance_target: The variance bound δ.
    :param center: See :func:`ratio_variance`.
    :param start_ratio: See :func:`ratio_variance`.
    :return: ``(policy_loss, surrogate_loss, variance)`` where ``surrogate_loss = -mean(r * A)``.
    """
    surrogate_loss = -th.mean(ratio * advantages)
    variance = ratio_variance(ratio, center, start_ratio)
    return surrogate_loss + lagrange_multiplier * (variance - variance_target), surrogate_loss, variance


def stationary_multiplier(variance_target: float) -> float:
    """
    The stationary multiplier ``λ* = 1 / (2 √δ)``: with normalised advantages and each ratio treated as free,
    the Lagrangian is stationary at ``Var(r) = 1 / (4 λ²)``, which equals δ at ``λ*``.

    :param variance_target: The variance bound δ, > 0.
    :return: ``λ*`` as a plain float.
    """
    if not variance_target > 0:
        raise ValueError(f"stationary_multiplier needs a variance target > 0, got {variance_target}")
    return 1.0 / (2.0 * math.sqrt(variance_target))


# N₀ of the rollout-size floor rule (``lagrange_multiplier_floor="auto"``), in samples.
FLOOR_REFERENCE_SAMPLES = 64


def rollout_floor_fraction(rollout_size: int) -> float:
    """
    The floor fraction of ``lagrange_multiplier_floor="auto"``: ``f = min(1, √(N₀ / N))`` with ``N₀ = 64``.

    Why the rollout size: λ* assumes every ratio can move freely to ``Â_i / (2λ)``. A policy fitted to N samples
    at once can follow only part ρ of that per-sample signal, so the variance reached at λ is ≈ ρ² / (4λ²) and
    the λ that meets δ is ≈ ρ·λ*; ρ shrinks as the rollout grows (ρ² ∝ 1/N for a fixed network). Measured on
    the screening seeds: CartPole's rollouts of 256 samples need λ ≳ λ*/2 (f = 1/2 here), LunarLanderContinuous's
    16,384 held δ at λ ≈ λ*/15 (f = 1/16 here).

    :param rollout_size: N, the samples of one fresh rollout (``n_steps * n_envs``), ≥ 1.
    :return: The fraction f in (0, 1].
    """
    if rollout_size < 1:
        raise ValueError(f"rollout_floor_fraction needs a rollout of at least 1 sample, got {rollout_size}")
    return min(1.0, math.sqrt(FLOOR_REFERENCE_SAMPLES / rollout_size))


def multiplier_lower_bound(lower: float, upper: float, floor_fraction: float | None, variance_target: float) -> float:
    """
    The lower bound of λ in effect for one update: ``max(lower, f · λ*(δ))``, never above ``upper``.

    :param lower: The fixed lower bound ``lagrange_multiplier_min`` (≥ 0).
    :param upper: The upper bound ``lagrange_multiplier_max`` (> ``lower``); a floor above it is cut to it.
    :param floor_fraction: The fraction ``f`` in (0, 1] of the stationary multiplier that λ may not go below;
        ``None``: no floor tied to δ, the bound is ``lower``.
    :param variance_target: The variance bound δ in effect for this update (> 0).
    :return: The bound as a plain float.
    """
    if floor_fraction is None:
        return lower
    return float(min(max(lower, floor_fraction * stationary_multiplier(variance_target)), upper))


def clip_violation(violation: float, step_clip: StepClip, scale: float = 1.0) -> float:
    """
    Bound the constraint violation used by one dual step.

    :param violation: The violation (``V/δ − 1`` for the multiplicative update, ``V − δ`` for the linear one).
    :param step_clip: ``c`` (> 0): clip to ``[−c·scale, c·scale]``; a pair ``(down, up)`` (both > 0): clip to
        ``[−down·scale, up·scale]``, so that λ can rise faster than it falls (or the reverse); ``None``: no clip.
    :param scale: Unit of the bounds (1 for the relative violation, δ for the absolute one), > 0.
    :return: The clipped violation as a plain float.
    """
    if step_clip is None:
        return violation
    if isinstance(step_clip, (tuple, list)):
        down, up = step_clip
    else:
        down = up = step_clip
    return min(max(violation, -down * scale), up * scale)


def dual_update(
    lagrange_multiplier: float,
    variance: float,
    variance_target: float,
    mode: str,
    step_size: float,
    step_clip: StepClip,
    lower: float,
    upper: float,
) -> float:
    """
    One dual-ascent step on λ, kept within ``[lower, upper]``.

    ``multiplicative``: ``λ ← λ · exp(η · clip(V/δ − 1, −c, c))`` (scale free).
    ``linear``: projected ascent ``λ ← λ + η · clip(V − δ, −c·δ, c·δ)``.

    The clip ``c`` (``step_clip``) exists because the variance of a small minibatch is heavy tailed: one
    outlier minibatch must not move λ by orders of magnitude. A pair ``(down, up)`` bounds a fall and a rise
    separately (see :func:`clip_violation`).

    :param lagrange_multiplier: λ before the step (within ``[lower, upper]``).
    :param variance: The measured ratio variance V (finite, ≥ 0).
    :param variance_target: The variance bound δ (> 0).
    :param mode: ``"multiplicative"`` or ``"linear"``.
    :param step_size: The dual step size η (> 0).
    :param step_clip: ``c``, ``(down, up)`` or ``None``; see :func:`clip_violation`.
    :param lower: Lower bound of λ (e.g. :func:`multiplier_lower_bound`).
    :param upper: Upper bound of λ.
    :return: The new λ as a plain Python float.
    """
    if not math.isfinite(variance):
        raise ValueError(f"dual_update needs a finite variance, got {variance}")
    if mode == "multiplicative":
        violation = clip_violation(variance / variance_target - 1.0, step_clip)
        # the cap only matters with step_clip=None, where exp() would overflow on a wild minibatch
        new_value = lagrange_multiplier * math.exp(min(step_size * violation, 700.0))
    elif mode == "linear":
        violation = clip_violation(variance - variance_target, step_clip, scale=variance_target)
        new_value = lagrange_multiplier + step_size * violation
    else:
        raise ValueError(f"dual_update must be one of {DUAL_UPDATES}, got {mode!r}")
    return float(min(max(new_value, lower), upper))
