"""What every command-line entry point shares: a typo'd env id is one line and writes nothing; one torch thread."""

import importlib.util
import subprocess
import sys

import pytest
import torch

from sb3_r2vpo import cli
from sb3_r2vpo.train import SetupError, run

TYPO = ["--env", "Pendulum"]
# Each entry point with the typo; every output location is left at its default, relative to the working directory.
ENTRY_POINTS = {
    "train": (["-m", "sb3_r2vpo.train", *TYPO], None),
    "tune": (["-m", "sb3_r2vpo.tune", *TYPO, "--n-trials", "1"], "optuna"),
    "benchmark": (
        ["-m", "sb3_r2vpo.benchmark", "run", "--envs", "Pendulum", "--algos", "r2vpo", "--seeds", "0"],
        "sb3_contrib",
    ),
    "zoo": (["-m", "sb3_r2vpo.zoo", "train", "--algo", "r2vpo", *TYPO], "rl_zoo3"),
}


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_unknown_env_id_is_one_line_and_writes_nothing(name, tmp_path):
    args, needs = ENTRY_POINTS[name]
    if needs is not None and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{needs} (an extra) is not installed")
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    # The last line says it all (a dependency may print a banner on import, e.g. ALE's).
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith("error: unknown environment id 'Pendulum'; did you mean 'Pendulum-v1'?")
    ), result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == [], "something was written"


def test_main_job_errors_before_writing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SetupError, match=r"r2vpo.yml: no entry for 'FrozenLake-v1'; entries: .*CartPole-v1"):
        run("FrozenLake-v1", 64, 0, out, 1, 1, False)
    with pytest.raises(SetupError, match=r"^unknown environment id 'CartPol-v1'; did you mean 'CartPole-v1'\?$"):
        run("CartPol-v1", 64, 0, out, 1, 1, False)
    assert not out.exists()
    result = subprocess.run(
        [sys.executable, "-m", "sb3_r2vpo.train", "--env", "FrozenLake-v1"], capture_output=True, text=True, cwd=tmp_path
    )
    assert (
        result.returncode == 1
        and result.stderr.startswith("r2vpo-train: error: ")
        and "r2vpo.yml: no entry for 'FrozenLake-v1'" in result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_thread_setting(restore_threads, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cli.resolve_torch_threads(None) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert cli.resolve_torch_threads(None) == 0  # the user's own setting is left alone
    assert cli.resolve_torch_threads(3) == 3
    with pytest.raises(ValueError, match="torch threads must be a whole number >= 0"):
        cli.resolve_torch_threads(-1)
    torch.set_num_threads(2)
    assert cli.set_torch_threads(0) == 2  # 0: torch's default, untouched
    assert cli.set_torch_threads(1) == 1


@pytest.mark.parametrize(("flag", "expected"), [([], 1), (["--torch-threads", "2"], 2), (["--torch-threads", "0"], 3)])
def test_main_job_trains_with_one_thread_by_default(flag, expected, restore_threads, monkeypatch, tmp_path):
    from sb3_r2vpo import train

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(3)  # stands for torch's default (one per core)
    seen = []

    def fake_run(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return {
            "env_id": "CartPole-v1",
            "final_mean_return": 0.0,
            "final_std_return": 0.0,
            "timesteps": 0,
            "lagrange_multiplier": 1.0,
            "model": "m",
            "learning_curve": "c",
        }

    monkeypatch.setattr(train, "run", fake_run)
    train.main(["--out", str(tmp_path), *flag])
    assert seen == [expected]
    with pytest.raises(SystemExit):
        train.main(["--out", str(tmp_path), "--torch-threads", "-1"])


def test_tuning_workers_train_with_one_thread_and_restore(restore_threads, monkeypatch, tmp_path):
    pytest.importorskip("optuna")
    from sb3_r2vpo import tuning

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(3)
    seen = []

    def fake_objective(*args, **kwargs):
        def objective(trial):
            trial.set_user_attr("n_timesteps", 64)
            seen.append(torch.get_num_threads())
            return 0.0

        return objective

    monkeypatch.setattr(tuning, "make_objective", fake_objective)
    tuning.optimize("CartPole-v1", 1, storage=f"sqlite:///{tmp_path}/t.db", n_timesteps=64, show_progress=False)
    tuning.optimize(
        "CartPole-v1", 2, storage=f"sqlite:///{tmp_path}/t.db", n_timesteps=64, show_progress=False, torch_threads=2
    )
    assert seen == [1, 2] and torch.get_num_threads() == 3


def test_zoo_launcher_passes_one_thread_unless_told(monkeypatch):
    pytest.importorskip("rl_zoo3")
    from rl_zoo3 import cli as zoo_cli

    from sb3_r2vpo import zoo

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = []
    monkeypatch.setattr(zoo_cli, "enjoy", lambda: seen.append(list(sys.argv[1:])))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    zoo.main(["enjoy", "--algo", "r2vpo", "--env", "CartPole-v1"])
    zoo.main(["enjoy", "--algo", "r2vpo", "--env", "CartPole-v1", "--num-threads", "-1"])
    zoo.main(["enjoy", "--algo", "r2vpo", "--env", "CartPole-v1", "--num-threads=4"])
    assert seen[0][-2:] == ["--num-threads", "1"]
    assert seen[1].count("--num-threads") == 1 and seen[2][-1] == "--num-threads=4"
