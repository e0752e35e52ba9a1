"""
Name the R2VPO runs made under a former ``r2vpo.yml`` by the file they ran with (issue 13).

A run folder is named by the algorithm as the runner reads it *today*: ``r2vpo`` (and ``r2vpo-kK``, and every
``r2vpo[...]`` variant) is the packaged r2vpo.yml's entry. When an entry changes, every run of that task made under
the old entry would pass for a run of the new one, and ``run`` would skip it as finished. Keep the former file
(e.g. ``benchmarks/variants/r2vpo_stop23.yml``, a verbatim copy) and this script moves each such run to the name
that builds it again from that file::

    runs/Hopper-v5/r2vpo/seed0
      -> runs/Hopper-v5/r2vpo@benchmarks%2Fvariants%2Fr2vpo_stop23.yml/seed0
    runs/Hopper-v5/r2vpo-k4[variance_center=start]/seed1
      -> runs/Hopper-v5/r2vpo@benchmarks%2Fvariants%2Fr2vpo_stop23.yml[replay_rollouts=4,variance_center=start]/seed1

``ppo-matched`` (PPO with r2vpo.yml's entry) moves to ``ppo-matched@<former>`` likewise. Only runs that the two
files build differently are moved (the runner's own test of "same run",
:meth:`RunConfig.effective`): runs of tasks whose entry did not change, variants that set every changed key
themselves, and other algorithms stay as they are. A moved run keeps its former name in result.json's
``named_before``, so tables drawn before the move can be drawn again (``--named-before`` of ``report``,
screening_table.py and multiplier_table.py). A run whose recorded constructor arguments are what its name builds
today was made under the new file and stays (runs from before the runner recorded arguments are judged by name).

    python benchmarks/variants/name_former_entries.py --former benchmarks/variants/r2vpo_stop23.yml benchmarks/results ...
    python benchmarks/variants/name_former_entries.py --former ... --dry-run benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from sb3_r2vpo.benchmark.algorithms import built_alike, canonical_name, configure, parse_variant
from sb3_r2vpo.benchmark.runner import recorded_arguments

sys.path.insert(0, str(Path(__file__).resolve().parent))
# a sibling script, not a package: importable once its folder is on the path
from name_former_defaults import _yaml, move_run

# The bases that read the packaged r2vpo.yml; r2vpo-k<K> is r2vpo with replay_rollouts=K.
_PACKAGED = re.compile(r"^r2vpo(-k(?P<replay>\d+))?$")


def former_entry_name(algo: str, env_id: str, former: str) -> str:
    """
    The name of ``algo``'s run on ``env_id`` built from ``former`` (``algo`` itself where ``algo`` does not read the
    packaged r2vpo.yml, or builds the same run from both files).

    ``ppo-matched`` reads r2vpo.yml too: its runs become ``ppo-matched@<former>``.
    """
    base, overrides = parse_variant(algo)
    match = _PACKAGED.match(base)
    if base == "ppo-matched":
        renamed = f"ppo-matched@{former}"
    elif match is not None:
        renamed = f"r2vpo@{former}"
        if match["replay"]:
            overrides = {"replay_rollouts": int(match["replay"]), **overrides}
    else:
        return algo
    body = ",".join(f"{key}={_yaml(value)}" for key, value in overrides.items())
    name = canonical_name(renamed + (f"[{body}]" if body else ""))
    return algo if built_alike(algo, name, env_id) else name


def made_under_todays_entry(result: dict) -> bool:
    """Whether the run's recorded constructor arguments are what its name builds today (a run made since the change)."""
    if "arguments" not in result:  # runs from before the runner recorded them: judged by their name
        return False
    try:
        return result["arguments"] == recorded_arguments(configure(result["algo"], result["env_id"]))
    except ValueError:
        return False


def rename(root: Path, former: str, dry_run: bool) -> list[tuple[Path, Path]]:
    """Move every run under ``root/runs`` made from the former entry to its from-file name; returns (old, new) folders."""
    moved = []
    for result_file in sorted((root / "runs").glob("*/*/seed*/result.json")):
        result = json.loads(result_file.read_text())
        if made_under_todays_entry(result):
            continue
        new_algo = former_entry_name(result["algo"], result["env_id"], former)
        if new_algo != result["algo"]:
            result.setdefault("named_before", result["algo"])
            moved.append((result_file.parent, move_run(result_file, result, new_algo, dry_run)))
    return moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path, help="result folders (each holding runs/)")
    parser.add_argument("--former", required=True, help="the former r2vpo.yml, as a path relative to the working directory")
    parser.add_argument("--dry-run", action="store_true", help="only list what would move")
    args = parser.parse_args()
    for root in args.roots:
        for old, new in rename(root, args.former, args.dry_run):
            print(f"{old} -> {new}")


if __name__ == "__main__":
    main()
