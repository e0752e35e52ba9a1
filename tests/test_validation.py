"""Bad input is refused at construction with a message naming the argument and the allowed range."""

import pytest
from stable_baselines3.common.env_util import make_vec_env

from sb3_r2vpo import R2VPO
from tests.envs import TupleActionEnv


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
        (dict(variance_center="median"), ValueError, r"`variance_center` must be one of \('mean', 'one'\)"),
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
