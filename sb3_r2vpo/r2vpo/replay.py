"""
Replay of stale rollouts: the K most recent previous rollouts, kept with each sample's behaviour
log-probability so that its ratio is always taken against the policy that collected it.

Everything derived from the critic or from running statistics is recomputed when a rollout is replayed: a
stored rollout keeps the environment's own rewards (without SB3's time-limit bootstrap ``γ·V(terminal obs)``,
which the critic of its time folded into the buffer's rewards) and the terminal observations of its truncated
steps, and, under ``VecNormalize``, the original observations and rewards, normalised with the current
statistics when the rollout is replayed (as SB3's off-policy replay buffers do).
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import DictRolloutBufferSamples, RolloutBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

REPLAY_ADVANTAGES = ("gae", "vtrace")

Observations = th.Tensor | dict[str, th.Tensor]


def _to_tensor(array: np.ndarray, device: th.device) -> th.Tensor:
    return th.as_tensor(np.ascontiguousarray(array), device=device)


def _map_obs(obs: Observations, fn) -> Observations:
    return {key: fn(value) for key, value in obs.items()} if isinstance(obs, dict) else fn(obs)


def _copy_obs(obs: np.ndarray | dict) -> np.ndarray | dict:
    if isinstance(obs, dict):
        return {key: np.array(value, copy=True) for key, value in obs.items()}
    return np.array(obs, copy=True)


def _stack_obs(observations: list) -> np.ndarray | dict:
    if isinstance(observations[0], dict):
        return {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}
    return np.stack(observations)


def _as_space_dtype(obs: np.ndarray | dict, space: spaces.Space) -> np.ndarray | dict:
    """Observations in the dtypes the rollout buffer would store them in (the observation space's)."""
    if isinstance(space, spaces.Dict):
        return {key: np.asarray(value, dtype=space[key].dtype) for key, value in obs.items()}
    return np.asarray(obs, dtype=space.dtype)


def float_actions(actions: th.Tensor) -> th.Tensor:
    """
    Actions as the policy takes them: stored in their native dtype (int8 for MultiBinary, int64 for Discrete,
    uint8, float64, ...), cast to float32 on the way out, as SB3's ``RolloutBuffer._get_samples`` does.
    """
    return actions.to(th.float32)


@dataclass
class StoredRollout:
    """
    One past rollout, shape ``(n_steps, n_envs, ...)``, in the dtypes the rollout buffer used.

    ``last_obs`` and ``last_dones`` are what the rollout's own return bootstrap needed: the observation after
    its last step and whether that step ended an episode.

    ``rewards`` are the environment's, without the time-limit bootstrap; ``terminal_index`` (flat positions
    ``step * n_envs + env`` in the ``(n_steps, n_envs)`` layout) and ``terminal_obs`` are the truncated steps
    and their terminal observations, whose ``γ·V(terminal obs)`` is added under the current critic when the
    rollout is replayed. ``terminal_index`` is ``None`` for a rollout stored by an older version (or collected
    outside :meth:`R2VPO.collect_rollouts`), whose rewards carry the bootstrap of their time.

    ``original``: observations (``observations``, ``last_obs``, ``terminal_obs``) and ``rewards`` are the
    environment's originals, to be normalised with the current ``VecNormalize`` statistics when replayed.

    ``action_masks``: the invalid-action masks the actions were drawn under (bool, ``(n_steps, n_envs, mask_size)``),
    for a rollout of a maskable rollout buffer (sb3-contrib's), else ``None``.
    """

    index: int
    observations: Observations
    actions: th.Tensor
    rewards: th.Tensor
    episode_starts: th.Tensor
    behaviour_log_probs: th.Tensor
    last_obs: Observations
    last_dones: th.Tensor
    # Defaults: rollouts unpickled from files of older versions lack these (the class attribute answers).
    terminal_index: th.Tensor | None = None
    terminal_obs: Observations | None = None
    original: bool = False
    action_masks: th.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.rewards.shape)  # type: ignore[return-value]

    def to(self, device: th.device) -> StoredRollout:
        move = lambda tensor: tensor.to(device)  # noqa: E731
        return StoredRollout(
            self.index,
            _map_obs(self.observations, move),
            move(self.actions),
            move(self.rewards),
            move(self.episode_starts),
            move(self.behaviour_log_probs),
            _map_obs(self.last_obs, move),
            move(self.last_dones),
            None if self.terminal_index is None else move(self.terminal_index),
            None if self.terminal_obs is None else _map_obs(self.terminal_obs, move),
            self.original,
            None if self.action_masks is None else move(self.action_masks),
        )


