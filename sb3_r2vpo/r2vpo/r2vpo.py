import difflib
import functools
import inspect
import io
import math
import numbers
import pathlib
import warnings
from collections import deque
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule, TensorDict
from stable_baselines3.common.utils import FloatSchedule, explained_variance
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from torch.nn import functional as F

from sb3_r2vpo.r2vpo.objective import (
    DUAL_UPDATE_FREQUENCIES,
    DUAL_UPDATES,
    DUAL_VARIANCE_ESTIMATES,
    MIN_VARIANCE_TARGET,
    VARIANCE_CENTERS,
    StepClip,
    dual_update,
    multiplier_lower_bound,
    policy_objective,
    ratio_variance,
    stationary_multiplier,
)
from sb3_r2vpo.r2vpo.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_r2vpo.r2vpo.replay import (
    REPLAY_ADVANTAGES,
    ReplayBatch,
    RolloutRecorder,
    RolloutRecording,
    RolloutReplay,
    available_memory_bytes,
    build_replay_batch,
    rollout_nbytes,
)

SelfR2VPO = TypeVar("SelfR2VPO", bound="R2VPO")

SUPPORTED_ACTION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)

# The share of samples whose ratio PPO's default clip (0.2) would have zeroed; logged to show what the brake kept.
PPO_REFERENCE_CLIP = 0.2
# Samples per forward pass when the ratio variance is measured over a whole rollout (no gradient is kept).
ROLLOUT_VARIANCE_CHUNK = 1024


_NONFINITE_ADVICE = (
    "Lower `learning_rate`, lower `max_grad_norm`, lower `variance_target` or `dual_step_size`, and check the "
    "environment for NaN observations/rewards (stable_baselines3.common.vec_env.VecCheckNan finds them)."
)


class NonFiniteTrainingError(RuntimeError):
    """Raised when too many consecutive R2VPO gradient steps produced a non-finite loss, variance or gradient."""


# Arguments of SB3's PPO that R2VPO does not have, with what to use instead.
PPO_ONLY_ARGUMENTS: dict[str, str] = {
    "clip_range": (
        "R2VPO has no policy-ratio clip; `variance_target` (δ, the bound on the variance of the ratio π/μ) plays its "
        "role. To convert a clip ε: δ ≈ ε²/3, the variance of ratios spread evenly over PPO's band [1 − ε, 1 + ε] "
        "(at most ε², all ratios at its edges), so ε = 0.2 → δ ≈ 0.013; or δ ≈ 2 × a KL target "
        "(Var(π/μ) = χ² ≈ 2·KL). The default δ is 0.04, the sane range 0.01–0.1. `clip_range_vf`, the value "
        "clip, is accepted."
    ),
}

# The key of λ in get_parameters() / set_parameters() (and its file in a saved model, lagrange_multiplier.pth).
MULTIPLIER_PARAMETERS_KEY = "lagrange_multiplier"


def ppo_argument_error(name: str, where: str = "R2VPO()") -> TypeError:
    """The error for a PPO argument R2VPO does not take (see :data:`PPO_ONLY_ARGUMENTS`)."""
    return TypeError(f"{where} got the argument `{name}`, which R2VPO does not take: {PPO_ONLY_ARGUMENTS[name]}")


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (SB3's schedules and model files want plain numbers)."""
    if isinstance(value, np.generic) and not isinstance(value, np.bool_):
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real):
            return float(value)
    return value


def _accepts_ppo_habits(init):
    """
    Wrap ``R2VPO.__init__``: a PPO-only argument (``clip_range``) is refused with what to use instead, and numbers
    given as numpy scalars become Python numbers. ``inspect.signature`` still shows ``__init__``'s own.
    """

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        for name in PPO_ONLY_ARGUMENTS:
            if name in kwargs:
                raise ppo_argument_error(name)
        return init(self, *map(_plain, args), **{name: _plain(value) for name, value in kwargs.items()})

    return wrapper


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}")


def _is_real(value: Any) -> bool:
    """A real number, Python's or numpy's (``np.float32(0.02)``); bools are not numbers here."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not _is_real(value):
        raise TypeError(f"`{name}` must be a number{' or None' if allow_none else ''}, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a finite number > 0, got {value}")


def _check_annealed_schedule(name: str, value: float | Schedule | None, allow_none: bool = False, at_zero: str = "") -> None:
    """
    A constant > 0, or a schedule > 0 at the start of training (progress remaining 1) that may anneal to 0 at
    its end (progress remaining 0), as the zoo's ``lin_<value>`` does.
    """
    if not callable(value):
        if value is not None and not _is_real(value):
            hint = " (a 'lin_<value>' string becomes a schedule in a YAML entry only)" if isinstance(value, str) else ""
            allowed = "a number, a schedule (callable of the progress remaining)" + (" or None" if allow_none else "")
            raise TypeError(f"`{name}` must be {allowed}, got {type(value).__name__}{hint}")
        _check_positive(name, value, allow_none=allow_none)
        return
    _check_positive(f"{name}(1.0)", _plain(value(1.0)))
    end = _plain(value(0.0))
    if not _is_real(end):
        raise TypeError(f"`{name}(0.0)` must be a number, got {type(end).__name__}")
    if not (math.isfinite(end) and end >= 0):
        raise ValueError(f"`{name}(0.0)` must be a finite number >= 0 (a schedule may anneal to 0{at_zero}), got {end}")


def _check_variance_target(value: float | Schedule) -> None:
    """A constant > 0, or a schedule > 0 at the start of training that may anneal to 0 at its end (``lin_0.04``)."""
    _check_annealed_schedule("variance_target", value, at_zero=f", where δ is held at {MIN_VARIANCE_TARGET}")


def _checked_multiplier(value: Any) -> float:
    """λ given to ``load`` or ``set_parameters``: a finite number >= 0 (0 is reachable with the linear update)."""
    value = float(value) if isinstance(value, th.Tensor) else _plain(value)
    if not _is_real(value):
        raise TypeError(f"`{MULTIPLIER_PARAMETERS_KEY}` must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"`{MULTIPLIER_PARAMETERS_KEY}` must be a finite number >= 0, got {value}")
    return float(value)


def _check_step_clip(value: Any) -> StepClip:
    """``dual_step_clip`` as stored: None, a float, or a ``(down, up)`` tuple of floats (YAML gives lists)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(
                f"`dual_step_clip` as a pair must be (down, up), two numbers > 0, got {len(value)} values: {value!r}"
            )
        for index, bound in enumerate(value):
            if not _is_real(bound):
                raise TypeError(f"`dual_step_clip[{index}]` must be a number, got {type(bound).__name__}")
            if not (math.isfinite(bound) and bound > 0):
                raise ValueError(f"`dual_step_clip[{index}]` must be a finite number > 0, got {bound}")
        return float(value[0]), float(value[1])
    if value is not None and not _is_real(value):
        kind = type(value).__name__
        raise TypeError(f"`dual_step_clip` must be a number, a pair (down, up) of numbers, or None, got {kind}")
    _check_positive("dual_step_clip", value if value is None else float(value), allow_none=True)
    return None if value is None else float(value)


