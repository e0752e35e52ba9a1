"""Replay of stale rollouts: on-policy path untouched, behaviour log-probs kept, GAE/V-trace, save/load."""

import copy
import dataclasses
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import (
    FakeImageEnv,
    IdentityEnv,
    IdentityEnvBox,
    IdentityEnvMultiBinary,
    IdentityEnvMultiDiscrete,
    SimpleMultiObsEnv,
)
from stable_baselines3.common.vec_env import VecNormalize

from sb3_r2vpo import R2VPO
from sb3_r2vpo.r2vpo.replay import (
    ReplayBatch,
    StoredRollout,
    available_memory_bytes,
    build_replay_batch,
    compute_gae,
    compute_vtrace,
    rollout_nbytes,
)
from tests.conftest import attach
from tests.envs import DictMultiBinaryEnv, Float64ActionEnv, RecordingWrapper, TruncatingEnv

th.set_num_threads(1)

SMALL = dict(n_steps=64, batch_size=32, n_epochs=2)


def test_k0_is_the_on_policy_path_bit_for_bit():
    plain = R2VPO("MlpPolicy", "Pendulum-v1", seed=0, **SMALL).learn(64 * 4)
    k0 = R2VPO("MlpPolicy", "Pendulum-v1", seed=0, replay_rollouts=0, replay_advantage="vtrace", **SMALL).learn(64 * 4)
    assert k0.replay is None
    for (name, a), b in zip(plain.policy.state_dict().items(), k0.policy.state_dict().values(), strict=True):
        assert th.equal(a, b), name
    assert plain.lagrange_multiplier == k0.lagrange_multiplier
    # Replay changes training (so the comparison above is not vacuous).
    k2 = R2VPO("MlpPolicy", "Pendulum-v1", seed=0, replay_rollouts=2, **SMALL).learn(64 * 4)
    assert not all(
        th.equal(a, b) for a, b in zip(plain.policy.state_dict().values(), k2.policy.state_dict().values(), strict=True)
    )


class PolicySnapshots(BaseCallback):
    """The policy that collected each rollout, keyed by the rollout's index."""

    def __init__(self):
        super().__init__()
        self.snapshots = {}

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.snapshots[self.model._rollout_index] = copy.deepcopy(self.model.policy.state_dict())


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_stored_behaviour_log_probs_and_eviction_order(env_id):
    model = R2VPO("MlpPolicy", make_vec_env(env_id, n_envs=2, seed=0), seed=0, replay_rollouts=2, **SMALL)
    snapshots = PolicySnapshots()
    model.learn(64 * 2 * 5, callback=snapshots)
    assert [rollout.index for rollout in model.replay.rollouts] == [3, 4]  # 0, 1 and 2 evicted, oldest first

    behaviour = type(model.policy)(**model.policy._get_constructor_parameters())
    for rollout in model.replay.rollouts:
        behaviour.load_state_dict(snapshots.snapshots[rollout.index])
        n_steps, n_envs = rollout.shape
        obs = rollout.observations.reshape(n_steps * n_envs, -1)
        actions = rollout.actions.reshape(n_steps * n_envs, -1)
        if env_id == "CartPole-v1":
            actions = actions.long().flatten()
        with th.no_grad():
            _, log_prob, _ = behaviour.evaluate_actions(obs, actions)
            _, current, _ = model.policy.evaluate_actions(obs, actions)
        stored = rollout.behaviour_log_probs.reshape(-1)
        th.testing.assert_close(stored, log_prob, rtol=1e-5, atol=1e-5)
        assert not th.allclose(stored, current, atol=1e-5), "the policy moved since; the check is not vacuous"


def _reference_gae(rewards, values, starts, last_values, last_dones, gamma, lam):
    n_steps, n_envs = rewards.shape
    advantages = np.zeros_like(rewards)
    for env in range(n_envs):
        running = 0.0
        for t in reversed(range(n_steps)):
            if t == n_steps - 1:
                alive, next_value = 1.0 - last_dones[env], last_values[env]
            else:
                alive, next_value = 1.0 - starts[t + 1, env], values[t + 1, env]
            running = rewards[t, env] + gamma * alive * next_value - values[t, env] + gamma * lam * alive * running
            advantages[t, env] = running
    return advantages


