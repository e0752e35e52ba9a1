"""How each benchmarked algorithm is built for a task, and from which hyperparameter entry."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from pathlib import Path
from typing import Any

from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_r2vpo.benchmark.baselines import SPO
from sb3_r2vpo.benchmark.envs import DRIFTING_PENDULUM
from sb3_r2vpo.presets import Preset, get_preset, load_hyperparams
from sb3_r2vpo.r2vpo import R2VPO

# Tasks without an entry of their own borrow one.
BORROWED_ENTRY = {DRIFTING_PENDULUM: "Pendulum-v1"}


def zoo_hyperparams_file(algo: str) -> Path:
    """rl_zoo3's own YAML for ``ppo`` or ``trpo``."""
    import rl_zoo3

    return Path(rl_zoo3.__file__).parent / "hyperparams" / f"{algo}.yml"


def entry_candidates(env_id: str) -> list[str]:
    """Entry names to try for ``env_id``: itself (or what it borrows), then older versions of a -v5 task."""
    name = BORROWED_ENTRY.get(env_id, env_id)
    candidates = [name]
    if name.endswith("-v5"):
        candidates += [name[:-1] + "4", name[:-1] + "2"]
    return [*candidates, "default"]


def preset_for(env_id: str, path: Path | None) -> tuple[Preset, str]:
    """The first entry of ``path`` that fits ``env_id``, retargeted to ``env_id``; and its description."""
    available = load_hyperparams(path)
    name = next(candidate for candidate in entry_candidates(env_id) if candidate in available)
    preset = dataclasses.replace(get_preset(env_id, path=path, entry_name=name), env_id=env_id)
    if name == "default":
        preset.n_timesteps = 0
    return preset, f"{path.name if path else 'r2vpo.yml'}:{name}"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """
    Everything a benchmark run of one algorithm on one task depends on, besides the seed and the budget.

    :param preset: The hyperparameter entry, retargeted to the task
    :param algorithm: The class to build
    :param overrides: Constructor arguments that win over the entry
    :param entry: Where the hyperparameters come from, for the report
    """

    preset: Preset
    algorithm: type[BaseAlgorithm]
    overrides: dict[str, Any]
    entry: str

    def make_model(self, seed: int) -> BaseAlgorithm:
        return self.preset.make_model(seed=seed, algorithm=self.algorithm, **self.overrides)

    def effective(self) -> tuple:
        """The constructor's arguments with its defaults filled in, and how the env is built: equal means same run."""
        signature = inspect.signature(self.algorithm.__init__).parameters
        defaults = {name: value.default for name, value in signature.items() if value.default is not inspect.Parameter.empty}
        kwargs = {**defaults, **self.preset.model_kwargs, **self.overrides}
        return (
            self.algorithm,
            self.preset.n_envs,
            self.preset.policy,
            self.preset.normalize,
            # repr: schedules and policy_kwargs (activation classes) have no __eq__ but a faithful repr.
            repr(sorted(kwargs.items())),
        )


def configure(algo: str, env_id: str) -> RunConfig:
    """
    How ``algo`` is built for ``env_id``:

    - ``r2vpo``: our ``r2vpo.yml`` entry; ``r2vpo-kK``: the same with ``replay_rollouts=K``;
    - ``ppo`` / ``trpo``: rl_zoo3's own ppo.yml / trpo.yml entry (-v4 or -v2 entry for a -v5 task);
    - ``r2vpo-matched``: R2VPO with exactly PPO's entry, the clip replaced by the brake (library δ);
    - ``spo``: PPO's entry with SPO's loss (ε = 0.2) in place of the clip.
    """
    if algo == "r2vpo" or algo.startswith("r2vpo-k"):
        preset, entry = preset_for(env_id, None)
        overrides = {"replay_rollouts": int(algo[len("r2vpo-k") :])} if algo.startswith("r2vpo-k") else {}
        return RunConfig(preset, R2VPO, overrides, entry)
    if algo == "trpo":
        from sb3_contrib import TRPO

        preset, entry = preset_for(env_id, zoo_hyperparams_file("trpo"))
        return RunConfig(preset, TRPO, {}, entry)
    preset, entry = preset_for(env_id, zoo_hyperparams_file("ppo"))
    if algo == "ppo":
        return RunConfig(preset, PPO, {}, entry)
    without_clip = {key: value for key, value in preset.model_kwargs.items() if key != "clip_range"}
    preset = dataclasses.replace(preset, model_kwargs=without_clip)
    if algo == "r2vpo-matched":
        return RunConfig(preset, R2VPO, {}, entry + " (clip removed)")
    if algo == "spo":
        return RunConfig(preset, SPO, {}, entry + " (clip replaced by SPO's loss, ε=0.2)")
    raise ValueError(f"unknown algorithm {algo!r}; known: r2vpo, r2vpo-k<K>, r2vpo-matched, ppo, trpo, spo")


def build(algo: str, env_id: str, seed: int) -> tuple[BaseAlgorithm, Preset, str]:
    """
    The model of ``algo`` for ``env_id`` (see :func:`configure`).

    :return: ``(model, preset, entry description)``
    """
    config = configure(algo, env_id)
    return config.make_model(seed), config.preset, config.entry


# Cached: it reads the YAML files (~0.16 s) and the answer is the same for every seed of a task.
@functools.cache
def same_run_as(algo: str, env_id: str) -> str | None:
    """
    ``"r2vpo"`` when ``r2vpo-matched`` on ``env_id`` would be R2VPO's own run: our entry is PPO's (clip removed,
    library δ), so both build the same model and, seeded and single-threaded, train it bit for bit alike.
    ``None`` otherwise.
    """
    if algo != "r2vpo-matched":
        return None
    return "r2vpo" if configure(algo, env_id).effective() == configure("r2vpo", env_id).effective() else None
