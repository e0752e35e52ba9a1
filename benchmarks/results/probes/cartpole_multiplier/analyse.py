"""
Per seed of a probe (``probe.py``): the final return (20 deterministic episodes), λ's median and its share of
updates at 1e-3, the largest final-policy ratio variance of an update over δ = 0.01 and λ during that update,
the updates whose final-policy variance exceeded 10 δ, and the policy's entropy at the end.

    python benchmarks/results/probes/cartpole_multiplier/analyse.py packaged
"""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

DELTA = 0.01  # the CartPole entry's variance_target
rows = []
for folder in sorted((Path(__file__).parent / sys.argv[1]).glob("seed*")):
    if not (folder / "final.json").exists():
        continue
    log = pd.read_csv(folder / "progress.csv").dropna(subset=["train/ratio_variance_final"])
    final_variance = log["train/ratio_variance_final"].to_numpy()
    multiplier = log["train/lagrange_multiplier"].to_numpy()
    worst = int(np.argmax(final_variance))
    rows.append(
        {
            "seed": int(folder.name[len("seed") :]),
            "final": json.loads((folder / "final.json").read_text())["mean"],
            "lambda_median": np.median(multiplier),
            "share_at_1e-3": np.mean(multiplier <= 1.1e-3),
            "max_final_variance_over_delta": final_variance.max() / DELTA,
            "lambda_in_that_update": log["train/lagrange_multiplier_max"].to_numpy()[worst],
            "updates_over_10_delta": int((final_variance > 10 * DELTA).sum()),
            "entropy_end": -log["train/entropy_loss"].iloc[-1],
        }
    )
print(pd.DataFrame(rows).sort_values("seed").round(3).to_string(index=False))
