"""The benchmark runner: runs and curves, resume after a kill, the report, and its statistics on hand-made scores."""

import csv
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th

pytest.importorskip("rliable", reason="the benchmark extra is not installed")
pytest.importorskip("sb3_contrib", reason="the benchmark extra is not installed")

from sb3_r2vpo.benchmark.__main__ import _pooled_runs, _runs_to_report, main
from sb3_r2vpo.benchmark.algorithms import same_run_as
from sb3_r2vpo.benchmark.baselines import SPO
from sb3_r2vpo.benchmark.envs import DRIFTING_PENDULUM, register_envs
from sb3_r2vpo.benchmark.report import (
    RANDOM_SCORES,
    REFERENCE_SCORES,
    aggregate,
    normalize,
    probability_of_improvement,
    score_matrices,
    steps_to_reach,
    write_report,
)
from sb3_r2vpo.benchmark.runner import RunSpec, load_runs, recorded_arguments, run_one
from sb3_r2vpo.r2vpo.r2vpo import R2VPO_DEFAULTS


def test_runner_writes_curves_and_report(tmp_path, capsys):
    out = tmp_path / "results"
    args = ["--envs", "CartPole-v1", "InvertedPendulum-v5", "--algos", "r2vpo", "ppo", "--seeds", "0", "1", "--steps", "1024"]
    main(["run", *args, "--eval-points", "2", "--eval-episodes", "2", "--jobs", "2", "--out", str(out)])
    runs = load_runs(out)
    assert len(runs) == 8
    for run in runs:
        assert run["curve"].shape == (3, 4)  # evaluations at 0, 512 and 1024 steps
        assert list(run["curve"][:, 0]) == [0, 512, 1024]
        assert run["env_steps"] >= 1024 and run["seconds_per_step"] > 0
        # protocol v2: final = mean of the last 3 evaluations after the untrained one (here both of them)
        assert run["final_return"] == pytest.approx(run["curve"][1:, 2].mean())
        assert run["last_return"] == run["curve"][-1, 2] and run["protocol"] == 2
        # one row of update statistics per update: CartPole's entries collect 8 × 32 = 256 steps per rollout
        stats = run["train_stats"]
        if run["env_id"] == "CartPole-v1":
            assert {values["updates"] for values in stats.values()} == {1024 // 256}
        if run["algo"] == "r2vpo":
            multiplier = stats["lagrange_multiplier"]
            assert 0 < multiplier["p5"] <= multiplier["p50"] <= multiplier["p95"]
            assert 0 <= stats["lagrange_multiplier_at_floor"]["mean"] <= 1 and "approx_kl" in stats
        else:
            assert "lagrange_multiplier" not in stats and stats["clip_fraction"]["updates"] > 0
    with open(out / "runs" / "InvertedPendulum-v5" / "ppo" / "seed0" / "curve.csv") as file:
        assert next(csv.reader(file)) == ["env_steps", "train_seconds", "eval_return_mean", "eval_return_std"]

    report_dir = tmp_path / "report"
    main(["report", "--out", str(out), "--report-dir", str(report_dir), "--reps", "100"])
    report = (report_dir / "REPORT.md").read_text()
    assert "| algorithm | seeds | IQM [95% CI] | mean [95% CI] |" in report
    assert f"from the runs under `{out.as_posix()}/runs/`" in report
    assert "| InvertedPendulum-v5 | r2vpo | 2 | 1024 |" in report
    assert "P(R2VPO > X)" in report and "Wall time per env step" in report
    for plot in ("aggregates.png", "performance_profiles.png", "sample_efficiency.png"):
        assert (report_dir / plot).read_bytes()[:4] == b"\x89PNG"

    # A second run of the same command finds everything finished and trains nothing (checked on the files, not
    # on the clock: under load, building the models that validate the request alone can take seconds).
    results = sorted(out.glob("runs/*/*/seed*/result.json"))
    written = {path: path.stat().st_mtime_ns for path in results}
    capsys.readouterr()
    main(["run", *args, "--eval-points", "2", "--eval-episodes", "2", "--jobs", "1", "--out", str(out)])
    assert "8 of 8 runs already finished; 0 to go" in capsys.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in results} == written and len(written) == 8

    # Another budget into the same folder neither counts the 1024-step runs as finished nor trains over them.
    longer = [arg if arg != "1024" else "4096" for arg in args]
    with pytest.raises(SystemExit):
        main(["run", *longer, "--eval-points", "2", "--eval-episodes", "2", "--out", str(out)])
    error = capsys.readouterr().err
    assert "'steps': 1024" in error and "'steps': 4096" in error and "another --out" in error
    assert [run["steps"] for run in load_runs(out)] == [1024] * 8

    # Every constructor argument is recorded, defaults included; a run made under another default (here as if
    # R2VPO's floor had been 0.25 then) is neither passed off as a run of today's R2VPO nor trained over.
    cartpole = out / "runs" / "CartPole-v1" / "r2vpo" / "seed0" / "result.json"
    result = json.loads(cartpole.read_text())
    assert result["arguments"]["lagrange_multiplier_floor"] == R2VPO_DEFAULTS["lagrange_multiplier_floor"]
    # the entry's (its δ schedule recorded as written: schedules have a faithful repr, no JSON form)
    assert result["arguments"]["variance_target"] == "LinearSchedule(start=0.04, end=0.01, end_fraction=1.0)"
    assert result["arguments"]["n_steps"] == 32
    assert "seed" not in result["arguments"] and "env" not in result["arguments"]
    result["arguments"]["lagrange_multiplier_floor"] = 0.25
    cartpole.write_text(json.dumps(result))
    with pytest.raises(SystemExit):
        main(["run", *args, "--eval-points", "2", "--eval-episodes", "2", "--out", str(out)])
    error = capsys.readouterr().err
    assert f"lagrange_multiplier_floor: 0.25 then, {R2VPO_DEFAULTS['lagrange_multiplier_floor']!r} now" in error
    assert "another --out" in error and json.loads(cartpole.read_text()) == result


