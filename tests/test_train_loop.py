"""
The training loop of R2VPO (``R2VPO.train``) against values computed here, step by step: the direction of the
log-ratio, the loss each gradient step differentiates, which variance feeds each dual step, what ``target_kl``
counts, and what a replay minibatch holds. Each check records what the loop was given (the minibatches, the policy
before each step, λ, the gradient it stepped on) and recomputes the rest from the definitions, not with the
library's own functions. Tiny settings: each test trains a few hundred steps at most.
"""

import copy
import math

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from sb3_r2vpo import R2VPO
from tests.conftest import attach

th.set_num_threads(1)

TINY = dict(policy_kwargs=dict(net_arch=[16]), seed=0)


class Tap(R2VPO):
    """
    Records, for every minibatch the loop draws: the samples, their ages, the policy's weights and λ at that moment
    (before that minibatch's gradient step), and δ; and, for every gradient step taken, the gradient it applied.
    """

    def _setup_model(self) -> None:
        super()._setup_model()
        self.drawn: list[dict] = []
        self.gradients: list[list[th.Tensor]] = []
        self.updates: list[dict] = []  # λ before and after each train()
        step = self.policy.optimizer.step

        def recording_step(*args, **kwargs):
            self.gradients.append([parameter.grad.detach().clone() for parameter in self.policy.parameters()])
            return step(*args, **kwargs)

        self.policy.optimizer.step = recording_step

    def train(self) -> None:
        before = self.lagrange_multiplier
        super().train()
        self.updates.append(dict(before=before, after=self.lagrange_multiplier))

    def _minibatches(self, replay_batch):
        for samples, ages, start_log_prob in super()._minibatches(replay_batch):
            self.drawn.append(
                dict(
                    samples=samples,
                    ages=ages,
                    weights=copy.deepcopy(self.policy.state_dict()),
                    multiplier=self.lagrange_multiplier,
                    update=self._rollout_index,
                    delta=self._variance_target_now(),
                )
            )
            yield samples, ages, start_log_prob


def policy_with(model: R2VPO, weights: dict) -> th.nn.Module:
    """A fresh copy of the model's policy holding ``weights``."""
    policy = type(model.policy)(**model.policy._get_constructor_parameters())
    policy.load_state_dict(weights)
    policy.set_training_mode(True)
    return policy


def evaluate(model: R2VPO, policy, samples):
    actions = samples.actions
    if isinstance(model.action_space, spaces.Discrete):
        actions = actions.long().flatten()
    values, log_prob, entropy = policy.evaluate_actions(samples.observations, actions)
    return values.flatten(), log_prob.flatten(), entropy


def ratios(model: R2VPO, weights: dict, samples) -> th.Tensor:
    """π(a|s) / μ(a|s) of the minibatch under ``weights``, μ being the samples' behaviour policy."""
    with th.no_grad():
        _, log_prob, _ = evaluate(model, policy_with(model, weights), samples)
    return th.exp(th.clamp(log_prob - samples.old_log_prob, -model.log_ratio_guard, model.log_ratio_guard))


def variance_of(ratio: th.Tensor, center: str) -> float:
    """The ratio variance written out here, about the model's centre (``model.variance_center``)."""
    ratio = ratio.double()
    reference = ratio.mean() if center == "mean" else 1.0
    return float(((ratio - reference) ** 2).mean())


def normalised(advantages: th.Tensor) -> th.Tensor:
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


