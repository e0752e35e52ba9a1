"""
R2VPO with its r2vpo.yml entry against PPO with rl_zoo3's own ppo.yml entry, both trained through the zoo
launcher with the same budget, then evaluated deterministically on fresh episodes.

    python benchmarks/zoo_compare.py --envs CartPole-v1 Pendulum-v1 InvertedPendulum-v5 --seeds 0 1 --jobs 2

Every run is the zoo command line printed in the log and the result file; results already written are
skipped. MuJoCo -v5 tasks take rl_zoo3's -v4 (or -v2) PPO entry through a temporary config file, since the
zoo has none for -v5; the result names the entry used.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml


def ppo_config_for(env_id: str, folder: Path) -> tuple[list[str], str]:
    """
    Extra zoo arguments that give PPO its zoo entry for ``env_id``, and the entry's name: a -v5 task takes the
    entry of an older version (the benchmark runner's choice), written under the -v5 id to a temporary file.
    """
    from sb3_r2vpo.benchmark.algorithms import entry_candidates, zoo_hyperparams_file

    with open(zoo_hyperparams_file("ppo")) as file:
        entries = yaml.safe_load(file)
    source = next(candidate for candidate in entry_candidates(env_id) if candidate in entries)
    if source == env_id:
        return [], env_id
    path = folder / f"ppo_{env_id}.yml"
    path.write_text(yaml.safe_dump({env_id: entries[source]}))
    return ["-conf", str(path)], source


def evaluate(algo: str, env_id: str, run_dir: Path, seed: int, episodes: int) -> tuple[float, float]:
    """Deterministic return of the final model, with the run's frozen VecNormalize statistics if any."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    from sb3_r2vpo import R2VPO

    env = make_vec_env(env_id, n_envs=1, seed=10_000 + seed)
    stats = run_dir / env_id / "vecnormalize.pkl"
    if stats.exists():
        env = VecNormalize.load(str(stats), env)
        env.training, env.norm_reward = False, False
    model = {"r2vpo": R2VPO, "ppo": PPO}[algo].load(run_dir / f"{env_id}.zip", env=env, device="cpu")
    mean, std = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True)
    return float(mean), float(std)


def run_one(algo: str, env_id: str, seed: int, steps: int | None, episodes: int, out: Path) -> dict:
    result_path = out / f"{algo}_{env_id}_seed{seed}.json"
    log_folder = out / "logs" / f"seed{seed}"
    with tempfile.TemporaryDirectory() as scratch:
        extra, entry = ppo_config_for(env_id, Path(scratch)) if algo == "ppo" else ([], env_id)
        command = [sys.executable, "-m", "sb3_r2vpo.zoo", "train", "--algo", algo, "--env", env_id, "--seed", str(seed)]
        command += ["-f", str(log_folder), "--eval-freq", "-1", "--num-threads", "1", "--log-interval", "-2", *extra]
        if steps is not None:
            command += ["-n", str(steps)]
        log = out / f"{algo}_{env_id}_seed{seed}.log"
        with open(log, "w") as handle:
            subprocess.run(command, check=True, stdout=handle, stderr=subprocess.STDOUT)
    run_dirs = sorted((log_folder / algo).glob(f"{env_id}_*"), key=lambda path: int(path.name.rsplit("_", 1)[1]))
    mean, std = evaluate(algo, env_id, run_dirs[-1], seed, episodes)
    shown = [part if not part.startswith("/") else Path(part).name for part in command[1:]]
    result = {
        "algo": algo,
        "env_id": env_id,
        "entry": f"{'r2vpo.yml' if algo == 'r2vpo' else 'rl_zoo3 ppo.yml'}: {entry}",
        "seed": seed,
        "steps": steps,
        "final_mean_return": mean,
        "final_std_return": std,
        "command": "python " + shlex.join(shown),
    }
    result_path.write_text(json.dumps(result, indent=2))
    return result


def summarise(out: Path) -> str:
    results = [json.loads(path.read_text()) for path in sorted(out.glob("*.json"))]
    lines = [
        "| task | algorithm (entry) | budget | seeds | final return, mean ± std over seeds | per seed |",
        "|---|---|---|---|---|---|",
    ]
    for env_id in sorted({r["env_id"] for r in results}):
        for algo in ("r2vpo", "ppo"):
            rows = sorted((r for r in results if r["env_id"] == env_id and r["algo"] == algo), key=lambda r: r["seed"])
            if rows:
                values = np.array([r["final_mean_return"] for r in rows])
                lines.append(
                    f"| {env_id} | {algo} ({rows[0]['entry']}) | {rows[0]['steps'] or 'entry'} | {len(rows)} | "
                    f"{values.mean():.1f} ± {values.std():.1f} | {' / '.join(f'{v:.1f}' for v in values)} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "Pendulum-v1", "InvertedPendulum-v5"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=None, help="-n for every run (default: each entry's n_timesteps)")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/zoo_compare"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [
        (algo, env_id, seed)
        for env_id in args.envs
        for seed in args.seeds
        for algo in ("r2vpo", "ppo")
        if not (args.out / f"{algo}_{env_id}_seed{seed}.json").exists()
    ]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for result in pool.map(lambda job: run_one(*job, args.steps, args.eval_episodes, args.out), jobs):
            print(f"{result['command']}\n  -> {result['final_mean_return']:.1f}", flush=True)
    table = summarise(args.out)
    (args.out / "summary.md").write_text(f"Command: python benchmarks/zoo_compare.py {shlex.join(argv or [])}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
