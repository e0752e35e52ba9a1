"""Optuna search: our API and CLI, the zoo sampler, several workers on SQLite and PostgreSQL, killed workers."""

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import gymnasium as gym
import pytest

optuna = pytest.importorskip("optuna", reason="the optuna extra is not installed")
from optuna.storages import RetryHeartbeatStaleTrialCallback  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from sb3_r2vpo import R2VPO  # noqa: E402
from sb3_r2vpo.presets import get_preset  # noqa: E402
from sb3_r2vpo.tuning import TuningError, make_storage, optimize  # noqa: E402
from tests.envs import NanRewardEnv  # noqa: E402
from tests.postgres import postgres_server  # noqa: E402

# Pinned so that a trial lasts about a second; the search space is otherwise untouched.
FAST = dict(n_steps=64, batch_size=32, n_epochs=2, policy_kwargs=dict(net_arch=[16]))
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _worker_script(
    url: str, study: str, n_trials: int, n_timesteps: int, heartbeat: int = 30, grace: int = 90, barrier: Path | None = None
) -> str:
    """A worker; with ``barrier``, it announces itself (``<barrier>.<pid>``) and waits for ``barrier`` to exist."""
    wait = (
        f"import os, pathlib, time; pathlib.Path({str(barrier)!r} + '.' + str(os.getpid())).touch()\n"
        f"while not pathlib.Path({str(barrier)!r}).exists(): time.sleep(0.05)\n"
        if barrier
        else ""
    )
    return (
        "from sb3_r2vpo.tuning import optimize\n"
        + wait
        + textwrap.dedent(
            f"""
        optimize("CartPole-v1", {n_trials}, storage={url!r}, study_name={study!r}, n_timesteps={n_timesteps},
                 n_evaluations=2, n_eval_episodes=2, show_progress=False, seed=None,
                 heartbeat_interval={heartbeat}, grace_period={grace},
                 fixed_params=dict(n_steps=64, batch_size=32, n_epochs=2, policy_kwargs=dict(net_arch=[16])))
        """
        )
    )