def test_recomputed_gae_matches_reference_on_hand_made_trajectory():
    rewards = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.5], [1.0, -1.0]], dtype=np.float32)
    values = np.array([[0.5, 0.1], [0.2, 0.3], [1.0, 0.0], [0.4, 0.2]], dtype=np.float32)
    starts = np.array([[1, 1], [0, 0], [1, 0], [0, 0]], dtype=np.float32)  # env 0 restarts at t = 2
    last_values, last_dones = np.array([0.7, 0.9], dtype=np.float32), np.array([0.0, 1.0], dtype=np.float32)
    expected = _reference_gae(rewards, values, starts, last_values, last_dones, 0.9, 0.8)
    tensors = [th.as_tensor(x) for x in (rewards, values, starts, last_values, last_dones)]
    advantages, returns = compute_gae(*tensors, gamma=0.9, gae_lambda=0.8)
    np.testing.assert_allclose(advantages.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(returns.numpy(), expected + values, rtol=1e-6)
    # By hand, env 1's last step ends its episode: A = r - V = -1 - 0.2.
    assert advantages[3, 1].item() == pytest.approx(-1.2)

    # V-trace with on-policy ratios gives the same value targets as GAE's λ-returns.
    _, targets = compute_vtrace(*tensors, log_ratios=th.zeros(4, 2), gamma=0.9, gae_lambda=0.8)
    np.testing.assert_allclose(targets.numpy(), returns.numpy(), rtol=1e-5, atol=1e-6)


def test_vtrace_truncates_large_ratios():
    # One env, two steps, no episode end; ratio 3 at step 0 is truncated to 1, ratio 0.5 at step 1 kept.
    rewards, values = th.tensor([[1.0], [2.0]]), th.tensor([[0.0], [1.0]])
    starts, last_values, last_dones = th.zeros(2, 1), th.tensor([4.0]), th.tensor([0.0])
    log_ratios = th.log(th.tensor([[3.0], [0.5]]))
    advantages, targets = compute_vtrace(
        rewards, values, starts, last_values, last_dones, log_ratios, gamma=0.5, gae_lambda=1.0
    )
    delta1 = 0.5 * (2.0 + 0.5 * 4.0 - 1.0)  # ρ_1 = 0.5
    v1 = 1.0 + delta1
    delta0 = 1.0 * (1.0 + 0.5 * 1.0 - 0.0)  # ρ_0 = min(1, 3)
    v0 = 0.0 + delta0 + 0.5 * 1.0 * delta1  # c_0 = min(1, 3)
    assert targets[1, 0].item() == pytest.approx(v1)
    assert targets[0, 0].item() == pytest.approx(v0)
    assert advantages[0, 0].item() == pytest.approx(1.0 + 0.5 * v1 - 0.0)


@pytest.mark.parametrize("save_replay", [False, True])
def test_save_load_continue_with_replay(tmp_path, save_replay):
    env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    model = R2VPO("MlpPolicy", env, seed=0, replay_rollouts=2, save_replay=save_replay, **SMALL).learn(64 * 3)
    model.save(tmp_path / "model")
    loaded = R2VPO.load(tmp_path / "model", env=env)
    assert loaded.replay_rollouts == 2 and loaded.lagrange_multiplier == model.lagrange_multiplier
    if save_replay:
        assert [r.index for r in loaded.replay.rollouts] == [r.index for r in model.replay.rollouts]
        for old, new in zip(model.replay.rollouts, loaded.replay.rollouts, strict=True):
            assert th.equal(old.behaviour_log_probs, new.behaviour_log_probs)
    else:
        assert len(loaded.replay) == 0
    loaded.learn(64 * 2, reset_num_timesteps=False)
    assert len(loaded.replay) == 2
    assert loaded.logger.name_to_value["train/replay_rollouts_stored"] == 2


def test_replay_file_size_depends_on_save_replay(tmp_path):
    sizes = {}
    for flag in (False, True):
        model = R2VPO(
            "MlpPolicy", "Pendulum-v1", seed=0, replay_rollouts=2, save_replay=flag, n_steps=512, batch_size=64, n_epochs=1
        )
        model.learn(512 * 3)
        model.save(tmp_path / f"m{flag}")
        sizes[flag] = (tmp_path / f"m{flag}.zip").stat().st_size
    assert sizes[True] > sizes[False] + 10_000


@pytest.mark.parametrize(
    ("make_env", "policy", "mode"),
    [
        (lambda: IdentityEnv(3), "MlpPolicy", "gae"),
        (lambda: IdentityEnv(3), "MlpPolicy", "vtrace"),
        (lambda: SimpleMultiObsEnv(random_start=False), "MultiInputPolicy", "vtrace"),
    ],
)
def test_replay_with_discrete_dict_obs_and_several_envs(make_env, policy, mode):
    model = R2VPO(policy, make_vec_env(make_env, n_envs=2, seed=0), seed=0, replay_rollouts=3, replay_advantage=mode, **SMALL)
    model.learn(64 * 2 * 4)
    record = model.logger.name_to_value
    assert record["train/replay_fraction"] == pytest.approx(3 / 4)
    for key in ("train/ratio_variance_fresh", "train/ratio_variance_stale", "train/replay_ess"):
        assert np.isfinite(record[key]), key
    assert 0 < record["train/replay_ess"] <= 1
    assert {"train/replay_abs_logratio_age1", "train/replay_abs_logratio_age3"} <= set(record)
    assert record["train/replay_abs_logratio_age3"] >= 0


def test_replay_arguments_are_checked():
    with pytest.raises(ValueError, match=r"`replay_rollouts` must be >= 0, got -1"):
        R2VPO("MlpPolicy", "CartPole-v1", replay_rollouts=-1)
    with pytest.raises(ValueError, match=r"`replay_advantage` must be one of \('gae', 'vtrace'\), got 'retrace'"):
        R2VPO("MlpPolicy", "CartPole-v1", replay_rollouts=2, replay_advantage="retrace")
    with pytest.raises(
        ValueError, match=r"`replay_rollouts`=1000000000 needs about \d+ MiB .* more than half of the \d+ MiB available"
    ):
        R2VPO("MlpPolicy", "CartPole-v1", replay_rollouts=10**9)


def test_memory_formula():
    env = make_vec_env("CartPole-v1", n_envs=4)
    # float32 obs (4 x 4 bytes) + int64 action (8) + 3 float32 = 36 bytes per sample; plus the last obs.
    assert rollout_nbytes(env.observation_space, env.action_space, 128, 4) == 128 * 4 * 36 + 4 * (16 + 4)


# ---------------------------------------------------------------------------------------------------------------
# Issue 14: every space with replay, stale time-limit bootstraps, VecNormalize, target_kl, load overrides.


def _space_cases():
    return {
        "box": (lambda: IdentityEnvBox(eps=0.5), "MlpPolicy", {}),
        "box_float64": (Float64ActionEnv, "MlpPolicy", {}),
        "discrete": (lambda: IdentityEnv(3), "MlpPolicy", {}),
        "multidiscrete": (lambda: IdentityEnvMultiDiscrete(3), "MlpPolicy", {}),
        "multibinary": (lambda: IdentityEnvMultiBinary(5), "MlpPolicy", {}),
        "dict_obs": (lambda: SimpleMultiObsEnv(random_start=False), "MultiInputPolicy", {}),
        "dict_obs_multibinary": (DictMultiBinaryEnv, "MultiInputPolicy", {}),
        "image": (
            lambda: FakeImageEnv(screen_height=36, screen_width=36, n_channels=1),
            "CnnPolicy",
            dict(policy_kwargs=dict(features_extractor_kwargs=dict(features_dim=16))),
        ),
        "image_box": (
            lambda: FakeImageEnv(screen_height=36, screen_width=36, n_channels=1, discrete=False),
            "CnnPolicy",
            dict(policy_kwargs=dict(features_extractor_kwargs=dict(features_dim=16))),
        ),
        "gsde": (lambda: gym.make("Pendulum-v1"), "MlpPolicy", dict(use_sde=True, sde_sample_freq=4)),
    }


def _batch(model: R2VPO):
    """The replay batch the next update would train on (the buffer holds the last rollout, not flattened)."""
    return build_replay_batch(
        model.policy,
        model.rollout_buffer,
        model.replay,
        model._rollout_index,
        model.gamma,
        model.gae_lambda,
        model.replay_advantage,
        model.action_space,
        model._replay_vec_normalize(),
    )[0]


def _rows(batch, age: int, key: str):
    mask = batch.ages == age
    value = getattr(batch, key)
    return {k: v[mask] for k, v in value.items()} if isinstance(value, dict) else value[mask]


@pytest.mark.parametrize("case", list(_space_cases()))
def test_every_space_trains_with_replay_and_keeps_behaviour_log_probs(case):
    make_env, policy, extra = _space_cases()[case]
    model = R2VPO(policy, make_vec_env(make_env, n_envs=2, seed=0), seed=0, replay_rollouts=2, **SMALL, **extra)
    snapshots = PolicySnapshots()
    model.learn(64 * 2 * 4, callback=snapshots)  # 4 updates, the last 3 with stale rollouts
    assert model.logger.name_to_value["train/replay_fraction"] == pytest.approx(2 / 3)
    assert model.logger.name_to_value["train/gradient_steps"] > 0

    batch = _batch(model)
    assert batch.ages.dtype == th.long and set(batch.ages.tolist()) == {0, 1, 2}  # whole rollouts of age
    behaviour = type(model.policy)(**model.policy._get_constructor_parameters())
    behaviour.set_training_mode(False)
    for rollout in model.replay.rollouts:
        age = model._rollout_index - rollout.index
        observations, actions = _rows(batch, age, "observations"), _rows(batch, age, "actions")
        assert actions.dtype == th.float32  # cast on the way out, as SB3's buffer does
        if isinstance(model.action_space, spaces.Discrete):
            actions = actions.long().flatten()
        behaviour.load_state_dict(snapshots.snapshots[rollout.index])
        with th.no_grad():
            _, at_collection, _ = behaviour.evaluate_actions(observations, actions)
            _, now, _ = model.policy.evaluate_actions(observations, actions)
        th.testing.assert_close(_rows(batch, age, "old_log_prob"), at_collection.flatten(), rtol=1e-5, atol=1e-5)
        assert not th.allclose(at_collection, now, atol=1e-5), "the policy moved since; the check is not vacuous"


class CriticSnapshots(PolicySnapshots):
    """The rollouts' raw buffers too (rewards with SB3's bootstrap of their time), by rollout index."""

    def __init__(self):
        super().__init__()
        self.buffers = {}

    def _on_rollout_end(self) -> None:
        super()._on_rollout_end()
        self.buffers[self.model._rollout_index] = copy.deepcopy(self.model.rollout_buffer)


def _reference_returns(model, observations, actions_rewards, starts, last_obs, last_dones, truncations, terminal_obs):
    """λ-returns of one stored rollout, ``(n_steps, n_envs)``, under the current critic, computed here."""
    n_steps, n_envs = starts.shape
    with th.no_grad():
        values = model.policy.predict_values(th.as_tensor(observations.reshape(n_steps * n_envs, -1))).numpy()
        values = values.reshape(n_steps, n_envs)
        last_values = model.policy.predict_values(th.as_tensor(last_obs)).numpy().flatten()
        rewards = actions_rewards.copy()
        for (t, env), obs in zip(truncations, terminal_obs, strict=True):
            terminal_value = model.policy.predict_values(th.as_tensor(obs[None])).item()
            rewards[t, env] += model.gamma * terminal_value
    advantages = _reference_gae(rewards, values, starts, last_values, last_dones, model.gamma, model.gae_lambda)
    return advantages + values


def test_stale_time_limit_bootstraps_use_the_current_critic():
    horizon, n_envs = 5, 2
    model = R2VPO(
        "MlpPolicy",
        make_vec_env(lambda: TruncatingEnv(horizon), n_envs=n_envs, seed=0),
        seed=0,
        replay_rollouts=2,
        n_steps=8,
        batch_size=8,
        n_epochs=4,
        learning_rate=3e-3,
    )
    snapshots = CriticSnapshots()
    model.learn(8 * n_envs * 5, callback=snapshots)
    batch = _batch(model)
    assert batch.ages.dtype == th.long and set(batch.ages.tolist()) == {0, 1, 2}  # whole rollouts of age
    behaviour = type(model.policy)(**model.policy._get_constructor_parameters())
    for rollout in model.replay.rollouts:
        age = model._rollout_index - rollout.index
        n_steps = rollout.shape[0]
        observations = rollout.observations.numpy()
        actions = rollout.actions.numpy().reshape(n_steps, n_envs)
        starts = rollout.episode_starts.numpy()
        # The env's structure, independently of the replay: t / horizon, reward 1 + action, a truncation where the
        # next observation is a reset one, its terminal observation [1.0].
        next_obs = np.concatenate([observations[1:, :, 0], rollout.last_obs.numpy()[None, :, 0]])
        ends = np.argwhere(next_obs == 0.0)
        assert len(ends) > 0
        truncations = [tuple(end) for end in ends]
        terminal_obs = [np.ones(1, dtype=np.float32)] * len(truncations)
        expected = _reference_returns(
            model,
            observations,
            1.0 + actions.astype(np.float32),
            starts,
            rollout.last_obs.numpy(),
            rollout.last_dones.numpy(),
            truncations,
            terminal_obs,
        )
        returns = _rows(batch, age, "returns").numpy().reshape(n_envs, n_steps).T  # env-major rows
        np.testing.assert_allclose(returns, expected, rtol=1e-5, atol=1e-5)

        # Not vacuous: the critic that collected the rollout valued the terminal observation differently, and
        # that value is what the buffer's rewards carried.
        behaviour.load_state_dict(snapshots.snapshots[rollout.index])
        with th.no_grad():
            then = behaviour.predict_values(th.ones(1, 1)).item()
            now = model.policy.predict_values(th.ones(1, 1)).item()
        assert abs(now - then) > 1e-2
        buffered = snapshots.buffers[rollout.index].rewards
        t, env = truncations[0]
        assert buffered[t, env] == pytest.approx(1.0 + actions[t, env] + model.gamma * then, abs=1e-4)


def test_vec_normalize_stale_rollouts_are_normalised_with_current_statistics():
    wrappers = []

    def make_env():
        wrappers.append(RecordingWrapper(gym.make("Pendulum-v1")))
        return wrappers[-1]

    env = VecNormalize(make_vec_env(make_env, n_envs=1, seed=0), gamma=0.99)
    model = R2VPO("MlpPolicy", env, seed=0, replay_rollouts=2, n_steps=64, batch_size=32, n_epochs=2)
    snapshots = CriticSnapshots()
    model.learn(64 * 5, callback=snapshots)  # Pendulum truncates at step 200, inside rollout 3
    (recorded,) = wrappers
    batch = _batch(model)
    for rollout in model.replay.rollouts:
        age = model._rollout_index - rollout.index
        steps = range(rollout.index * 64, (rollout.index + 1) * 64)
        raw_obs = np.stack([recorded.acted_on[step] for step in steps])[:, None]  # (n_steps, 1, 3)
        expected_obs = env.normalize_obs(raw_obs)
        np.testing.assert_allclose(_rows(batch, age, "observations").numpy(), expected_obs[:, 0], rtol=1e-5, atol=1e-5)
        # Not vacuous: the statistics moved since the rollout was collected.
        seen = snapshots.buffers[rollout.index].observations
        assert np.abs(seen - expected_obs).mean() > 1e-2

        truncations = [(step - steps.start, 0) for step in recorded.truncated_at if step in steps]
        terminal_obs = [env.normalize_obs(recorded.truncated_at[steps.start + t]) for t, _ in truncations]
        raw_rewards = np.array([recorded.rewards[step] for step in steps], dtype=np.float32)[:, None]
        last_step = steps.stop
        last_raw = recorded.acted_on[last_step] if last_step < len(recorded.acted_on) else recorded._current
        last_obs = env.normalize_obs(last_raw[None])
        expected = _reference_returns(
            model,
            expected_obs,
            env.normalize_reward(raw_rewards),
            rollout.episode_starts.numpy(),
            last_obs,
            rollout.last_dones.numpy(),
            truncations,
            terminal_obs,
        )
        np.testing.assert_allclose(_rows(batch, age, "returns").numpy(), expected[:, 0], rtol=1e-4, atol=1e-4)
    assert any(rollout.terminal_index.numel() for rollout in model.replay.rollouts), "a truncation was replayed"


class KLTrace(R2VPO):
    """Every KL that target_kl was compared with, per update, and the KL to the samples' own behaviour policy."""

    def train(self) -> None:
        self.kls.append([])
        self.behaviour_kls.append([])
        super().train()

    def _approx_kl(self, ratio, log_prob, start_log_prob):
        kl = super()._approx_kl(ratio, log_prob, start_log_prob)
        self.kls[-1].append(float(kl))
        self.behaviour_kls[-1].append(float(th.mean((ratio - 1) - th.log(ratio))))
        return kl


def test_target_kl_with_replay_measures_this_update(recorder):
    target_kl = 2e-4
    # Without the default floor (λ held at λ* on 64-sample rollouts): the policy must move enough between rollouts.
    model = KLTrace(
        "MlpPolicy",
        "CartPole-v1",
        seed=0,
        replay_rollouts=2,
        target_kl=target_kl,
        learning_rate=1e-3,
        lagrange_multiplier_floor=None,
        **SMALL,
    )
    model.kls, model.behaviour_kls = [], []
    attach(model, recorder)
    model.learn(64 * 8)
    # Before the first gradient step of an update the policy has not moved: that KL is 0 (up to rounding) ...
    assert all(kls[0] < 1e-9 for kls in model.kls)
    # ... so every update takes a step (and fits the critic), however stale the replayed samples are.
    assert all(steps > 0 for steps in recorder.series("train/gradient_steps"))
    # Not vacuous: measured against each sample's own behaviour policy, some updates would have stopped at once.
    assert any(kls[0] > 1.5 * target_kl for kls in model.behaviour_kls)
    # The update stops once this update's KL passes 1.5 × target_kl.
    assert any(len(kls) < 2 * (64 * 3 // 32) for kls in model.kls[2:])


def test_load_replay_overrides_take_effect(tmp_path):
    env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    model = R2VPO("MlpPolicy", env, seed=0, replay_rollouts=2, save_replay=True, **SMALL).learn(64 * 3)
    model.save(tmp_path / "model")
    assert [rollout.index for rollout in model.replay.rollouts] == [1, 2]

    off = R2VPO.load(tmp_path / "model", env=env, replay_rollouts=0)
    assert off.replay_rollouts == 0 and off.replay is None
    off.learn(64 * 2, reset_num_timesteps=False)
    assert off.replay is None
    record = off.logger.name_to_value  # the last update's
    assert "train/replay_fraction" not in record and record["train/gradient_steps"] == 2 * 2  # 2 epochs of 2

    wider = R2VPO.load(tmp_path / "model", env=env, replay_rollouts=np.int64(4))
    assert wider.replay_rollouts == 4 and type(wider.replay_rollouts) is int
    assert wider.replay.capacity == 4 and [rollout.index for rollout in wider.replay.rollouts] == [1, 2]
    wider.learn(64 * 2, reset_num_timesteps=False)
    assert [rollout.index for rollout in wider.replay.rollouts] == [1, 2, 3, 4]
    assert wider.logger.name_to_value["train/replay_fraction"] == pytest.approx(3 / 4)  # 3 stored, 1 fresh

    narrower = R2VPO.load(tmp_path / "model", env=env, replay_rollouts=1)
    assert narrower.replay.capacity == 1 and [rollout.index for rollout in narrower.replay.rollouts] == [2]


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        (dict(variance_target=-0.5), ValueError, r"`variance_target` must be a finite number > 0, got -0.5"),
        (dict(n_epochs=0), ValueError, r"`n_epochs` must be >= 1, got 0"),
        (dict(replay_rollouts=-1), ValueError, r"`replay_rollouts` must be >= 0, got -1"),
        (dict(replay_advantage="retrace"), ValueError, r"`replay_advantage` must be one of"),
        # Checked with the saved arguments: the saved λ_max is 1e3.
        (dict(lagrange_multiplier_min=2e3), ValueError, r"must be smaller than `lagrange_multiplier_max`"),
        (dict(dual_variance_estimate="rollout"), ValueError, r"needs `dual_update_frequency`='epoch'"),
        (dict(replay_rollouts=10**9), ValueError, r"`replay_rollouts`=1000000000 needs about"),
        (dict(batch_size=True), TypeError, r"`batch_size` must be an int"),
        (dict(replay_rollout=2), TypeError, r"unexpected keyword argument 'replay_rollout'; did you mean 'replay_rollouts'"),
    ],
)
def test_load_refuses_what_construction_refuses(tmp_path, override, error, message):
    env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    R2VPO("MlpPolicy", env, seed=0, replay_rollouts=2, **SMALL).save(tmp_path / "model")
    with pytest.raises(error, match=message):
        R2VPO.load(tmp_path / "model", env=env, **override)


def _full_stored_rollout() -> StoredRollout:
    """A rollout with every optional field set (dict observations, truncations, masks), distinct values per field."""
    generator = th.Generator().manual_seed(0)

    def rand(*shape):
        return th.rand(*shape, generator=generator)

    return StoredRollout(
        index=7,
        observations={"a": rand(4, 2, 3), "b": rand(4, 2, 1)},
        actions=th.tensor([[1, 0], [2, 1], [0, 0], [1, 2]]),
        rewards=rand(4, 2),
        episode_starts=th.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]),
        behaviour_log_probs=rand(4, 2),
        last_obs={"a": rand(2, 3), "b": rand(2, 1)},
        last_dones=th.tensor([0.0, 1.0]),
        terminal_index=th.tensor([5]),
        terminal_obs={"a": rand(1, 3), "b": rand(1, 1)},
        original=True,
        action_masks=th.rand(4, 2, 3, generator=generator) > 0.5,
    )