def composed_loss(model: R2VPO, drawn: dict) -> tuple[list[th.Tensor], dict[str, float]]:
    """
    The loss of one minibatch composed here from its definition,
    ``-mean(r·Â) + λ·(Var r − δ) − c_ent·mean(H) + c_vf·mean((R − V_clipped)²)``, at the weights the loop held
    before that step; returns its gradient (clipped to the global norm, as the loop does) and its parts.
    """
    samples, multiplier, delta = drawn["samples"], drawn["multiplier"], drawn["delta"]
    policy = policy_with(model, drawn["weights"])
    values, log_prob, entropy = evaluate(model, policy, samples)
    advantages = normalised(samples.advantages) if model.normalize_advantage else samples.advantages
    ratio = th.exp(th.clamp(log_prob - samples.old_log_prob, -model.log_ratio_guard, model.log_ratio_guard))
    surrogate = th.mean(ratio * advantages)
    center = ratio.mean() if model.variance_center == "mean" else 1.0
    variance = th.mean((ratio - center) ** 2)
    if model.clip_range_vf is None:
        predicted = values
    else:
        clip = model.clip_range_vf(model._current_progress_remaining)
        predicted = samples.old_values + th.clamp(values - samples.old_values, -clip, clip)
    value_loss = th.mean((samples.returns - predicted) ** 2)
    mean_entropy = th.mean(-log_prob) if entropy is None else th.mean(entropy)
    penalty = multiplier * (variance - delta)
    loss = -surrogate + penalty - model.ent_coef * mean_entropy + model.vf_coef * value_loss
    policy.optimizer.zero_grad()
    loss.backward()
    surrogate, penalty, value_loss, mean_entropy, loss, variance = (
        tensor.detach() for tensor in (surrogate, penalty, value_loss, mean_entropy, loss, variance)
    )
    th.nn.utils.clip_grad_norm_(policy.parameters(), model.max_grad_norm)
    gradient = [parameter.grad.detach().clone() for parameter in policy.parameters()]
    parts = dict(
        policy_gradient_loss=-float(surrogate),
        variance_penalty=float(penalty),
        value_loss=float(value_loss),
        entropy_loss=-float(mean_entropy),
        loss=float(loss),
        variance=float(variance),
    )
    return gradient, parts


def assert_gradients_close(actual: list[th.Tensor], expected: list[th.Tensor], step: int) -> None:
    assert len(actual) == len(expected)
    for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
        th.testing.assert_close(
            got, want, rtol=2e-4, atol=1e-6, msg=lambda text, i=index: f"step {step}, parameter {i}: {text}"
        )


def multiplier_after(model: R2VPO, multiplier: float, variance: float, delta: float) -> float:
    """One dual step written out here (multiplicative or linear, the violation clipped, λ kept in its bounds)."""
    clip = model.dual_step_clip
    down, up = (math.inf, math.inf) if clip is None else clip if isinstance(clip, tuple) else (clip, clip)
    if model.dual_update == "multiplicative":
        value = multiplier * math.exp(model.dual_step_size * min(max(variance / delta - 1.0, -down), up))
    else:
        value = multiplier + model.dual_step_size * min(max(variance - delta, -down * delta), up * delta)
    lower = model.lagrange_multiplier_min
    fraction = model.lagrange_multiplier_floor
    if fraction == "auto":  # the rollout-size rule, written out: min(1, √(64 / N))
        fraction = min(1.0, math.sqrt(64 / (model.n_steps * model.n_envs)))
    if fraction is not None:
        lower = min(max(lower, fraction / (2.0 * math.sqrt(delta))), model.lagrange_multiplier_max)
    return min(max(value, lower), model.lagrange_multiplier_max)


# ------------------------------------------------------------------------------------------ the log-ratio's sign


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_one_gradient_step_raises_the_surrogate(env_id):
    """One step on one minibatch (the whole rollout), nothing but the surrogate: mean(r·Â) must go up."""
    model = Tap(
        "MlpPolicy", env_id, n_steps=64, batch_size=64, n_epochs=1, ent_coef=0.0, vf_coef=0.0, learning_rate=1e-3, **TINY
    )
    model.learn(64)
    (drawn,) = model.drawn
    assert len(model.gradients) == 1
    samples = drawn["samples"]
    advantages = normalised(samples.advantages)
    before = float(th.mean(ratios(model, drawn["weights"], samples) * advantages))
    after = float(th.mean(ratios(model, model.policy.state_dict(), samples) * advantages))
    assert before == pytest.approx(0.0, abs=1e-5)  # r = 1 where π = μ, and mean(Â) = 0
    assert after > before + 1e-4, (before, after)


