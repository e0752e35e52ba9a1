"""
Name the R2VPO runs made under the former library defaults by the arguments they ran with (issue 13).

Until issue 13, R2VPO's defaults were no λ floor (``lagrange_multiplier_floor=None``) and the mean-centred ratio
variance (``variance_center="mean"``); now they are ``0.5`` and ``"one"``. A run folder is named by the algorithm
as the runner reads it *today* (``r2vpo`` = r2vpo.yml's entry with today's defaults), so every R2VPO run made before
the change would pass for a run of today's R2VPO. This script moves each such run to the variant folder that names
its real arguments, e.g.::

    runs/CartPole-v1/r2vpo/seed0
      -> runs/CartPole-v1/r2vpo[lagrange_multiplier_floor=null,variance_center=mean]/seed0
    runs/Hopper-v5/r2vpo[lagrange_multiplier_floor=0.5]/seed1
      -> runs/Hopper-v5/r2vpo[lagrange_multiplier_floor=0.5,variance_center=mean]/seed1

and rewrites ``algo`` and ``overrides`` in its result.json to match, so that the runner and the report read them as
what they were. Runs that record their ``arguments`` (every run since the runner started recording them) were made
knowingly and are left alone, as are runs that already name both arguments.

    python benchmarks/variants/name_former_defaults.py benchmarks/results benchmarks/results/offsuite ...
    python benchmarks/variants/name_former_defaults.py --dry-run benchmarks/results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from urllib.parse import unquote

from sb3_r2vpo.benchmark.algorithms import canonical_name, parse_variant

# The former defaults of the two arguments issue 13 changed.
FORMER_DEFAULTS = {"lagrange_multiplier_floor": None, "variance_center": "mean"}
R2VPO_BASES = ("r2vpo", "r2vpo-k", "r2vpo-matched", "r2vpo@")


def former_name(algo: str) -> str:
    """The name that states the former defaults ``algo`` ran with (``algo`` itself if it names them already)."""
    base, overrides = parse_variant(algo)
    if not base.startswith(R2VPO_BASES):
        return algo
    missing = {key: value for key, value in FORMER_DEFAULTS.items() if key not in overrides}
    if not missing:
        return algo
    body = {**overrides, **missing}
    base = unquote(base)  # a stored r2vpo@ name has its path's "/" written %2F; canonical_name writes it again
    return canonical_name(f"{base}[{','.join(f'{key}={_yaml(value)}' for key, value in body.items())}]")


def _yaml(value) -> str:
    return "null" if value is None else str(value)


def rename(root: Path, dry_run: bool) -> list[tuple[Path, Path]]:
    """Move every former-defaults R2VPO run under ``root/runs`` to its variant folder; returns (old, new) folders."""
    moved = []
    for result_file in sorted((root / "runs").glob("*/*/seed*/result.json")):
        result = json.loads(result_file.read_text())
        if "arguments" in result:
            continue
        seed_folder = result_file.parent
        algo_folder = seed_folder.parent
        new_algo = former_name(result["algo"])
        if new_algo == result["algo"]:
            continue
        target = algo_folder.parent / new_algo.replace("/", "%2F") / seed_folder.name
        if target.exists():
            raise SystemExit(f"{target} exists already; not moving {seed_folder} onto it")
        moved.append((seed_folder, target))
        if dry_run:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        seed_folder.rename(target)
        result["algo"] = new_algo
        result["overrides"] = {**result.get("overrides", {}), **parse_variant(new_algo)[1]}
        (target / "result.json").write_text(json.dumps(result, indent=2))
        if not any(algo_folder.iterdir()):
            algo_folder.rmdir()
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
