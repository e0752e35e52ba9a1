from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule

from sb3_r2vpo.r2vpo.mixin import R2VPOMixin, accepts_ppo_habits, r2vpo_arguments_of
from sb3_r2vpo.r2vpo.r2vpo import R2VPO_DEFAULTS
from sb3_r2vpo.r2vpo_recurrent.policies import CnnLstmPolicy, MlpLstmPolicy, MultiInputLstmPolicy

SelfRecurrentR2VPO = TypeVar("SelfRecurrentR2VPO", bound="RecurrentR2VPO")

_D = R2VPO_DEFAULTS  # the R²VPO arguments' defaults are R2VPO's, read from its constructor

RECURRENT_REPLAY_REFUSAL = (
    "replaying a stored rollout through an LSTM needs, at each of its sequence starts, the hidden state that the "
    "*current* weights would have reached there; the states stored at collection were computed by older weights "
    "(the stale-state problem of recurrent replay), so every stored rollout would have to be run again from its "
    "first step, under the current weights, at every update. That is not implemented: use replay_rollouts=0, or "
    "R2VPO / MaskableR2VPO for replay."
)


class RecurrentR2VPO(R2VPOMixin, RecurrentPPO):
    """
    R²VPO with a recurrent (LSTM) policy: sb3-contrib's :class:`~sb3_contrib.RecurrentPPO` (its LSTM policies, the
    hidden states carried through the rollouts and reset at episode starts, its sequence minibatches) with R2VPO's
    loss in place of the clipped surrogate. A sequence minibatch is padded to its longest sequence; the padded
    steps are dropped before anything is averaged: they carry no weight in the ratio's mean and variance, the
    surrogate, the advantage normalisation, the value and entropy terms, the KL, or the dual step.

    ``predict(observation, state, episode_start, deterministic)`` returns the action and the next LSTM state, as
    RecurrentPPO's does.

    Arguments shared with RecurrentPPO take its meaning and default (``n_steps=128``, ``batch_size=128``), except
    ``clip_range``, which is refused (``variance_target`` plays its role). The R²VPO arguments (``variance_target``
    to ``max_nonfinite_steps``) have the meaning and default they have in :class:`~sb3_r2vpo.R2VPO`, whose
    docstring describes them in full, except that ``replay_rollouts > 0`` is refused at construction: replaying a
    stored rollout would need its hidden states recomputed under the current weights from its first step at every
    update (``replay_advantage`` and ``save_replay`` are accepted and have no effect).

    :param policy: The policy model to use (MlpLstmPolicy, CnnLstmPolicy, MultiInputLstmPolicy)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate, it can be a function of the current progress remaining (from 1 to 0)
    :param n_steps: The number of steps to run for each environment per update
    :param batch_size: Minibatch size (in steps, before padding), at least 2
    :param n_epochs: Number of epochs when optimizing the loss
    :param gamma: Discount factor
    :param gae_lambda: Factor for trade-off of bias vs variance for Generalized Advantage Estimator
    :param variance_target: δ, the bound on the ratio variance (see R2VPO)
    :param initial_lagrange_multiplier: λ at the start of training; ``None``: ``1 / (2 √δ)`` (see R2VPO)
    :param lagrange_multiplier_min: Lower bound of λ
    :param lagrange_multiplier_max: Upper bound of λ
    :param lagrange_multiplier_floor: Floor of λ as a fraction of ``1 / (2 √δ)``, ``"auto"`` (default) or ``None`` (see R2VPO)
    :param dual_update: ``"multiplicative"`` or ``"linear"``
    :param dual_step_size: The dual step size η
    :param dual_step_clip: Bound on one dual step's violation: ``c``, ``(down, up)`` or ``None`` (see R2VPO)
    :param dual_update_frequency: ``"minibatch"``, ``"epoch"`` or ``"rollout"`` (see R2VPO)
    :param dual_variance_estimate: ``"minibatch"`` or ``"rollout"`` (see R2VPO)
    :param variance_center: ``"one"`` (chi-square estimate, default), ``"mean"`` (second central moment) or
        ``"start"`` (the same as ``"one"`` here: this variant does not replay; see R2VPO)
    :param log_ratio_guard: Numerical clamp of the log-ratio
    :param replay_rollouts: Must be 0 (replay is refused for recurrent policies, see above)
    :param replay_advantage: Accepted for a uniform signature; no effect without replay
    :param save_replay: Accepted for a uniform signature; no effect without replay
    :param clip_range_vf: Clipping parameter for the value function (``None``: no clipping)
    :param normalize_advantage: Whether to normalize the advantage per minibatch (over its real steps)
    :param ent_coef: Entropy coefficient for the loss calculation
    :param vf_coef: Value function coefficient for the loss calculation
    :param max_grad_norm: The maximum value for the gradient clipping
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE); with an LSTM it kept the brake
        from working on PendulumNoVel-v1 (see the README)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE (-1: once per rollout)
    :param target_kl: Stop the epoch loop early when the approximate KL exceeds ``1.5 * target_kl``
    :param variance_stop: κ ≥ 1: stop the epoch loop when a minibatch's ratio variance exceeds ``κ · δ``
    :param max_nonfinite_steps: Consecutive non-finite gradient steps skipped before training stops
    :param stats_window_size: Window size for the rollout logging
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: Verbosity level: 0 for no output, 1 for info messages, 2 for debug messages
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpLstmPolicy": MlpLstmPolicy,
        "CnnLstmPolicy": CnnLstmPolicy,
        "MultiInputLstmPolicy": MultiInputLstmPolicy,
    }
    algorithm_name: ClassVar[str] = "RecurrentR2VPO"
    replay_refusal: ClassVar[str | None] = RECURRENT_REPLAY_REFUSAL
    _base_reads_clip_range: ClassVar[bool] = True

    @accepts_ppo_habits
    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 128,
        batch_size: int = 128,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        variance_target: float | Schedule = _D["variance_target"],
        initial_lagrange_multiplier: float | None = _D["initial_lagrange_multiplier"],
        lagrange_multiplier_min: float = _D["lagrange_multiplier_min"],
        lagrange_multiplier_max: float = _D["lagrange_multiplier_max"],
        lagrange_multiplier_floor: float | str | None = _D["lagrange_multiplier_floor"],
        dual_update: str = _D["dual_update"],
        dual_step_size: float = _D["dual_step_size"],
        dual_step_clip: float | tuple[float, float] | list[float] | None = _D["dual_step_clip"],
        dual_update_frequency: str = _D["dual_update_frequency"],
        dual_variance_estimate: str = _D["dual_variance_estimate"],
        variance_center: str = _D["variance_center"],
        log_ratio_guard: float = _D["log_ratio_guard"],
        replay_rollouts: int = _D["replay_rollouts"],
        replay_advantage: str = _D["replay_advantage"],
        save_replay: bool = _D["save_replay"],
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        target_kl: float | None = None,
        variance_stop: float | None = _D["variance_stop"],
        max_nonfinite_steps: int = _D["max_nonfinite_steps"],
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
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=gae_lambda,
            clip_range_vf=clip_range_vf,
            normalize_advantage=normalize_advantage,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            target_kl=target_kl,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
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

    def _evaluate_actions(self, rollout_data: Any, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """The LSTM policy's ``evaluate_actions`` over the minibatch's sequences, from their stored hidden states."""
        return self.policy.evaluate_actions(
            rollout_data.observations, actions, rollout_data.lstm_states, rollout_data.episode_starts
        )

    def _valid_samples(self, rollout_data: Any) -> th.Tensor:
        """The real steps of a padded sequence minibatch (contrib's ``mask``: 1 for a real step, 0 for padding)."""
        return rollout_data.mask > 1e-8

    def _policy_actions(self, actions: th.Tensor) -> th.Tensor:
        """
        Actions as float32 first, as SB3's own rollout buffer gives them out: SB3 2.9 stores actions in the action
        space's dtype and contrib 2.9's recurrent buffer pads them without the cast (int8 MultiBinary actions then
        fail in the Bernoulli log-probability, in RecurrentPPO too).
        """
        return super()._policy_actions(actions.to(th.float32))

    def _buffer_samples(self, indices: np.ndarray) -> Any:
        """
        Steps ``indices`` of the flattened buffer as padded sequences: a sequence starts at an episode start, at the
        first step of each env's part of the rollout, and at ``indices[0]`` (from the hidden state stored there).
        """
        buffer = self.rollout_buffer
        env_change = np.zeros((buffer.buffer_size, buffer.n_envs), dtype=np.float32)
        env_change[0] = 1.0
        return buffer._get_samples(indices, buffer.swap_and_flatten(env_change))

    def learn(
        self: SelfRecurrentR2VPO,
        total_timesteps: int | None = None,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "RecurrentR2VPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfRecurrentR2VPO:
        """
        Train the model; see :meth:`sb3_contrib.RecurrentPPO.learn`.

        :param total_timesteps: Environment steps to train for; ``None`` uses
            :attr:`default_total_timesteps` (100,000).
        :raises NonFiniteTrainingError: see :meth:`sb3_r2vpo.R2VPO.learn`
        """
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