def action_mask_size(action_space: spaces.Space) -> int:
    """
    Entries of one action mask for ``action_space``, one per logit of the action distribution (sb3-contrib's
    layout): ``n`` for Discrete, ``sum(nvec)`` for MultiDiscrete, ``2 n`` for MultiBinary.
    """
    if isinstance(action_space, spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, spaces.MultiDiscrete):
        return int(np.sum(action_space.nvec))
    if isinstance(action_space, spaces.MultiBinary):
        return 2 * int(np.prod(action_space.shape))
    raise ValueError(f"no action masks for the action space {action_space}")


def rollout_nbytes(
    observation_space: spaces.Space, action_space: spaces.Space, n_steps: int, n_envs: int, mask_size: int = 0
) -> int:
    """
    Bytes one stored rollout takes: observations and actions in their dtypes, 3 float32 per sample, last obs; and
    ``mask_size`` bytes per sample for the action masks (stored as bool) of a maskable rollout.
    """

    def space_bytes(space: spaces.Space) -> int:
        if isinstance(space, spaces.Dict):
            return sum(space_bytes(sub) for sub in space.spaces.values())
        if isinstance(space, spaces.Discrete):
            return np.dtype(space.dtype).itemsize
        return int(np.prod(space.shape)) * np.dtype(space.dtype).itemsize

    per_sample = space_bytes(observation_space) + space_bytes(action_space) + 3 * 4 + mask_size  # reward, start, log μ
    return n_steps * n_envs * per_sample + n_envs * (space_bytes(observation_space) + 4)


