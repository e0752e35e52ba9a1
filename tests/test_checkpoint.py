"""Benchmark runs survive being killed: checkpoints while training, resume from the last one, exact budget and curve."""

import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch as th

pytest.importorskip("sb3_contrib", reason="the benchmark extra is not installed")

from stable_baselines3.common.vec_env import VecNormalize

from sb3_r2vpo import R2VPO
from sb3_r2vpo.benchmark import runner
from sb3_r2vpo.benchmark.algorithms import configure
from sb3_r2vpo.benchmark.runner import CHECKPOINT_FILE, RunSpec, load_runs, run_one

th.set_num_threads(1)


def schedule(budget: int, points: int, n_envs: int) -> list[int]:
    """The env steps of an uninterrupted run's evaluations: 0, the first step past each k·budget/points, budget."""
    return [0, *(math.ceil(budget * k / points / n_envs) * n_envs for k in range(1, points)), budget]


def state_at_resume(monkeypatch) -> dict:
    """
    Fill a dict with the state of the model that the runner resumes, as it hands it to ``learn`` (whose env
    reset then adds the first observations to the VecNormalize statistics).
    """
    seen = {}
    original = runner.resume_model

    def resume(*args):
        model = original(*args)
        seen.update(
            steps=model.num_timesteps,
            multiplier=getattr(model, "lagrange_multiplier", None),
            policy={key: value.clone() for key, value in model.policy.state_dict().items()},
            optimizer=copy.deepcopy(model.policy.optimizer.state_dict()),
            vec_normalize=copy.deepcopy(model.get_vec_normalize_env()),
            replay=copy.deepcopy(getattr(model, "replay", None)),
        )
        return model

    monkeypatch.setattr(runner, "resume_model", resume)
    return seen


def assert_same_optimizer(resumed: dict, saved: dict) -> None:
    assert resumed["param_groups"] == saved["param_groups"]
    assert resumed["state"].keys() == saved["state"].keys() and resumed["state"]
    for key, state in saved["state"].items():
        for name, value in state.items():
            assert th.equal(th.as_tensor(resumed["state"][key][name]), th.as_tensor(value)), (key, name)


FREE_R2VPO = "r2vpo[lagrange_multiplier_floor=null]"


