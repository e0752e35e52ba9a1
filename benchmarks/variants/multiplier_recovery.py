"""How long the constraint stays violated once it becomes active: rollouts until λ brings V̂ back under δ (issue 13).

Trains R2VPO from a packaged entry (CartPole-v1 by default) under today's defaults and under the former ones (no λ
floor, mean-centred variance), and records after every update the final policy's full-rollout ratio variance
``train/ratio_variance_final`` (V̂), δ (after its schedule), λ and λ's lower bound. A *violation* is a stretch of
consecutive updates with V̂ > δ; its length is the number of rollouts the dual ascent took to bring V̂ back under δ
(the stretch that is still open at the end counts to the end). Printed as Markdown, one row per configuration and
seed: updates, share of updates in violation, stretches, median / longest stretch (rollouts), λ / λ* at the start of
the stretches (median) and the largest V̂ / δ.

    python benchmarks/variants/multiplier_recovery.py [--env CartPole-v1] [--seeds 0 1 2] [--steps 50000]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch as th
from per_update import record_updates

from sb3_r2vpo.presets import get_preset
from sb3_r2vpo.r2vpo.objective import stationary_multiplier

CONFIGURATIONS = {
    "today's defaults": {},
    "former defaults (no floor, mean centre)": {"lagrange_multiplier_floor": None, "variance_center": "mean"},
}


def violation_stretches(variance: np.ndarray, target: np.ndarray) -> list[tuple[int, int]]:
    """``(first update, length)`` of every maximal run of consecutive updates with ``variance > target``."""
    stretches, start = [], None
    for index, over in enumerate(variance > target):
        if over and start is None:
            start = index
        elif not over and start is not None:
            stretches.append((start, index - start))
            start = None
    if start is not None:
        stretches.append((start, len(variance) - start))
    return stretches


def trace(env_id: str, seed: int, steps: int, overrides: dict) -> dict[str, np.ndarray]:
    """Per-update V̂ (final policy, whole rollout), δ, λ and λ's lower bound of one seeded run."""
    model = get_preset(env_id).make_model(seed=seed, **overrides)
    rows = record_updates(
        model,
        lambda logged: (
            logged["train/ratio_variance_final"],
            logged["train/variance_target"],
            model.lagrange_multiplier,
            logged["train/lagrange_multiplier_lower_bound"],
        ),
    )
    model.learn(total_timesteps=steps)
    variance, target, multiplier, lower = (np.array(column, dtype=float) for column in zip(*rows, strict=True))
    return {"variance": variance, "target": target, "multiplier": multiplier, "lower": lower}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=50_000)
    args = parser.parse_args()
    th.set_num_threads(1)  # small MLPs: one thread is fastest and keeps parallel work from slowing it

    print(f"{args.env}, {args.steps} steps; a stretch = consecutive updates whose final V̂ exceeds δ\n")
    print(
        "| configuration | seed | updates | in violation | stretches | median / longest (rollouts) "
        "| λ / λ* at a stretch's start (median) | largest V̂ / δ |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, overrides in CONFIGURATIONS.items():
        for seed in args.seeds:
            run = trace(args.env, seed, args.steps, overrides)
            stretches = violation_stretches(run["variance"], run["target"])
            lengths = [length for _, length in stretches]
            relative = [
                run["multiplier"][start - 1] / stationary_multiplier(run["target"][start]) for start, _ in stretches if start
            ]
            longest = f"{np.median(lengths):.0f} / {max(lengths)}" if lengths else "–"
            start_multiplier = f"{np.median(relative):.2f}" if relative else "–"
            share = np.mean(run["variance"] > run["target"])
            print(
                f"| {name} | {seed} | {len(run['variance'])} | {share:.0%} | {len(stretches)} | {longest} "
                f"| {start_multiplier} | {np.max(run['variance'] / run['target']):.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
