"""R2VPO behaves like an SB3 algorithm: every action space, save/load, determinism, logging, dual dynamics."""

import inspect
import math
import warnings
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
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

from sb3_r2vpo import R2VPO
from tests.conftest import attach

th.set_num_threads(1)

SMALL = dict(n_steps=64, batch_size=32, n_epochs=2)
# The pure dual ascent, for the tests that need λ to move: the default floor holds λ at λ* on rollouts of ≤ 64 samples.
FREE = dict(lagrange_multiplier_floor=None)


def _env_cases():
    return {
        "discrete": (lambda: IdentityEnv(4), "MlpPolicy", {}),
        "box": (lambda: IdentityEnvBox(eps=0.5), "MlpPolicy", {}),
        "multidiscrete": (lambda: IdentityEnvMultiDiscrete(3), "MlpPolicy", {}),
        "multibinary": (lambda: IdentityEnvMultiBinary(3), "MlpPolicy", {}),
        "dict_obs": (lambda: SimpleMultiObsEnv(random_start=False), "MultiInputPolicy", {}),
        "image": (
            lambda: FakeImageEnv(screen_height=36, screen_width=36, n_channels=1),
            "CnnPolicy",
            dict(policy_kwargs=dict(features_extractor_kwargs=dict(features_dim=16))),
        ),
        "gsde": (lambda: gym.make("Pendulum-v1"), "MlpPolicy", dict(use_sde=True, sde_sample_freq=4)),
    }


def _observations(model, n: int = 5):
    env = model.get_env()
    env.seed(123)
    observations, obs = [], env.reset()
    for _ in range(n):
        observations.append(obs)
        action, _ = model.predict(obs, deterministic=True)
        obs, _, _, _ = env.step(action)
    return observations


@pytest.mark.parametrize("case", list(_env_cases()))
@pytest.mark.parametrize("n_envs", [1, 2])
def test_learn_predict_save_load_continue(case, n_envs, tmp_path):
    make_env, policy, extra = _env_cases()[case]
    env = make_vec_env(make_env, n_envs=n_envs, seed=0)
    model = R2VPO(policy, env, seed=0, **SMALL, **FREE, **extra)
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    assert model.lagrange_multiplier != pytest.approx(model._default_initial_multiplier())

    observations = _observations(model)
    actions = [model.predict(obs, deterministic=True)[0] for obs in observations]
    for action in actions:
        assert model.action_space.contains(action[0] if n_envs == 1 else action[1])

    model.save(tmp_path / "model")
    loaded = R2VPO.load(tmp_path / "model", env=env)
    assert loaded.lagrange_multiplier == model.lagrange_multiplier
    assert type(loaded.lagrange_multiplier) is float
    for obs, action in zip(observations, actions, strict=False):
        np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], action)

    loaded.learn(total_timesteps=128, reset_num_timesteps=False)
    assert loaded.num_timesteps > model.num_timesteps


def test_saved_model_loads_with_weights_only_torch_load(tmp_path):
    """Every hyperparameter R2VPO saves is a plain Python value, so SB3's restricted unpickling accepts it."""
    model = R2VPO("MlpPolicy", "CartPole-v1", seed=0, variance_target=np.float64(0.03), **SMALL)
    model.learn(128)
    model.save(tmp_path / "model")
    loaded = R2VPO.load(tmp_path / "model")
    assert loaded.variance_target(1.0) == pytest.approx(0.03)
    assert type(loaded.lagrange_multiplier) is float
    for name in ("lagrange_multiplier_min", "lagrange_multiplier_max", "dual_step_size", "log_ratio_guard"):
        assert type(getattr(loaded, name)) is float