def test_killed_run_restarts_cleanly(tmp_path):
    out = tmp_path / "results"
    command = [sys.executable, "-m", "sb3_r2vpo.benchmark", "run", "--envs", "InvertedPendulum-v5", "--algos", "r2vpo"]
    command += ["--seeds", "0", "--steps", "20000", "--eval-points", "40", "--eval-episodes", "1", "--jobs", "1"]
    command += ["--out", str(out)]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = out / "runs" / "InvertedPendulum-v5" / "r2vpo" / "seed0" / "curve.partial.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (partial.exists() and len(partial.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert partial.exists() and not (partial.parent / "result.json").exists()

    main(["run", *command[command.index("--envs") :][:-2], "--out", str(out), "--steps", "2000", "--eval-points", "2"])
    (run,) = load_runs(out)
    # 32-step rollouts: 2000 steps train 2016; evaluations at 2016 / 2 and after the last update, nothing more
    assert run["steps"] == 2000 and list(run["curve"][:, 0]) == [0, 1008, 2016]
    assert not partial.exists()


def test_matched_run_is_copied_where_our_entry_is_ppos_and_would_train_identically(tmp_path):
    register_envs()
    assert same_run_as("r2vpo-matched", "MountainCarContinuous-v0") == "r2vpo"  # r2vpo.yml = ppo.yml's entry there
    assert same_run_as("r2vpo-matched", "CartPole-v1") is None  # our entry differs
    assert same_run_as("ppo", "MountainCarContinuous-v0") is None

    out = tmp_path / "results"
    args = ["--envs", "MountainCarContinuous-v0", "--algos", "r2vpo-matched", "r2vpo", "--seeds", "3", "--steps", "256"]
    main(["run", *args, "--eval-points", "1", "--eval-episodes", "1", "--jobs", "1", "--out", str(out)])
    ours, matched = sorted(load_runs(out), key=lambda run: run["algo"])
    assert (ours["algo"], matched["algo"]) == ("r2vpo", "r2vpo-matched")
    assert matched["same_run_as"] == "r2vpo" and "same_run_as" not in ours
    assert matched["entry"].startswith("ppo.yml:") and ours["entry"].startswith("r2vpo.yml:")
    np.testing.assert_array_equal(matched["curve"], ours["curve"])

    # The copy stands for a training run of its own: train r2vpo-matched for real and compare.
    trained = run_one(RunSpec("r2vpo-matched", "MountainCarContinuous-v0", 3, 256, 1, 1), tmp_path / "trained")
    assert trained["final_return"] == matched["final_return"]
    curve = np.loadtxt(
        tmp_path / "trained" / "runs" / "MountainCarContinuous-v0" / "r2vpo-matched" / "seed3" / "curve.csv",
        delimiter=",",
        skiprows=1,
        ndmin=2,
    )
    np.testing.assert_array_equal(curve[:, [0, 2, 3]], matched["curve"][:, [0, 2, 3]])  # wall time aside


