"""R2VPO on SB3's actor-critic policies and rollout buffers; the R²VPO machinery itself is :mod:`sb3_r2vpo.r2vpo.mixin`."""

from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule

from sb3_r2vpo.r2vpo.mixin import (
    ALL_ACTION_SPACES,
    MULTIPLIER_PARAMETERS_KEY,
    PPO_ONLY_ARGUMENTS,
    PPO_REFERENCE_CLIP,
    R2VPO_ARGUMENTS,
    ROLLOUT_VARIANCE_CHUNK,
    NonFiniteTrainingError,
    R2VPOMixin,
    accepts_ppo_habits,
    constructor_defaults,
    ppo_argument_error,
    r2vpo_arguments_of,
)
from sb3_r2vpo.r2vpo.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = [
    "MULTIPLIER_PARAMETERS_KEY",
    "PPO_ONLY_ARGUMENTS",
    "PPO_REFERENCE_CLIP",
    "R2VPO",
    "R2VPO_DEFAULTS",
    "ROLLOUT_VARIANCE_CHUNK",
    "SUPPORTED_ACTION_SPACES",
    "NonFiniteTrainingError",
    "ppo_argument_error",
]

SelfR2VPO = TypeVar("SelfR2VPO", bound="R2VPO")

SUPPORTED_ACTION_SPACES = ALL_ACTION_SPACES


class R2VPO(R2VPOMixin, OnPolicyAlgorithm):
    """
    Ratio-Variance Regularized Policy Optimization (R²VPO).

    PPO without ratio clipping: the policy maximises ``mean(r * A)`` under the constraint
    ``Var(r) <= variance_target`` on the importance ratio ``r = pi_theta(a|s) / mu(a|s)``, enforced by a
    Lagrange multiplier λ that adapts by dual ascent after every minibatch (or every epoch, or once per rollout).

    Paper (abstract only was available; the formulation is derived from the stated constrained problem):
    Luo et al., "R²VPO", arXiv 2605.26784 (ICML 2026).

    The method itself (checks, λ, the training loop, replay, save/load, logs) is :class:`~sb3_r2vpo.r2vpo.mixin.R2VPOMixin`,
    shared with :class:`~sb3_r2vpo.MaskableR2VPO` and :class:`~sb3_r2vpo.RecurrentR2VPO`; this class puts it on SB3's
    ``OnPolicyAlgorithm`` and its actor-critic policies.

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
        start of the update. ``"auto"`` (default): ``f = min(1, √(64 / N))`` for rollouts of
        ``N = n_steps * n_envs`` samples (a network fitted to more samples at once follows less of each sample's
        advantage, so a smaller λ meets δ; see :func:`~sb3_r2vpo.r2vpo.objective.rollout_floor_fraction`).
        ``None``: the lower bound is ``lagrange_multiplier_min`` alone (the pure dual ascent, the default before
        issue 13). With a floor the brake never fully releases.
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
    :param variance_center: ``"one"`` (default: the chi-square estimate ``mean((r − 1)²)``, which also sees a
        common drift of all ratios), ``"mean"`` (the second central moment about the minibatch's mean ratio,
        the default before issue 13) or ``"start"`` (each ratio centred on its value at the start of the update:
        the same as ``"one"`` without replay; with replay a stale sample's drift from earlier updates, which
        this update cannot undo, does not count against δ)
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

    @accepts_ppo_habits
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
        lagrange_multiplier_floor: float | str | None = "auto",
        dual_update: str = "multiplicative",
        dual_step_size: float = 0.05,
        dual_step_clip: float | tuple[float, float] | list[float] | None = 1.0,
        dual_update_frequency: str = "minibatch",
        dual_variance_estimate: str = "minibatch",
        variance_center: str = "one",
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
        r2vpo_arguments = r2vpo_arguments_of(locals())
        self._validate_construction(n_steps, batch_size, n_epochs, clip_range_vf, target_kl, r2vpo_arguments)
        super().__init__(
            policy,
            self._make_env(env, verbose),
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
            # Checked by _make_env, so that an unsupported space is a ValueError rather than an AssertionError.
            supported_action_spaces=None,
        )
        self._init_r2vpo(
            batch_size=batch_size,
            n_epochs=n_epochs,
            clip_range_vf=clip_range_vf,
            normalize_advantage=normalize_advantage,
            target_kl=target_kl,
            **r2vpo_arguments,
        )
        if _init_setup_model:
            self._setup_model()

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
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )


#: R2VPO's constructor defaults by argument name: the one place MaskableR2VPO and RecurrentR2VPO take the defaults of
#: the R²VPO arguments (:data:`~sb3_r2vpo.r2vpo.mixin.R2VPO_ARGUMENTS`) from.
R2VPO_DEFAULTS: MappingProxyType = constructor_defaults(R2VPO)
assert set(R2VPO_ARGUMENTS) <= set(R2VPO_DEFAULTS), "every R²VPO argument has a default in R2VPO's constructor"