def test_resume_after_load_equals_uninterrupted_training(tmp_path):
    """Weights, optimizer state and λ continue exactly: save → load → continue equals continuing in memory."""

    def continue_training(model: R2VPO) -> R2VPO:
        # Same seeds and a fresh episode for both, so that only the saved state can differ.
        model.set_random_seed(11)
        model._last_obs = None
        return model.learn(64 * 3, reset_num_timesteps=False)

    straight = R2VPO("MlpPolicy", "CartPole-v1", seed=3, **SMALL).learn(64 * 3)
    straight.save(tmp_path / "mid")
    continue_training(straight)
    resumed = continue_training(R2VPO.load(tmp_path / "mid", env=make_vec_env("CartPole-v1", n_envs=1)))

    assert resumed.num_timesteps == straight.num_timesteps
    assert resumed.lagrange_multiplier == straight.lagrange_multiplier
    for name, tensor in straight.policy.state_dict().items():
        th.testing.assert_close(resumed.policy.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


class MultiplierTrace(BaseCallback):
    def __init__(self):
        super().__init__()
        self.multipliers: list[float] = []
        self.rewards: list[float] = []

    def _on_step(self) -> bool:
        self.rewards.append(float(np.sum(self.locals["rewards"])))
        return True

    def _on_rollout_end(self) -> None:
        self.multipliers.append(self.model.lagrange_multiplier)

    def _on_training_end(self) -> None:
        self.multipliers.append(self.model.lagrange_multiplier)


def test_same_seed_gives_identical_rewards_and_multiplier_trajectory():
    traces = []
    for _ in range(2):
        trace = MultiplierTrace()
        R2VPO("MlpPolicy", "CartPole-v1", seed=7, **SMALL, **FREE).learn(64 * 5, callback=trace)
        traces.append(trace)
    assert traces[0].rewards == traces[1].rewards
    assert traces[0].multipliers == traces[1].multipliers
    assert len(set(traces[0].multipliers)) > 2  # λ moved, so the comparison is not vacuous

    other = MultiplierTrace()
    R2VPO("MlpPolicy", "CartPole-v1", seed=8, **SMALL, **FREE).learn(64 * 5, callback=other)
    assert other.multipliers != traces[0].multipliers


class DualRecorder(R2VPO):
    """Records every dual step taken during real training."""

    def _step_dual(self, variance: float, variance_target: float) -> None:
        before = self.lagrange_multiplier
        super()._step_dual(variance, variance_target)
        self.dual_steps.append((before, variance, variance_target, self.lagrange_multiplier))


@pytest.mark.parametrize("mode", ["multiplicative", "linear"])
@pytest.mark.parametrize("frequency", ["minibatch", "epoch"])
def test_multiplier_rises_above_target_and_falls_below(mode, frequency):
    model = DualRecorder(
        "MlpPolicy",
        "CartPole-v1",
        seed=0,
        learning_rate=1e-2,
        variance_target=0.002,
        dual_update=mode,
        dual_update_frequency=frequency,
        dual_step_size=0.05 if mode == "multiplicative" else 20.0,
        lagrange_multiplier_min=1e-4,
        lagrange_multiplier_floor=None,  # the pure dual ascent: on the default floor λ cannot fall below λ*/2
        n_steps=64,
        batch_size=32,
        n_epochs=6,
    )
    model.dual_steps = []
    model.learn(64 * 6)
    steps = model.dual_steps
    expected = 6 * 6 * (2 if frequency == "minibatch" else 1)
    assert len(steps) == expected
    rises = [after > before for before, variance, target, after in steps if variance > target and before < 1e3]
    falls = [after < before for before, variance, target, after in steps if variance < target and before > 1e-4]
    assert rises and falls, "training should visit both sides of the target"
    assert all(rises) and all(falls)


def test_tight_target_holds_ratio_variance_near_it(recorder):
    """With δ = 0.002 the logged ratio variance stays near δ; without the brake it wanders orders of magnitude higher."""
    common = dict(n_steps=256, batch_size=64, n_epochs=10, learning_rate=3e-3, lagrange_multiplier_min=1e-4, seed=0)
    attach(R2VPO("MlpPolicy", "CartPole-v1", variance_target=0.002, **common), recorder).learn(256 * 7)
    tight = recorder.series("train/ratio_variance")[1:]
    assert len(tight) == 5  # one train record per update after the first rollout, minus the first
    assert 0.0005 < np.mean(tight) < 0.004, tight
    assert max(tight) < 0.01, tight

    loose_recorder = type(recorder)()
    attach(R2VPO("MlpPolicy", "CartPole-v1", variance_target=10.0, **common), loose_recorder).learn(256 * 7)
    loose = loose_recorder.series("train/ratio_variance")[1:]
    assert np.mean(loose) > 10 * np.mean(tight), (loose, tight)


def test_logged_keys():
    model = R2VPO("MlpPolicy", "Pendulum-v1", seed=0, **SMALL)
    model.learn(64 * 2)
    # The values recorded by the last train(), not yet dumped.
    record = model.logger.name_to_value
    for key in (
        "train/ratio_variance",
        "train/lagrange_multiplier",
        "train/lagrange_multiplier_min",
        "train/lagrange_multiplier_max",
        "train/variance_target",
        "train/approx_kl",
        "train/ratio_outside_clip",
        "train/logratio_guard_fraction",
        "train/nonfinite_skips",
        "train/policy_gradient_loss",
        "train/variance_penalty",
        "train/value_loss",
        "train/entropy_loss",
        "train/explained_variance",
        "train/loss",
        "train/std",
        "train/learning_rate",
        "train/n_updates",
    ):
        assert key in record, key
        assert math.isfinite(record[key]), key
    assert record["train/lagrange_multiplier"] == model.lagrange_multiplier
    assert record["train/lagrange_multiplier_min"] <= model.lagrange_multiplier <= record["train/lagrange_multiplier_max"]
    assert record["train/variance_target"] == pytest.approx(0.04)
    assert 0.0 <= record["train/ratio_outside_clip"] <= 1.0
    assert record["train/logratio_guard_fraction"] == 0.0
    assert record["train/nonfinite_skips"] == 0


def test_variance_target_schedule_and_centre_one(recorder):
    model = attach(
        R2VPO(
            "MlpPolicy",
            "CartPole-v1",
            seed=0,
            variance_target=lambda progress: 0.01 + 0.09 * progress,
            variance_center="one",
            **SMALL,
        ),
        recorder,
    )
    model.learn(64 * 4)
    targets = recorder.series("train/variance_target")
    assert targets == sorted(targets, reverse=True) and targets[0] > targets[-1]
    # Initial λ = 1 / (2 sqrt(δ at progress 1)).
    assert model._default_initial_multiplier() == pytest.approx(1 / (2 * math.sqrt(0.1)))


def test_value_clipping_and_target_kl():
    model = R2VPO("MlpPolicy", "CartPole-v1", seed=0, clip_range_vf=0.2, target_kl=1e-6, **SMALL)
    model.learn(64 * 2)
    record = model.logger.name_to_value
    assert record["train/clip_range_vf"] == pytest.approx(0.2)
    # The first minibatch of each update has r = 1 exactly; later ones exceed a 1e-6 KL and stop the epochs
    # early: 2 updates x n_epochs = 4 epochs would run without target_kl.
    assert record["train/n_updates"] < 4
    unlimited = R2VPO("MlpPolicy", "CartPole-v1", seed=0, clip_range_vf=0.2, **SMALL).learn(64 * 2)
    assert unlimited.logger.name_to_value["train/n_updates"] == 4


def test_default_learn_budget_is_documented():
    assert R2VPO.default_total_timesteps == 100_000
    assert "100,000" in R2VPO.learn.__doc__


class TaggedBuffer(RolloutBuffer):
    def __init__(self, *args, tag: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.tag = tag


# For every constructor argument: an override for R2VPO.load() and how the loaded model shows it took effect.
LOAD_OVERRIDES = {
    "learning_rate": (dict(learning_rate=1e-3), lambda m: m.lr_schedule(1.0) == 1e-3),
    "n_steps": (dict(n_steps=32), lambda m: m.n_steps == 32 and m.rollout_buffer.buffer_size == 32),
    "batch_size": (dict(batch_size=16), lambda m: m.batch_size == 16),
    "n_epochs": (dict(n_epochs=3), lambda m: m.n_epochs == 3),
    "gamma": (dict(gamma=0.9), lambda m: m.gamma == 0.9 and m.rollout_buffer.gamma == 0.9),
    "gae_lambda": (dict(gae_lambda=0.8), lambda m: m.rollout_buffer.gae_lambda == 0.8),
    "variance_target": (dict(variance_target=0.02), lambda m: m.variance_target(1.0) == 0.02),
    "initial_lagrange_multiplier": (dict(initial_lagrange_multiplier=0.7), lambda m: m.lagrange_multiplier == 0.7),
    "lagrange_multiplier_min": (dict(lagrange_multiplier_min=0.01), lambda m: m.lagrange_multiplier_min == 0.01),
    "lagrange_multiplier_max": (dict(lagrange_multiplier_max=100), lambda m: m.lagrange_multiplier_max == 100.0),
    "lagrange_multiplier_floor": (dict(lagrange_multiplier_floor=0.5), lambda m: m.lagrange_multiplier_floor == 0.5),
    "dual_update": (dict(dual_update="linear"), lambda m: m.dual_update == "linear"),
    "dual_step_size": (dict(dual_step_size=0.1), lambda m: m.dual_step_size == 0.1),
    "dual_step_clip": (dict(dual_step_clip=[1, 10]), lambda m: m.dual_step_clip == (1.0, 10.0)),
    "dual_update_frequency": (dict(dual_update_frequency="epoch"), lambda m: m.dual_update_frequency == "epoch"),
    "dual_variance_estimate": (
        dict(dual_update_frequency="epoch", dual_variance_estimate="rollout"),
        lambda m: m.dual_variance_estimate == "rollout",
    ),
    "variance_center": (dict(variance_center="one"), lambda m: m.variance_center == "one"),
    "log_ratio_guard": (dict(log_ratio_guard=10), lambda m: m.log_ratio_guard == 10.0),
    "replay_rollouts": (dict(replay_rollouts=3), lambda m: m.replay.capacity == 3),
    "replay_advantage": (dict(replay_advantage="vtrace"), lambda m: m.replay_advantage == "vtrace"),
    "save_replay": (dict(save_replay=True), lambda m: m.save_replay is True),
    "clip_range_vf": (dict(clip_range_vf=0.1), lambda m: m.clip_range_vf(1.0) == 0.1),
    "normalize_advantage": (dict(normalize_advantage=False), lambda m: m.normalize_advantage is False),
    "ent_coef": (dict(ent_coef=0.01), lambda m: m.ent_coef == 0.01),
    "vf_coef": (dict(vf_coef=0.25), lambda m: m.vf_coef == 0.25),
    "max_grad_norm": (dict(max_grad_norm=1.0), lambda m: m.max_grad_norm == 1.0),
    "use_sde": (dict(use_sde=False), lambda m: m.use_sde is False),  # the saved value; another one is refused
    "sde_sample_freq": (dict(sde_sample_freq=8), lambda m: m.sde_sample_freq == 8),
    "rollout_buffer_class": (dict(rollout_buffer_class=TaggedBuffer), lambda m: type(m.rollout_buffer) is TaggedBuffer),
    "rollout_buffer_kwargs": (
        dict(rollout_buffer_class=TaggedBuffer, rollout_buffer_kwargs=dict(tag="x")),
        lambda m: m.rollout_buffer.tag == "x",
    ),
    "target_kl": (dict(target_kl=0.05), lambda m: m.target_kl == 0.05),
    "variance_stop": (dict(variance_stop=2), lambda m: m.variance_stop == 2.0),
    "max_nonfinite_steps": (dict(max_nonfinite_steps=3), lambda m: m.max_nonfinite_steps == 3),
    "stats_window_size": (dict(stats_window_size=7), lambda m: m._stats_window_size == 7),
    "tensorboard_log": (dict(tensorboard_log="tb"), lambda m: m.tensorboard_log == "tb"),
    "policy_kwargs": (dict(policy_kwargs=dict(net_arch=[16])), lambda m: m.policy_kwargs == dict(net_arch=[16])),
    "verbose": (dict(verbose=2), lambda m: m.verbose == 2),
    "seed": (dict(seed=5), lambda m: m.seed == 5),
    "policy": (dict(policy="MlpPolicy"), lambda m: m.policy_class.__name__ == "ActorCriticPolicy"),
}


@pytest.mark.parametrize("name", sorted(LOAD_OVERRIDES))
def test_every_load_override_takes_effect(name, tmp_path):
    # load()'s own arguments (env, device) and _init_setup_model aside, the table covers the constructor.
    constructor = set(inspect.signature(R2VPO.__init__).parameters) - {"self", "env", "device", "_init_setup_model"}
    assert set(LOAD_OVERRIDES) == constructor
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    model = R2VPO("MlpPolicy", env, seed=0, policy_kwargs=dict(net_arch=[16]), **SMALL).learn(64 * 2)
    model.save(tmp_path / "model")
    kwargs, took_effect = LOAD_OVERRIDES[name]
    loaded = R2VPO.load(tmp_path / "model", env=env, **kwargs)
    assert took_effect(loaded)
    if name != "initial_lagrange_multiplier":
        assert loaded.lagrange_multiplier == model.lagrange_multiplier  # λ is learned state, restored from the file
    if name != "tensorboard_log":  # (tensorboard is an optional dependency)
        loaded.learn(64, reset_num_timesteps=False)
        assert loaded.ep_info_buffer.maxlen == kwargs.get("stats_window_size", 100)


def test_load_with_a_new_stats_window_keeps_the_newest_saved_episodes(tmp_path):
    """A mutmut survivor: the episode statistics were dropped when stats_window_size was overridden on load."""
    model = R2VPO("MlpPolicy", "CartPole-v1", seed=0, **SMALL).learn(64 * 4)
    saved = list(model.ep_info_buffer)
    assert len(saved) > 3
    model.save(tmp_path / "model")
    loaded = R2VPO.load(tmp_path / "model", stats_window_size=3)
    assert loaded.ep_info_buffer.maxlen == 3
    assert list(loaded.ep_info_buffer) == saved[-3:]


def test_load_refuses_overrides_the_saved_weights_cannot_take(tmp_path):
    model = R2VPO("MlpPolicy", "CartPole-v1", seed=0, initial_lagrange_multiplier=0.5, **SMALL).learn(64 * 2)
    model.save(tmp_path / "model")
    with pytest.raises(ValueError, match=r"`use_sde` cannot be changed by R2VPO.load\(\)"):
        R2VPO.load(tmp_path / "model", use_sde=True)
    with pytest.raises(ValueError, match=r"policy kwargs do not equal the stored policy kwargs"):
        R2VPO.load(tmp_path / "model", policy_kwargs=dict(net_arch=[8]))
    with pytest.raises(ValueError, match=r"`policy` cannot be changed by R2VPO.load\(\)"):
        R2VPO.load(tmp_path / "model", policy="CnnPolicy")
    with pytest.raises(TypeError, match=r"R2VPO.load\(\) got the argument `clip_range`"):
        R2VPO.load(tmp_path / "model", clip_range=0.2)
    # The saved initial λ is no change: λ stays the learned one; lagrange_multiplier= sets it.
    assert R2VPO.load(tmp_path / "model", initial_lagrange_multiplier=0.5).lagrange_multiplier == model.lagrange_multiplier
    assert R2VPO.load(tmp_path / "model", lagrange_multiplier=2.5).lagrange_multiplier == 2.5


def _without_member(source, target, member: str) -> None:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        assert member in old.namelist()
        for item in old.namelist():
            if item != member:
                new.writestr(item, old.read(item))


def test_set_parameters_carries_the_multiplier(tmp_path):
    source = R2VPO("MlpPolicy", "CartPole-v1", seed=0, **SMALL, **FREE).learn(64 * 3)
    target = R2VPO("MlpPolicy", "CartPole-v1", seed=1, **SMALL)
    assert target.lagrange_multiplier != source.lagrange_multiplier
    assert set(source.get_parameters()) == {"policy", "policy.optimizer", "lagrange_multiplier"}

    target.set_parameters(source.get_parameters())
    assert target.lagrange_multiplier == source.lagrange_multiplier and type(target.lagrange_multiplier) is float
    for name, tensor in source.policy.state_dict().items():
        assert th.equal(target.policy.state_dict()[name], tensor), name

    linear = R2VPO("MlpPolicy", "CartPole-v1", dual_update="linear", lagrange_multiplier_min=0.0, **SMALL)
    linear.lagrange_multiplier = 0.0  # reachable with the linear update
    copied = R2VPO("MlpPolicy", "CartPole-v1", dual_update="linear", lagrange_multiplier_min=0.0, **SMALL)
    copied.set_parameters(linear.get_parameters())
    assert copied.lagrange_multiplier == 0.0

    source.save(tmp_path / "model.zip")
    from_file = R2VPO("MlpPolicy", "CartPole-v1", seed=2, **SMALL)
    from_file.set_parameters(tmp_path / "model.zip")
    assert from_file.lagrange_multiplier == source.lagrange_multiplier

    # Parameters of an older version (no λ): the weights are set, λ is left as it was, with a warning.
    older = source.get_parameters()
    del older["lagrange_multiplier"]
    fresh = R2VPO("MlpPolicy", "CartPole-v1", seed=3, **SMALL)
    before = fresh.lagrange_multiplier
    with pytest.warns(UserWarning, match=r"hold no 'lagrange_multiplier'.*λ was left at"):
        fresh.set_parameters(older)
    assert fresh.lagrange_multiplier == before
    fresh.set_parameters(older, exact_match=False)  # a partial update, as asked: no warning expected
    _without_member(tmp_path / "model.zip", tmp_path / "older.zip", "lagrange_multiplier.pth")
    with pytest.warns(UserWarning, match=r"hold no 'lagrange_multiplier'"):
        fresh.set_parameters(tmp_path / "older.zip")
    assert fresh.lagrange_multiplier == before
    # An older file still loads, λ from its saved attributes, without the warning.
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*lagrange_multiplier")
        loaded = R2VPO.load(tmp_path / "older.zip")
    assert loaded.lagrange_multiplier == source.lagrange_multiplier


@pytest.mark.parametrize("progress_bar", [False, True])
def test_learn_passes_progress_bar_to_sb3(monkeypatch, progress_bar):
    """learn(progress_bar=True) shows SB3's progress bar, as PPO's does (the demo relies on it); False shows none."""
    import stable_baselines3.common.base_class as base_class
    from stable_baselines3.common.callbacks import ProgressBarCallback

    made = []

    class RecordingProgressBar(ProgressBarCallback):
        def __init__(self):
            super().__init__()
            made.append(self)

    monkeypatch.setattr(base_class, "ProgressBarCallback", RecordingProgressBar)
    model = R2VPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, n_epochs=1, seed=0)
    model.learn(32, progress_bar=progress_bar)
    assert len(made) == int(progress_bar)
    if progress_bar:
        assert made[0].num_timesteps == 32  # it followed the training
