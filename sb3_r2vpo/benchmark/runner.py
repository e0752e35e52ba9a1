"""
Runs: one (algorithm, task, seed) per process (or per Ray task, see :func:`run_all`), periodic deterministic
evaluation on separate env instances, learning curves as CSV. A run is finished when its ``result.json`` exists.
While it trains, a run checkpoints itself every few evaluations (:func:`save_checkpoint`); a run killed before it
finished resumes from its last complete checkpoint, and one without any is discarded and started again.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import shutil
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecNormalize, sync_envs_normalization

CURVE_FIELDS = ("env_steps", "train_seconds", "eval_return_mean", "eval_return_std")
# What each update logged (``train/<key>``) that result.json summarises over the run's updates: the multiplier's
# behaviour (R2VPO) and the size of each update (every algorithm), so the report can say how often λ sat on a bound.
TRAIN_STAT_KEYS = (
    "lagrange_multiplier",
    "lagrange_multiplier_lower_bound",
    "lagrange_multiplier_at_floor",
    "ratio_variance",
    "ratio_variance_final",
    "variance_target",
    "approx_kl",
    "clip_fraction",
    "entropy_loss",
)
# Protocol v2: evaluations between rollouts, exact counts; final = mean of the last FINAL_POINTS evaluations.
PROTOCOL = 2
FINAL_POINTS = 3
# What a finished run must share with a request for it to count as that request.
RUN_SETTINGS = ("steps", "eval_points", "eval_episodes")
# A run's checkpoint: this file names the others and is written last, so it exists only for a complete checkpoint.
CHECKPOINT_FILE = "checkpoint.json"
CHECKPOINT_PATTERNS = ("checkpoint-*.zip", "vecnormalize-*.pkl", "*.partial")
RESUME_NOTE = (
    "resumed from a checkpoint (resumed_from_steps): weights, optimizer state, lambda, VecNormalize statistics, "
    "replay and curve were restored; the envs' own RNG state and the episodes in progress cannot be, so the envs "
    "were reset and reseeded from the seed and the step count, and the run is not bit-identical to an "
    "uninterrupted one"
)


@dataclass(frozen=True)
class RunSpec:
    """One benchmark run."""

    algo: str
    env_id: str
    seed: int
    steps: int
    eval_points: int = 20
    eval_episodes: int = 10
    # How the run is kept safe, not what it is: not part of its identity nor of its result.
    checkpoint_every: int = field(default=5, compare=False)

    def settings(self) -> dict:
        """What the run is: its fields but ``checkpoint_every`` (what result.json and a checkpoint record)."""
        return {key: value for key, value in asdict(self).items() if key != "checkpoint_every"}

    def folder(self, root: Path) -> Path:
        return root / "runs" / self.env_id / self.algo / f"seed{self.seed}"


class CurveRecorder(BaseCallback):
    """
    Evaluates the policy deterministically ``eval_points`` times along a budget of ``budget`` env steps, plus
    once before training, and appends a row per evaluation to ``path``: env steps, training wall time so far
    (evaluation and checkpoint time excluded), mean and std of the return.

    The k-th evaluation (k < ``eval_points``) runs at the first env step at or past ``k · budget / eval_points``
    with the policy in use at that step (as SB3's ``EvalCallback`` does); the last one runs after the final
    update. ``budget`` is what is really trained (whole rollouts, see :func:`trained_budget`), and
    :func:`check_schedule` ensures that no vectorised step passes two thresholds, so the count is exact.
    Before each evaluation an env that drifts (``start_evaluation``, see :mod:`.envs`) is told to spread the
    evaluation's episodes over its whole cycle.

    :param checkpoint_every: Call ``save_checkpoint(self)`` at the start of the first rollout after every
        ``checkpoint_every`` evaluations (0: never); there the last update is done and no rollout is half
        collected, so training can resume from it exactly
    :param resume: :meth:`state` of the recorder of a checkpoint: its curve is kept, not evaluated again

    It also keeps, for each update, what the algorithm logged under ``train/`` for :data:`TRAIN_STAT_KEYS`
    (read from the logger after the update, before the next rollout), summarised by :meth:`train_stats`.
    """

    def __init__(
        self,
        eval_env: VecEnv,
        budget: int,
        eval_points: int,
        eval_episodes: int,
        path: Path,
        checkpoint_every: int = 0,
        save_checkpoint=None,
        resume: dict | None = None,
    ) -> None:
        super().__init__()
        self.eval_env, self.eval_episodes, self.path = eval_env, eval_episodes, path
        self.thresholds = [budget * k / eval_points for k in range(1, eval_points)]
        self.train_seconds = 0.0
        self._clock = 0.0
        self.rows: list[dict[str, float]] = []
        self.checkpoint_every, self.save_checkpoint = checkpoint_every, save_checkpoint
        self._since_checkpoint = 0
        self.updates: dict[str, list[float]] = {}
        self._last_update: object = None
        if resume is not None:
            self.thresholds = [float(threshold) for threshold in resume["thresholds"]]
            self.train_seconds = float(resume["train_seconds"])
            self.rows = [dict(row) for row in resume["rows"]]
            self.updates = {key: list(values) for key, values in resume.get("updates", {}).items()}

    def state(self) -> dict:
        """What a resumed run needs to continue the curve and the update statistics (JSON-able)."""
        return {
            "train_seconds": self.train_seconds,
            "thresholds": list(self.thresholds),
            "rows": list(self.rows),
            "updates": self.updates,
        }

    def _record_update(self) -> None:
        """Keep this update's ``train/`` values of :data:`TRAIN_STAT_KEYS` (once per update: ``n_updates`` changes)."""
        logged = self.model.logger.name_to_value
        update = logged.get("train/n_updates")
        if update is None or update == self._last_update:
            return
        self._last_update = update
        for key in TRAIN_STAT_KEYS:
            value = logged.get(f"train/{key}")
            if isinstance(value, (int, float, np.floating)) and np.isfinite(value):
                self.updates.setdefault(key, []).append(float(value))

    def train_stats(self) -> dict[str, dict[str, float]]:
        """
        Per logged key, over the run's updates: ``updates`` (how many), ``mean`` and the 5th/50th/95th
        percentiles; for R2VPO ``lagrange_multiplier_at_floor.mean`` is the share of dual steps that left λ on
        its lower bound (each update logs the share of its own).
        """
        return {
            key: {
                "updates": len(values),
                "mean": float(np.mean(values)),
                **{f"p{q}": float(np.percentile(values, q)) for q in (5, 50, 95)},
            }
            for key, values in self.updates.items()
            if values
        }

    def _on_training_start(self) -> None:
        with open(self.path, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(CURVE_FIELDS)
            writer.writerows([row[field] for field in CURVE_FIELDS] for row in self.rows)
        if not self.rows:  # a resumed run has its evaluations up to the checkpoint
            self._evaluate()
        self._clock = time.perf_counter()

    def _on_step(self) -> bool:
        if self.thresholds and self.num_timesteps >= self.thresholds[0]:
            self.thresholds.pop(0)
            self._pause_and_evaluate()
            self._since_checkpoint += 1
        return True

    def _on_rollout_start(self) -> None:
        self._record_update()
        if self.checkpoint_every and self._since_checkpoint >= self.checkpoint_every:
            self.train_seconds += time.perf_counter() - self._clock
            self.save_checkpoint(self)
            self._since_checkpoint = 0
            self._clock = time.perf_counter()

    def _on_training_end(self) -> None:
        self._record_update()
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
    seeds >= 0, each algorithm (variant keys and values: a variant's model is built once per task) and its schedule.

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
        every = spec.checkpoint_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"--checkpoint-every must be a whole number >= 0 (0: never), got {every}")
        if spec.seed < 0:  # gymnasium refuses it only inside a worker, after the run's folder was made
            raise ValueError(f"--seeds must be whole numbers >= 0, got {spec.seed}")
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
    """
    Train and evaluate one run; writes ``curve.csv`` and, last, ``result.json``. A run killed before it finished
    resumes from its last complete checkpoint (see :func:`load_checkpoint`); without one, what it left is
    discarded and it starts again.
    """
    from sb3_r2vpo.benchmark.algorithms import configure, parse_variant
    from sb3_r2vpo.benchmark.envs import register_envs

    th.set_num_threads(1)
    register_envs()
    folder = spec.folder(root)
    checkpoint = load_checkpoint(spec, folder)
    if checkpoint is None:
        if folder.exists():
            shutil.rmtree(folder)  # what a killed run left behind, without a checkpoint to resume from
        folder.mkdir(parents=True)
    config = configure(spec.algo, spec.env_id)
    rollout = config.rollout_size()
    check_schedule(spec, rollout, config.preset.n_envs)
    budget = trained_budget(spec.steps, rollout)
    label = f"{spec.algo} {spec.env_id} seed {spec.seed}"
    if budget != spec.steps and checkpoint is None:
        print(
            f"{label}: {spec.steps} steps rounded up to {budget} ({budget // rollout} whole rollouts of {rollout})",
            flush=True,
        )
    if checkpoint is None:
        model, resumed_from = config.make_model(spec.seed), []
    else:
        model = resume_model(config, spec, folder, checkpoint)
        resumed_from = [*checkpoint["resumed_from_steps"], checkpoint["env_steps"]]
        print(f"{label}: resumed from its checkpoint at {checkpoint['env_steps']} of {budget} steps", flush=True)
    eval_env = config.preset.make_env(seed=spec.seed + 10_000, training=False)
    recorder = CurveRecorder(
        eval_env,
        budget,
        spec.eval_points,
        spec.eval_episodes,
        folder / "curve.partial.csv",
        checkpoint_every=spec.checkpoint_every,
        save_checkpoint=lambda recorder: save_checkpoint(spec, folder, model, recorder, resumed_from),
        resume=None if checkpoint is None else checkpoint["recorder"],
    )
    # Resumed: the budget left, counted on from the checkpoint's steps (schedules and the total stay exact).
    model.learn(total_timesteps=budget - model.num_timesteps, callback=recorder, reset_num_timesteps=checkpoint is None)
    (folder / "curve.partial.csv").replace(folder / "curve.csv")
    result = {
        **spec.settings(),
        "entry": config.entry,
        "overrides": {key: _jsonable(value) for key, value in parse_variant(spec.algo)[1].items()},
        "arguments": recorded_arguments(config),
        "protocol": PROTOCOL,
        "env_steps": int(model.num_timesteps),
        # The step-0 evaluation is left out; with fewer than 3 later ones, the final is the mean of those.
        "final_return": float(np.mean([row["eval_return_mean"] for row in recorder.rows[1:][-FINAL_POINTS:]])),
        "last_return": recorder.rows[-1]["eval_return_mean"],
        "train_seconds": recorder.train_seconds,
        "seconds_per_step": recorder.train_seconds / max(model.num_timesteps, 1),
        "peak_return": max(row["eval_return_mean"] for row in recorder.rows),
        "resumed_from_steps": resumed_from,
        "train_stats": recorder.train_stats(),
    }
    if resumed_from:
        result["resume_note"] = RESUME_NOTE
    _write_atomically(folder / "result.json", json.dumps(result, indent=2).encode())
    remove_checkpoint(folder)  # the finished run needs none: committed results stay small
    return result


def save_checkpoint(spec: RunSpec, folder: Path, model, recorder: CurveRecorder, resumed_from: list[int]) -> None:
    """
    Checkpoint a training run into ``folder``: the model by its own ``save`` (weights, optimizer state, λ; an
    R2VPO replay too, saved as with ``save_replay=True``), the ``VecNormalize`` statistics if any, and in
    ``checkpoint.json`` the step count, the recorder's state (curve so far, training time, thresholds left) and
    where the run was resumed before. Each file is written under a temporary name and renamed; checkpoint.json,
    which names the others, comes last and the previous checkpoint's files are deleted after it: a kill at any
    moment leaves one complete checkpoint (or none).
    """
    steps = int(model.num_timesteps)
    files = {"model": f"checkpoint-{steps}.zip", "vecnormalize": None}
    buffer = io.BytesIO()
    keeps_replay = getattr(model, "save_replay", None)
    if keeps_replay is not None:
        model.save_replay = True
    try:
        model.save(buffer)
    finally:
        if keeps_replay is not None:
            model.save_replay = keeps_replay
    _write_atomically(folder / files["model"], buffer.getvalue())
    vec_normalize = model.get_vec_normalize_env()
    if vec_normalize is not None:
        files["vecnormalize"] = f"vecnormalize-{steps}.pkl"
        partial = folder / (files["vecnormalize"] + ".partial")
        vec_normalize.save(partial)
        _commit(partial, folder / files["vecnormalize"])
    manifest = {
        "run": spec.settings(),
        "env_steps": steps,
        "files": files,
        "recorder": recorder.state(),
        "resumed_from_steps": resumed_from,
    }
    _write_atomically(folder / CHECKPOINT_FILE, json.dumps(manifest, indent=2).encode())
    for pattern in CHECKPOINT_PATTERNS[:2]:
        for stale in folder.glob(pattern):
            if stale.name not in files.values():
                stale.unlink()


def load_checkpoint(spec: RunSpec, folder: Path) -> dict | None:
    """
    The last complete checkpoint of ``spec`` in ``folder`` (its ``checkpoint.json``), or ``None``: none, one
    that cannot be read, one of another run (other budget or evaluation schedule), or one whose files are gone.
    """
    try:
        manifest = json.loads((folder / CHECKPOINT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("run") != spec.settings():
        return None
    names = [name for name in manifest.get("files", {}).values() if name]
    if not names or not all((folder / name).is_file() for name in names):
        return None
    return manifest


def resume_model(config, spec: RunSpec, folder: Path, checkpoint: dict):
    """
    The model of ``checkpoint``, on a fresh training env with the checkpoint's ``VecNormalize`` statistics. An
    env's own RNG state cannot be restored: the envs are reset at the next ``learn`` and everything is reseeded
    from the run's seed and the checkpoint's step count (so that a resumed run does not replay its first
    episodes, and two resumptions from one checkpoint are alike).
    """
    files = checkpoint["files"]
    env = config.preset.make_env()
    if files.get("vecnormalize"):
        env = VecNormalize.load(str(folder / files["vecnormalize"]), env.venv if isinstance(env, VecNormalize) else env)
    model = config.algorithm.load(folder / files["model"], env=env)
    seed = int(np.random.SeedSequence([spec.seed, int(checkpoint["env_steps"])]).generate_state(1)[0] % 2**31)
    model.set_random_seed(seed)
    return model


def remove_checkpoint(folder: Path) -> None:
    """Delete the checkpoint files of ``folder`` (checkpoint.json first, so that no half of one looks complete)."""
    (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
    for pattern in CHECKPOINT_PATTERNS:
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)


def _commit(partial: Path, path: Path) -> None:
    """Make the finished file ``partial`` durable and give it its name ``path`` at once."""
    with open(partial, "rb") as file:
        os.fsync(file.fileno())
    os.replace(partial, path)


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    _commit(partial, path)


def _jsonable(value):
    return value if isinstance(value, (int, float, str, bool, list, type(None))) else repr(value)


def recorded_arguments(config) -> dict:
    """
    Every constructor argument of a run's model, library defaults included, as result.json records it (schedules
    and classes by their repr): a later change of a default cannot pass an old run off as a run of the new one.
    """
    arguments = {name: _jsonable(value) for name, value in sorted(config.arguments().items())}
    return json.loads(json.dumps(arguments))  # as read back from result.json (tuples become lists)


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
    if "arguments" in recorded:  # runs from before this record cannot be checked
        from sb3_r2vpo.benchmark.algorithms import configure

        then, now = recorded["arguments"], recorded_arguments(configure(spec.algo, spec.env_id))
        changed = [
            f"{name}: {then.get(name)!r} then, {now.get(name)!r} now"
            for name in sorted({*then, *now})
            if then.get(name) != now.get(name)
        ]
        if changed:
            raise ValueError(
                f"{spec.folder(root)} holds a finished run of {spec.algo} made with other constructor arguments than "
                f"{spec.algo} has now ({'; '.join(changed)}): a library default or the entry changed since. Pass "
                "another --out, or name the old run by its arguments (a variant folder) to keep both"
            )
    return True


def _run_safely(spec: RunSpec, root: Path) -> tuple[RunSpec, dict | None, str | None]:
    try:
        return spec, run_one(spec, root), None
    except Exception:
        return spec, None, traceback.format_exc()


# The files of a finished run that a Ray task hands back to the driver, which writes them (last: result.json).
RESULT_FILES = ("curve.csv", "result.json")
RAY_MISSING = '--ray needs Ray, which is not installed: pip install "sb3-r2vpo[ray]"'


def _ray_task(spec: RunSpec, root: str, cwd: str) -> tuple[RunSpec, dict | None, str | None, dict[str, bytes] | None]:
    """
    One run as a Ray task: trained (or resumed from its checkpoint) under ``root`` on the worker's node, its
    finished files returned as bytes (the driver writes them byte for byte: curve.csv's CRLF line ends kept).
    ``cwd``: the driver's working directory, where relative paths (``r2vpo@FILE``) are
    found when the node sees it.
    """
    if os.path.isdir(cwd):
        os.chdir(cwd)
    spec, result, error = _run_safely(spec, Path(root))
    if error is not None:
        return spec, None, error, None
    folder = spec.folder(Path(root))
    return spec, result, None, {name: (folder / name).read_bytes() for name in RESULT_FILES}


def _import_ray():
    """Ray, or a one-line ``ValueError`` naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ValueError(RAY_MISSING) from None
    if not hasattr(ray, "remote"):  # a folder named ray/ (Ray's /tmp/ray from the working directory) imported instead
        where = list(getattr(ray, "__path__", [])) or getattr(ray, "__file__", "?")
        raise ValueError(f"{RAY_MISSING} ('import ray' found {where}, which is not Ray)")
    return ray


def _connect_ray(ray, address: str) -> bool:
    """
    Join the Ray cluster at ``address`` (``auto``: the one this machine belongs to), unless this process already
    has a Ray instance (then that one is used). :return: whether this call connected (and should disconnect).
    """
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, log_to_driver=True)
    except Exception as error:  # ConnectionError, RuntimeError, ... with several lines of advice
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"--ray {address}: cannot join a Ray cluster there: {first}") from None
    return True


def _local_runs(specs: list[RunSpec], root: Path, jobs: int):
    """Yield ``(spec, result, error)`` as local processes finish ``specs``, ``jobs`` at a time."""
    with ProcessPoolExecutor(max_workers=max(jobs, 1)) as pool:
        futures = [pool.submit(_run_safely, spec, root) for spec in specs]
        for future in as_completed(futures):
            yield future.result()


def _ray_runs(ray, specs: list[RunSpec], root: Path, retries: int):
    """
    Yield ``(spec, result, error)`` as Ray tasks finish ``specs``: one CPU each, Ray's scheduling; a task whose
    worker or node dies is retried up to ``retries`` times, and resumes from the run's last checkpoint where
    that node sees ``root``. The driver writes each finished run's files into ``root``, as a local run would.
    """
    task = ray.remote(num_cpus=1, max_retries=retries, retry_exceptions=False)(_ray_task)
    workers_root, cwd = str(root.resolve()), os.getcwd()
    submitted = {task.remote(spec, workers_root, cwd): spec for spec in specs}
    pending = list(submitted)
    while pending:
        (ready,), pending = ray.wait(pending, num_returns=1)
        try:
            spec, result, error, files = ray.get(ready)
        except Exception:  # lost more often than it may be retried (WorkerCrashedError, NodeDiedError, ...)
            yield submitted[ready], None, traceback.format_exc()
            continue
        if files is not None:
            folder = spec.folder(root)
            folder.mkdir(parents=True, exist_ok=True)
            for name in RESULT_FILES:  # result.json last: the run is finished once it is there
                _write_atomically(folder / name, files[name])
            remove_checkpoint(folder)
        yield spec, result, error


def copy_run(source: RunSpec, spec: RunSpec, root: Path) -> dict:
    """Finish ``spec`` with the finished run ``source`` of the same model (see ``same_run_as``), saying so."""
    from sb3_r2vpo.benchmark.algorithms import configure

    folder = spec.folder(root)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copyfile(source.folder(root) / "curve.csv", folder / "curve.csv")
    result = json.loads((source.folder(root) / "result.json").read_text())
    result.update(spec.settings(), entry=configure(spec.algo, spec.env_id).entry, same_run_as=source.algo)
    (folder / "result.partial.json").write_text(json.dumps(result, indent=2))
    (folder / "result.partial.json").replace(folder / "result.json")
    print(f"{spec.algo} {spec.env_id} seed {spec.seed}: same model as {source.algo}, its run copied", flush=True)
    return result


def run_all(
    specs: list[RunSpec], root: Path, jobs: int = 1, ray_address: str | None = None, ray_retries: int = 3
) -> list[tuple[RunSpec, str]]:
    """
    Run every unfinished spec, ``jobs`` processes at a time; finished runs are skipped. A spec that builds the
    same model as another run of the same task, seed and schedule is not trained again: it gets a copy of that run
    once it has finished, marked ``same_run_as``. The other run is another spec of this call (the plain algorithm
    that a matched twin builds, e.g. ``r2vpo`` for ``r2vpo-matched`` where our entry is PPO's; a variant that changes
    nothing on this task, e.g. ``r2vpo[variance_target=0.04]`` where the entry's δ is 0.04), or a finished run under
    ``root`` (a candidate file whose entry for this task is r2vpo.yml's): seeded and single-threaded, both would
    train bit for bit alike.

    :param ray_address: Instead of local processes, run each spec as a task on the Ray cluster at this address
        (``"auto"``: the one this machine belongs to; a process that already called ``ray.init`` uses its
        instance): one CPU per run, a lost worker's run retried ``ray_retries`` times. The driver writes the
        finished runs under ``root`` exactly as a local run does.
    :return: The runs that failed, with their tracebacks (the others are not held up by them)
    :raise ValueError: In one line, before anything is trained or written: bad specs, Ray not installed, or no
        Ray cluster at ``ray_address``
    """
    from sb3_r2vpo.benchmark.algorithms import MATCHED_TWINS

    ray = None if ray_address is None else _import_ray()
    validate_specs(specs)
    todo = []
    for spec in specs:
        if is_finished(spec, root):
            remove_checkpoint(spec.folder(root))  # left by a kill between result.json and its clean-up
        else:
            todo.append(spec)
    print(f"{len(specs) - len(todo)} of {len(specs)} runs already finished; {len(todo)} to go", flush=True)
    pending = set(todo)
    sources, copies_waiting, copies_now = {}, {}, []
    trained_by_model: dict[tuple, RunSpec] = {}  # the spec of this call that trains each model
    models = _Models()

    def derived(spec: RunSpec) -> bool:  # a variant, a file or a matched twin: named after another algorithm
        return "[" in spec.algo or "@" in spec.algo or spec.algo in MATCHED_TWINS

    # Where several specs build one model, the plain algorithm trains and the others get its copy.
    for spec in sorted(todo, key=derived):
        model = models.key(spec)
        if model is None:
            continue
        source = trained_by_model.get(model) or _finished_run_of_the_same_model(spec, root, models)
        if source is None:
            trained_by_model[model] = spec
            continue
        if source in pending:
            sources[spec] = copies_waiting[spec] = source
        elif is_finished(source, root):
            sources[spec] = source
            copies_now.append((source, spec))
    to_train = [spec for spec in todo if spec not in sources]
    disconnect = ray is not None and bool(to_train) and _connect_ray(ray, ray_address)
    for source, spec in copies_now:
        copy_run(source, spec, root)
    failures = []
    try:
        if ray is not None and to_train:
            finished = _ray_runs(ray, to_train, root, ray_retries)
        else:
            finished = _local_runs(to_train, root, jobs)
        for done, (spec, result, error) in enumerate(finished, start=1):
            label = f"[{done}/{len(to_train)}] {spec.algo} {spec.env_id} seed {spec.seed}"
            if error is not None:
                print(f"{label}: FAILED\n{error}", flush=True)
                failures.append((spec, error))
                continue
            resumed = f" (resumed from {result['resumed_from_steps']})" if result.get("resumed_from_steps") else ""
            print(f"{label}: final {result['final_return']:.1f} in {result['train_seconds']:.0f}s{resumed}", flush=True)
            for copy, source in copies_waiting.items():
                if source == spec:
                    copy_run(source, copy, root)
    finally:
        if disconnect:
            ray.shutdown()
    return failures


class _Models:
    """What makes two runs the same run, read once per ``run_all`` call (hyperparameter files may change between)."""

    @functools.cache  # noqa: B019 (one instance per call: the cache goes with it)
    def effective(self, algo: str, env_id: str) -> tuple | None:
        """``configure(algo, env_id).effective()``, or ``None`` where ``algo`` cannot be built (a file since removed)."""
        from sb3_r2vpo.benchmark.algorithms import configure

        try:
            return configure(algo, env_id).effective()
        except ValueError:
            return None

    def key(self, spec: RunSpec) -> tuple | None:
        """The model as built, the task, the seed and the schedule: everything but the name."""
        effective = self.effective(spec.algo, spec.env_id)
        if effective is None:
            return None
        return (effective, *(value for key, value in spec.settings().items() if key != "algo"))


def _finished_run_of_the_same_model(spec: RunSpec, root: Path, models: _Models) -> RunSpec | None:
    """A finished run under ``root``, named otherwise, that builds the same model on the same task, seed and schedule."""
    model = models.key(spec)
    for result_file in sorted((root / "runs" / spec.env_id).glob(f"*/seed{spec.seed}/result.json")):
        other = replace(spec, algo=json.loads(result_file.read_text())["algo"])
        if other.algo == spec.algo or models.key(other) != model:
            continue
        try:
            if is_finished(other, root):
                return other
        except ValueError:  # made with another budget or schedule, or under arguments that changed since
            continue
    return None


def load_runs(root: Path, named_before: bool = False) -> list[dict]:
    """
    Every finished run with its curve (``curve``: array of rows ``CURVE_FIELDS``).

    :param named_before: Give each run renamed since it was made (``named_before`` in its result.json, written by
        the scripts that rename runs when a packaged entry or default changes) its former name, so that a table
        drawn before the rename is drawn again; where a later run took that name for the same task and seed, the
        renamed run wins
    """
    runs = []
    for result_file in sorted((root / "runs").glob("*/*/seed*/result.json")):
        result = json.loads(result_file.read_text())
        result["curve"] = np.loadtxt(result_file.parent / "curve.csv", delimiter=",", skiprows=1, ndmin=2)
        runs.append(result)
    if not named_before:
        return runs
    renamed = [{**run, "algo": run["named_before"]} for run in runs if "named_before" in run]
    taken = {(run["env_id"], run["algo"], run["seed"]) for run in renamed}
    return renamed + [
        run for run in runs if "named_before" not in run and (run["env_id"], run["algo"], run["seed"]) not in taken
    ]
