from sb3_r2vpo.r2vpo_mask.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_r2vpo.r2vpo_mask.r2vpo_mask import MaskableR2VPO

__all__ = ["CnnPolicy", "MaskableR2VPO", "MlpPolicy", "MultiInputPolicy"]
