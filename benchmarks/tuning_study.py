"""
A short real Optuna study of R2VPO, then the best trial against R2VPO's packaged entry and PPO's zoo entry,
all at the same per-run budget and re-evaluated on fresh seeds.

    python benchmarks/tuning_study.py --env Pendulum-v1 --n-trials 20 --n-timesteps 30000 --seeds 100 101 102

The study lives in ``<out>/study.db`` (SQLite) and resumes; re-evaluations already written are skipped.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch as th
from optuna.trial import TrialState
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.utils import LinearSchedule

from sb3_r2vpo.presets import get_preset, r2vpo_only_arguments
from sb3_r2vpo.tuning import optimize

PPO_ZOO_CLIP = {"Pendulum-v1": 0.2, "CartPole-v1": LinearSchedule(0.2, 0.0, 1.0)}


def evaluate_setting(name: str, env_id: str, build, seeds: list[int], steps: int, episodes: int, out: Path) -> list[float]:
    values = []
    for seed in seeds:
        path = out / f"{name}_seed{seed}.json"
        if not path.exists():
            th.set_num_threads(1)
            model = build(seed)
            model.learn(total_timesteps=steps)
            preset = get_preset(env_id)
            mean, _ = evaluate_policy(model, preset.make_env(seed=10_000 + seed, training=False), n_eval_episodes=episodes)
            path.write_text(json.dumps({"setting": name, "seed": seed, "final_mean_return": float(mean)}))
        values.append(json.loads(path.read_text())["final_mean_return"])
    return values


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-v1", choices=sorted(PPO_ZOO_CLIP))
    parser.add_argument("--n-trials", type=int, default=20)
    parser.add_argument("--n-timesteps", type=int, default=30_000)
    parser.add_argument("--seeds", nargs="+", type=int, default=[100, 101, 102])
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tuning_study"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    th.set_num_threads(1)
    study = optimize(
        args.env,
        args.n_trials,
        storage=f"sqlite:///{args.out / 'study.db'}",
        study_name=f"r2vpo-{args.env}",
        n_timesteps=args.n_timesteps,
        seed=0,
        output=args.out / "best.yml",
        show_progress=False,
    )
    states = {state.name: len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState}

    preset = get_preset(args.env)
    tuned = get_preset(args.env, path=args.out / "best.yml")
    r2vpo_only = r2vpo_only_arguments()
    ppo_kwargs = {k: v for k, v in preset.model_kwargs.items() if k not in r2vpo_only}
    settings = {
        "r2vpo_tuned": lambda seed: tuned.make_model(seed=seed),
        "r2vpo_packaged": lambda seed: preset.make_model(seed=seed),
        "ppo_zoo": lambda seed: PPO(
            preset.policy, preset.make_env(seed), seed=seed, clip_range=PPO_ZOO_CLIP[args.env], **ppo_kwargs
        ),
    }
    lines = [
        f"Command: python benchmarks/tuning_study.py {shlex.join(argv)}",
        "",
        f"Study: {args.n_trials} finished trials wanted, {args.n_timesteps} steps each, TPE sampler, median pruner; "
        f"trial states: {', '.join(f'{k.lower()} {v}' for k, v in states.items() if v)}.",
        f"Best trial #{study.best_trial.number}: last evaluation {study.best_value:.1f} (5 episodes, inside the study).",
        "",
        f"Re-evaluated on seeds {args.seeds}, {args.n_timesteps} steps each, {args.eval_episodes} deterministic episodes:",
        "",
        "| setting | mean ± std over seeds | per seed |",
        "|---|---|---|",
    ]
    for name, build in settings.items():
        values = np.array(evaluate_setting(name, args.env, build, args.seeds, args.n_timesteps, args.eval_episodes, args.out))
        lines.append(f"| {name} | {values.mean():.1f} ± {values.std():.1f} | {' / '.join(f'{v:.1f}' for v in values)} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