def test_a_variant_that_changes_nothing_on_a_task_is_a_copy_not_a_second_training(tmp_path, capsys):
    """
    A spec that builds the same model as another spec of the call, or as a finished run under another name, gets
    that run's copy (marked same_run_as), the same numbers a training would give; a spec that differs trains.
    """
    out = tmp_path / "results"
    same = "r2vpo[n_epochs=20]"  # CartPole's entry has n_epochs 20: the same model as r2vpo there
    settings = [
        "--seeds",
        "0",
        "--steps",
        "512",
        "--eval-points",
        "1",
        "--eval-episodes",
        "1",
        "--jobs",
        "1",
        "--out",
        str(out),
    ]
    main(["run", "--envs", "CartPole-v1", "--algos", same, "r2vpo", "r2vpo[n_epochs=2]", *settings])
    runs = {run["algo"]: run for run in load_runs(out)}
    assert runs[same]["same_run_as"] == "r2vpo" and "same_run_as" not in runs["r2vpo"]
    assert "same_run_as" not in runs["r2vpo[n_epochs=2]"]  # another model: trained
    np.testing.assert_array_equal(runs[same]["curve"], runs["r2vpo"]["curve"])
    assert runs[same]["algo"] == same and "variant: n_epochs=20" in runs[same]["entry"]
    assert "[2/2]" in capsys.readouterr().out  # two trainings, not three

    # Later, a third name for the same model finds the finished run under root and copies it at once.
    main(["run", "--envs", "CartPole-v1", "--algos", "r2vpo[gamma=0.98]", *settings])
    assert "r2vpo[gamma=0.98] CartPole-v1 seed 0: same model as" in capsys.readouterr().out
    copied = next(run for run in load_runs(out) if run["algo"] == "r2vpo[gamma=0.98]")
    assert copied["same_run_as"] in ("r2vpo", same)
    np.testing.assert_array_equal(copied["curve"], runs["r2vpo"]["curve"])
    # ...and the copy is what training it would give (seeded, one thread): train it for real and compare.
    trained = run_one(RunSpec("r2vpo[gamma=0.98]", "CartPole-v1", 0, 512, 1, 1), tmp_path / "trained")
    assert trained["final_return"] == copied["final_return"]


def test_normalisation_and_rliable_on_hand_made_scores():
    assert normalize(RANDOM_SCORES["Hopper-v5"], "Hopper-v5") == pytest.approx(0.0)
    assert normalize(REFERENCE_SCORES["Hopper-v5"], "Hopper-v5") == pytest.approx(1.0)
    assert normalize(-698.0, "Pendulum-v1") == pytest.approx((-698.0 + 1245.9) / (-150.0 + 1245.9))

    matrices = {
        "r2vpo": np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [10.0, 100.0]]),
    }
    matrices["ppo"] = matrices["r2vpo"] - 200.0  # every PPO run below every R2VPO run of the same task
    matrices["twin"] = matrices["r2vpo"].copy()
    estimates, intervals = aggregate(matrices, reps=200)
    # Flattened r2vpo scores sorted: 0 0 0 1 1 1 10 100 -> IQM = mean(0, 1, 1, 1), mean = 113 / 8.
    assert estimates["r2vpo"][0] == pytest.approx(0.75)
    assert estimates["r2vpo"][1] == pytest.approx(113 / 8)
    assert intervals["r2vpo"].shape == (2, 2) and intervals["r2vpo"][0, 1] <= 113 / 8 <= intervals["r2vpo"][1, 1]
    improvement, _ = probability_of_improvement(matrices, reps=200)
    assert float(np.squeeze(improvement["r2vpo,ppo"])) == pytest.approx(1.0)
    assert float(np.squeeze(improvement["r2vpo,twin"])) == pytest.approx(0.5)  # ties count one half


def test_score_matrices_keep_seeds_complete_on_every_task():
    def ending_at(final: float) -> np.ndarray:  # the final score is the mean of the last 3 evaluations
        return np.array([[step, 0.0, final, 0.0] for step in (0, 1, 2, 3)])

    runs = [
        {"algo": "ppo", "env_id": "CartPole-v1", "seed": 0, "curve": ending_at(500.0)},
        {"algo": "ppo", "env_id": "Pendulum-v1", "seed": 0, "curve": ending_at(-150.0)},
        {"algo": "ppo", "env_id": "CartPole-v1", "seed": 1, "curve": ending_at(22.9)},  # no Pendulum seed 1
    ]
    matrices, tasks, seeds = score_matrices(runs)
    assert tasks == ["CartPole-v1", "Pendulum-v1"] and seeds["ppo"] == [0]
    np.testing.assert_allclose(matrices["ppo"], [[1.0, 1.0]])


