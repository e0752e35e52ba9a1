"""The report's protocol-v2 metrics and statistics, on hand-made curves whose answers are computed here."""

import math

import numpy as np
import pytest

pytest.importorskip("rliable", reason="the benchmark extra is not installed")

from scipy import stats

from sb3_r2vpo.benchmark.report import (
    RANDOM_SCORES,
    REFERENCE_SCORES,
    bootstrap_difference_ci,
    compare_on_task,
    final_score,
    format_p,
    label,
    last_score,
    learning_curve_area,
    peak_score,
    peak_to_final,
    steps_to_reach,
    verdict,
    welch_p,
    write_report,
)

VARIANT = "r2vpo[dual_update_frequency=epoch,variance_target=0.02]"


def curve_of(returns, steps=None):
    """A curve (env_steps, train_seconds, eval_return_mean, eval_return_std) through ``returns``."""
    returns = np.asarray(returns, dtype=float)
    steps = np.arange(len(returns)) * 100.0 if steps is None else np.asarray(steps, dtype=float)
    return np.column_stack([steps, steps / 1000, returns, np.zeros(len(returns))])


def returns_of(env_id, normalised):
    """The returns that normalise to ``normalised`` on ``env_id``."""
    low, high = RANDOM_SCORES[env_id], REFERENCE_SCORES[env_id]
    return low + (high - low) * np.asarray(normalised, dtype=float)


def test_final_score_is_the_mean_of_the_last_three_evaluations():
    curve = curve_of([5.0, 10.0, 40.0, 20.0, 30.0, 70.0])
    assert final_score(curve) == pytest.approx((20.0 + 30.0 + 70.0) / 3)
    assert final_score(curve, last=1) == last_score(curve) == 70.0
    assert final_score(curve, last=5) == pytest.approx((10 + 40 + 20 + 30 + 70) / 5)
    # A curve too short for the window: the untrained policy's evaluation (step 0) is not part of the final.
    assert final_score(curve_of([500.0, 10.0, 30.0])) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="last"):
        final_score(curve, last=0)


def test_area_under_the_curve_is_the_mean_normalised_score_over_every_evaluation():
    normalised = [0.0, 0.5, 1.0, 1.0]
    curve = curve_of(returns_of("CartPole-v1", normalised))
    assert learning_curve_area(curve, "CartPole-v1") == pytest.approx((0.0 + 0.5 + 1.0 + 1.0) / 4)  # step 0 included
    assert learning_curve_area(curve) == pytest.approx(np.mean(returns_of("CartPole-v1", normalised)))  # return units


def test_peak_to_final_loss_ignores_the_untrained_evaluation():
    # The untrained policy scores 1.0 (a lucky deterministic CartPole start); it is not the peak.
    normalised = [1.0, 0.2, 0.9, 0.5, 0.4, 0.6]
    curve = curve_of(returns_of("CartPole-v1", normalised))
    assert peak_score(curve) == pytest.approx(returns_of("CartPole-v1", 0.9))
    assert peak_to_final(curve, "CartPole-v1") == pytest.approx(0.9 - (0.5 + 0.4 + 0.6) / 3)
    assert peak_to_final(curve) == pytest.approx((0.9 - 0.5) * (500.0 - 22.9))
    assert peak_to_final(curve_of([0.0, 1.0, 2.0, 3.0, 4.0])) == pytest.approx(4.0 - 3.0)  # still learning: peak is 4


def test_bootstrap_difference_ci():
    # Constant samples: every resample has the same means, so the CI is the difference itself.
    assert bootstrap_difference_ci([3.0, 3.0, 3.0], [1.0, 1.0], reps=200, seed=0) == (2.0, 2.0)
    # a = {0, 1}, b = {0}: a resampled mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the 2.5% and
    # 97.5% percentiles of the difference are 0 and 1.
    assert bootstrap_difference_ci([0.0, 1.0], [0.0], reps=4000, seed=0) == (0.0, 1.0)
    # Identical samples: the CI is symmetric-ish around 0 and contains it.
    same = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    low, high = bootstrap_difference_ci(same, same.copy(), reps=2000, seed=0)
    assert low < 0 < high
    # Clearly separated samples: the difference of means is 10, no resample can reach 0 (at worst 14-... >= 6).
    better, worse = np.array([10.0, 11.0, 12.0, 13.0, 14.0]), np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    low, high = bootstrap_difference_ci(better, worse, reps=2000, seed=0)
    assert 6.0 <= low < 10.0 < high <= 14.0
    # A fixed seed makes it reproducible.
    assert bootstrap_difference_ci(better, worse, reps=500, seed=3) == bootstrap_difference_ci(better, worse, reps=500, seed=3)


