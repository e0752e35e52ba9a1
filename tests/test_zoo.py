"""RL Zoo integration: the launcher, the packaged YAML, its errors, and the wheel."""

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize

from sb3_r2vpo import R2VPO
from sb3_r2vpo.presets import get_preset, hyperparams_path, load_hyperparams
from sb3_r2vpo.zoo import ZooConfigError, check_entry, main
from tests.conftest import variance_target_ends
from tests.extras import require

pytest.importorskip("rl_zoo3", reason="the zoo extra is not installed")

REPO = Path(__file__).resolve().parents[1]
# Entries that need an optional dependency: the module, and the extra of sb3-r2vpo that installs it.
OPTIONAL_MODULES = {
    "LunarLander-v3": ("Box2D", "box2d"),
    "LunarLanderContinuous-v3": ("Box2D", "box2d"),
    "BipedalWalker-v3": ("Box2D", "box2d"),
    "atari": ("ale_py", "atari"),
}
MUJOCO = ("mujoco", "mujoco")
# Entries train one whole rollout of their own size up to this many steps; bigger ones (LunarLander 16 x 1024,
# BipedalWalker 32 x 2048) train one rollout of about 512 steps with the entry's n_envs and everything else.
MAX_ROLLOUT = 4096
# Keys whose YAML value is stored unchanged on the model.
PLAIN_KEYS = ("n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "ent_coef", "vf_coef", "max_grad_norm", "use_sde")


def test_launcher_trains_and_enjoys_r2vpo_and_trains_ppo(tmp_path, capsys):
    common = ["--env", "CartPole-v1", "-n", "2048", "-f", str(tmp_path), "--seed", "0", "--eval-freq", "-1"]
    main(["train", "--algo", "r2vpo", *common])
    model = R2VPO.load(tmp_path / "r2vpo" / "CartPole-v1_1" / "CartPole-v1.zip")
    entry = load_hyperparams()["CartPole-v1"]
    # the schedule's two ends as the entry writes them (lin_0.04_0.01): the launcher converted it as the loader does
    start, end = variance_target_ends(entry["variance_target"])
    assert (model.variance_target(1.0), model.variance_target(0.0)) == pytest.approx((start, end))
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


@pytest.mark.parametrize("env_id", [key for key in load_hyperparams() if key not in ("default", "atari")])
def test_every_entry_builds_its_model_and_trains(env_id):
    entry = load_hyperparams()[env_id]
    needs = OPTIONAL_MODULES.get(env_id, MUJOCO if env_id.endswith("-v5") else None)
    if needs is not None:
        require(*needs)
    check_entry(hyperparams_path(), env_id)
    preset = get_preset(env_id)
    model = preset.make_model(seed=0)
    assert model.n_envs == entry.get("n_envs", 1)
    assert isinstance(model.get_env(), VecNormalize) == bool(entry.get("normalize", False))
    start, end = variance_target_ends(entry["variance_target"])
    assert (model.variance_target(1.0), model.variance_target(0.0)) == pytest.approx((start, end))
    for key in PLAIN_KEYS:
        if key in entry:
            assert getattr(model, key) == pytest.approx(entry[key]), key
    if isinstance(entry.get("learning_rate"), float):
        assert model.lr_schedule(0.5) == pytest.approx(entry["learning_rate"])
    if "policy_kwargs" in entry:
        assert "log_std_init" in model.policy_kwargs or "net_arch" in model.policy_kwargs
    if model.n_steps * model.n_envs > MAX_ROLLOUT:
        model.get_env().close()
        n_steps = max(512 // preset.n_envs, 2)
        model = preset.make_model(seed=0, n_steps=n_steps, batch_size=min(model.batch_size, n_steps * preset.n_envs))
    rollout = model.n_steps * model.n_envs
    model.learn(rollout)
    assert model.num_timesteps == rollout and 1 <= model._n_updates <= model.n_epochs
    assert np.isfinite(model.lagrange_multiplier) and all(th.isfinite(p).all() for p in model.policy.parameters())
    model.get_env().close()


def test_atari_entry_trains_through_the_zoo_with_its_wrappers(tmp_path):
    """The `atari` entry as the zoo runs it: AtariWrapper (84x84 grey, frame skip), 4 stacked frames, CnnPolicy."""
    require("ale_py", "atari")
    require("cv2", "atari")
    entry = load_hyperparams()["atari"]
    for env_id in ("PongNoFrameskip-v4", "ALE/Pong-v5"):
        assert check_entry(hyperparams_path(), env_id) == entry
    rollout = entry["n_envs"] * entry["n_steps"]
    main(
        [
            "train",
            "--algo",
            "r2vpo",
            "--env",
            "PongNoFrameskip-v4",
            "-n",
            str(rollout),
            "-f",
            str(tmp_path),
            "--seed",
            "0",
            "--eval-freq",
            "-1",
        ]
    )
    model = R2VPO.load(tmp_path / "r2vpo" / "PongNoFrameskip-v4_1" / "PongNoFrameskip-v4.zip")
    assert type(model.policy).__name__ == "ActorCriticCnnPolicy"  # CnnPolicy
    assert model.observation_space.shape == (entry["frame_stack"], 84, 84)  # stacked 84x84 frames, channels first
    assert (model.n_envs, model.n_steps, model.n_epochs, model.batch_size) == (8, 128, 4, 256)
    assert model.num_timesteps == rollout and 1 <= model._n_updates <= entry["n_epochs"]
    assert model.variance_target(1.0) == pytest.approx(entry["variance_target"])
    assert model.lr_schedule(1.0) == pytest.approx(2.5e-4) and model.lr_schedule(0.0) == pytest.approx(0.0)


def test_unknown_key_names_file_entry_and_key(tmp_path):
    config = tmp_path / "mine.yml"
    config.write_text("CartPole-v1:\n  n_envs: 2\n  clip_range: 0.2\n")
    with pytest.raises(SystemExit, match=r"mine.yml: entry 'CartPole-v1': R2VPO takes no argument 'clip_range'"):
        main(["train", "--algo", "r2vpo", "--env", "CartPole-v1", "-conf", str(config), "-f", str(tmp_path)])
    config.write_text("CartPole-v1:\n  varience_target: 0.02\n")
    with pytest.raises(ZooConfigError, match=r"no argument 'varience_target'; did you mean 'variance_target'"):
        check_entry(config, "CartPole-v1")


@pytest.mark.parametrize(
    ("algo", "env_id", "entry", "params", "message"),
    [
        ("r2vpo", "CartPole-v1", "  variance_target: -1\n", [], r"`variance_target` must be a finite number > 0, got -1"),
        ("r2vpo", "CartPole-v1", "  n_envs: 2\n", ["variance_target:-1"], r"with -params variance_target:-1: "),
        ("r2vpo", "CartPole-v1", "  lagrange_multiplier_floor: 2\n", [], r"`lagrange_multiplier_floor` must be .* 1.0\]"),
        ("r2vpo", "CartPole-v1", "  clip_range_vf: lin_0\n", [], r"`clip_range_vf\(1.0\)` must be"),
        ("r2vpo", "CartPole-v1", "  lagrange_multiplier_floor: rollout\n", [], r"`lagrange_multiplier_floor` .*'auto'"),
        ("r2vpo_mask", "sb3_r2vpo/InvalidActionEnvDiscrete-v0", "  batch_size: 1\n", [], r"`batch_size` must be >= 2"),
        ("r2vpo_lstm", "CartPoleNoVel-v1", "  n_envs: 2\n", ["replay_rollouts:2"], r"RecurrentR2VPO takes no"),
    ],
)
def test_a_value_out_of_range_is_refused_before_anything_is_written(tmp_path, algo, env_id, entry, params, message):
    """Found by a fresh-user check: values (not only keys) of an entry or of -params are checked up front."""
    config = tmp_path / "mine.yml"
    config.write_text(f"{env_id}:\n{entry}")
    logs = tmp_path / "logs"
    argv = ["train", "--algo", algo, "--env", env_id, "-conf", str(config), "-f", str(logs)]
    with pytest.raises(SystemExit, match=r"mine.yml: entry .*" + message):
        main(argv + (["-params", *params] if params else []))
    assert not logs.exists(), "nothing (no Monitor file, no log folder) may be written before the check"


def test_a_valid_schedule_in_an_entry_passes_the_value_check(tmp_path):
    config = tmp_path / "mine.yml"
    config.write_text("CartPole-v1:\n  variance_target: lin_0.04\n  clip_range_vf: lin_0.2\n")
    assert check_entry(config, "CartPole-v1")["variance_target"] == "lin_0.04"
    config.write_text("CartPole-v1:\n  lagrange_multiplier_floor: auto\n")
    assert check_entry(config, "CartPole-v1")["lagrange_multiplier_floor"] == "auto"


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
    # Every subpackage of the checkout is in the wheel (sb3_r2vpo.benchmark was once left out of setup.cfg).
    with zipfile.ZipFile(wheel) as archive:
        shipped = {str(Path(name).parent) for name in archive.namelist() if name.endswith("/__init__.py")}
    subpackages = {str(init.parent.relative_to(REPO)) for init in (REPO / "sb3_r2vpo").rglob("__init__.py")}
    assert subpackages <= shipped, f"not in the wheel (add them to setup.cfg's packages): {sorted(subpackages - shipped)}"
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
