"""Per-task R2VPO hyperparameters from the packaged RL Zoo file ``r2vpo.yml``, usable without rl_zoo3."""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from torch import nn

from sb3_r2vpo.r2vpo import R2VPO
from sb3_r2vpo.r2vpo.r2vpo import PPO_ONLY_ARGUMENTS

# Keys of a zoo entry that describe the environment or the budget rather than R2VPO's constructor.
_ZOO_ONLY_KEYS = ("n_envs", "n_timesteps", "policy", "normalize")
# R2VPO's own keys that may be written "lin_<value>" (or "lin_<initial>_<final>") too; rl_zoo3 does not know them,
# so the zoo launcher (sb3_r2vpo.zoo) converts them itself.
R2VPO_SCHEDULABLE_KEYS = ("variance_target",)
# The keys turned from "lin_<value>" into a linear schedule: rl_zoo3's, and R2VPO's.
_SCHEDULABLE_KEYS = ("learning_rate", "clip_range", "clip_range_vf", *R2VPO_SCHEDULABLE_KEYS)
# Zoo keys this loader does not implement; the zoo launcher handles them.
_UNSUPPORTED_KEYS = ("env_wrapper", "frame_stack", "vec_env_wrapper", "callback", "env_kwargs", "normalize_kwargs")


def check_env_id(env_id: str) -> None:
    """
    :raises ValueError: ``env_id`` is not registered with gymnasium; the message suggests the closest id
    """
    import difflib

    import gymnasium as gym

    if env_id not in gym.envs.registry:
        close = difflib.get_close_matches(env_id, list(gym.envs.registry), n=1)
        raise ValueError(f"unknown environment id {env_id!r}" + (f"; did you mean {close[0]!r}?" if close else ""))


def r2vpo_only_arguments() -> frozenset[str]:
    """Constructor arguments R2VPO has and SB3's PPO has not: what to drop when an R2VPO entry builds PPO."""
    from stable_baselines3 import PPO

    return frozenset(inspect.signature(R2VPO.__init__).parameters) - frozenset(inspect.signature(PPO.__init__).parameters)


def hyperparams_path() -> Path:
    """Path of the packaged ``r2vpo.yml`` (works from an installed wheel as well as from a checkout)."""
    return Path(str(resources.files("sb3_r2vpo.hyperparams").joinpath("r2vpo.yml")))