# ------------------------------------------------------------------------------------------ the loss of each step

GRADIENT_CASES = {
    "default": ("CartPole-v1", dict()),
    "entropy": ("CartPole-v1", dict(ent_coef=0.3)),
    "entropy_gaussian": ("Pendulum-v1", dict(ent_coef=0.3)),
    "value_clip": ("Pendulum-v1", dict(clip_range_vf=0.05, vf_coef=1.0, learning_rate=3e-3)),
    "raw_advantages": ("CartPole-v1", dict(normalize_advantage=False)),
    "centre_one": ("CartPole-v1", dict(variance_center="one", initial_lagrange_multiplier=20.0)),
    "grad_clip": ("Pendulum-v1", dict(max_grad_norm=0.05)),
    "replay": ("CartPole-v1", dict(replay_rollouts=2)),
    "no_analytic_entropy": (
        "Pendulum-v1",
        dict(use_sde=True, ent_coef=0.1, policy_kwargs=dict(net_arch=[16], squash_output=True)),
    ),
}


@pytest.mark.parametrize("case", list(GRADIENT_CASES))
def test_every_gradient_step_is_the_loss_composed_here(case, recorder):
    env_id, extra = GRADIENT_CASES[case]
    kwargs = {**TINY, "n_steps": 32, "batch_size": 16, "n_epochs": 2, "learning_rate": 1e-3, **extra}
    model = attach(Tap("MlpPolicy", env_id, **kwargs), recorder)
    model.learn(32 * 3)
    # 2 epochs of 2 minibatches per update; with replay, the updates train on 1, 2 and 3 rollouts.
    assert len(model.gradients) == len(model.drawn) == (4 + 8 + 12 if case == "replay" else 3 * 4)
    parts = []
    for step, (drawn, gradient) in enumerate(zip(model.drawn, model.gradients, strict=True)):
        expected, step_parts = composed_loss(model, drawn)
        assert_gradients_close(gradient, expected, step)
        parts.append(step_parts)
    # The last update's logged statistics are the means over its steps of the parts above; train/loss is its last step's.
    last = [part for part, drawn in zip(parts, model.drawn, strict=True) if drawn["update"] == model._rollout_index - 1]
    logged = model.logger.name_to_value
    for key in ("policy_gradient_loss", "variance_penalty", "value_loss", "entropy_loss"):
        assert logged[f"train/{key}"] == pytest.approx(np.mean([part[key] for part in last]), rel=1e-4, abs=1e-6), key
    assert logged["train/loss"] == pytest.approx(last[-1]["loss"], rel=1e-4, abs=1e-6)
    assert logged["train/ratio_variance"] == pytest.approx(np.mean([part["variance"] for part in last]), rel=1e-4, abs=1e-9)

    if case == "value_clip":
        # Not vacuous: after the first step the critic moved by more than the clip on some samples.
        moved = []
        for drawn in model.drawn:
            values, _, _ = evaluate(model, policy_with(model, drawn["weights"]), drawn["samples"])
            moved.append(float((values.detach() - drawn["samples"].old_values).abs().max()))
        assert max(moved) > 0.05
    if case == "no_analytic_entropy":
        assert evaluate(model, model.policy, model.drawn[0]["samples"])[2] is None


