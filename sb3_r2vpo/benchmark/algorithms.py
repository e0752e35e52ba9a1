"""How each benchmarked algorithm is built for a task, and from which hyperparameter entry."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_r2vpo.benchmark.baselines import SPO
from sb3_r2vpo.benchmark.envs import DRIFTING_PENDULUM
from sb3_r2vpo.presets import Preset, _parse_value, get_preset, load_hyperparams, r2vpo_only_arguments
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


def preset_for(env_id: str, path: Path | None, shown_as: str | None = None) -> tuple[Preset, str]:
    """
    The first entry of ``path`` that fits ``env_id``, retargeted to ``env_id``; and its description
    ``<file>:<entry>``, the file named ``shown_as`` (default: its file name).

    :raise ValueError: The file cannot be read, or has no entry that fits ``env_id`` (one line)
    """
    available = load_hyperparams(path)
    shown_as = shown_as or (path.name if path else "r2vpo.yml")
    candidates = entry_candidates(env_id)
    name = next((candidate for candidate in candidates if candidate in available), None)
    if name is None:
        raise ValueError(
            f"{shown_as}: no entry for {env_id} (looked for {', '.join(candidates)}); "
            f"entries: {', '.join(sorted(map(str, available))) or 'none'}"
        )
    preset = dataclasses.replace(get_preset(env_id, path=path, entry_name=name), env_id=env_id)
    if name == "default":
        preset.n_timesteps = 0
    return preset, f"{shown_as}:{name}"


def constructor_parameters(algorithm: type) -> dict[str, inspect.Parameter]:
    """
    The keyword arguments ``algorithm`` accepts, following ``**kwargs`` up the class hierarchy (SPO passes
    everything but ``spo_epsilon`` on to R2VPO).
    """
    parameters: dict[str, inspect.Parameter] = {}
    for cls in algorithm.__mro__:
        if "__init__" not in vars(cls):
            continue
        signature = inspect.signature(cls.__init__).parameters
        parameters.update({name: p for name, p in signature.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)})
        if not any(p.kind == p.VAR_KEYWORD for p in signature.values()):
            break
    return parameters


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

    def rollout_size(self) -> int:
        """Env steps per rollout (``n_steps · n_envs``): SB3 trains whole rollouts, so budgets round up to it."""
        default = constructor_parameters(self.algorithm)["n_steps"].default
        return int({**self.preset.model_kwargs, **self.overrides}.get("n_steps", default)) * self.preset.n_envs

    def arguments(self) -> dict[str, Any]:
        """The constructor's arguments as this run builds the model: its defaults, then the entry, then the overrides."""
        parameters = constructor_parameters(self.algorithm)
        defaults = {name: value.default for name, value in parameters.items() if value.default is not inspect.Parameter.empty}
        kwargs = {**defaults, **self.preset.model_kwargs, **self.overrides}
        return {name: value for name, value in kwargs.items() if name not in _RUNNER_ARGUMENTS}

    def effective(self) -> tuple:
        """The constructor's arguments with its defaults filled in, and how the env is built: equal means same run."""
        kwargs = self.arguments()
        return (
            self.algorithm,
            self.preset.n_envs,
            self.preset.policy,
            self.preset.normalize,
            # repr: schedules and policy_kwargs (activation classes) have no __eq__ but a faithful repr.
            repr(sorted(kwargs.items())),
        )


# A variant: ``base[key=value,key=value]``, values in YAML syntax (0.02, epoch, null, [1, 10], lin_0.04).
_VARIANT = re.compile(r"^(?P<base>[^\[\]]+)\[(?P<body>.*)\]$")
# Constructor arguments a variant may not set: the runner owns them.
_RUNNER_ARGUMENTS = ("self", "policy", "env", "seed", "verbose", "tensorboard_log", "device", "_init_setup_model")


def _split_top_level(body: str) -> list[str]:
    """Split ``body`` at the commas that are not inside brackets (``a=1,b=[1,2]`` -> ``a=1``, ``b=[1,2]``)."""
    parts, depth, current = [], 0, ""
    for char in body:
        depth += char in "[({"
        depth -= char in "])}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def _format_value(value: Any) -> str:
    """A value as it is written back into a canonical variant name (YAML flow style, no spaces after commas)."""
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip().removesuffix("\n...").replace(", ", ",")


def parse_variant(algo: str) -> tuple[str, dict[str, Any]]:
    """
    Split ``base[key=value,...]`` into the base algorithm and its constructor overrides.

    :param algo: e.g. ``"r2vpo[variance_target=0.02,dual_update_frequency=epoch]"``; a plain name has none
    :return: ``(base, overrides)``; values are parsed as YAML scalars/lists (``0.02`` -> float, ``null`` -> None)
    :raise ValueError: A malformed variant (one line, naming what is wrong)
    """
    if "[" not in algo and "]" not in algo:
        return algo, {}
    match = _VARIANT.match(algo)
    if match is None:
        raise ValueError(f"malformed variant {algo!r}; write base[key=value,key=value], e.g. r2vpo[variance_target=0.02]")
    overrides: dict[str, Any] = {}
    for item in _split_top_level(match["body"]):
        key, equals, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not equals or not key.isidentifier() or not raw:
            raise ValueError(f"malformed variant {algo!r}: {item.strip()!r} is not key=value")
        if key in overrides:
            raise ValueError(f"variant {algo!r} sets {key!r} twice")
        try:
            overrides[key] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ValueError(f"variant {algo!r}: cannot read the value of {key!r}: {raw!r}") from error
    return match["base"].strip(), overrides


