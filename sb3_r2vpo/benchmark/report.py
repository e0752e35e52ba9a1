"""
The report: normalised scores aggregated with rliable (IQM and mean with 95% stratified-bootstrap CIs,
performance profiles, probability of improvement, sample-efficiency curves), per-task tables, env steps
to reach PPO's final return, and wall time per env step. Writes ``REPORT.md`` and PNG plots.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# Mean return of a uniformly random policy, 20 episodes (seeds 0-19), measured here with gymnasium 1.x.
RANDOM_SCORES = {
    "CartPole-v1": 22.9,
    "Pendulum-v1": -1245.9,
    "MountainCarContinuous-v0": -33.1,
    "InvertedDoublePendulum-v5": 52.4,
    "Hopper-v5": 24.8,
    "HalfCheetah-v5": -260.8,
    "DriftingPendulum-v1": -1194.7,
    "Walker2d-v5": 2.2,
    "Ant-v5": -19.5,
    "Humanoid-v5": 105.6,
    "Swimmer-v5": -3.1,
    "Reacher-v5": -43.9,
    "Pusher-v5": -149.9,
    "InvertedPendulum-v5": 4.5,
}
# The "solved" end of the scale: the task's maximum where it has one, else a published strong result
# (RL Zoo PPO/TRPO 1M-step rows in DESIGN.md, the best of them; gymnasium's reward thresholds otherwise).
REFERENCE_SCORES = {
    "CartPole-v1": 500.0,  # maximum
    "Pendulum-v1": -150.0,  # typical converged return
    "MountainCarContinuous-v0": 90.0,  # gymnasium's reward_threshold
    "InvertedDoublePendulum-v5": 9350.0,  # maximum (~9.35 per step for 1000 steps)
    "Hopper-v5": 3372.0,  # sb3-contrib TRPO 1M
    "HalfCheetah-v5": 5819.0,  # RL Zoo PPO 1M
    "DriftingPendulum-v1": -150.0,  # as Pendulum
    "Walker2d-v5": 4502.0,  # sb3-contrib TRPO 1M
    "Ant-v5": 1327.0,  # RL Zoo PPO 1M
    "Humanoid-v5": 5000.0,
    "Swimmer-v5": 350.0,
    "Reacher-v5": -3.75,  # gymnasium's reward_threshold
    "Pusher-v5": -20.0,
    "InvertedPendulum-v5": 1000.0,  # maximum
}
BASELINE = "ppo"
OURS = "r2vpo"


def normalize(score: float | np.ndarray, env_id: str) -> float | np.ndarray:
    """Min-max normalised score: 0 = random policy, 1 = the reference score of the task."""
    low, high = RANDOM_SCORES[env_id], REFERENCE_SCORES[env_id]
    return (np.asarray(score) - low) / (high - low)


def score_matrices(runs: list[dict]) -> tuple[dict[str, np.ndarray], list[str], dict[str, list[int]]]:
    """
    ``{algo: (n_seeds, n_tasks)}`` normalised final scores, over the tasks every algorithm finished and, per
    algorithm, the seeds it finished on all of them (rliable needs a full matrix).
    """
    by_algo: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        by_algo[run["algo"]][run["env_id"]][run["seed"]] = run["final_return"]
    tasks = sorted(set.intersection(*(set(per_task) for per_task in by_algo.values()))) if by_algo else []
    matrices, seeds_used = {}, {}
    for algo, per_task in by_algo.items():
        seeds = sorted(set.intersection(*(set(per_task[task]) for task in tasks))) if tasks else []
        if seeds:
            matrices[algo] = np.array([[normalize(per_task[task][seed], task) for task in tasks] for seed in seeds])
            seeds_used[algo] = seeds
    return matrices, tasks, seeds_used


def aggregate(matrices: dict[str, np.ndarray], reps: int = 2000, seed: int = 0) -> tuple[dict, dict]:
    """IQM and mean with 95% stratified-bootstrap CIs, computed by rliable."""
    from rliable import library as rly
    from rliable import metrics

    np.random.seed(seed)  # rliable's bootstrap draws from numpy's global generator
    estimates, intervals = rly.get_interval_estimates(
        matrices, lambda scores: np.array([metrics.aggregate_iqm(scores), metrics.aggregate_mean(scores)]), reps=reps
    )
    return estimates, intervals


def probability_of_improvement(matrices: dict[str, np.ndarray], reps: int = 2000, seed: int = 0) -> tuple[dict, dict]:
    """P(R2VPO > baseline) for every other algorithm, with 95% CIs (rliable)."""
    from rliable import library as rly
    from rliable import metrics

    pairs = {f"{OURS},{other}": (matrices[OURS], matrices[other]) for other in matrices if other != OURS and OURS in matrices}
    if not pairs:
        return {}, {}
    np.random.seed(seed)
    return rly.get_interval_estimates(pairs, metrics.probability_of_improvement, reps=reps)


def _first_crossing(steps: np.ndarray, returns: np.ndarray, target: float) -> float:
    """
    Env steps of the first evaluation after training started at or above ``target`` (inf if none). The
    untrained policy's evaluation does not count: on CartPole a freshly initialised deterministic policy can
    score 500, which says nothing about learning.
    """
    hit = np.nonzero((returns >= target) & (steps > 0))[0]
    return float(steps[hit[0]]) if len(hit) else np.inf


def steps_to_reach(runs: list[dict], target_algo: str = BASELINE) -> dict[tuple[str, str], tuple[float, float, int, int]]:
    """
    Per (task, algorithm): env steps at which the evaluation first reached ``target_algo``'s mean final return,
    as a fraction of ``target_algo``'s budget, read two ways: on the seed-averaged learning curve (robust to
    one lucky evaluation), and as the median over seeds of each run's first crossing; with (reached, runs).
    """
    finals = defaultdict(list)
    budgets = {}
    for run in runs:
        if run["algo"] == target_algo:
            finals[run["env_id"]].append(run["final_return"])
            budgets[run["env_id"]] = run["steps"]
    out = {}
    grouped = defaultdict(list)
    for run in runs:
        grouped[(run["env_id"], run["algo"])].append(run)
    for (env_id, algo), group in grouped.items():
        if env_id not in finals:
            continue
        target, budget = float(np.mean(finals[env_id])), budgets[env_id]
        fractions = [_first_crossing(run["curve"][:, 0], run["curve"][:, 2], target) / budget for run in group]
        grid = group[0]["curve"][:, 0]
        mean_curve = np.mean([np.interp(grid, run["curve"][:, 0], run["curve"][:, 2]) for run in group], axis=0)
        reached = int(np.isfinite(fractions).sum())
        on_mean = _first_crossing(grid, mean_curve, target) / budget
        out[(env_id, algo)] = (on_mean, float(np.median(fractions)), reached, len(fractions))
    return out


def sample_efficiency(runs: list[dict], tasks: list[str], grid: int = 21) -> dict[str, np.ndarray]:
    """``{algo: (n_seeds, n_tasks, grid)}`` normalised evaluation returns at fractions 0..1 of each run's budget."""
    fractions = np.linspace(0, 1, grid)
    per_algo: dict[str, dict[str, dict[int, np.ndarray]]] = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        if run["env_id"] in tasks:
            curve = run["curve"]
            values = np.interp(fractions * run["steps"], curve[:, 0], curve[:, 2])
            per_algo[run["algo"]][run["env_id"]][run["seed"]] = normalize(values, run["env_id"])
    out = {}
    for algo, per_task in per_algo.items():
        if all(task in per_task for task in tasks):
            seeds = sorted(set.intersection(*(set(per_task[task]) for task in tasks)))
            if seeds:
                out[algo] = np.array([[per_task[task][seed] for task in tasks] for seed in seeds])
    return out