def available_memory_bytes(device: th.device) -> int | None:
    """Free memory on ``device`` (GPU: free device memory; CPU: MemAvailable), or ``None`` when unknown."""
    if device.type == "cuda":
        free, _ = th.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def compute_gae(
    rewards: th.Tensor,
    values: th.Tensor,
    episode_starts: th.Tensor,
    last_values: th.Tensor,
    last_dones: th.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[th.Tensor, th.Tensor]:
    """
    GAE(λ) advantages and TD(λ) returns, with SB3's conventions (``RolloutBuffer.compute_returns_and_advantage``).

    :return: ``(advantages, returns)``, each ``(n_steps, n_envs)``
    """
    n_steps = rewards.shape[0]
    advantages = th.zeros_like(rewards)
    last_gae = th.zeros_like(last_values)
    for step in reversed(range(n_steps)):
        if step == n_steps - 1:
            next_non_terminal, next_values = 1.0 - last_dones, last_values
        else:
            next_non_terminal, next_values = 1.0 - episode_starts[step + 1], values[step + 1]
        delta = rewards[step] + gamma * next_values * next_non_terminal - values[step]
        last_gae = delta + gamma * gae_lambda * next_non_terminal * last_gae
        advantages[step] = last_gae
    return advantages, advantages + values


def compute_vtrace(
    rewards: th.Tensor,
    values: th.Tensor,
    episode_starts: th.Tensor,
    last_values: th.Tensor,
    last_dones: th.Tensor,
    log_ratios: th.Tensor,
    gamma: float,
    gae_lambda: float,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
) -> tuple[th.Tensor, th.Tensor]:
    """
    V-trace targets (Espeholt et al., 2018) with truncation levels ``rho_bar``, ``c_bar`` and trace factor λ.

    ``v_s = V(x_s) + δ_s + γ c_s (v_{s+1} − V(x_{s+1}))``, ``δ_s = ρ_s (r_s + γ V(x_{s+1}) − V(x_s))``,
    ``ρ_s = min(ρ̄, π/μ)``, ``c_s = λ min(c̄, π/μ)``; cut at episode ends. The advantage returned is
    ``r_s + γ v_{s+1} − V(x_s)``, without ρ: R2VPO's loss already multiplies by the ratio.

    :return: ``(advantages, value_targets)``, each ``(n_steps, n_envs)``
    """
    ratios = th.exp(log_ratios)
    rhos = th.clamp(ratios, max=rho_bar)
    cs = gae_lambda * th.clamp(ratios, max=c_bar)
    n_steps = rewards.shape[0]
    targets = th.zeros_like(values)
    advantages = th.zeros_like(values)
    next_correction = th.zeros_like(last_values)  # v_{s+1} - V(x_{s+1})
    for step in reversed(range(n_steps)):
        if step == n_steps - 1:
            next_non_terminal, next_values = 1.0 - last_dones, last_values
        else:
            next_non_terminal, next_values = 1.0 - episode_starts[step + 1], values[step + 1]
        next_target = next_values + next_correction  # v_{s+1}
        delta = rhos[step] * (rewards[step] + gamma * next_values * next_non_terminal - values[step])
        correction = delta + gamma * cs[step] * next_non_terminal * next_correction
        targets[step] = values[step] + correction
        advantages[step] = rewards[step] + gamma * next_non_terminal * next_target - values[step]
        next_correction = correction
    return advantages, targets


class RolloutRecording:
    """
    What one rollout's collection gave that the rollout buffer does not keep: the environment's rewards before
    SB3 folds the time-limit bootstrap into them, the terminal observations of truncated steps, and (under
    ``VecNormalize``) the original observations. Filled by :class:`RolloutRecorder`.
    """

    def __init__(self, n_envs: int, vec_normalize: VecNormalize | None) -> None:
        self.n_envs = n_envs
        self.vec_normalize = vec_normalize
        self.rewards: list[np.ndarray] = []
        self.observations: list[np.ndarray | dict] = []  # originals, under VecNormalize only
        self.terminal_index: list[int] = []
        self.terminal_obs: list[np.ndarray | dict] = []
        self.last_obs: np.ndarray | dict | None = None  # original, under VecNormalize only

    @property
    def original(self) -> bool:
        return self.vec_normalize is not None

    def __len__(self) -> int:
        return len(self.rewards)


class RolloutRecorder:
    """
    Stands in for the callback of :meth:`OnPolicyAlgorithm.collect_rollouts` (every call is passed on to it) and
    records, at each step, what :class:`RolloutRecording` holds. ``on_step`` runs after ``env.step`` and before
    SB3 adds the time-limit bootstrap to the rewards, so the rewards it sees are the environment's.

    :param callback: The callback ``collect_rollouts`` was given
    :param n_envs: Number of environments
    :param vec_normalize: The ``VecNormalize`` whose original observations and rewards are kept (``None``: the
        observations the agent saw and the rewards it got are kept)
    """

    def __init__(self, callback, n_envs: int, vec_normalize: VecNormalize | None) -> None:
        self.callback = callback
        self.recording = RolloutRecording(n_envs, vec_normalize)
        self._locals: dict = {}
        self._current_original: np.ndarray | dict | None = None

    def __getattr__(self, name: str):
        return getattr(self.callback, name)

    def on_rollout_start(self) -> None:
        vec_normalize = self.recording.vec_normalize
        if vec_normalize is not None:
            # The original of the observation the rollout starts from (set by the last reset or step).
            self._current_original = _copy_obs(vec_normalize.get_original_obs())
        self.callback.on_rollout_start()

    def update_locals(self, locals_: dict) -> None:
        self._locals = locals_
        self.callback.update_locals(locals_)

    def on_step(self) -> bool:
        recording, vec_normalize = self.recording, self.recording.vec_normalize
        step = len(recording)
        dones, infos = self._locals["dones"], self._locals["infos"]
        rewards = self._locals["rewards"] if vec_normalize is None else vec_normalize.get_original_reward()
        recording.rewards.append(np.array(rewards, dtype=np.float32, copy=True))
        # The same test as SB3's bootstrap in collect_rollouts.
        for env_index, done in enumerate(dones):
            info = infos[env_index]
            if done and info.get("terminal_observation") is not None and info.get("TimeLimit.truncated", False):
                terminal = info["terminal_observation"]
                if vec_normalize is not None:
                    # VecNormalize normalised it in place with the statistics it still has; this inverts that
                    # (exactly, up to float rounding, unless the normalised value was clipped at ±clip_obs).
                    terminal = vec_normalize.unnormalize_obs(terminal)
                recording.terminal_index.append(step * recording.n_envs + env_index)
                recording.terminal_obs.append(_copy_obs(terminal))
        if vec_normalize is not None:
            recording.observations.append(self._current_original)
            self._current_original = _copy_obs(vec_normalize.get_original_obs())
            recording.last_obs = self._current_original
        return self.callback.on_step()

    def on_rollout_end(self) -> None:
        self.callback.on_rollout_end()


class RolloutReplay:
    """
    The K most recent previous rollouts (oldest evicted first), on the model's device.

    :param capacity: K, the number of stored rollouts
    :param device: Where the tensors live
    """

    def __init__(self, capacity: int, device: th.device) -> None:
        self.capacity = capacity
        self.device = device
        self.rollouts: deque[StoredRollout] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self.rollouts)

    def to(self, device: th.device) -> RolloutReplay:
        self.device = device
        self.rollouts = deque((rollout.to(device) for rollout in self.rollouts), maxlen=self.capacity)
        return self

    def resize(self, capacity: int) -> RolloutReplay:
        """Keep at most ``capacity`` rollouts from now on; beyond it, the newest ones are kept."""
        self.capacity = capacity
        self.rollouts = deque(self.rollouts, maxlen=capacity)
        return self

    def snapshot(
        self,
        buffer: RolloutBuffer,
        last_obs: np.ndarray | dict,
        last_dones: np.ndarray,
        index: int,
        recording: RolloutRecording | None = None,
        observation_space: spaces.Space | None = None,
    ) -> StoredRollout:
        """
        Copy the rollout ``buffer`` holds, with its behaviour log-probabilities, before ``get()`` flattens it.

        :param last_obs: The observation after the rollout's last step (``model._last_obs``)
        :param last_dones: Whether that last step ended an episode (``model._last_episode_starts``)
        :param index: The rollout's number, from which ages are counted
        :param recording: What the collection recorded (rewards before the time-limit bootstrap, terminal
            observations, original observations); without it (or when it does not match the buffer) the
            buffer's rewards are kept, with the bootstrap of their time, and a warning says so
        :param observation_space: The dtypes in which original observations are stored
        """
        if buffer.generator_ready:
            raise RuntimeError("RolloutReplay.snapshot() needs the rollout buffer before get() flattened it")
        copy = lambda array: _to_tensor(np.array(array, copy=True), self.device)  # noqa: E731
        if recording is not None and len(recording) != buffer.buffer_size:
            recording = None
        if recording is None:
            warnings.warn(
                "This rollout was not collected by R2VPO.collect_rollouts: replay keeps its rewards with the "
                "time-limit bootstraps of the critic that collected it.",
                stacklevel=3,
            )
        original = recording is not None and recording.original
        if original:
            observations = _map_obs(_as_space_dtype(_stack_obs(recording.observations), observation_space), copy)
            last = _map_obs(_as_space_dtype(recording.last_obs, observation_space), copy)
        else:
            observations = _map_obs(buffer.observations, copy)
            last = _map_obs(last_obs, copy)
        masks = getattr(buffer, "action_masks", None)  # sb3-contrib's maskable rollout buffers hold them
        terminal_index, terminal_obs = None, None
        if recording is not None:
            terminal_index = th.as_tensor(recording.terminal_index, dtype=th.long, device=self.device)
            if recording.terminal_obs:
                stacked = _stack_obs(recording.terminal_obs)
                if observation_space is not None:
                    stacked = _as_space_dtype(stacked, observation_space)
                terminal_obs = _map_obs(stacked, copy)
        return StoredRollout(
            index=index,
            observations=observations,
            actions=copy(buffer.actions),
            rewards=copy(np.stack(recording.rewards) if recording is not None else buffer.rewards),
            episode_starts=copy(buffer.episode_starts),
            behaviour_log_probs=copy(buffer.log_probs),
            last_obs=last,
            last_dones=copy(np.asarray(last_dones, dtype=np.float32)),
            terminal_index=terminal_index,
            terminal_obs=terminal_obs,
            original=original,
            action_masks=None if masks is None else _to_tensor(np.asarray(masks) > 0.5, self.device),
        )

    def append(self, rollout: StoredRollout) -> None:
        """Store ``rollout``; beyond the capacity the oldest one is evicted."""
        self.rollouts.append(rollout)


