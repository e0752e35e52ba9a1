"""
The R²VPO machinery, written once for every algorithm of the package: :class:`~sb3_r2vpo.R2VPO` (SB3's
actor-critic policies), :class:`~sb3_r2vpo.MaskableR2VPO` (sb3-contrib's invalid-action masking) and
:class:`~sb3_r2vpo.RecurrentR2VPO` (sb3-contrib's LSTM policies).

:class:`R2VPOMixin` holds the argument checks, the Lagrange multiplier λ (its initial value, bounds, floor, the
timing of the dual step, its place in ``get_parameters``/``set_parameters``/``save``/``load``), the training loop
with the variance penalty, the replay of stale rollouts and the ``train/`` logs. The maths is in
:mod:`sb3_r2vpo.r2vpo.objective`. An algorithm puts the mixin first in its bases, before the on-policy class whose
rollout collection, buffers and policies it reuses, and says only what differs:

- :meth:`R2VPOMixin._evaluate_actions`: how its policy evaluates a minibatch (action masks, LSTM states);
- :meth:`R2VPOMixin._valid_samples`: which samples of a minibatch count (padded steps of a sequence do not);
- :meth:`R2VPOMixin._buffer_samples`: how to read a slice of its rollout buffer in order;
- class attributes: its name in messages, the action spaces it trains on, and why it refuses replay (if it does).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import io
import math
import numbers
import pathlib
import warnings
from collections import deque
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
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
    FLOOR_BY_ROLLOUT_SIZE,
    MIN_VARIANCE_TARGET,
    VARIANCE_CENTERS,
    StepClip,
    dual_update,
    multiplier_lower_bound,
    policy_objective,
    ratio_variance,
    rollout_floor_fraction,
    stationary_multiplier,
)
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

SelfR2VPOMixin = TypeVar("SelfR2VPOMixin", bound="R2VPOMixin")

ALL_ACTION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)

# The share of samples whose ratio PPO's default clip (0.2) would have zeroed; logged to show what the brake kept.
PPO_REFERENCE_CLIP = 0.2
# Samples per forward pass when the ratio variance is measured over a whole rollout (no gradient is kept).
ROLLOUT_VARIANCE_CHUNK = 1024

#: The constructor arguments of the R²VPO brake (and of the replay), the same in every algorithm of the package, with
#: the same defaults: R2VPO's (see :data:`sb3_r2vpo.r2vpo.r2vpo.R2VPO_DEFAULTS`).
R2VPO_ARGUMENTS = (
    "variance_target",
    "initial_lagrange_multiplier",
    "lagrange_multiplier_min",
    "lagrange_multiplier_max",
    "lagrange_multiplier_floor",
    "dual_update",
    "dual_step_size",
    "dual_step_clip",
    "dual_update_frequency",
    "dual_variance_estimate",
    "variance_center",
    "log_ratio_guard",
    "replay_rollouts",
    "replay_advantage",
    "save_replay",
    "variance_stop",
    "max_nonfinite_steps",
)

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


def accepts_ppo_habits(init):
    """
    Wrap an algorithm's ``__init__``: a PPO-only argument (``clip_range``) is refused with what to use instead, and
    numbers given as numpy scalars become Python numbers. ``inspect.signature`` still shows ``__init__``'s own.
    """

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        for name in PPO_ONLY_ARGUMENTS:
            if name in kwargs:
                raise ppo_argument_error(name, f"{self.algorithm_name}()")
        return init(self, *map(_plain, args), **{name: _plain(value) for name, value in kwargs.items()})

    return wrapper


def r2vpo_arguments_of(namespace: dict[str, Any]) -> dict[str, Any]:
    """The :data:`R2VPO_ARGUMENTS` out of a constructor's ``locals()``, to hand them on as they were given."""
    return {name: namespace[name] for name in R2VPO_ARGUMENTS}


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
    _check_positive("dual_step_clip", value, allow_none=True)
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


class _Minibatch(NamedTuple):
    """One minibatch's samples as the loss sees them: padded steps (of a sequence minibatch) already dropped."""

    values: th.Tensor
    log_prob: th.Tensor
    entropy: th.Tensor | None
    old_log_prob: th.Tensor
    old_values: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    ages: th.Tensor | None
    start_log_prob: th.Tensor | None