def test_advantage_normalisation_changes_the_gradient_as_computed_here():
    gradients = {}
    for normalize in (True, False):
        model = Tap(
            "MlpPolicy",
            "CartPole-v1",
            n_steps=32,
            batch_size=32,
            n_epochs=1,
            vf_coef=0.0,
            normalize_advantage=normalize,
            **TINY,
        )
        model.learn(32)
        (drawn,) = model.drawn
        samples = drawn["samples"]
        # π = μ at the first step: r = 1, Var r has no gradient, and the loss's gradient is −mean(Â ∇log π).
        policy = policy_with(model, drawn["weights"])
        _, log_prob, _ = evaluate(model, policy, samples)
        advantages = normalised(samples.advantages) if normalize else samples.advantages
        (-th.mean(advantages * log_prob)).backward()
        th.nn.utils.clip_grad_norm_(policy.parameters(), model.max_grad_norm)
        # (vf_coef = 0 multiplies the value loss by 0: the critic's gradient is zero, not absent)
        expected = [th.zeros_like(p) if p.grad is None else p.grad for p in policy.parameters()]
        (applied,) = model.gradients
        assert_gradients_close(applied, expected, 0)
        gradients[normalize] = th.cat([gradient.flatten() for gradient in applied])
    # Same rollout (same seed), so the two gradients differ by the normalisation alone.
    assert not th.allclose(gradients[True], gradients[False], rtol=1e-2, atol=1e-6)


def test_a_large_entropy_coefficient_raises_the_entropy():
    model = Tap("MlpPolicy", "Pendulum-v1", n_steps=32, batch_size=32, n_epochs=1, ent_coef=10.0, vf_coef=0.0, **TINY)
    before = float(model.policy.log_std.detach().sum())
    model.learn(32)
    assert len(model.gradients) == 1
    # The Gaussian's entropy is Σ log σ + const: one step of the loss −10·H must widen it.
    assert float(model.policy.log_std.detach().sum()) > before + 1e-4
    samples = model.drawn[0]["samples"]
    with th.no_grad():
        _, _, entropy_before = evaluate(model, policy_with(model, model.drawn[0]["weights"]), samples)
        _, _, entropy_after = evaluate(model, model.policy, samples)
    assert float(entropy_after.mean()) > float(entropy_before.mean())


# ------------------------------------------------------------------------------------------ the dual step's input

# Without a floor unless the case names one: the default floor holds λ at λ* on these 64-sample rollouts.
DUAL_CASES = {
    "unclipped": dict(dual_step_clip=None, lagrange_multiplier_floor=None),
    "asymmetric": dict(dual_step_clip=(0.5, 2.0), lagrange_multiplier_floor=None),
    "linear": dict(
        dual_update="linear",
        dual_step_size=200.0,
        dual_step_clip=None,
        lagrange_multiplier_min=0.0,
        lagrange_multiplier_floor=None,
    ),
    "floor": dict(dual_step_clip=None, lagrange_multiplier_floor=0.5, dual_step_size=0.5),
    "schedule": dict(
        dual_step_clip=None, lagrange_multiplier_floor=None, variance_target=lambda progress: 1e-3 + 4e-3 * progress
    ),
    # δ falls between the updates, so the floor rises above where λ ended: the next update starts lifted to it.
    "floor_schedule": dict(
        dual_step_clip=None,
        lagrange_multiplier_floor=0.5,
        dual_step_size=0.5,
        variance_target=lambda progress: 1e-3 + 4e-3 * progress,
    ),
}