def test_replay_variants_do_not_shrink_the_main_comparison(tmp_path):
    curve = np.array([[0.0, 0.0, -1200.0, 0.0], [1000.0, 1.0, -150.0, 0.0]])
    runs = [
        {
            "algo": algo,
            "env_id": env_id,
            "seed": seed,
            "steps": 1000,
            "final_return": -150.0 - seed,
            "peak_return": -150.0,
            "seconds_per_step": 0.001 * (1 + (algo == "r2vpo-k2")),
            "entry": "test",
            "curve": curve,
        }
        for seed in (0, 1)
        for env_id in ("Pendulum-v1", "DriftingPendulum-v1")
        for algo in ("ppo", "r2vpo", "r2vpo-k2")
        if not (algo == "r2vpo-k2" and env_id == "DriftingPendulum-v1")  # replay studied on Pendulum only
    ]
    report = write_report(runs, tmp_path, "test", reps=50).read_text()
    main_section, replay_section = report.split("## Replay")[0], report.split("## Replay")[1].split("## Per task")[0]
    assert "Tasks: DriftingPendulum-v1, Pendulum-v1." in main_section and "r2vpo-k2" not in main_section
    assert "Tasks: Pendulum-v1." in replay_section and "| r2vpo-k2 | 2 |" in replay_section
    assert "| Pendulum-v1 | r2vpo-k2 | 2.00 | 2.00 | 2.00 |" in report  # wall time per step vs PPO and vs K = 0
    assert (tmp_path / "replay_aggregates.png").exists()


def test_steps_to_reach_ppo_final_on_hand_made_curves():
    steps = np.array([0.0, 250.0, 500.0, 750.0, 1000.0])

    def run(algo, seed, returns):
        curve = np.column_stack([steps, steps / 1000, returns, np.zeros(5)])
        return {
            "algo": algo,
            "env_id": "Pendulum-v1",
            "seed": seed,
            "steps": 1000,
            "final_return": returns[-1],
            "curve": curve,
        }

    runs = [
        run("ppo", 0, [-1200, -800, -400, -300, -200]),
        run("ppo", 1, [-1200, -900, -500, -300, -200]),  # PPO's final mean: -200
        run("r2vpo", 0, [-1200, -100, -900, -150, -150]),  # one lucky evaluation at 250 steps
        run("r2vpo", 1, [-1200, -1000, -900, -190, -150]),
        run("r2vpo-k2", 0, [-1200, -1200, -1200, -1200, -1200]),
        run("r2vpo-k2", 1, [-1200, -1200, -1200, -1200, -1200]),
        run("r2vpo-k4", 0, [-100, -1200, -1200, -1200, -1200]),  # only the untrained policy was good enough
        run("r2vpo-k4", 1, [-100, -1200, -1200, -1200, -1200]),
    ]
    found = steps_to_reach(runs)
    # PPO's final (mean of its last 3 evaluations) is -316.7: first reached at 750 steps on both seeds
    assert found[("Pendulum-v1", "ppo")] == (0.75, 0.75, 2, 2)
    # seed-mean curve: -650, -905, -170 -> first at 750 steps; per seed: 250 and 750 -> median 0.5
    assert found[("Pendulum-v1", "r2vpo")] == (0.75, 0.5, 2, 2)
    for algo in ("r2vpo-k2", "r2vpo-k4"):
        on_mean, median, reached, total = found[("Pendulum-v1", algo)]
        assert np.isinf(on_mean) and np.isinf(median) and (reached, total) == (0, 2)


def test_spo_loss_matches_its_formula():
    model = SPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, spo_epsilon=0.2)
    ratio = th.tensor([0.8, 1.0, 1.5])
    advantages = th.tensor([1.0, -2.0, 0.5])
    loss, surrogate, _ = model._policy_loss(ratio, advantages, 0.04)
    expected = -(ratio * advantages - advantages.abs() * (ratio - 1) ** 2 / 0.4).mean()
    assert loss.item() == pytest.approx(expected.item())
    assert surrogate.item() == pytest.approx(-(ratio * advantages).mean().item())
    multiplier = model.lagrange_multiplier
    model.learn(128)
    assert model.lagrange_multiplier == multiplier  # SPO has no dual variable


def test_drifting_pendulum_changes_physics_between_episodes():
    register_envs()
    env = gym.make(DRIFTING_PENDULUM)
    masses, lengths = [], []
    for episode in range(100):  # one full period
        env.reset(seed=episode)
        masses.append(env.unwrapped.m)
        lengths.append(env.unwrapped.l)
    assert max(masses) / min(masses) > 1.5 and max(lengths) / min(lengths) > 1.2
    assert min(masses) >= 0.7 - 1e-9 and max(masses) <= 1.3 + 1e-9
    assert json.dumps(masses)  # plain floats


