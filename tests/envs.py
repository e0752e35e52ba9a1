"""Small environments for the tests: SB3's identity and multi-input envs, plus action spaces R2VPO refuses."""

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class TupleActionEnv(gym.Env):
    """An env whose Tuple action space no SB3 on-policy algorithm supports."""

    observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3)))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action):
        return np.zeros(2, dtype=np.float32), 0.0, False, False, {}


class NanRewardEnv(gym.Wrapper):
    """Returns NaN rewards once ``nan_after`` steps have passed, like a buggy simulator."""

    def __init__(self, env: gym.Env, nan_after: int = 0) -> None:
        super().__init__(env)
        self.nan_after = nan_after
        self.steps = 0

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if self.steps > self.nan_after:
            reward = float("nan")
        return observation, reward, terminated, truncated, info