@pytest.mark.parametrize("case", list(DUAL_CASES))
def test_each_dual_step_takes_the_variance_of_its_minibatch_before_the_step(case, recorder):
    """Minibatch timing: λ after step i = one dual step from λ before it, on minibatch i's variance under the weights
    before step i (measured here); the first step of an update starts from λ lifted to that update's lower bound."""
    kwargs = dict(n_steps=64, batch_size=16, n_epochs=2, learning_rate=3e-3, variance_target=2e-3, **TINY)
    model = attach(Tap("MlpPolicy", "CartPole-v1", **{**kwargs, **DUAL_CASES[case]}), recorder)
    model.learn(64 * 2)
    assert len(model.drawn) == 2 * 4 * 2
    centre = model.variance_center
    variances = [variance_of(ratios(model, drawn["weights"], drawn["samples"]), centre) for drawn in model.drawn]
    assert max(variances) > 0.0
    expected = None
    for index, drawn in enumerate(model.drawn):
        delta = drawn["delta"]
        first_of_update = index == 0 or model.drawn[index - 1]["update"] != drawn["update"]
        if first_of_update:
            update = model.updates[drawn["update"]]
            expected_start = multiplier_after(model, update["before"], delta, delta)  # V = δ: no move, only the bounds
            assert drawn["multiplier"] == pytest.approx(expected_start, rel=1e-9)
        else:
            assert drawn["multiplier"] == pytest.approx(expected, rel=1e-6), index
        expected = multiplier_after(model, drawn["multiplier"], variances[index], delta)
        last_of_update = index + 1 == len(model.drawn) or model.drawn[index + 1]["update"] != drawn["update"]
        if last_of_update:
            assert model.updates[drawn["update"]]["after"] == pytest.approx(expected, rel=1e-6)
    # λ moved: the check above does not hold by staying put.
    assert len({round(drawn["multiplier"], 12) for drawn in model.drawn}) > (2 if "floor" in case else 4)
    if case == "floor":  # and the floor 0.5 / (2√δ) stopped it
        assert min(drawn["multiplier"] for drawn in model.drawn) == pytest.approx(0.5 / (2 * math.sqrt(2e-3)), rel=1e-12)
    # The logged range covers every λ of the last update, the one it entered with included.
    last = [drawn["multiplier"] for drawn in model.drawn if drawn["update"] == 1] + [model.lagrange_multiplier]
    assert model.logger.name_to_value["train/lagrange_multiplier_min"] == pytest.approx(min(last), rel=1e-9)
    assert model.logger.name_to_value["train/lagrange_multiplier_max"] == pytest.approx(max(last), rel=1e-9)
    if case == "floor_schedule":
        assert model.updates[0]["after"] < model.drawn[8]["multiplier"] == pytest.approx(0.5 / (2 * math.sqrt(1e-3)))
    if case in ("schedule", "floor_schedule"):
        # δ of update u is the schedule at the progress remaining after its rollout: 1 − (u + 1)·64 / 128.
        assert sorted({drawn["delta"] for drawn in model.drawn}) == pytest.approx([1e-3, 1e-3 + 2e-3])


def test_epoch_dual_step_takes_the_mean_of_the_epoch_minibatch_variances():
    model = Tap(
        "MlpPolicy",
        "CartPole-v1",
        n_steps=64,
        batch_size=16,
        n_epochs=3,
        learning_rate=3e-3,
        variance_target=2e-3,
        dual_step_clip=None,
        lagrange_multiplier_floor=None,
        dual_update_frequency="epoch",
        **TINY,
    )
    model.learn(64)
    epochs = [model.drawn[start : start + 4] for start in range(0, 12, 4)]
    assert len(model.drawn) == 12
    expected = model.updates[0]["before"]
    for epoch in epochs:
        # λ is held within an epoch ...
        assert epoch[0]["multiplier"] == pytest.approx(expected, rel=1e-6)
        assert all(drawn["multiplier"] == epoch[0]["multiplier"] for drawn in epoch)
        # ... and steps once after it, on the mean of its minibatches' variances before their steps.
        centre = model.variance_center
        mean = np.mean([variance_of(ratios(model, drawn["weights"], drawn["samples"]), centre) for drawn in epoch])
        expected = multiplier_after(model, expected, float(mean), 2e-3)
    assert model.lagrange_multiplier == pytest.approx(expected, rel=1e-6)
    assert len({drawn["multiplier"] for drawn in model.drawn}) == 3


# ------------------------------------------------------------------------------------------ target_kl


