"""
The benchmark scripts folded into the runner (issue 12, item 7): ``ppo-matched``, ``r2vpo@<file>`` and the
``overhead`` subcommand.
"""

import json
import math
from pathlib import Path

import pytest
import yaml
from stable_baselines3 import PPO

from sb3_r2vpo import R2VPO
from sb3_r2vpo.benchmark.__main__ import main
from sb3_r2vpo.benchmark.algorithms import canonical_name, configure, preset_for, same_run_as, zoo_hyperparams_file
from sb3_r2vpo.benchmark.overhead import train_overhead
from sb3_r2vpo.benchmark.runner import load_runs

COMMITTED_OVERHEAD = Path(__file__).parents[1] / "benchmarks" / "results" / "train_overhead.json"


@pytest.mark.parametrize(
    ("env_id", "clip_at_start", "clip_at_half"),
    [("CartPole-v1", 0.2, 0.1), ("Pendulum-v1", 0.2, 0.2)],  # ppo.yml: lin_0.2 and 0.2
)
def test_ppo_matched_is_ppo_with_our_entry_and_ppos_clip(env_id, clip_at_start, clip_at_half):
    ours, _ = preset_for(env_id, None)
    zoo, _ = preset_for(env_id, zoo_hyperparams_file("ppo"))
    config = configure("ppo-matched", env_id)
    model = config.make_model(seed=0)
    try:
        assert type(model) is PPO and not hasattr(model, "variance_target")
        assert model.n_envs == ours.n_envs
        for key in ("n_steps", "n_epochs", "gamma", "gae_lambda", "ent_coef"):
            assert getattr(model, key) == ours.model_kwargs[key], key
        if "batch_size" in ours.model_kwargs:
            assert model.batch_size == ours.model_kwargs["batch_size"]
        learning_rate = ours.model_kwargs["learning_rate"]
        for progress in (1.0, 0.5):
            expected = learning_rate(progress) if callable(learning_rate) else learning_rate
            assert model.lr_schedule(progress) == pytest.approx(expected)
        assert model.clip_range(1.0) == pytest.approx(clip_at_start)
        assert model.clip_range(0.5) == pytest.approx(clip_at_half)
        assert repr(zoo.model_kwargs["clip_range"]) == repr(config.preset.model_kwargs["clip_range"])
    finally:
        model.env.close()
    assert config.entry.startswith(f"r2vpo.yml:{env_id} without R2VPO's arguments, clip_range of ppo.yml:{env_id}")
    # Our entry there is PPO's with δ added, so the runner copies a finished ppo run instead of training again.
    assert same_run_as("ppo-matched", env_id) == "ppo"


def test_train_overhead_gives_a_finite_positive_ratio_in_the_committed_format():
    result = train_overhead("CartPole-v1", repeats=2, n_steps=64, batch_size=32, n_epochs=1)
    assert math.isfinite(result["median_ratio"]) and result["median_ratio"] > 0
    assert math.isfinite(result["ratio_of_medians"]) and result["ratio_of_medians"] > 0
    assert result["ppo_median_s"] > 0 and result["r2vpo_median_s"] > 0
    committed = json.loads(COMMITTED_OVERHEAD.read_text())
    assert set(result) == set(committed["results"][0])


def test_overhead_subcommand_writes_the_committed_format(tmp_path, capsys):
    out = tmp_path / "overhead.json"
    args = ["overhead", "--envs", "Pendulum-v1", "--repeats", "1", "--n-steps", "32", "--batch-size", "32"]
    main([*args, "--n-epochs", "1", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["command"] == "python -m sb3_r2vpo.benchmark " + " ".join([*args, "--n-epochs", "1", "--out", str(out)])
    (result,) = written["results"]
    assert result["env_id"] == "Pendulum-v1" and result["n_steps"] == 32 and result["median_ratio"] > 0
    assert "median ratio R2VPO/PPO" in capsys.readouterr().out

    with pytest.raises(SystemExit) as stopped:
        main(["overhead", "--repeats", "0"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "--repeats" in error and ">= 1" in error
    with pytest.raises(SystemExit):
        main(["overhead", "--envs", "CartPol-v1"])
    error = capsys.readouterr().err.strip()
    assert "unknown environment id 'CartPol-v1'" in error and len(error.splitlines()) == 1


def _write_entry(path: Path, env_id: str = "CartPole-v1", **changes) -> Path:
    entry = {"n_envs": 2, "n_timesteps": 1000, "policy": "MlpPolicy", "n_steps": 32, "batch_size": 32, "n_epochs": 2}
    entry |= {"variance_target": 0.03, "learning_rate": "lin_0.002", **changes}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({env_id: entry}))
    return path


def test_r2vpo_from_a_hyperparameter_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_entry(tmp_path / "study" / "best.yml")
    name = canonical_name("r2vpo@./study/best.yml")
    assert name == "r2vpo@study%2Fbest.yml"  # a folder of the results: no "/" in it
    assert canonical_name("r2vpo@study/best.yml[n_epochs=3]") == "r2vpo@study%2Fbest.yml[n_epochs=3]"
    config = configure(name, "CartPole-v1")
    assert config.entry == "study/best.yml:CartPole-v1"
    model = config.make_model(seed=0)
    try:
        assert type(model) is R2VPO
        assert (model.n_envs, model.n_steps, model.batch_size, model.n_epochs) == (2, 32, 32, 2)
        assert model.variance_target(1.0) == pytest.approx(0.03)
        assert model.lr_schedule(0.5) == pytest.approx(0.001)
    finally:
        model.env.close()

    # Through the runner: one tiny run, stored under the encoded name, its result naming the file.
    out = tmp_path / "results"
    tiny = ["--seeds", "0", "--steps", "64", "--eval-points", "1", "--eval-episodes", "1", "--jobs", "1"]
    main(["run", "--envs", "CartPole-v1", "--algos", "r2vpo@study/best.yml", *tiny, "--out", str(out)])
    (run,) = load_runs(out)
    assert run["algo"] == "r2vpo@study%2Fbest.yml" and run["entry"] == "study/best.yml:CartPole-v1"
    assert (out / "runs" / "CartPole-v1" / "r2vpo@study%2Fbest.yml" / "seed0" / "result.json").exists()


@pytest.mark.parametrize(
    ("algo", "message"),
    [
        ("r2vpo@missing.yml", "r2vpo@missing.yml: no hyperparameter file 'missing.yml'"),
        ("r2vpo@pendulum.yml", "pendulum.yml: no entry for CartPole-v1"),
        ("r2vpo@typo.yml", "typo.yml:CartPole-v1: R2VPO has no argument 'varience_target'"),
        ("r2vpo@broken.yml", "broken.yml: malformed YAML"),
        ("ppo@pendulum.yml", "unknown algorithm 'ppo@pendulum.yml'"),
    ],
)
def test_a_bad_hyperparameter_file_is_a_one_line_error_before_anything_runs(tmp_path, monkeypatch, capsys, algo, message):
    monkeypatch.chdir(tmp_path)
    _write_entry(tmp_path / "pendulum.yml", env_id="Pendulum-v1")
    _write_entry(tmp_path / "typo.yml", varience_target=0.02)
    (tmp_path / "broken.yml").write_text("CartPole-v1: [unclosed\n")
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as stopped:
        main(["run", "--envs", "CartPole-v1", "--algos", algo, "--seeds", "0", "--steps", "64", "--out", str(out)])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not out.exists()
