"""
python -m sb3_r2vpo.benchmark run [--suite quick|mujoco] [--envs ...] [--algos ...] [--seeds ...] [--steps N]
                                  [--jobs J | --ray ADDRESS] [--checkpoint-every N] [--out benchmarks/results]
python -m sb3_r2vpo.benchmark report [--out benchmarks/results ...] [--report-dir benchmarks] [--algos ...] [--ours NAME]
python -m sb3_r2vpo.benchmark overhead [--envs CartPole-v1 Pendulum-v1] [--repeats 7] [--out FILE.json]

`run` skips finished runs and resumes killed ones from their last checkpoint (taken every --checkpoint-every
evaluations; one without a checkpoint starts again), so the same command resumes. With --ray, each run is a task
on an existing Ray cluster (one CPU each); the results land in --out as with local processes. Algorithms: r2vpo,
r2vpo-matched, ppo, ppo-matched, trpo, spo, r2vpo-k<K> (R2VPO with replay_rollouts=K), r2vpo@FILE (R2VPO with
the task's entry of another hyperparameter file, e.g. the best.yml of `python -m sb3_r2vpo.tune --output`),
and variants of any of them:
'r2vpo[variance_target=0.02,dual_update_frequency=epoch]' is R2VPO's entry with those constructor arguments
(values in YAML syntax; quote the whole name in the shell). Budgets round up to whole rollouts (the runner
says so); each run is evaluated once before training and --eval-points times along it, at the first step past
each k·budget/points mark with the policy in use then (the last after the final update), and its
final score is the mean of the last 3 evaluations.

`report --ours NAME` reports a candidate (a variant or an r2vpo@FILE) as R2VPO: its runs stand in the tables where
r2vpo's would (the header says which runs they are), so that a candidate meets the baselines exactly as the
packaged entry would; `--algos` keeps only the algorithms named.

`overhead` times R2VPO's train() against PPO's on the same rollout buffer and weights (see .overhead).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from urllib.parse import unquote

from sb3_r2vpo.benchmark.algorithms import canonical_name
from sb3_r2vpo.benchmark.runner import RunSpec, load_runs, run_all
from sb3_r2vpo.benchmark.suites import ALGORITHMS, SUITES


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m sb3_r2vpo.benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    # Defaults in --help: a user who leaves out --seeds should see that five seeds run, two at a time.
    run = commands.add_parser("run", help="train and evaluate (resumable)", formatter_class=_DefaultsInHelp)
    run.add_argument("--suite", choices=sorted(SUITES), default="quick", help="the tasks and their step budgets")
    run.add_argument("--envs", nargs="+", default=None, help="override the suite's tasks")
    run.add_argument(
        "--algos", nargs="+", default=list(ALGORITHMS), help="algorithms or variants, e.g. 'r2vpo[variance_target=0.02]'"
    )
    run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="seeds (whole numbers >= 0), one run each")
    run.add_argument("--steps", type=int, default=None, help="override every task's budget (env steps)")
    run.add_argument("--eval-points", type=int, default=20, help="evaluations along each run, after step 0's")
    run.add_argument("--eval-episodes", type=int, default=10, help="deterministic episodes per evaluation")
    run.add_argument("--jobs", type=int, default=None, help="local processes at a time, not with --ray (default: 2)")
    run.add_argument(
        "--checkpoint-every",
        type=int,
        default=5,
        help="checkpoint each run after every N evaluations, to resume it there if it is killed (0: never)",
    )
    run.add_argument(
        "--ray",
        metavar="ADDRESS",
        default=None,
        help="run each run as a task on the Ray cluster at ADDRESS ('auto': the one this machine belongs to); "
        "--out must be on storage every node sees for a retried run to resume from its checkpoint "
        '(pip install "sb3-r2vpo[ray]")',
    )
    run.add_argument(
        "--ray-retries", type=_non_negative, default=3, help="times Ray retries a run whose worker or node is lost"
    )
    run.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results folder")
    report = commands.add_parser("report", help="aggregate finished runs into REPORT.md and plots")
    report.add_argument(
        "--out",
        type=Path,
        nargs="+",
        default=[Path("benchmarks/results")],
        help="results folder(s); several are pooled (e.g. two sets of fresh seeds), none may hold a run another does",
    )
    report.add_argument("--report-dir", type=Path, default=Path("benchmarks"))
    report.add_argument("--reps", type=int, default=2000, help="bootstrap repetitions")
    report.add_argument(
        "--algos", nargs="+", default=None, help="report only these algorithms (default: every one with runs in --out)"
    )
    report.add_argument(
        "--named-before",
        action="store_true",
        help="give renamed runs their former names (result.json's named_before), to redraw a table made before",
    )
    report.add_argument(
        "--ours",
        default="r2vpo",
        help="the algorithm reported as R2VPO, e.g. a candidate 'r2vpo@benchmarks/variants/x.yml' (default: r2vpo)",
    )
    overhead = commands.add_parser("overhead", help="time R2VPO's train() against PPO's on identical buffers")
    overhead.add_argument("--envs", nargs="+", default=["CartPole-v1", "Pendulum-v1"])
    overhead.add_argument("--repeats", type=_positive, default=7, help="alternating timed train() calls per algorithm")
    overhead.add_argument("--n-steps", type=_positive, default=2048)
    overhead.add_argument("--batch-size", type=_positive, default=64)
    overhead.add_argument("--n-epochs", type=_positive, default=10)
    overhead.add_argument("--threads", type=_positive, default=1, help="torch threads (1: less noise from other work)")
    overhead.add_argument("--out", type=Path, default=None, help="also write the results here as JSON")
    args = parser.parse_args(argv)

    if args.command == "overhead":
        _overhead(args, parser, argv)
        return

    if args.command == "run":
        budgets = SUITES[args.suite]
        envs = args.envs or list(budgets)
        try:
            from sb3_r2vpo.benchmark.envs import register_envs
            from sb3_r2vpo.cli import check_env_ids

            register_envs()
            check_env_ids(envs)  # a typo is one line and nothing is written, as in every entry point
            if args.jobs is not None and args.jobs < 1:
                raise ValueError(f"--jobs must be a whole number >= 1, got {args.jobs}")
            if args.jobs is not None and args.ray is not None:
                raise ValueError("--jobs and --ray exclude each other: on Ray, the cluster's CPUs set how many run at once")
            # A task, seed or algorithm named twice is one run (a repeat would otherwise count as its own copy).
            algos = list(dict.fromkeys(canonical_name(algo) for algo in args.algos))
            envs, seeds = list(dict.fromkeys(envs)), list(dict.fromkeys(args.seeds))
            specs = [
                RunSpec(
                    algo,
                    env_id,
                    seed,
                    budgets.get(env_id, 100_000) if args.steps is None else args.steps,
                    args.eval_points,
                    args.eval_episodes,
                    args.checkpoint_every,
                )
                for seed in seeds
                for env_id in envs
                for algo in algos
            ]
            failures = run_all(specs, args.out, args.jobs or 2, ray_address=args.ray, ray_retries=args.ray_retries)
        except ValueError as error:
            parser.exit(2, f"{parser.prog}: error: {error}\n")  # one line: nothing was trained or written
        if failures:
            raise SystemExit(f"{len(failures)} run(s) failed; rerun the same command to retry them")
    else:
        from sb3_r2vpo.benchmark.report import write_report

        try:
            runs, ours = _runs_to_report(_pooled_runs(args.out, args.named_before), args.algos, args.ours)
        except ValueError as error:
            parser.exit(2, f"{parser.prog}: error: {error}\n")
        path = write_report(
            runs,
            args.report_dir,
            "python -m sb3_r2vpo.benchmark " + shlex.join(argv),
            args.reps,
            runs_dir=" + ".join(out.as_posix() for out in args.out),
            ours_name=ours,
        )
        print(f"wrote {path}")


def _pooled_runs(roots: list[Path], named_before: bool) -> list[dict]:
    """The finished runs of every folder in ``roots``; a run (algorithm, task, seed) in two of them is refused."""
    runs, seen = [], {}
    for root in roots:
        for run in load_runs(root, named_before):
            key = (run["algo"], run["env_id"], run["seed"])
            if key in seen:
                raise ValueError(f"{key[0]} on {key[1]} seed {key[2]} is in both {seen[key]} and {root}: pool disjoint seeds")
            seen[key] = root
            runs.append(run)
    return runs


def _runs_to_report(runs: list[dict], algos: list[str] | None, ours: str) -> tuple[list[dict], str]:
    """
    The runs ``report`` aggregates: those of ``algos`` (all when ``None``), with ``ours``'s relabelled ``r2vpo``
    (the name every table reads as R2VPO); returns them and ``ours``'s stored name.

    :raise ValueError: a named algorithm has no runs, or ``ours`` is not ``r2vpo`` while r2vpo's own runs are kept
        (two algorithms would share a name)
    """
    from sb3_r2vpo.benchmark.report import OURS

    ours = canonical_name(ours)
    available = {run["algo"] for run in runs}
    wanted = None if algos is None else {canonical_name(algo) for algo in algos} | {ours}
    missing = sorted((wanted or {ours}) - available)
    if missing:  # named as typed (a file's "/" not written %2F)
        raise ValueError(
            f"no runs of {', '.join(map(unquote, missing))} in the results; "
            f"algorithms there: {', '.join(sorted(map(unquote, available)))}"
        )
    if wanted is not None:
        runs = [run for run in runs if run["algo"] in wanted]
    if ours != OURS:
        if any(run["algo"] == OURS for run in runs):
            raise ValueError(
                f"--ours {unquote(ours)}: leave {OURS}'s own runs out with --algos, or both would be called {OURS}"
            )
        runs = [{**run, "algo": OURS} if run["algo"] == ours else run for run in runs]
    return runs, ours


class _DefaultsInHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, except where there is none (``None``: the help says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


def _overhead(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> None:
    import torch as th

    from sb3_r2vpo.benchmark.envs import register_envs
    from sb3_r2vpo.benchmark.overhead import describe, train_overhead
    from sb3_r2vpo.presets import check_env_id

    register_envs()
    try:
        for env_id in args.envs:
            check_env_id(env_id)
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    th.set_num_threads(args.threads)
    results = []
    for env_id in args.envs:
        results.append(train_overhead(env_id, args.repeats, args.n_steps, args.batch_size, args.n_epochs))
        print(describe(results[-1]), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = "python -m sb3_r2vpo.benchmark " + shlex.join(argv)
        args.out.write_text(json.dumps({"command": command, "results": results}, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
