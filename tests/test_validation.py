"""Bad input is refused at construction with a message naming the argument and the allowed range."""

import inspect
import re
import warnings

import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import LinearSchedule

from sb3_r2vpo import R2VPO
from sb3_r2vpo.presets import get_preset, parse_schedule
from sb3_r2vpo.r2vpo.r2vpo import PPO_ONLY_ARGUMENTS
from sb3_r2vpo.zoo import ZooConfigError, check_entry
from tests.envs import TupleActionEnv

th.set_num_threads(1)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(variance_target=0.0), ValueError, r"`variance_target` must be a finite number > 0, got 0.0"),
        (dict(variance_target=-0.1), ValueError, r"`variance_target` must be a finite number > 0"),
        (dict(variance_target=float("nan")), ValueError, r"`variance_target` must be a finite number > 0"),
        (
            dict(variance_target=lambda progress: progress - 0.5),
            ValueError,
            r"`variance_target\(0.0\)` must be a finite number >= 0 .*, got -0.5",
        ),
        (dict(variance_target="0.04"), TypeError, r"`variance_target` must be a number"),
        (dict(dual_step_size=0.0), ValueError, r"`dual_step_size` must be a finite number > 0"),
        (dict(dual_step_size=-1.0), ValueError, r"`dual_step_size` must be a finite number > 0"),
        (dict(dual_step_clip=0.0), ValueError, r"`dual_step_clip` must be a finite number > 0"),
        (
            dict(dual_step_clip="1"),
            TypeError,
            r"`dual_step_clip` must be a number, a pair \(down, up\) of numbers, or None, got str$",
        ),
        (dict(dual_step_clip=(1.0, "10")), TypeError, r"`dual_step_clip\[1\]` must be a number, got str$"),
        (
            dict(lagrange_multiplier_min=10.0, lagrange_multiplier_max=1.0),
            ValueError,
            r"must be smaller than `lagrange_multiplier_max`",
        ),
        (dict(lagrange_multiplier_min=-1.0), ValueError, r"`lagrange_multiplier_min` must be a finite number > 0"),
        (dict(lagrange_multiplier_min=-1.0, dual_update="linear"), ValueError, r"`lagrange_multiplier_min` must be >= 0"),
        (dict(lagrange_multiplier_min=0.0), ValueError, r"`lagrange_multiplier_min` must be a finite number > 0"),
        (dict(lagrange_multiplier_max=-5.0), ValueError, r"`lagrange_multiplier_max` must be a finite number > 0"),
        (dict(initial_lagrange_multiplier=1e6), ValueError, r"`initial_lagrange_multiplier` must lie in"),
        (dict(initial_lagrange_multiplier=-1.0), ValueError, r"`initial_lagrange_multiplier` must be a finite number > 0"),
        (
            dict(dual_update="additive"),
            ValueError,
            r"`dual_update` must be one of \('multiplicative', 'linear'\), got 'additive'",
        ),
        # None is no number for an argument that has no "off" value (a mutmut survivor accepted it).
        (dict(dual_step_size=None), TypeError, r"`dual_step_size` must be a number, got NoneType"),
        (dict(log_ratio_guard=None), TypeError, r"`log_ratio_guard` must be a number, got NoneType"),
        (dict(variance_center="median"), ValueError, r"`variance_center` must be one of \('mean', 'one', 'start'\)"),
        (
            dict(dual_update_frequency="update"),
            ValueError,
            r"`dual_update_frequency` must be one of \('minibatch', 'epoch', 'rollout'\)",
        ),
        (dict(batch_size=1), ValueError, r"`batch_size` must be >= 2, got 1"),
        (dict(batch_size=32.0), TypeError, r"`batch_size` must be an int"),
        (dict(n_epochs=0), ValueError, r"`n_epochs` must be >= 1, got 0"),
        (dict(n_steps=0), ValueError, r"`n_steps` must be >= 1, got 0"),
        (dict(log_ratio_guard=0.0), ValueError, r"`log_ratio_guard` must be a finite number > 0"),
        (dict(target_kl=0.0), ValueError, r"`target_kl` must be a finite number > 0"),
        (dict(clip_range_vf=-0.2), ValueError, r"`clip_range_vf` must be a finite number > 0"),
        (dict(max_nonfinite_steps=0), ValueError, r"`max_nonfinite_steps` must be >= 1"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        R2VPO("MlpPolicy", "CartPole-v1", **kwargs)


def test_unsupported_action_space_is_a_value_error():
    with pytest.raises(ValueError, match=r"R2VPO supports the action spaces Box, Discrete, MultiDiscrete, MultiBinary"):
        R2VPO("MlpPolicy", make_vec_env(TupleActionEnv, n_envs=1))


def test_buffer_of_one_sample_is_refused():
    with pytest.raises(ValueError, match=r"`n_steps \* n_envs` must be at least 2"):
        R2VPO("MlpPolicy", "CartPole-v1", n_steps=1)


def test_truncated_minibatch_warns():
    with pytest.warns(UserWarning, match="not a multiple of batch_size=48"):
        R2VPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=48)