def load_hyperparams(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """
    Read a hyperparameter file in rl_zoo3's format.

    :param path: YAML file; the packaged ``r2vpo.yml`` when ``None``.
    :return: Mapping of env id to its raw entry.
    """
    path = hyperparams_path() if path is None else Path(path)
    try:
        with open(path) as file:
            data = yaml.safe_load(file)
    except OSError as error:
        raise ValueError(f"{path}: cannot read the hyperparameter file: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: malformed YAML: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of env ids to hyperparameters, got {type(data).__name__}")
    return data


def parse_schedule(key: str, value: str) -> LinearSchedule:
    """
    A zoo schedule string as a schedule of the progress remaining ``p`` (from 1 to 0).

    :param key: The hyperparameter it is for (named in the error)
    :param value: ``"lin_<initial>"``: ``initial · p``, annealed linearly to 0 at the end of training (rl_zoo3's
        form). For R2VPO's own keys (``variance_target``) also ``"lin_<initial>_<final>"``: linear from
        ``initial`` to ``final`` (``final + (initial - final) · p``), e.g. ``lin_0.04_0.01``; rl_zoo3 does not
        read this form for its own keys, so neither does this loader.
    :raises ValueError: ``value`` is not ``lin_<number>`` (or ``lin_<number>_<number>`` for R2VPO's keys) with finite
        numbers
    """
    prefix = "lin_"
    two_ends = key in R2VPO_SCHEDULABLE_KEYS
    try:
        if not value.startswith(prefix):
            raise ValueError
        ends = [float(part) for part in value[len(prefix) :].split("_")]
        if len(ends) > (2 if two_ends else 1) or not all(math.isfinite(end) for end in ends):
            raise ValueError
    except ValueError:
        forms = "lin_<initial>, e.g. lin_0.04" + (", or lin_<initial>_<final>, e.g. lin_0.04_0.01" if two_ends else "")
        raise ValueError(f"{key}: cannot read the schedule {value!r}; write {forms}") from None
    initial, final = ends[0], ends[1] if len(ends) == 2 else 0.0
    return LinearSchedule(initial, final, 1.0)


def _parse_value(key: str, value: Any) -> Any:
    if key in _SCHEDULABLE_KEYS and isinstance(value, str) and value.startswith("lin_"):
        return parse_schedule(key, value)
    if key == "policy_kwargs" and isinstance(value, str):
        # rl_zoo3 writes policy_kwargs as a Python expression that may name torch.nn.
        return eval(value, {"__builtins__": {}}, {"dict": dict, "nn": nn})
    return value


@dataclass
class Preset:
    """
    One task's entry of ``r2vpo.yml``, split into what builds the env and what builds the model.

    :param env_id: Gymnasium id of the task
    :param n_envs: Number of parallel environments
    :param n_timesteps: Training budget
    :param policy: Policy alias
    :param normalize: Whether to wrap the training env in ``VecNormalize``
    :param model_kwargs: Keyword arguments for :class:`R2VPO`
    """

    env_id: str
    n_envs: int = 1
    n_timesteps: int = 1_000_000
    policy: str = "MlpPolicy"
    normalize: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def make_env(self, seed: int | None = None, training: bool = True) -> VecEnv:
        """Vectorised env as the zoo builds it (``VecNormalize`` when the entry asks, frozen when not training)."""
        env = make_vec_env(self.env_id, n_envs=self.n_envs if training else 1, seed=seed)
        if self.normalize:
            env = VecNormalize(env, training=training, norm_reward=training)
        return env

    def make_model(
        self, seed: int | None = None, env: VecEnv | None = None, algorithm: type[BaseAlgorithm] = R2VPO, **overrides: Any
    ) -> BaseAlgorithm:
        """
        Build ``algorithm`` (R2VPO by default) with this entry's hyperparameters; ``overrides`` win over the file.

        :raises TypeError: R2VPO from an entry that sets a PPO-only key (``clip_range``): the message says which
            R2VPO argument plays its role
        """
        kwargs = {**copy.deepcopy(self.model_kwargs), **overrides}
        if isinstance(algorithm, type) and issubclass(algorithm, R2VPO):
            for name in PPO_ONLY_ARGUMENTS:
                if name in kwargs:
                    raise TypeError(f"the {self.env_id!r} entry sets `{name}`: {PPO_ONLY_ARGUMENTS[name]}")
        return algorithm(self.policy, self.make_env(seed) if env is None else env, seed=seed, **kwargs)


def get_preset(env_id: str, path: str | Path | None = None, entry_name: str | None = None) -> Preset:
    """
    The entry for ``env_id`` in the hyperparameter file.

    :param env_id: Gymnasium id, e.g. ``"CartPole-v1"``
    :param path: YAML file; the packaged ``r2vpo.yml`` when ``None``.
    :param entry_name: The entry to read when it is not named ``env_id`` (e.g. a -v4 entry for a -v5 task)
    """
    data = load_hyperparams(path)
    source = hyperparams_path() if path is None else path
    entry_name = env_id if entry_name is None else entry_name
    if entry_name not in data:
        raise KeyError(f"{source}: no entry for {entry_name!r}; entries: {', '.join(sorted(data))}")
    entry = dict(data[entry_name])
    unsupported = [key for key in _UNSUPPORTED_KEYS if key in entry]
    if unsupported:
        raise ValueError(
            f"{source}: entry {entry_name!r} uses {unsupported}, which only the RL Zoo launcher implements "
            "(python -m sb3_r2vpo.zoo train --algo r2vpo ...)"
        )
    model_kwargs = {key: _parse_value(key, value) for key, value in entry.items() if key not in _ZOO_ONLY_KEYS}
    return Preset(
        env_id=env_id,
        n_envs=int(entry.get("n_envs", 1)),
        n_timesteps=int(float(entry.get("n_timesteps", 1e6))),
        policy=entry.get("policy", "MlpPolicy"),
        normalize=bool(entry.get("normalize", False)),
        model_kwargs=model_kwargs,
    )
