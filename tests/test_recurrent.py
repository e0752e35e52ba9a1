"""
RecurrentR2VPO: R2VPO's loss on sb3-contrib's RecurrentPPO. It learns a partially observed task that R2VPO's MLP
policy cannot, padded steps of a sequence minibatch carry no weight (checked on a hand-made batch), sequences read in
chunks restart from their stored LSTM states, replay is refused, and save/load is exact, LSTM states included.
"""

import inspect

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.type_aliases import RecurrentRolloutBufferSamples, RNNStates
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import IdentityEnv, IdentityEnvBox, IdentityEnvMultiBinary, IdentityEnvMultiDiscrete
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

import sb3_r2vpo.r2vpo.mixin as mixin
from sb3_r2vpo import R2VPO, RecurrentR2VPO
from sb3_r2vpo.presets import get_preset
from sb3_r2vpo.r2vpo.mixin import R2VPO_ARGUMENTS
from sb3_r2vpo.r2vpo.r2vpo import R2VPO_DEFAULTS
from sb3_r2vpo.zoo import packaged_hyperparams
from tests.conftest import attach
from tests.extras import require

th.set_num_threads(1)

TINY_LSTM = dict(policy_kwargs=dict(lstm_hidden_size=8, net_arch=[8]), seed=0)


class NoVelocity(gym.ObservationWrapper):
    """CartPole with its two velocities set to 0, as rl_zoo3's CartPoleNoVel-v1 (MaskVelocityWrapper) does."""

    def observation(self, observation):
        observation = np.array(observation, copy=True)
        observation[[1, 3]] = 0.0
        return observation


def test_defaults_are_r2vpos_and_recurrent_ppos():
    """The R²VPO arguments default to R2VPO's values (read from its constructor), the others to RecurrentPPO's."""
    parameters = inspect.signature(RecurrentR2VPO.__init__).parameters
    for name in R2VPO_ARGUMENTS:
        assert parameters[name].default == R2VPO_DEFAULTS[name], name
    ppo = inspect.signature(RecurrentPPO.__init__).parameters
    for name, parameter in parameters.items():
        if name in ppo and name not in ("self", "policy", "env"):
            assert parameter.default == ppo[name].default, name
    assert parameters["n_steps"].default == 128 and "clip_range" not in parameters


def test_refuses_replay_and_clip_range(tmp_path):
    with pytest.raises(ValueError, match=r"RecurrentR2VPO takes no `replay_rollouts` > 0 \(got 2\): .*hidden state"):
        RecurrentR2VPO("MlpLstmPolicy", "CartPole-v1", replay_rollouts=2)
    with pytest.raises(TypeError, match=r"RecurrentR2VPO\(\) got the argument `clip_range`.*variance_target"):
        RecurrentR2VPO("MlpLstmPolicy", "CartPole-v1", clip_range=0.2)
    model = RecurrentR2VPO("MlpLstmPolicy", "CartPole-v1", n_steps=16, batch_size=16, **TINY_LSTM)
    model.save(tmp_path / "model")
    with pytest.raises(ValueError, match=r"RecurrentR2VPO takes no `replay_rollouts` > 0"):
        RecurrentR2VPO.load(tmp_path / "model", replay_rollouts=1)
    with pytest.raises(TypeError, match=r"RecurrentR2VPO.load\(\) got the argument `clip_range`"):
        RecurrentR2VPO.load(tmp_path / "model", clip_range=0.1)


def _novel_env(n_envs: int, seed: int, training: bool = True) -> VecNormalize:
    return VecNormalize(
        make_vec_env("CartPole-v1", n_envs=n_envs, seed=seed, wrapper_class=NoVelocity),
        gamma=0.98,
        training=training,
        norm_reward=training,
    )


def _evaluate(model, env: VecNormalize) -> float:
    evaluation = _novel_env(1, seed=1000, training=False)
    evaluation.obs_rms = env.obs_rms
    mean, _ = evaluate_policy(model, evaluation, n_eval_episodes=10, deterministic=True)
    return mean


