"""
Overhead of R2VPO's ``train()`` over SB3 PPO's, on identical rollout buffers and identical starting weights,
in one process (ratios rather than seconds: the machine is shared).

    python benchmarks/train_overhead.py --envs CartPole-v1 Pendulum-v1 --repeats 7

PPO collects one rollout; both algorithms then run ``train()`` on that same buffer from the same weights,
alternating which goes first, ``--repeats`` times. Prints and writes the median ratio R2VPO / PPO.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.utils import configure_logger

from sb3_r2vpo import R2VPO


def _timed_train(model, policy_state: dict, optimizer_state: dict) -> float:
    model.policy.load_state_dict(policy_state)
    model.policy.optimizer.load_state_dict(optimizer_state)
    start = time.perf_counter()
    model.train()
    return time.perf_counter() - start


def measure(env_id: str, repeats: int, n_steps: int, batch_size: int, n_epochs: int) -> dict:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "Pendulum-v1"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--n-steps", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: less noise from the other core)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_overhead.json"))
    args = parser.parse_args(argv)
    th.set_num_threads(args.threads)
    results = [measure(env_id, args.repeats, args.n_steps, args.batch_size, args.n_epochs) for env_id in args.envs]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"command": "python benchmarks/train_overhead.py " + " ".join(argv or []), "results": results}, indent=2)
    )
    for result in results:
        print(
            f"{result['env_id']}: train() PPO {result['ppo_median_s']:.3f}s, R2VPO {result['r2vpo_median_s']:.3f}s, "
            f"median ratio R2VPO/PPO = {result['median_ratio']:.3f} over {result['repeats']} repeats"
        )


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
