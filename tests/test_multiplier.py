"""The multiplier's control loop: dual timing, the λ floor, the asymmetric step, the variance stop, the estimator,
δ schedules from YAML, and the non-finite guard across updates."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env

from sb3_r2vpo import R2VPO, NonFiniteTrainingError
from sb3_r2vpo.presets import get_preset, parse_schedule
from sb3_r2vpo.r2vpo.objective import (
    MIN_VARIANCE_TARGET,
    clip_violation,
    dual_update,
    multiplier_lower_bound,
    rollout_floor_fraction,
    stationary_multiplier,
)
from tests.conftest import attach

th.set_num_threads(1)

# One update = 4 epochs x 4 minibatches of 32 on CartPole.
SMALL = dict(n_steps=128, batch_size=32, n_epochs=4)
# The dual ascent without the floor that is R2VPO's default since issue 13: the timing tests below need λ free to
# move (on the floor λ*/2 it may sit still for a whole update); the floor has its own tests.
FREE = dict(lagrange_multiplier_floor=None)


class Probe(R2VPO):
    """Records, per update, every λ the policy loss saw, every dual step, and λ before and after the update."""

    def _setup_model(self) -> None:
        super()._setup_model()
        self.losses: list[tuple[int, float, float]] = []  # (update, λ, δ) at every policy loss
        self.dual_steps: list[tuple[int, float, float, float]] = []  # (update, λ before, V, λ after)
        self.updates: list[dict] = []
        self.measure_at_dual_step = False
        self.measured: list[float] = []

    def _policy_loss(self, ratio, advantages, variance_target, start_ratio=None):
        self.losses.append((len(self.updates), self.lagrange_multiplier, variance_target))
        return super()._policy_loss(ratio, advantages, variance_target, start_ratio)

    def _step_dual(self, variance, variance_target):
        before = self.lagrange_multiplier
        if self.measure_at_dual_step:
            self.measured.append(rollout_variance(self))
        super()._step_dual(variance, variance_target)
        self.dual_steps.append((len(self.updates), before, variance, self.lagrange_multiplier))

    def train(self):
        before = self.lagrange_multiplier
        super().train()
        self.updates.append(dict(before=before, after=self.lagrange_multiplier, final_variance=rollout_variance(self)))


def rollout_variance(model: R2VPO) -> float:
    """
    Ratio variance of the model's current policy over its whole rollout, computed here, about the model's centre
    (1 by default, the mean under ``variance_center="mean"``).
    """
    buffer = model.rollout_buffer

    def flat(array):
        array = np.asarray(array)
        return array if buffer.generator_ready else array.swapaxes(0, 1).reshape(-1, *array.shape[2:])

    observations = th.as_tensor(flat(buffer.observations))
    actions = th.as_tensor(flat(buffer.actions)).long().flatten()
    old_log_prob = th.as_tensor(flat(buffer.log_probs)).flatten()
    training = model.policy.training
    model.policy.set_training_mode(False)
    with th.no_grad():
        _, log_prob, _ = model.policy.evaluate_actions(observations, actions)
    model.policy.set_training_mode(training)
    ratio = th.exp(log_prob.double() - old_log_prob.double())
    centre = ratio.mean() if model.variance_center == "mean" else 1.0
    return float(th.mean((ratio - centre) ** 2))


def _by_update(records, index=1):
    groups: dict[int, list[float]] = {}
    for record in records:
        groups.setdefault(record[0], []).append(record[index])
    return groups


# ---------------------------------------------------------------------------------------------- pure functions


def test_stationary_multiplier_and_floor_values():
    assert stationary_multiplier(0.04) == pytest.approx(2.5)
    assert stationary_multiplier(0.01) == pytest.approx(5.0)
    assert multiplier_lower_bound(1e-3, 1e3, None, 0.04) == 1e-3
    assert multiplier_lower_bound(1e-3, 1e3, 0.5, 0.04) == pytest.approx(1.25)
    assert multiplier_lower_bound(2.0, 1e3, 0.5, 0.04) == 2.0  # the fixed bound wins when higher
    assert multiplier_lower_bound(1e-3, 3.0, 1.0, 0.01) == 3.0  # cut to the upper bound
    with pytest.raises(ValueError, match="variance target > 0"):
        stationary_multiplier(0.0)


def test_asymmetric_clip_on_hand_made_numbers():
    assert clip_violation(5.0, (1.0, 10.0)) == 5.0
    assert clip_violation(20.0, (1.0, 10.0)) == 10.0
    assert clip_violation(-0.9, (0.5, 10.0)) == -0.5
    assert clip_violation(-0.9, (1.0, 10.0)) == -0.9
    assert clip_violation(3.0, 2.0) == 2.0 and clip_violation(-3.0, 2.0) == -2.0
    assert clip_violation(-3.0, None) == -3.0
    assert clip_violation(0.5, (1.0, 10.0), scale=0.04) == pytest.approx(0.4)
    assert clip_violation(-0.5, (1.0, 10.0), scale=0.04) == pytest.approx(-0.04)

    # Multiplicative: V = 20 δ is a violation of 19, clipped to +10 (not +1); V = 0 is −1 either way.
    delta, eta = 0.04, 0.05
    up = dual_update(1.0, 20 * delta, delta, "multiplicative", eta, (1.0, 10.0), 1e-3, 1e3)
    assert up == pytest.approx(math.exp(eta * 10.0))
    assert dual_update(1.0, 20 * delta, delta, "multiplicative", eta, 1.0, 1e-3, 1e3) == pytest.approx(math.exp(eta))
    down = dual_update(1.0, 0.0, delta, "multiplicative", eta, (0.5, 10.0), 1e-3, 1e3)
    assert down == pytest.approx(math.exp(-eta * 0.5))
    # Linear: V − δ clipped to [−down·δ, up·δ].
    assert dual_update(1.0, 1.0, delta, "linear", 2.0, (1.0, 3.0), 0.0, 1e3) == pytest.approx(1.0 + 2.0 * 3 * delta)
    assert dual_update(1.0, 0.0, delta, "linear", 2.0, (0.5, 3.0), 0.0, 1e3) == pytest.approx(1.0 - 2.0 * 0.5 * delta)
    # A symmetric pair is the plain number.
    for variance in (0.0, 0.01, 0.05, 1.0):
        for mode in ("multiplicative", "linear"):
            pair = dual_update(0.7, variance, delta, mode, 0.3, (1.5, 1.5), 0.0 if mode == "linear" else 1e-3, 1e3)
            single = dual_update(0.7, variance, delta, mode, 0.3, 1.5, 0.0 if mode == "linear" else 1e-3, 1e3)
            assert pair == single


# ---------------------------------------------------------------------------------------------- dual timing


def test_multiplier_is_constant_within_an_update_under_rollout_timing():
    model = Probe("MlpPolicy", "CartPole-v1", seed=0, dual_update_frequency="rollout", **SMALL, **FREE)
    model.learn(128 * 4)
    seen = _by_update(model.losses)
    assert len(seen) == 4 and all(len(values) == 16 for values in seen.values())
    for update, values in seen.items():
        assert set(values) == {model.updates[update]["before"]}, update
    # One dual step per update, after the epochs; λ did move between updates.
    assert [step[0] for step in model.dual_steps] == [0, 1, 2, 3]
    assert len({update["after"] for update in model.updates}) == 4

    # The recording can tell: under per-minibatch timing λ changes inside an update.
    minibatch = Probe("MlpPolicy", "CartPole-v1", seed=0, **SMALL, **FREE)
    minibatch.learn(128 * 2)
    assert all(len(set(values)) > 1 for values in _by_update(minibatch.losses).values())


# δ tiny and λ₀ small: the final variance exceeds δ, so λ rises.
RISE = dict(variance_target=1e-4, learning_rate=3e-3, initial_lagrange_multiplier=1e-2, lagrange_multiplier_min=1e-4)


@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        ("multiplicative", RISE),
        ("multiplicative", dict(variance_target=1.0)),  # V < δ: λ falls
        ("multiplicative", dict(RISE, variance_target=0.01, dual_step_clip=None, dual_step_size=0.5)),
        ("linear", dict(RISE, dual_step_size=50.0, lagrange_multiplier_min=0.0)),
        ("multiplicative", dict(RISE, dual_step_clip=(1.0, 10.0))),
        ("multiplicative", dict(RISE, replay_rollouts=1)),
    ],
    ids=["rise", "fall", "unclipped", "linear", "asymmetric", "replay"],
)
def test_rollout_dual_step_sign_and_size_follow_the_final_variance(mode, extra, recorder):
    model = attach(
        Probe("MlpPolicy", "CartPole-v1", seed=1, dual_update=mode, dual_update_frequency="rollout", **SMALL, **FREE, **extra),
        recorder,
    )
    model.learn(128 * 3)
    delta, eta = model.variance_target(1.0), model.dual_step_size
    clip = math.inf if model.dual_step_clip is None else model.dual_step_clip
    down, up = clip if isinstance(clip, tuple) else (clip, clip)
    assert len(model.updates) == 3
    signs = set()
    for update, logged in zip(model.updates, [*recorder.series("train/ratio_variance_final")[-2:], None], strict=False):
        variance = update["final_variance"]  # measured here, on the rollout the update trained on
        if mode == "multiplicative":
            expected = update["before"] * math.exp(eta * min(max(variance / delta - 1.0, -down), up))
        else:
            expected = update["before"] + eta * min(max(variance - delta, -down * delta), up * delta)
        expected = min(max(expected, model.lagrange_multiplier_min), model.lagrange_multiplier_max)
        assert update["after"] == pytest.approx(expected, rel=1e-5)
        assert (update["after"] > update["before"]) == (variance > delta)
        signs.add(variance > delta)
        if logged is not None:
            assert logged == pytest.approx(variance, rel=1e-4)
    assert model.logger.name_to_value["train/ratio_variance_final"] == pytest.approx(
        model.updates[-1]["final_variance"], rel=1e-4
    )
    assert (extra["variance_target"] < 1.0) in signs  # λ rose at least once (fell at least once for δ = 1)
    if extra.get("dual_step_clip") is not None:
        # Above the symmetric bound: the asymmetric clip let λ rise by more than exp(η).
        assert any(update["after"] > update["before"] * math.exp(eta) * 1.001 for update in model.updates)


def test_epoch_dual_step_on_the_full_rollout_variance():
    common = dict(seed=2, learning_rate=3e-3, variance_target=0.002, dual_update_frequency="epoch", **SMALL, **FREE)
    model = Probe("MlpPolicy", "CartPole-v1", dual_variance_estimate="rollout", **common)
    model.measure_at_dual_step = True
    model.learn(128 * 2)
    assert len(model.dual_steps) == 2 * SMALL["n_epochs"]
    used = [step[2] for step in model.dual_steps]
    np.testing.assert_allclose(used, model.measured, rtol=1e-4)
    # Not the mean of the epoch's minibatch variances: that estimator gives other values.
    default = Probe("MlpPolicy", "CartPole-v1", **common)
    default.measure_at_dual_step = True
    default.learn(128 * 2)
    assert not np.allclose([step[2] for step in default.dual_steps], default.measured, rtol=1e-2)


# ---------------------------------------------------------------------------------------------- floor


def test_floor_tied_to_the_stationary_multiplier(recorder):
    fraction = 0.5
    kwargs = dict(seed=0, variance_target=lambda progress: 0.2 + 0.3 * progress, **SMALL)
    model = Probe("MlpPolicy", "CartPole-v1", lagrange_multiplier_floor=fraction, initial_lagrange_multiplier=0.05, **kwargs)
    attach(model, recorder).learn(128 * 4)
    delta_of = {update: delta for update, _, delta in model.losses}
    assert len(set(delta_of.values())) == 4  # δ_t changed every update
    for update, multiplier, delta in model.losses:
        assert multiplier >= fraction / (2 * math.sqrt(delta)) * (1 - 1e-12), (update, multiplier, delta)
    for update, _, _, after in model.dual_steps:
        assert after >= fraction / (2 * math.sqrt(delta_of[update])) * (1 - 1e-12)
    # λ started below the floor (0.05) and was lifted to it; V ≪ δ then kept it on the floor, as the log shows.
    assert model.losses[0][1] == pytest.approx(fraction / (2 * math.sqrt(delta_of[0])))
    at_floor = recorder.series("train/lagrange_multiplier_at_floor")
    at_floor.append(model.logger.name_to_value["train/lagrange_multiplier_at_floor"])
    assert len(at_floor) == 4 and min(at_floor) > 0.5
    bounds = recorder.series("train/lagrange_multiplier_lower_bound")
    assert bounds == sorted(bounds) and bounds[0] < bounds[-1]  # δ falls, so the floor rises

    # The same run without the floor (λ₀ = λ*) goes below f·λ*: the floor is what held λ up.
    free = Probe("MlpPolicy", "CartPole-v1", **kwargs, **FREE)
    free.learn(128 * 4)
    assert min(multiplier * 2 * math.sqrt(delta) for _, multiplier, delta in free.losses) < fraction * 0.9


def test_at_floor_fraction_is_the_share_of_lambda_values_on_the_bound():
    model = Probe("MlpPolicy", "CartPole-v1", seed=0, variance_target=1.0, lagrange_multiplier_floor=0.9, **SMALL)
    model.learn(128)  # one update: λ starts at λ* = 0.5 and falls onto the floor 0.45 after a few steps
    bound = 0.9 / 2.0
    values = [model.dual_steps[0][1]] + [step[3] for step in model.dual_steps]
    assert len(values) == 17
    expected = np.mean([value <= bound * (1 + 1e-9) for value in values])
    assert 0 < expected < 1
    assert model.logger.name_to_value["train/lagrange_multiplier_at_floor"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("rollout_size", "fraction"),
    # CartPole's entry (8 x 32) → 1/2; LunarLanderContinuous's (16 x 1,024) → 1/16; at or below N₀ = 64 → cut to 1.
    # A one-sample rollout (n_steps=1, n_envs=1) is a rollout too (a mutmut survivor refused it).
    [(256, 0.5), (16384, 1 / 16), (512, math.sqrt(1 / 8)), (64, 1.0), (8, 1.0), (1, 1.0)],
)
def test_rollout_floor_fraction(rollout_size, fraction):
    assert rollout_floor_fraction(rollout_size) == pytest.approx(fraction, rel=1e-12)


def test_rollout_floor_fraction_refuses_an_empty_rollout():
    with pytest.raises(ValueError, match="at least 1 sample, got 0"):
        rollout_floor_fraction(0)


def test_auto_floor_follows_the_rollout_size():
    # 2 envs x 128 steps = 256 samples → f = 1/2; δ = 0.04 → λ* = 2.5, so λ never goes below 1.25.
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    kwargs = dict(seed=0, variance_target=0.04, initial_lagrange_multiplier=0.01, n_steps=128, batch_size=64, n_epochs=4)
    model = Probe("MlpPolicy", env, lagrange_multiplier_floor="auto", **kwargs)
    assert model.floor_fraction == pytest.approx(0.5)
    model.learn(256 * 3)
    assert model.losses[0][1] == pytest.approx(1.25)  # λ₀ = 0.01 was lifted to the floor
    assert min(step[3] for step in model.dual_steps) >= 1.25 * (1 - 1e-12)
    assert model.logger.name_to_value["train/lagrange_multiplier_lower_bound"] == pytest.approx(1.25)
    # With one env the rollout halves and the floor rises: f = √(64/128).
    single = R2VPO("MlpPolicy", "CartPole-v1", lagrange_multiplier_floor="auto", n_steps=128)
    assert single.floor_fraction == pytest.approx(math.sqrt(0.5))
    # A fixed fraction is itself, whatever the rollout.
    assert R2VPO("MlpPolicy", env, lagrange_multiplier_floor=0.3, n_steps=128).floor_fraction == 0.3
    assert R2VPO("MlpPolicy", env, lagrange_multiplier_floor=None, n_steps=128).floor_fraction is None


def test_auto_floor_survives_save_and_load(tmp_path):
    model = R2VPO("MlpPolicy", "CartPole-v1", lagrange_multiplier_floor="auto", n_steps=256, seed=0)
    model.save(tmp_path / "model.zip")
    loaded = R2VPO.load(tmp_path / "model.zip")
    assert loaded.lagrange_multiplier_floor == "auto"
    assert loaded.floor_fraction == pytest.approx(0.5)
    # Overriding it at load is checked like the constructor's argument.
    with pytest.raises(TypeError, match=r"`lagrange_multiplier_floor` must be a number in.*'auto'"):
        R2VPO.load(tmp_path / "model.zip", lagrange_multiplier_floor="Auto")


# ---------------------------------------------------------------------------------------------- variance stop


DELTA = 1e-4


def _first_update(**kwargs):
    # λ starts small so that the ratio variance grows past δ within the update.
    model = Probe(
        "MlpPolicy",
        "CartPole-v1",
        seed=3,
        learning_rate=3e-3,
        variance_target=DELTA,
        initial_lagrange_multiplier=1e-3,
        lagrange_multiplier_min=1e-4,
        **SMALL,
        **FREE,
        **kwargs,
    )
    variances: list[float] = []
    policy_loss = model._policy_loss

    def recording(ratio, advantages, variance_target, start_ratio=None):
        result = policy_loss(ratio, advantages, variance_target, start_ratio)
        variances.append(float(result[2].detach()))
        return result

    model._policy_loss = recording
    model.learn(128)  # one rollout, one update
    return model, variances


def test_variance_stop_fires_above_kappa_delta_and_not_below():
    free, variances = _first_update()
    assert len(variances) == 16 and free.logger.name_to_value["train/gradient_steps"] == 16
    # The first minibatch whose variance is above every earlier one, late enough to be a real test.
    j = next(i for i in range(4, 16) if variances[i] > max(variances[:i]))
    delta = DELTA
    assert variances[j] > delta  # so that κ ≥ 1

    kappa = variances[j] * (1 - 1e-6) / delta  # κ·δ just below V_j
    stopped, seen = _first_update(variance_stop=kappa)
    np.testing.assert_array_equal(seen, variances[: j + 1])  # identical until the stop, then nothing more
    record = stopped.logger.name_to_value
    assert record["train/gradient_steps"] == j
    assert record["train/variance_stopped"] == 1.0
    assert record["train/variance_stop_epoch"] == j // 4
    assert record["train/n_updates"] == j // 4 + 1  # as with target_kl: the stopping epoch counts, no later one runs

    kappa = variances[j] * (1 + 1e-6) / delta  # κ·δ just above V_j: no minibatch up to j stops
    later, seen = _first_update(variance_stop=kappa)
    assert len(seen) > j + 1
    assert all(value <= kappa * delta for value in seen[:-1])
    if len(seen) < 16:
        assert seen[-1] > kappa * delta
    else:
        assert later.logger.name_to_value["train/variance_stopped"] == 0.0


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(lagrange_multiplier_floor=0.0), ValueError, r"`lagrange_multiplier_floor` must be a number in \(0.0, 1.0\]"),
        (
            dict(lagrange_multiplier_floor=1.5),
            ValueError,
            r"`lagrange_multiplier_floor` must be a number in \(0.0, 1.0\].*1/\(2√δ\)",
        ),
        (dict(lagrange_multiplier_floor=float("nan")), ValueError, r"`lagrange_multiplier_floor` must be a number in"),
        (dict(lagrange_multiplier_floor="0.5"), TypeError, r"`lagrange_multiplier_floor` must be a number in.*'auto'"),
        (dict(variance_stop=0.5), ValueError, r"`variance_stop` must be a number in \[1.0, inf\).*got 0.5"),
        (dict(variance_stop=float("inf")), ValueError, r"`variance_stop` must be a number in \[1.0, inf\)"),
        (dict(variance_stop=True), TypeError, r"`variance_stop` must be a number"),
        (dict(dual_step_clip=(1.0,)), ValueError, r"`dual_step_clip` as a pair must be \(down, up\).*got 1 values"),
        (dict(dual_step_clip=[1.0, 2.0, 3.0]), ValueError, r"`dual_step_clip` as a pair must be \(down, up\)"),
        (dict(dual_step_clip=(0.0, 10.0)), ValueError, r"`dual_step_clip\[0\]` must be a finite number > 0, got 0.0"),
        (dict(dual_step_clip=[1.0, -1.0]), ValueError, r"`dual_step_clip\[1\]` must be a finite number > 0, got -1.0"),
        (dict(dual_step_clip=("1", 10)), TypeError, r"`dual_step_clip\[0\]` must be a number, got str"),
        (dict(dual_step_clip="1"), TypeError, r"`dual_step_clip` must be a number, a pair \(down, up\)"),
        (
            dict(dual_variance_estimate="full"),
            ValueError,
            r"`dual_variance_estimate` must be one of \('minibatch', 'rollout'\)",
        ),
        (
            dict(dual_variance_estimate="rollout"),
            ValueError,
            r"`dual_variance_estimate`='rollout' needs `dual_update_frequency`='epoch'.*got .*='minibatch'",
        ),
        (dict(dual_update_frequency="update"), ValueError, r"one of \('minibatch', 'epoch', 'rollout'\)"),
        (
            dict(variance_target=lambda progress: 0.04 * progress - 0.01),
            ValueError,
            r"`variance_target\(0.0\)` must be a finite number >= 0",
        ),
        (dict(variance_target=lambda progress: 0.0), ValueError, r"`variance_target\(1.0\)` must be a finite number > 0"),
    ],
)
def test_bad_values_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        R2VPO("MlpPolicy", "CartPole-v1", **kwargs)


def test_edge_values_are_accepted():
    model = R2VPO(
        "MlpPolicy",
        "CartPole-v1",
        lagrange_multiplier_floor=1.0,
        variance_stop=1.0,
        dual_step_clip=[np.float32(1.0), 10],
        dual_update_frequency="rollout",
        dual_variance_estimate="rollout",
        variance_target=lambda progress: 0.04 * progress,
    )
    assert model.dual_step_clip == (1.0, 10.0) and type(model.dual_step_clip[0]) is float
    assert R2VPO("MlpPolicy", "CartPole-v1", dual_step_clip=np.float32(2.0)).dual_step_clip == 2.0
    assert R2VPO("MlpPolicy", "CartPole-v1", dual_update_frequency="epoch", dual_variance_estimate="rollout")


def test_new_options_and_multiplier_survive_save_and_load(tmp_path):
    kwargs = dict(
        dual_update_frequency="rollout", lagrange_multiplier_floor=0.5, dual_step_clip=(1.0, 10.0), variance_stop=3.0
    )
    model = R2VPO("MlpPolicy", "CartPole-v1", seed=0, **SMALL, **kwargs).learn(128 * 2)
    model.save(tmp_path / "model")
    loaded = R2VPO.load(tmp_path / "model")
    for key, value in kwargs.items():
        assert getattr(loaded, key) == value, key
    assert loaded.lagrange_multiplier == model.lagrange_multiplier
    assert loaded._consecutive_nonfinite == model._consecutive_nonfinite == 0
    assert loaded._finite_gradient_steps == model._finite_gradient_steps > 0


# ---------------------------------------------------------------------------------------------- δ schedules from YAML

YAML_ENTRY = """CartPole-v1:
  n_envs: 1
  n_timesteps: 192
  policy: MlpPolicy
  n_steps: 64
  batch_size: 32
  n_epochs: 1
  variance_target: lin_0.04
  dual_step_clip: [1, 10]
  lagrange_multiplier_floor: 0.5