def test_learns_cartpole_without_velocities_where_the_mlp_policy_cannot(recorder):
    """
    CartPole with the velocities hidden, the packaged r2vpo_lstm entry (rl_zoo3's ppo_lstm one, δ added) at its
    initial learning rate (its lin_0.001 schedule is meant for 100k steps), 12,288 steps: RecurrentR2VPO balances the
    pole for hundreds of steps; R2VPO with an MLP of the same size and the same hyperparameters cannot (a memoryless
    policy on position and angle alone stays near 40).
    """
    budget, seed = 48 * 256, 3
    preset = get_preset("CartPoleNoVel-v1", path=packaged_hyperparams("r2vpo_lstm"))
    preset.model_kwargs["learning_rate"] = preset.model_kwargs["learning_rate"](1.0)
    env = _novel_env(preset.n_envs, seed)
    model = preset.make_model(seed=seed, env=env, algorithm=RecurrentR2VPO)
    attach(model, recorder)
    model.learn(budget)
    lstm_return = _evaluate(model, env)
    assert recorder.series("train/lagrange_multiplier") and recorder.series("train/ratio_variance_final")

    mlp_kwargs = dict(preset.model_kwargs)
    mlp_kwargs["policy_kwargs"] = {k: v for k, v in mlp_kwargs["policy_kwargs"].items() if "lstm" not in k}
    env = _novel_env(preset.n_envs, seed)
    mlp = R2VPO("MlpPolicy", env, seed=seed, **mlp_kwargs)
    mlp.learn(budget)
    mlp_return = _evaluate(mlp, env)
    assert lstm_return >= 150 and mlp_return < 100 and lstm_return > 2 * mlp_return, (lstm_return, mlp_return)


class _OneBatch(RecurrentR2VPO):
    """Trains one epoch on a given minibatch and records the ratios the policy loss is given."""

    def _minibatches(self, replay_batch):
        return iter([(self.batch, None, None)])

    def _rollout_ratio_variance(self, replay_batch):
        return 0.0

    def _policy_loss(self, ratio, advantages, variance_target, start_ratio=None):
        self.seen = (ratio.detach().clone(), advantages.detach().clone())
        return super()._policy_loss(ratio, advantages, variance_target, start_ratio)


def _padded_batch(model: RecurrentR2VPO, padding: float) -> tuple[RecurrentRolloutBufferSamples, list[th.Tensor]]:
    """
    Two sequences, of 3 steps (starting an episode) and 1 step (carrying a hidden state), padded to 2 × 3 steps as
    contrib's buffer lays them out: ``[a0, a1, a2, b0, pad, pad]``. Every field of the padded steps holds ``padding``.
    """
    generator = th.Generator().manual_seed(0)
    hidden = model.policy.lstm_actor.hidden_size
    states = [th.randn(1, 2, hidden, generator=generator) for _ in range(4)]
    lstm_states = RNNStates((states[0], states[1]), (states[2], states[3]))
    observations = th.randn(6, 4, generator=generator)
    actions = th.tensor([[0.0], [1.0], [1.0], [0.0], [1.0], [0.0]])
    episode_starts = th.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    real = th.tensor([True, True, True, True, False, False])
    with th.no_grad():
        _, log_prob, _ = model.policy.evaluate_actions(observations, actions.long().flatten(), lstm_states, episode_starts)
    old_log_prob = log_prob + th.tensor([0.3, -0.2, 0.1, -0.4, 0.0, 0.0])  # ratios exp(-0.3), exp(0.2), ...
    pad = lambda tensor: th.where(real, tensor, th.full_like(tensor, padding))  # noqa: E731
    samples = RecurrentRolloutBufferSamples(
        observations=th.where(real[:, None], observations, th.full_like(observations, padding)),
        actions=actions,
        old_values=pad(th.zeros(6)),
        old_log_prob=pad(old_log_prob),
        advantages=pad(th.tensor([1.0, -2.0, 0.5, 3.0, 0.0, 0.0])),
        returns=pad(th.tensor([1.0, 0.0, 2.0, -1.0, 0.0, 0.0])),
        lstm_states=lstm_states,
        episode_starts=episode_starts,
        mask=real.float(),
    )
    # Each sequence alone, unpadded: the reference the padded minibatch must reproduce.
    with th.no_grad():
        _, first, _ = model.policy.evaluate_actions(
            observations[:3],
            actions[:3].long().flatten(),
            RNNStates((states[0][:, :1], states[1][:, :1]), (states[2][:, :1], states[3][:, :1])),
            episode_starts[:3],
        )
        _, second, _ = model.policy.evaluate_actions(
            observations[3:4],
            actions[3:4].long().flatten(),
            RNNStates((states[0][:, 1:], states[1][:, 1:]), (states[2][:, 1:], states[3][:, 1:])),
            episode_starts[3:4],
        )
    return samples, [th.cat([first, second]), old_log_prob[:4]]