def test_verdicts_only_where_the_ci_excludes_zero():
    better, worse = np.array([10.0, 11.0, 12.0, 13.0, 14.0]), np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    win = compare_on_task(better, worse, reps=1000)
    assert win["difference"] == pytest.approx(10.0) and win["verdict"] == "win"
    loss = compare_on_task(worse, better, reps=1000)
    assert loss["difference"] == pytest.approx(-10.0) and loss["verdict"] == "loss"
    tie = compare_on_task(better, better.copy(), reps=1000)
    assert tie["difference"] == 0.0 and tie["verdict"] == "no significant difference at 5 seeds"
    assert compare_on_task(better, worse[:3], reps=1000)["verdict"] == "win"
    assert verdict(-1.0, 2.0, "5 vs 3") == "no significant difference at 5 vs 3 seeds"
    assert verdict(0.0, 2.0, 5) == "no significant difference at 5 seeds"  # touching 0 does not exclude it
    # The CI alone is not enough where Welch's test disagrees (a percentile bootstrap of 5 seeds is too narrow).
    assert verdict(1.0, 2.0, 5, p=0.01) == "win" and verdict(-2.0, -1.0, 5, p=0.01) == "loss"
    assert verdict(1.0, 2.0, 5, p=0.10) == "no significant difference at 5 seeds"
    # Two seeds: a resampled mean takes three values; no verdict either way.
    assert compare_on_task([10.0, 11.0], [0.0, 1.0], reps=1000)["verdict"] == "too few seeds (2) to test"


def test_welch_p_against_scipy_and_by_hand():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 6.0, 8.0, 10.0])
    expected = stats.ttest_ind(a, b, equal_var=False).pvalue
    assert welch_p(a, b) == pytest.approx(expected)
    # By hand: t = (mean a − mean b) / sqrt(va/na + vb/nb), Welch–Satterthwaite degrees of freedom.
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    assert welch_p(a, b) == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert welch_p(a, a) == pytest.approx(1.0)
    assert math.isnan(welch_p([1.0], b))  # one seed: no variance to test with
    assert (format_p(0.04321), format_p(0.0004), format_p(math.nan)) == ("0.043", "<0.001", "n/a")


def test_steps_to_reach_is_a_fraction_of_the_steps_trained():
    # A tiny budget: asked for 1 step, trained one rollout of 2048; the old report divided by 1 (2048.00).
    def run(algo, seed, returns):
        curve = curve_of(returns, steps=[0.0, 1024.0, 2048.0])
        return {"algo": algo, "env_id": "CartPole-v1", "seed": seed, "steps": 1, "env_steps": 2048, "curve": curve}

    found = steps_to_reach(
        [run("ppo", 0, [20.0, 30.0, 40.0]), run("ppo", 1, [20.0, 30.0, 40.0]), run("r2vpo", 0, [20.0, 40.0, 10.0])]
    )
    assert found[("CartPole-v1", "ppo")] == (1.0, 1.0, 2, 2)  # PPO's final: mean(30, 40) = 35, reached at the end
    assert found[("CartPole-v1", "r2vpo")] == (0.5, 0.5, 1, 1)
    assert all(value <= 1.0 for fractions in found.values() for value in fractions[:2])


def test_long_variant_names_wrap_on_plots():
    wrapped = label(VARIANT)
    assert "\n" in wrapped and wrapped.replace("\n", "") == VARIANT
    assert all(len(line) <= 30 for line in wrapped.split("\n"))
    assert label("r2vpo") == "r2vpo"


