"""A *dynamic* task for the benchmark: Pendulum whose physics drift while it is being learned."""

from __future__ import annotations

import math

import gymnasium as gym

DRIFTING_PENDULUM = "DriftingPendulum-v1"


class PhysicsDrift(gym.Wrapper):
    """
    Scales Pendulum's mass and length by ``1 + amplitude · sin(2π · episode / period)`` at every reset, so the
    dynamics cycle through ±``amplitude`` (30%) every ``period`` episodes (mass and length out of phase).

    :param env: A Pendulum env (``env.unwrapped`` has ``m`` and ``l``)
    :param amplitude: Relative drift, 0.3 = ±30%
    :param period: Episodes per full cycle
    """

    def __init__(self, env: gym.Env, amplitude: float = 0.3, period: int = 100) -> None:
        super().__init__(env)
        self.amplitude, self.period = amplitude, period
        self.base_mass, self.base_length = env.unwrapped.m, env.unwrapped.l
        self.episode = 0

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