def test_killed_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "results"
    # InvertedPendulum-v5: R2VPO's entry has 32-step rollouts on one env, and VecNormalize. Without the λ floor, whose
    # rule holds λ at λ* for rollouts this small, so that λ moves and the checkpoint's λ differs from the initial one.
    args = ["run", "--envs", "InvertedPendulum-v5", "--algos", FREE_R2VPO, "--seeds", "0", "--steps", "3000"]
    args += ["--eval-points", "12", "--eval-episodes", "1", "--checkpoint-every", "3", "--jobs", "1", "--out", str(out)]
    process = subprocess.Popen(
        [sys.executable, "-m", "sb3_r2vpo.benchmark", *args],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    folder = out / "runs" / "InvertedPendulum-v5" / FREE_R2VPO / "seed0"
    manifest_file, partial = folder / CHECKPOINT_FILE, folder / "curve.partial.csv"

    def evaluated_past_checkpoint() -> bool:  # killed after an evaluation that the checkpoint does not hold
        try:
            held = len(json.loads(manifest_file.read_text())["recorder"]["rows"])
            return len(partial.read_text().splitlines()) - 1 > held
        except (OSError, ValueError):
            return False

    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and process.poll() is None and not evaluated_past_checkpoint():
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (folder / "result.json").exists(), "the run finished before it could be killed"
    manifest = json.loads(manifest_file.read_text())
    held_rows = manifest["recorder"]["rows"]
    assert len(partial.read_text().splitlines()) - 1 > len(held_rows)  # an evaluation to be discarded
    saved = tmp_path / "saved"
    shutil.copytree(folder, saved)  # the finished run deletes its checkpoint
    assert sorted(manifest["files"].values()) == sorted(path.name for path in saved.glob("*-*.*"))
    checkpoint = R2VPO.load(saved / manifest["files"]["model"])
    stats = VecNormalize.load(
        str(saved / manifest["files"]["vecnormalize"]), configure(FREE_R2VPO, "InvertedPendulum-v5").preset.make_env().venv
    )
    # The checkpoint holds learned state, not the initial one.
    assert checkpoint.lagrange_multiplier != configure(FREE_R2VPO, "InvertedPendulum-v5").make_model(0).lagrange_multiplier
    assert checkpoint.num_timesteps == manifest["env_steps"] and manifest["env_steps"] % 32 == 0

    resumed = state_at_resume(monkeypatch)
    run_one(RunSpec(FREE_R2VPO, "InvertedPendulum-v5", 0, 3000, 12, 1, checkpoint_every=3), out)  # in this process
    (run,) = load_runs(out)
    # 3000 steps train 3008 (94 rollouts of 32): every evaluation once, none missing, as if never killed.
    assert run["env_steps"] == 3008
    assert list(run["curve"][:, 0]) == schedule(3008, 12, 1)
    # the update statistics span the whole run: those before the checkpoint came back with it (32-step rollouts)
    assert run["train_stats"]["lagrange_multiplier"]["updates"] == 3008 // 32
    assert run["resumed_from_steps"] == [manifest["env_steps"]] and "RNG" in run["resume_note"]
    # The curve up to the checkpoint is the killed run's, not evaluated again.
    np.testing.assert_array_equal(
        run["curve"][: len(held_rows)], [[row[key] for key in runner.CURVE_FIELDS] for row in held_rows]
    )
    assert run["train_seconds"] >= held_rows[-1]["train_seconds"]
    # Training went on from the checkpoint: steps, λ, weights, optimizer state and VecNormalize statistics.
    assert resumed["steps"] == manifest["env_steps"]
    assert resumed["multiplier"] == checkpoint.lagrange_multiplier
    for key, value in checkpoint.policy.state_dict().items():
        assert th.equal(resumed["policy"][key], value), key
    assert_same_optimizer(resumed["optimizer"], checkpoint.policy.optimizer.state_dict())
    for name in ("obs_rms", "ret_rms"):
        for field in ("mean", "var", "count"):
            np.testing.assert_array_equal(
                getattr(getattr(resumed["vec_normalize"], name), field), getattr(getattr(stats, name), field)
            )
    # Finished: the checkpoint is gone, only the results are left.
    assert sorted(path.name for path in folder.iterdir()) == ["curve.csv", "result.json"]


def test_replay_is_checkpointed_and_a_checkpoint_of_another_run_is_discarded(tmp_path, monkeypatch):
    spec = RunSpec("r2vpo-k2", "CartPole-v1", 0, 1024, 4, 1, checkpoint_every=2)  # rollouts of 8 × 32 = 256 steps
    folder = spec.folder(tmp_path)
    save = runner.save_checkpoint

    class Killed(Exception):
        pass

    def save_then_die(*args):
        save(*args)
        shutil.copytree(folder, tmp_path / "saved")
        raise Killed

    monkeypatch.setattr(runner, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        run_one(spec, tmp_path)
    monkeypatch.setattr(runner, "save_checkpoint", save)
    manifest = json.loads((tmp_path / "saved" / CHECKPOINT_FILE).read_text())
    assert manifest["env_steps"] == 512 and manifest["files"]["vecnormalize"] is None
    checkpoint = R2VPO.load(tmp_path / "saved" / manifest["files"]["model"])
    assert len(checkpoint.replay) == 2  # saved with its replay (save_replay=True for the checkpoint)

    resumed = state_at_resume(monkeypatch)
    result = run_one(spec, tmp_path)
    assert result["env_steps"] == 1024 and result["resumed_from_steps"] == [512]
    assert [rollout.index for rollout in resumed["replay"].rollouts] == [r.index for r in checkpoint.replay.rollouts]
    for ours, saved in zip(resumed["replay"].rollouts, checkpoint.replay.rollouts, strict=True):
        assert th.equal(ours.rewards, saved.rewards) and th.equal(ours.actions, saved.actions)
    assert resumed["multiplier"] == checkpoint.lagrange_multiplier
    (run,) = load_runs(tmp_path)
    assert list(run["curve"][:, 0]) == schedule(1024, 4, 8)

    # A checkpoint made for another budget is not resumed: the folder is wiped and the run starts again.
    monkeypatch.setattr(runner, "save_checkpoint", save_then_die)
    shutil.rmtree(tmp_path / "saved")
    with pytest.raises(Killed):
        run_one(spec, tmp_path / "other")
    monkeypatch.setattr(runner, "save_checkpoint", save)
    longer = RunSpec("r2vpo-k2", "CartPole-v1", 0, 1280, 4, 1, checkpoint_every=0)
    assert runner.load_checkpoint(longer, spec.folder(tmp_path / "other")) is None
    assert run_one(longer, tmp_path / "other")["resumed_from_steps"] == []


def test_a_checkpoint_without_its_files_is_not_taken_as_complete(tmp_path):
    spec = RunSpec("r2vpo", "CartPole-v1", 0, 512, 2, 1)
    folder = spec.folder(tmp_path)
    folder.mkdir(parents=True)
    manifest = {"run": spec.settings(), "env_steps": 256, "files": {"model": "checkpoint-256.zip", "vecnormalize": None}}
    (folder / CHECKPOINT_FILE).write_text(json.dumps(manifest))
    (folder / "checkpoint-256.zip.partial").write_bytes(b"half a zip")  # killed while writing it
    assert runner.load_checkpoint(spec, folder) is None
    (folder / CHECKPOINT_FILE).write_text('{"run": ')  # a torn manifest (not written atomically elsewhere)
    assert runner.load_checkpoint(spec, folder) is None


def test_a_checkpoint_under_benchmarks_is_not_git_ignored():
    # A run killed with a session resumes in the next one only from what was committed; a checkpoint whose model
    # zip git ignores (the repository ignores *.zip) came back without it and its run started again from 0.
    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    folder = RunSpec("r2vpo", "Hopper-v5", 1, 1_000_000, 20, 10).folder(root / "benchmarks" / "mujoco-1m")
    names = [CHECKPOINT_FILE, "checkpoint-200192.zip", "vecnormalize-200192.pkl"]
    paths = [str((folder / name).relative_to(root)) for name in names]
    ignored = subprocess.run(["git", "check-ignore", *paths], cwd=root, capture_output=True, text=True)
    assert ignored.returncode == 1 and not ignored.stdout, f"git ignores {ignored.stdout.split()}"
    # ... while a run in progress's temporary files stay out of the repository
    partial = str((folder / "checkpoint-200192.zip.partial").relative_to(root))
    assert subprocess.run(["git", "check-ignore", "-q", partial], cwd=root).returncode == 0