def make_runs(algos, tasks, seeds=(0, 1, 2)):
    """
    Hand-made runs: ppo's normalised curve is 0, .2, .4, .6, .8 and r2vpo's (and the variant's) 0, .9, 1, .9, .8,
    each shifted by 0.01 · (seed − 1); 5 evaluations at 0..1024 steps for a budget of 1000 (one 256-step rollout
    more than asked).
    """
    shapes = {"ppo": [0.0, 0.2, 0.4, 0.6, 0.8], "r2vpo": [0.0, 0.9, 1.0, 0.9, 0.8], VARIANT: [0.0, 0.9, 1.0, 0.9, 0.8]}
    runs = []
    for env_id in tasks:
        for algo in algos:
            for seed in seeds:
                returns = returns_of(env_id, np.array(shapes[algo]) + 0.01 * (seed - 1))
                run = {
                    "algo": algo,
                    "env_id": env_id,
                    "seed": seed,
                    "steps": 1000,
                    "eval_points": 4,
                    "eval_episodes": 10,
                    "entry": f"{algo.split('[')[0]}.yml:{env_id}",
                    "env_steps": 1024,
                    "final_return": returns[-1],
                    "peak_return": returns.max(),
                    "train_seconds": 1.0,
                    "seconds_per_step": 0.001,
                    "curve": curve_of(returns, steps=[0, 256, 512, 768, 1024]),
                }
                if algo == VARIANT:
                    run["overrides"] = {"variance_target": 0.02, "dual_update_frequency": "epoch"}
                runs.append(run)
    return runs


def test_write_report_has_the_protocol_v2_sections_with_the_expected_numbers(tmp_path):
    tasks = ("CartPole-v1", "Pendulum-v1")
    runs = make_runs(("ppo", "r2vpo", VARIANT), tasks)
    report = write_report(runs, tmp_path, "test", reps=100).read_text()
    main, variants = report.split("## Variants")[0], report.split("## Variants")[1].split("## Per task")[0]
    assert "final score**: the mean of the last 3 evaluations" in report
    assert "Tasks: CartPole-v1, Pendulum-v1." in main and "Tasks: CartPole-v1, Pendulum-v1." in variants

    # Final score: r2vpo's runs end on .9 ± .01 (IQM and mean 0.9), ppo's on .6; the variant is a row of its own,
    # in the variants' section (never in the main comparison, whose seeds and tasks it could shrink).
    final = main.split("### Final score")[1].split("###")[0]
    assert "| r2vpo | 3 | 0.900 [" in final and "| ppo | 3 | 0.600 [" in final and VARIANT not in main
    assert f"| {VARIANT} | 3 | 0.900 [" in variants.split("### Final score")[1].split("###")[0]
    # AUC: mean of 0, .9, 1, .9, .8 = 0.72 and of 0, .2, .4, .6, .8 = 0.4.
    area = main.split("### Learning speed")[1].split("###")[0]
    assert "| r2vpo | 3 | 0.720 [" in area and "| ppo | 3 | 0.400 [" in area
    # Peak-to-final: 1.0 − 0.9 and 0.8 − 0.6, the same in every run, so the CI is a point.
    stability = main.split("### Stability")[1].split("###")[0]
    assert "| r2vpo | 6 | 0.100 [0.100, 0.100] |" in stability and "| ppo | 6 | 0.200 [0.200, 0.200] |" in stability
    # P(R2VPO > X): every r2vpo run beats every ppo run, on both metrics; the variant ties everywhere.
    improvement = main.split("### Probability of improvement")[1]
    assert "| ppo | 1.000 [1.000, 1.000] | 1.000 [1.000, 1.000] |" in improvement
    assert f"| {VARIANT} | 0.500 [" in variants.split("### Probability of improvement")[1]

    # Per-task significance: R2VPO − PPO on CartPole's final is 0.3 of (500 − 22.9), in return units.
    significance = report.split("## Per task: R2VPO − X")[1].split("## Per task: returns")[0]
    finals = {
        algo: [final_score(run["curve"]) for run in runs if run["algo"] == algo and run["env_id"] == "CartPole-v1"]
        for algo in ("r2vpo", "ppo")
    }
    p = stats.ttest_ind(finals["r2vpo"], finals["ppo"], equal_var=False).pvalue
    difference = 0.3 * (500.0 - 22.9)
    assert p < 0.001
    assert f"| CartPole-v1 | ppo | 3 | {difference:.1f} [" in significance
    row = next(line for line in significance.splitlines() if line.startswith("| CartPole-v1 | ppo |"))
    assert "| <0.001 | win |" in row
    assert f"| CartPole-v1 | {VARIANT} | 3 | 0.0 [" in significance
    variant_row = next(line for line in significance.splitlines() if line.startswith(f"| CartPole-v1 | {VARIANT} |"))
    assert variant_row.count("no significant difference at 3 seeds") == 2  # final and AUC

    # Per-task table: final (last 3) and last evaluation with the sample std, trained steps, overrides named.
    finals_r2vpo = np.array(finals["r2vpo"])
    lasts = returns_of("CartPole-v1", 0.8 + 0.01 * (np.arange(3) - 1))
    assert (
        f"| CartPole-v1 | r2vpo | 3 | 1000 | 1024 | {finals_r2vpo.mean():.1f} ± {finals_r2vpo.std(ddof=1):.1f} | "
        f"{lasts.mean():.1f} ± {lasts.std(ddof=1):.1f} |" in report
    )
    assert "overrides: dual_update_frequency=epoch,variance_target=0.02" in report
    # Steps to reach PPO's final (0.6): r2vpo's first evaluation after training (256 of 1024 steps trained).
    assert "| CartPole-v1 | r2vpo | 0.25 | 0.25 | 3/3 |" in report
    for plot in ("aggregates.png", "learning_aggregates.png", "performance_profiles.png", "sample_efficiency.png"):
        assert (tmp_path / plot).read_bytes()[:4] == b"\x89PNG"


