"""The R²VPO objective: ratio-variance penalty and the dual update of its Lagrange multiplier.

Kept free of SB3 so that the maths can be tested on hand-made tensors.
"""

import math

import torch as th

VARIANCE_CENTERS = ("mean", "one")
DUAL_UPDATES = ("multiplicative", "linear")
DUAL_UPDATE_FREQUENCIES = ("minibatch", "epoch")


def ratio_variance(ratio: th.Tensor, center: str = "mean") -> th.Tensor:
    """
    Second moment of the policy ratio over a minibatch.

    :param ratio: Importance ratios ``pi_theta(a|s) / mu(a|s)``, shape ``(batch,)``.
    :param center: ``"mean"`` centres on the minibatch mean (second central moment, biased estimator);
        ``"one"`` centres on 1, the chi-square estimate ``mean((r - 1)^2)`` (``E_mu[r] = 1``).
    :return: Scalar tensor, differentiable with respect to ``ratio``.
    """
    if center == "mean":
        return th.mean((ratio - ratio.mean()) ** 2)
    if center == "one":
        return th.mean((ratio - 1.0) ** 2)
    raise ValueError(f"variance_center must be one of {VARIANCE_CENTERS}, got {center!r}")


def policy_objective(
    ratio: th.Tensor,
    advantages: th.Tensor,
    lagrange_multiplier: float,
    variance_target: float,
    center: str = "mean",
) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    """
    Lagrangian of the variance-constrained surrogate, to be minimised over the policy with λ held fixed:
    ``L = -mean(r * A) + λ * (Var(r) - δ)``.

    :param ratio: Importance ratios, shape ``(batch,)``.
    :param advantages: Advantage estimates, shape ``(batch,)``.
    :param lagrange_multiplier: Current λ (a plain float, so no gradient flows into it).
    :param variance_target: The variance bound δ.
    :param center: See :func:`ratio_variance`.
    :return: ``(policy_loss, surrogate_loss, variance)`` where ``surrogate_loss = -mean(r * A)``.
    """
    surrogate_loss = -th.mean(ratio * advantages)
    variance = ratio_variance(ratio, center)
    return surrogate_loss + lagrange_multiplier * (variance - variance_target), surrogate_loss, variance


def dual_update(
    lagrange_multiplier: float,
    variance: float,
    variance_target: float,
    mode: str,
    step_size: float,
    step_clip: float | None,
    lower: float,
    upper: float,
) -> float:
    """
    One dual-ascent step on λ, kept within ``[lower, upper]``.

    ``multiplicative``: ``λ ← λ · exp(η · clip(V/δ − 1, −c, c))`` (scale free).
    ``linear``: projected ascent ``λ ← λ + η · clip(V − δ, −c·δ, c·δ)``.

    The clip ``c`` (``step_clip``) exists because the variance of a small minibatch is heavy tailed: one
    outlier minibatch must not move λ by orders of magnitude. ``None`` disables it.

    :return: The new λ as a plain Python float.
    """
    if not math.isfinite(variance):
        raise ValueError(f"dual_update needs a finite variance, got {variance}")
    if mode == "multiplicative":
        violation = variance / variance_target - 1.0
        if step_clip is not None:
            violation = min(max(violation, -step_clip), step_clip)
        # the cap only matters with step_clip=None, where exp() would overflow on a wild minibatch
        new_value = lagrange_multiplier * math.exp(min(step_size * violation, 700.0))
    elif mode == "linear":
        violation = variance - variance_target
        if step_clip is not None:
            bound = step_clip * variance_target
            violation = min(max(violation, -bound), bound)
        new_value = lagrange_multiplier + step_size * violation
    else:
        raise ValueError(f"dual_update must be one of {DUAL_UPDATES}, got {mode!r}")
    return float(min(max(new_value, lower), upper))
