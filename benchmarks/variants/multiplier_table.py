"""How λ behaved in finished R2VPO runs: per task, the range over seeds of each run's `train_stats` figures.

Reads result.json's `train_stats` (per-update percentiles of the logged `train/` values) and prints Markdown: λ's
lower bound (the floor in effect), the share of an update's λ values on it, λ's median / 95th percentile, and the
final policy's ratio variance over δ (median / 95th percentile), each as `low–high` over the seeds.

    python benchmarks/variants/multiplier_table.py --algo 'r2vpo[lagrange_multiplier_floor=auto,variance_center=one]' \
        --seeds 0 1 2 [--out benchmarks/results]
"""

import argparse
from collections import defaultdict
from pathlib import Path

from sb3_r2vpo.benchmark.algorithms import canonical_name
from sb3_r2vpo.benchmark.runner import load_runs

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--algo", required=True)
parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results")
parser.add_argument(
    "--named-before", action="store_true", help="renamed runs under their former names (to redraw an older table)"
)
args = parser.parse_args()
args.algo = canonical_name(args.algo)  # as the runner stores it

by_task = defaultdict(list)
for run in load_runs(args.out, args.named_before):
    if run["algo"] == args.algo and run["seed"] in args.seeds and run.get("train_stats"):
        by_task[run["env_id"]].append(run["train_stats"])


def span(values: list[float], digits: int) -> str:
    low, high = min(values), max(values)
    return f"{low:.{digits}f}" if round(low, digits) == round(high, digits) else f"{low:.{digits}f}–{high:.{digits}f}"


print(f"{args.algo}, seeds {' '.join(map(str, args.seeds))} (ranges over seeds)\n")
print("| task | runs | λ lower bound | share of λ values at it | λ median / 95th pct. | final V̂ / δ, median / 95th pct. |")
print("|---|---|---|---|---|---|")
for task in sorted(by_task):
    stats = by_task[task]
    bound = [s["lagrange_multiplier_lower_bound"]["p50"] for s in stats]
    at_floor = [s["lagrange_multiplier_at_floor"]["mean"] for s in stats]
    lam = [s["lagrange_multiplier"] for s in stats]
    delta = [s["variance_target"]["p50"] for s in stats]
    final = [s["ratio_variance_final"] for s in stats]
    relative = {q: [f[q] / d for f, d in zip(final, delta, strict=True)] for q in ("p50", "p95")}
    print(
        f"| {task} | {len(stats)} | {span(bound, 3)} | {span(at_floor, 2)} | "
        f"{span([x['p50'] for x in lam], 2)} / {span([x['p95'] for x in lam], 2)} | "
        f"{span(relative['p50'], 2)} / {span(relative['p95'], 2)} |"
    )
