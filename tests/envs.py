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


class TruncatingEnv(gym.Env):
    """
    Observation ``[t / horizon]`` at step ``t`` of an episode, reward ``1 + action``; every episode is cut by the
    time limit after ``horizon`` steps (truncated, never terminated), its terminal observation ``[1.0]``.
    """

    observation_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, horizon: int = 5) -> None:
        self.horizon = horizon
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.t / self.horizon], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0 + float(action), False, self.t >= self.horizon, {}


class DictMultiBinaryEnv(gym.Env):
    """Dict observations (a vector and a Discrete counter) with MultiBinary(4) actions; reward: matched bits."""

    observation_space = spaces.Dict({"vec": spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32), "count": spaces.Discrete(5)})
    action_space = spaces.MultiBinary(4)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def _obs(self) -> dict:
        self.target = self.np_random.integers(0, 2, size=4)
        return {"vec": (2.0 * self.target - 1.0).astype(np.float32), "count": self.t % 5}

    def step(self, action):
        reward = float(np.sum(np.asarray(action) == self.target))
        self.t += 1
        return self._obs(), reward, False, self.t >= 20, {}


class Float64ActionEnv(gym.Env):
    """Box actions in float64 (the rollout buffer keeps them so, and casts them on the way out)."""

    observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.state = self.np_random.uniform(-1, 1, size=2).astype(np.float32)
        return self.state, {}

    def step(self, action):
        reward = -float(np.sum((np.asarray(action) - self.state) ** 2))
        self.t += 1
        self.state = self.np_random.uniform(-1, 1, size=2).astype(np.float32)
        return self.state, reward, False, self.t >= 16, {}


class RecordingWrapper(gym.Wrapper):
    """
    Keeps, for every ``step``, the observation the agent acted on, the reward, and the terminal observation of a
    truncated episode, as the environment gave them (below any ``VecNormalize``).
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.acted_on: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.truncated_at: dict[int, np.ndarray] = {}  # step number -> terminal observation
        self._current = None

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        self._current = np.array(observation, copy=True)
        return observation, info

    def step(self, action):
        self.acted_on.append(self._current)
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.rewards.append(float(reward))
        if truncated and not terminated:
            self.truncated_at[len(self.rewards) - 1] = np.array(observation, copy=True)
        self._current = np.array(observation, copy=True)
        return observation, reward, terminated, truncated, info
