"""
The report (protocol v2): normalised scores aggregated with rliable (IQM and mean with 95% stratified-bootstrap
CIs, performance profiles, probability of improvement, sample-efficiency curves) on three per-run metrics, the
final score (mean of the last 3 evaluations), the area under the learning curve and the peak-to-final loss;
per-task tables with R2VPO − X differences (bootstrap CI, Welch's p, a verdict only where the CI excludes 0),
env steps to reach PPO's final score, and wall time per env step. Writes ``REPORT.md`` and PNG plots.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

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
# The final score of a run is the mean of its last FINAL_POINTS evaluations: one evaluation is noisy (Hopper
# 926 at 150,000 steps and 738 sixteen steps later; MountainCarContinuous flips between about +90 and -90).
FINAL_POINTS = 3
# Fixed seed of every bootstrap in the report, so that a report is reproducible.
BOOTSTRAP_SEED = 0
# Per-task verdicts: a win or a loss needs the bootstrap CI to exclude 0 and Welch's p below SIGNIFICANCE,
# with at least MIN_SEEDS seeds on each side.
SIGNIFICANCE = 0.05
MIN_SEEDS = 3


def normalize(score: float | np.ndarray, env_id: str) -> float | np.ndarray:
    """Min-max normalised score: 0 = random policy, 1 = the reference score of the task."""
    low, high = RANDOM_SCORES[env_id], REFERENCE_SCORES[env_id]
    return (np.asarray(score) - low) / (high - low)


# Per-run metrics, on a curve of rows (env_steps, train_seconds, eval_return_mean, eval_return_std).


def _trained_rows(curve: np.ndarray) -> np.ndarray:
    """The evaluations made after training started (all of them if there are none: a curve of one point)."""
    curve = np.asarray(curve, dtype=float)
    trained = curve[curve[:, 0] > 0]
    return trained if len(trained) else curve


def final_score(curve: np.ndarray, last: int = FINAL_POINTS) -> float:
    """
    A run's final score: the mean return of its last ``last`` evaluations. Only evaluations made after training
    started count, so on a curve this short (``last`` or fewer points) the untrained policy is left out.
    """
    if last < 1:
        raise ValueError(f"`last` must be >= 1, got {last}")
    return float(np.mean(_trained_rows(curve)[-last:, 2]))


def last_score(curve: np.ndarray) -> float:
    """The return of the last evaluation (protocol v1's "final")."""
    return float(np.asarray(curve, dtype=float)[-1, 2])


def learning_curve_area(curve: np.ndarray, env_id: str | None = None) -> float:
    """
    Area under the learning curve: the mean evaluation return over all evaluation points of the run, the one
    before training (step 0) included; normalised for ``env_id`` if given, in return units otherwise.
    """
    returns = np.asarray(curve, dtype=float)[:, 2]
    return float(np.mean(normalize(returns, env_id) if env_id else returns))


def peak_score(curve: np.ndarray) -> float:
    """The best evaluation after training started (the untrained policy's does not count, as in steps to reach)."""
    return float(np.max(_trained_rows(curve)[:, 2]))


def peak_to_final(curve: np.ndarray, env_id: str | None = None, last: int = FINAL_POINTS) -> float:
    """
    What a run lost between its best evaluation and its end: ``peak_score − final_score`` (never negative,
    since the final window is part of the evaluations the peak is taken over); normalised for ``env_id`` if
    given, in return units otherwise.
    """
    peak, final = peak_score(curve), final_score(curve, last)
    if env_id:
        peak, final = normalize(peak, env_id), normalize(final, env_id)
    return float(peak - final)


def trained_steps(run: dict) -> float:
    """
    The env steps a run actually trained: its recorded ``env_steps`` (budgets round up to whole rollouts, so it
    can exceed ``steps``), at least its curve's last evaluation, ``steps`` if neither is known.
    """
    curve = run.get("curve")
    last_evaluation = float(curve[-1, 0]) if curve is not None and len(curve) else 0.0
    return max(float(run.get("env_steps") or 0), last_evaluation) or float(run["steps"])


# The normalised per-run value behind each aggregate.
METRICS: dict[str, Callable[[dict], float]] = {
    "final": lambda run: float(normalize(final_score(run["curve"]), run["env_id"])),
    "auc": lambda run: learning_curve_area(run["curve"], run["env_id"]),
    "peak_to_final": lambda run: peak_to_final(run["curve"], run["env_id"]),
}


# Per-task significance.


def bootstrap_difference_ci(
    a: np.ndarray, b: np.ndarray, reps: int = 2000, seed: int = BOOTSTRAP_SEED, confidence: float = 0.95
) -> tuple[float, float]:
    """
    Percentile-bootstrap confidence interval of ``mean(a) − mean(b)``: ``a`` and ``b`` (e.g. the seeds of two
    algorithms on one task) are each resampled with replacement, independently, ``reps`` times, with a numpy
    Generator seeded ``seed``.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    differences = a[rng.integers(0, len(a), size=(reps, len(a)))].mean(axis=1) - b[
        rng.integers(0, len(b), size=(reps, len(b)))
    ].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(differences, [tail, 100 - tail])
    return float(low), float(high)


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances) of ``a`` against ``b``; nan under 2 samples each."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant samples: scipy answers nan or 0 and warns
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def verdict(low: float, high: float, seeds: int | str, p: float = math.nan, alpha: float = SIGNIFICANCE) -> str:
    """
    The verdict on R2VPO − X: a "win" or a "loss" only where its bootstrap CI [``low``, ``high``] excludes 0 and,
    when Welch's ``p`` is known, ``p < alpha`` as well (the percentile bootstrap of a mean over a few seeds is
    too narrow: its spread shrinks by √((n−1)/n) and it uses normal, not t, quantiles, so at 5 seeds it calls
    differences that Welch's test puts at p ≈ 0.1). Otherwise "no significant difference at ``seeds`` seeds".
    """
    if (low > 0 or high < 0) and not p >= alpha:
        return "win" if low > 0 else "loss"
    return f"no significant difference at {seeds} seeds"


def format_p(p: float) -> str:
    """A p-value for a table: three decimals, ``<0.001`` below that, ``n/a`` where undefined."""
    if math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def compare_on_task(ours: np.ndarray, other: np.ndarray, reps: int, seed: int = BOOTSTRAP_SEED) -> dict:
    """
    R2VPO − X on one task: difference of means, its bootstrap 95% CI, Welch's p and the verdict (none under
    ``MIN_SEEDS`` seeds on either side: a resampled mean of one or two seeds takes one to three values).
    """
    ours, other = np.asarray(ours, dtype=float), np.asarray(other, dtype=float)
    low, high = bootstrap_difference_ci(ours, other, reps, seed)
    p = welch_p(ours, other)
    seeds = str(len(ours)) if len(ours) == len(other) else f"{len(ours)} vs {len(other)}"
    if min(len(ours), len(other)) < MIN_SEEDS:
        decided = f"too few seeds ({seeds}) to test"
    else:
        decided = verdict(low, high, seeds, p)
    return {"difference": float(ours.mean() - other.mean()), "ci": (low, high), "p": p, "verdict": decided}


def per_task_comparisons(runs: list[dict], reps: int = 2000, ours: str = OURS) -> list[dict]:
    """
    For every task and every other algorithm X run on it, ``ours`` − X on the final score and on the AUC
    (both in return units: normalisation is affine per task, so CIs, p and verdicts are the same either way).
    """
    grouped = defaultdict(list)
    for run in runs:
        grouped[(run["env_id"], run["algo"])].append(run)
    rows = []
    for (env_id, algo), group in sorted(grouped.items()):
        if algo == ours or (env_id, ours) not in grouped:
            continue
        mine = grouped[(env_id, ours)]
        row = {"env_id": env_id, "algo": algo, "seeds": (len(mine), len(group))}
        row["same_runs"] = all(run.get("same_run_as") == ours for run in group)
        for name, value in (
            ("final", lambda run: final_score(run["curve"])),
            ("auc", lambda run: learning_curve_area(run["curve"])),
        ):
            row[name] = compare_on_task([value(run) for run in mine], [value(run) for run in group], reps)
        rows.append(row)
    return rows


# Aggregates.


def score_matrices(runs: list[dict], metric: str = "final") -> tuple[dict[str, np.ndarray], list[str], dict[str, list[int]]]:
    """
    ``{algo: (n_seeds, n_tasks)}`` normalised per-run values of ``metric`` (see ``METRICS``: the final score by
    default), over the tasks every algorithm finished and, per algorithm, the seeds it finished on all of them
    (rliable needs a full matrix).
    """
    value = METRICS[metric]
    by_algo: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        by_algo[run["algo"]][run["env_id"]][run["seed"]] = value(run)
    tasks = sorted(set.intersection(*(set(per_task) for per_task in by_algo.values()))) if by_algo else []
    matrices, seeds_used = {}, {}
    for algo, per_task in by_algo.items():
        seeds = sorted(set.intersection(*(set(per_task[task]) for task in tasks))) if tasks else []
        if seeds:
            matrices[algo] = np.array([[per_task[task][seed] for task in tasks] for seed in seeds])
            seeds_used[algo] = seeds
    return matrices, tasks, seeds_used


def aggregate(matrices: dict[str, np.ndarray], reps: int = 2000, seed: int = BOOTSTRAP_SEED) -> tuple[dict, dict]:
    """IQM and mean with 95% stratified-bootstrap CIs, computed by rliable."""
    from rliable import metrics

    def iqm_and_mean(scores: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(scores), metrics.aggregate_mean(scores)])

    return _per_key_intervals(matrices, iqm_and_mean, reps, seed)


def _per_key_intervals(groups: dict, statistic, reps: int, seed: int) -> tuple[dict, dict]:
    """
    rliable's estimates and bootstrap intervals, one key at a time from the same seed: rliable draws from
    numpy's global generator in turn for every key, so a joint call would make each algorithm's interval
    depend on which other runs happen to be in the results folder.
    """
    from rliable import library as rly

    estimates, intervals = {}, {}
    for key, value in groups.items():
        np.random.seed(seed)
        estimate, interval = rly.get_interval_estimates({key: value}, statistic, reps=reps)
        estimates[key], intervals[key] = estimate[key], interval[key]
    return estimates, intervals


def probability_of_improvement(
    matrices: dict[str, np.ndarray], reps: int = 2000, seed: int = BOOTSTRAP_SEED
) -> tuple[dict, dict]:
    """P(R2VPO > X) for every other algorithm X (variants of R2VPO included), with 95% CIs (rliable)."""
    from rliable import metrics

    pairs = {f"{OURS},{other}": (matrices[OURS], matrices[other]) for other in matrices if other != OURS and OURS in matrices}
    if not pairs:
        return {}, {}
    return _per_key_intervals(pairs, metrics.probability_of_improvement, reps, seed)


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
    Per (task, algorithm): when the evaluation first reached ``target_algo``'s mean final score (mean over
    seeds of ``final_score``), as a fraction of the env steps the run actually trained (``trained_steps``), so
    at most 1; read two ways: on the seed-averaged learning curve (robust to one lucky evaluation), and as the
    median over seeds of each run's first crossing; with (reached, runs).
    """
    finals = defaultdict(list)
    for run in runs:
        if run["algo"] == target_algo:
            finals[run["env_id"]].append(final_score(run["curve"]))
    out = {}
    grouped = defaultdict(list)
    for run in runs:
        grouped[(run["env_id"], run["algo"])].append(run)
    for (env_id, algo), group in grouped.items():
        if env_id not in finals:
            continue
        target = float(np.mean(finals[env_id]))
        positions = [run["curve"][:, 0] / trained_steps(run) for run in group]  # fractions of each run's budget
        fractions = [_first_crossing(x, run["curve"][:, 2], target) for x, run in zip(positions, group, strict=True)]
        grid = positions[0]
        mean_curve = np.mean([np.interp(grid, x, run["curve"][:, 2]) for x, run in zip(positions, group, strict=True)], axis=0)
        reached = int(np.isfinite(fractions).sum())
        out[(env_id, algo)] = (_first_crossing(grid, mean_curve, target), float(np.median(fractions)), reached, len(fractions))
    return out