# R2VPO from another hyperparameter file: ``r2vpo@path/to/file.yml``; its PPO control: ``ppo-matched@path/to/file.yml``.
FROM_FILE = "r2vpo@"
MATCHED_FROM_FILE = "ppo-matched@"


def _encode_file_base(base: str) -> str:
    """
    ``r2vpo@<path>`` (or ``ppo-matched@<path>``) with the path normalised and its ``/`` written ``%2F`` (``%`` as
    ``%25``): the name is a folder of the results (``runs/<task>/<name>/seed<S>``), which a ``/`` would split.
    """
    prefix = next((prefix for prefix in (FROM_FILE, MATCHED_FROM_FILE) if base.startswith(prefix)), None)
    if prefix is None:
        return base
    path = os.path.normpath(base[len(prefix) :].strip())
    return prefix + path.replace("%", "%25").replace("/", "%2F")


def canonical_name(algo: str) -> str:
    """
    The name a run of ``algo`` is stored and reported under: keys sorted and values written back, so that
    ``r2vpo[b=2, a=0.10]`` and ``r2vpo[a=0.1,b=2]`` are the same runs; in ``r2vpo@<file>`` the path's ``/``
    are written ``%2F``.
    """
    base, overrides = parse_variant(algo)
    base = _encode_file_base(base)
    if not overrides:
        return base
    return f"{base}[{','.join(f'{key}={_format_value(overrides[key])}' for key in sorted(overrides))}]"


def configure(algo: str, env_id: str) -> RunConfig:
    """
    How ``algo`` is built for ``env_id``. A variant ``base[key=value,...]`` is ``base`` with those constructor
    arguments overriding its entry (see :func:`parse_variant`). The bases:

    - ``r2vpo``: our ``r2vpo.yml`` entry; ``r2vpo-kK``: the same with ``replay_rollouts=K``;
    - ``r2vpo@<file>``: R2VPO with the task's entry of another hyperparameter file in rl_zoo3's format (e.g. the
      ``best.yml`` that ``python -m sb3_r2vpo.tune --output`` writes); the path is relative to the working
      directory, ``/`` may be written ``%2F``;
    - ``ppo`` / ``trpo``: rl_zoo3's own ppo.yml / trpo.yml entry (-v4 or -v2 entry for a -v5 task);
    - ``r2vpo-matched``: R2VPO with exactly PPO's entry, the clip replaced by the brake (library δ);
    - ``ppo-matched``, its mirror: SB3's PPO with our ``r2vpo.yml`` entry, R2VPO's own arguments dropped and
      the ``clip_range`` of PPO's zoo entry (SB3's default where that entry sets none); ``ppo-matched@<file>``
      the same with another file's entry (the PPO control of an ``r2vpo@<file>`` candidate);
    - ``spo``: PPO's entry with SPO's loss (ε = 0.2) in place of the clip.

    :raise ValueError: An unknown algorithm, a malformed variant, a key the algorithm does not accept, or a
        hyperparameter file that is missing, unreadable or without an entry for ``env_id``
    """
    base, variant = parse_variant(algo)
    config = _configure_base(base, env_id)
    if not variant:
        return config
    accepted = set(constructor_parameters(config.algorithm)) - set(_RUNNER_ARGUMENTS)
    unknown = sorted(set(variant) - accepted)
    if unknown:
        raise ValueError(
            f"variant {algo!r}: {config.algorithm.__name__} has no argument {unknown[0]!r}; "
            f"it accepts: {', '.join(sorted(accepted))}"
        )
    changes = ", ".join(f"{key}={_format_value(value)}" for key, value in sorted(variant.items()))
    # "lin_0.04" becomes a schedule exactly as it would in a YAML entry.
    parsed = {key: _parse_value(key, value) for key, value in variant.items()}
    return dataclasses.replace(config, overrides={**config.overrides, **parsed}, entry=f"{config.entry}; variant: {changes}")


def _entry_from_file(algo: str, prefix: str, env_id: str) -> tuple[Preset, str]:
    """The task's entry of the file named in ``<prefix><file>``, and its description; one-line errors."""
    shown = unquote(algo[len(prefix) :].strip())
    path = Path(shown)
    if not shown or not path.is_file():
        raise ValueError(f"{unquote(algo)}: no hyperparameter file {shown!r} (paths are relative to the working directory)")
    try:
        return preset_for(env_id, path, shown_as=shown)
    except ValueError as error:  # a YAML error spans several lines
        raise ValueError(" ".join(str(error).split())) from None


