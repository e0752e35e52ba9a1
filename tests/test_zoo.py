"""RL Zoo integration: the launcher, the packaged YAML, its errors, and the wheel."""

import importlib.util
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize

from sb3_r2vpo import R2VPO
from sb3_r2vpo.presets import get_preset, hyperparams_path, load_hyperparams
from sb3_r2vpo.zoo import ZooConfigError, check_entry, main

pytest.importorskip("rl_zoo3", reason="the zoo extra is not installed")

REPO = Path(__file__).resolve().parents[1]
# Entries that need an optional dependency, and the module that provides it.
OPTIONAL_MODULES = {
    "LunarLander-v3": "Box2D",
    "LunarLanderContinuous-v3": "Box2D",
    "BipedalWalker-v3": "Box2D",
    "atari": "ale_py",
}
MUJOCO = "mujoco"
# Keys whose YAML value is stored unchanged on the model.
PLAIN_KEYS = ("n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "ent_coef", "vf_coef", "max_grad_norm", "use_sde")


def test_launcher_trains_and_enjoys_r2vpo_and_trains_ppo(tmp_path, capsys):
    common = ["--env", "CartPole-v1", "-n", "2048", "-f", str(tmp_path), "--seed", "0", "--eval-freq", "-1"]
    main(["train", "--algo", "r2vpo", *common])
    model = R2VPO.load(tmp_path / "r2vpo" / "CartPole-v1_1" / "CartPole-v1.zip")
    entry = load_hyperparams()["CartPole-v1"]
    assert model.variance_target(1.0) == pytest.approx(entry["variance_target"])
    assert (model.n_steps, model.n_envs, model.n_epochs) == (entry["n_steps"], entry["n_envs"], entry["n_epochs"])
    assert model.num_timesteps >= 2048

    capsys.readouterr()
    main(["enjoy", "--algo", "r2vpo", "--env", "CartPole-v1", "-f", str(tmp_path), "--no-render", "-n", "300"])
    assert "Episode Reward" in capsys.readouterr().out

    main(["train", "--algo", "ppo", *common])
    ppo = PPO.load(tmp_path / "ppo" / "CartPole-v1_1" / "CartPole-v1.zip")
    assert ppo.n_steps == 32  # rl_zoo3's own ppo.yml entry, not ours


def test_console_script_module_runs():
    result = subprocess.run([sys.executable, "-m", "sb3_r2vpo.zoo"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage: r2vpo-zoo {train,enjoy" in result.stderr


@pytest.mark.parametrize("env_id", [key for key in load_hyperparams() if key != "default"])
def test_every_entry_builds_its_model(env_id):
    entry = load_hyperparams()[env_id]
    module = OPTIONAL_MODULES.get(env_id, MUJOCO if env_id.endswith("-v5") else None)
    if module is not None and importlib.util.find_spec(module) is None:
        pytest.skip(f"{env_id} needs the optional package {module!r}, which is not installed")
    if env_id == "atari":
        assert check_entry(hyperparams_path(), "BreakoutNoFrameskip-v4") == entry
        return
    check_entry(hyperparams_path(), env_id)
    preset = get_preset(env_id)
    model = preset.make_model(seed=0)
    assert model.n_envs == entry.get("n_envs", 1)
    assert isinstance(model.get_env(), VecNormalize) == bool(entry.get("normalize", False))
    assert model.variance_target(1.0) == pytest.approx(entry["variance_target"])
    for key in PLAIN_KEYS:
        if key in entry:
            assert getattr(model, key) == pytest.approx(entry[key]), key
    if isinstance(entry.get("learning_rate"), float):
        assert model.lr_schedule(0.5) == pytest.approx(entry["learning_rate"])
    if "policy_kwargs" in entry:
        assert "log_std_init" in model.policy_kwargs or "net_arch" in model.policy_kwargs
    model.get_env().close()


def test_unknown_key_names_file_entry_and_key(tmp_path):
    config = tmp_path / "mine.yml"
    config.write_text("CartPole-v1:\n  n_envs: 2\n  clip_range: 0.2\n")
    with pytest.raises(SystemExit, match=r"mine.yml: entry 'CartPole-v1': R2VPO takes no argument 'clip_range'"):
        main(["train", "--algo", "r2vpo", "--env", "CartPole-v1", "-conf", str(config), "-f", str(tmp_path)])
    config.write_text("CartPole-v1:\n  varience_target: 0.02\n")
    with pytest.raises(ZooConfigError, match=r"no argument 'varience_target'; did you mean 'variance_target'"):
        check_entry(config, "CartPole-v1")


def test_malformed_yaml_and_missing_entry(tmp_path):
    config = tmp_path / "broken.yml"
    config.write_text("CartPole-v1:\n  n_envs: [2\n")
    with pytest.raises(SystemExit, match=r"broken.yml: malformed YAML"):
        main(["train", "--algo", "r2vpo", "--env", "CartPole-v1", "--conf-file", str(config), "-f", str(tmp_path)])
    with pytest.raises(ZooConfigError, match=r"r2vpo.yml: no entry for 'Taxi-v3'; entries: .*CartPole-v1"):
        check_entry(hyperparams_path(), "Taxi-v3")


def test_unknown_env_id_is_one_clear_message(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown environment id 'CartPol-v1'; did you mean 'CartPole-v1'"):
        main(["train", "--algo", "r2vpo", "--env", "CartPol-v1", "-f", str(tmp_path)])


def test_wheel_ships_the_hyperparameter_file(tmp_path):
    """A wheel built from the repo, installed without the checkout in reach, finds r2vpo.yml."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheel_dir.glob("sb3_r2vpo-*.whl")
    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    target = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        cwd=tmp_path,
    )
    # The fresh venv borrows this environment's dependencies (plain path entry: its editable finder stays off).
    (target / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = (
        "import sb3_r2vpo, sb3_r2vpo.presets as p; "
        "print(sb3_r2vpo.__file__); print(p.hyperparams_path()); print(len(p.load_hyperparams()))"
    )
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
    package_file, yaml_path, entries = result.stdout.split()
    assert package_file.startswith(str(target)), "imported the checkout instead of the wheel"
    assert yaml_path.startswith(str(target)) and yaml_path.endswith("r2vpo.yml")
    assert int(entries) == len(load_hyperparams()) >= 20