def _leaves(value):
    return list(value.values()) if isinstance(value, dict) else [value]


def test_a_stored_rollout_moved_to_a_device_keeps_every_field():
    """Found by mutation testing: dropping `terminal_obs` (or any field) in `StoredRollout.to` passed every test."""
    rollout = _full_stored_rollout()
    moved = rollout.to(th.device("cpu"))
    for field in dataclasses.fields(StoredRollout):
        before, after = getattr(rollout, field.name), getattr(moved, field.name)
        assert type(after) is type(before), field.name
        if isinstance(before, (th.Tensor, dict)):
            for old, new in zip(_leaves(before), _leaves(after), strict=True):
                assert th.equal(old, new), field.name
            if isinstance(before, dict):
                assert before.keys() == after.keys(), field.name
        else:
            assert after == before, field.name
    # Every tensor really moves (the meta device keeps shapes and dtypes, not values).
    on_meta = rollout.to(th.device("meta"))
    for field in dataclasses.fields(StoredRollout):
        for old, new in zip(_leaves(getattr(rollout, field.name)), _leaves(getattr(on_meta, field.name)), strict=True):
            if isinstance(old, th.Tensor):
                assert new.device.type == "meta" and new.shape == old.shape and new.dtype == old.dtype, field.name
    # Absent optional fields stay absent.
    bare = dataclasses.replace(rollout, terminal_index=None, terminal_obs=None, action_masks=None)
    assert bare.to(th.device("meta")).terminal_obs is None and bare.to(th.device("meta")).action_masks is None