def test_minibatch_larger_than_the_rollout_warns_with_the_samples_an_update_has():
    with pytest.warns(UserWarning, match=r"batch_size=256 exceeds the samples of an update \(n_steps \* n_envs = 64\)"):
        R2VPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=256)
    # The replay's stale rollouts count: 2 rollouts of 64 fill no 256-sample minibatch ...
    with pytest.warns(UserWarning, match=r"\(1 \+ replay_rollouts=1\) = 128\): every epoch is a single minibatch of 128"):
        R2VPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=256, replay_rollouts=1)
    # ... 4 do, exactly: no warning (SB3's PPO would warn about the one fresh rollout here).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        R2VPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=256, replay_rollouts=3)


def test_valid_edge_values_are_accepted():
    model = R2VPO(
        "MlpPolicy",
        "CartPole-v1",
        n_steps=2,
        batch_size=2,
        variance_target=1e-6,
        dual_update="linear",
        lagrange_multiplier_min=0.0,
        dual_step_clip=None,
        initial_lagrange_multiplier=0.5,
    )
    assert model.lagrange_multiplier == 0.5


@pytest.mark.parametrize(
    "clip_range_vf",
    [parse_schedule("clip_range_vf", "lin_0.2"), LinearSchedule(0.2, 0.0, 1.0), lambda progress: 0.2 * progress],
    ids=["lin_0.2", "LinearSchedule", "lambda"],
)
def test_clip_range_vf_schedules_that_decay_to_zero_are_accepted(clip_range_vf):
    PPO("MlpPolicy", "CartPole-v1", clip_range_vf=clip_range_vf)  # what PPO accepts
    model = R2VPO("MlpPolicy", "CartPole-v1", clip_range_vf=clip_range_vf, n_steps=64, batch_size=32, n_epochs=1)
    assert model.clip_range_vf(1.0) == pytest.approx(0.2) and model.clip_range_vf(0.0) == 0.0
    model.learn(64 * 2)
    # The last update runs at progress remaining 0, where the value clip is 0 (the critic held, as in PPO).
    assert model.logger.name_to_value["train/clip_range_vf"] == 0.0


@pytest.mark.parametrize(
    ("clip_range_vf", "message"),
    [
        (lambda progress: 0.2 * progress - 0.1, r"`clip_range_vf\(0.0\)` must be a finite number >= 0 .*, got -0.1"),
        (lambda progress: 0.0 * progress, r"`clip_range_vf\(1.0\)` must be a finite number > 0, got 0.0"),
        (0.0, r"`clip_range_vf` must be a finite number > 0, got 0.0"),
    ],
)
def test_clip_range_vf_that_cannot_work_is_refused(clip_range_vf, message):
    with pytest.raises(ValueError, match=message):
        R2VPO("MlpPolicy", "CartPole-v1", clip_range_vf=clip_range_vf)