def _configure_from_file(algo: str, env_id: str) -> RunConfig:
    """``r2vpo@<file>``: R2VPO from the task's entry of ``<file>``, its keys checked against R2VPO's arguments."""
    preset, entry = _entry_from_file(algo, FROM_FILE, env_id)
    accepted = set(constructor_parameters(R2VPO)) - set(_RUNNER_ARGUMENTS)
    unknown = sorted(set(preset.model_kwargs) - accepted)
    if unknown:
        raise ValueError(f"{entry}: R2VPO has no argument {unknown[0]!r}")
    return RunConfig(preset, R2VPO, {}, entry)


def _replay_count(algo: str) -> int:
    """K of ``r2vpo-k<K>``; a one-line error naming the algorithm unless K is a whole number >= 1."""
    count = algo[len("r2vpo-k") :]
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"unknown algorithm {algo!r}: r2vpo-k<K> needs a whole number K >= 1 (replay_rollouts=K)")
    return int(count)


def _ppo_matched(env_id: str, ours: Preset, our_entry: str) -> RunConfig:
    """SB3's PPO with an R2VPO entry (``ours``): R2VPO's own arguments dropped, the clip of PPO's zoo entry."""
    zoo, zoo_entry = preset_for(env_id, zoo_hyperparams_file("ppo"))
    kwargs = {key: value for key, value in ours.model_kwargs.items() if key not in r2vpo_only_arguments()}
    if "clip_range" in zoo.model_kwargs:
        kwargs["clip_range"] = zoo.model_kwargs["clip_range"]
        clip = f"clip_range of {zoo_entry}"
    else:
        kwargs.pop("clip_range", None)
        clip = f"SB3's default clip_range ({zoo_entry} sets none)"
    ours = dataclasses.replace(ours, model_kwargs=kwargs)
    return RunConfig(ours, PPO, {}, f"{our_entry} without R2VPO's arguments, {clip}")


def _configure_base(algo: str, env_id: str) -> RunConfig:
    if algo == "r2vpo" or algo.startswith("r2vpo-k"):
        preset, entry = preset_for(env_id, None)
        overrides = {"replay_rollouts": _replay_count(algo)} if algo.startswith("r2vpo-k") else {}
        return RunConfig(preset, R2VPO, overrides, entry)
    if algo.startswith(FROM_FILE):
        return _configure_from_file(algo, env_id)
    if algo.startswith(MATCHED_FROM_FILE):
        return _ppo_matched(env_id, *_entry_from_file(algo, MATCHED_FROM_FILE, env_id))
    if algo == "trpo":
        from sb3_contrib import TRPO

        preset, entry = preset_for(env_id, zoo_hyperparams_file("trpo"))
        return RunConfig(preset, TRPO, {}, entry)
    preset, entry = preset_for(env_id, zoo_hyperparams_file("ppo"))
    if algo == "ppo":
        return RunConfig(preset, PPO, {}, entry)
    if algo == "ppo-matched":
        return _ppo_matched(env_id, *preset_for(env_id, None))
    without_clip = {key: value for key, value in preset.model_kwargs.items() if key != "clip_range"}
    preset = dataclasses.replace(preset, model_kwargs=without_clip)
    if algo == "r2vpo-matched":
        return RunConfig(preset, R2VPO, {}, entry + " (clip removed)")
    if algo == "spo":
        return RunConfig(preset, SPO, {}, entry + " (clip replaced by SPO's loss, ε=0.2)")
    raise ValueError(
        f"unknown algorithm {algo!r}; known: r2vpo, r2vpo-k<K>, r2vpo@<file.yml>, r2vpo-matched, ppo, ppo-matched, "
        "ppo-matched@<file.yml>, trpo, spo"
    )


# A "matched" algorithm and the one whose model it builds where our entry is PPO's with δ added.
MATCHED_TWINS = {"r2vpo-matched": "r2vpo", "ppo-matched": "ppo"}


# Cached: it reads the YAML files (~0.16 s) and the answer is the same for every seed of a task.
@functools.cache
def built_alike(first: str, second: str, env_id: str) -> bool:
    """Whether algorithms ``first`` and ``second`` build the same model on ``env_id`` (seeded: the same numbers)."""
    return configure(first, env_id).effective() == configure(second, env_id).effective()


def same_run_as(algo: str, env_id: str) -> str | None:
    """
    ``"r2vpo"`` when ``r2vpo-matched`` on ``env_id`` would be R2VPO's own run: our entry is PPO's (clip removed,
    library δ), so both build the same model and, seeded and single-threaded, train it bit for bit alike.
    Likewise ``"ppo"`` for ``ppo-matched`` (our entry without δ, PPO's clip) where that is PPO's own entry.
    ``None`` otherwise.
    """
    twin = MATCHED_TWINS.get(algo)
    return twin if twin is not None and built_alike(algo, twin, env_id) else None