def test_snapshot_refuses_a_buffer_that_get_has_flattened():
    """Found by mutation testing: the guard's message was never checked."""
    model = R2VPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=8, n_epochs=1, replay_rollouts=1, seed=0)
    model.learn(16)
    next(model.rollout_buffer.get(8))  # the full buffer, flattened for minibatches as PPO's train() does
    assert model.rollout_buffer.generator_ready
    with pytest.raises(RuntimeError, match=r"snapshot\(\) needs the rollout buffer before get\(\) flattened it"):
        model.replay.snapshot(model.rollout_buffer, model._last_obs, model._last_episode_starts, index=1)


def test_fresh_and_stale_variances_need_two_samples_each():
    """Found by mutation testing: a group of one sample must log NaN, not the 0 that var() of one value gives."""
    model = R2VPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=8, replay_rollouts=1, seed=0)
    ratio = th.tensor([0.9, 1.0, 1.3, 2.0])
    fresh, stale = model._fresh_and_stale_variance(ratio, th.tensor([0, 0, 0, 1]))
    assert fresh == pytest.approx(float(np.var([0.9, 1.0, 1.3]))) and np.isnan(stale)
    fresh, stale = model._fresh_and_stale_variance(ratio, th.tensor([0, 2, 1, 1]))
    assert np.isnan(fresh) and stale == pytest.approx(float(np.var([1.0, 1.3, 2.0])))


