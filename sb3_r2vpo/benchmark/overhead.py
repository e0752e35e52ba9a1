"""
Overhead of R2VPO's ``train()`` over SB3 PPO's, on identical rollout buffers and identical starting weights,
in one process (ratios rather than seconds: a shared machine makes seconds noisy).

    python -m sb3_r2vpo.benchmark overhead --envs CartPole-v1 Pendulum-v1 --repeats 9 [--out FILE]

PPO collects one rollout; both algorithms then run ``train()`` on that same buffer from the same weights,
alternating which goes first, ``repeats`` times. Both use the library defaults, not an entry, apart from the
rollout and minibatch sizes and the epochs.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.utils import configure_logger

from sb3_r2vpo.r2vpo import R2VPO


def _timed_train(model: BaseAlgorithm, policy_state: dict, optimizer_state: dict) -> float:
    model.policy.load_state_dict(policy_state)
    model.policy.optimizer.load_state_dict(optimizer_state)
    start = time.perf_counter()
    model.train()
    return time.perf_counter() - start


def train_overhead(env_id: str, repeats: int = 7, n_steps: int = 2048, batch_size: int = 64, n_epochs: int = 10) -> dict:
    """
    Time R2VPO's and PPO's ``train()`` on the same rollout from the same weights.

    :param env_id: Gymnasium id
    :param repeats: Timed ``train()`` calls per algorithm, alternating which goes first
    :param n_steps: Rollout length (one env)
    :param batch_size: Minibatch size
    :param n_epochs: Epochs per ``train()``
    :return: The settings, the median seconds of each, ``median_ratio`` (median of the per-repeat ratios
        R2VPO / PPO) and ``ratio_of_medians``
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    common = dict(n_steps=n_steps, batch_size=batch_size, n_epochs=n_epochs, seed=0, device="cpu")
    ppo = PPO("MlpPolicy", env_id, **common)
    r2vpo = R2VPO("MlpPolicy", env_id, **common)
    for model in (ppo, r2vpo):
        model.set_logger(configure_logger(verbose=0))
    r2vpo.policy.load_state_dict(ppo.policy.state_dict())

    # One rollout with PPO's policy, then the very same buffer for both.
    ppo._setup_learn(n_steps, CallbackList([]))
    ppo.collect_rollouts(ppo.env, ppo._init_callback(None), ppo.rollout_buffer, n_rollout_steps=n_steps)
    r2vpo.rollout_buffer = copy.deepcopy(ppo.rollout_buffer)
    policy_state = copy.deepcopy(ppo.policy.state_dict())
    optimizer_state = copy.deepcopy(ppo.policy.optimizer.state_dict())

    times: dict[str, list[float]] = {"ppo": [], "r2vpo": []}
    for repeat in range(repeats):
        order = [("ppo", ppo), ("r2vpo", r2vpo)]
        if repeat % 2:
            order.reverse()
        for name, model in order:
            th.manual_seed(repeat)  # same minibatch order for both
            np.random.seed(repeat)
            times[name].append(_timed_train(model, policy_state, optimizer_state))
    for model in (ppo, r2vpo):
        model.env.close()
    ratios = np.array(times["r2vpo"]) / np.array(times["ppo"])
    return {
        "env_id": env_id,
        "repeats": repeats,
        "n_steps": n_steps,
        "batch_size": batch_size,
        "n_epochs": n_epochs,
        "ppo_median_s": float(np.median(times["ppo"])),
        "r2vpo_median_s": float(np.median(times["r2vpo"])),
        "median_ratio": float(np.median(ratios)),
        "ratio_of_medians": float(np.median(times["r2vpo"]) / np.median(times["ppo"])),
    }


def describe(result: dict) -> str:
    """One line for a result of :func:`train_overhead`."""
    return (
        f"{result['env_id']}: train() PPO {result['ppo_median_s']:.3f}s, R2VPO {result['r2vpo_median_s']:.3f}s, "
        f"median ratio R2VPO/PPO = {result['median_ratio']:.3f} over {result['repeats']} repeats"
    )