def test_padded_steps_carry_no_weight(recorder):
    """
    A hand-made sequence minibatch with padding: the loss sees the 4 real steps only (their log-probabilities as each
    sequence alone gives them), V̂ is the variance of their 4 ratios, the advantages are normalised over them, and the
    dual step, the gradient step and every logged value are the same whatever the padded steps hold.
    """
    results = []
    for padding in (0.0, 1e3):
        model = _OneBatch("MlpLstmPolicy", "CartPole-v1", n_steps=8, batch_size=8, n_epochs=1, **TINY_LSTM)
        model.batch, (log_prob, old_log_prob) = _padded_batch(model, padding)
        model._current_progress_remaining = 1.0
        attach(model, recorder)
        with th.no_grad():
            batch = model._minibatch(model.batch, None, None)
        th.testing.assert_close(batch.log_prob, log_prob, rtol=0, atol=1e-6)
        before = model.lagrange_multiplier
        model.train()
        ratio, advantages = model.seen
        expected_ratio = th.exp(log_prob - old_log_prob)
        th.testing.assert_close(ratio, expected_ratio, rtol=1e-5, atol=1e-6)
        real_advantages = th.tensor([1.0, -2.0, 0.5, 3.0])
        th.testing.assert_close(advantages, (real_advantages - real_advantages.mean()) / (real_advantages.std() + 1e-8))
        centre = expected_ratio.mean() if model.variance_center == "mean" else 1.0
        variance = float(((expected_ratio - centre) ** 2).mean())
        logged = model.logger.name_to_value
        assert logged["train/ratio_variance"] == pytest.approx(variance, rel=1e-5)
        step = np.clip(variance / model.variance_target(1.0) - 1.0, -1.0, 1.0)
        assert model.lagrange_multiplier == pytest.approx(before * np.exp(model.dual_step_size * step), rel=1e-6)
        weights = th.cat([parameter.detach().flatten() for parameter in model.policy.parameters()])
        results.append((model.lagrange_multiplier, dict(logged), weights))
    (lam_a, logs_a, weights_a), (lam_b, logs_b, weights_b) = results
    assert lam_a == lam_b
    th.testing.assert_close(weights_a, weights_b, rtol=0, atol=0)
    for key in ("train/ratio_variance", "train/value_loss", "train/entropy_loss", "train/approx_kl", "train/loss"):
        assert logs_a[key] == logs_b[key], key


def test_rollout_read_in_chunks_restarts_each_sequence_from_its_stored_state(monkeypatch):
    """
    Before the update (policy = behaviour policy), the whole rollout read in chunks that cut episodes and cross from
    one env to the next gives back μ's log-probabilities exactly: every sequence restarts from its stored LSTM state.
    The full-rollout ratio variance (of `dual_update_frequency="rollout"`) is then 0.
    """
    monkeypatch.setattr(mixin, "ROLLOUT_VARIANCE_CHUNK", 20)
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = RecurrentR2VPO("MlpLstmPolicy", env, n_steps=64, batch_size=16, dual_update_frequency="rollout", **TINY_LSTM)
    model.learn(128)  # one update, so that the weights are not the initial ones
    model.collect_rollouts(model.env, _NoCallback(), model.rollout_buffer, model.n_steps)
    next(model.rollout_buffer.get(16))  # flattened, as train() leaves it
    log_ratios = []
    with th.no_grad():
        for samples in model._rollout_chunks(None):
            _, log_prob, _ = model._evaluate_actions(samples, model._policy_actions(samples.actions))
            valid = model._valid_samples(samples)
            log_ratios.append((log_prob - samples.old_log_prob)[valid])
    log_ratios = th.cat(log_ratios)
    assert len(log_ratios) == 128 and float(log_ratios.abs().max()) < 1e-5
    assert model._rollout_ratio_variance(None) < 1e-10
    model.learn(128, reset_num_timesteps=False)  # and the per-rollout dual step trains
    assert np.isfinite(model.lagrange_multiplier)


class _NoCallback:
    """What collect_rollouts needs of a callback, doing nothing."""

    def on_rollout_start(self):
        pass

    def update_locals(self, locals_):
        pass

    def on_step(self):
        return True

    def on_rollout_end(self):
        pass


