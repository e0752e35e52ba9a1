"""R2VPO actually learns, with the hyperparameters it ships for the task."""

import pytest
from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold

from sb3_r2vpo.presets import get_preset


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_cartpole_reaches_475_within_100k_steps(seed):
    preset = get_preset("CartPole-v1")
    assert preset.n_timesteps == 100_000
    model = preset.make_model(seed=seed)
    stop = StopTrainingOnRewardThreshold(reward_threshold=475, verbose=0)
    evaluation = EvalCallback(
        preset.make_env(seed=1000 + seed, training=False),
        n_eval_episodes=10,
        eval_freq=10_000 // preset.n_envs,
        callback_on_new_best=stop,
        verbose=0,
    )
    model.learn(total_timesteps=preset.n_timesteps, callback=evaluation)
    assert evaluation.best_mean_reward >= 475, f"seed {seed}: best mean return {evaluation.best_mean_reward}"
    assert model.num_timesteps <= 100_000
