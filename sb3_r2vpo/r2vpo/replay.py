"""
Replay of stale rollouts: the K most recent previous rollouts, kept with each sample's behaviour
log-probability so that its ratio is always taken against the policy that collected it.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import DictRolloutBufferSamples, RolloutBufferSamples

REPLAY_ADVANTAGES = ("gae", "vtrace")

Observations = th.Tensor | dict[str, th.Tensor]


def _to_tensor(array: np.ndarray, device: th.device) -> th.Tensor:
    return th.as_tensor(np.ascontiguousarray(array), device=device)


def _map_obs(obs: Observations, fn) -> Observations:
    return {key: fn(value) for key, value in obs.items()} if isinstance(obs, dict) else fn(obs)


@dataclass
class StoredRollout:
    """
    One past rollout, shape ``(n_steps, n_envs, ...)``, in the dtypes the rollout buffer used.

    ``last_obs`` and ``last_dones`` are what the rollout's own return bootstrap needed: the observation after
    its last step and whether that step ended an episode.
    """

    index: int
    observations: Observations
    actions: th.Tensor
    rewards: th.Tensor
    episode_starts: th.Tensor
    behaviour_log_probs: th.Tensor
    last_obs: Observations
    last_dones: th.Tensor

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
        )


def rollout_nbytes(observation_space: spaces.Space, action_space: spaces.Space, n_steps: int, n_envs: int) -> int:
    """Bytes one stored rollout takes: observations and actions in their dtypes, 3 float32 per sample, last obs."""

    def space_bytes(space: spaces.Space) -> int:
        if isinstance(space, spaces.Dict):
            return sum(space_bytes(sub) for sub in space.spaces.values())
        if isinstance(space, spaces.Discrete):
            return np.dtype(space.dtype).itemsize
        return int(np.prod(space.shape)) * np.dtype(space.dtype).itemsize

    per_sample = space_bytes(observation_space) + space_bytes(action_space) + 3 * 4  # reward, start, log μ
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

    def snapshot(
        self, buffer: RolloutBuffer, last_obs: np.ndarray | dict, last_dones: np.ndarray, index: int
    ) -> StoredRollout:
        """
        Copy the rollout ``buffer`` holds, with its behaviour log-probabilities, before ``get()`` flattens it.

        :param last_obs: The observation after the rollout's last step (``model._last_obs``)
        :param last_dones: Whether that last step ended an episode (``model._last_episode_starts``)
        :param index: The rollout's number, from which ages are counted
        """
        if buffer.generator_ready:
            raise RuntimeError("RolloutReplay.snapshot() needs the rollout buffer before get() flattened it")
        copy = lambda array: _to_tensor(np.array(array, copy=True), self.device)  # noqa: E731
        if isinstance(buffer, DictRolloutBuffer):
            observations = {key: copy(value) for key, value in buffer.observations.items()}
            last = {key: copy(value) for key, value in last_obs.items()}
        else:
            observations, last = copy(buffer.observations), copy(last_obs)
        return StoredRollout(
            index=index,
            observations=observations,
            actions=copy(buffer.actions),
            rewards=copy(buffer.rewards),
            episode_starts=copy(buffer.episode_starts),
            behaviour_log_probs=copy(buffer.log_probs),
            last_obs=last,
            last_dones=copy(np.asarray(last_dones, dtype=np.float32)),
        )

    def append(self, rollout: StoredRollout) -> None:
        """Store ``rollout``; beyond the capacity the oldest one is evicted."""
        self.rollouts.append(rollout)


@dataclass
class ReplayBatch:
    """Every sample of one update (fresh and stale), flattened, with each sample's age in rollouts (0 = fresh)."""

    observations: Observations
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    ages: th.Tensor

    def __len__(self) -> int:
        return len(self.ages)

    def minibatches(self, batch_size: int) -> Iterator[tuple[RolloutBufferSamples | DictRolloutBufferSamples, th.Tensor]]:
        indices = th.randperm(len(self), device=self.ages.device)
        samples_class = DictRolloutBufferSamples if isinstance(self.observations, dict) else RolloutBufferSamples
        for start in range(0, len(self), batch_size):
            idx = indices[start : start + batch_size]
            yield (
                samples_class(
                    _map_obs(self.observations, lambda obs, idx=idx: obs[idx]),
                    self.actions[idx],
                    self.old_values[idx],
                    self.old_log_prob[idx],
                    self.advantages[idx],
                    self.returns[idx],
                ),
                self.ages[idx],
            )


def _flatten(tensor: th.Tensor) -> th.Tensor:
    """``(n_steps, n_envs, ...)`` → ``(n_envs * n_steps, ...)``, env-major like SB3's ``swap_and_flatten``."""
    return tensor.transpose(0, 1).reshape(-1, *tensor.shape[2:])


def _actions_for_policy(actions: th.Tensor, action_space: spaces.Space) -> th.Tensor:
    if isinstance(action_space, spaces.Discrete):
        return actions.long().flatten()
    return actions


def build_replay_batch(
    policy: ActorCriticPolicy,
    buffer: RolloutBuffer,
    replay: RolloutReplay,
    current_index: int,
    gamma: float,
    gae_lambda: float,
    advantage_mode: str,
    action_space: spaces.Space,
) -> tuple[ReplayBatch, dict[str, float]]:
    """
    The current rollout plus every stored one, stale advantages and value targets refreshed under the
    current critic (GAE, or V-trace with ρ̄ = c̄ = 1).

    :return: The batch, and statistics of the stale samples' importance weights measured before the update
    """
    device = policy.device
    fresh = {
        "observations": _map_obs(buffer.observations, lambda array: _flatten(_to_tensor(array, device))),
        "actions": _flatten(_to_tensor(buffer.actions, device)),
        "old_values": _flatten(_to_tensor(buffer.values, device)),
        "old_log_prob": _flatten(_to_tensor(buffer.log_probs, device)),
        "advantages": _flatten(_to_tensor(buffer.advantages, device)),
        "returns": _flatten(_to_tensor(buffer.returns, device)),
        "ages": th.zeros(buffer.buffer_size * buffer.n_envs, dtype=th.long, device=device),
    }
    parts = [fresh]
    stats: dict[str, float] = {}
    stale_log_ratios = []
    for rollout in replay.rollouts:
        n_steps, n_envs = rollout.shape
        age = current_index - rollout.index
        with th.no_grad():
            flat_obs = _map_obs(rollout.observations, _flatten)
            flat_actions = _flatten(rollout.actions)
            values, log_prob, _ = policy.evaluate_actions(flat_obs, _actions_for_policy(flat_actions, action_space))
            last_values = policy.predict_values(rollout.last_obs).flatten()
        # back to (n_steps, n_envs)
        values = values.flatten().reshape(n_envs, n_steps).T
        log_ratios = log_prob.reshape(n_envs, n_steps).T - rollout.behaviour_log_probs
        if advantage_mode == "vtrace":
            advantages, returns = compute_vtrace(
                rollout.rewards, values, rollout.episode_starts, last_values, rollout.last_dones, log_ratios, gamma, gae_lambda
            )
        else:
            advantages, returns = compute_gae(
                rollout.rewards, values, rollout.episode_starts, last_values, rollout.last_dones, gamma, gae_lambda
            )
        parts.append(
            {
                "observations": flat_obs,
                "actions": flat_actions,
                "old_values": _flatten(values),
                "old_log_prob": _flatten(rollout.behaviour_log_probs),
                "advantages": _flatten(advantages),
                "returns": _flatten(returns),
                "ages": th.full((n_steps * n_envs,), age, dtype=th.long, device=device),
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
    )
    return batch, stats
