"""RL Zoo hyperparameter files shipped with sb3-r2vpo (installed as the ``sb3_r2vpo.hyperparams`` package)."""
