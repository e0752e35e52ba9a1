"""
A *dynamic* task for the benchmark: Pendulum whose physics drift while it is being learned.

Drift schedule of ``DriftingPendulum-v1``: at every reset the mass and length are scaled by
``1 + 0.3 · sin(φ)`` and ``1 + 0.3 · cos(φ)`` with ``φ = 2π · episode / 100``, counted per env instance. A
training env therefore goes through one full cycle every 100 of its own episodes (20,000 of its steps; with
the Pendulum entry's 4 envs, 100k steps are 1.25 cycles). Evaluation must measure the policy on the whole
cycle, not on the slice an evaluation env happens to be in: before every evaluation the benchmark calls
``start_evaluation(n_episodes)``, after which episode k of the evaluation (k = 0 … n−1) runs at the phase
``φ = 2π · k / n``, evenly spaced over one full cycle.
"""

from __future__ import annotations

import math

import gymnasium as gym

DRIFTING_PENDULUM = "DriftingPendulum-v1"


class PhysicsDrift(gym.Wrapper):
    """
    Scales Pendulum's mass and length by ``1 + amplitude · sin(2π · episode / period)`` (mass) and
    ``1 + amplitude · cos(…)`` (length, out of phase) at every reset, so the dynamics cycle through
    ±``amplitude`` (30%) every ``period`` episodes.

    :param env: A Pendulum env (``env.unwrapped`` has ``m`` and ``l``)
    :param amplitude: Relative drift, 0.3 = ±30%
    :param period: Episodes per full cycle
    """

    def __init__(self, env: gym.Env, amplitude: float = 0.3, period: int = 100) -> None:
        super().__init__(env)
        self.amplitude, self.period = amplitude, period
        self.base_mass, self.base_length = env.unwrapped.m, env.unwrapped.l
        self.episode = 0

    def start_evaluation(self, n_episodes: int) -> None:
        """
        Spread the next ``n_episodes`` episodes evenly over one full drift cycle (phases 0, 1/n, …, (n−1)/n).
        Called by the benchmark before every evaluation of an evaluation env; a training env never calls it.

        :param n_episodes: Episodes of the coming evaluation, >= 1
        """
        if n_episodes < 1:
            raise ValueError(f"`n_episodes` must be >= 1, got {n_episodes}")
        self.period, self.episode = n_episodes, 0

    def reset(self, **kwargs):
        phase = 2 * math.pi * self.episode / self.period
        self.env.unwrapped.m = self.base_mass * (1 + self.amplitude * math.sin(phase))
        self.env.unwrapped.l = self.base_length * (1 + self.amplitude * math.cos(phase))
        self.episode += 1
        return self.env.reset(**kwargs)


def _make_drifting_pendulum(**kwargs) -> gym.Env:
    return PhysicsDrift(gym.make("Pendulum-v1", **kwargs).unwrapped, amplitude=0.3, period=100)


def register_envs() -> None:
    """Register the benchmark's own tasks with gymnasium (idempotent)."""
    if DRIFTING_PENDULUM not in gym.envs.registry:
        gym.register(DRIFTING_PENDULUM, entry_point=_make_drifting_pendulum, max_episode_steps=200)
