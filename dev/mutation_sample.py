"""
Estimate the mutation score of modules too large to mutate whole on a small machine: a seeded random sample of
mutmut's mutants, run by mutmut itself, and the killed share with a Wilson 95% interval.

    python dev/mutation_sample.py --modules mixin replay --per-module 30 --seed 0   # (what `make mutation-sample` runs)
    python dev/mutation_sample.py --per-module 30 --seed 2 --exclude 0:30 1:15     # a sample fresh of those two

mutmut generates every mutant of the ``[tool.mutmut]`` modules first (and measures which tests call which function)
on its first run; this script then hands it the sampled names. Results stay in mutmut's own files
(``mutants/**.meta``): ``mutmut results`` lists them and ``mutmut show NAME`` shows one, and a second call with the
same seed reruns the same mutants (after new tests, for the "after" figure).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
from pathlib import Path

MUTANTS = Path("mutants")
# mutmut's own reading of its exit codes; a test run that failed or ran out of CPU time is a kill.
KILLED = ("killed", "timeout")
SURVIVED = ("survived", "no tests")
# A mutant whose tests take a second: running it makes mutmut generate (and map to tests) every other mutant.
CHEAP_MUTANT = "sb3_r2vpo.r2vpo.objective.x_stationary_multiplier__mutmut_1"


def meta_path(module: str) -> Path:
    return MUTANTS / "sb3_r2vpo" / "r2vpo" / f"{module}.py.meta"


def mutant_names(module: str) -> list[str]:
    """Every mutant mutmut generated for ``sb3_r2vpo/r2vpo/<module>.py``, sorted (a stable order to sample from)."""
    path = meta_path(module)
    if not path.exists():
        raise SystemExit(f"{path} is missing: mutmut has not generated the mutants of {module}.py")
    return sorted(json.loads(path.read_text())["exit_code_by_key"])


def statuses(module: str) -> dict[str, str]:
    """Each mutant's status as mutmut names it (``killed``, ``survived``, ``not checked``, ...)."""
    from mutmut.stats import status_by_exit_code

    codes = json.loads(meta_path(module).read_text())["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in codes.items()}


def wilson_interval(killed: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z = 1.96)."""
    if total == 0:
        return (0.0, 1.0)
    share = killed / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def sample(
    modules: list[str], per_module: int, seed: int, exclude: list[tuple[int, int]] | tuple = ()
) -> dict[str, list[str]]:
    """
    ``per_module`` mutants of each module, drawn with ``seed``.

    :param exclude: ``(seed, per_module)`` of earlier samples whose mutants are left out: tests were written against
        their survivors, so a sample that reuses them is not a fresh estimate
    """
    earlier = {module: set() for module in modules}
    for old_seed, old_size in exclude:
        for module, names in sample(modules, old_size, old_seed).items():
            earlier[module].update(names)
    rng = random.Random(seed)
    chosen = {}
    for module in modules:
        names = [name for name in mutant_names(module) if name not in earlier[module]]
        chosen[module] = sorted(rng.sample(names, min(per_module, len(names))))
    return chosen


def seed_and_size(text: str) -> tuple[int, int]:
    """``"1:15"`` -> ``(1, 15)``: an earlier sample's seed and its mutants per module."""
    try:
        seed, size = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SEED:PER_MODULE (e.g. 1:15), got {text!r}") from None
    return seed, size


def report(chosen: dict[str, list[str]]) -> int:
    """Print killed / sampled per module and overall; returns the number not yet checked."""
    unchecked = 0
    all_killed = all_total = 0
    for module, names in chosen.items():
        status = statuses(module)
        killed = sum(status[name] in KILLED for name in names)
        survived = [name for name in names if status[name] in SURVIVED]
        other = [name for name in names if status[name] not in KILLED + SURVIVED]
        unchecked += len(other)
        total = killed + len(survived)
        low, high = wilson_interval(killed, total)
        print(
            f"{module}.py: {killed} of {total} sampled mutants killed ({killed / max(total, 1):.0%}, "
            f"95% CI {low:.0%}–{high:.0%}; {len(status)} mutants in all)"
        )
        for name in survived:
            print(f"  survived: {name}")
        for name in other:
            print(f"  {status[name]}: {name}")
        all_killed += killed
        all_total += total
    low, high = wilson_interval(all_killed, all_total)
    print(f"all: {all_killed} of {all_total} killed ({all_killed / max(all_total, 1):.0%}, 95% CI {low:.0%}–{high:.0%})")
    return unchecked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", nargs="+", default=["mixin", "replay"], help="modules of sb3_r2vpo/r2vpo")
    parser.add_argument("--per-module", type=int, default=30, help="mutants sampled per module")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--jobs", type=int, default=1, help="mutmut's --max-children")
    parser.add_argument(
        "--exclude",
        nargs="*",
        type=seed_and_size,
        default=[],
        metavar="SEED:PER_MODULE",
        help="earlier samples to leave out (e.g. 0:30 1:15), so that this one is fresh",
    )
    parser.add_argument("--report-only", action="store_true", help="print the sample's results without running")
    args = parser.parse_args(argv)
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    if not all(meta_path(module).exists() for module in args.modules):
        # mutmut generates every mutant before it runs the named ones; one cheap mutant is enough to get there.
        subprocess.run([mutmut, "run", "--max-children", "1", CHEAP_MUTANT], check=False)
    chosen = sample(args.modules, args.per_module, args.seed, args.exclude)
    if not args.report_only:
        names = [name for names in chosen.values() for name in names]
        subprocess.run([mutmut, "run", "--max-children", str(args.jobs), *names], check=False)
    return 1 if report(chosen) else 0


if __name__ == "__main__":
    sys.exit(main())