"""


def test_variance_target_schedule_from_yaml_via_presets(tmp_path, recorder):
    config = tmp_path / "mine.yml"
    config.write_text(YAML_ENTRY)
    preset = get_preset("CartPole-v1", path=config)
    model = attach(preset.make_model(seed=0), recorder)
    assert model.variance_target(1.0) == pytest.approx(0.04)
    assert model.variance_target(0.5) == pytest.approx(0.02)
    assert model.dual_step_clip == (1.0, 10.0)
    model.learn(preset.n_timesteps)  # the last update runs at progress 0, where the schedule reaches 0
    targets = [*recorder.series("train/variance_target"), model.logger.name_to_value["train/variance_target"]]
    assert targets[0] == pytest.approx(0.04 * 2 / 3) and targets[1] == pytest.approx(0.04 / 3)
    assert targets[-1] == MIN_VARIANCE_TARGET
    assert math.isfinite(model.lagrange_multiplier)
    assert model.lagrange_multiplier >= min(0.5 * stationary_multiplier(MIN_VARIANCE_TARGET), model.lagrange_multiplier_max)

    config.write_text(YAML_ENTRY.replace("lin_0.04", "lin_x"))
    with pytest.raises(
        ValueError,
        match=r"variance_target: cannot read the schedule 'lin_x'; write lin_<initial>, e\.g\. lin_0\.04, or lin_<initial>_<final>",  # noqa: E501
    ):
        get_preset("CartPole-v1", path=config)


@pytest.mark.parametrize(
    ("value", "at_start", "halfway", "at_end"),
    [("lin_0.04", 0.04, 0.02, 0.0), ("lin_0.04_0.01", 0.04, 0.025, 0.01), ("lin_0.01_0.04", 0.01, 0.025, 0.04)],
)
def test_variance_target_schedule_forms(value, at_start, halfway, at_end):
    """``lin_<initial>`` anneals to 0 (rl_zoo3's form); ``lin_<initial>_<final>`` runs linearly between the two."""
    schedule = parse_schedule("variance_target", value)
    assert [schedule(1.0), schedule(0.5), schedule(0.0)] == pytest.approx([at_start, halfway, at_end])


@pytest.mark.parametrize("value", ["lin_0.04_0.01_0.001", "lin_0.04_", "lin__0.01", "lin_0.04_x", "lin_0.04_inf", "lin_nan"])
def test_variance_target_schedule_malformed(value):
    with pytest.raises(ValueError, match=rf"variance_target: cannot read the schedule '{value}'"):
        parse_schedule("variance_target", value)


def test_two_ended_schedule_only_for_r2vpos_own_keys():
    """rl_zoo3 reads only ``lin_<initial>`` for its own keys (learning_rate, ...): a two-ended one would fail there."""
    with pytest.raises(
        ValueError, match=r"learning_rate: cannot read the schedule 'lin_1e-3_1e-4'; write lin_<initial>, e\.g\. lin_0\.04$"
    ):
        parse_schedule("learning_rate", "lin_1e-3_1e-4")


def test_two_ended_schedule_ending_below_zero_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"`variance_target\(0\.0\)` must be a finite number >= 0"):
        R2VPO("MlpPolicy", "CartPole-v1", variance_target=parse_schedule("variance_target", "lin_0.04_-0.01"))


