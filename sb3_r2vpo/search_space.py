"""R2VPO's Optuna search space, in rl_zoo3's sampler/converter shape (also used by :mod:`sb3_r2vpo.tuning`)."""

from __future__ import annotations

from typing import Any

import optuna
from torch import nn

NET_ARCHS = {
    "tiny": dict(pi=[64], vf=[64]),
    "small": dict(pi=[64, 64], vf=[64, 64]),
    "medium": dict(pi=[256, 256], vf=[256, 256]),
}
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def sample_r2vpo_params(trial: optuna.Trial, n_actions: int = 0, n_envs: int = 1, additional_args: dict | None = None) -> dict:
    """
    Sample R2VPO constructor arguments (rl_zoo3's sampler signature and convention: converted values).
    See :func:`suggest_r2vpo_params` for the space.
    """
    return convert_r2vpo_params(suggest_r2vpo_params(trial, additional_args))


def suggest_r2vpo_params(trial: optuna.Trial, additional_args: dict | None = None) -> dict:
    """
    Suggest R2VPO hyperparameters in the trial's own parametrisation (the names ``trial.params`` holds).

    R2VPO's own knobs: variance target δ (log scale), dual step size, dual update form and frequency, centring,
    and how many stale rollouts to replay (0, 1, 2 or 4).
    The usual on-policy ones: n_steps, batch_size, gamma, gae_lambda, learning_rate, ent_coef, n_epochs,
    max_grad_norm, net_arch, activation.

    :param additional_args: May hold ``max_n_steps_pow`` (default 11): the largest ``log2(n_steps)`` to try,
        so that a short trial budget still holds several rollouts.
    """
    max_n_steps_pow = int((additional_args or {}).get("max_n_steps_pow", 11))
    return {
        "variance_target": trial.suggest_float("variance_target", 0.003, 0.3, log=True),
        "dual_step_size": trial.suggest_float("dual_step_size", 0.005, 0.5, log=True),
        "dual_update": trial.suggest_categorical("dual_update", ["multiplicative", "linear"]),
        "dual_update_frequency": trial.suggest_categorical("dual_update_frequency", ["minibatch", "epoch"]),
        "variance_center": trial.suggest_categorical("variance_center", ["mean", "one", "start"]),
        "replay_rollouts": trial.suggest_categorical("replay_rollouts", [0, 1, 2, 4]),
        "n_steps_pow": trial.suggest_int("n_steps_pow", 5, max(5, max_n_steps_pow)),
        "batch_size_pow": trial.suggest_int("batch_size_pow", 5, 9),
        "one_minus_gamma": trial.suggest_float("one_minus_gamma", 1e-4, 0.1, log=True),
        "one_minus_gae_lambda": trial.suggest_float("one_minus_gae_lambda", 1e-3, 0.2, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True),
        "ent_coef": trial.suggest_float("ent_coef", 1e-8, 0.05, log=True),
        "n_epochs": trial.suggest_categorical("n_epochs", [3, 5, 10, 20]),
        "max_grad_norm": trial.suggest_float("max_grad_norm", 0.3, 5.0, log=True),
        "net_arch": trial.suggest_categorical("net_arch", list(NET_ARCHS)),
        "activation_fn": trial.suggest_categorical("activation_fn", list(ACTIVATIONS)),
    }


def convert_r2vpo_params(sampled: dict[str, Any]) -> dict[str, Any]:
    """
    Turn suggested values (``trial.params``) into R2VPO constructor arguments (rl_zoo3's converter signature).

    A linear dual update moves λ additively, so its sampled step is rescaled to act on λ's scale
    (``1/(2 sqrt(δ))``) as the multiplicative step does.
    """
    params = dict(sampled)
    params["gamma"] = 1.0 - params.pop("one_minus_gamma")
    params["gae_lambda"] = 1.0 - params.pop("one_minus_gae_lambda")
    params["n_steps"] = 2 ** params.pop("n_steps_pow")
    params["batch_size"] = min(2 ** params.pop("batch_size_pow"), params["n_steps"])
    params["policy_kwargs"] = {
        "net_arch": NET_ARCHS[params.pop("net_arch")],
        "activation_fn": ACTIVATIONS[params.pop("activation_fn")],
    }
    if params.get("dual_update") == "linear":
        # The linear step multiplies V - δ ~ δ; scale it so one step moves λ by ~η·λ*.
        params["dual_step_size"] = params["dual_step_size"] / (2.0 * params["variance_target"] ** 1.5)
        params["lagrange_multiplier_min"] = 0.0
    return params
