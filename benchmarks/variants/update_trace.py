"""Per-update trace of one seeded run, built as the benchmark builds it (issue 13: CartPole's late collapse).

Prints every ``--every``-th update: env steps, the mean training return of the last 100 episodes, the policy's
entropy, approx. KL, the clipped share (PPO's ``clip_fraction``; R2VPO's ``ratio_outside_clip``), R2VPO's final
ratio variance V̂, the critic's explained variance, its value loss and the rollout's advantage standard deviation
before normalisation (the scale ``normalize_advantage`` divides by).

    python benchmarks/variants/update_trace.py r2vpo CartPole-v1 16 50000 [--every 4]
"""

import argparse

import numpy as np
import torch as th
from per_update import record_updates

from sb3_r2vpo.benchmark.algorithms import configure

KEYS = (
    "train/entropy_loss",
    "train/approx_kl",
    "clipped",
    "train/ratio_variance_final",
    "train/explained_variance",
    "train/value_loss",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algo", help="a benchmark algorithm name, e.g. r2vpo, ppo, 'r2vpo[n_epochs=10]'")
    parser.add_argument("env_id")
    parser.add_argument("seed", type=int)
    parser.add_argument("steps", type=int)
    parser.add_argument("--every", type=int, default=4, help="print every N-th update (and the last)")
    args = parser.parse_args()
    th.set_num_threads(1)  # small MLPs: one thread is fastest
    model = configure(args.algo, args.env_id).make_model(args.seed)

    def row(logged: dict) -> tuple:
        clipped = logged.get("train/clip_fraction", logged.get("train/ratio_outside_clip", np.nan))
        recent = np.mean([info["r"] for info in model.ep_info_buffer]) if model.ep_info_buffer else np.nan
        advantage_std = float(np.std(model.rollout_buffer.advantages))
        values = {**logged, "clipped": clipped}
        return (model.num_timesteps, recent, *(float(values.get(key, np.nan)) for key in KEYS), advantage_std)

    rows = record_updates(model, row)
    model.learn(total_timesteps=args.steps)
    print(f"{args.algo} {args.env_id} seed {args.seed}")
    print("| steps | train return | entropy | approx KL | clipped | V̂ final | explained var. | value loss | advantage std |")
    print("|---|---|---|---|---|---|---|---|---|")
    for steps, recent, entropy_loss, *rest in rows[:: args.every] + rows[-1:]:
        print(f"| {steps} | {recent:.1f} | {-entropy_loss:.3f} | " + " | ".join(f"{value:.4f}" for value in rest) + " |")


if __name__ == "__main__":
    main()