def test_variance_target_schedule_from_yaml_via_zoo_launcher(tmp_path):
    pytest.importorskip("rl_zoo3", reason="the zoo extra is not installed")
    from rl_zoo3.exp_manager import ExperimentManager

    from sb3_r2vpo.zoo import ZooConfigError, check_entry, main, register

    config = tmp_path / "mine.yml"
    config.write_text(YAML_ENTRY)
    main(
        [
            "train",
            "--algo",
            "r2vpo",
            "--env",
            "CartPole-v1",
            "-conf",
            str(config),
            "-f",
            str(tmp_path),
            "--seed",
            "0",
            "--eval-freq",
            "-1",
        ]
    )
    model = R2VPO.load(tmp_path / "r2vpo" / "CartPole-v1_1" / "CartPole-v1.zip")
    assert model.variance_target(1.0) == pytest.approx(0.04)
    assert model.variance_target(0.5) == pytest.approx(0.02)
    assert model.dual_step_clip == (1.0, 10.0)
    assert model.num_timesteps == 192

    # The conversion is the zoo's own preprocessing step, installed once however often register() runs.
    register()
    register()
    converted = ExperimentManager._preprocess_schedules({"variance_target": "lin_0.1", "learning_rate": "lin_3e-4"})
    assert converted["variance_target"](0.25) == pytest.approx(0.025)
    assert converted["learning_rate"](0.5) == pytest.approx(1.5e-4)
    assert ExperimentManager._preprocess_schedules({"variance_target": 0.03})["variance_target"] == 0.03
    two_ended = ExperimentManager._preprocess_schedules({"variance_target": "lin_0.04_0.01"})["variance_target"]
    assert [two_ended(1.0), two_ended(0.0)] == pytest.approx([0.04, 0.01])

    config.write_text(YAML_ENTRY.replace("lin_0.04", "lin_x"))
    with pytest.raises(ZooConfigError, match=r"entry 'CartPole-v1': variance_target: cannot read the schedule 'lin_x'"):
        check_entry(config, "CartPole-v1")


