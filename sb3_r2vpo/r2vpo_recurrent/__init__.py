from sb3_r2vpo.r2vpo_recurrent.policies import CnnLstmPolicy, MlpLstmPolicy, MultiInputLstmPolicy
from sb3_r2vpo.r2vpo_recurrent.r2vpo_recurrent import RecurrentR2VPO

__all__ = ["CnnLstmPolicy", "MlpLstmPolicy", "MultiInputLstmPolicy", "RecurrentR2VPO"]