def sample_efficiency(runs: list[dict], tasks: list[str], grid: int = 21) -> dict[str, np.ndarray]:
    """
    ``{algo: (n_seeds, n_tasks, grid)}`` normalised evaluation returns at fractions 0..1 of the env steps each
    run actually trained.
    """
    fractions = np.linspace(0, 1, grid)
    per_algo: dict[str, dict[str, dict[int, np.ndarray]]] = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        if run["env_id"] in tasks:
            curve = run["curve"]
            values = np.interp(fractions * trained_steps(run), curve[:, 0], curve[:, 2])
            per_algo[run["algo"]][run["env_id"]][run["seed"]] = normalize(values, run["env_id"])
    out = {}
    for algo, per_task in per_algo.items():
        if all(task in per_task for task in tasks):
            seeds = sorted(set.intersection(*(set(per_task[task]) for task in tasks)))
            if seeds:
                out[algo] = np.array([[per_task[task][seed] for task in tasks] for seed in seeds])
    return out


# Names.


def is_replay_variant(algo: str) -> bool:
    """Whether ``algo`` is R2VPO with replay (``r2vpo-k<K>``), which runs only on the replay study's tasks."""
    return algo.startswith(f"{OURS}-k")


def is_variant(algo: str) -> bool:
    """Whether ``algo`` is a configuration variant ``base[key=value,...]`` (a row of its own, never OURS)."""
    return "[" in algo