# ---------------------------------------------------------------------------------------------- non-finite guard


class NanAtEpisodeEnd(gym.Wrapper):
    """A NaN reward on the last step of every episode (the input of issue 14, item 6)."""

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        return observation, float("nan") if terminated or truncated else reward, terminated, truncated, info


def _nan_model():
    env = make_vec_env(lambda: NanAtEpisodeEnd(gym.make("CartPole-v1")), n_envs=1, seed=0)
    # 4 epochs of one minibatch: 4 gradient steps per update, fewer than max_nonfinite_steps (10).
    return R2VPO("MlpPolicy", env, seed=0, n_steps=128, batch_size=128, n_epochs=4)


def test_nonfinite_counter_runs_across_updates():
    model = _nan_model()
    before = [p.detach().clone() for p in model.policy.parameters()]
    multiplier = model.lagrange_multiplier
    with pytest.raises(NonFiniteTrainingError, match=r"skipped 10 consecutive gradient steps"):
        model.learn(128 * 10)
    assert model._rollout_index == 2  # raised in the third update: 4 + 4 + 2 consecutive skips
    for old, new in zip(before, model.policy.parameters(), strict=True):
        th.testing.assert_close(new.detach(), old, rtol=0, atol=0)
    assert model.lagrange_multiplier == multiplier


def test_run_without_a_finite_step_raises():
    model = _nan_model()
    with pytest.raises(NonFiniteTrainingError, match=r"ran 2 update\(s\) without a single finite gradient step"):
        model.learn(128 * 2)  # 8 skipped steps: below max_nonfinite_steps, yet nothing was learned
    assert model._consecutive_nonfinite == 8
