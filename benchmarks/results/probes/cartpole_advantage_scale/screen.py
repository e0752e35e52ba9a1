"""CartPole's late collapse (issue 13): does the advantage scale cause it? Three arms on screening seeds.

    python benchmarks/results/probes/cartpole_advantage_scale/screen.py ARM SEED [SEED ...] >> results.jsonl

ARM: ``base`` (the packaged entry: advantages normalised per minibatch, as PPO's), ``nonorm``
(``normalize_advantage=False``: raw advantages) or ``runrms`` (raw advantages minus the rollout's mean, divided
by the root of the mean of all rollouts' advantage variances so far: a scale that remembers the signal, so that a
plateau's critic noise stays small instead of being scaled to unit size). 50,000 steps (the quick budget); 20
evaluations of 10 deterministic episodes (env seeds 10,000–10,009) plus one before training; final = mean of
the last 3, AUC = mean of all. One line of JSON per run. Seeds 0–9 and 30–39: screening seeds, reported nowhere
as evidence.
"""

import json
import sys

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback

from sb3_r2vpo.benchmark.algorithms import configure

STEPS, POINTS, EPISODES = 50_000, 20, 10
ALGOS = {"base": "r2vpo", "nonorm": "r2vpo[normalize_advantage=False]", "runrms": "r2vpo[normalize_advantage=False]"}


def evaluate(model) -> float:
    env = gym.make("CartPole-v1")
    lengths = []
    for episode in range(EPISODES):
        obs, _ = env.reset(seed=10_000 + episode)
        done, length = False, 0
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, _, terminated, truncated, _ = env.step(int(action))
            length += 1
            done = terminated or truncated
        lengths.append(length)
    return float(np.mean(lengths))


class Evaluations(BaseCallback):
    def __init__(self, curve: list[float]) -> None:
        super().__init__()
        self.curve, self.next = curve, STEPS // POINTS

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next:
            self.next += STEPS // POINTS
            self.curve.append(evaluate(self.model))
        return True


def main() -> None:
    arm, seeds = sys.argv[1], [int(seed) for seed in sys.argv[2:]]
    th.set_num_threads(1)
    for seed in seeds:
        model = configure(ALGOS[arm], "CartPole-v1").make_model(seed)
        if arm == "runrms":
            train, variances = model.train, []

            def train_on_running_scale(model=model, train=train, variances=variances) -> None:
                advantages = model.rollout_buffer.advantages
                variances.append(float(np.var(advantages)))
                scale = np.sqrt(np.mean(variances)) + 1e-8
                model.rollout_buffer.advantages = (advantages - advantages.mean()) / scale
                train()

            model.train = train_on_running_scale
        curve = [evaluate(model)]
        model.learn(total_timesteps=STEPS, callback=Evaluations(curve))
        result = dict(arm=arm, seed=seed, final=float(np.mean(curve[-3:])), auc=float(np.mean(curve)))
        print(json.dumps({**result, "curve": [round(value) for value in curve]}), flush=True)


if __name__ == "__main__":
    main()
