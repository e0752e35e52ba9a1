"""
RL Zoo launcher: registers R2VPO (and its maskable and recurrent versions) with rl_zoo3, then hands over to
rl_zoo3's own scripts.

    python -m sb3_r2vpo.zoo train --algo r2vpo --env CartPole-v1 -n 20000 -f logs
    python -m sb3_r2vpo.zoo enjoy --algo r2vpo --env CartPole-v1 -f logs --no-render
    python -m sb3_r2vpo.zoo train --algo r2vpo_lstm --env CartPoleNoVel-v1 -f logs     # RecurrentR2VPO
    python -m sb3_r2vpo.zoo train --algo r2vpo_mask --env sb3_r2vpo/InvalidActionEnvDiscrete-v0 -f logs
    python -m sb3_r2vpo.zoo train --algo ppo --env CartPole-v1 -f logs      # the zoo's own algorithms too

(also installed as the ``r2vpo-zoo`` console script). Every rl_zoo3 flag works unchanged. The algorithms follow
the zoo's names (``ppo``, ``ppo_lstm``; sb3-contrib's MaskablePPO would be ``ppo_mask``): ``r2vpo`` is
:class:`~sb3_r2vpo.R2VPO`, ``r2vpo_lstm`` :class:`~sb3_r2vpo.RecurrentR2VPO`, ``r2vpo_mask``
:class:`~sb3_r2vpo.MaskableR2VPO`. Without ``-conf``, the hyperparameters come from the packaged ``<algo>.yml``
(``r2vpo.yml``, ``r2vpo_lstm.yml``, ``r2vpo_mask.yml``). ``train`` and ``enjoy`` use one PyTorch thread unless
``--num-threads`` (rl_zoo3's flag; -1: PyTorch's default) or ``OMP_NUM_THREADS`` says otherwise.

The zoo's evaluation (``EvalCallback``) and ``enjoy`` call ``predict`` without action masks, for ``r2vpo_mask``
too (rl_zoo3 2.9 has no maskable algorithm of its own); training collects its rollouts under the env's masks.

rl_zoo3 2.9 has no plugin hook; this follows its SBX guide: add the algorithm to ``rl_zoo3.ALGOS`` (and the
Optuna sampler to ``rl_zoo3.hyperparams_opt``) before rl_zoo3 parses its arguments. rl_zoo3 turns only its own
keys (``learning_rate``, ``clip_range``, ...) from ``lin_<value>`` into schedules; R2VPO's schedulable keys
(``variance_target: lin_0.04``, or ``lin_0.04_0.01`` from 0.04 to 0.01) are converted by a wrapper around its schedule
preprocessing.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from sb3_r2vpo.presets import R2VPO_SCHEDULABLE_KEYS, check_env_id, load_hyperparams, parse_schedule
from sb3_r2vpo.r2vpo import R2VPO
from sb3_r2vpo.r2vpo.r2vpo import PPO_ONLY_ARGUMENTS

ALGO_NAME = "r2vpo"
#: The zoo names of the package's algorithms (the zoo's pattern: ``ppo``, ``ppo_lstm``, ``ppo_mask``), each with its
#: class (as ``module:attribute``; the contrib ones import sb3_contrib) and its packaged hyperparameter file.
ALGORITHMS = {
    ALGO_NAME: "sb3_r2vpo.r2vpo:R2VPO",
    "r2vpo_lstm": "sb3_r2vpo.r2vpo_recurrent:RecurrentR2VPO",
    "r2vpo_mask": "sb3_r2vpo.r2vpo_mask:MaskableR2VPO",
}
# The algorithms rl_zoo3's -optimize can tune (R2VPO's sampler; it tries replay, which RecurrentR2VPO refuses).
OPTIMIZABLE = (ALGO_NAME, "r2vpo_mask")
# A masked task for r2vpo_mask in the zoo (gymnasium ids need a registered env): sb3-contrib's invalid-action test
# env as its performance test sizes it (70 actions, 55 of them masked at every step; MaskablePPO reaches 90 of 100).
MASKED_ENVS = {
    "sb3_r2vpo/InvalidActionEnvDiscrete-v0": (
        "sb3_contrib.common.envs:InvalidActionEnvDiscrete",
        {"dim": 70, "n_invalid_actions": 55},
    ),
}
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


def algorithm_class(algo: str) -> type:
    """The class of a zoo algorithm name of :data:`ALGORITHMS` (``r2vpo_mask`` → :class:`~sb3_r2vpo.MaskableR2VPO`)."""
    import importlib

    module, name = ALGORITHMS[algo].split(":")
    return getattr(importlib.import_module(module), name)


def packaged_hyperparams(algo: str = ALGO_NAME) -> Path:
    """Path of an algorithm's packaged hyperparameter file, ``<algo>.yml`` (from a wheel as from a checkout)."""
    return Path(str(resources.files("sb3_r2vpo.hyperparams").joinpath(f"{algo}.yml")))


def register_envs() -> None:
    """Register the masked tasks of :data:`MASKED_ENVS` with gymnasium (idempotent)."""
    import gymnasium as gym

    for env_id, (entry_point, kwargs) in MASKED_ENVS.items():
        if env_id not in gym.envs.registry:
            gym.register(env_id, entry_point=entry_point, kwargs=kwargs)


