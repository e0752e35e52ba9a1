"""
The main job: train R2VPO on one task with its packaged hyperparameters, evaluate it, save the model and a
learning-curve plot.

    python -m sb3_r2vpo.train                       # CartPole-v1, 100k steps, into runs/
    python -m sb3_r2vpo.train --env Pendulum-v1 --steps 50000 --seed 3 --out runs/pendulum

Everything that can be checked (the env id, the entry, the model's arguments, the env's optional dependencies)
is checked before the output folder is created: an error is one line and leaves nothing written. Training uses
one PyTorch thread unless ``--torch-threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gymnasium as gym
import matplotlib
import numpy as np
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from sb3_r2vpo.cli import EXTRAS_HINT, add_torch_threads_argument, check_env_ids, set_torch_threads
from sb3_r2vpo.presets import get_preset

matplotlib.use("Agg")
import matplotlib.pyplot as plt


class SetupError(ValueError):
    """The run cannot start; the message is one line, and nothing was written."""


def plot_learning_curve(evaluations_file: Path, output: Path, title: str) -> None:
    """Draw the mean ± std deterministic evaluation return against env steps from an EvalCallback ``.npz``."""
    data = np.load(evaluations_file)
    steps, results = data["timesteps"], data["results"]
    mean, std = results.mean(axis=1), results.std(axis=1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, mean, label="R2VPO (deterministic eval)")
    ax.fill_between(steps, mean - std, mean + std, alpha=0.25)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)


def run(env_id: str, steps: int | None, seed: int, out: Path, eval_points: int, eval_episodes: int, progress: bool) -> dict:
    """
    Train, evaluate and save; returns the summary that is also written to ``summary.json``.

    :raises SetupError: (one line) an unknown env id, no or a bad entry for it, an argument R2VPO refuses, or an
        env whose optional dependency is missing; raised before ``out`` is created, so nothing is written
    """
    try:
        check_env_ids([env_id])
        preset = get_preset(env_id)
        budget = preset.n_timesteps if steps is None else steps
        model = preset.make_model(seed=seed)
        eval_env = preset.make_env(seed=seed + 10_000, training=False)
    except gym.error.DependencyNotInstalled as error:
        raise SetupError(f"{env_id}: {error}; {EXTRAS_HINT}") from None
    except KeyError as error:  # no entry: its message is the first argument (str() would quote it)
        raise SetupError(error.args[0]) from None
    except (ValueError, TypeError, gym.error.Error) as error:
        raise SetupError(str(error)) from None
    out.mkdir(parents=True, exist_ok=True)
    # EvalCallback counts calls, one per vectorised step of all n_envs.
    eval_freq = max(budget // (eval_points * preset.n_envs), 1)
    callback = EvalCallback(eval_env, n_eval_episodes=eval_episodes, eval_freq=eval_freq, log_path=str(out), verbose=0)
    model.learn(total_timesteps=budget, callback=callback, progress_bar=progress)

    mean_return, std_return = evaluate_policy(model, eval_env, n_eval_episodes=eval_episodes, deterministic=True)
    model_path = out / "model.zip"
    model.save(model_path)
    if isinstance(model.get_env(), VecNormalize):
        model.get_env().save(str(out / "vecnormalize.pkl"))
    plot_path = out / "learning_curve.png"
    plot_learning_curve(out / "evaluations.npz", plot_path, f"R2VPO on {env_id} (seed {seed})")
    summary = {
        "env_id": env_id,
        "seed": seed,
        "timesteps": int(model.num_timesteps),
        "final_mean_return": float(mean_return),
        "final_std_return": float(std_return),
        "lagrange_multiplier": model.lagrange_multiplier,
        "model": str(model_path),
        "learning_curve": str(plot_path),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="r2vpo-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="CartPole-v1", help="task with an entry in r2vpo.yml (default: CartPole-v1)")
    parser.add_argument("--steps", type=int, default=None, help="env steps (default: the entry's n_timesteps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<env>-seed<seed>)")
    parser.add_argument("--eval-points", type=int, default=20, help="evaluations along training")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_torch_threads_argument(parser)
    args = parser.parse_args(argv)
    for name in ("steps", "eval_points", "eval_episodes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    out = args.out if args.out is not None else Path("runs") / f"{args.env}-seed{args.seed}"
    try:
        set_torch_threads(args.torch_threads)
    except ValueError as error:
        parser.error(str(error))
    try:
        summary = run(args.env, args.steps, args.seed, out, args.eval_points, args.eval_episodes, not args.no_progress)
    except SetupError as error:
        raise SystemExit(f"r2vpo-train: error: {error}") from None
    print(
        f"R2VPO on {summary['env_id']}: {summary['final_mean_return']:.1f} ± {summary['final_std_return']:.1f} "
        f"after {summary['timesteps']} steps (λ = {summary['lagrange_multiplier']:.3g})\n"
        f"model: {summary['model']}\nlearning curve: {summary['learning_curve']}"
    )


if __name__ == "__main__":
    main()
