"""
Hyperparameter search for R2VPO with Optuna, without the RL Zoo.

    from sb3_r2vpo.tuning import optimize
    study = optimize("Pendulum-v1", n_trials=20, n_timesteps=50_000)

Several workers (processes, or machines sharing a PostgreSQL server) join one study by using the same
``storage`` and ``study_name``; Optuna's RDB storage coordinates them. Each worker stops once the study holds
``n_trials`` finished (complete or pruned) trials. Heartbeats mark the trial of a killed worker as failed
after ``grace_period`` seconds, and it is retried once by the next worker.
"""

from __future__ import annotations

import copy
import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
import yaml
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from stable_baselines3.common.callbacks import EvalCallback

from sb3_r2vpo.cli import resolve_torch_threads, set_torch_threads
from sb3_r2vpo.presets import Preset, check_env_id, get_preset, load_hyperparams
from sb3_r2vpo.r2vpo import NonFiniteTrainingError
from sb3_r2vpo.search_space import convert_r2vpo_params, sample_r2vpo_params

DEFAULT_STORAGE = "sqlite:///r2vpo_optuna.db"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed, n_startup: optuna.samplers.TPESampler(n_startup_trials=n_startup, seed=seed, multivariate=True),
    "random": lambda seed, n_startup: optuna.samplers.RandomSampler(seed=seed),
}
PRUNERS: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "median": lambda n_startup, n_evaluations: optuna.pruners.MedianPruner(
        n_startup_trials=n_startup, n_warmup_steps=n_evaluations // 3
    ),
    "none": lambda n_startup, n_evaluations: optuna.pruners.NopPruner(),
}


# What SQLite and PostgreSQL say when another worker created the study's tables a moment earlier.
_CREATION_RACE = ("already exists", "UNIQUE constraint failed", "duplicate key value")


class TuningError(ValueError):
    """A tuning request that cannot start; the message says which argument and why."""


class _SurplusTrial(Exception):
    """Raised inside a trial that another worker already made unnecessary (the study is full)."""


class TrialEvalCallback(EvalCallback):
    """Reports each deterministic evaluation to the trial and stops training once the pruner says so."""

    def __init__(self, eval_env, trial: optuna.Trial, n_eval_episodes: int, eval_freq: int) -> None:
        super().__init__(eval_env, n_eval_episodes=n_eval_episodes, eval_freq=eval_freq, deterministic=True, verbose=0)
        self.trial = trial
        self.evaluations = 0
        self.pruned = False

    def _on_step(self) -> bool:
        if self.eval_freq > 0 and self.n_calls % self.eval_freq == 0:
            super()._on_step()
            self.evaluations += 1
            self.trial.report(self.last_mean_reward, self.evaluations)
            if self.trial.should_prune():
                self.pruned = True
                return False
        return True


def make_storage(storage: str | None, heartbeat_interval: int | None = 30, grace_period: int | None = 90) -> RDBStorage:
    """
    Optuna RDB storage with heartbeats, so that a killed worker's trial is failed and retried.

    :param storage: SQLAlchemy URL (``sqlite:///file.db``, ``postgresql://user@host/db``); SQLite by default.
    :param heartbeat_interval: Seconds between a running trial's heartbeats (``None`` disables them)
    :param grace_period: Seconds without heartbeat after which a running trial counts as failed
    """
    url = storage or DEFAULT_STORAGE
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # Several worker processes on one SQLite file: wait for the lock instead of failing at once.
        engine_kwargs["connect_args"] = {"timeout": 60}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                # Heartbeats are marked experimental in Optuna; they are what makes killed workers recoverable.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period if heartbeat_interval else None,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1)
                    if heartbeat_interval
                    else None,
                )
        except Exception as error:  # SQLAlchemy raises driver-specific errors; all mean "cannot use this URL"
            # Workers started together on a new database race to create its tables and schema version
            # row: the loser sees a table or row that already exists, and retries.
            if any(sign in str(error) for sign in _CREATION_RACE) and attempt < 2:
                time.sleep(1.0)
                continue
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise TuningError(f"cannot open the Optuna storage {url!r}: {reason}") from error
    raise AssertionError("unreachable")