def test_drifting_pendulum_evaluation_spans_the_whole_cycle():
    """Each evaluation's episodes run at evenly spaced phases of the drift, whatever the env did before."""
    from stable_baselines3.common.env_util import make_vec_env

    register_envs()
    env = make_vec_env(DRIFTING_PENDULUM, n_envs=1, seed=0)
    for _ in range(37):  # the env is somewhere in its training cycle
        env.reset()
    env.env_method("start_evaluation", 10)
    masses, lengths = [], []
    env.reset()
    for _ in range(10):
        masses.append(env.envs[0].unwrapped.m)
        lengths.append(env.envs[0].unwrapped.l)
        done = False
        while not done:
            done = env.step(np.zeros((1, 1), dtype=np.float32))[2][0]  # auto-reset starts the next episode
    phases = 2 * np.pi * np.arange(10) / 10
    np.testing.assert_allclose(masses, 1.0 * (1 + 0.3 * np.sin(phases)))
    np.testing.assert_allclose(lengths, 1.0 * (1 + 0.3 * np.cos(phases)))
    # the whole cycle: both ends of the mass and length ranges are visited
    assert (
        max(masses) > 1.28 and min(masses) < 0.72 and max(lengths) == pytest.approx(1.3) and min(lengths) == pytest.approx(0.7)
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--steps", "0"], "--steps must be a whole number >= 1, got 0"),
        (["--eval-points", "0"], "--eval-points must be a whole number >= 1, got 0"),
        (["--eval-episodes", "-2"], "--eval-episodes must be a whole number >= 1, got -2"),
        (["--algos", "r2vpo[varience_target=0.02]"], "R2VPO has no argument 'varience_target'"),
        (["--algos", "r2vpo[variance_target=0.02"], "malformed variant"),
        (["--algos", "r2vpo[variance_target]"], "is not key=value"),
        (["--algos", "r2vpo[variance_target=-0.5]"], "variance_target"),
        (["--algos", "nope"], "unknown algorithm 'nope'"),
        (["--steps", "256", "--eval-points", "64"], "ask for at most 32"),
        (["--algos", "r2vpo-k-1"], "r2vpo-k<K> needs a whole number K >= 1"),
        (["--algos", "r2vpo-kx"], "r2vpo-k<K> needs a whole number K >= 1"),
        (["--jobs", "0"], "--jobs must be a whole number >= 1, got 0"),
        (["--seeds", "3", "-1"], "--seeds must be whole numbers >= 0, got -1"),
        (["--jobs", "2", "--ray", "auto"], "--jobs and --ray exclude each other"),
    ],
)
def test_bad_run_arguments_are_one_line_errors_before_anything_is_written(tmp_path, capsys, arguments, message):
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as stopped:
        main(["run", "--envs", "CartPole-v1", "--algos", "r2vpo", "--seeds", "0", "--out", str(out), *arguments])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert not out.exists()


def test_a_seed_or_task_named_twice_is_one_run_and_every_seed_is_trained(tmp_path, capsys):
    # Reported: `--seeds 0 1 0` trained seed 1 only (the repeat counted as a copy of itself) and exited 0.
    out = tmp_path / "results"
    args = ["--envs", "CartPole-v1", "CartPole-v1", "--algos", "r2vpo", "--seeds", "0", "1", "0"]
    main(["run", *args, "--steps", "256", "--eval-points", "1", "--eval-episodes", "1", "--jobs", "1", "--out", str(out)])
    assert "0 of 2 runs already finished; 2 to go" in capsys.readouterr().out
    assert sorted(run["seed"] for run in load_runs(out)) == [0, 1]


def test_budget_rounds_up_once_to_whole_rollouts_and_evaluates_as_asked(tmp_path, capsys):
    # CartPole's entry collects 8 envs × 32 steps = 256 per rollout: 5000 steps train 5120.
    run_one(RunSpec("r2vpo", "CartPole-v1", 0, 5000, 4, 1), tmp_path)
    assert "5000 steps rounded up to 5120 (20 whole rollouts of 256)" in capsys.readouterr().out
    (run,) = load_runs(tmp_path)
    assert run["env_steps"] == 5120
    assert list(run["curve"][:, 0]) == [0, 1280, 2560, 3840, 5120]  # the untrained policy, then 4 as asked
    assert run["final_return"] == pytest.approx(run["curve"][-3:, 2].mean())