def label(algo: str, width: int = 26) -> str:
    """``algo`` for a plot, wrapped after ``[`` and commas into lines of about ``width`` characters."""
    if len(algo) <= width:
        return algo
    pieces, current = [], ""
    for char in algo:
        current += char
        if char in "[,":
            pieces.append(current)
            current = ""
    pieces.append(current)
    lines = [""]
    for piece in pieces:
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(lines)


def _format_value(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, list | tuple):
        return "[" + ",".join(_format_value(item) for item in value) + "]"
    return str(value)


def entry_text(group: list[dict]) -> str:
    """The entry column: the hyperparameter entry, the run's overrides if recorded, and copies of another model."""
    text = group[0]["entry"]
    overrides = group[0].get("overrides") or {}
    if overrides:
        shown = ",".join(f"{key}={_format_value(overrides[key])}" for key in sorted(overrides))
        text += f"; overrides: {shown}"
    copied = [run for run in group if "same_run_as" in run]
    if copied:
        text += f"; same model as {copied[0]['same_run_as']}: {len(copied)} run(s) copied"
    return text


# Plots.


def _label_layout(algos: list[str]) -> tuple[list[str], float, int]:
    """Wrapped labels, the width they need in inches, and how many text lines they take."""
    labels = [label(algo) for algo in algos]
    longest = max(len(line) for text in labels for line in text.split("\n"))
    return labels, 0.3 + 0.075 * longest, sum(text.count("\n") + 1 for text in labels)