def _plot_aggregates(estimates: dict, intervals: dict, path: Path) -> None:
    algos = sorted(estimates)
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.5 * len(algos) + 1.5))
    for column, (axis, name) in enumerate(zip(axes, ("IQM", "Mean"), strict=True)):
        for row, algo in enumerate(algos):
            low, high = intervals[algo][:, column]
            axis.barh(row, high - low, left=low, height=0.6, alpha=0.6)
            axis.plot([estimates[algo][column]] * 2, [row - 0.3, row + 0.3], color="k")
        axis.set_yticks(range(len(algos)), algos if column == 0 else [""] * len(algos))
        axis.set_title(name)
        axis.set_xlabel("normalised score")
        axis.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_profiles(matrices: dict[str, np.ndarray], path: Path) -> None:
    from rliable import library as rly
    from rliable import plot_utils

    taus = np.linspace(-0.1, 1.2, 61)
    profiles, cis = rly.create_performance_profile(matrices, taus)
    fig, axis = plt.subplots(figsize=(6, 4))
    plot_utils.plot_performance_profiles(
        profiles, taus, performance_profile_cis=cis, xlabel=r"normalised score $\tau$", ax=axis, labelsize="medium"
    )
    axis.legend(list(profiles), loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_efficiency(curves: dict[str, np.ndarray], path: Path, reps: int) -> None:
    from rliable import library as rly
    from rliable import metrics

    grid = next(iter(curves.values())).shape[-1]
    np.random.seed(0)
    estimates, intervals = rly.get_interval_estimates(
        curves, lambda scores: np.array([metrics.aggregate_iqm(scores[..., i]) for i in range(grid)]), reps=reps
    )
    fractions = np.linspace(0, 1, grid)
    fig, axis = plt.subplots(figsize=(6, 4))
    for algo in sorted(curves):
        axis.plot(fractions, estimates[algo], label=algo)
        axis.fill_between(fractions, intervals[algo][0], intervals[algo][1], alpha=0.2)
    axis.set_xlabel("fraction of the env-step budget")
    axis.set_ylabel("IQM normalised score")
    axis.grid(alpha=0.3)
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _aggregate_section(runs: list[dict], out_dir: Path, prefix: str, reps: int) -> list[str]:
    """rliable aggregates, profiles, P(improvement) and efficiency curves for ``runs``; plots named ``prefix*``."""
    matrices, tasks, seeds_used = score_matrices(runs)
    if not matrices:
        return ["No task was finished by every algorithm of this comparison yet.", ""]
    estimates, intervals = aggregate(matrices, reps)
    lines = [
        f"Tasks: {', '.join(tasks)}.",
        "",
        "| algorithm | seeds | IQM [95% CI] | mean [95% CI] |",
        "|---|---|---|---|",
    ]
    for algo in sorted(matrices):
        (iqm, mean), ci = estimates[algo], intervals[algo]
        lines.append(
            f"| {algo} | {len(seeds_used[algo])} | {iqm:.3f} [{ci[0, 0]:.3f}, {ci[1, 0]:.3f}] | "
            f"{mean:.3f} [{ci[0, 1]:.3f}, {ci[1, 1]:.3f}] |"
        )
    _plot_aggregates(estimates, intervals, out_dir / f"{prefix}aggregates.png")
    _plot_profiles(matrices, out_dir / f"{prefix}performance_profiles.png")
    lines += [
        "",
        f"![aggregates]({prefix}aggregates.png)",
        "",
        f"![performance profiles]({prefix}performance_profiles.png)",
        "",
    ]
    improvement, improvement_ci = probability_of_improvement(matrices, reps)
    if improvement:
        lines += ["| P(R2VPO > X) | estimate [95% CI] |", "|---|---|"]
        for pair, value in improvement.items():
            low, high = np.asarray(improvement_ci[pair]).ravel()
            lines.append(f"| {pair.split(',')[1]} | {float(np.squeeze(value)):.3f} [{low:.3f}, {high:.3f}] |")
        lines.append("")
    curves = sample_efficiency(runs, tasks)
    if curves:
        _plot_efficiency(curves, out_dir / f"{prefix}sample_efficiency.png", reps=max(reps // 4, 200))
        lines += [f"![sample efficiency]({prefix}sample_efficiency.png)", ""]
    return lines


def is_replay_variant(algo: str) -> bool:
    """Whether ``algo`` is R2VPO with replay (``r2vpo-k<K>``), which runs only on the replay study's tasks."""
    return algo.startswith(f"{OURS}-k")


def write_report(
    runs: list[dict], out_dir: Path, command: str, reps: int = 2000, runs_dir: str = "benchmarks/results"
) -> Path:
    """
    Write ``REPORT.md`` and its plots into ``out_dir``; returns the report's path. The main comparison leaves
    the replay variants (``r2vpo-k<K>``) out, so that the tasks they were not run on stay in it; they get their
    own section against PPO and R2VPO on the tasks they share.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Benchmark report",
        "",
        f"Produced by `{command}` from the runs under `{runs_dir}/runs/`.",
        "Scores are min-max normalised per task (0 = uniformly random policy, 1 = the reference score in",
        "`sb3_r2vpo/benchmark/report.py`); aggregates are over the tasks every algorithm of the comparison",
        "finished, with 95% stratified-bootstrap confidence intervals from rliable.",
        "",
        "## Main comparison",
        "",
    ]
    lines += _aggregate_section([run for run in runs if not is_replay_variant(run["algo"])], out_dir, "", reps)
    replay_runs = [run for run in runs if is_replay_variant(run["algo"])]
    if replay_runs:
        replay_tasks = {run["env_id"] for run in replay_runs}
        compared = [run for run in runs if run["env_id"] in replay_tasks and run["algo"] in (BASELINE, OURS)]
        lines += [
            "## Replay: R2VPO with replay_rollouts = K (r2vpo-k<K>; r2vpo is K = 0)",
            "",
        ]
        lines += _aggregate_section(compared + replay_runs, out_dir, "replay_", reps)

    lines += ["## Per task: final return, mean ± std over seeds (peak, and what was lost by the end)", ""]
    grouped = defaultdict(list)
    for run in runs:
        grouped[(run["env_id"], run["algo"])].append(run)
    lines += [
        "| task | algorithm | seeds | steps | final | peak | lost from peak | entry |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (env_id, algo), group in sorted(grouped.items()):
        finals = np.array([run["final_return"] for run in group])
        peaks = np.array([run["peak_return"] for run in group])
        copied = [run for run in group if "same_run_as" in run]
        entry = group[0]["entry"]
        if copied:
            entry += f"; same model as {copied[0]['same_run_as']}: {len(copied)} run(s) copied"
        lines.append(
            f"| {env_id} | {algo} | {len(group)} | {group[0]['steps']} | {finals.mean():.1f} ± {finals.std():.1f} | "
            f"{peaks.mean():.1f} | {np.mean(peaks - finals):.1f} | {entry} |"
        )
    lines += [
        "",
        f"## Env steps to reach {BASELINE.upper()}'s final mean return (fraction of PPO's budget)",
        "",
        "Read on the seed-averaged learning curve, and as the median over seeds of each run's first crossing",
        "(optimistic where evaluations are noisy: one lucky evaluation counts).",
        "",
    ]
    lines += [
        "| task | algorithm | seed-mean curve | median over seeds | runs that reached it |",
        "|---|---|---|---|---|",
    ]

    def shown(fraction: float) -> str:
        return f"{fraction:.2f}" if np.isfinite(fraction) else "not reached"

    for (env_id, algo), (on_mean, median, reached, total) in sorted(steps_to_reach(runs).items()):
        lines.append(f"| {env_id} | {algo} | {shown(on_mean)} | {shown(median)} | {reached}/{total} |")
    lines += ["", "## Wall time per env step, relative to PPO on the same task (median over seeds)", ""]
    lines += [
        "Training time only (evaluation excluded); runs made at different times on a shared machine compare roughly.",
        "",
    ]
    lines += ["| task | algorithm | s per 1k steps | ratio to PPO | ratio to R2VPO |", "|---|---|---|---|---|"]

    def median_per_step(key: tuple[str, str]) -> float:
        group = grouped.get(key)
        return float(np.median([run["seconds_per_step"] for run in group])) if group else float("nan")

    for env_id, algo in sorted(grouped):
        per_step = median_per_step((env_id, algo))
        lines.append(
            f"| {env_id} | {algo} | {1000 * per_step:.2f} | {per_step / median_per_step((env_id, BASELINE)):.2f} | "
            f"{per_step / median_per_step((env_id, OURS)):.2f} |"
        )
    path = out_dir / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path
