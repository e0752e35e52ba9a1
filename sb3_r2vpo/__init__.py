"""sb3-r2vpo: R²VPO (Ratio-Variance Regularized Policy Optimization) for Stable-Baselines3."""

from typing import Any

from sb3_r2vpo.r2vpo import R2VPO, CnnPolicy, MlpPolicy, MultiInputPolicy, NonFiniteTrainingError
from sb3_r2vpo.version import __version__

# On sb3-contrib's maskable and recurrent PPO; imported on first use (importing sb3_contrib loads all its algorithms).
_CONTRIB_ALGORITHMS = {
    "MaskableR2VPO": "sb3_r2vpo.r2vpo_mask",
    "RecurrentR2VPO": "sb3_r2vpo.r2vpo_recurrent",
}

__all__ = [
    "R2VPO",
    "CnnPolicy",
    "MaskableR2VPO",
    "MlpPolicy",
    "MultiInputPolicy",
    "NonFiniteTrainingError",
    "RecurrentR2VPO",
    "__version__",
]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> Any:
    if name in _CONTRIB_ALGORITHMS:
        import importlib

        return getattr(importlib.import_module(_CONTRIB_ALGORITHMS[name]), name)
    raise AttributeError(f"module 'sb3_r2vpo' has no attribute {name!r}")