@dataclass
class ReplayBatch:
    """
    Every sample of one update (fresh and stale), flattened, with each sample's age in rollouts (0 = fresh).

    ``start_log_prob``: each sample's log-probability under the policy at the start of the update, against
    which ``target_kl`` measures how far this update has moved the policy.

    ``action_masks`` (float32, ``(samples, mask_size)``, as a maskable rollout buffer gives them): each sample's
    invalid-action mask, for a maskable policy; the minibatches are then sb3-contrib's maskable samples.
    """

    observations: Observations
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    ages: th.Tensor
    start_log_prob: th.Tensor
    action_masks: th.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ages)

    def samples(self, idx: th.Tensor) -> Any:
        """The rows ``idx`` as the rollout buffer's samples: SB3's, or sb3-contrib's maskable ones with masks."""
        fields = (
            _map_obs(self.observations, lambda obs: obs[idx]),
            self.actions[idx],
            self.old_values[idx],
            self.old_log_prob[idx],
            self.advantages[idx],
            self.returns[idx],
        )
        dict_obs = isinstance(self.observations, dict)
        if self.action_masks is None:
            return (DictRolloutBufferSamples if dict_obs else RolloutBufferSamples)(*fields)
        from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBufferSamples, MaskableRolloutBufferSamples

        masked_class = MaskableDictRolloutBufferSamples if dict_obs else MaskableRolloutBufferSamples
        return masked_class(*fields, self.action_masks[idx])

    def minibatches(self, batch_size: int) -> Iterator[tuple[Any, th.Tensor, th.Tensor]]:
        indices = th.randperm(len(self), device=self.ages.device)
        for start in range(0, len(self), batch_size):
            idx = indices[start : start + batch_size]
            yield self.samples(idx), self.ages[idx], self.start_log_prob[idx]