# Every number the constructor takes, given as a numpy scalar.
NUMPY_NUMBERS = dict(
    learning_rate=np.float32(3e-4),
    n_steps=np.int64(64),
    batch_size=np.int64(32),
    n_epochs=np.int32(2),
    gamma=np.float32(0.99),
    gae_lambda=np.float64(0.95),
    variance_target=np.float32(0.04),
    initial_lagrange_multiplier=np.float32(1.0),
    lagrange_multiplier_min=np.float32(1e-3),
    lagrange_multiplier_max=np.float32(1e3),
    lagrange_multiplier_floor=np.float32(0.5),
    dual_step_size=np.float32(0.05),
    dual_step_clip=np.float32(1.0),
    log_ratio_guard=np.float32(20.0),
    replay_rollouts=np.int64(1),
    clip_range_vf=np.float32(0.2),
    ent_coef=np.float32(0.01),
    vf_coef=np.float32(0.5),
    max_grad_norm=np.float32(0.5),
    sde_sample_freq=np.int64(-1),
    target_kl=np.float32(0.02),
    variance_stop=np.float32(2.0),
    max_nonfinite_steps=np.int64(5),
    stats_window_size=np.int64(10),
    verbose=np.int64(0),
    seed=np.int64(0),
)


def test_the_numpy_table_covers_every_number():
    numbers = {
        name
        for name, parameter in inspect.signature(R2VPO.__init__).parameters.items()
        if re.search(r"\b(int|float)\b", str(parameter.annotation))
    }
    assert numbers == set(NUMPY_NUMBERS)


@pytest.mark.parametrize("name", sorted(NUMPY_NUMBERS))
def test_numbers_given_as_numpy_scalars_are_accepted(name, tmp_path):
    kwargs = {**dict(n_steps=64, batch_size=32, n_epochs=2), name: NUMPY_NUMBERS[name]}
    model = R2VPO("MlpPolicy", "CartPole-v1", **kwargs).learn(64 * 2)
    model.save(tmp_path / "model")
    # ... and as overrides at load.
    loaded = R2VPO.load(tmp_path / "model", env=make_vec_env("CartPole-v1"), **{name: NUMPY_NUMBERS[name]})
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded.num_timesteps == 192


def test_all_numbers_as_numpy_scalars_at_once_and_a_numpy_pair():
    kwargs = {**NUMPY_NUMBERS, "dual_step_clip": (np.float32(1.0), np.float64(10.0))}
    model = R2VPO("MlpPolicy", "CartPole-v1", **kwargs).learn(64 * 2)
    assert model.dual_step_clip == (1.0, 10.0)
    assert type(model.target_kl) is float and type(model.n_steps) is int and model.replay.capacity == 1


@pytest.mark.parametrize(
    "kwargs",
    [dict(batch_size=True), dict(target_kl=True), dict(variance_target=np.bool_(True)), dict(n_epochs=np.bool_(True))],
)
def test_bools_are_still_refused(kwargs):
    with pytest.raises(TypeError, match=r"must be (an int|a number)"):
        R2VPO("MlpPolicy", "CartPole-v1", **kwargs)


