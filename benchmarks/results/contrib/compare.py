"""
MaskableR2VPO vs MaskablePPO and RecurrentR2VPO vs RecurrentPPO, side by side: same tasks, budgets and seeds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results/contrib/compare.py            # everything, seeds 0 1 2
    .venv/bin/python benchmarks/results/contrib/compare.py --tasks CartPoleNoVel-v1 --seeds 0
    .venv/bin/python benchmarks/results/contrib/compare.py --seeds 3 4 5 --out benchmarks/results/contrib/fresh \
        --tasks InvalidActionEnvDiscrete PendulumNoVel-v1 --algos MaskablePPO MaskableR2VPO RecurrentPPO RecurrentR2VPO

Tasks (one process, one PyTorch thread; a finished run's JSON is kept, so a rerun continues where it stopped):

- ``InvalidActionEnvDiscrete`` (masked): sb3-contrib's invalid-action env, 70 actions, 55 masked at every step (the
  ``sb3_r2vpo/InvalidActionEnvDiscrete-v0`` task of ``r2vpo_mask.yml``), 10,000 steps. MaskablePPO with contrib's own
  setting for it (its performance test: gamma 0.4, defaults otherwise; rl_zoo3 has no ppo_mask entries);
  MaskableR2VPO with the packaged ``r2vpo_mask.yml`` entry.
- ``CartPoleNoVel-v1`` (velocities hidden), 50,000 steps, and ``PendulumNoVel-v1`` (observation cos θ, sin θ only),
  100,000 steps: RecurrentPPO with rl_zoo3's ``ppo_lstm.yml`` entry, RecurrentR2VPO with the packaged
  ``r2vpo_lstm.yml`` entry (the same entry with ``clip_range`` removed and ``variance_target`` added; for
  PendulumNoVel also without gSDE, and ``PENDULUM_AS_DERIVED`` runs the entry with gSDE as first derived). Both
  under ``VecNormalize`` (the entries' ``normalize: True``, with the entry's gamma, as rl_zoo3 sets it).

Evaluation: 10 deterministic episodes on a separate env (VecNormalize statistics copied from the training env,
frozen, rewards unnormalised; masked envs evaluated under their masks) each time training passes ``k · budget / 10``,
k = 1..10. Final = mean of the last 3 evaluations; AUC = mean of the 10 evaluations.
Writes ``runs/<task>/<algo>/seed<k>.json`` and ``summary.json`` / ``summary.md`` next to this file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from sb3_contrib import MaskablePPO, RecurrentPPO
from sb3_contrib.common.envs import InvalidActionEnvDiscrete
from sb3_contrib.common.maskable.evaluation import evaluate_policy as evaluate_masked
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from sb3_r2vpo import MaskableR2VPO, RecurrentR2VPO
from sb3_r2vpo.presets import get_preset
from sb3_r2vpo.zoo import MASKED_ENVS, packaged_hyperparams

HERE = Path(__file__).resolve().parent
MASKED_TASK = "InvalidActionEnvDiscrete"
MASKED_ENTRY = "sb3_r2vpo/InvalidActionEnvDiscrete-v0"
BUDGETS = {MASKED_TASK: 10_000, "CartPoleNoVel-v1": 50_000, "PendulumNoVel-v1": 100_000}
EVAL_POINTS = 10
EVAL_EPISODES = 10


def ppo_lstm_yml() -> Path:
    import rl_zoo3

    return Path(rl_zoo3.__file__).parent / "hyperparams" / "ppo_lstm.yml"


class Evaluations(BaseCallback):
    """Evaluates the model each time training passes the next of ``EVAL_POINTS`` evenly spaced step counts."""

    def __init__(self, budget: int, evaluate) -> None:
        super().__init__()
        self.marks = [budget * k // EVAL_POINTS for k in range(1, EVAL_POINTS + 1)]
        self.evaluate = evaluate
        self.results: list[tuple[int, float, float]] = []

    def _on_step(self) -> bool:
        while self.marks and self.num_timesteps >= self.marks[0]:
            self.marks.pop(0)
            mean, std = self.evaluate(self.model)
            self.results.append((self.num_timesteps, float(mean), float(std)))
        return True


def masked_run(algo: str, seed: int) -> tuple[Any, Any, dict]:
    _, env_kwargs = MASKED_ENVS[MASKED_ENTRY]
    if algo == "MaskablePPO":
        kwargs = {"gamma": 0.4}  # sb3-contrib's setting (tests/test_invalid_actions.py::test_identity)
        algorithm = MaskablePPO
    else:
        preset = get_preset(MASKED_ENTRY, path=packaged_hyperparams("r2vpo_mask"))
        kwargs = dict(preset.model_kwargs)
        algorithm = MaskableR2VPO
    env = make_vec_env(InvalidActionEnvDiscrete, n_envs=1, seed=seed, env_kwargs=env_kwargs)
    eval_env = make_vec_env(InvalidActionEnvDiscrete, n_envs=1, seed=10_000 + seed, env_kwargs=env_kwargs)
    model = algorithm("MlpPolicy", env, seed=seed, **kwargs)

    def evaluate(model):
        return evaluate_masked(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True, warn=False)

    return model, evaluate, {"env_kwargs": env_kwargs, **{k: repr(v) for k, v in kwargs.items()}}


def recurrent_run(task: str, algo: str, seed: int) -> tuple[Any, Any, dict]:
    import rl_zoo3.import_envs  # noqa: F401  (registers the NoVel tasks)

    algo, overrides = split_variant(algo)
    if algo == "RecurrentPPO":
        preset, algorithm, source = get_preset(task, path=ppo_lstm_yml()), RecurrentPPO, "rl_zoo3 ppo_lstm.yml"
    else:
        preset = get_preset(task, path=packaged_hyperparams("r2vpo_lstm"))
        algorithm, source = RecurrentR2VPO, "sb3_r2vpo r2vpo_lstm.yml"
    preset.model_kwargs.update(overrides)
    gamma = preset.model_kwargs.get("gamma", 0.99)
    env = make_vec_env(task, n_envs=preset.n_envs, seed=seed)
    eval_env = make_vec_env(task, n_envs=1, seed=10_000 + seed)
    if preset.normalize:
        env = VecNormalize(env, gamma=gamma)
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False, gamma=gamma)
    model = preset.make_model(seed=seed, env=env, algorithm=algorithm)

    def evaluate(model):
        if preset.normalize:
            eval_env.obs_rms = env.obs_rms.copy()
        return evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True, warn=False)

    entry = {"source": source, "n_envs": preset.n_envs, "normalize": preset.normalize}
    entry.update({key: repr(value) for key, value in preset.model_kwargs.items()})
    return model, evaluate, entry


# The entry as first derived from ppo_lstm.yml (gSDE kept, δ of r2vpo.yml's Pendulum-v1), before the measurement that
# took gSDE out of the packaged entry (see r2vpo_lstm.yml): run as a variant of the packaged one.
PENDULUM_AS_DERIVED = "RecurrentR2VPO[use_sde=True,sde_sample_freq=4,variance_target=0.01]"
ALGORITHMS = {
    MASKED_TASK: ("MaskablePPO", "MaskableR2VPO"),
    "CartPoleNoVel-v1": ("RecurrentPPO", "RecurrentR2VPO"),
    "PendulumNoVel-v1": ("RecurrentPPO", "RecurrentR2VPO", PENDULUM_AS_DERIVED),
}


def split_variant(algo: str) -> tuple[str, dict[str, Any]]:
    """``"Name[key=value,...]"`` → ``("Name", {key: value})`` (values as Python literals)."""
    if "[" not in algo:
        return algo, {}
    import ast

    name, inside = algo[:-1].split("[", 1)
    return name, {key: ast.literal_eval(value) for key, value in (item.split("=", 1) for item in inside.split(","))}


def run(task: str, algo: str, seed: int, out: Path) -> dict:
    path = out / "runs" / task / algo / f"seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    th.manual_seed(seed)
    if task == MASKED_TASK:
        model, evaluate, entry = masked_run(algo, seed)
    else:
        model, evaluate, entry = recurrent_run(task, algo, seed)
    budget = BUDGETS[task]
    callback = Evaluations(budget, evaluate)
    start = time.time()
    model.learn(budget, callback=callback)
    wall = time.time() - start
    returns = [mean for _, mean, _ in callback.results]
    result = {
        "task": task,
        "algo": algo,
        "seed": seed,
        "budget": budget,
        "env_steps": model.num_timesteps,
        "evaluations": callback.results,
        "final": float(np.mean(returns[-3:])),
        "auc": float(np.mean(returns)),
        "wall_s": round(wall, 1),
        "lagrange_multiplier": getattr(model, "lagrange_multiplier", None),
        "hyperparameters": entry,
        "versions": {"torch": th.__version__},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"{task} {algo} seed {seed}: final {result['final']:.1f}, AUC {result['auc']:.1f}, {wall:.0f} s", flush=True)
    return result


def summarise(results: list[dict], out: Path) -> None:
    rows, summary = [], {}
    for task, algos in ALGORITHMS.items():
        for algo in algos:
            runs = [r for r in results if r["task"] == task and r["algo"] == algo]
            if not runs:
                continue
            finals, aucs = [r["final"] for r in runs], [r["auc"] for r in runs]
            stats = {
                "seeds": [r["seed"] for r in runs],
                "final_mean": statistics.mean(finals),
                "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                "auc_mean": statistics.mean(aucs),
                "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
                "finals": finals,
                "aucs": aucs,
                "budget": runs[0]["budget"],
                "wall_s_mean": statistics.mean(r["wall_s"] for r in runs),
            }
            summary.setdefault(task, {})[algo] = stats
            rows.append(
                f"| {task} | {runs[0]['budget']:,} | {algo} | {stats['final_mean']:.1f} ± {stats['final_std']:.1f} | "
                f"{stats['auc_mean']:.1f} ± {stats['auc_std']:.1f} | {' / '.join(f'{f:.1f}' for f in finals)} | "
                f"{stats['wall_s_mean']:.0f} |"
            )
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    table = [
        "| task | steps | algorithm | final (mean ± std) | AUC (mean ± std) | final per seed | wall s / run |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    (out / "summary.md").write_text(
        "Final = mean of the last 3 of 10 evaluations (10 deterministic episodes each); AUC = mean of the 10; "
        f"seeds {sorted({r['seed'] for r in results})}; std over seeds (ddof 1).\n\n" + "\n".join(table) + "\n"
    )
    print("\n".join(table))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument(
        "--algos", nargs="+", default=None, help="only these algorithm names of ALGORITHMS (default: all of each task)"
    )
    args = parser.parse_args()
    th.set_num_threads(1)
    results = []
    for task in args.tasks:
        for seed in args.seeds:
            for algo in ALGORITHMS[task]:
                if args.algos is not None and algo not in args.algos:
                    continue
                results.append(run(task, algo, seed, args.out))
    summarise(results, args.out)


if __name__ == "__main__":
    main()
