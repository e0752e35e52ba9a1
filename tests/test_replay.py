"""Replay of stale rollouts: on-policy path untouched, behaviour log-probs kept, GAE/V-trace, save/load."""

import copy

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import IdentityEnv, SimpleMultiObsEnv

from sb3_r2vpo import R2VPO
from sb3_r2vpo.r2vpo.replay import compute_gae, compute_vtrace, rollout_nbytes

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
