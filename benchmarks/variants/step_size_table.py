"""How large a policy step each algorithm took in finished runs: per task and algorithm, the approximate KL per update.

Reads result.json's `train_stats` (per-update percentiles of the logged `train/approx_kl`, SB3's estimate
E[(r - 1) - log r] over the last epoch's minibatches) and prints Markdown: per task and algorithm, the median and
95th percentile of each run's per-update approx KL, as `low–high` over the seeds, next to the final return. It is
the size of the step each method's brake (clip, trust region, variance constraint) let through; PPO's clip bounds
the gradient of a clipped sample, not the step, so its KL can run far past what the clip range suggests.

    python benchmarks/variants/step_size_table.py --out benchmarks/mujoco-1m [--algos r2vpo ppo trpo] [--seeds 0 1 2]
"""

import argparse
from collections import defaultdict
from pathlib import Path

from sb3_r2vpo.benchmark.runner import load_runs

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", type=Path, required=True, help="a runner --out folder")
parser.add_argument("--algos", nargs="+", default=None, help="default: every algorithm with runs there")
parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: every seed")
args = parser.parse_args()

groups = defaultdict(list)
for run in load_runs(args.out):
    if (args.algos is None or run["algo"] in args.algos) and (args.seeds is None or run["seed"] in args.seeds):
        groups[run["env_id"], run["algo"]].append(run)


def span(values: list[float], digits: int) -> str:
    low, high = min(values), max(values)
    return f"{low:.{digits}f}" if round(low, digits) == round(high, digits) else f"{low:.{digits}f}–{high:.{digits}f}"


print("| task | algorithm | runs | approx KL per update, median | 95th pct. | final return |")
print("|---|---|---|---|---|---|")
for (env_id, algo), runs in sorted(groups.items()):
    stats = [run["train_stats"]["approx_kl"] for run in runs if "approx_kl" in run.get("train_stats", {})]
    if not stats:
        continue
    median, high = span([s["p50"] for s in stats], 4), span([s["p95"] for s in stats], 4)
    print(f"| {env_id} | {algo} | {len(stats)} | {median} | {high} | {span([run['final_return'] for run in runs], 0)} |")
