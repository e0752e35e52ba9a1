"""
RL Zoo launcher: registers R2VPO with rl_zoo3, then hands over to rl_zoo3's own scripts.

    python -m sb3_r2vpo.zoo train --algo r2vpo --env CartPole-v1 -n 20000 -f logs
    python -m sb3_r2vpo.zoo enjoy --algo r2vpo --env CartPole-v1 -f logs --no-render
    python -m sb3_r2vpo.zoo train --algo ppo --env CartPole-v1 -f logs      # the zoo's own algorithms too

(also installed as the ``r2vpo-zoo`` console script). Every rl_zoo3 flag works unchanged. With ``--algo r2vpo``
and no ``-conf``, the hyperparameters come from the packaged ``r2vpo.yml``. ``train`` and ``enjoy`` use one
PyTorch thread unless ``--num-threads`` (rl_zoo3's flag; -1: PyTorch's default) or ``OMP_NUM_THREADS`` says
otherwise.

rl_zoo3 2.9 has no plugin hook; this follows its SBX guide: add the algorithm to ``rl_zoo3.ALGOS`` (and the
Optuna sampler to ``rl_zoo3.hyperparams_opt``) before rl_zoo3 parses its arguments. rl_zoo3 turns only its own
keys (``learning_rate``, ``clip_range``, ...) from ``lin_<value>`` into schedules; R2VPO's schedulable keys
(``variance_target: lin_0.04``) are converted by a wrapper around its schedule preprocessing.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import os
import sys
from pathlib import Path
from typing import Any

from sb3_r2vpo.presets import R2VPO_SCHEDULABLE_KEYS, check_env_id, hyperparams_path, load_hyperparams, parse_schedule
from sb3_r2vpo.r2vpo import R2VPO
from sb3_r2vpo.r2vpo.r2vpo import PPO_ONLY_ARGUMENTS

ALGO_NAME = "r2vpo"
SCRIPTS = ("train", "enjoy", "plot_train", "plot_from_file", "all_plots")
# Keys rl_zoo3 consumes itself before building the model (exp_manager._preprocess_hyperparams).
ZOO_KEYS = frozenset(
    {
        "n_envs",
        "n_timesteps",
        "policy",
        "normalize",
        "env_wrapper",
        "vec_env_wrapper",
        "frame_stack",
        "callback",
        "env_kwargs",
        "monitor_kwargs",
    }
)


class ZooConfigError(ValueError):
    """A zoo hyperparameter file that R2VPO cannot use; the message names the file, entry and key."""


def register() -> None:
    """
    Make ``r2vpo`` a zoo algorithm: add :class:`R2VPO` to ``rl_zoo3.ALGOS`` and its Optuna sampler to
    ``rl_zoo3.hyperparams_opt``. Call it before driving rl_zoo3 from Python; it is idempotent.
    """
    import rl_zoo3
    from rl_zoo3 import hyperparams_opt

    rl_zoo3.ALGOS[ALGO_NAME] = R2VPO
    _convert_r2vpo_schedules_in_zoo()
    try:
        from sb3_r2vpo.search_space import convert_r2vpo_params, sample_r2vpo_params
    except ImportError:  # optuna not installed: training and enjoying still work
        return
    hyperparams_opt.HYPERPARAMS_SAMPLER[ALGO_NAME] = sample_r2vpo_params
    hyperparams_opt.HYPERPARAMS_CONVERTER[ALGO_NAME] = convert_r2vpo_params


def convert_schedules(hyperparams: dict[str, Any]) -> dict[str, Any]:
    """
    Turn R2VPO's schedulable keys written ``lin_<value>`` (e.g. ``variance_target: lin_0.04``) into schedules,
    as rl_zoo3 does for its own keys; numbers and every other key are left as they are.

    :param hyperparams: A zoo entry (changed in place)
    :return: ``hyperparams``
    """
    for key in R2VPO_SCHEDULABLE_KEYS:
        if isinstance(hyperparams.get(key), str):
            hyperparams[key] = parse_schedule(key, hyperparams[key])
    return hyperparams


def _convert_r2vpo_schedules_in_zoo() -> None:
    """Wrap ``ExperimentManager._preprocess_schedules`` (once) so that it also applies :func:`convert_schedules`."""
    from rl_zoo3.exp_manager import ExperimentManager

    original = ExperimentManager.__dict__["_preprocess_schedules"].__func__
    if getattr(original, "_r2vpo_wrapper", False):
        return

    def preprocess_schedules(hyperparams: dict[str, Any]) -> dict[str, Any]:
        return original(convert_schedules(hyperparams))

    preprocess_schedules._r2vpo_wrapper = True  # type: ignore[attr-defined]
    ExperimentManager._preprocess_schedules = staticmethod(preprocess_schedules)


def constructor_arguments() -> frozenset[str]:
    """Names R2VPO's constructor takes, as a zoo entry may set them."""
    return frozenset(name for name in inspect.signature(R2VPO.__init__).parameters if name not in ("self", "env"))