def test_variants_run_side_by_side_and_the_report_names_them(tmp_path, capsys):
    out = tmp_path / "results"
    variants = ["r2vpo[variance_target=0.02,dual_update=linear]", "r2vpo[ dual_update=linear , variance_target=0.020 ]"]
    args = ["--envs", "CartPole-v1", "Pendulum-v1", "--algos", "r2vpo", *variants, "r2vpo[variance_target=0.1]"]
    main(["run", *args, "--seeds", "0", "--steps", "4096", "--eval-points", "1", "--eval-episodes", "1", "--out", str(out)])
    folders = sorted(path.name for path in (out / "runs" / "Pendulum-v1").iterdir())
    # the two spellings of one variant are one run, stored under its canonical name
    assert folders == ["r2vpo", "r2vpo[dual_update=linear,variance_target=0.02]", "r2vpo[variance_target=0.1]"]
    runs = {(run["env_id"], run["algo"]): run for run in load_runs(out)}
    assert len(runs) == 6
    linear = runs[("Pendulum-v1", "r2vpo[dual_update=linear,variance_target=0.02]")]
    assert linear["overrides"] == {"dual_update": "linear", "variance_target": 0.02}
    assert "variant: dual_update=linear, variance_target=0.02" in linear["entry"]
    assert "overrides" in runs[("CartPole-v1", "r2vpo")] and not runs[("CartPole-v1", "r2vpo")]["overrides"]

    main(["report", "--out", str(out), "--report-dir", str(tmp_path / "report"), "--reps", "50"])
    report = (tmp_path / "report" / "REPORT.md").read_text()
    for name in ("r2vpo[dual_update=linear,variance_target=0.02]", "r2vpo[variance_target=0.1]"):
        assert f"| {name} |" in report

    # A candidate reported as R2VPO: its runs take r2vpo's place, r2vpo's own are left out, the header says so.
    candidate = "r2vpo[variance_target=0.1]"
    other = "r2vpo[dual_update=linear,variance_target=0.02]"
    base = ["report", "--out", str(out), "--report-dir", str(tmp_path / "candidate"), "--reps", "50"]
    main([*base, "--algos", "r2vpo[variance_target=0.10]", other, "--ours", candidate])
    report = (tmp_path / "candidate" / "REPORT.md").read_text()
    assert f"R2VPO is the candidate `{candidate}`" in report
    assert f"| {candidate} |" not in report and f"| {other} |" in report and "| r2vpo |" in report
    runs_shown, ours = _runs_to_report(load_runs(out), [other], candidate)
    assert ours == candidate and {run["algo"] for run in runs_shown} == {"r2vpo", other}
    shown = {run["env_id"]: run["final_return"] for run in runs_shown if run["algo"] == "r2vpo"}
    assert shown == {env: runs[(env, candidate)]["final_return"] for env in ("CartPole-v1", "Pendulum-v1")}
    for bad, message in (
        ([*base, "--ours", candidate], "leave r2vpo's own runs out"),  # r2vpo's runs would share its name
        ([*base, "--algos", "ppo"], "no runs of ppo"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(bad)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(ValueError, match="leave r2vpo's own runs out"):
        _runs_to_report(load_runs(out), None, candidate)
    with pytest.raises(ValueError, match="no runs of ppo"):
        _runs_to_report(load_runs(out), ["ppo"], "r2vpo")

    # Several folders are pooled (two sets of seeds); the same run in two of them is refused, not counted twice.
    other_seeds = tmp_path / "more"
    for folder in (out / "runs").glob("*/*/seed0"):
        target = other_seeds / "runs" / folder.parent.parent.name / folder.parent.name / "seed1"
        target.mkdir(parents=True)
        result = json.loads((folder / "result.json").read_text())
        (target / "result.json").write_text(json.dumps({**result, "seed": 1}))
        (target / "curve.csv").write_text((folder / "curve.csv").read_text())
    pooled = _pooled_runs([out, other_seeds], named_before=False)
    assert len(pooled) == 2 * len(load_runs(out)) and {run["seed"] for run in pooled} == {0, 1}
    main(["report", "--out", str(out), str(other_seeds), "--report-dir", str(tmp_path / "pooled"), "--reps", "50"])
    assert f"`{out.as_posix()} + {other_seeds.as_posix()}/runs/`" in (tmp_path / "pooled" / "REPORT.md").read_text()
    with pytest.raises(ValueError, match="in both"):
        _pooled_runs([out, out], named_before=False)


def test_runs_of_the_former_defaults_are_named_by_their_arguments(tmp_path):
    """benchmarks/variants/name_former_defaults.py: old R2VPO runs move to the variant that states their arguments."""
    import importlib.util

    from sb3_r2vpo.benchmark.algorithms import configure

    path = Path(__file__).parents[1] / "benchmarks" / "variants" / "name_former_defaults.py"
    spec = importlib.util.spec_from_file_location("name_former_defaults", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.todays_defaults() == {"lagrange_multiplier_floor": "auto", "variance_center": "one"}

    def write(algo: str, env_id: str = "CartPole-v1", **extra) -> Path:
        seed = tmp_path / "runs" / env_id / algo / "seed0"
        seed.mkdir(parents=True)
        (seed / "result.json").write_text(json.dumps({"algo": algo, "env_id": env_id, "seed": 0, **extra}))
        return seed

    write("r2vpo")  # before the runner recorded arguments: the former defaults
    write("r2vpo[lagrange_multiplier_floor=0.5]", overrides={"x": 1})
    write("ppo")
    # Recorded arguments say what a run had: floor 0.5 with the χ² centre (today's) is named by its floor alone.
    write("r2vpo", "Pendulum-v1", arguments={"lagrange_multiplier_floor": 0.5, "variance_center": "one"})
    todays = write("r2vpo", "Hopper-v5", arguments={"lagrange_multiplier_floor": "auto", "variance_center": "one"})
    stated = write("r2vpo[lagrange_multiplier_floor=auto,variance_center=one]", "Hopper-v5")
    moved = script.rename(tmp_path, dry_run=False)
    names = sorted(f"{new.parent.parent.name}/{new.parent.name}" for _, new in moved)
    assert names == [
        "CartPole-v1/r2vpo[lagrange_multiplier_floor=0.5,variance_center=mean]",
        "CartPole-v1/r2vpo[lagrange_multiplier_floor=null,variance_center=mean]",
        "Pendulum-v1/r2vpo[lagrange_multiplier_floor=0.5]",
    ]
    assert not (tmp_path / "runs" / "CartPole-v1" / "r2vpo").exists() and todays.exists() and stated.exists()
    assert (tmp_path / "runs" / "CartPole-v1" / "ppo" / "seed0").exists()
    for _, new in moved:
        result = json.loads((new / "result.json").read_text())
        assert result["algo"] == new.parent.name
        arguments = configure(result["algo"], "CartPole-v1").arguments()  # the runner reads the name back
        expected = "one" if new.parent.parent.name == "Pendulum-v1" else "mean"
        assert arguments["variance_center"] == expected and arguments["lagrange_multiplier_floor"] != "auto"
    assert script.rename(tmp_path, dry_run=False) == []  # a second pass finds nothing left to name


def _variants_script(name: str):
    """A script of benchmarks/variants (not a package), loaded as a module."""
    folder = Path(__file__).parents[1] / "benchmarks" / "variants"
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))  # as when run as a script: its siblings (per_update.py) import by name
    try:
        spec.loader.exec_module(script)
    finally:
        sys.path.remove(str(folder))
    return script


def test_runs_of_a_former_entry_are_named_by_the_file_they_ran_with(tmp_path, monkeypatch):
    """benchmarks/variants/name_former_entries.py: runs made under a changed r2vpo.yml entry move to r2vpo@<former>."""
    from sb3_r2vpo.benchmark.algorithms import configure
    from sb3_r2vpo.presets import hyperparams_path

    script = _variants_script("name_former_entries")

    # The "former" file: the packaged one with CartPole's δ changed (Hopper's entry the same).
    packaged = Path(hyperparams_path()).read_text()
    former_text = re.sub(r"(\nCartPole-v1:\n(?:  .*\n)*?)  variance_target: .*\n", r"\1  variance_target: 0.03\n", packaged)
    assert former_text.count("variance_target: 0.03") == 1
    monkeypatch.chdir(tmp_path)
    Path("former.yml").write_text(former_text)
    assert configure("r2vpo@former.yml", "CartPole-v1").arguments()["variance_target"] == 0.03

    def write(algo: str, env_id: str = "CartPole-v1") -> Path:
        seed = tmp_path / "runs" / env_id / algo / "seed0"
        seed.mkdir(parents=True)
        (seed / "result.json").write_text(json.dumps({"algo": algo, "env_id": env_id, "seed": 0}))
        (seed / "curve.csv").write_text("env_steps,train_seconds,eval_return_mean,eval_return_std\n0,0,1,0\n")
        return seed

    write("r2vpo")
    write("r2vpo-k4[variance_center=start]")
    # Kept: other algorithms, a task whose entry did not change, a variant that sets the changed key itself.
    kept = [write("ppo"), write("r2vpo-matched"), write("r2vpo", "Hopper-v5"), write("r2vpo[variance_target=0.03]")]
    moved = script.rename(tmp_path, "former.yml", dry_run=False)
    names = sorted(new.parent.name for _, new in moved)
    assert names == ["r2vpo@former.yml", "r2vpo@former.yml[replay_rollouts=4,variance_center=start]"]
    assert all(folder.exists() for folder in kept)
    for old, new in moved:
        result = json.loads((new / "result.json").read_text())
        assert result["algo"] == new.parent.name and result["named_before"] == old.parent.name
        arguments = configure(result["algo"], "CartPole-v1").arguments()  # the runner builds the old run again
        assert arguments["variance_target"] == 0.03
    assert json.loads(
        (tmp_path / "runs/CartPole-v1/r2vpo@former.yml[replay_rollouts=4,variance_center=start]/seed0/result.json").read_text()
    )["overrides"] == {"replay_rollouts": 4, "variance_center": "start"}
    assert script.rename(tmp_path, "former.yml", dry_run=False) == []  # a second pass finds nothing left
    # The former names come back on request (to redraw an older table); a later run under that name gives way.
    new_run = write("r2vpo")  # a run of the new entry, as the runner records it
    result = json.loads((new_run / "result.json").read_text())
    result["arguments"] = recorded_arguments(configure("r2vpo", "CartPole-v1"))
    (new_run / "result.json").write_text(json.dumps(result))
    assert script.rename(tmp_path, "former.yml", dry_run=True) == []  # made since the change: it stays
    now = sorted((run["env_id"], run["algo"]) for run in load_runs(tmp_path))
    before = sorted((run["env_id"], run["algo"]) for run in load_runs(tmp_path, named_before=True))
    assert ("CartPole-v1", "r2vpo@former.yml") in now and ("CartPole-v1", "r2vpo") in now
    assert [name for name in before if name[0] == "CartPole-v1"] == [
        ("CartPole-v1", algo)
        for algo in sorted(["ppo", "r2vpo", "r2vpo-k4[variance_center=start]", "r2vpo-matched", "r2vpo[variance_target=0.03]"])
    ]
    shown = [run for run in load_runs(tmp_path, named_before=True) if (run["env_id"], run["algo"]) == ("CartPole-v1", "r2vpo")]
    assert len(shown) == 1 and shown[0]["named_before"] == "r2vpo"  # the renamed run, not the new one
    # ppo-matched reads r2vpo.yml too, without δ: a δ change leaves its runs alone; another change moves them to
    # the PPO control of the former file, which builds them again.
    matched = write("ppo-matched")
    assert script.rename(tmp_path, "former.yml", dry_run=True) == []
    Path("former2.yml").write_text(re.sub(r"(\nCartPole-v1:\n(?:  .*\n)*?)  n_epochs: .*\n", r"\1  n_epochs: 5\n", packaged))
    moved = dict(script.rename(tmp_path, "former2.yml", dry_run=True))
    assert moved[matched].parent.name == "ppo-matched@former2.yml"
    control = configure("ppo-matched@former2.yml", "CartPole-v1")
    assert control.algorithm.__name__ == "PPO" and control.arguments()["n_epochs"] == 5
    assert "variance_target" not in control.arguments()


def test_multiplier_recovery_counts_each_violation_stretch_in_rollouts():
    """benchmarks/variants/multiplier_recovery.py: a stretch is a maximal run of updates with V̂ > δ, open ones included."""
    script = _variants_script("multiplier_recovery")
    target = np.array([0.01, 0.01, 0.01, 0.02, 0.02, 0.02, 0.01, 0.01])
    variance = np.array([0.005, 0.03, 0.011, 0.02, 0.05, 0.001, 0.02, 0.5])
    # over δ at updates 1-2 (two rollouts), 4 (one; 0.02 is not over 0.02) and 6-7 (still open at the end)
    assert script.violation_stretches(variance, target) == [(1, 2), (4, 1), (6, 2)]
    assert script.violation_stretches(variance * 0, target) == []


def test_per_update_traces_record_what_each_update_logged():
    """benchmarks/variants/per_update.py: one record per update, read from the logger that learn() set up."""
    from sb3_r2vpo import R2VPO

    record_updates = _variants_script("per_update").record_updates
    model = R2VPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=2, seed=0)
    rows = record_updates(model, lambda logged: (model.num_timesteps, logged["train/lagrange_multiplier"]))
    model.learn(total_timesteps=192)
    assert [steps for steps, _ in rows] == [64, 128, 192]
    assert all(np.isfinite(multiplier) and multiplier > 0 for _, multiplier in rows)
    assert rows[-1][1] == pytest.approx(model.lagrange_multiplier)
