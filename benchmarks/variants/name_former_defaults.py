"""
Name the R2VPO runs made under the former library defaults by the arguments they ran with (issue 13).

Until issue 13, R2VPO's defaults were no λ floor (``lagrange_multiplier_floor=None``) and the mean-centred ratio
variance (``variance_center="mean"``); now they are ``"auto"`` and ``"one"``. A run folder is named by the algorithm
as the runner reads it *today* (``r2vpo`` = r2vpo.yml's entry with today's defaults), so every R2VPO run made before
the change would pass for a run of today's R2VPO. This script moves each such run to the variant folder that names
its real arguments (where they differ from today's defaults), e.g.::

    runs/CartPole-v1/r2vpo/seed0
      -> runs/CartPole-v1/r2vpo[lagrange_multiplier_floor=null,variance_center=mean]/seed0
    runs/Hopper-v5/r2vpo[lagrange_multiplier_floor=0.5]/seed1
      -> runs/Hopper-v5/r2vpo[lagrange_multiplier_floor=0.5,variance_center=mean]/seed1

and rewrites ``algo`` and ``overrides`` in its result.json to match, so that the runner and the report read them as
what they were. What a run ran with is its recorded ``arguments`` (every run since the runner started recording
them) or, for an older run, its name's overrides over the former defaults. Runs that already name both arguments,
or ran with today's defaults, are left alone.

    python benchmarks/variants/name_former_defaults.py benchmarks/results benchmarks/results/offsuite ...
    python benchmarks/variants/name_former_defaults.py --dry-run benchmarks/results
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from urllib.parse import unquote

from sb3_r2vpo.benchmark.algorithms import canonical_name, parse_variant

# The former defaults of the two arguments issue 13 changed.
FORMER_DEFAULTS = {"lagrange_multiplier_floor": None, "variance_center": "mean"}


@functools.cache
def todays_defaults() -> dict:
    """The two arguments' defaults as the library has them now (R2VPO's constructor)."""
    from sb3_r2vpo import R2VPO
    from sb3_r2vpo.r2vpo.mixin import constructor_defaults

    defaults = constructor_defaults(R2VPO)
    return {key: defaults[key] for key in FORMER_DEFAULTS}


def ran_with(result: dict) -> dict:
    """The two arguments' values the run had: its recorded ``arguments``, else its name's overrides or the former defaults."""
    base_overrides = parse_variant(result["algo"])[1]
    recorded = result.get("arguments", {})
    return {key: recorded.get(key, base_overrides.get(key, former)) for key, former in FORMER_DEFAULTS.items()}


R2VPO_BASES = ("r2vpo", "r2vpo-k", "r2vpo-matched", "r2vpo@")


def former_name(algo: str, values: dict | None = None) -> str:
    """
    The name that states the values of the changed arguments ``algo`` ran with where they differ from today's
    defaults (``algo`` itself if it names them already or they are today's).

    :param algo: The run's algorithm name
    :param values: What it ran with (see :func:`ran_with`); default: the former defaults
    """
    base, overrides = parse_variant(algo)
    if not base.startswith(R2VPO_BASES):
        return algo
    values = FORMER_DEFAULTS if values is None else values
    today = todays_defaults()
    missing = {key: value for key, value in values.items() if key not in overrides and value != today[key]}
    if not missing:
        return algo
    body = {**overrides, **missing}
    base = unquote(base)  # a stored r2vpo@ name has its path's "/" written %2F; canonical_name writes it again
    return canonical_name(f"{base}[{','.join(f'{key}={_yaml(value)}' for key, value in body.items())}]")


def _yaml(value) -> str:
    return "null" if value is None else str(value)


def move_run(result_file: Path, result: dict, new_algo: str, dry_run: bool) -> Path:
    """
    Move the run of ``result_file`` to ``runs/<task>/<new_algo>/seed<S>`` and name it ``new_algo`` in its result.json
    (``algo`` and ``overrides``), so that the runner and the report read it as what it was; returns the new folder.

    :raise SystemExit: A run is in that folder already (nothing a user saved is overwritten)
    """
    seed_folder = result_file.parent
    algo_folder = seed_folder.parent
    target = algo_folder.parent / new_algo.replace("/", "%2F") / seed_folder.name
    if target.exists():
        raise SystemExit(f"{target} exists already; not moving {seed_folder} onto it")
    if dry_run:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    seed_folder.rename(target)
    result["algo"] = new_algo
    result["overrides"] = {**result.get("overrides", {}), **parse_variant(new_algo)[1]}
    (target / "result.json").write_text(json.dumps(result, indent=2))
    if not any(algo_folder.iterdir()):
        algo_folder.rmdir()
    return target


def rename(root: Path, dry_run: bool) -> list[tuple[Path, Path]]:
    """Move every former-defaults R2VPO run under ``root/runs`` to its variant folder; returns (old, new) folders."""
    moved = []
    for result_file in sorted((root / "runs").glob("*/*/seed*/result.json")):
        result = json.loads(result_file.read_text())
        new_algo = former_name(result["algo"], ran_with(result))
        if new_algo != result["algo"]:
            moved.append((result_file.parent, move_run(result_file, result, new_algo, dry_run)))
    return moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path, help="result folders (each holding runs/)")
    parser.add_argument("--dry-run", action="store_true", help="only list what would move")
    args = parser.parse_args()
    for root in args.roots:
        for old, new in rename(root, args.dry_run):
            print(f"{old} -> {new}")


if __name__ == "__main__":
    main()
