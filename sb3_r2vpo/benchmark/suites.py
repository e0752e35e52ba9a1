"""Task suites and their budgets."""

from __future__ import annotations

from sb3_r2vpo.benchmark.envs import DRIFTING_PENDULUM

# quick: one seed of every algorithm (5) fits in about an hour on 2 cores, 2 jobs (measured budgets per run:
# ~1-4 min at SB3's 600-1,100 steps/s plus training). MountainCarContinuous is the sparse-reward case,
# DriftingPendulum the dynamic one (mass and length drift ±30%).
QUICK = {
    "CartPole-v1": 50_000,
    "Pendulum-v1": 100_000,
    "MountainCarContinuous-v0": 50_000,
    "InvertedDoublePendulum-v5": 100_000,
    "Hopper-v5": 150_000,
    "HalfCheetah-v5": 150_000,
    DRIFTING_PENDULUM: 100_000,
}
# mujoco: the paper's scale, ten -v5 tasks at 1M steps, for machines that can afford it.
MUJOCO = dict.fromkeys(
    (
        "HalfCheetah-v5",
        "Hopper-v5",
        "Walker2d-v5",
        "Ant-v5",
        "Humanoid-v5",
        "Swimmer-v5",
        "Reacher-v5",
        "Pusher-v5",
        "InvertedPendulum-v5",
        "InvertedDoublePendulum-v5",
    ),
    1000000,
)
SUITES = {"quick": QUICK, "mujoco": MUJOCO}
ALGORITHMS = ("r2vpo", "r2vpo-matched", "ppo", "trpo", "spo")
# Replay variants, for the data-efficiency study: R2VPO's entry with replay_rollouts = K.
REPLAY_VARIANTS = ("r2vpo-k2", "r2vpo-k4")