def test_target_kl_counts_updates_as_ppo_does():
    """A target so small that every update stops before its second step: one gradient step and one counted epoch
    per update, in R2VPO as in SB3's PPO on the same setup; without it, n_epochs each."""
    setup = dict(n_steps=32, batch_size=16, n_epochs=3, **TINY)
    for target_kl, per_update in ((1e-12, 1), (None, 3)):
        r2vpo = Tap("MlpPolicy", "CartPole-v1", target_kl=target_kl, **setup).learn(32 * 3)
        ppo = PPO("MlpPolicy", "CartPole-v1", target_kl=target_kl, **setup).learn(32 * 3)
        assert r2vpo._n_updates == ppo._n_updates == 3 * per_update
        assert len(r2vpo.gradients) == 3 * (1 if target_kl else 3 * 2)


def test_target_kl_stops_at_the_first_minibatch_past_it():
    setup = dict(n_steps=64, batch_size=16, n_epochs=3, learning_rate=3e-3, **TINY)
    free = Tap("MlpPolicy", "CartPole-v1", **setup).learn(64)
    # The KL of each minibatch to the policy at the start of the update, before its step, computed here.
    kls = []
    for drawn in free.drawn:
        ratio = ratios(free, drawn["weights"], drawn["samples"]).double()
        kls.append(float(th.mean((ratio - 1) - th.log(ratio))))
    # A threshold the first minibatch of epoch 2 or later that sets a new maximum crosses, and none before it.
    stop = next(index for index in range(4, len(kls)) if kls[index] > 1.2 * max(kls[:index]))
    threshold = (max(kls[:stop]) + kls[stop]) / 2
    stopped = Tap("MlpPolicy", "CartPole-v1", target_kl=threshold / 1.5, **setup).learn(64)
    assert len(stopped.gradients) == stop
    assert stopped._n_updates == stop // 4 + 1  # the epoch it stopped in counts, as in PPO
    assert stopped.logger.name_to_value["train/gradient_steps"] == stop


# ------------------------------------------------------------------------------------------ replay minibatches


class Collection(BaseCallback):
    """What each rollout's collection saw, straight from collect_rollouts, by rollout index."""

    def __init__(self):
        super().__init__()
        self.rollouts: dict[int, dict[str, list]] = {}

    def _on_rollout_start(self) -> None:
        self.current = {key: [] for key in ("obs", "actions", "log_probs", "rewards", "dones", "new_obs")}
        self.rollouts[self.model._rollout_index] = self.current

    def _on_step(self) -> bool:
        for key, local in (("obs", "obs_tensor"), ("actions", "actions"), ("log_probs", "log_probs")):
            value = self.locals[local]
            self.current[key].append(np.array(value.cpu().numpy() if isinstance(value, th.Tensor) else value, copy=True))
        for key in ("rewards", "dones", "new_obs"):
            self.current[key].append(np.array(self.locals[key], copy=True))
        return True


def reference_gae(rollout: dict, critic, gamma: float, gae_lambda: float) -> dict[bytes, tuple]:
    """GAE of one recorded rollout under ``critic``, by observation: ``{obs bytes: (advantage, value, log μ, action)}``."""
    obs = np.stack(rollout["obs"])  # (n_steps, n_envs, obs_dim)
    n_steps, n_envs = obs.shape[:2]
    with th.no_grad():
        values = critic.predict_values(th.as_tensor(obs.reshape(n_steps * n_envs, -1))).numpy().reshape(n_steps, n_envs)
        next_values = critic.predict_values(th.as_tensor(np.stack(rollout["new_obs"]).reshape(n_steps * n_envs, -1)))
    next_values = next_values.numpy().reshape(n_steps, n_envs)
    rewards, dones = np.stack(rollout["rewards"]), np.stack(rollout["dones"]).astype(np.float64)
    result = {}
    for env in range(n_envs):
        running = 0.0
        for t in reversed(range(n_steps)):
            alive = 1.0 - dones[t, env]
            delta = rewards[t, env] + gamma * alive * next_values[t, env] - values[t, env]
            running = delta + gamma * gae_lambda * alive * running
            result[obs[t, env].tobytes()] = (
                running,
                values[t, env],
                rollout["log_probs"][t][env],
                rollout["actions"][t][env],
            )
    return result


