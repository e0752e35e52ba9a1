"""
Tune R2VPO with Optuna (no RL Zoo needed). Run the same command in several terminals or on several
machines (with a shared ``--storage``) to add workers to one study. Running it again resumes the study (it says
so); a study is only resumed with the settings its trials were run with (env, --n-timesteps, --n-evaluations,
--n-eval-episodes): anything else is refused, so give another search its own --study-name.

    python -m sb3_r2vpo.tune --env Pendulum-v1 --n-trials 20 --n-timesteps 50000 --output best.yml
    python -m sb3_r2vpo.tune --env Pendulum-v1 --n-trials 100 --storage postgresql://optuna@db-host/optuna \\
        --study-name pendulum
"""

from __future__ import annotations

import argparse
import sys

import optuna
from optuna.trial import TrialState

from sb3_r2vpo.cli import add_torch_threads_argument
from sb3_r2vpo.tuning import DEFAULT_STORAGE, PRUNERS, SAMPLERS, TuningError, optimize


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="r2vpo-tune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", required=True, help="Gymnasium id")
    parser.add_argument("--n-trials", type=int, required=True, help="finished trials the study should hold in total")
    parser.add_argument("--n-timesteps", type=int, default=50_000, help="training budget per trial")
    parser.add_argument("--storage", default=None, help=f"Optuna storage URL (default: {DEFAULT_STORAGE})")
    parser.add_argument("--study-name", default=None, help="default: r2vpo-<env>")
    parser.add_argument("--n-evaluations", type=int, default=5)
    parser.add_argument("--n-eval-episodes", type=int, default=5)
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default="tpe")
    parser.add_argument("--pruner", choices=sorted(PRUNERS), default="median")
    parser.add_argument("--n-startup-trials", type=int, default=5)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--output", default=None, help="write the best trial here as an r2vpo.yml entry")
    parser.add_argument("--heartbeat-interval", type=int, default=30, help="seconds; 0 disables failure detection")
    parser.add_argument("--grace-period", type=int, default=90, help="seconds without heartbeat before a trial fails")
    parser.add_argument("--no-progress", action="store_true")
    add_torch_threads_argument(parser)
    args = parser.parse_args(argv)
    try:
        study = optimize(
            args.env,
            args.n_trials,
            storage=args.storage,
            study_name=args.study_name,
            n_timesteps=args.n_timesteps,
            n_evaluations=args.n_evaluations,
            n_eval_episodes=args.n_eval_episodes,
            sampler=args.sampler,
            pruner=args.pruner,
            n_startup_trials=args.n_startup_trials,
            seed=args.seed,
            output=args.output,
            show_progress=not args.no_progress,
            heartbeat_interval=args.heartbeat_interval or None,
            grace_period=args.grace_period,
            torch_threads=args.torch_threads,
        )
    except TuningError as error:
        raise SystemExit(f"r2vpo-tune: error: {error}") from None
    counts = {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState}
    print("trials: " + ", ".join(f"{n} {name}" for name, n in counts.items() if n))
    try:
        print(f"best: trial #{study.best_trial.number}, value {study.best_value:.2f}, params {study.best_trial.params}")
    except ValueError:
        print("no trial completed")
    if args.output:
        print(f"best entry written to {args.output}")


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    main(sys.argv[1:])