class R2VPOMixin:
    """
    The R²VPO brake on an SB3 on-policy algorithm: ``-mean(r·Â) + λ·(Var(r) − δ)`` in place of PPO's clipped
    surrogate, λ adapted by dual ascent, optionally replaying stale rollouts. To be listed before the on-policy
    base class (``class R2VPO(R2VPOMixin, OnPolicyAlgorithm)``); the algorithm's ``__init__`` calls
    :meth:`_validate_arguments` and :meth:`_make_env`, then the base class's ``__init__`` with
    ``_init_setup_model=False``, then :meth:`_init_r2vpo`. See :class:`~sb3_r2vpo.R2VPO` for the arguments.
    """

    #: The algorithm's name in messages (``R2VPO.load() got ...``) and its default ``tb_log_name``.
    algorithm_name: ClassVar[str] = "R2VPO"
    #: The action spaces the algorithm trains on; another one is a ValueError at construction.
    r2vpo_action_spaces: ClassVar[tuple[type[spaces.Space], ...]] = ALL_ACTION_SPACES
    #: Why the algorithm refuses ``replay_rollouts > 0`` (the message of the ValueError); ``None``: it supports replay.
    replay_refusal: ClassVar[str | None] = None
    #: Budget of ``learn()`` when called without ``total_timesteps``.
    default_total_timesteps: ClassVar[int] = 100_000
    #: Whether the base class's ``_setup_model`` reads PPO's ``clip_range`` (sb3-contrib's PPO variants turn it into a
    #: schedule there): a placeholder is then set for that call only; R2VPO has no clip and never reads it.
    _base_reads_clip_range: ClassVar[bool] = False

    # ----------------------------------------------------------------------------------------------- construction

    @classmethod
    def _validate_arguments(
        cls,
        n_steps: int,
        batch_size: int,
        n_epochs: int,
        variance_target: float | Schedule,
        initial_lagrange_multiplier: float | None,
        lagrange_multiplier_min: float,
        lagrange_multiplier_max: float,
        lagrange_multiplier_floor: float | str | None,
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
        """Check every argument that needs no env (at construction, and at ``load`` on the merged arguments)."""
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
        if replay_rollouts > 0 and cls.replay_refusal is not None:
            raise ValueError(
                f"{cls.algorithm_name} takes no `replay_rollouts` > 0 (got {replay_rollouts}): {cls.replay_refusal}"
            )
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
        if isinstance(lagrange_multiplier_floor, str) and lagrange_multiplier_floor != FLOOR_BY_ROLLOUT_SIZE:
            raise TypeError(
                f"`lagrange_multiplier_floor` must be a number in (0, 1], {FLOOR_BY_ROLLOUT_SIZE!r} (the fraction from "
                f"the rollout size) or None, got {lagrange_multiplier_floor!r}"
            )
        if lagrange_multiplier_floor != FLOOR_BY_ROLLOUT_SIZE:
            _check_optional_range(
                "lagrange_multiplier_floor",
                lagrange_multiplier_floor,
                0.0,
                1.0,
                low_open=True,
                meaning=(
                    "the fraction of the stationary multiplier 1/(2√δ) below which λ may not fall; "
                    f"{FLOOR_BY_ROLLOUT_SIZE!r}: the fraction from the rollout size"
                ),
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

    @classmethod
    def check_arguments(cls, **arguments: Any) -> None:
        """
        Check constructor arguments without building anything: what the zoo launcher runs on an entry before
        rl_zoo3 makes a single env. Arguments not given take the constructor's defaults.

        :param arguments: Constructor arguments by name (schedules as callables); names this check does not cover
            (``policy_kwargs``, ``learning_rate``, ...) are ignored
        :raises ValueError: A value out of its range, naming the argument and the range (as the constructor)
        :raises TypeError: A value of the wrong type (as the constructor)
        """
        merged = {**constructor_defaults(cls), **arguments}
        cls._validate_arguments(**{name: merged[name] for name in _VALIDATED_ARGUMENTS})

    def _validate_construction(
        self,
        n_steps: int,
        batch_size: int,
        n_epochs: int,
        clip_range_vf: float | Schedule | None,
        target_kl: float | None,
        r2vpo_arguments: dict[str, Any],
    ) -> None:
        """:meth:`_validate_arguments` on a constructor's arguments (``r2vpo_arguments``: see :func:`r2vpo_arguments_of`)."""
        checked = {name: value for name, value in r2vpo_arguments.items() if name in _VALIDATED_ARGUMENTS}
        self._validate_arguments(
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            clip_range_vf=clip_range_vf,
            target_kl=target_kl,
            **checked,
        )

    def _make_env(self, env: GymEnv | str | None, verbose: int) -> GymEnv | None:
        """
        The env as the base class would make it from an id, its action space checked first: an unsupported space is
        a ValueError naming the supported ones (sb3-contrib's classes would stop at an ``AssertionError``).
        """
        if env is None:
            return None
        from stable_baselines3.common.base_class import maybe_make_env

        env = maybe_make_env(env, verbose)
        self._check_action_space(env.action_space)
        return env

    def _get_policy_from_name(self, policy_name: str) -> type[BasePolicy]:
        """SB3's lookup of a policy alias, with an error that lists this class's aliases and names the class that has it."""
        if policy_name in self.policy_aliases:
            return self.policy_aliases[policy_name]
        owners = [cls.algorithm_name for cls in reversed(_package_algorithms()) if policy_name in cls.policy_aliases]
        hint = f"; {policy_name!r} is {' and '.join(owners)}'s" if owners else ""
        raise ValueError(
            f"`policy`: {self.algorithm_name} has no policy {policy_name!r}; it takes {', '.join(self.policy_aliases)} "
            f"or a policy class{hint}"
        )

    def _check_policy_class(self, policy_class: type[BasePolicy]) -> None:
        """
        Refuse the policy class of another of the package's algorithms (a model file of MaskableR2VPO loaded with
        R2VPO.load, a recurrent policy given to R2VPO), naming the class to use; SB3 would fail later on a policy
        argument. A class that none of them owns (a custom policy) is left to SB3.
        """
        if not isinstance(policy_class, type):
            return
        for owner in _package_algorithms():
            if issubclass(policy_class, tuple(owner.policy_aliases.values())):
                if not isinstance(self, owner):
                    raise ValueError(
                        f"`policy`: {policy_class.__name__} is {owner.algorithm_name}'s policy, not {self.algorithm_name}'s "
                        f"(a model saved by {owner.algorithm_name}? load it with {owner.algorithm_name}.load)"
                    )
                return

    def _check_action_space(self, action_space: spaces.Space) -> None:
        if not isinstance(action_space, self.r2vpo_action_spaces):
            names = ", ".join(space.__name__ for space in self.r2vpo_action_spaces)
            raise ValueError(f"{self.algorithm_name} supports the action spaces {names}; the env has {action_space}")

    def _init_r2vpo(
        self,
        batch_size: int,
        n_epochs: int,
        clip_range_vf: float | Schedule | None,
        normalize_advantage: bool,
        target_kl: float | None,
        variance_target: float | Schedule,
        initial_lagrange_multiplier: float | None,
        lagrange_multiplier_min: float,
        lagrange_multiplier_max: float,
        lagrange_multiplier_floor: float | str | None,
        dual_update: str,
        dual_step_size: float,
        dual_step_clip: float | tuple[float, float] | list[float] | None,
        dual_update_frequency: str,
        dual_variance_estimate: str,
        variance_center: str,
        log_ratio_guard: float,
        replay_rollouts: int,
        replay_advantage: str,
        save_replay: bool,
        variance_stop: float | None,
        max_nonfinite_steps: int,
    ) -> None:
        """Store the (validated) arguments and the model state, after the base class's ``__init__``."""
        if self.env is not None:
            # warnings point at the line that built the model: here, the algorithm's __init__, its wrapper, the caller
            self._check_env_arguments(batch_size, int(replay_rollouts), stacklevel=5)
        # sb3-contrib's PPO variants store PPO's clip (their constructors give it a default); R2VPO has none.
        self.__dict__.pop("clip_range", None)

        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.variance_target = variance_target
        self.initial_lagrange_multiplier = None if initial_lagrange_multiplier is None else float(initial_lagrange_multiplier)
        self.lagrange_multiplier_min = float(lagrange_multiplier_min)
        self.lagrange_multiplier_max = float(lagrange_multiplier_max)
        self.lagrange_multiplier_floor = _stored_floor(lagrange_multiplier_floor)
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

    def _check_env_arguments(self, batch_size: int, replay_rollouts: int, stacklevel: int) -> None:
        """The checks that need the env: its action space, and an update's sample count against ``batch_size``.

        An update trains on the fresh rollout and, once the replay is full, ``replay_rollouts`` stale ones: the
        warnings compare ``batch_size`` with those ``n_steps * n_envs * (1 + replay_rollouts)`` samples, since the
        replay is one way to fill a minibatch larger than one rollout.
        """
        self._check_action_space(self.action_space)
        buffer_size = self.env.num_envs * self.n_steps
        if buffer_size < 2:
            raise ValueError(f"`n_steps * n_envs` must be at least 2, got n_steps={self.n_steps}, n_envs={self.env.num_envs}")
        update_size = buffer_size * (1 + replay_rollouts)
        counted = "n_steps * n_envs" + (f" * (1 + replay_rollouts={replay_rollouts})" if replay_rollouts else "")
        if batch_size > update_size:
            warnings.warn(
                f"batch_size={batch_size} exceeds the samples of an update ({counted} = {update_size}): "
                f"every epoch is a single minibatch of {update_size} samples.",
                stacklevel=stacklevel,
            )
        elif update_size % batch_size > 0:
            warnings.warn(
                f"An update trains on {counted} = {update_size} samples, not a multiple of "
                f"batch_size={batch_size}: each epoch ends with a truncated minibatch of {update_size % batch_size}. "
                "Prefer a batch_size that divides it.",
                stacklevel=stacklevel,
            )

    def _setup_model(self) -> None:
        self._check_policy_class(self.policy_class)
        # load() hands its keyword arguments over here, after SB3 restored the saved attributes.
        overrides = self.__dict__.pop("_load_overrides", None)
        if overrides is not None:
            self._apply_load_overrides(overrides)
        if self._base_reads_clip_range:
            self.clip_range = PPO_REFERENCE_CLIP
        super()._setup_model()  # type: ignore[misc]
        self.__dict__.pop("clip_range", None)
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
        where = f"{self.algorithm_name}.load()"
        parameters = _constructor_parameters(type(self))
        for name, value in overrides.items():
            value = _plain(value)
            if name in PPO_ONLY_ARGUMENTS:
                raise ppo_argument_error(name, where)
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
                        f"`policy` cannot be changed by {where}: the saved weights are a {self.policy_class.__name__}'s, "
                        f"got {value!r}"
                    )
            elif name == "use_sde":
                if bool(value) != bool(self.use_sde):
                    raise ValueError(
                        f"`use_sde` cannot be changed by {where}: it changes the policy's parameters (the model was "
                        f"saved with use_sde={self.use_sde}); train a new model instead"
                    )
            elif name == "_init_setup_model":
                raise TypeError(f"{where} takes no `_init_setup_model`")
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
                raise TypeError(f"{where} got an unexpected keyword argument {name!r}{hint}")
        self._validate_arguments(**{name: getattr(self, name) for name in _VALIDATED_ARGUMENTS})
        for name, convert in _STORED_AS.items():
            value = getattr(self, name)
            setattr(self, name, None if value is None else convert(value))
        if self.env is not None:
            self._check_env_arguments(self.batch_size, self.replay_rollouts, stacklevel=6)
            if self.replay_rollouts > 0:
                self._check_replay_memory()
        self._loading = True

    def _check_replay_memory(self) -> None:
        per_rollout = rollout_nbytes(
            self.observation_space, self.action_space, self.n_steps, self.n_envs, mask_size=self._replay_mask_size()
        )
        needed = self.replay_rollouts * per_rollout
        available = available_memory_bytes(th.device(self.device))
        if available is not None and needed > available // 2:
            raise ValueError(
                f"`replay_rollouts`={self.replay_rollouts} needs about {needed / 2**20:.0f} MiB "
                f"({per_rollout / 2**20:.1f} MiB per rollout of n_steps * n_envs = {self.n_steps * self.n_envs} samples) "
                f"on {self.device}, more than half of the {available / 2**20:.0f} MiB available; lower it or n_steps"
            )

    def _replay_mask_size(self) -> int:
        """Entries of one sample's action mask that the replay stores (0: the algorithm has no masks)."""
        return 0

    def _excluded_save_params(self) -> list[str]:
        excluded = [*super()._excluded_save_params(), "_recording"]  # type: ignore[misc]
        return excluded if self.save_replay else [*excluded, "replay"]

    # ---------------------------------------------------------------------------------------- λ as model state

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfR2VPOMixin],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs,
    ) -> SelfR2VPOMixin:
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
        model = super().load(  # type: ignore[misc]
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
        params = super().get_parameters()  # type: ignore[misc]
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
        super().set_parameters(params, exact_match=exact_match, device=device)  # type: ignore[misc]
        if multiplier is not None:
            self.lagrange_multiplier = _checked_multiplier(multiplier["value"])
        elif exact_match and not self.__dict__.get("_loading", False):
            warnings.warn(
                f"These parameters hold no {MULTIPLIER_PARAMETERS_KEY!r} (saved by an older version?): the weights were "
                f"set, λ was left at {self.lagrange_multiplier}",
                stacklevel=2,
            )

    # ------------------------------------------------------------------------------------------- the multiplier

    def _default_initial_multiplier(self) -> float:
        if self.initial_lagrange_multiplier is not None:
            return self.initial_lagrange_multiplier
        stationary = stationary_multiplier(self.variance_target(1.0))
        return float(min(max(stationary, self.lagrange_multiplier_min), self.lagrange_multiplier_max))

    def _policy_loss(
        self, ratio: th.Tensor, advantages: th.Tensor, variance_target: float, start_ratio: th.Tensor | None = None
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """``(policy_loss, surrogate_loss, ratio_variance)`` of one minibatch; see :func:`policy_objective`."""
        return policy_objective(
            ratio, advantages, self.lagrange_multiplier, variance_target, self.variance_center, start_ratio
        )

    def _start_ratio(self, batch: _Minibatch) -> th.Tensor | None:
        """
        Each sample's ratio ``π_start / μ`` at the start of the update, the centre of ``variance_center="start"``:
        only replay batches carry ``π_start`` (on the on-policy path μ is ``π_start``, so the centre is 1: ``None``).
        """
        if self.variance_center != "start" or batch.start_log_prob is None:
            return None
        return self._guarded_ratio(batch.start_log_prob - batch.old_log_prob)

    def _guarded_ratio(self, log_ratio: th.Tensor) -> th.Tensor:
        """``exp`` of the log-ratio clamped to ``[−log_ratio_guard, log_ratio_guard]``: the ratio every estimate uses."""
        return th.exp(th.clamp(log_ratio, -self.log_ratio_guard, self.log_ratio_guard))

    def _variance_target_now(self) -> float:
        """δ for this update: the schedule's value, held at ``MIN_VARIANCE_TARGET`` where it anneals to 0."""
        value = float(self.variance_target(self._current_progress_remaining))
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"`variance_target` gave {value} at progress remaining {self._current_progress_remaining:.4f}; "
                "it must stay a finite number >= 0"
            )
        return max(value, MIN_VARIANCE_TARGET)

    @property
    def floor_fraction(self) -> float | None:
        """
        The fraction of ``λ* = 1 / (2 √δ)`` below which λ may not fall: ``lagrange_multiplier_floor`` itself, or for
        ``"auto"`` :func:`~sb3_r2vpo.r2vpo.objective.rollout_floor_fraction` of ``n_steps * n_envs``; ``None``: no floor.
        """
        if self.lagrange_multiplier_floor == FLOOR_BY_ROLLOUT_SIZE:
            return rollout_floor_fraction(self.n_steps * self.n_envs)
        return self.lagrange_multiplier_floor

    def _multiplier_lower_bound(self, variance_target: float) -> float:
        """λ's lower bound in effect for an update with variance target δ; see :func:`multiplier_lower_bound`."""
        return multiplier_lower_bound(
            self.lagrange_multiplier_min, self.lagrange_multiplier_max, self.floor_fraction, variance_target
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

    # ------------------------------------------------------------------------------- what each algorithm changes

    def _evaluate_actions(self, rollout_data: Any, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """
        ``(values, log_prob, entropy)`` of a minibatch (or of a slice of the rollout) under the current policy.

        :param rollout_data: The samples, as the algorithm's rollout buffer (or the replay) gives them
        :param actions: Their actions as the policy takes them (see :meth:`_policy_actions`)
        """
        return self.policy.evaluate_actions(rollout_data.observations, actions)

    def _valid_samples(self, rollout_data: Any) -> th.Tensor | None:
        """
        Which samples of a minibatch are real (a bool tensor), or ``None`` when all of them are. The others (the
        padding of a sequence minibatch) are dropped before anything is averaged: the ratio's mean and variance,
        the surrogate, the advantage normalisation, the value and entropy terms, the KL and the dual step.
        """
        return None

    def _buffer_samples(self, indices: np.ndarray) -> Any:
        """Samples ``indices`` of the flattened rollout buffer, in order and without consuming any RNG."""
        return self.rollout_buffer._get_samples(indices)

    def _policy_actions(self, actions: th.Tensor) -> th.Tensor:
        return actions.long().flatten() if isinstance(self.action_space, spaces.Discrete) else actions

    # -------------------------------------------------------------------------------------------------- training

    def _rollout_ratio_variance(self, replay_batch: ReplayBatch | None) -> float:
        """
        Ratio variance of the current policy over the whole current rollout (no gradient, in chunks), with the
        same centre and log-ratio guard as training; with replay, over the fresh rollout's samples only.
        """
        was_training = self.policy.training
        self.policy.set_training_mode(False)  # the mode μ's log-probabilities were collected in
        ratios = []
        with th.no_grad():
            for samples in self._rollout_chunks(replay_batch):
                _, log_prob, _ = self._evaluate_actions(samples, self._policy_actions(samples.actions))
                log_ratio = log_prob.flatten() - samples.old_log_prob.flatten()
                valid = self._valid_samples(samples)
                if valid is not None:
                    log_ratio = log_ratio[valid]
                ratios.append(self._guarded_ratio(log_ratio))
        self.policy.set_training_mode(was_training)
        return float(ratio_variance(th.cat(ratios), self.variance_center))

    def _rollout_chunks(self, replay_batch: ReplayBatch | None) -> Iterator[Any]:
        """The fresh rollout's samples in order, in chunks; consumes no RNG."""
        chunk = max(self.batch_size, ROLLOUT_VARIANCE_CHUNK)
        if replay_batch is not None:
            fresh = th.nonzero(replay_batch.ages == 0).flatten()
            for start in range(0, len(fresh), chunk):
                yield replay_batch.samples(fresh[start : start + chunk])
            return
        buffer = self.rollout_buffer
        if not buffer.generator_ready:
            raise RuntimeError("the rollout buffer must have been flattened by get() before its variance is measured")
        size = buffer.buffer_size * buffer.n_envs
        for start in range(0, size, chunk):
            yield self._buffer_samples(np.arange(start, min(start + chunk, size)))

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
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int, *args, **kwargs
    ) -> bool:
        """
        The base class's ``collect_rollouts`` (further arguments, e.g. MaskablePPO's ``use_masking``, are passed on);
        with replay, it also records what a stored rollout needs to be refreshed later (see
        :class:`~sb3_r2vpo.r2vpo.replay.RolloutRecorder`).
        """
        collect = super().collect_rollouts  # type: ignore[misc]
        if self.replay is None:
            return collect(env, callback, rollout_buffer, n_rollout_steps, *args, **kwargs)
        recorder = RolloutRecorder(callback, env.num_envs, self._replay_vec_normalize())
        self._recording = None
        collected = collect(env, recorder, rollout_buffer, n_rollout_steps, *args, **kwargs)
        self._recording = recorder.recording if collected else None
        return collected

    def _minibatch(self, rollout_data: Any, ages: th.Tensor | None, start_log_prob: th.Tensor | None) -> _Minibatch:
        """Evaluate one minibatch under the current policy and drop its padded steps (see :meth:`_valid_samples`)."""
        values, log_prob, entropy = self._evaluate_actions(rollout_data, self._policy_actions(rollout_data.actions))
        batch = _Minibatch(
            values.flatten(),
            log_prob,
            entropy,
            rollout_data.old_log_prob,
            rollout_data.old_values,
            rollout_data.advantages,
            rollout_data.returns,
            ages,
            start_log_prob,
        )
        valid = self._valid_samples(rollout_data)
        if valid is None:
            return batch
        return _Minibatch(*(None if tensor is None else tensor[valid] for tensor in batch))

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
                batch = self._minibatch(rollout_data, ages, start_log_prob)
                log_prob = batch.log_prob
                advantages = batch.advantages
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

                log_ratio = log_prob - batch.old_log_prob
                ratio = self._guarded_ratio(log_ratio)
                policy_loss, surrogate_loss, variance = self._policy_loss(
                    ratio, advantages, variance_target, self._start_ratio(batch)
                )

                if clip_range_vf is None:
                    values_pred = batch.values
                else:
                    values_pred = batch.old_values + th.clamp(batch.values - batch.old_values, -clip_range_vf, clip_range_vf)
                value_loss = F.mse_loss(batch.returns, values_pred)

                if batch.entropy is None:
                    entropy_loss = -th.mean(-log_prob)
                else:
                    entropy_loss = -th.mean(batch.entropy)

                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss

                with th.no_grad():
                    approx_kl = self._approx_kl(ratio, log_prob, batch.start_log_prob)
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
                if batch.ages is not None:
                    age_variances.append(self._fresh_and_stale_variance(ratio.detach(), batch.ages))

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
        the update (both ``None`` on the on-policy path, which is the rollout buffer's own ``get``).
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
                f"{self.algorithm_name} skipped {consecutive_nonfinite} consecutive gradient steps whose loss, ratio "
                "variance or gradient was NaN/inf; the weights and the Lagrange multiplier were left untouched. "
                + _NONFINITE_ADVICE
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
        self: SelfR2VPOMixin,
        total_timesteps: int | None = None,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
        **kwargs,
    ) -> SelfR2VPOMixin:
        """
        Train the model; see :meth:`stable_baselines3.common.base_class.BaseAlgorithm.learn`.

        :param total_timesteps: Environment steps to train for; ``None`` uses
            :attr:`default_total_timesteps` (100,000).
        :param tb_log_name: The run's name for TensorBoard; ``None``: the algorithm's name
        :param kwargs: Further arguments of the base class's ``learn`` (MaskablePPO's ``use_masking``)
        :raises NonFiniteTrainingError: ``max_nonfinite_steps`` consecutive gradient steps (counted across
            updates) were non-finite, or this call ran updates without taking a single finite gradient step.
        """
        updates_before, steps_before = self._rollout_index, self._finite_gradient_steps
        skips_before = self._nonfinite_gradient_steps
        super().learn(  # type: ignore[misc]
            total_timesteps=self.default_total_timesteps if total_timesteps is None else total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=self.algorithm_name if tb_log_name is None else tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
            **kwargs,
        )
        updates = self._rollout_index - updates_before
        # (Updates stopped before their first step by target_kl or variance_stop alone are not an error.)
        if updates > 0 and self._finite_gradient_steps == steps_before and self._nonfinite_gradient_steps > skips_before:
            raise NonFiniteTrainingError(
                f"{self.algorithm_name} ran {updates} update(s) without a single finite gradient step: every loss, ratio "
                "variance or gradient was NaN/inf, so the weights and the Lagrange multiplier were never changed. "
                + _NONFINITE_ADVICE
            )
        return self


@functools.cache
def _constructor_parameters(cls: type) -> frozenset[str]:
    """The names an algorithm's constructor takes."""
    return frozenset(name for name in inspect.signature(cls.__init__).parameters if name != "self")


def _package_algorithms() -> tuple[type, ...]:
    """
    RecurrentR2VPO, MaskableR2VPO, R2VPO: the most specific policy first (a recurrent policy is also an
    ActorCriticPolicy). Imported when called: the three classes import this module.
    """
    import sb3_r2vpo

    return sb3_r2vpo.RecurrentR2VPO, sb3_r2vpo.MaskableR2VPO, sb3_r2vpo.R2VPO


def constructor_defaults(cls: type) -> MappingProxyType:
    """An algorithm's constructor defaults, by argument name (read-only)."""
    return MappingProxyType(
        {
            name: parameter.default
            for name, parameter in inspect.signature(cls.__init__).parameters.items()
            if parameter.default is not inspect.Parameter.empty
        }
    )


def _stored_floor(value: float | str | None) -> float | str | None:
    """``lagrange_multiplier_floor`` as stored: ``None``, ``"auto"`` or a float."""
    return value if value is None or value == FLOOR_BY_ROLLOUT_SIZE else float(value)


_VALIDATED_ARGUMENTS = tuple(inspect.signature(R2VPOMixin._validate_arguments).parameters)

# How the constructor stores these arguments (load() stores its overrides the same way).
_STORED_AS = {
    "initial_lagrange_multiplier": float,
    "lagrange_multiplier_min": float,
    "lagrange_multiplier_max": float,
    "lagrange_multiplier_floor": _stored_floor,
    "dual_step_size": float,
    "log_ratio_guard": float,
    "variance_stop": float,
    "replay_rollouts": int,
    "save_replay": bool,
}
