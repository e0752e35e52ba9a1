"""A NaN never reaches the weights or λ: the step is skipped, counted, and repeated failures stop training."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env

from sb3_r2vpo import R2VPO, NonFiniteTrainingError
from tests.conftest import attach
from tests.envs import NanRewardEnv

SMALL = dict(n_steps=64, batch_size=32, n_epochs=2)


def _parameters(model):
    return [p.detach().clone() for p in model.policy.parameters()]


def test_nan_rewards_stop_training_and_leave_model_untouched():
    env = make_vec_env(lambda: NanRewardEnv(gym.make("CartPole-v1"), nan_after=0), n_envs=1, seed=0)
    model = R2VPO("MlpPolicy", env, seed=0, max_nonfinite_steps=3, **SMALL)
    before, multiplier = _parameters(model), model.lagrange_multiplier
    with pytest.raises(NonFiniteTrainingError, match=r"skipped 3 consecutive.*Lower `learning_rate`.*VecCheckNan"):
        model.learn(64 * 2)
    for old, new in zip(before, _parameters(model), strict=False):
        th.testing.assert_close(new, old, rtol=0, atol=0)
    assert model.lagrange_multiplier == multiplier


def _poison_log_probs(monkeypatch, model, calls: set[int], with_grad_only: bool = False) -> None:
    """
    Make the policy's log-probabilities NaN on the given calls of ``evaluate_actions`` (counted from 1).

    :param with_grad_only: Count only the calls made with gradients (the loss's), not the no-grad ones
        (the full-rollout ratio variance)
    """
    evaluate_actions = model.policy.evaluate_actions
    count = {"n": 0}

    def poisoned(observations, actions):
        values, log_prob, entropy = evaluate_actions(observations, actions)
        if th.is_grad_enabled() or not with_grad_only:
            count["n"] += 1
            if count["n"] in calls:
                log_prob = log_prob * float("nan")
        return values, log_prob, entropy

    monkeypatch.setattr(model.policy, "evaluate_actions", poisoned)


def test_one_nonfinite_minibatch_is_skipped_and_counted(monkeypatch, recorder):
    model = attach(R2VPO("MlpPolicy", "CartPole-v1", seed=0, **SMALL), recorder)
    _poison_log_probs(monkeypatch, model, calls={2})
    model.learn(64 * 3)
    # The poisoned minibatch was in the first update, logged with the second rollout's dump.
    assert recorder.series("train/nonfinite_skips") == [1, 0]
    assert all(th.isfinite(p).all() for p in model.policy.parameters())
    assert np.isfinite(model.lagrange_multiplier)


def test_nonfinite_skip_is_logged(monkeypatch):
    model = R2VPO("MlpPolicy", "CartPole-v1", seed=0, n_steps=64, batch_size=32, n_epochs=1)
    evaluate_actions = model.policy.evaluate_actions

    def poisoned(observations, actions):
        values, log_prob, entropy = evaluate_actions(observations, actions)
        return values, log_prob + th.tensor([float("inf")] + [0.0] * (len(log_prob) - 1)), entropy

    monkeypatch.setattr(model.policy, "evaluate_actions", poisoned)
    before, multiplier = _parameters(model), model.lagrange_multiplier
    model.learn(64)
    # The log-ratio guard keeps an infinite log-ratio finite, so it is counted there and not skipped.
    record = model.logger.name_to_value
    assert record["train/logratio_guard_fraction"] == pytest.approx(1 / 32)
    assert record["train/nonfinite_skips"] == 0
    assert all(th.isfinite(p).all() for p in model.policy.parameters())
    assert any(not th.equal(old, new) for old, new in zip(before, _parameters(model), strict=False))
    assert np.isfinite(model.lagrange_multiplier) and model.lagrange_multiplier != multiplier


def test_update_with_every_step_skipped_logs_the_unchanged_policys_variance(monkeypatch, recorder):
    """No gradient step in an update: the final ratio variance is measured on the unchanged policy (0), a float."""
    model = attach(R2VPO("MlpPolicy", "CartPole-v1", seed=0, **SMALL), recorder)
    # Every minibatch of the first update (64 / 32 samples x 2 epochs); the no-grad rollout variance stays finite.
    _poison_log_probs(monkeypatch, model, calls={1, 2, 3, 4}, with_grad_only=True)
    model.learn(64 * 3)
    assert recorder.series("train/nonfinite_skips") == [4, 0]
    first, second = recorder.series("train/ratio_variance_final")
    assert isinstance(first, float) and first == pytest.approx(0.0, abs=1e-10)
    assert isinstance(second, float) and second > 0  # the second update did step