def check_entry(config: str | Path, env_id: str) -> dict[str, Any]:
    """
    Validate the zoo entry R2VPO would be trained with, before rl_zoo3 builds anything.

    :param config: YAML hyperparameter file in rl_zoo3's format
    :param env_id: The ``--env`` id (Atari ids fall back to the ``atari`` entry, as in the zoo)
    :return: The entry
    :raises ZooConfigError: naming the file, the entry and the offending key
    """
    try:
        data = load_hyperparams(config)
    except ValueError as error:
        raise ZooConfigError(str(error)) from error
    name = env_id
    if name not in data:
        if "NoFrameskip" in env_id or env_id.startswith("ALE/"):
            name = "atari"
        if name not in data:
            raise ZooConfigError(f"{config}: no entry for {env_id!r}; entries: {', '.join(sorted(data))}")
    entry = data[name]
    if not isinstance(entry, dict):
        raise ZooConfigError(f"{config}: entry {name!r} must be a mapping of hyperparameters, got {type(entry).__name__}")
    allowed = constructor_arguments() | ZOO_KEYS
    for key in entry:
        if key in PPO_ONLY_ARGUMENTS:
            raise ZooConfigError(f"{config}: entry {name!r}: R2VPO takes no argument {key!r}: {PPO_ONLY_ARGUMENTS[key]}")
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ZooConfigError(f"{config}: entry {name!r}: R2VPO takes no argument {key!r}{hint}")
    try:
        convert_schedules(dict(entry))
    except ValueError as error:
        raise ZooConfigError(f"{config}: entry {name!r}: {error}") from None
    return entry


def _prepare_train_argv(argv: list[str]) -> list[str]:
    """Add the packaged config for ``--algo r2vpo`` and check the env id and the entry up front."""
    import rl_zoo3.import_envs  # noqa: F401  (registers the extra envs the zoo knows)

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--algo", default="ppo")
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("-conf", "--conf-file", default=None)
    parser.add_argument("--gym-packages", nargs="+", default=[])
    known, _ = parser.parse_known_args(argv)
    for module in known.gym_packages:
        __import__(module)
    try:
        check_env_id(known.env)
    except ValueError as error:
        raise ZooConfigError(str(error)) from None
    if known.algo != ALGO_NAME:
        return argv
    config = known.conf_file
    if config is None:
        config = str(hyperparams_path())
        argv = [*argv, "--conf-file", config]
    if config.endswith((".yml", ".yaml")):
        check_entry(config, known.env)
    return argv


def _default_torch_threads(argv: list[str]) -> list[str]:
    """
    One PyTorch thread unless the command says otherwise (rl_zoo3's ``--num-threads N``; -1: PyTorch's default)
    or ``OMP_NUM_THREADS`` is set: rl_zoo3 keeps PyTorch's default (a thread per core), which makes small
    policies several times slower on a busy machine (see :func:`sb3_r2vpo.cli.set_torch_threads`).
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--num-threads", default=None)
    known, _ = parser.parse_known_args(argv)
    if known.num_threads is not None or os.environ.get("OMP_NUM_THREADS"):
        return argv
    return [*argv, "--num-threads", "1"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m sb3_r2vpo.zoo`` and ``r2vpo-zoo``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SCRIPTS:
        print(f"usage: r2vpo-zoo {{{','.join(SCRIPTS)}}} [rl_zoo3 arguments...]\n\n{__doc__}", file=sys.stderr)
        raise SystemExit(2)
    script, rest = argv[0], argv[1:]
    try:
        from rl_zoo3 import cli
    except ImportError as error:
        raise SystemExit(f'r2vpo-zoo needs rl_zoo3: pip install "sb3-r2vpo[zoo]" ({error})') from error
    register()
    try:
        if script == "train":
            rest = _prepare_train_argv(rest)
    except ZooConfigError as error:
        raise SystemExit(f"r2vpo-zoo: error: {error}") from None
    scripts = {
        "train": cli.train,
        "enjoy": cli.enjoy,
        "plot_train": cli.plot_train,
        "plot_from_file": cli.plot_from_file,
        "all_plots": cli.all_plots,
    }
    if script in ("train", "enjoy"):
        rest = _default_torch_threads(rest)
    sys.argv = [f"r2vpo-zoo {script}", *rest]
    scripts[script]()


if __name__ == "__main__":
    main()
