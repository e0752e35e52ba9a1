"""The benchmark runner on a Ray cluster (here a local instance): same results as local processes, lost workers retried."""

import importlib.util
import json
import os
import signal
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sb3_contrib", reason="the benchmark extra is not installed")

from sb3_r2vpo.benchmark.__main__ import main
from sb3_r2vpo.benchmark.runner import CHECKPOINT_FILE, load_runs

TIMINGS = {}


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray instance of 2 CPUs, started in this process: the runner uses it (its address, as a user's)."""
    if importlib.util.find_spec("ray") is None:
        message = 'Ray is not installed: pip install -e ".[ray]"'
        if os.environ.get("R2VPO_REQUIRE_EXTRAS", "") not in ("", "0"):  # CI installs every extra
            pytest.fail(message)
        pytest.skip(message)
    import ray

    started = time.perf_counter()
    context = ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    TIMINGS["ray.init"] = time.perf_counter() - started
    yield context.address_info["address"]
    ray.shutdown()
    if TIMINGS:
        print("\ntimings (s): " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in TIMINGS.items()))


SUITE = ["--envs", "CartPole-v1", "--algos", "r2vpo", "ppo", "--seeds", "0", "--steps", "1024"]
SUITE += ["--eval-points", "2", "--eval-episodes", "2"]


def test_a_ray_cluster_writes_the_results_local_processes_write(tmp_path, ray_address, capsys):
    started = time.perf_counter()
    main(["run", *SUITE, "--jobs", "2", "--out", str(tmp_path / "local")])
    TIMINGS["--jobs 2"] = time.perf_counter() - started
    started = time.perf_counter()
    main(["run", *SUITE, "--ray", ray_address, "--out", str(tmp_path / "ray")])
    TIMINGS["--ray"] = time.perf_counter() - started
    printed = capsys.readouterr().out
    assert "[1/2]" in printed and "[2/2]" in printed and "final" in printed  # progress, as the local path prints it

    local, on_ray = load_runs(tmp_path / "local"), load_runs(tmp_path / "ray")
    assert [(run["algo"], run["seed"]) for run in on_ray] == [("ppo", 0), ("r2vpo", 0)]
    timed = ("train_seconds", "seconds_per_step")
    for ours, theirs in zip(on_ray, local, strict=True):
        # Same seeds, same returns: the curves differ in wall time only.
        np.testing.assert_array_equal(ours.pop("curve")[:, [0, 2, 3]], theirs.pop("curve")[:, [0, 2, 3]])
        assert {k: v for k, v in ours.items() if k not in timed} == {k: v for k, v in theirs.items() if k not in timed}
    files = sorted(path.relative_to(tmp_path / "ray") for path in (tmp_path / "ray").rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(tmp_path / "local") for path in (tmp_path / "local").rglob("*") if path.is_file())
    assert {path.name for path in files} == {"curve.csv", "result.json"}  # no checkpoint left behind
    for path in files:  # written byte for byte as a local run writes them (curve.csv's CRLF line ends too)
        ours, theirs = (tmp_path / "ray" / path).read_bytes(), (tmp_path / "local" / path).read_bytes()
        assert ours.count(b"\r\n") == theirs.count(b"\r\n") and ours.count(b"\n") == theirs.count(b"\n")

    # The same command again: everything is finished, Ray is not even needed.
    main(["run", *SUITE, "--ray", ray_address, "--out", str(tmp_path / "ray")])
    assert "2 of 2 runs already finished; 0 to go" in capsys.readouterr().out


def _ray_task_workers() -> list[int]:
    """The processes executing the runner's Ray task (Ray titles them ``ray::_ray_task``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::_ray_task"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker's process in /proc")
def test_a_run_whose_worker_is_killed_is_retried_from_its_checkpoint(tmp_path, ray_address, capsys):
    out = tmp_path / "results"
    args = ["run", "--envs", "InvertedPendulum-v5", "--algos", "r2vpo", "--seeds", "0", "--steps", "3000"]
    args += ["--eval-points", "12", "--eval-episodes", "1", "--checkpoint-every", "3", "--ray", ray_address]
    args += ["--ray-retries", "1", "--out", str(out)]
    errors = []

    def drive():
        try:
            main(args)
        except BaseException as error:  # failed in the test's thread below
            errors.append(error)

    driver = threading.Thread(target=drive)
    driver.start()
    checkpoint = out / "runs" / "InvertedPendulum-v5" / "r2vpo" / "seed0" / CHECKPOINT_FILE
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and driver.is_alive() and not checkpoint.exists():
        time.sleep(0.05)
    workers = _ray_task_workers()
    assert checkpoint.exists() and len(workers) == 1, "no checkpoint, or not one worker running the run"
    killed_at = json.loads(checkpoint.read_text())["env_steps"]
    os.kill(workers[0], signal.SIGKILL)
    driver.join(timeout=300)
    assert not driver.is_alive() and not errors, errors

    (run,) = load_runs(out)
    assert run["env_steps"] == 3008 and run["resumed_from_steps"][0] >= killed_at
    assert len(run["curve"]) == 13 and len(set(run["curve"][:, 0])) == 13  # every evaluation, once
    assert f"(resumed from {run['resumed_from_steps']})" in capsys.readouterr().out


def test_ray_not_installed_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as stopped:
        main(["run", *SUITE, "--ray", "auto", "--out", str(out)])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and 'pip install "sb3-r2vpo[ray]"' in error
    assert not out.exists()


def test_a_folder_named_ray_is_not_taken_for_ray(tmp_path, monkeypatch, capsys):
    # Run from /tmp, `import ray` finds Ray's own temp folder /tmp/ray: an empty namespace package, not Ray.
    folder = tmp_path / "ray"
    folder.mkdir()
    namespace = types.ModuleType("ray")
    namespace.__path__ = [str(folder)]  # what `import ray` gives for a bare folder ray/ on sys.path
    monkeypatch.setitem(sys.modules, "ray", namespace)
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as stopped:
        main(["run", *SUITE, "--ray", "auto", "--out", str(out)])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and 'pip install "sb3-r2vpo[ray]"' in error and str(folder) in error
    assert not out.exists()