def test_clip_range_is_refused_with_what_plays_its_role(tmp_path):
    # clip_range is the one PPO argument R2VPO lacks.
    ppo_only = set(inspect.signature(PPO.__init__).parameters) - set(inspect.signature(R2VPO.__init__).parameters)
    assert ppo_only == set(PPO_ONLY_ARGUMENTS) == {"clip_range"}
    rule = rf"ε = 0.2 → δ ≈ {0.2**2 / 3:.3f}"  # the variance of ratios spread evenly over [0.8, 1.2]
    expected = rf"R2VPO has no policy-ratio clip; `variance_target` .* plays its role.*ε²/3.*{rule}"
    with pytest.raises(TypeError, match=rf"R2VPO\(\) got the argument `clip_range`.*{expected}"):
        R2VPO("MlpPolicy", "CartPole-v1", clip_range=0.2)

    # Loading a model with it.
    R2VPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32).save(tmp_path / "model")
    with pytest.raises(TypeError, match=rf"R2VPO.load\(\) got the argument `clip_range`.*{expected}"):
        R2VPO.load(tmp_path / "model", clip_range=0.2)

    # A YAML entry with it: the loader reads any zoo file (PPO's too), the R2VPO model built from it refuses.
    config = tmp_path / "mine.yml"
    config.write_text("CartPole-v1:\n  n_envs: 1\n  clip_range: lin_0.2\n  n_steps: 64\n")
    preset = get_preset("CartPole-v1", path=config)
    with pytest.raises(TypeError, match=rf"the 'CartPole-v1' entry sets `clip_range`: {expected}"):
        preset.make_model(seed=0)
    assert preset.make_model(seed=0, algorithm=PPO).clip_range(1.0) == pytest.approx(0.2)

    # The zoo launcher's check of the entry.
    with pytest.raises(
        ZooConfigError, match=rf"mine.yml: entry 'CartPole-v1': R2VPO takes no argument 'clip_range': {expected}"
    ):
        check_entry(config, "CartPole-v1")


def test_a_schedule_string_for_clip_range_vf_says_what_is_accepted():
    """PPO refuses "lin_0.2" too (only the zoo turns it into a schedule); the message must name schedules."""
    with pytest.raises(TypeError, match=r"a number, a schedule .* or None, got str \(a 'lin_<value>' string"):
        R2VPO("MlpPolicy", "CartPole-v1", clip_range_vf="lin_0.2")


@pytest.mark.parametrize(
    ("algorithm", "policy", "owner"),
    [("R2VPO", "MlpLstmPolicy", "RecurrentR2VPO's"), ("RecurrentR2VPO", "MlpPolicy", "R2VPO and MaskableR2VPO's")],
)
def test_a_policy_of_another_class_is_named_with_its_class(algorithm, policy, owner):
    """Found by a fresh-user check: SB3 says only 'Policy X unknown'."""
    import sb3_r2vpo

    message = rf"`policy`: {algorithm} has no policy '{policy}'; it takes .*; '{policy}' is {owner}"
    with pytest.raises(ValueError, match=message):
        getattr(sb3_r2vpo, algorithm)(policy, "CartPole-v1")


def test_a_model_file_of_another_class_is_refused_at_load_naming_the_class(tmp_path):
    """Found by a fresh-user check: R2VPO.load on a MaskableR2VPO file failed on `use_sde`, deep inside SB3."""
    from sb3_contrib.common.envs import InvalidActionEnvDiscrete

    from sb3_r2vpo import MaskableR2VPO, RecurrentR2VPO

    saved = {
        "MaskableR2VPO": MaskableR2VPO("MlpPolicy", InvalidActionEnvDiscrete(dim=4, n_invalid_actions=1), n_steps=32),
        "RecurrentR2VPO": RecurrentR2VPO("MlpLstmPolicy", "CartPole-v1", n_steps=32, batch_size=32),
        "R2VPO": R2VPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32),
    }
    for name, model in saved.items():
        model.save(tmp_path / name)
    loaders = {"MaskableR2VPO": MaskableR2VPO, "RecurrentR2VPO": RecurrentR2VPO, "R2VPO": R2VPO}
    for saver in saved:
        for loader_name, loader in loaders.items():
            if loader_name == saver:
                assert type(loader.load(tmp_path / saver)) is loader
                continue
            message = rf"`policy`: \w+ is {saver}'s policy, not {loader_name}'s .* load it with {saver}.load"
            with pytest.raises(ValueError, match=message):
                loader.load(tmp_path / saver)
