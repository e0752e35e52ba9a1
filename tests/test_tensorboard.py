"""`tensorboard_log=` works with the tensorboard extra, and the event files hold R2VPO's keys."""

import pytest
from stable_baselines3.common.callbacks import BaseCallback

from sb3_r2vpo import R2VPO
from tests.extras import require


class MultiplierAtRolloutStart(BaseCallback):
    """λ when each rollout starts: the value the previous update ended with (what SB3 logs at the next dump)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[float] = []

    def _on_rollout_start(self) -> None:
        self.values.append(self.model.lagrange_multiplier)

    def _on_step(self) -> bool:
        return True


def test_event_files_hold_the_lagrange_multiplier(tmp_path):
    require("tensorboard", "tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Without the default floor, which holds λ at λ* on 64-sample rollouts: λ must move for the check to mean anything.
    model = R2VPO(
        "MlpPolicy",
        "CartPole-v1",
        n_steps=64,
        batch_size=32,
        n_epochs=2,
        tensorboard_log=str(tmp_path),
        seed=0,
        lagrange_multiplier_floor=None,
    )
    callback = MultiplierAtRolloutStart()
    model.learn(3 * 64, tb_log_name="r2vpo", callback=callback)
    (run,) = tmp_path.iterdir()
    assert run.name == "r2vpo_1"
    events = EventAccumulator(str(run))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for key in ("train/lagrange_multiplier", "train/ratio_variance", "train/variance_target", "rollout/ep_rew_mean"):
        assert key in scalars, (key, scalars)
    # SB3 dumps an update's train/ keys after the next rollout: the updates after rollouts 1 and 2, at 128 and 192.
    logged = events.Scalars("train/lagrange_multiplier")
    assert [event.step for event in logged] == [128, 192]
    assert [event.value for event in logged] == pytest.approx(callback.values[1:3], rel=1e-6)
    assert len(set(callback.values)) == 3  # λ moved: the values compared are not all the initial one


def test_default_run_name_is_the_algorithm_name(tmp_path):
    """Like SB3's PPO ("PPO_1"), an unnamed run's TensorBoard folder is named after the class: R2VPO_1."""
    require("tensorboard", "tensorboard")
    R2VPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=1, tensorboard_log=str(tmp_path), seed=0).learn(64)
    assert [run.name for run in tmp_path.iterdir()] == ["R2VPO_1"]
