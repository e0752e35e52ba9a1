"""
CartPole failure probe (issue 13): R2VPO from the packaged entry (plus JSON overrides), 50k steps, the SB3
logger's per-update ``train/`` keys to ``<tag>/seed<S>/progress.csv``, 20 deterministic episodes at the end.

    python benchmarks/results/probes/cartpole_multiplier/probe.py 0-9 '{}' packaged
    python benchmarks/results/probes/cartpole_multiplier/probe.py 0-4 \\
        '{"dual_update_frequency": "rollout", "lagrange_multiplier_floor": 0.5}' rollout_floor
"""

import json
import sys
from pathlib import Path

import torch as th
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure

from sb3_r2vpo.presets import get_preset

th.set_num_threads(1)
first, last = (int(part) for part in sys.argv[1].split("-"))
overrides = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
tag = sys.argv[3] if len(sys.argv) > 3 else "packaged"
for seed in range(first, last + 1):
    out = Path(__file__).parent / tag / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    preset = get_preset("CartPole-v1")
    model = preset.make_model(seed=seed, **overrides)
    model.set_logger(configure(str(out), ["csv"]))
    model.learn(50_000)
    mean, std = evaluate_policy(model, preset.make_env(seed=seed + 10_000, training=False), n_eval_episodes=20)
    (out / "final.json").write_text(json.dumps({"seed": seed, "mean": mean, "std": std}))
    print(tag, seed, mean, flush=True)
