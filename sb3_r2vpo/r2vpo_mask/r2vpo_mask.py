import warnings
from typing import Any, ClassVar, TypeVar

import torch as th
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.utils import is_masking_supported
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule

from sb3_r2vpo.r2vpo.mixin import R2VPOMixin, accepts_ppo_habits, r2vpo_arguments_of
from sb3_r2vpo.r2vpo.r2vpo import R2VPO_DEFAULTS
from sb3_r2vpo.r2vpo.replay import action_mask_size
from sb3_r2vpo.r2vpo_mask.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

SelfMaskableR2VPO = TypeVar("SelfMaskableR2VPO", bound="MaskableR2VPO")

_D = R2VPO_DEFAULTS  # the R²VPO arguments' defaults are R2VPO's, read from its constructor


class MaskableR2VPO(R2VPOMixin, MaskablePPO):
    """
    R²VPO with invalid action masking: sb3-contrib's :class:`~sb3_contrib.MaskablePPO` (its maskable policies,
    rollout buffers, rollout collection, ``predict(..., action_masks=...)``, ``learn(..., use_masking=...)``) with
    R2VPO's loss in place of the clipped surrogate. The policy's log-probabilities are taken under each sample's
    mask in every term (the ratio, its variance, the entropy, the replay's refreshed advantages): an invalid action
    has zero probability, and the valid ones share all of it.

    Works with contrib's :func:`~sb3_contrib.common.maskable.evaluation.evaluate_policy`,
    :class:`~sb3_contrib.common.maskable.callbacks.MaskableEvalCallback` and
    :class:`~sb3_contrib.common.wrappers.ActionMasker`; action spaces Discrete, MultiDiscrete and MultiBinary.

    Arguments shared with MaskablePPO take its meaning and default, except ``clip_range``, which is refused
    (``variance_target`` plays its role). The R²VPO arguments (``variance_target`` to ``max_nonfinite_steps``) have
    the meaning and default they have in :class:`~sb3_r2vpo.R2VPO`, whose docstring describes them in full;
    ``replay_rollouts > 0`` is supported: each stored rollout keeps its action masks.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy): a maskable policy
    :param env: The environment to learn from (if registered in Gym, can be str); it must expose
        ``action_masks()`` (see :class:`~sb3_contrib.common.wrappers.ActionMasker`) unless ``use_masking=False``
    :param learning_rate: The learning rate, it can be a function of the current progress remaining (from 1 to 0)
    :param n_steps: The number of steps to run for each environment per update
    :param batch_size: Minibatch size, at least 2 (the ratio variance of one sample is zero)
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
        ``"start"`` (centred on each ratio's value at the start of the update; see R2VPO)
    :param log_ratio_guard: Numerical clamp of the log-ratio
    :param replay_rollouts: K previous rollouts trained on again, with their masks (0: on-policy; see R2VPO)
    :param replay_advantage: ``"gae"`` or ``"vtrace"``: how stale rollouts get fresh advantages
    :param save_replay: Whether ``save()`` writes the stored rollouts into the model file
    :param clip_range_vf: Clipping parameter for the value function (``None``: no clipping)
    :param normalize_advantage: Whether to normalize the advantage per minibatch
    :param ent_coef: Entropy coefficient for the loss calculation
    :param vf_coef: Value function coefficient for the loss calculation
    :param max_grad_norm: The maximum value for the gradient clipping
    :param rollout_buffer_class: Rollout buffer class to use (a maskable one); ``None``: contrib's
    :param rollout_buffer_kwargs: Keyword arguments to pass to the rollout buffer on creation
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
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    algorithm_name: ClassVar[str] = "MaskableR2VPO"
    r2vpo_action_spaces: ClassVar[tuple[type[spaces.Space], ...]] = (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
    _base_reads_clip_range: ClassVar[bool] = True

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
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
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
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
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

    def _make_env(self, env: GymEnv | str | None, verbose: int) -> GymEnv | None:
        """
        The env as :class:`R2VPOMixin` makes it; one without action masks is accepted, as MaskablePPO accepts it
        (``learn(use_masking=False)`` trains on it), but warned about at construction rather than at ``learn``.
        """
        env = super()._make_env(env, verbose)
        if env is not None and not is_masking_supported(env):
            warnings.warn(
                f"`env`: {env} has no action masks (no `action_masks()` method): {self.algorithm_name}.learn() will "
                "need use_masking=False. Wrap it with sb3_contrib.common.wrappers.ActionMasker(env, mask_fn), or use "
                "R2VPO for a task without invalid actions",
                UserWarning,
                stacklevel=4,  # _make_env ← __init__ ← accepts_ppo_habits ← the caller
            )
        return env

    def _evaluate_actions(self, rollout_data: Any, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """The maskable policy's ``evaluate_actions`` under each sample's action mask."""
        return self.policy.evaluate_actions(rollout_data.observations, actions, action_masks=rollout_data.action_masks)

    def _replay_mask_size(self) -> int:
        return action_mask_size(self.action_space)

    def learn(  # type: ignore[override]
        self: SelfMaskableR2VPO,
        total_timesteps: int | None = None,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "MaskableR2VPO",
        reset_num_timesteps: bool = True,
        use_masking: bool = True,
        progress_bar: bool = False,
    ) -> SelfMaskableR2VPO:
        """
        Train the model; see :meth:`sb3_contrib.MaskablePPO.learn`.

        :param total_timesteps: Environment steps to train for; ``None`` uses
            :attr:`default_total_timesteps` (100,000).
        :param use_masking: Whether to collect the rollouts under the env's action masks (``action_masks()``)
        :raises NonFiniteTrainingError: see :meth:`sb3_r2vpo.R2VPO.learn`
        """
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
            use_masking=use_masking,
        )
