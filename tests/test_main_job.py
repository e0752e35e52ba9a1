"""The README's main job: trains, evaluates, saves a loadable model and a learning-curve plot."""

import json

import numpy as np
import pytest

from sb3_r2vpo import R2VPO
from sb3_r2vpo.presets import get_preset, hyperparams_path, load_hyperparams
from sb3_r2vpo.train import main
from tests.conftest import variance_target_ends


def test_main_job_writes_model_plot_and_summary(tmp_path, capsys):
    main(["--steps", "2048", "--out", str(tmp_path), "--eval-points", "2", "--eval-episodes", "2", "--seed", "4"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["env_id"] == "CartPole-v1" and summary["timesteps"] >= 2048
    assert (tmp_path / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evaluations = np.load(tmp_path / "evaluations.npz")
    assert len(evaluations["timesteps"]) == 2
    model = R2VPO.load(tmp_path / "model.zip")
    assert model.lagrange_multiplier == pytest.approx(summary["lagrange_multiplier"])
    assert "learning curve:" in capsys.readouterr().out


def test_main_job_rejects_bad_steps(tmp_path):
    with pytest.raises(SystemExit):
        main(["--steps", "0", "--out", str(tmp_path)])


def test_packaged_presets_build_models():
    assert hyperparams_path().name == "r2vpo.yml" and hyperparams_path().is_file()
    for env_id in ("CartPole-v1", "Pendulum-v1"):
        preset = get_preset(env_id)
        model = preset.make_model(seed=0)
        assert model.n_envs == preset.n_envs
        start, end = variance_target_ends(load_hyperparams()[env_id]["variance_target"])
        assert (model.variance_target(1.0), model.variance_target(0.0)) == pytest.approx((start, end))
    # lin_ schedules decay to zero, as in the zoo
    cartpole = get_preset("CartPole-v1").make_model(seed=0)
    assert cartpole.lr_schedule(1.0) == pytest.approx(1e-3) and cartpole.lr_schedule(0.0) == pytest.approx(0.0)


def test_unknown_preset_names_file_and_entries(tmp_path):
    with pytest.raises(KeyError, match=r"r2vpo.yml: no entry for 'NoSuchEnv-v0'; entries: .*CartPole-v1"):
        get_preset("NoSuchEnv-v0")
    bad = tmp_path / "bad.yml"
    bad.write_text("CartPole-v1: [unclosed\n")
    with pytest.raises(ValueError, match=r"bad.yml: malformed YAML"):
        load_hyperparams(bad)