def test_a_variant_on_fewer_tasks_gets_its_own_section(tmp_path):
    runs = [
        run
        for run in make_runs(("ppo", "r2vpo", VARIANT), ("CartPole-v1", "Pendulum-v1"), seeds=(0, 1))
        if not (run["algo"] == VARIANT and run["env_id"] == "Pendulum-v1")
    ]
    report = write_report(runs, tmp_path, "test", reps=50).read_text()
    main, variants = report.split("## Variants")[0], report.split("## Variants")[1].split("## Per task")[0]
    assert "Tasks: CartPole-v1, Pendulum-v1." in main and VARIANT not in main.split("## Main comparison")[1]
    assert "Tasks: CartPole-v1." in variants and f"| {VARIANT} | 2 |" in variants
    assert (tmp_path / "variants_aggregates.png").exists()


def test_an_algorithms_interval_does_not_depend_on_the_other_runs_in_the_folder():
    """rliable draws every key's bootstrap from numpy's global generator in turn: each key is drawn alone."""
    from sb3_r2vpo.benchmark.report import aggregate, probability_of_improvement

    rng = np.random.default_rng(0)
    matrices = {name: rng.uniform(size=(5, 3)) for name in ("ppo", "r2vpo", "spo")}
    alone = aggregate({"spo": matrices["spo"]}, reps=200)
    together = aggregate(matrices, reps=200)
    np.testing.assert_array_equal(alone[1]["spo"], together[1]["spo"])
    pair = probability_of_improvement({"r2vpo": matrices["r2vpo"], "spo": matrices["spo"]}, reps=200)
    more = probability_of_improvement(matrices, reps=200)
    np.testing.assert_array_equal(pair[1]["r2vpo,spo"], more[1]["r2vpo,spo"])


def test_multiplier_section_reads_the_update_statistics():
    from sb3_r2vpo.benchmark.report import multiplier_section

    def stats(at_floor: float, median: float) -> dict:
        return {
            "lagrange_multiplier": {"p5": 0.5, "p50": median, "p95": 4.0, "mean": median, "updates": 10},
            "lagrange_multiplier_at_floor": {"mean": at_floor, "updates": 10},
            "ratio_variance_final": {"p50": 0.02, "p95": 0.08},
            "variance_target": {"p50": 0.04},
        }

    runs = [
        {"env_id": "CartPole-v1", "algo": "r2vpo", "train_stats": stats(0.2, 1.0)},
        {"env_id": "CartPole-v1", "algo": "r2vpo", "train_stats": stats(0.6, 3.0)},
        {"env_id": "CartPole-v1", "algo": "ppo", "train_stats": {"approx_kl": {"p50": 0.01}}},
        {"env_id": "CartPole-v1", "algo": "r2vpo-matched"},  # made before update statistics were recorded
        {"env_id": "CartPole-v1", "algo": "spo", "train_stats": stats(1.0, 9.0)},  # R2VPO's class, λ unused
    ]
    lines = multiplier_section(runs)
    rows = [line for line in lines if line.startswith("| CartPole")]
    # seeds averaged: at floor (0.2 + 0.6) / 2, λ's median (1 + 3) / 2; V_final/δ = 0.02/0.04 and 0.08/0.04
    assert rows == ["| CartPole-v1 | r2vpo | 2 | 0.40 | 0.5 | 2 | 4 | 0.50 | 2.00 |"]
    assert multiplier_section(runs[2:]) == []