def test_available_cpu_memory_is_memavailable(monkeypatch):
    """Found by mutation testing: reading /proc/meminfo wrongly fell back to free pages unnoticed."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        pytest.skip("no /proc/meminfo on this platform")
    # The fallback (free pages) can be close to MemAvailable on an idle machine: make it absurd, so that a wrong
    # path to /proc/meminfo (another mutmut survivor) cannot pass for the right one.
    monkeypatch.setattr(os, "sysconf", lambda name: 1)
    (line,) = [line for line in meminfo.read_text().splitlines() if line.startswith("MemAvailable:")]
    expected = int(line.split()[1]) * 1024
    assert available_memory_bytes(th.device("cpu")) == pytest.approx(expected, rel=0.1)


def test_available_cpu_memory_falls_back_to_free_pages(monkeypatch):
    """Without /proc/meminfo (macOS, a sandbox) the free physical pages are counted (a mutmut survivor)."""
    from sb3_r2vpo.r2vpo import replay

    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(replay, "open", no_proc, raising=False)
    expected = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    # Free pages move with the page cache between the two reads: the same quantity, not the same byte count.
    assert available_memory_bytes(th.device("cpu")) == pytest.approx(expected, rel=0.5)


class VarianceTrace(R2VPO):
    """Per update: each minibatch's log-probabilities (current, behaviour, start of update) and the variance used."""

    def train(self) -> None:
        self.traces.append([])
        super().train()

    def _minibatch(self, rollout_data, ages, start_log_prob):
        batch = super()._minibatch(rollout_data, ages, start_log_prob)
        self._last = (batch.log_prob.detach(), batch.old_log_prob, batch.start_log_prob, batch.ages)
        return batch

    def _policy_loss(self, ratio, advantages, variance_target, start_ratio=None):
        losses = super()._policy_loss(ratio, advantages, variance_target, start_ratio)
        self.traces[-1].append((*self._last, float(losses[2].detach())))
        return losses