def _flatten(tensor: th.Tensor) -> th.Tensor:
    """``(n_steps, n_envs, ...)`` → ``(n_envs * n_steps, ...)``, env-major like SB3's ``swap_and_flatten``."""
    return tensor.transpose(0, 1).reshape(-1, *tensor.shape[2:])


def _actions_for_policy(actions: th.Tensor, action_space: spaces.Space) -> th.Tensor:
    if isinstance(action_space, spaces.Discrete):
        return actions.long().flatten()
    return actions


def _normalize_obs(obs: Observations, vec_normalize: VecNormalize, device: th.device) -> Observations:
    """Original observations normalised with ``vec_normalize``'s current statistics (``normalize_obs``)."""
    numpy = _map_obs(obs, lambda tensor: tensor.cpu().numpy())
    return _map_obs(vec_normalize.normalize_obs(numpy), lambda array: _to_tensor(array, device))


def replayed_inputs(
    rollout: StoredRollout, vec_normalize: VecNormalize | None, device: th.device
) -> tuple[Observations, th.Tensor, Observations, Observations | None]:
    """
    ``(observations, rewards, last_obs, terminal_obs)`` of a stored rollout as the current model sees them:
    original observations and rewards normalised with the current ``VecNormalize`` statistics. The rewards
    are without time-limit bootstrap (see :func:`bootstrapped_rewards`), except in a rollout of an older version.
    """
    observations, rewards = rollout.observations, rollout.rewards
    last_obs, terminal_obs = rollout.last_obs, rollout.terminal_obs
    if rollout.original and vec_normalize is not None:
        observations = _normalize_obs(observations, vec_normalize, device)
        last_obs = _normalize_obs(last_obs, vec_normalize, device)
        if terminal_obs is not None:
            terminal_obs = _normalize_obs(terminal_obs, vec_normalize, device)
        rewards = _to_tensor(vec_normalize.normalize_reward(rewards.cpu().numpy()), device)
    return observations, rewards, last_obs, terminal_obs