def base_preset(env_id: str) -> Preset:
    """The packaged entry of ``env_id`` when there is one, else the library defaults on one env."""
    try:
        check_env_id(env_id)
    except ValueError as error:
        raise TuningError(str(error)) from None
    if env_id in load_hyperparams():
        return get_preset(env_id)
    return Preset(env_id=env_id)


def _count(study: optuna.Study, states: tuple[TrialState, ...], before: int | None = None) -> int:
    trials = study.get_trials(deepcopy=False, states=states)
    return sum(1 for trial in trials if before is None or trial.number < before)


def make_objective(
    preset: Preset,
    n_trials: int,
    n_timesteps: int,
    n_evaluations: int,
    n_eval_episodes: int,
    seed: int | None,
    fixed_params: dict[str, Any] | None = None,
) -> Callable[[optuna.Trial], float]:
    """The objective: sample, train for ``n_timesteps`` with intermediate evaluations, return the last one."""

    def objective(trial: optuna.Trial) -> float:
        # Another worker may have filled the study between our last check and this trial's creation.
        if _count(trial.study, (*FINISHED, TrialState.RUNNING), before=trial.number) >= n_trials:
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise _SurplusTrial
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("n_timesteps", n_timesteps)
        # At least four rollouts per trial, whatever n_steps the sampler picks.
        max_n_steps_pow = int(math.log2(max(n_timesteps // (4 * preset.n_envs), 1)))
        sampled = sample_r2vpo_params(trial, n_envs=preset.n_envs, additional_args={"max_n_steps_pow": max_n_steps_pow})
        kwargs = {**copy.deepcopy(preset.model_kwargs), **sampled, **(fixed_params or {})}
        trial_seed = None if seed is None else seed + trial.number
        model = preset.make_model(seed=trial_seed, **kwargs)
        eval_env = preset.make_env(seed=None if trial_seed is None else trial_seed + 10_000, training=False)
        callback = TrialEvalCallback(
            eval_env, trial, n_eval_episodes, eval_freq=max(n_timesteps // (n_evaluations * preset.n_envs), 1)
        )
        try:
            model.learn(total_timesteps=n_timesteps, callback=callback)
        except NonFiniteTrainingError as error:
            trial.set_user_attr("failure", str(error).split(";")[0])
            return float("nan")  # Optuna marks the trial failed; the study goes on
        finally:
            model.get_env().close()
            eval_env.close()
        if callback.pruned:
            raise optuna.TrialPruned()
        value = callback.last_mean_reward
        return float(value) if math.isfinite(value) else float("nan")

    return objective


def optimize(
    env_id: str,
    n_trials: int,
    storage: str | None = None,
    study_name: str | None = None,
    n_timesteps: int = 50_000,
    n_evaluations: int = 5,
    n_eval_episodes: int = 5,
    sampler: str = "tpe",
    pruner: str = "median",
    n_startup_trials: int = 5,
    seed: int | None = None,
    output: str | Path | None = None,
    show_progress: bool = True,
    heartbeat_interval: int | None = 30,
    grace_period: int | None = 90,
    fixed_params: dict[str, Any] | None = None,
    torch_threads: int | None = None,
) -> optuna.Study:
    """
    Tune R2VPO on one task; returns the study. Safe to call from several processes at once.

    :param env_id: Gymnasium id; the packaged ``r2vpo.yml`` entry (if any) supplies what is not searched
    :param n_trials: Finished trials the study should hold in total, over all workers (>= 1)
    :param storage: Optuna storage URL; SQLite ``r2vpo_optuna.db`` in the working directory by default
    :param study_name: Name of the study (default ``r2vpo-<env_id>``); workers with the same name share it
    :param n_timesteps: Training budget of each trial
    :param n_evaluations: Intermediate evaluations per trial, reported to the pruner
    :param n_eval_episodes: Episodes per evaluation
    :param sampler: ``"tpe"`` or ``"random"``
    :param pruner: ``"median"`` or ``"none"``
    :param n_startup_trials: Trials before the sampler and pruner start acting
    :param seed: Seed of the sampler and (offset by the trial number) of each trial
    :param output: If given, the best trial is written there as a ready-to-paste ``r2vpo.yml`` entry
    :param show_progress: Show Optuna's progress bar
    :param heartbeat_interval: See :func:`make_storage`
    :param grace_period: See :func:`make_storage`
    :param fixed_params: R2VPO arguments pinned for every trial (they override sampled values)
    :param torch_threads: PyTorch CPU threads while the trials train (restored afterwards): ``None`` for 1 (the
        fastest for small policies, and workers sharing a machine do not fight) unless ``OMP_NUM_THREADS`` is
        set; 0 for PyTorch's default
    """
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise TuningError(f"`n_trials` must be an int >= 1, got {n_trials!r}")
    if n_timesteps < 1 or n_evaluations < 1 or n_eval_episodes < 1:
        raise TuningError("`n_timesteps`, `n_evaluations` and `n_eval_episodes` must be >= 1")
    if sampler not in SAMPLERS:
        raise TuningError(f"`sampler` must be one of {tuple(SAMPLERS)}, got {sampler!r}")
    if pruner not in PRUNERS:
        raise TuningError(f"`pruner` must be one of {tuple(PRUNERS)}, got {pruner!r}")
    try:
        resolve_torch_threads(torch_threads)
    except ValueError as error:
        raise TuningError(str(error)) from None
    preset = base_preset(env_id)
    rdb = make_storage(storage, heartbeat_interval, grace_period)
    name = study_name or f"r2vpo-{env_id}"
    resumed = name in optuna.get_all_study_names(storage=rdb)
    study = optuna.create_study(
        storage=rdb,
        study_name=name,
        direction="maximize",
        sampler=SAMPLERS[sampler](seed, n_startup_trials),
        pruner=PRUNERS[pruner](n_startup_trials, n_evaluations),
        load_if_exists=True,
    )
    budget = study_budget(env_id, n_timesteps, n_evaluations, n_eval_episodes, fixed_params)
    check_study_budget(study, budget, storage or DEFAULT_STORAGE)
    remaining = n_trials - _count(study, FINISHED)
    if resumed:
        done = _count(study, FINISHED)
        print(
            f"resuming study {name!r} ({storage or DEFAULT_STORAGE}): {done} of {n_trials} trials finished; "
            + (f"{remaining} to go" if remaining > 0 else "nothing to train (raise n_trials to add trials)"),
            flush=True,
        )
    if remaining > 0:
        previous_threads = torch.get_num_threads()
        set_torch_threads(torch_threads)
        try:
            study.optimize(
                make_objective(preset, n_trials, n_timesteps, n_evaluations, n_eval_episodes, seed, fixed_params),
                n_trials=remaining,
                catch=(_SurplusTrial,),
                callbacks=[MaxTrialsCallback(n_trials, states=(*FINISHED, TrialState.RUNNING))],
                show_progress_bar=show_progress,
            )
        finally:
            torch.set_num_threads(previous_threads)
    if output is not None and _count(study, (TrialState.COMPLETE,)) > 0:
        write_best_entry(study, preset, output, fixed_params)
    return study


# Study user attribute holding what its trials were run with (written by the worker that created it).
BUDGET_ATTR = "r2vpo_budget"


def study_budget(
    env_id: str, n_timesteps: int, n_evaluations: int, n_eval_episodes: int, fixed_params: dict[str, Any] | None
) -> dict[str, Any]:
    """What makes the trials of one study comparable: the task, the budget, the evaluations, the pinned values."""
    return {
        "env_id": env_id,
        "n_timesteps": int(n_timesteps),
        "n_evaluations": int(n_evaluations),
        "n_eval_episodes": int(n_eval_episodes),
        "fixed_params": repr(sorted((fixed_params or {}).items())),
    }


def check_study_budget(study: optuna.Study, budget: dict[str, Any], storage: str) -> None:
    """
    Record ``budget`` on a study that has none; refuse to add trials to a study made with another one.

    :raises TuningError: naming what differs and how to start a separate study
    """
    recorded = study.user_attrs.get(BUDGET_ATTR)
    if recorded is None:
        # A new study (or one made before budgets were recorded: its trials count as of unrecorded budget).
        study.set_user_attr(BUDGET_ATTR, budget)
        recorded = study.user_attrs.get(BUDGET_ATTR)  # another worker may have recorded its own a moment earlier
    if recorded != budget:
        differs = "; ".join(
            f"{key}: the study's {recorded.get(key)!r}, this call's {value!r}"
            for key, value in budget.items()
            if recorded.get(key) != value
        )
        raise TuningError(
            f"study {study.study_name!r} in {storage} was run with another budget ({differs}); its trials would not "
            "compare with new ones. Give this search its own study (--study-name / `study_name`) or storage "
            "(--storage / `storage`), or repeat the study's own settings to resume it"
        )


def _budget_summary(trials: list[optuna.trial.FrozenTrial]) -> str:
    """'3 Optuna trials of 3000 steps each', or each budget's count when they differ (true for old studies too)."""
    counts: dict[Any, int] = {}
    for trial in trials:
        steps = trial.user_attrs.get("n_timesteps")
        counts[steps] = counts.get(steps, 0) + 1
    if len(counts) == 1 and None not in counts:
        return f"{len(trials)} Optuna trials of {next(iter(counts))} steps each"
    parts = [
        f"{count} of {'unrecorded budget' if steps is None else f'{steps} steps'}"
        for steps, count in sorted(counts.items(), key=lambda item: (item[0] is None, item[0] or 0))
    ]
    return f"{len(trials)} Optuna trials ({', '.join(parts)})"


def best_entry(study: optuna.Study, preset: Preset, fixed_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The best trial as an ``r2vpo.yml`` entry: the base entry's fields plus the tuned (and pinned) values."""
    params = {**convert_r2vpo_params(study.best_trial.params), **(fixed_params or {})}
    policy_kwargs = params.pop("policy_kwargs")
    entry: dict[str, Any] = {"n_envs": preset.n_envs, "n_timesteps": float(preset.n_timesteps), "policy": preset.policy}
    if preset.normalize:
        entry["normalize"] = True
    base = {k: v for k, v in preset.model_kwargs.items() if k != "policy_kwargs" and not callable(v)}
    entry.update(base)
    entry.update({key: value.item() if isinstance(value, np.generic) else value for key, value in params.items()})
    entry["policy_kwargs"] = zoo_expression(policy_kwargs)
    return entry


def zoo_expression(value: Any) -> str:
    """Write ``policy_kwargs`` as the Python expression rl_zoo3 YAML files hold (``nn.ReLU`` for classes)."""
    if isinstance(value, dict):
        return "dict(" + ", ".join(f"{key}={zoo_expression(item)}" for key, item in value.items()) + ")"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(zoo_expression(item) for item in value) + "]"
    if isinstance(value, type):
        return f"nn.{value.__name__}"
    return repr(value)


def write_best_entry(
    study: optuna.Study, preset: Preset, output: str | Path, fixed_params: dict[str, Any] | None = None
) -> Path:
    """
    Write the best trial as a commented ``r2vpo.yml`` entry that :func:`sb3_r2vpo.presets.get_preset` can load.
    The header counts the finished trials by the budget each one was really run with.
    """
    entry = best_entry(study, preset, fixed_params)
    finished = study.get_trials(deepcopy=False, states=FINISHED)
    pruned = sum(trial.state == TrialState.PRUNED for trial in finished)
    best = study.best_trial
    best_steps = best.user_attrs.get("n_timesteps")
    header = (
        f"# Tuned with {_budget_summary(finished)}, {len(finished) - pruned} complete and {pruned} pruned early "
        f"(study {study.study_name!r});\n"
        f"# best trial #{best.number} ({'unrecorded budget' if best_steps is None else f'{best_steps} steps'}): "
        f"mean return {study.best_value:.2f}.\n"
    )
    path = Path(output)
    path.write_text(header + yaml.safe_dump({preset.env_id: entry}, sort_keys=False))
    return path