@pytest.mark.parametrize("center", ["one", "start"])
def test_start_centre_with_replay_counts_only_this_updates_change(center):
    model = VarianceTrace(
        "MlpPolicy", "Pendulum-v1", seed=0, replay_rollouts=2, variance_center=center, learning_rate=3e-3, **SMALL
    )
    model.traces = []
    model.learn(64 * 5)
    stale_updates = [trace for trace in model.traces if any(bool((ages > 0).any()) for *_, ages, _ in trace)]
    assert len(stale_updates) >= 3
    for trace in stale_updates:
        for log_prob, old_log_prob, start_log_prob, _, variance in trace:
            # The centre, computed here from the log-probabilities: 1 under "one"; π_start / μ under "start".
            centre = th.exp(start_log_prob - old_log_prob) if center == "start" else 1.0
            expected = th.mean((th.exp(log_prob - old_log_prob) - centre) ** 2).item()
            assert variance == pytest.approx(expected, rel=1e-4, abs=1e-9)
    first_variances = [trace[0][-1] for trace in stale_updates]
    if center == "start":
        # Before this update's first gradient step nothing has changed, however stale the samples.
        assert max(first_variances) < 1e-9
    else:
        # Not vacuous: the χ² centre counts the replayed samples' drift from earlier updates at once.
        assert min(first_variances) > 1e-4