def _check_optional_range(name: str, value: Any, low: float, high: float, low_open: bool, meaning: str) -> None:
    """``value`` is None or a finite number in ``(low, high]`` (``[low, high]`` unless ``low_open``)."""
    if value is None:
        return
    interval = f"{'(' if low_open else '['}{low}, {high}{']' if math.isfinite(high) else ')'}"
    if not _is_real(value):
        raise TypeError(f"`{name}` must be a number in {interval} or None, got {type(value).__name__}")
    above = value > low if low_open else value >= low
    if not (math.isfinite(value) and above and value <= high):
        raise ValueError(f"`{name}` must be a number in {interval} ({meaning}) or None, got {value}")


class R2VPO(OnPolicyAlgorithm):
    """
    Ratio-Variance Regularized Policy Optimization (R²VPO).

    PPO without ratio clipping: the policy maximises ``mean(r * A)`` under the constraint
    ``Var(r) <= variance_target`` on the importance ratio ``r = pi_theta(a|s) / mu(a|s)``, enforced by a
    Lagrange multiplier λ that adapts by dual ascent after every minibatch (or every epoch, or once per rollout).

    Paper (abstract only was available; the formulation is derived from the stated constrained problem):
    Luo et al., "R²VPO", arXiv 2605.26784 (ICML 2026).

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate, it can be a function of the current progress remaining (from 1 to 0)
    :param n_steps: The number of steps to run for each environment per update
        (the rollout buffer size is ``n_steps * n_envs``)
    :param batch_size: Minibatch size, at least 2 (the ratio variance of one sample is zero)
    :param n_epochs: Number of epochs when optimizing the surrogate loss
    :param gamma: Discount factor
    :param gae_lambda: Factor for trade-off of bias vs variance for Generalized Advantage Estimator
    :param variance_target: The bound δ on the ratio variance (≈ 2 × a KL target; sane range 0.01–0.1).
        It can be a function of the current progress remaining (from 1 to 0), > 0 at the start; like PPO's
        annealed clip it may reach 0 at the end of training, where δ is held at ``MIN_VARIANCE_TARGET`` (1e-6).
    :param initial_lagrange_multiplier: λ at the start of training; ``None`` uses ``1 / (2 sqrt(δ))``, the
        stationary value for normalized advantages, clipped into the λ bounds.
    :param lagrange_multiplier_min: Lower bound of λ (must be > 0 for the multiplicative update)
    :param lagrange_multiplier_max: Upper bound of λ
    :param lagrange_multiplier_floor: A floor tied to the stationary multiplier ``λ* = 1 / (2 √δ)``: a fraction
        ``f`` in (0, 1]; λ's lower bound in each update is then ``max(lagrange_multiplier_min, f · λ*(δ_t))`` for
        that update's (possibly scheduled) δ_t, cut to ``lagrange_multiplier_max``, and λ is lifted to it at the
        start of the update. ``None`` (default): the lower bound is ``lagrange_multiplier_min`` alone. With a
        floor the brake never fully releases.
    :param dual_update: ``"multiplicative"`` (λ ← λ·exp(η·(V/δ − 1))) or ``"linear"`` (λ ← λ + η·(V − δ))
    :param dual_step_size: The dual step size η
    :param dual_step_clip: Bound ``c`` (> 0) on the violation used by one dual step (``V/δ − 1`` is clipped to
        ``[−c, c]``; for the linear update ``V − δ`` to ``[−c·δ, c·δ]``). A pair ``(down, up)`` (tuple or list,
        both > 0) clips asymmetrically to ``[−down, up]`` (linear: ``[−down·δ, up·δ]``), e.g. ``(1, 10)`` lets λ
        rise faster than it falls. ``None`` disables it.
    :param dual_update_frequency: ``"minibatch"`` (after every gradient step, on that minibatch's variance),
        ``"epoch"`` (once per epoch, see ``dual_variance_estimate``) or ``"rollout"``: λ is held constant for
        the whole update (all epochs), then takes one dual step on the ratio variance of the final policy over
        the whole current rollout (measured without gradient; with replay, over the fresh rollout's samples
        only, not the stale ones). No dual step is taken in an update without a single finite gradient step.
    :param dual_variance_estimate: The variance that an epoch's dual step uses under
        ``dual_update_frequency="epoch"``: ``"minibatch"`` (the mean of the epoch's minibatch variances) or
        ``"rollout"`` (the current policy's ratio variance over the whole rollout, measured at the end of the
        epoch — one extra forward pass over the rollout per epoch; with replay, the fresh samples only).
        ``"rollout"`` is refused with ``"minibatch"`` frequency, and implied (this argument is ignored) under
        ``"rollout"`` frequency.
    :param variance_center: ``"mean"`` (second central moment) or ``"one"`` (chi-square estimate)
    :param log_ratio_guard: Numerical guard: the log-ratio is clamped to ``[−g, g]`` before ``exp``. It must
        not act as a trust region; ``train/logratio_guard_fraction`` logs how often it fires.
    :param replay_rollouts: K, the number of previous rollouts kept and trained on again (0: on-policy). Each
        sample's ratio is taken against the policy that collected it. Costs K rollouts of memory on ``device``
        (see the README) and K + 1 times the gradient steps per update.
    :param replay_advantage: How stale rollouts get fresh advantages and value targets under the current critic:
        ``"gae"`` (recomputed GAE) or ``"vtrace"`` (V-trace targets, ρ̄ = c̄ = 1). Their time-limit bootstraps
        ``γ·V(terminal obs)`` are recomputed under the current critic too, and under ``VecNormalize`` their
        original observations and rewards are normalised with the current statistics.
    :param save_replay: Whether ``save()`` writes the stored rollouts into the model file (default: no; a
        loaded model then starts with an empty replay)
    :param clip_range_vf: Clipping parameter for the value function (no policy-ratio clipping exists: PPO's
        ``clip_range`` is refused, ``variance_target`` plays its role). It can be a function of the current
        progress remaining, > 0 at the start and ≥ 0 at the end (``lin_0.2``). ``None`` (default) disables it.
    :param normalize_advantage: Whether to normalize the advantage per minibatch
    :param ent_coef: Entropy coefficient for the loss calculation
    :param vf_coef: Value function coefficient for the loss calculation
    :param max_grad_norm: The maximum value for the gradient clipping
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE (-1: once per rollout)
    :param rollout_buffer_class: Rollout buffer class to use. If ``None``, it will be automatically selected.
    :param rollout_buffer_kwargs: Keyword arguments to pass to the rollout buffer on creation
    :param target_kl: Stop the epoch loop early when the approximate KL exceeds ``1.5 * target_kl``
        (``None``: no limit). The KL is the policy's change during this update; with replay it is measured
        against the policy at the start of the update (not against each stale sample's older behaviour policy),
        so the first gradient step of an update is never stopped.
    :param variance_stop: κ ≥ 1, the ratio-variance counterpart of ``target_kl``: the epoch loop stops (as
        ``target_kl`` stops it: before that minibatch's gradient step, and no later epoch runs) when a
        minibatch's ratio variance exceeds ``κ · δ``. ``None`` (default): no such stop. With replay the
        minibatch variance includes the stale samples, whose ratios are spread wider.
    :param max_nonfinite_steps: Number of consecutive gradient steps with a non-finite loss, variance or
        gradient that are skipped before training is stopped with :class:`NonFiniteTrainingError`; the count
        runs across updates (it is model state). A ``learn()`` call whose updates took no finite gradient step
        at all raises :class:`NonFiniteTrainingError` too.
    :param stats_window_size: Window size for the rollout logging
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: Verbosity level: 0 for no output, 1 for info messages, 2 for debug messages
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }

    #: Budget of ``learn()`` when called without ``total_timesteps``.
    default_total_timesteps: ClassVar[int] = 100_000

    @_accepts_ppo_habits
    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 2048,
        batch_size: int = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        variance_target: float | Schedule = 0.04,
        initial_lagrange_multiplier: float | None = None,
        lagrange_multiplier_min: float = 1e-3,
        lagrange_multiplier_max: float = 1e3,
        lagrange_multiplier_floor: float | None = None,
        dual_update: str = "multiplicative",
        dual_step_size: float = 0.05,
        dual_step_clip: float | tuple[float, float] | list[float] | None = 1.0,
        dual_update_frequency: str = "minibatch",
        dual_variance_estimate: str = "minibatch",
        variance_center: str = "mean",
        log_ratio_guard: float = 20.0,
        replay_rollouts: int = 0,
        replay_advantage: str = "gae",
        save_replay: bool = False,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        target_kl: float | None = None,
        variance_stop: float | None = None,
        max_nonfinite_steps: int = 10,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        self._validate_arguments(
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            variance_target=variance_target,
            initial_lagrange_multiplier=initial_lagrange_multiplier,
            lagrange_multiplier_min=lagrange_multiplier_min,
            lagrange_multiplier_max=lagrange_multiplier_max,
            lagrange_multiplier_floor=lagrange_multiplier_floor,
            dual_update=dual_update,
            dual_step_size=dual_step_size,
            dual_step_clip=dual_step_clip,
            dual_update_frequency=dual_update_frequency,
            dual_variance_estimate=dual_variance_estimate,
            variance_center=variance_center,
            log_ratio_guard=log_ratio_guard,
            replay_rollouts=replay_rollouts,
            replay_advantage=replay_advantage,
            clip_range_vf=clip_range_vf,
            target_kl=target_kl,
            variance_stop=variance_stop,
            max_nonfinite_steps=max_nonfinite_steps,
        )
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            device=device,
            seed=seed,
            _init_setup_model=False,
            # Checked below, so that an unsupported space is a ValueError rather than an AssertionError.
            supported_action_spaces=None,
        )
        if self.env is not None:
            self._check_env_arguments(batch_size, stacklevel=4)

        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.variance_target = variance_target
        self.initial_lagrange_multiplier = None if initial_lagrange_multiplier is None else float(initial_lagrange_multiplier)
        self.lagrange_multiplier_min = float(lagrange_multiplier_min)
        self.lagrange_multiplier_max = float(lagrange_multiplier_max)
        self.lagrange_multiplier_floor = None if lagrange_multiplier_floor is None else float(lagrange_multiplier_floor)
        self.dual_update = dual_update
        self.dual_step_size = float(dual_step_size)
        self.dual_step_clip = _check_step_clip(dual_step_clip)
        self.dual_update_frequency = dual_update_frequency
        self.dual_variance_estimate = dual_variance_estimate
        self.variance_center = variance_center
        self.log_ratio_guard = float(log_ratio_guard)
        self.clip_range_vf = clip_range_vf
        self.normalize_advantage = normalize_advantage
        self.target_kl = target_kl
        self.variance_stop = None if variance_stop is None else float(variance_stop)
        self.max_nonfinite_steps = max_nonfinite_steps
        self.replay_rollouts = int(replay_rollouts)
        self.replay_advantage = replay_advantage
        self.save_replay = bool(save_replay)
        if self.env is not None and self.replay_rollouts > 0:
            self._check_replay_memory()
        # Model state, saved with the model; set in _setup_model unless load() restored it.
        self.lagrange_multiplier: float | None = None
        self.replay: RolloutReplay | None = None
        # What the last collect_rollouts recorded for the replay (not saved).
        self._recording: RolloutRecording | None = None
        self._rollout_index = 0
        # Skipped (non-finite) gradient steps in a row, across updates; finite and skipped gradient steps, ever.
        self._consecutive_nonfinite = 0
        self._finite_gradient_steps = 0
        self._nonfinite_gradient_steps = 0

        if _init_setup_model:
            self._setup_model()

    @staticmethod
    def _validate_arguments(
        n_steps: int,
        batch_size: int,
        n_epochs: int,
        variance_target: float | Schedule,
        initial_lagrange_multiplier: float | None,
        lagrange_multiplier_min: float,
        lagrange_multiplier_max: float,
        lagrange_multiplier_floor: float | None,
        dual_update: str,
        dual_step_size: float,
        dual_step_clip: float | tuple[float, float] | list[float] | None,
        dual_update_frequency: str,
        dual_variance_estimate: str,
        variance_center: str,
        log_ratio_guard: float,
        replay_rollouts: int,
        replay_advantage: str,
        clip_range_vf: float | Schedule | None,
        target_kl: float | None,
        variance_stop: float | None,
        max_nonfinite_steps: int,
    ) -> None:
        for name, value, minimum in (
            ("n_steps", n_steps, 1),
            ("batch_size", batch_size, 2),
            ("n_epochs", n_epochs, 1),
            ("max_nonfinite_steps", max_nonfinite_steps, 1),
            ("replay_rollouts", replay_rollouts, 0),
        ):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
                raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
            if value < minimum:
                raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
        _check_choice("dual_update", dual_update, DUAL_UPDATES)
        _check_choice("dual_update_frequency", dual_update_frequency, DUAL_UPDATE_FREQUENCIES)
        _check_choice("dual_variance_estimate", dual_variance_estimate, DUAL_VARIANCE_ESTIMATES)
        if dual_variance_estimate == "rollout" and dual_update_frequency == "minibatch":
            raise ValueError(
                "`dual_variance_estimate`='rollout' needs `dual_update_frequency`='epoch' (or 'rollout', where it "
                "is implied): a full-rollout variance after every minibatch would cost a pass over the rollout per "
                "gradient step; got `dual_update_frequency`='minibatch'"
            )
        _check_choice("variance_center", variance_center, VARIANCE_CENTERS)
        _check_choice("replay_advantage", replay_advantage, REPLAY_ADVANTAGES)
        _check_variance_target(variance_target)
        _check_positive("dual_step_size", dual_step_size)
        _check_step_clip(dual_step_clip)
        _check_optional_range(
            "lagrange_multiplier_floor",
            lagrange_multiplier_floor,
            0.0,
            1.0,
            low_open=True,
            meaning="the fraction of the stationary multiplier 1/(2√δ) below which λ may not fall",
        )
        _check_optional_range(
            "variance_stop",
            variance_stop,
            1.0,
            math.inf,
            low_open=False,
            meaning="the epochs stop when a minibatch's ratio variance exceeds variance_stop × variance_target; "
            "below 1 they would stop before the constraint binds",
        )
        _check_positive("log_ratio_guard", log_ratio_guard)
        _check_positive("target_kl", target_kl, allow_none=True)
        # As PPO: a constant > 0; a schedule (``lin_0.2``) may decay to 0, where the value function is held.
        _check_annealed_schedule("clip_range_vf", clip_range_vf, allow_none=True)
        _check_positive("lagrange_multiplier_max", lagrange_multiplier_max)
        if dual_update == "multiplicative":
            # λ = 0 is absorbing for a multiplicative update.
            _check_positive("lagrange_multiplier_min", lagrange_multiplier_min)
        elif not _is_real(lagrange_multiplier_min):
            raise TypeError(f"`lagrange_multiplier_min` must be a number, got {type(lagrange_multiplier_min).__name__}")
        elif not (math.isfinite(lagrange_multiplier_min) and lagrange_multiplier_min >= 0):
            raise ValueError(f"`lagrange_multiplier_min` must be >= 0, got {lagrange_multiplier_min}")
        if lagrange_multiplier_min >= lagrange_multiplier_max:
            raise ValueError(
                "`lagrange_multiplier_min` must be smaller than `lagrange_multiplier_max`, "
                f"got [{lagrange_multiplier_min}, {lagrange_multiplier_max}]"
            )
        if initial_lagrange_multiplier is not None:
            _check_positive("initial_lagrange_multiplier", initial_lagrange_multiplier)
            if not lagrange_multiplier_min <= initial_lagrange_multiplier <= lagrange_multiplier_max:
                raise ValueError(
                    f"`initial_lagrange_multiplier` must lie in [lagrange_multiplier_min, lagrange_multiplier_max] = "
                    f"[{lagrange_multiplier_min}, {lagrange_multiplier_max}], got {initial_lagrange_multiplier}"
                )

    def _check_env_arguments(self, batch_size: int, stacklevel: int) -> None:
        """The checks that need the env: its action space, and the rollout size against ``batch_size``."""
        if not isinstance(self.action_space, SUPPORTED_ACTION_SPACES):
            names = ", ".join(space.__name__ for space in SUPPORTED_ACTION_SPACES)
            raise ValueError(f"R2VPO supports the action spaces {names}; the env has {self.action_space}")
        buffer_size = self.env.num_envs * self.n_steps
        if buffer_size < 2:
            raise ValueError(f"`n_steps * n_envs` must be at least 2, got n_steps={self.n_steps}, n_envs={self.env.num_envs}")
        if batch_size > buffer_size:
            warnings.warn(
                f"batch_size={batch_size} exceeds the rollout buffer (n_steps * n_envs = {buffer_size}): "
                f"every epoch is a single minibatch of {buffer_size} samples.",
                stacklevel=stacklevel,
            )
        elif buffer_size % batch_size > 0:
            warnings.warn(
                f"The rollout buffer holds n_steps * n_envs = {buffer_size} samples, not a multiple of "
                f"batch_size={batch_size}: each epoch ends with a truncated minibatch of {buffer_size % batch_size}. "
                "Prefer a batch_size that divides n_steps * n_envs.",
                stacklevel=stacklevel,
            )

    def _setup_model(self) -> None:
        # R2VPO.load() hands its keyword arguments over here, after SB3 restored the saved attributes.
        overrides = self.__dict__.pop("_load_overrides", None)
        if overrides is not None:
            self._apply_load_overrides(overrides)
        super()._setup_model()
        self.variance_target = FloatSchedule(self.variance_target)
        # A saved (down, up) pair comes back from the model file as a list.
        self.dual_step_clip = _check_step_clip(self.dual_step_clip)
        if self.clip_range_vf is not None:
            self.clip_range_vf = FloatSchedule(self.clip_range_vf)
        if self.lagrange_multiplier is None:
            self.lagrange_multiplier = self._default_initial_multiplier()
        if self.replay_rollouts > 0:
            # A loaded model keeps the replay it was saved with (save_replay=True), on the new device, with the
            # capacity asked for now: beyond it, the newest rollouts are kept.
            if self.replay is None:
                self.replay = RolloutReplay(self.replay_rollouts, self.device)
            else:
                self.replay.resize(self.replay_rollouts).to(self.device)
        else:
            self.replay = None

    def _apply_load_overrides(self, overrides: dict[str, Any]) -> None:
        """
        The keyword arguments of :meth:`load`, over the saved attributes: each one takes effect, or is refused
        with a message; the merged arguments are then checked as at construction.
        """
        parameters = _constructor_parameters()
        for name, value in overrides.items():
            value = _plain(value)
            if name in PPO_ONLY_ARGUMENTS:
                raise ppo_argument_error(name, "R2VPO.load()")
            if name == "policy_kwargs":
                if value != self.policy_kwargs:
                    raise ValueError(
                        "The specified policy kwargs do not equal the stored policy kwargs. "
                        f"Stored kwargs: {self.policy_kwargs}, specified kwargs: {value}"
                    )
            elif name == "policy":
                policy_class = self._get_policy_from_name(value) if isinstance(value, str) else value
                if policy_class is not self.policy_class:
                    raise ValueError(
                        f"`policy` cannot be changed by R2VPO.load(): the saved weights are a {self.policy_class.__name__}'s, "
                        f"got {value!r}"
                    )
            elif name == "use_sde":
                if bool(value) != bool(self.use_sde):
                    raise ValueError(
                        f"`use_sde` cannot be changed by R2VPO.load(): it changes the policy's parameters (the model was "
                        f"saved with use_sde={self.use_sde}); train a new model instead"
                    )
            elif name == "_init_setup_model":
                raise TypeError("R2VPO.load() takes no `_init_setup_model`")
            elif name == "stats_window_size":
                self._stats_window_size = value
                # The saved episode statistics are kept, in windows of the new size.
                for buffer in ("ep_info_buffer", "ep_success_buffer"):
                    if getattr(self, buffer, None) is not None:
                        setattr(self, buffer, deque(getattr(self, buffer), maxlen=value))
            elif name == "initial_lagrange_multiplier":
                # λ is learned state, restored from the file; a new initial value restarts it there.
                if value != self.initial_lagrange_multiplier:
                    self._multiplier_override = "initial"
                self.initial_lagrange_multiplier = value
            elif name == MULTIPLIER_PARAMETERS_KEY:
                self._multiplier_override = _checked_multiplier(value)
            elif name in parameters or name in self.__dict__:
                setattr(self, name, value)
            else:
                close = difflib.get_close_matches(name, sorted(parameters), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise TypeError(f"R2VPO.load() got an unexpected keyword argument {name!r}{hint}")
        self._validate_arguments(**{name: getattr(self, name) for name in _VALIDATED_ARGUMENTS})
        for name, convert in _STORED_AS.items():
            value = getattr(self, name)
            setattr(self, name, None if value is None else convert(value))
        if self.env is not None:
            self._check_env_arguments(self.batch_size, stacklevel=6)
            if self.replay_rollouts > 0:
                self._check_replay_memory()
        self._loading = True

    def _check_replay_memory(self) -> None:
        per_rollout = rollout_nbytes(self.observation_space, self.action_space, self.n_steps, self.n_envs)
        needed = self.replay_rollouts * per_rollout
        available = available_memory_bytes(th.device(self.device))
        if available is not None and needed > available // 2:
            raise ValueError(
                f"`replay_rollouts`={self.replay_rollouts} needs about {needed / 2**20:.0f} MiB "
                f"({per_rollout / 2**20:.1f} MiB per rollout of n_steps * n_envs = {self.n_steps * self.n_envs} samples) "
                f"on {self.device}, more than half of the {available / 2**20:.0f} MiB available; lower it or n_steps"
            )

    def _excluded_save_params(self) -> list[str]:
        excluded = [*super()._excluded_save_params(), "_recording"]
        return excluded if self.save_replay else [*excluded, "replay"]

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfR2VPO],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs,
    ) -> SelfR2VPO:
        """
        Load a model; see :meth:`stable_baselines3.common.base_class.BaseAlgorithm.load`.

        Every keyword argument takes effect or is refused: any constructor argument (``replay_rollouts=0`` stops
        the replay, a larger K keeps the stored rollouts, ``n_steps`` rebuilds the rollout buffer, ...), checked
        with the saved ones as at construction; ``policy``, ``policy_kwargs`` and ``use_sde`` only with their
        saved values (they fix the saved weights' shapes). λ is restored from the file; an
        ``initial_lagrange_multiplier`` other than the saved one restarts it there, and ``lagrange_multiplier=``
        sets it. A saved attribute that is not a constructor argument may be set as in SB3; any other name is a
        ``TypeError``.
        """
        model = super().load(
            path,
            env=env,
            device=device,
            custom_objects=custom_objects,
            print_system_info=print_system_info,
            force_reset=force_reset,
            _load_overrides=kwargs,
        )
        model.__dict__.pop("_loading", None)
        override = model.__dict__.pop("_multiplier_override", None)
        if override == "initial":
            model.lagrange_multiplier = model._default_initial_multiplier()
        elif override is not None:
            model.lagrange_multiplier = override
        return model

    def get_parameters(self) -> dict[str, dict]:
        """
        The parameters of the agent (see SB3's ``get_parameters``), with λ as ``"lagrange_multiplier"``: a tiny
        state dict ``{"value": tensor}``. λ is learned state, like SAC's entropy coefficient.
        """
        params = super().get_parameters()
        params[MULTIPLIER_PARAMETERS_KEY] = {"value": th.tensor(self.lagrange_multiplier, dtype=th.float64)}
        return params

    def set_parameters(
        self,
        load_path_or_dict: str | pathlib.Path | io.BufferedIOBase | TensorDict,
        exact_match: bool = True,
        device: th.device | str = "auto",
    ) -> None:
        """
        Load parameters from a saved model or from :meth:`get_parameters`, λ included. Parameters without λ (a
        file of an older version) leave λ as it is, with a warning when ``exact_match`` is set.
        """
        if isinstance(load_path_or_dict, dict):
            params = dict(load_path_or_dict)
        else:
            _, params, _ = load_from_zip_file(load_path_or_dict, device=device, load_data=False)
        multiplier = params.pop(MULTIPLIER_PARAMETERS_KEY, None)
        super().set_parameters(params, exact_match=exact_match, device=device)
        if multiplier is not None:
            self.lagrange_multiplier = _checked_multiplier(multiplier["value"])
        elif exact_match and not self.__dict__.get("_loading", False):
            warnings.warn(
                f"These parameters hold no {MULTIPLIER_PARAMETERS_KEY!r} (saved by an older version?): the weights were "
                f"set, λ was left at {self.lagrange_multiplier}",
                stacklevel=2,
            )

    def _default_initial_multiplier(self) -> float:
        if self.initial_lagrange_multiplier is not None:
            return self.initial_lagrange_multiplier
        stationary = stationary_multiplier(self.variance_target(1.0))
        return float(min(max(stationary, self.lagrange_multiplier_min), self.lagrange_multiplier_max))

    def _policy_loss(
        self, ratio: th.Tensor, advantages: th.Tensor, variance_target: float
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """``(policy_loss, surrogate_loss, ratio_variance)`` of one minibatch; see :func:`policy_objective`."""
        return policy_objective(ratio, advantages, self.lagrange_multiplier, variance_target, self.variance_center)

    def _variance_target_now(self) -> float:
        """δ for this update: the schedule's value, held at ``MIN_VARIANCE_TARGET`` where it anneals to 0."""
        value = float(self.variance_target(self._current_progress_remaining))
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"`variance_target` gave {value} at progress remaining {self._current_progress_remaining:.4f}; "
                "it must stay a finite number >= 0"
            )
        return max(value, MIN_VARIANCE_TARGET)

    def _multiplier_lower_bound(self, variance_target: float) -> float:
        """λ's lower bound in effect for an update with variance target δ; see :func:`multiplier_lower_bound`."""
        return multiplier_lower_bound(
            self.lagrange_multiplier_min, self.lagrange_multiplier_max, self.lagrange_multiplier_floor, variance_target
        )

    def _step_dual(self, variance: float, variance_target: float) -> None:
        self.lagrange_multiplier = dual_update(
            self.lagrange_multiplier,
            variance,
            variance_target,
            mode=self.dual_update,
            step_size=self.dual_step_size,
            step_clip=self.dual_step_clip,
            lower=self._multiplier_lower_bound(variance_target),
            upper=self.lagrange_multiplier_max,
        )

    def _rollout_ratio_variance(self, replay_batch: ReplayBatch | None) -> float:
        """
        Ratio variance of the current policy over the whole current rollout (no gradient, in chunks), with the
        same centre and log-ratio guard as training; with replay, over the fresh rollout's samples only.
        """
        was_training = self.policy.training
        self.policy.set_training_mode(False)  # the mode μ's log-probabilities were collected in
        ratios = []
        with th.no_grad():
            for observations, actions, old_log_prob in self._rollout_chunks(replay_batch):
                _, log_prob, _ = self.policy.evaluate_actions(observations, actions)
                log_ratio = log_prob.flatten() - old_log_prob.flatten()
                ratios.append(th.exp(th.clamp(log_ratio, -self.log_ratio_guard, self.log_ratio_guard)))
        self.policy.set_training_mode(was_training)
        return float(ratio_variance(th.cat(ratios), self.variance_center))

    def _rollout_chunks(self, replay_batch: ReplayBatch | None):
        """``(observations, actions, old_log_prob)`` of the fresh rollout in order, in chunks; consumes no RNG."""
        chunk = max(self.batch_size, ROLLOUT_VARIANCE_CHUNK)
        if replay_batch is not None:
            fresh = th.nonzero(replay_batch.ages == 0).flatten()
            for start in range(0, len(fresh), chunk):
                idx = fresh[start : start + chunk]
                observations = (
                    {key: obs[idx] for key, obs in replay_batch.observations.items()}
                    if isinstance(replay_batch.observations, dict)
                    else replay_batch.observations[idx]
                )
                yield observations, self._policy_actions(replay_batch.actions[idx]), replay_batch.old_log_prob[idx]
            return
        buffer = self.rollout_buffer
        if not buffer.generator_ready:
            raise RuntimeError("the rollout buffer must have been flattened by get() before its variance is measured")
        size = buffer.buffer_size * buffer.n_envs
        for start in range(0, size, chunk):
            samples = buffer._get_samples(np.arange(start, min(start + chunk, size)))
            yield samples.observations, self._policy_actions(samples.actions), samples.old_log_prob

    def _policy_actions(self, actions: th.Tensor) -> th.Tensor:
        return actions.long().flatten() if isinstance(self.action_space, spaces.Discrete) else actions

    def _replay_vec_normalize(self) -> VecNormalize | None:
        """
        The ``VecNormalize`` whose original observations and rewards the replay stores and normalises when it
        replays them: the env's, when the observations it normalises are the agent's (no wrapper above it
        changes their space, e.g. a frame stack); otherwise ``None`` (what the agent saw is stored).
        """
        vec_normalize = self._vec_normalize_env
        if vec_normalize is None or vec_normalize.observation_space != self.observation_space:
            return None
        return vec_normalize

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """
        SB3's ``collect_rollouts``; with replay, it also records what a stored rollout needs to be refreshed
        later (see :class:`~sb3_r2vpo.r2vpo.replay.RolloutRecorder`).
        """
        if self.replay is None:
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        recorder = RolloutRecorder(callback, env.num_envs, self._replay_vec_normalize())
        self._recording = None
        collected = super().collect_rollouts(env, recorder, rollout_buffer, n_rollout_steps)  # type: ignore[arg-type]
        self._recording = recorder.recording if collected else None
        return collected

    def train(self) -> None:
        """
        Update policy and λ using the currently gathered rollout buffer.
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        variance_target = self._variance_target_now()
        clip_range_vf = None if self.clip_range_vf is None else self.clip_range_vf(self._current_progress_remaining)
        lower_bound = self._multiplier_lower_bound(variance_target)
        # λ enters the update within the bounds in effect for it (a floor tied to δ may have risen).
        self.lagrange_multiplier = float(min(max(self.lagrange_multiplier, lower_bound), self.lagrange_multiplier_max))
        estimate_on_rollout = self.dual_update_frequency == "epoch" and self.dual_variance_estimate == "rollout"

        # One row of statistics per gradient step, gathered with a single device sync per minibatch.
        step_stats: list[list[float]] = []
        multipliers = [self.lagrange_multiplier]  # every value λ takes during this update
        nonfinite_skips = 0
        continue_training = True
        variance_stop_epoch: int | None = None
        # The current policy's full-rollout ratio variance, while no gradient step has happened since it was measured.
        final_variance: float | None = None

        replay_batch, pending = None, None
        replay_stats: dict[str, float] = {}
        age_variances: list[tuple[float, float]] = []
        if self.replay is not None:
            # Copy the current rollout before get() could flatten the buffer; it joins the replay after the update.
            recording, self._recording = self._recording, None
            pending = self.replay.snapshot(
                self.rollout_buffer,
                self._last_obs,
                self._last_episode_starts,
                self._rollout_index,
                recording,
                self.observation_space,
            )
            replay_batch, replay_stats = build_replay_batch(
                self.policy,
                self.rollout_buffer,
                self.replay,
                self._rollout_index,
                self.gamma,
                self.gae_lambda,
                self.replay_advantage,
                self.action_space,
                self._replay_vec_normalize(),
            )

        for epoch in range(self.n_epochs):
            epoch_variances: list[float] = []
            for rollout_data, ages, start_log_prob in self._minibatches(replay_batch):
                actions = self._policy_actions(rollout_data.actions)

                values, log_prob, entropy = self.policy.evaluate_actions(rollout_data.observations, actions)
                values = values.flatten()
                advantages = rollout_data.advantages
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

                log_ratio = log_prob - rollout_data.old_log_prob
                ratio = th.exp(th.clamp(log_ratio, -self.log_ratio_guard, self.log_ratio_guard))
                policy_loss, surrogate_loss, variance = self._policy_loss(ratio, advantages, variance_target)

                if clip_range_vf is None:
                    values_pred = values
                else:
                    values_pred = rollout_data.old_values + th.clamp(
                        values - rollout_data.old_values, -clip_range_vf, clip_range_vf
                    )
                value_loss = F.mse_loss(rollout_data.returns, values_pred)

                if entropy is None:
                    entropy_loss = -th.mean(-log_prob)
                else:
                    entropy_loss = -th.mean(entropy)

                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss

                with th.no_grad():
                    approx_kl = self._approx_kl(ratio, log_prob, start_log_prob)
                    stats = th.stack(
                        [
                            variance.detach(),
                            approx_kl,
                            th.mean((th.abs(ratio - 1) > PPO_REFERENCE_CLIP).float()),
                            th.mean((th.abs(log_ratio) > self.log_ratio_guard).float()),
                            surrogate_loss.detach(),
                            (policy_loss - surrogate_loss).detach(),
                            value_loss.detach(),
                            entropy_loss.detach(),
                            loss.detach(),
                        ]
                    ).tolist()

                finite = math.isfinite(stats[0]) and math.isfinite(stats[-1])
                if finite and self.target_kl is not None and stats[1] > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {stats[1]:.2f}")
                    break
                if finite and self.variance_stop is not None and stats[0] > self.variance_stop * variance_target:
                    continue_training = False
                    variance_stop_epoch = epoch
                    if self.verbose >= 1:
                        print(
                            f"Early stopping at step {epoch} due to the ratio variance {stats[0]:.4f} "
                            f"> {self.variance_stop} x variance_target"
                        )
                    break

                if finite:
                    self.policy.optimizer.zero_grad()
                    loss.backward()
                    grad_norm = th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                    finite = bool(th.isfinite(grad_norm))
                if not finite:
                    # Nothing of this minibatch may reach the weights or λ.
                    self.policy.optimizer.zero_grad()
                    nonfinite_skips += 1
                    self._nonfinite_gradient_steps += 1
                    self._consecutive_nonfinite += 1
                    self._raise_if_diverged(self._consecutive_nonfinite)
                    continue
                self.policy.optimizer.step()
                self._consecutive_nonfinite = 0
                self._finite_gradient_steps += 1
                final_variance = None
                step_stats.append(stats)
                if ages is not None:
                    age_variances.append(self._fresh_and_stale_variance(ratio.detach(), ages))

                if self.dual_update_frequency == "minibatch":
                    self._step_dual(stats[0], variance_target)
                    multipliers.append(self.lagrange_multiplier)
                else:
                    epoch_variances.append(stats[0])

            if epoch_variances and self.dual_update_frequency == "epoch":
                if estimate_on_rollout:
                    final_variance = self._rollout_ratio_variance(replay_batch)
                    epoch_variance = final_variance
                else:
                    epoch_variance = float(np.mean(epoch_variances))
                if math.isfinite(epoch_variance):
                    self._step_dual(epoch_variance, variance_target)
                    multipliers.append(self.lagrange_multiplier)

            self._n_updates += 1
            if not continue_training:
                break

        if final_variance is None:
            final_variance = self._rollout_ratio_variance(replay_batch)
        if self.dual_update_frequency == "rollout" and step_stats and math.isfinite(final_variance):
            self._step_dual(final_variance, variance_target)
            multipliers.append(self.lagrange_multiplier)

        if self.replay is not None:
            self.replay.append(pending)
            self._record_replay_stats(replay_batch, replay_stats, age_variances)
        self._rollout_index += 1

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        self._record_train_stats(step_stats, variance_target, multipliers, nonfinite_skips, explained_var)
        self.logger.record("train/ratio_variance_final", final_variance)
        self.logger.record("train/lagrange_multiplier_lower_bound", lower_bound)
        # Values within a relative 1e-9 of the bound count as on it (the bound is applied by max(), exactly).
        at_floor = np.mean([value <= lower_bound * (1 + 1e-9) for value in multipliers])
        self.logger.record("train/lagrange_multiplier_at_floor", float(at_floor))
        self.logger.record("train/gradient_steps", len(step_stats))
        if self.variance_stop is not None:
            self.logger.record("train/variance_stopped", float(variance_stop_epoch is not None))
            if variance_stop_epoch is not None:
                self.logger.record("train/variance_stop_epoch", variance_stop_epoch)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)

    def _approx_kl(self, ratio: th.Tensor, log_prob: th.Tensor, start_log_prob: th.Tensor | None) -> th.Tensor:
        """
        How far this update has moved the policy on a minibatch, the KL that ``target_kl`` bounds (Schulman's
        low-variance estimator, on guarded log-ratios so it stays finite). On the on-policy path the ratio to μ is
        that change (μ is the policy at the start of the update); with replay it is measured against the policy
        at the start of the update, since a stale sample's own μ is older: 0 before the first gradient step.
        """
        if start_log_prob is None:
            return th.mean((ratio - 1) - th.log(ratio))
        log_change = th.clamp(log_prob - start_log_prob, -self.log_ratio_guard, self.log_ratio_guard)
        return th.mean(th.expm1(log_change) - log_change)

    def _minibatches(self, replay_batch: ReplayBatch | None):
        """
        Minibatches of one epoch, with each sample's age and its log-probability under the policy at the start of
        the update (both ``None`` on the on-policy path, which is SB3's).
        """
        if replay_batch is None:
            return ((samples, None, None) for samples in self.rollout_buffer.get(self.batch_size))
        return replay_batch.minibatches(self.batch_size)

    def _fresh_and_stale_variance(self, ratio: th.Tensor, ages: th.Tensor) -> tuple[float, float]:
        fresh = ages == 0
        values = []
        for mask in (fresh, ~fresh):
            values.append(float(ratio[mask].var(unbiased=False)) if int(mask.sum()) >= 2 else float("nan"))
        return values[0], values[1]

    def _record_replay_stats(
        self, batch: ReplayBatch, replay_stats: dict[str, float], age_variances: list[tuple[float, float]]
    ) -> None:
        self.logger.record("train/replay_fraction", float((batch.ages > 0).float().mean()))
        self.logger.record("train/replay_rollouts_stored", len(self.replay))
        if age_variances:
            for name, values in zip(("fresh", "stale"), np.asarray(age_variances).T, strict=True):
                if np.isfinite(values).any():
                    self.logger.record(f"train/ratio_variance_{name}", float(np.nanmean(values)))
        for key, value in replay_stats.items():
            self.logger.record(f"train/{key}", value)

    def _raise_if_diverged(self, consecutive_nonfinite: int) -> None:
        if consecutive_nonfinite >= self.max_nonfinite_steps:
            raise NonFiniteTrainingError(
                f"R2VPO skipped {consecutive_nonfinite} consecutive gradient steps whose loss, ratio variance or "
                "gradient was NaN/inf; the weights and the Lagrange multiplier were left untouched. " + _NONFINITE_ADVICE
            )

    def _record_train_stats(
        self,
        step_stats: list[list[float]],
        variance_target: float,
        multipliers: list[float],
        nonfinite_skips: int,
        explained_var: float,
    ) -> None:
        if step_stats:
            means = np.mean(np.asarray(step_stats), axis=0)
            for key, value in zip(
                (
                    "ratio_variance",
                    "approx_kl",
                    "ratio_outside_clip",
                    "logratio_guard_fraction",
                    "policy_gradient_loss",
                    "variance_penalty",
                    "value_loss",
                    "entropy_loss",
                ),
                means[:-1],
                strict=False,
            ):
                self.logger.record(f"train/{key}", float(value))
            self.logger.record("train/loss", float(step_stats[-1][-1]))
        self.logger.record("train/lagrange_multiplier", self.lagrange_multiplier)
        self.logger.record("train/lagrange_multiplier_min", min(multipliers))
        self.logger.record("train/lagrange_multiplier_max", max(multipliers))
        self.logger.record("train/variance_target", variance_target)
        self.logger.record("train/nonfinite_skips", nonfinite_skips)
        self.logger.record("train/explained_variance", float(explained_var))
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())

    def learn(
        self: SelfR2VPO,
        total_timesteps: int | None = None,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "R2VPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfR2VPO:
        """
        Train the model; see :meth:`stable_baselines3.common.base_class.BaseAlgorithm.learn`.

        :param total_timesteps: Environment steps to train for; ``None`` uses
            :attr:`default_total_timesteps` (100,000).
        :raises NonFiniteTrainingError: ``max_nonfinite_steps`` consecutive gradient steps (counted across
            updates) were non-finite, or this call ran updates without taking a single finite gradient step.
        """
        updates_before, steps_before = self._rollout_index, self._finite_gradient_steps
        skips_before = self._nonfinite_gradient_steps
        super().learn(
            total_timesteps=self.default_total_timesteps if total_timesteps is None else total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
        updates = self._rollout_index - updates_before
        # (Updates stopped before their first step by target_kl or variance_stop alone are not an error.)
        if updates > 0 and self._finite_gradient_steps == steps_before and self._nonfinite_gradient_steps > skips_before:
            raise NonFiniteTrainingError(
                f"R2VPO ran {updates} update(s) without a single finite gradient step: every loss, ratio variance or "
                "gradient was NaN/inf, so the weights and the Lagrange multiplier were never changed. " + _NONFINITE_ADVICE
            )
        return self


@functools.cache
def _constructor_parameters() -> frozenset[str]:
    """The names R2VPO's constructor takes."""
    return frozenset(name for name in inspect.signature(R2VPO.__init__).parameters if name != "self")


_VALIDATED_ARGUMENTS = tuple(inspect.signature(R2VPO._validate_arguments).parameters)

# How the constructor stores these arguments (load() stores its overrides the same way).
_STORED_AS = {
    "initial_lagrange_multiplier": float,
    "lagrange_multiplier_min": float,
    "lagrange_multiplier_max": float,
    "lagrange_multiplier_floor": float,
    "dual_step_size": float,
    "log_ratio_guard": float,
    "variance_stop": float,
    "replay_rollouts": int,
    "save_replay": bool,
}
