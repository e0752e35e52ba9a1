"""
Runs: one (algorithm, task, seed) per process, periodic deterministic evaluation on separate env instances,
learning curves as CSV. A run is finished when its ``result.json`` exists; anything else in its folder is
left over from a killed run and is discarded when the run starts again.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, sync_envs_normalization

CURVE_FIELDS = ("env_steps", "train_seconds", "eval_return_mean", "eval_return_std")
# Protocol v2: evaluations between rollouts, exact counts; final = mean of the last FINAL_POINTS evaluations.
PROTOCOL = 2
FINAL_POINTS = 3
# What a finished run must share with a request for it to count as that request.
RUN_SETTINGS = ("steps", "eval_points", "eval_episodes")


@dataclass(frozen=True)
class RunSpec:
    """One benchmark run."""

    algo: str
    env_id: str
    seed: int
    steps: int
    eval_points: int = 20
    eval_episodes: int = 10

    def folder(self, root: Path) -> Path:
        return root / "runs" / self.env_id / self.algo / f"seed{self.seed}"


class CurveRecorder(BaseCallback):
    """
    Evaluates the policy deterministically ``eval_points`` times along a budget of ``budget`` env steps, plus
    once before training, and appends a row per evaluation to ``path``: env steps, training wall time so far
    (evaluation time excluded), mean and std of the return.

    The k-th evaluation (k < ``eval_points``) runs at the first env step at or past ``k · budget / eval_points``
    with the policy in use at that step (as SB3's ``EvalCallback`` does); the last one runs after the final
    update. ``budget`` is what is really trained (whole rollouts, see :func:`trained_budget`), and
    :func:`check_schedule` ensures that no vectorised step passes two thresholds, so the count is exact.
    Before each evaluation an env that drifts (``start_evaluation``, see :mod:`.envs`) is told to spread the
    evaluation's episodes over its whole cycle.
    """

    def __init__(self, eval_env: VecEnv, budget: int, eval_points: int, eval_episodes: int, path: Path) -> None:
        super().__init__()
        self.eval_env, self.eval_episodes, self.path = eval_env, eval_episodes, path
        self.thresholds = [budget * k / eval_points for k in range(1, eval_points)]
        self.train_seconds = 0.0
        self._clock = 0.0
        self.rows: list[dict[str, float]] = []

    def _on_training_start(self) -> None:
        with open(self.path, "w", newline="") as file:
            csv.writer(file).writerow(CURVE_FIELDS)
        self._evaluate()
        self._clock = time.perf_counter()

    def _on_step(self) -> bool:
        if self.thresholds and self.num_timesteps >= self.thresholds[0]:
            self.thresholds.pop(0)
            self._pause_and_evaluate()
        return True

    def _on_training_end(self) -> None:
        self._pause_and_evaluate()

    def _pause_and_evaluate(self) -> None:
        self.train_seconds += time.perf_counter() - self._clock
        self._evaluate()
        self._clock = time.perf_counter()

    def _evaluate(self) -> None:
        sync_envs_normalization(self.model.get_env(), self.eval_env)
        if self.eval_env.has_attr("start_evaluation"):
            self.eval_env.env_method("start_evaluation", self.eval_episodes)
        mean, std = evaluate_policy(self.model, self.eval_env, n_eval_episodes=self.eval_episodes, deterministic=True)
        row = {
            "env_steps": int(self.num_timesteps),
            "train_seconds": round(self.train_seconds, 3),
            "eval_return_mean": float(mean),
            "eval_return_std": float(std),
        }
        self.rows.append(row)
        with open(self.path, "a", newline="") as file:
            csv.writer(file).writerow([row[field] for field in CURVE_FIELDS])


def trained_budget(steps: int, rollout: int) -> int:
    """The env steps a budget of ``steps`` trains: SB3 collects whole rollouts of ``rollout`` steps (rounded up)."""
    return -(-steps // rollout) * rollout


def check_schedule(spec: RunSpec, rollout: int, n_envs: int) -> None:
    """
    :param rollout: Env steps per rollout of the run's algorithm
    :param n_envs: Env steps per vectorised step
    :raise ValueError: ``spec`` asks for evaluations closer together than one vectorised step (then one step
        would pass two of them), in one line naming the run and the most it can have
    """
    most = trained_budget(spec.steps, rollout) // n_envs
    if spec.eval_points > most:
        raise ValueError(
            f"--eval-points {spec.eval_points} is more than the {most} vectorised steps that {spec.algo} takes on "
            f"{spec.env_id} in {spec.steps} steps; ask for at most {most} or more --steps"
        )


def validate_specs(specs: list[RunSpec]) -> None:
    """
    Everything about ``specs`` that can be checked before anything trains: budgets and evaluation counts >= 1,
    each algorithm (variant keys and values: a variant's model is built once per task) and its schedule.

    :raise ValueError: In one line, for the first problem found
    """
    from sb3_r2vpo.benchmark.algorithms import configure, parse_variant
    from sb3_r2vpo.benchmark.envs import register_envs

    register_envs()
    for spec in specs:
        for name in ("steps", "eval_points", "eval_episodes"):
            value = getattr(spec, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {value}")
    built = set()
    for spec in specs:
        config = configure(spec.algo, spec.env_id)
        check_schedule(spec, config.rollout_size(), config.preset.n_envs)
        if parse_variant(spec.algo)[1] and (spec.algo, spec.env_id) not in built:
            try:
                model = config.make_model(seed=0)
            except (ValueError, TypeError) as error:
                raise ValueError(f"{spec.algo} on {spec.env_id}: {error}") from None
            model.env.close()
            built.add((spec.algo, spec.env_id))


def run_one(spec: RunSpec, root: Path) -> dict:
    """Train and evaluate one run; writes ``curve.csv`` and, last, ``result.json``."""
    from sb3_r2vpo.benchmark.algorithms import configure, parse_variant
    from sb3_r2vpo.benchmark.envs import register_envs

    th.set_num_threads(1)
    register_envs()
    folder = spec.folder(root)
    if folder.exists():
        shutil.rmtree(folder)  # what a killed run left behind
    folder.mkdir(parents=True)
    config = configure(spec.algo, spec.env_id)
    rollout = config.rollout_size()
    check_schedule(spec, rollout, config.preset.n_envs)
    budget = trained_budget(spec.steps, rollout)
    if budget != spec.steps:
        print(
            f"{spec.algo} {spec.env_id} seed {spec.seed}: {spec.steps} steps rounded up to {budget} "
            f"({budget // rollout} whole rollouts of {rollout})",
            flush=True,
        )
    model = config.make_model(spec.seed)
    eval_env = config.preset.make_env(seed=spec.seed + 10_000, training=False)
    recorder = CurveRecorder(eval_env, budget, spec.eval_points, spec.eval_episodes, folder / "curve.partial.csv")
    model.learn(total_timesteps=budget, callback=recorder)
    (folder / "curve.partial.csv").replace(folder / "curve.csv")
    result = {
        **asdict(spec),
        "entry": config.entry,
        "overrides": {key: _jsonable(value) for key, value in parse_variant(spec.algo)[1].items()},
        "protocol": PROTOCOL,
        "env_steps": int(model.num_timesteps),
        # The untrained policy's evaluation (row 0) is never part of the final score.
        "final_return": float(np.mean([row["eval_return_mean"] for row in recorder.rows[1:][-FINAL_POINTS:]])),
        "last_return": recorder.rows[-1]["eval_return_mean"],
        "train_seconds": recorder.train_seconds,
        "seconds_per_step": recorder.train_seconds / max(model.num_timesteps, 1),
        "peak_return": max(row["eval_return_mean"] for row in recorder.rows),
    }
    (folder / "result.partial.json").write_text(json.dumps(result, indent=2))
    (folder / "result.partial.json").replace(folder / "result.json")
    return result


def _jsonable(value):
    return value if isinstance(value, (int, float, str, bool, list, type(None))) else repr(value)


def is_finished(spec: RunSpec, root: Path) -> bool:
    """
    Whether ``spec`` has a finished run under ``root``.

    :raise ValueError: The finished run in its folder was made with another budget or evaluation schedule
        (e.g. ``--suite mujoco`` after ``--suite quick`` into the same ``--out``): skipping it would report a
        150k-step run as a 1M-step one, and training over it would destroy a finished run.
    """
    result_file = spec.folder(root) / "result.json"
    if not result_file.exists():
        return False
    recorded = json.loads(result_file.read_text())
    made_with = {key: recorded.get(key) for key in RUN_SETTINGS}
    asked = {key: getattr(spec, key) for key in RUN_SETTINGS}
    if made_with != asked:
        raise ValueError(
            f"{spec.folder(root)} holds a finished run made with {made_with}, but this run asks for {asked}; "
            "pass another --out to keep both"
        )
    return True


def _run_safely(spec: RunSpec, root: Path) -> tuple[RunSpec, dict | None, str | None]:
    try:
        return spec, run_one(spec, root), None
    except Exception:
        return spec, None, traceback.format_exc()


def copy_run(source: RunSpec, spec: RunSpec, root: Path) -> dict:
    """Finish ``spec`` with the finished run ``source`` of the same model (see ``same_run_as``), saying so."""
    from sb3_r2vpo.benchmark.algorithms import configure

    folder = spec.folder(root)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copyfile(source.folder(root) / "curve.csv", folder / "curve.csv")
    result = json.loads((source.folder(root) / "result.json").read_text())
    result.update(asdict(spec), entry=configure(spec.algo, spec.env_id).entry, same_run_as=source.algo)
    (folder / "result.partial.json").write_text(json.dumps(result, indent=2))
    (folder / "result.partial.json").replace(folder / "result.json")
    print(f"{spec.algo} {spec.env_id} seed {spec.seed}: same model as {source.algo}, its run copied", flush=True)
    return result


def run_all(specs: list[RunSpec], root: Path, jobs: int = 1) -> list[tuple[RunSpec, str]]:
    """
    Run every unfinished spec, ``jobs`` processes at a time; finished runs are skipped. A spec whose model is
    another spec's (``r2vpo-matched`` where our entry is PPO's) is not trained again: it gets a copy of that
    run once it has finished, marked ``same_run_as``.

    :return: The runs that failed, with their tracebacks (the others are not held up by them)
    """
    from sb3_r2vpo.benchmark.algorithms import same_run_as

    validate_specs(specs)
    todo = [spec for spec in specs if not is_finished(spec, root)]
    print(f"{len(specs) - len(todo)} of {len(specs)} runs already finished; {len(todo)} to go", flush=True)
    pending = set(todo)
    sources, copies_waiting = {}, {}
    for spec in todo:
        source_algo = same_run_as(spec.algo, spec.env_id)
        source = replace(spec, algo=source_algo) if source_algo else None
        if source is None:
            continue
        if source in pending:
            sources[spec] = copies_waiting[spec] = source
        elif is_finished(source, root):
            sources[spec] = source
            copy_run(source, spec, root)
    to_train = [spec for spec in todo if spec not in sources]
    failures = []
    with ProcessPoolExecutor(max_workers=max(jobs, 1)) as pool:
        futures = [pool.submit(_run_safely, spec, root) for spec in to_train]
        for done, future in enumerate(as_completed(futures), start=1):
            spec, result, error = future.result()
            label = f"[{done}/{len(to_train)}] {spec.algo} {spec.env_id} seed {spec.seed}"
            if error is not None:
                print(f"{label}: FAILED\n{error}", flush=True)
                failures.append((spec, error))
                continue
            print(f"{label}: final {result['final_return']:.1f} in {result['train_seconds']:.0f}s", flush=True)
            for copy, source in copies_waiting.items():
                if source == spec:
                    copy_run(source, copy, root)
    return failures


def load_runs(root: Path) -> list[dict]:
    """Every finished run with its curve (``curve``: array of rows ``CURVE_FIELDS``)."""
    runs = []
    for result_file in sorted((root / "runs").glob("*/*/seed*/result.json")):
        result = json.loads(result_file.read_text())
        result["curve"] = np.loadtxt(result_file.parent / "curve.csv", delimiter=",", skiprows=1, ndmin=2)
        runs.append(result)
    return runs
