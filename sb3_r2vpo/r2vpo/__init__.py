from sb3_r2vpo.r2vpo.mixin import R2VPOMixin
from sb3_r2vpo.r2vpo.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_r2vpo.r2vpo.r2vpo import R2VPO, NonFiniteTrainingError

__all__ = ["R2VPO", "CnnPolicy", "MlpPolicy", "MultiInputPolicy", "NonFiniteTrainingError", "R2VPOMixin"]
