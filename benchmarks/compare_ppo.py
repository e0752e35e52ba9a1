"""
R2VPO against SB3 PPO with the same hyperparameters otherwise (R2VPO's packaged entry, with PPO's clip in
place of the variance brake), several seeds, final deterministic evaluation.

    python benchmarks/compare_ppo.py --envs CartPole-v1 Pendulum-v1 --seeds 0 1 2 --jobs 2

Each finished run is one JSON file under ``--out``; runs already there are skipped, so a killed
invocation resumes. The summary table is printed and written to ``<out>/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.utils import LinearSchedule

from sb3_r2vpo.presets import get_preset, r2vpo_only_arguments

# PPO's clip from rl_zoo3 2.9's ppo.yml entry of each task (the rest of the entry is shared with r2vpo.yml).
PPO_CLIP = {
    "CartPole-v1": LinearSchedule(0.2, 0.0, 1.0),
    "Pendulum-v1": 0.2,
}


def run_one(algo: str, env_id: str, seed: int, steps: int | None, eval_episodes: int, out: Path) -> dict:
    th.set_num_threads(1)
    preset = get_preset(env_id)
    budget = preset.n_timesteps if steps is None else steps
    env = preset.make_env(seed=seed)
    if algo == "r2vpo":
        model = preset.make_model(seed=seed, env=env)
    else:
        r2vpo_only = r2vpo_only_arguments()
        kwargs = {key: value for key, value in preset.model_kwargs.items() if key not in r2vpo_only}
        model = PPO(preset.policy, env, seed=seed, clip_range=PPO_CLIP[env_id], **kwargs)
    start = time.perf_counter()
    model.learn(total_timesteps=budget)
    seconds = time.perf_counter() - start
    eval_env = preset.make_env(seed=10_000 + seed, training=False)
    mean_return, std_return = evaluate_policy(model, eval_env, n_eval_episodes=eval_episodes, deterministic=True)
    result = {
        "algo": algo,
        "env_id": env_id,
        "seed": seed,
        "timesteps": int(model.num_timesteps),
        "final_mean_return": float(mean_return),
        "final_std_return": float(std_return),
        "train_seconds": seconds,
        "lagrange_multiplier": getattr(model, "lagrange_multiplier", None),
    }
    path = out / f"{algo}_{env_id}_seed{seed}.json"
    path.with_suffix(".tmp").write_text(json.dumps(result, indent=2))
    path.with_suffix(".tmp").replace(path)  # atomic: a killed run leaves no half-written result
    return result


def summarise(out: Path, envs: list[str], seeds: list[int]) -> str:
    results = [json.loads(path.read_text()) for path in sorted(out.glob("*.json"))]
    results = [r for r in results if r["seed"] in seeds]
    lines = [
        "| task | algorithm | seeds | final return (mean ± std over seeds) | per seed |",
        "|---|---|---|---|---|",
    ]
    for env_id in envs:
        for algo in ("r2vpo", "ppo"):
            rows = [r for r in results if r["env_id"] == env_id and r["algo"] == algo]
            if not rows:
                continue
            values = np.array([r["final_mean_return"] for r in sorted(rows, key=lambda r: r["seed"])])
            per_seed = " / ".join(f"{v:.1f}" for v in values)
            lines.append(f"| {env_id} | {algo} | {len(values)} | {values.mean():.1f} ± {values.std():.1f} | {per_seed} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "Pendulum-v1"], choices=sorted(PPO_CLIP))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="env steps per run (default: the entry's n_timesteps)")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compare_ppo"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    todo = [
        (algo, env_id, seed)
        for env_id in args.envs
        for seed in args.seeds
        for algo in ("r2vpo", "ppo")
        if not (args.out / f"{algo}_{env_id}_seed{seed}.json").exists()
    ]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, *job, args.steps, args.eval_episodes, args.out) for job in todo]
        for future in futures:
            result = future.result()
            print(
                f"{result['algo']:>6} {result['env_id']} seed {result['seed']}: {result['final_mean_return']:.1f}", flush=True
            )
    table = summarise(args.out, args.envs, args.seeds)
    (args.out / f"summary_seeds{'-'.join(map(str, args.seeds))}.md").write_text(
        f"Command: python benchmarks/compare_ppo.py {' '.join(argv or [])}\n\n{table}\n"
    )
    print(table)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