def _start_worker(script: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_api_study_writes_loadable_best_entry(tmp_path):
    output = tmp_path / "best.yml"
    study = optimize(
        "CartPole-v1",
        3,
        storage=f"sqlite:///{tmp_path}/s.db",
        n_timesteps=512,
        n_evaluations=2,
        n_eval_episodes=2,
        seed=0,
        output=output,
        show_progress=False,
        fixed_params=FAST,
    )
    assert len(study.get_trials(states=FINISHED)) == 3
    assert "Tuned with 3 Optuna trials" in output.read_text()
    preset = get_preset("CartPole-v1", path=output)
    model = preset.make_model(seed=0)
    assert model.variance_target(1.0) == pytest.approx(study.best_trial.params["variance_target"])
    assert model.n_steps == 64  # the pinned value, not the sampled one
    model.learn(256)
    # A second call on the same storage (same settings) finds the study full and runs nothing more.
    again = optimize(
        "CartPole-v1",
        3,
        storage=f"sqlite:///{tmp_path}/s.db",
        n_timesteps=512,
        n_evaluations=2,
        n_eval_episodes=2,
        show_progress=False,
        fixed_params=FAST,
    )
    assert len(again.trials) == 3


def test_zoo_optimize_and_trial_reload(tmp_path):
    pytest.importorskip("rl_zoo3")
    from sb3_r2vpo.zoo import main

    url = f"sqlite:///{tmp_path}/zoo.db"
    common = ["--algo", "r2vpo", "--env", "CartPole-v1", "-f", str(tmp_path), "--storage", url, "--study-name", "zoo"]
    search = ["-optimize", "--n-trials", "2", "-n", "1024", "--sampler", "tpe", "--pruner", "median", "--n-evaluations", "2"]
    main(["train", *common, *search, "--eval-episodes", "2", "--seed", "0", "-params", "n_envs:1", "--no-optim-plots"])
    study = optuna.load_study(study_name="zoo", storage=url)
    assert len(study.get_trials(states=FINISHED)) == 2
    assert "variance_target" in study.trials[1].params
    # Reload trial 1's hyperparameters and train with them (rl_zoo3 ignores --trial-id 0).
    main(["train", *common, "--trial-id", "1", "-n", "256", "-params", "n_envs:1", "--eval-freq", "-1"])
    runs = sorted((tmp_path / "r2vpo").glob("CartPole-v1_*"), key=lambda path: int(path.name.rsplit("_", 1)[1]))
    model = R2VPO.load(runs[-1] / "CartPole-v1.zip")
    assert model.variance_target(1.0) == pytest.approx(study.trials[1].params["variance_target"])


def _assert_exact(study: optuna.Study, n_trials: int) -> None:
    finished = study.get_trials(states=FINISHED)
    assert len(finished) == n_trials, [t.state for t in study.trials]
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert len({t.number for t in study.trials}) == len(study.trials)


def _two_workers(url: str, tmp_path: Path, n_trials: int = 6) -> optuna.Study:
    # Both workers start optimizing at the same moment, on a storage neither has created yet.
    barrier = tmp_path / "go"
    workers = [_start_worker(_worker_script(url, "shared", n_trials, 1024, barrier=barrier)) for _ in range(2)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    barrier.touch()
    for worker in workers:
        _, stderr = worker.communicate(timeout=600)
        assert worker.returncode == 0, stderr[-2000:]
    study = optuna.load_study(study_name="shared", storage=make_storage(url))
    _assert_exact(study, n_trials)
    assert len({t.user_attrs["worker"] for t in study.get_trials(states=FINISHED)}) == 2, "both workers took trials"
    return study


def test_two_workers_share_one_sqlite_study(tmp_path):
    _two_workers(f"sqlite:///{tmp_path}/shared.db", tmp_path)


def test_two_workers_share_one_postgresql_study(tmp_path):
    pytest.importorskip("psycopg", reason="psycopg (the optuna extra) is not installed")
    try:
        server = postgres_server()
        url = server.__enter__()
    except RuntimeError as error:
        pytest.skip(str(error))
    try:
        _two_workers(url, tmp_path)
    finally:
        server.__exit__(None, None, None)


def _running_with_heartbeat(db: Path) -> set[int]:
    """
    Numbers of the RUNNING trials whose heartbeat thread has recorded a beat. Optuna fails a trial as stale from its
    last heartbeat only: a trial killed between its creation and its first beat would stay RUNNING for ever.
    """
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as connection:
        rows = connection.execute(
            "SELECT trials.number FROM trials JOIN trial_heartbeats ON trial_heartbeats.trial_id = trials.trial_id "
            "WHERE trials.state = 'RUNNING'"
        ).fetchall()
    return {number for (number,) in rows}


def test_killed_worker_study_resumes(tmp_path):
    db = tmp_path / "killed.db"
    url = f"sqlite:///{db}"
    script = _worker_script(url, "killed", 4, 4096, heartbeat=1, grace=3)
    worker = _start_worker(script)
    storage = make_storage(url, heartbeat_interval=1, grace_period=3)
    deadline = time.monotonic() + 300
    killed_number = None
    while killed_number is None:
        if time.monotonic() > deadline or worker.poll() is not None:
            worker.kill()
            pytest.fail("the worker never had a finished trial and a running one with a heartbeat")
        time.sleep(0.3)
        try:
            study = optuna.load_study(study_name="killed", storage=storage)
        except KeyError:
            continue
        if not (study.get_trials(states=FINISHED) and _running_with_heartbeat(db)):
            continue
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        # The study as the kill left it (a trial may have ended between the look above and the kill).
        study = optuna.load_study(study_name="killed", storage=storage)
        running = study.get_trials(states=(TrialState.RUNNING,))
        if running:
            assert [t.number for t in running] == sorted(_running_with_heartbeat(db)), "killed before its first beat"
            killed_number = running[0].number
            completed_before = {t.number: t.value for t in study.get_trials(states=FINISHED)}
        else:  # killed between two trials: nothing to recover, try again
            worker = _start_worker(script)

    # Wait, bounded, until the heartbeat mechanism fails the killed trial (and enqueues its retry), not for a fixed time.
    deadline = time.monotonic() + 60
    while study.trials[killed_number].state == TrialState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        study = optuna.load_study(study_name="killed", storage=storage)
    assert study.trials[killed_number].state == TrialState.FAIL, "the killed trial's heartbeat never went stale"

    restarted = _start_worker(script)
    _, stderr = restarted.communicate(timeout=600)
    assert restarted.returncode == 0, stderr[-2000:]
    study = optuna.load_study(study_name="killed", storage=storage)
    _assert_exact(study, 4)
    assert study.trials[killed_number].state == TrialState.FAIL
    assert any(RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed_number for t in study.trials)
    for number, value in completed_before.items():
        assert study.trials[number].value == value


def test_bad_input_is_one_clear_error(tmp_path):
    with pytest.raises(TuningError, match=r"unknown environment id 'CartPol-v1'; did you mean 'CartPole-v1'"):
        optimize("CartPol-v1", 2, storage=f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(TuningError, match=r"`n_trials` must be an int >= 1, got 0"):
        optimize("CartPole-v1", 0, storage=f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(TuningError, match=r"cannot open the Optuna storage 'postgresql://nobody@127.0.0.1:9/none'"):
        optimize("CartPole-v1", 2, storage="postgresql://nobody@127.0.0.1:9/none")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sb3_r2vpo.tune",
            "--env",
            "CartPole-v1",
            "--n-trials",
            "1",
            "--storage",
            "sqlite:////nonexistent/dir/x.db",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "r2vpo-tune: error: cannot open the Optuna storage" in result.stderr
    assert "Traceback" not in result.stderr


def test_diverging_trials_fail_and_the_study_goes_on(tmp_path):
    gym.register("NanRewardCartPole-v0", entry_point=lambda: NanRewardEnv(gym.make("CartPole-v1"), nan_after=0))
    try:
        study = optimize(
            "NanRewardCartPole-v0",
            2,
            storage=f"sqlite:///{tmp_path}/nan.db",
            n_timesteps=512,
            show_progress=False,
            fixed_params={**FAST, "max_nonfinite_steps": 2},
        )
    finally:
        del gym.envs.registry["NanRewardCartPole-v0"]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert all("consecutive gradient steps" in t.user_attrs["failure"] for t in study.trials)


def test_resumed_study_is_announced_and_another_budget_refused(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/resume.db"
    common = dict(storage=url, n_evaluations=2, n_eval_episodes=2, seed=0, show_progress=False, fixed_params=FAST)
    optimize("CartPole-v1", 2, n_timesteps=256, **common)
    assert "resuming" not in capsys.readouterr().out
    # The same command again: it says so, and that there is nothing to train.
    optimize("CartPole-v1", 2, n_timesteps=256, **common)
    assert f"resuming study 'r2vpo-CartPole-v1' ({url}): 2 of 2 trials finished; nothing to train" in capsys.readouterr().out
    # Another budget: refused before anything trains, naming what differs and how to start another study.
    with pytest.raises(
        TuningError, match=r"run with another budget \(n_timesteps: the study's 256, this call's 512\).*--study-name"
    ):
        optimize("CartPole-v1", 3, n_timesteps=512, **common)
    with pytest.raises(TuningError, match=r"n_eval_episodes: the study's 2, this call's 3"):
        optimize("CartPole-v1", 3, n_timesteps=256, **{**common, "n_eval_episodes": 3})
    assert len(optuna.load_study(study_name="r2vpo-CartPole-v1", storage=url).trials) == 2
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sb3_r2vpo.tune",
            "--env",
            "CartPole-v1",
            "--n-trials",
            "3",
            "--n-timesteps",
            "512",
            "--storage",
            url,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (
        result.stderr.startswith("r2vpo-tune: error: study 'r2vpo-CartPole-v1' in sqlite:") and "--study-name" in result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1
    # Its own study name is fine, and a resumed study with the same settings goes on where it stopped.
    optimize("CartPole-v1", 1, n_timesteps=512, study_name="longer", **common)
    optimize("CartPole-v1", 3, n_timesteps=256, **common)
    assert "2 of 3 trials finished; 1 to go" in capsys.readouterr().out
    study = optuna.load_study(study_name="r2vpo-CartPole-v1", storage=url)
    assert [t.user_attrs["n_timesteps"] for t in study.get_trials(states=FINISHED)] == [256, 256, 256]


def test_header_counts_trials_by_their_real_budgets(tmp_path):
    from sb3_r2vpo.tuning import write_best_entry

    url = f"sqlite:///{tmp_path}/old.db"
    study = optimize(
        "CartPole-v1",
        1,
        storage=url,
        n_timesteps=256,
        n_evaluations=2,
        n_eval_episodes=2,
        seed=0,
        show_progress=False,
        fixed_params=FAST,
    )
    (first,) = study.trials
    # A study as the old code left it: trials of other budgets (3000 steps), and one with none recorded.
    for value, attrs, state in (
        (first.value + 1, {"n_timesteps": 3000}, TrialState.COMPLETE),
        (None, {"n_timesteps": 3000}, TrialState.PRUNED),
        (first.value - 1, {}, TrialState.COMPLETE),
    ):
        study.add_trial(
            optuna.trial.create_trial(
                params=first.params, distributions=first.distributions, value=value, user_attrs=attrs, state=state
            )
        )
    output = write_best_entry(study, get_preset("CartPole-v1"), tmp_path / "best.yml", FAST)
    header = output.read_text().splitlines()[:2]
    assert header[0] == (
        "# Tuned with 4 Optuna trials (1 of 256 steps, 2 of 3000 steps, 1 of unrecorded budget), 3 complete and "
        "1 pruned early (study 'r2vpo-CartPole-v1');"
    )
    assert header[1].startswith("# best trial #1 (3000 steps): mean return ")
    # One budget: the short form.
    fresh = optimize(
        "CartPole-v1",
        2,
        storage=url,
        study_name="fresh",
        n_timesteps=256,
        n_evaluations=2,
        n_eval_episodes=2,
        seed=0,
        show_progress=False,
        fixed_params=FAST,
        output=tmp_path / "fresh.yml",
    )
    pruned = len(fresh.get_trials(states=(TrialState.PRUNED,)))
    assert (
        (tmp_path / "fresh.yml")
        .read_text()
        .startswith(
            f"# Tuned with 2 Optuna trials of 256 steps each, {2 - pruned} complete and {pruned} pruned early (study 'fresh');"
        )
    )