@pytest.mark.parametrize("dict_obs", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_replay_minibatches_are_the_rollout_buffers_sample_types(dict_obs, masked):
    """
    ReplayBatch.samples gives the class the matching rollout buffer gives (SB3's, Dict, sb3-contrib's maskable
    ones), with the rows asked for in every field, so that code written against the buffers' samples reads them.
    """
    from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBufferSamples, MaskableRolloutBufferSamples
    from stable_baselines3.common.type_aliases import DictRolloutBufferSamples, RolloutBufferSamples

    n = 6
    rows = th.arange(n, dtype=th.float32)
    observations = {"a": rows[:, None] * 10, "b": rows[:, None] * 100} if dict_obs else rows[:, None] * 10
    batch = ReplayBatch(
        observations=observations,
        actions=rows[:, None],
        old_values=rows + 0.1,
        old_log_prob=rows + 0.2,
        advantages=rows + 0.3,
        returns=rows + 0.4,
        ages=th.tensor([0, 0, 1, 1, 2, 2]),
        start_log_prob=rows + 0.5,
        action_masks=(rows[:, None] + th.zeros(n, 3)) if masked else None,
    )
    idx = th.tensor([4, 1])
    samples = batch.samples(idx)
    expected = {
        (False, False): RolloutBufferSamples,
        (True, False): DictRolloutBufferSamples,
        (False, True): MaskableRolloutBufferSamples,
        (True, True): MaskableDictRolloutBufferSamples,
    }[(dict_obs, masked)]
    assert type(samples) is expected
    picked = th.tensor([4.0, 1.0])
    if dict_obs:
        assert th.equal(samples.observations["a"].flatten(), picked * 10)
        assert th.equal(samples.observations["b"].flatten(), picked * 100)
    else:
        assert th.equal(samples.observations.flatten(), picked * 10)
    assert th.equal(samples.actions.flatten(), picked)
    for field, offset in (("old_values", 0.1), ("old_log_prob", 0.2), ("advantages", 0.3), ("returns", 0.4)):
        assert th.allclose(getattr(samples, field), picked + offset), field
    if masked:
        assert th.equal(samples.action_masks, picked[:, None] + th.zeros(2, 3))
