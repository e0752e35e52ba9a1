"""Summarise probe.py's output: PPO's per-update ratio variance (over the whole rollout) against its clip ε."""

import json
import statistics
from pathlib import Path

here = Path(__file__).parent


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


print(
    "| task | clip ε | updates | Var(r) median | 10th–90th pct | mean over training | Var/ε² median | outside clip (median) |"
)
print("|---|---|---|---|---|---|---|---|")
for path in sorted(here.glob("*.jsonl")):
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        continue
    variances = [row["var_mean"] for row in rows]
    relative = statistics.median(row["var_mean"] / row["clip"] ** 2 for row in rows if row["clip"] > 0)
    clip = rows[0]["clip"]
    annealed = " (annealed)" if rows[-1]["clip"] != clip else ""
    print(
        f"| {path.stem} | {clip:.2g}{annealed} | {len(rows)} | {statistics.median(variances):.4f} | "
        f"{percentile(variances, 0.1):.4f}–{percentile(variances, 0.9):.4f} | {statistics.mean(variances):.4f} | "
        f"{relative:.2f} | {statistics.median(row['outside_clip'] for row in rows):.3f} |"
    )