def _plot_intervals(panels: list[tuple[str, dict, dict, int]], path: Path) -> None:
    """
    One panel per ``(title, estimates, intervals, column)``: per algorithm a bar over the 95% CI and a tick at
    the estimate. Labels wrap, panels get a fixed width and at least 0.1 normalised units of x range with at most
    five ticks, so that neither long names nor the near-equal scores of tiny budgets make text collide.
    """
    algos = sorted(panels[0][1])
    labels, label_width, text_lines = _label_layout(algos)
    height = max(0.32 * text_lines + 0.3 * len(algos), 1.5) + 1.2
    fig, axes = plt.subplots(
        1, len(panels), figsize=(label_width + 3.0 * len(panels), height), sharey=True, squeeze=False, layout="constrained"
    )
    for axis, (title, estimates, intervals, column) in zip(axes[0], panels, strict=True):
        values = []
        for row, algo in enumerate(algos):
            low, high = np.asarray(intervals[algo])[:, column]
            estimate = float(np.atleast_1d(estimates[algo])[column])
            axis.barh(row, high - low, left=low, height=0.6, alpha=0.6, color=f"C{row % 10}")
            axis.plot([estimate] * 2, [row - 0.3, row + 0.3], color="k")
            values += [low, high, estimate]
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        span = max(high - low, 0.1)
        middle = (low + high) / 2
        axis.set_xlim(middle - 0.55 * span, middle + 0.55 * span)
        axis.xaxis.set_major_locator(MaxNLocator(nbins=5))
        axis.ticklabel_format(axis="x", useOffset=False, style="plain")
        axis.set_title(title, fontsize="medium")
        axis.set_xlabel("normalised score")
        axis.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(algos)), labels, fontsize="small")
    axes[0][0].set_ylim(-0.6, len(algos) - 0.4)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _legend_outside(axis) -> None:
    """The legend of ``axis``'s labelled lines, names wrapped, to the right of the plot (never over the curves)."""
    handles, labels = axis.get_legend_handles_labels()
    axis.legend(handles, [label(name) for name in labels], loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")


def _plot_profiles(matrices: dict[str, np.ndarray], path: Path) -> None:
    from rliable import library as rly
    from rliable import plot_utils

    taus = np.linspace(-0.1, 1.2, 61)
    profiles, cis = rly.create_performance_profile(matrices, taus)
    _, label_width, _ = _label_layout(list(profiles))
    fig, axis = plt.subplots(figsize=(6 + label_width, 4), layout="constrained")
    plot_utils.plot_performance_profiles(
        profiles,
        taus,
        performance_profile_cis=cis,
        xlabel=r"normalised final score $\tau$",
        ax=axis,
        labelsize="medium",
        ticklabelsize="medium",
    )
    _legend_outside(axis)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_efficiency(curves: dict[str, np.ndarray], path: Path, reps: int) -> None:
    from rliable import library as rly
    from rliable import metrics

    grid = next(iter(curves.values())).shape[-1]
    np.random.seed(BOOTSTRAP_SEED)
    estimates, intervals = rly.get_interval_estimates(
        curves, lambda scores: np.array([metrics.aggregate_iqm(scores[..., i]) for i in range(grid)]), reps=reps
    )
    fractions = np.linspace(0, 1, grid)
    algos = sorted(curves)
    _, label_width, _ = _label_layout(algos)
    fig, axis = plt.subplots(figsize=(6 + label_width, 4), layout="constrained")
    for algo in algos:
        axis.plot(fractions, estimates[algo], label=algo)
        axis.fill_between(fractions, intervals[algo][0], intervals[algo][1], alpha=0.2)
    axis.set_xlabel("fraction of the env steps trained")
    axis.set_ylabel("IQM normalised score")
    axis.grid(alpha=0.3)
    _legend_outside(axis)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# The report.


def _interval(estimate: float, ci: np.ndarray) -> str:
    return f"{estimate:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _iqm_and_mean_rows(algos: list[str], seeds_used: dict, estimates: dict, intervals: dict) -> list[str]:
    """Table rows ``| algo | seeds | IQM [CI] | mean [CI] |`` from rliable's estimates and intervals."""
    rows = []
    for algo in algos:
        (iqm, mean), ci = estimates[algo], intervals[algo]
        rows.append(f"| {algo} | {len(seeds_used[algo])} | {_interval(iqm, ci[:, 0])} | {_interval(mean, ci[:, 1])} |")
    return rows


def _aggregate_section(runs: list[dict], out_dir: Path, prefix: str, reps: int) -> list[str]:
    """
    Final score, AUC and peak-to-final aggregates (tables and plots named ``prefix*``), P(R2VPO > X) on the
    final score and the AUC, performance profiles and sample-efficiency curves for ``runs``.
    """
    finals, tasks, seeds_used = score_matrices(runs, "final")
    if not finals:
        return ["No task was finished by every algorithm of this comparison yet.", ""]
    areas, losses = score_matrices(runs, "auc")[0], score_matrices(runs, "peak_to_final")[0]
    algos = sorted(finals)
    final_estimates, final_intervals = aggregate(finals, reps)
    area_estimates, area_intervals = aggregate(areas, reps)
    loss_estimates, loss_intervals = aggregate(losses, reps)
    lines = [
        f"Tasks: {', '.join(tasks)}.",
        "",
        f"### Final score (mean of the last {FINAL_POINTS} evaluations, normalised)",
        "",
        "| algorithm | seeds | IQM [95% CI] | mean [95% CI] |",
        "|---|---|---|---|",
    ]
    lines += _iqm_and_mean_rows(algos, seeds_used, final_estimates, final_intervals)
    _plot_intervals(
        [
            ("final score: IQM", final_estimates, final_intervals, 0),
            ("final score: mean", final_estimates, final_intervals, 1),
        ],
        out_dir / f"{prefix}aggregates.png",
    )
    _plot_profiles(finals, out_dir / f"{prefix}performance_profiles.png")
    lines += [
        "",
        f"![aggregates]({prefix}aggregates.png)",
        "",
        f"![performance profiles]({prefix}performance_profiles.png)",
        "",
        "### Learning speed: area under the learning curve (AUC)",
        "",
        "Mean normalised score over all evaluation points of a run, the untrained policy's (step 0) included.",
        "",
        "| algorithm | seeds | AUC IQM [95% CI] | AUC mean [95% CI] |",
        "|---|---|---|---|",
    ]
    lines += _iqm_and_mean_rows(algos, seeds_used, area_estimates, area_intervals)
    lines += [
        "",
        "### Stability: peak-to-final loss",
        "",
        "Per run, normalised best evaluation after training started minus normalised final score (last "
        f"{FINAL_POINTS} mean): 0 = ended at its best. Mean over all runs (seeds × tasks), 95% stratified-bootstrap CI.",
        "",
        "| algorithm | runs | mean loss [95% CI] | IQM loss [95% CI] | largest loss (task, seed) |",
        "|---|---|---|---|---|",
    ]
    for algo in algos:
        (iqm, mean), ci = loss_estimates[algo], loss_intervals[algo]
        seed_index, task_index = np.unravel_index(np.argmax(losses[algo]), losses[algo].shape)
        worst = f"{losses[algo].max():.3f} ({tasks[task_index]}, seed {seeds_used[algo][seed_index]})"
        lines.append(f"| {algo} | {losses[algo].size} | {_interval(mean, ci[:, 1])} | {_interval(iqm, ci[:, 0])} | {worst} |")
    _plot_intervals(
        [
            ("AUC: IQM", area_estimates, area_intervals, 0),
            ("AUC: mean", area_estimates, area_intervals, 1),
            ("peak-to-final loss: mean", loss_estimates, loss_intervals, 1),
        ],
        out_dir / f"{prefix}learning_aggregates.png",
    )
    lines += ["", f"![AUC and peak-to-final loss]({prefix}learning_aggregates.png)", ""]
    final_improvement, final_improvement_ci = probability_of_improvement(finals, reps)
    if final_improvement:
        area_improvement, area_improvement_ci = probability_of_improvement(areas, reps)
        lines += [
            "### Probability of improvement",
            "",
            "P(R2VPO > X): the probability that a run of R2VPO beats a run of X on a task picked at random (rliable).",
            "",
            "| P(R2VPO > X) | on the final score [95% CI] | on the AUC [95% CI] |",
            "|---|---|---|",
        ]
        for pair in final_improvement:
            cells = [
                _interval(float(np.squeeze(values[pair])), np.asarray(cis[pair]).ravel())
                for values, cis in ((final_improvement, final_improvement_ci), (area_improvement, area_improvement_ci))
            ]
            lines.append(f"| {pair.split(',', 1)[1]} | {cells[0]} | {cells[1]} |")
        lines.append("")
    curves = sample_efficiency(runs, tasks)
    if curves:
        _plot_efficiency(curves, out_dir / f"{prefix}sample_efficiency.png", reps=max(reps // 4, 200))
        lines += [f"![sample efficiency]({prefix}sample_efficiency.png)", ""]
    return lines


def _split_variants(runs: list[dict]) -> tuple[list[dict], list[dict]]:
    """
    The main comparison's runs (the plain algorithms) and the variants ``base[...]``, which always get a section
    of their own: a screening variant is usually run on fewer seeds or tasks, and in the main comparison it
    would shrink the seeds or tasks every algorithm is compared on.
    """
    main = [run for run in runs if not is_replay_variant(run["algo"])]
    plain = [run for run in main if not is_variant(run["algo"])]
    return (plain or main), ([run for run in main if is_variant(run["algo"])] if plain else [])


def _significance_section(runs: list[dict], reps: int) -> list[str]:
    rows = per_task_comparisons(runs, reps)
    if not rows:
        return []
    lines = [
        "## Per task: R2VPO − X, with a bootstrap CI and Welch's p",
        "",
        f"Difference of the means over seeds, R2VPO minus X, on the final score (mean of the last {FINAL_POINTS} "
        "evaluations) and on the AUC (mean evaluation return over all evaluation points), both in return units. "
        f"95% percentile-bootstrap CI: the seeds of each algorithm resampled with replacement, independently, "
        f"{reps} times (numpy Generator seed {BOOTSTRAP_SEED}); p: Welch's two-sided t-test. A task is a **win** or "
        f"a **loss** only where the CI excludes 0 **and** p < {SIGNIFICANCE} (with a few seeds the percentile "
        "bootstrap CI is too narrow on its own; a CI excluding 0 with a larger p is reported as not significant); "
        f"no verdict under {MIN_SEEDS} seeds.",
        "",
        "| task | X | seeds | final: R2VPO − X [95% CI] | p | verdict | AUC: R2VPO − X [95% CI] | p | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(result: dict, same_runs: bool) -> str:
        low, high = result["ci"]
        p = format_p(result["p"])
        shown = "same runs (copied)" if same_runs else result["verdict"]
        return f"{result['difference']:.1f} [{low:.1f}, {high:.1f}] | {p} | {shown}"

    for row in rows:
        ours, theirs = row["seeds"]
        seeds = str(ours) if ours == theirs else f"{ours} vs {theirs}"
        lines.append(
            f"| {row['env_id']} | {row['algo']} | {seeds} | {cell(row['final'], row['same_runs'])} | "
            f"{cell(row['auc'], row['same_runs'])} |"
        )
    lines += ["", "Summary, per baseline:", ""]
    for other in sorted({row["algo"] for row in rows}):
        mine = [row for row in rows if row["algo"] == other]
        parts = []
        for metric, name in (("final", "final score"), ("auc", "AUC")):
            listed = []
            for outcome, plural in (("win", "wins"), ("loss", "losses")):
                found = [row["env_id"] for row in mine if row[metric]["verdict"] == outcome]
                listed.append(f"{plural} on {', '.join(found)}" if found else f"no {plural}")
            undecided = sum(row[metric]["verdict"] not in ("win", "loss") for row in mine)
            parts.append(f"{name}: {'; '.join(listed)}; {undecided} of {len(mine)} tasks not significant")
        lines.append(f"- R2VPO vs {other}: {' | '.join(parts)}")
    return [*lines, ""]


def write_report(
    runs: list[dict],
    out_dir: Path,
    command: str,
    reps: int = 2000,
    runs_dir: str = "benchmarks/results",
    ours_name: str = OURS,
) -> Path:
    """
    Write ``REPORT.md`` and its plots into ``out_dir``; returns the report's path. The main comparison leaves
    the replay variants (``r2vpo-k<K>``) out, so that the tasks they were not run on stay in it; they get their
    own section against PPO and R2VPO on the tasks they share. Variants ``base[...]`` are rows of the main
    comparison when they finished its tasks, and get a section of their own like replay's otherwise.

    :param ours_name: The stored name of the runs labelled ``r2vpo`` in ``runs`` (a candidate reported as R2VPO)
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    episodes = sorted({run.get("eval_episodes") for run in runs if run.get("eval_episodes")})
    each = f" of {', '.join(map(str, episodes))} deterministic episodes" if episodes else ""
    lines = [
        "# Benchmark report",
        "",
        f"Produced by `{command}` from the runs under `{runs_dir}/runs/`.",
        "Scores are min-max normalised per task (0 = uniformly random policy, 1 = the reference score in",
        "`sb3_r2vpo/benchmark/report.py`); aggregates are over the tasks every algorithm of the comparison",
        "finished, with 95% stratified-bootstrap confidence intervals from rliable.",
        "",
        "Metrics (protocol v2), per run, from its learning curve (each evaluation the mean return" + each + "):",
        "",
        f"- **final score**: the mean of the last {FINAL_POINTS} evaluations (not the last one alone, which is noisy). "
        "Every aggregate, profile, P(R2VPO > X), per-task table and the steps to reach PPO's final use it;",
        "- **AUC** (area under the learning curve): the mean normalised score over all evaluation points, the "
        "untrained policy's at step 0 included;",
        "- **peak-to-final loss**: normalised best evaluation after training started minus normalised final score.",
        "",
        f"R2VPO is `{OURS}`; variants (`{OURS}[key=value,...]`, `{OURS}-k<K>`) are rows of their own."
        if ours_name == OURS
        else f"R2VPO is the candidate `{unquote(ours_name)}` (`--ours`; stored as `{ours_name}`): its runs are the rows "
        f"and columns named `{OURS}` in every table and plot below; the packaged `{OURS}`'s own runs are not in this "
        "report.",
        "",
        "## Main comparison",
        "",
    ]
    main_runs, outside_runs = _split_variants(runs)
    lines += _aggregate_section(main_runs, out_dir, "", reps)
    replay_runs = [run for run in runs if is_replay_variant(run["algo"])]
    if replay_runs:
        replay_tasks = {run["env_id"] for run in replay_runs}
        compared = [run for run in runs if run["env_id"] in replay_tasks and run["algo"] in (BASELINE, OURS)]
        lines += [
            "## Replay: R2VPO with replay_rollouts = K (r2vpo-k<K>; r2vpo is K = 0)",
            "",
        ]
        lines += _aggregate_section(compared + replay_runs, out_dir, "replay_", reps)
    if outside_runs:
        variant_tasks = {run["env_id"] for run in outside_runs}
        compared = [run for run in runs if run["env_id"] in variant_tasks and run["algo"] in (BASELINE, OURS)]
        lines += ["## Variants on the tasks they were run on (with R2VPO and PPO)", ""]
        lines += _aggregate_section(compared + outside_runs, out_dir, "variants_", reps)

    lines += _significance_section(runs, reps)
    lines += [
        "## Per task: returns, mean ± sample std over seeds",
        "",
        f"final: mean of the last {FINAL_POINTS} evaluations; last: the last evaluation alone; AUC: mean return over "
        "all evaluation points; peak: best evaluation after training started; loss: peak-to-final, normalised. "
        "steps: the budget asked; trained: env steps actually trained (whole rollouts), median over seeds.",
        "",
        "| task | algorithm | seeds | steps | trained | final | last | AUC | peak | loss | entry |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    grouped = defaultdict(list)
    for run in runs:
        grouped[(run["env_id"], run["algo"])].append(run)

    def spread(values: list[float]) -> str:
        values = np.asarray(values, dtype=float)
        std = f"{values.std(ddof=1):.1f}" if len(values) > 1 else "n/a"
        return f"{values.mean():.1f} ± {std}"

    for (env_id, algo), group in sorted(grouped.items()):
        curves = [run["curve"] for run in group]
        lines.append(
            f"| {env_id} | {algo} | {len(group)} | {group[0]['steps']} | "
            f"{int(np.median([trained_steps(run) for run in group]))} | "
            f"{spread([final_score(curve) for curve in curves])} | {spread([last_score(curve) for curve in curves])} | "
            f"{spread([learning_curve_area(curve) for curve in curves])} | "
            f"{np.mean([peak_score(curve) for curve in curves]):.1f} | "
            f"{np.mean([peak_to_final(curve, env_id) for curve in curves]):.3f} | {entry_text(group)} |"
        )
    lines += [
        "",
        f"## Env steps to reach {BASELINE.upper()}'s final score (fraction of the env steps trained)",
        "",
        f"The target is {BASELINE.upper()}'s final score on the task (mean over seeds of the mean of each run's last "
        f"{FINAL_POINTS} evaluations). Fractions are of the env steps each run actually trained (budgets round up "
        "to whole rollouts), so at most 1. Read on the seed-averaged learning curve, and as the median over seeds",
        "of each run's first crossing (optimistic where evaluations are noisy: one lucky evaluation counts).",
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
    lines += multiplier_section(runs)
    path = out_dir / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def multiplier_section(runs: list[dict]) -> list[str]:
    """
    How λ behaved, per task and R2VPO algorithm, from the update statistics of result.json (``train_stats``,
    runs made since they were recorded): the share of dual steps that left λ on its lower bound, the 5th/50th/95th
    percentiles of λ at the end of each update, and the final policy's ratio variance over δ (median and 95th
    percentile). Values are means over the seeds of each run's own statistic.
    """
    grouped = defaultdict(list)
    for run in runs:
        stats = run.get("train_stats") or {}
        # SPO is built on R2VPO's class and logs a λ it never uses: only R2VPO and its variants are shown.
        if "lagrange_multiplier" in stats and run["algo"].startswith(OURS):
            grouped[(run["env_id"], run["algo"])].append(stats)
    if not grouped:
        return []
    lines = [
        "",
        "## The multiplier λ: how often on its floor, its range, and the ratio variance it allowed",
        "",
        "λ: its value at the end of each update (one per rollout); at floor: the share of dual steps (per minibatch, "
        "epoch or rollout, as `dual_update_frequency` says) that left λ on its lower bound; V_final/δ: the variance "
        "of the ratio between the updated policy and the rollout's, over the whole rollout, relative to the target. "
        "Means over seeds of each run's statistic.",
        "",
        "| task | algorithm | seeds | at floor | λ p5 | λ p50 | λ p95 | V_final/δ p50 | V_final/δ p95 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def mean_of(group: list[dict], key: str, field: str) -> float:
        values = [stats[key][field] for stats in group if key in stats]
        return float(np.mean(values)) if values else float("nan")

    def relative(group: list[dict], field: str) -> float:
        pairs = [
            stats["ratio_variance_final"][field] / stats["variance_target"]["p50"]
            for stats in group
            if "ratio_variance_final" in stats and stats.get("variance_target", {}).get("p50", 0) > 0
        ]
        return float(np.mean(pairs)) if pairs else float("nan")

    for (env_id, algo), group in sorted(grouped.items()):
        lines.append(
            f"| {env_id} | {algo} | {len(group)} | {mean_of(group, 'lagrange_multiplier_at_floor', 'mean'):.2f} | "
            + " | ".join(f"{mean_of(group, 'lagrange_multiplier', q):.3g}" for q in ("p5", "p50", "p95"))
            + f" | {relative(group, 'p50'):.2f} | {relative(group, 'p95'):.2f} |"
        )
    return lines