def test_replay_minibatches_mix_ages_and_carry_independently_recomputed_rows():
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = Tap("MlpPolicy", env, n_steps=16, batch_size=16, n_epochs=2, replay_rollouts=2, learning_rate=3e-3, **TINY)
    collection = Collection()
    model.learn(16 * 2 * 4, callback=collection)
    last = [drawn for drawn in model.drawn if drawn["update"] == 3]
    assert len(last) == 2 * (3 * 32 // 16)

    # Minibatches mix fresh and stale samples (drawn across the whole batch, not rollout by rollout).
    ages = [drawn["ages"] for drawn in last]
    assert all(set(batch.tolist()) <= {0, 1, 2} for batch in ages)
    assert sorted(th.cat(ages[:6]).tolist()) == [0] * 32 + [1] * 32 + [2] * 32  # each epoch holds every sample once
    mixed = [len(set(batch.tolist())) > 1 for batch in ages]
    assert sum(mixed) >= len(mixed) - 1, [batch.tolist() for batch in ages]

    # Each row, fresh or stale, against its rollout as collected: its behaviour log-probability and action at
    # collection, and its advantage, return and old value under the critic at the start of this update.
    critic = policy_with(model, last[0]["weights"])
    references = {age: reference_gae(collection.rollouts[3 - age], critic, model.gamma, model.gae_lambda) for age in (0, 1, 2)}
    checked = {0: 0, 1: 0, 2: 0}
    for drawn in last[:6]:
        samples = drawn["samples"]
        for row, age in enumerate(drawn["ages"].tolist()):
            key = samples.observations[row].numpy().tobytes()
            advantage, value, log_mu, action = references[age][key]  # a KeyError: the row is not from that rollout
            assert float(samples.actions[row].flatten()[0]) == pytest.approx(float(np.asarray(action).flatten()[0]))
            assert float(samples.old_log_prob[row]) == pytest.approx(float(log_mu), abs=1e-5)
            assert float(samples.advantages[row]) == pytest.approx(advantage, rel=1e-4, abs=1e-4)
            assert float(samples.returns[row]) == pytest.approx(advantage + value, rel=1e-4, abs=1e-4)
            assert float(samples.old_values[row]) == pytest.approx(value, rel=1e-4, abs=1e-5)
            checked[age] += 1
    assert checked == {0: 32, 1: 32, 2: 32}
    # Not vacuous: the stale rows' behaviour policy is not the current one.
    stale = last[0]["ages"] > 0
    assert (ratios(model, last[0]["weights"], last[0]["samples"])[stale] - 1).abs().max() > 1e-3

    # The logged fresh and stale variances are the means over the update's steps of each group's variance before it.
    values = {"fresh": [], "stale": []}
    for drawn in last:
        ratio = ratios(model, drawn["weights"], drawn["samples"])
        for name, mask in (("fresh", drawn["ages"] == 0), ("stale", drawn["ages"] > 0)):
            values[name].append(float(ratio[mask].double().var(unbiased=False)) if int(mask.sum()) >= 2 else math.nan)
    for name, series in values.items():
        assert model.logger.name_to_value[f"train/ratio_variance_{name}"] == pytest.approx(np.nanmean(series), rel=1e-4)


def test_the_rollout_variance_refuses_a_buffer_not_yet_flattened():
    """
    The final policy's full-rollout variance reads the buffer in SB3's flattened layout: asked before ``get()``
    flattened it (a programming error), it says so instead of reading rows in the wrong order.
    """
    model = R2VPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16, seed=0)
    assert not model.rollout_buffer.generator_ready
    with pytest.raises(RuntimeError, match=r"must have been flattened by get\(\) before its variance is measured"):
        next(model._rollout_chunks(None))
    model.learn(16)  # one update: the buffer is flattened by then, and the chunks cover it in order
    assert model.rollout_buffer.generator_ready
    chunks = list(model._rollout_chunks(None))
    assert sum(len(chunk.actions) for chunk in chunks) == 16