class FloatObservation(gym.ObservationWrapper):
    """
    The identity envs' MultiDiscrete / MultiBinary observations as float one-hot vectors: sb3-contrib 2.9's LSTM policy
    fails on those observation spaces themselves (its features size is a numpy int, which torch 2.13's nn.LSTM refuses;
    int8 MultiBinary observations meet a float cast error), and RecurrentPPO fails the same way. Actions are unchanged.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        size = int(gym.spaces.flatdim(env.observation_space))
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(size,), dtype=np.float32)

    def observation(self, observation):
        return gym.spaces.flatten(self.env.observation_space, observation).astype(np.float32)


SPACES = {
    "discrete": lambda: IdentityEnv(4),
    "box": lambda: IdentityEnvBox(eps=0.5),
    "multidiscrete": lambda: FloatObservation(IdentityEnvMultiDiscrete(3)),
    "multibinary": lambda: FloatObservation(IdentityEnvMultiBinary(3)),
}


def _trajectory(model, env, steps: int = 6) -> list[tuple[np.ndarray, np.ndarray]]:
    """Observations and episode starts of ``env`` (2 envs) along ``steps`` steps of ``model``'s deterministic policy."""
    obs, state, starts = env.reset(), None, np.ones(env.num_envs, dtype=bool)
    trajectory = []
    for _ in range(steps):
        trajectory.append((obs, starts))
        action, state = model.predict(obs, state=state, episode_start=starts, deterministic=True)
        obs, _, starts, _ = env.step(action)
    return trajectory


def _play(model, trajectory) -> tuple[list[np.ndarray], list[tuple[np.ndarray, ...]]]:
    """Deterministic actions and LSTM states along a fixed trajectory, from a fresh state."""
    state, actions, states = None, [], []
    for obs, starts in trajectory:
        action, state = model.predict(obs, state=state, episode_start=starts, deterministic=True)
        actions.append(action)
        states.append(tuple(np.array(s, copy=True) for s in state))
    return actions, states


@pytest.mark.parametrize("space", list(SPACES))
def test_save_load_gives_the_same_actions_lstm_states_and_multiplier(space, tmp_path):
    env = make_vec_env(SPACES[space], n_envs=2, seed=0)
    # Without the default floor, which holds λ at λ* on rollouts this small: λ must move for the check to mean anything.
    model = RecurrentR2VPO(
        "MlpLstmPolicy", env, n_steps=32, batch_size=32, n_epochs=2, lagrange_multiplier_floor=None, **TINY_LSTM
    )
    model.learn(128)
    assert model.lagrange_multiplier != pytest.approx(model._default_initial_multiplier())
    trajectory = _trajectory(model, env)
    actions, states = _play(model, trajectory)
    model.save(tmp_path / "model")
    loaded = RecurrentR2VPO.load(tmp_path / "model", env=env)
    assert loaded.lagrange_multiplier == model.lagrange_multiplier and type(loaded.lagrange_multiplier) is float
    assert not hasattr(loaded, "clip_range")
    loaded_actions, loaded_states = _play(loaded, trajectory)
    for expected, got in zip(actions, loaded_actions, strict=True):
        np.testing.assert_array_equal(got, expected)
    for expected, got in zip(states, loaded_states, strict=True):
        for a, b in zip(expected, got, strict=True):
            np.testing.assert_array_equal(b, a)
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded.num_timesteps > model.num_timesteps


def test_zoo_trains_r2vpo_lstm_from_its_packaged_entry(tmp_path):
    """`r2vpo-zoo train --algo r2vpo_lstm --env CartPoleNoVel-v1` with the packaged entry; -optimize is refused."""
    require("rl_zoo3", "zoo")
    from sb3_r2vpo.zoo import check_entry, main

    for env_id in ("CartPoleNoVel-v1", "PendulumNoVel-v1"):
        check_entry(packaged_hyperparams("r2vpo_lstm"), env_id, "r2vpo_lstm")
    common = ["--algo", "r2vpo_lstm", "--env", "CartPoleNoVel-v1", "-f", str(tmp_path), "--seed", "0"]
    main(["train", *common, "-n", "256", "--eval-freq", "-1"])
    (saved,) = (tmp_path / "r2vpo_lstm").glob("*_1/*.zip")
    model = RecurrentR2VPO.load(saved)
    assert (model.n_envs, model.n_steps, model.batch_size, model.n_epochs) == (8, 32, 256, 20)
    assert model.variance_target(1.0) == pytest.approx(0.01) and model.num_timesteps == 256
    with pytest.raises(SystemExit, match=r"-optimize has no search space for 'r2vpo_lstm'"):
        main(["train", *common, "-optimize"])
