"""How much ratio variance does PPO's clip let through? (issue 13, the δ-from-ε rule)

For each task, train PPO with the benchmark's own PPO entry and, after every update, measure on the whole
rollout the variance of the ratio between the updated policy and the one that collected the rollout — the
quantity R2VPO's constraint bounds by δ. Prints per-update values as JSON lines.

    python benchmarks/results/probes/ppo_ratio_variance/probe.py ENV_ID STEPS SEED > ENV_ID.jsonl
"""

import json
import sys

import torch as th

from sb3_r2vpo.benchmark.algorithms import configure
from sb3_r2vpo.benchmark.envs import register_envs

register_envs()

env_id, steps, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
th.set_num_threads(1)
model = configure("ppo", env_id).make_model(seed)
original_train = model.train


def train_and_measure() -> None:
    original_train()
    ratios = []
    with th.no_grad():
        for batch in model.rollout_buffer.get(None):
            actions = batch.actions
            if isinstance(model.action_space, __import__("gymnasium").spaces.Discrete):
                actions = actions.long().flatten()
            _, log_prob, _ = model.policy.evaluate_actions(batch.observations, actions)
            ratios.append(th.exp(log_prob - batch.old_log_prob))
    r = th.cat(ratios)
    clip = model.clip_range(model._current_progress_remaining)
    print(
        json.dumps(
            {
                "step": model.num_timesteps,
                "clip": clip,
                "var_mean": r.var(unbiased=False).item(),
                "var_one": ((r - 1) ** 2).mean().item(),
                "mean": r.mean().item(),
                "outside_clip": ((r - 1).abs() > clip).float().mean().item(),
            }
        ),
        flush=True,
    )


model.train = train_and_measure
model.learn(steps)
