"""Baselines that exist only for the benchmark (not public API)."""

from __future__ import annotations

import torch as th

from sb3_r2vpo.r2vpo import R2VPO


class SPO(R2VPO):
    """
    Simple Policy Optimization (Xie et al., ICML 2025): PPO's training loop with the clip-free policy loss
    ``-mean(r·Â − |Â|·(r − 1)² / (2ε))``, ε = ``spo_epsilon``. Built on R2VPO's loop, with the dual update off
    (λ plays no part); the logged ratio variance is still measured.

    :param spo_epsilon: ε of the quadratic penalty (0.2 in the paper)
    """

    def __init__(self, *args, spo_epsilon: float = 0.2, **kwargs) -> None:
        if not spo_epsilon > 0:
            raise ValueError(f"`spo_epsilon` must be > 0, got {spo_epsilon}")
        self.spo_epsilon = float(spo_epsilon)
        super().__init__(*args, **kwargs)

    def _policy_loss(
        self, ratio: th.Tensor, advantages: th.Tensor, variance_target: float, start_ratio: th.Tensor | None = None
    ):
        surrogate_loss = -th.mean(ratio * advantages)
        penalty = th.mean(advantages.abs() * (ratio - 1.0) ** 2) / (2.0 * self.spo_epsilon)
        variance = th.mean((ratio - ratio.mean()) ** 2)
        return surrogate_loss + penalty, surrogate_loss, variance

    def _step_dual(self, variance: float, variance_target: float) -> None:
        pass