def bootstrapped_rewards(
    policy: ActorCriticPolicy, rollout: StoredRollout, rewards: th.Tensor, terminal_obs: Observations | None, gamma: float
) -> th.Tensor:
    """``rewards`` plus ``γ·V(terminal obs)`` under the current critic at the rollout's truncated steps (as SB3)."""
    if rollout.terminal_index is None or len(rollout.terminal_index) == 0:
        return rewards
    with th.no_grad():
        terminal_values = policy.predict_values(terminal_obs).flatten()
    rewards = rewards.clone()
    rewards.view(-1)[rollout.terminal_index] += gamma * terminal_values
    return rewards


def _evaluate(
    policy: ActorCriticPolicy,
    observations: Observations,
    actions: th.Tensor,
    action_space: spaces.Space,
    action_masks: th.Tensor | None,
) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
    """``policy.evaluate_actions`` without gradient, under the samples' action masks where there are any."""
    masking = {} if action_masks is None else {"action_masks": action_masks}
    with th.no_grad():
        return policy.evaluate_actions(observations, _actions_for_policy(actions, action_space), **masking)


def build_replay_batch(
    policy: ActorCriticPolicy,
    buffer: RolloutBuffer,
    replay: RolloutReplay,
    current_index: int,
    gamma: float,
    gae_lambda: float,
    advantage_mode: str,
    action_space: spaces.Space,
    vec_normalize: VecNormalize | None = None,
) -> tuple[ReplayBatch, dict[str, float]]:
    """
    The current rollout plus every stored one, everything derived from the critic refreshed under the current
    critic: time-limit bootstraps, then advantages and value targets (GAE, or V-trace with ρ̄ = c̄ = 1). Stored
    original observations and rewards are normalised with ``vec_normalize``'s current statistics.

    :return: The batch, and statistics of the stale samples' importance weights measured before the update
    """
    device = policy.device
    fresh_actions = _flatten(float_actions(_to_tensor(buffer.actions, device)))
    fresh_obs = _map_obs(buffer.observations, lambda array: _flatten(_to_tensor(array, device)))
    masks = getattr(buffer, "action_masks", None)  # sb3-contrib's maskable rollout buffers hold them
    fresh_masks = None if masks is None else _flatten(_to_tensor(masks, device)).to(th.float32)
    fresh = {
        "observations": fresh_obs,
        "actions": fresh_actions,
        "old_values": _flatten(_to_tensor(buffer.values, device)),
        "old_log_prob": _flatten(_to_tensor(buffer.log_probs, device)),
        "advantages": _flatten(_to_tensor(buffer.advantages, device)),
        "returns": _flatten(_to_tensor(buffer.returns, device)),
        "ages": th.zeros(buffer.buffer_size * buffer.n_envs, dtype=th.long, device=device),
        "start_log_prob": _evaluate(policy, fresh_obs, fresh_actions, action_space, fresh_masks)[1].flatten(),
    }
    if fresh_masks is not None:
        fresh["action_masks"] = fresh_masks
    parts = [fresh]
    stats: dict[str, float] = {}
    stale_log_ratios = []
    for rollout in replay.rollouts:
        n_steps, n_envs = rollout.shape
        age = current_index - rollout.index
        observations, rewards, last_obs, terminal_obs = replayed_inputs(rollout, vec_normalize, device)
        rewards = bootstrapped_rewards(policy, rollout, rewards, terminal_obs, gamma)
        flat_obs = _map_obs(observations, _flatten)
        flat_actions = float_actions(_flatten(rollout.actions))
        flat_masks = None
        if fresh_masks is not None:
            if rollout.action_masks is None:
                raise ValueError("a stored rollout has no action masks: it was not collected by a maskable algorithm")
            flat_masks = _flatten(rollout.action_masks).to(th.float32)
        values, log_prob, _ = _evaluate(policy, flat_obs, flat_actions, action_space, flat_masks)
        with th.no_grad():
            last_values = policy.predict_values(last_obs).flatten()
        # back to (n_steps, n_envs)
        values = values.flatten().reshape(n_envs, n_steps).T
        log_ratios = log_prob.reshape(n_envs, n_steps).T - rollout.behaviour_log_probs
        if advantage_mode == "vtrace":
            advantages, returns = compute_vtrace(
                rewards, values, rollout.episode_starts, last_values, rollout.last_dones, log_ratios, gamma, gae_lambda
            )
        else:
            advantages, returns = compute_gae(
                rewards, values, rollout.episode_starts, last_values, rollout.last_dones, gamma, gae_lambda
            )
        parts.append(
            {
                **({} if flat_masks is None else {"action_masks": flat_masks}),
                "observations": flat_obs,
                "actions": flat_actions,
                "old_values": _flatten(values),
                "old_log_prob": _flatten(rollout.behaviour_log_probs),
                "advantages": _flatten(advantages),
                "returns": _flatten(returns),
                "ages": th.full((n_steps * n_envs,), age, dtype=th.long, device=device),
                "start_log_prob": log_prob.flatten(),
            }
        )
        stats[f"replay_abs_logratio_age{age}"] = float(log_ratios.abs().mean())
        stale_log_ratios.append(log_ratios.flatten())

    if stale_log_ratios:
        weights = th.exp(th.clamp(th.cat(stale_log_ratios), -20, 20))
        # Kish's effective sample size of the stale importance weights, as a fraction of their count.
        stats["replay_ess"] = float(weights.sum() ** 2 / (weights.pow(2).sum() * len(weights)))

    def cat(key: str) -> th.Tensor:
        return th.cat([part[key] for part in parts])

    if isinstance(fresh["observations"], dict):
        observations = {key: th.cat([part["observations"][key] for part in parts]) for key in fresh["observations"]}
    else:
        observations = cat("observations")
    batch = ReplayBatch(
        observations=observations,
        actions=cat("actions"),
        old_values=cat("old_values").flatten(),
        old_log_prob=cat("old_log_prob").flatten(),
        advantages=cat("advantages").flatten(),
        returns=cat("returns").flatten(),
        ages=cat("ages"),
        start_log_prob=cat("start_log_prob").flatten(),
        action_masks=None if fresh_masks is None else cat("action_masks"),
    )
    return batch, stats
