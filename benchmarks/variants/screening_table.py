"""The issue-13 screening table: each algorithm × quick-suite task on the screening seeds, final and AUC.

Reads the finished runs under benchmarks/results/runs (protocol v2) and prints Markdown: per task the mean over
seeds of the final score (mean of the last 3 evaluations) and of the AUC (mean return over all evaluation
points), in return units; then per algorithm the mean normalised final/AUC/peak-to-final over the tasks where it
has every screening seed. Algorithms are those given, or every one with runs on those seeds.

    python benchmarks/variants/screening_table.py --seeds 0 1 2 [--algos ppo r2vpo ...]
    python benchmarks/variants/screening_table.py --out benchmarks/results/offsuite --tasks Acrobot-v1 LunarLanderContinuous-v3
"""

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from sb3_r2vpo.benchmark.algorithms import canonical_name
from sb3_r2vpo.benchmark.report import final_score, learning_curve_area, normalize, peak_to_final
from sb3_r2vpo.benchmark.runner import load_runs
from sb3_r2vpo.benchmark.suites import QUICK

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
parser.add_argument("--algos", nargs="*")
parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results")
parser.add_argument("--tasks", nargs="+", default=sorted(QUICK), help="tasks (default: the quick suite's)")
parser.add_argument(
    "--named-before", action="store_true", help="renamed runs under their former names (to redraw an older table)"
)
args = parser.parse_args()

runs = [run for run in load_runs(args.out, args.named_before) if run["seed"] in args.seeds and run["env_id"] in args.tasks]
by_cell = defaultdict(list)
for run in runs:
    by_cell[(run["algo"], run["env_id"])].append(run)
# As the runner names them: r2vpo[b=1,a=2] is r2vpo[a=2,b=1], r2vpo@dir/f.yml is stored as r2vpo@dir%2Ff.yml.
algos = [canonical_name(algo) for algo in args.algos] if args.algos else sorted({algo for algo, _ in by_cell})
tasks = sorted(args.tasks)
complete = {
    algo: [task for task in tasks if len({run["seed"] for run in by_cell[(algo, task)]}) == len(args.seeds)] for algo in algos
}

print(f"Seeds {' '.join(map(str, args.seeds))}; cells: final / AUC, mean over seeds (return units).\n")
print("| algorithm | " + " | ".join(tasks) + " |")
print("|---|" + "---|" * len(tasks))
for algo in algos:
    cells = []
    for task in tasks:
        group = by_cell[(algo, task)]
        if len(group) < len(args.seeds):
            cells.append(f"({len(group)} seeds)" if group else "–")
            continue
        final = np.mean([final_score(run["curve"]) for run in group])
        area = np.mean([learning_curve_area(run["curve"]) for run in group])
        cells.append(f"{final:.0f} / {area:.0f}")
    print(f"| {algo} | " + " | ".join(cells) + " |")

print("\nMean normalised score over the tasks each algorithm has all seeds of (and over the tasks all have):\n")
shared = [task for task in tasks if all(task in complete[algo] for algo in algos)]
print("| algorithm | tasks | final | AUC | peak-to-final | final (shared tasks) | AUC (shared tasks) |")
print("|---|---|---|---|---|---|---|")


def mean_over(algo: str, task_list: list[str], metric) -> float:
    values = [metric(run) for task in task_list for run in by_cell[(algo, task)]]
    return float(np.mean(values)) if values else float("nan")


def final(run: dict) -> float:
    return normalize(final_score(run["curve"]), run["env_id"])


def area(run: dict) -> float:
    return learning_curve_area(run["curve"], run["env_id"])


def loss(run: dict) -> float:
    return peak_to_final(run["curve"], run["env_id"])


for algo in algos:
    print(
        f"| {algo} | {len(complete[algo])} | {mean_over(algo, complete[algo], final):.3f} | "
        f"{mean_over(algo, complete[algo], area):.3f} | {mean_over(algo, complete[algo], loss):.3f} | "
        f"{mean_over(algo, shared, final):.3f} | {mean_over(algo, shared, area):.3f} |"
    )