def register() -> None:
    """
    Make ``r2vpo``, ``r2vpo_lstm`` and ``r2vpo_mask`` zoo algorithms: add their classes to ``rl_zoo3.ALGOS``, the
    Optuna sampler of R2VPO to ``rl_zoo3.hyperparams_opt`` (for ``r2vpo`` and ``r2vpo_mask``), and the masked tasks
    to gymnasium. Call it before driving rl_zoo3 from Python; it is idempotent.
    """
    import rl_zoo3
    from rl_zoo3 import hyperparams_opt

    for algo in ALGORITHMS:
        rl_zoo3.ALGOS[algo] = algorithm_class(algo)
    register_envs()
    _convert_r2vpo_schedules_in_zoo()
    try:
        from sb3_r2vpo.search_space import convert_r2vpo_params, sample_r2vpo_params
    except ImportError:  # optuna not installed: training and enjoying still work
        return
    for algo in OPTIMIZABLE:
        hyperparams_opt.HYPERPARAMS_SAMPLER[algo] = sample_r2vpo_params
        hyperparams_opt.HYPERPARAMS_CONVERTER[algo] = convert_r2vpo_params


def convert_schedules(hyperparams: dict[str, Any]) -> dict[str, Any]:
    """
    Turn R2VPO's schedulable keys written ``lin_<value>`` (e.g. ``variance_target: lin_0.04``) or
    ``lin_<initial>_<final>`` (``lin_0.04_0.01``) into schedules, as rl_zoo3 does for its own keys; numbers and every
    other key are left as they are.

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


def constructor_arguments(algo_class: type = R2VPO) -> frozenset[str]:
    """Names an algorithm's constructor takes (R2VPO's by default), as a zoo entry may set them."""
    return frozenset(name for name in inspect.signature(algo_class.__init__).parameters if name not in ("self", "env"))


def check_entry(
    config: str | Path, env_id: str, algo: str = ALGO_NAME, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """
    Validate the zoo entry an algorithm of the package would be trained with, before rl_zoo3 builds anything:
    its keys, and the values of the algorithm's own arguments (ranges and types, by the constructor's checks).

    :param config: YAML hyperparameter file in rl_zoo3's format
    :param env_id: The ``--env`` id (Atari ids fall back to the ``atari`` entry, as in the zoo)
    :param algo: The zoo name of the algorithm (a key of :data:`ALGORITHMS`)
    :param overrides: The ``-params key:value`` overrides, as rl_zoo3 parses them (checked with the entry)
    :return: The entry (without the overrides)
    :raises ZooConfigError: naming the file, the entry and the offending key or value
    """
    algo_class = algorithm_class(algo)
    name_of_class = algo_class.__name__
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
    checked = {**entry, **(overrides or {})}
    where = f"{config}: entry {name!r}"
    if overrides:
        where += f" with -params {' '.join(f'{key}:{value!r}' for key, value in overrides.items())}"
    allowed = constructor_arguments(algo_class) | ZOO_KEYS
    for key in checked:
        if key in PPO_ONLY_ARGUMENTS:
            raise ZooConfigError(f"{where}: {name_of_class} takes no argument {key!r}: {PPO_ONLY_ARGUMENTS[key]}")
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ZooConfigError(f"{where}: {name_of_class} takes no argument {key!r}{hint}")
    arguments = {key: value for key, value in checked.items() if key not in ZOO_KEYS}
    try:
        convert_schedules(arguments)
        if isinstance(arguments.get("clip_range_vf"), str):  # rl_zoo3 converts this one itself, later
            arguments["clip_range_vf"] = parse_schedule("clip_range_vf", arguments["clip_range_vf"])
        algo_class.check_arguments(**arguments)
    except (TypeError, ValueError) as error:
        raise ZooConfigError(f"{where}: {error}") from None
    return entry


def _prepare_train_argv(argv: list[str]) -> list[str]:
    """Add the packaged config for the package's algorithms and check the env id and the entry up front."""
    import rl_zoo3.import_envs  # noqa: F401  (registers the extra envs the zoo knows)
    from rl_zoo3.utils import StoreDict

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--algo", default="ppo")
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("-conf", "--conf-file", default=None)
    parser.add_argument("--gym-packages", nargs="+", default=[])
    parser.add_argument("-optimize", "--optimize-hyperparameters", action="store_true", default=False)
    parser.add_argument("-params", "--hyperparams", type=str, nargs="+", action=StoreDict, default=None)
    known, _ = parser.parse_known_args(argv)
    for module in known.gym_packages:
        __import__(module)
    try:
        check_env_id(known.env)
    except ValueError as error:
        raise ZooConfigError(str(error)) from None
    if known.algo not in ALGORITHMS:
        return argv
    if known.optimize_hyperparameters and known.algo not in OPTIMIZABLE:
        raise ZooConfigError(
            f"-optimize has no search space for {known.algo!r} (R2VPO's tries replay_rollouts > 0, which "
            f"RecurrentR2VPO refuses); it tunes {' and '.join(OPTIMIZABLE)}"
        )
    config = known.conf_file
    if config is None:
        config = str(packaged_hyperparams(known.algo))
        argv = [*argv, "--conf-file", config]
    if config.endswith((".yml", ".yaml")):
        check_entry(config, known.env, known.algo, known.hyperparams)
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
