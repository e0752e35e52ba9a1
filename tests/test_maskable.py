"""
MaskableR2VPO: R2VPO's loss on sb3-contrib's MaskablePPO. Invalid actions get zero probability in every term the
loss sees (checked on hand-made logits), the trained policy never picks a masked action and reaches what
MaskablePPO reaches in the same budget, contrib's tools work with it, replay keeps the masks, and save/load is exact.
"""

import inspect

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from sb3_contrib.common.envs import InvalidActionEnvDiscrete, InvalidActionEnvMultiBinary, InvalidActionEnvMultiDiscrete
from sb3_contrib.common.maskable.buffers import MaskableRolloutBufferSamples
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from sb3_contrib.common.maskable.evaluation import evaluate_policy
from sb3_contrib.common.maskable.utils import get_action_masks
from sb3_contrib.common.wrappers import ActionMasker
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import IdentityEnv, IdentityEnvBox

from sb3_r2vpo import R2VPO, MaskableR2VPO, RecurrentR2VPO
from sb3_r2vpo.presets import load_hyperparams
from sb3_r2vpo.r2vpo.mixin import R2VPO_ARGUMENTS, R2VPOMixin
from sb3_r2vpo.r2vpo.r2vpo import R2VPO_DEFAULTS
from sb3_r2vpo.r2vpo.replay import build_replay_batch
from sb3_r2vpo.zoo import MASKED_ENVS as ZOO_MASKED_ENVS
from sb3_r2vpo.zoo import packaged_hyperparams
from tests.conftest import attach
from tests.extras import require

th.set_num_threads(1)

SMALL = dict(n_steps=64, batch_size=32, n_epochs=2, seed=0)
MASKED_TASK = "sb3_r2vpo/InvalidActionEnvDiscrete-v0"

MASKED_ENVS = {
    "discrete": lambda: InvalidActionEnvDiscrete(dim=6, n_invalid_actions=3),
    "multidiscrete": lambda: InvalidActionEnvMultiDiscrete(dims=[3, 4], n_invalid_actions=3),
    "multibinary": lambda: InvalidActionEnvMultiBinary(dims=3, n_invalid_actions=2),
}


def _valid(actions: np.ndarray, masks: np.ndarray, action_space: spaces.Space) -> np.ndarray:
    """Per sample: whether every component of its action is allowed by its mask (contrib's flat mask layout)."""
    actions = np.asarray(actions).reshape(len(masks), -1).astype(int)
    if isinstance(action_space, spaces.Discrete):
        sizes = [int(action_space.n)]
    elif isinstance(action_space, spaces.MultiDiscrete):
        sizes = [int(n) for n in action_space.nvec]
    else:
        sizes = [2] * int(action_space.n)
    offsets = np.cumsum([0, *sizes[:-1]])
    return np.all(np.take_along_axis(masks, actions + offsets, axis=1) > 0.5, axis=1)


def test_one_implementation_of_the_method_for_all_three_algorithms():
    """The loss, the dual step and λ's place in the saved state are R2VPOMixin's, not written again per algorithm."""
    for name in ("train", "_step_dual", "_policy_loss", "_setup_model", "get_parameters", "set_parameters", "load"):
        implementations = {getattr(algorithm, name).__qualname__ for algorithm in (R2VPO, MaskableR2VPO, RecurrentR2VPO)}
        assert implementations == {f"R2VPOMixin.{name}"}, (name, implementations)
    assert issubclass(MaskableR2VPO, (R2VPOMixin, MaskablePPO))


def test_defaults_are_r2vpos_and_maskable_ppos():
    """The R²VPO arguments default to R2VPO's values (read from its constructor), the others to MaskablePPO's."""
    parameters = inspect.signature(MaskableR2VPO.__init__).parameters
    for name in R2VPO_ARGUMENTS:
        assert parameters[name].default == R2VPO_DEFAULTS[name], name
    ppo = inspect.signature(MaskablePPO.__init__).parameters
    for name, parameter in parameters.items():
        if name in ppo and name not in ("self", "policy", "env"):
            assert parameter.default == ppo[name].default, name
    assert "clip_range" not in parameters and "use_sde" not in parameters


def test_refuses_clip_range_and_box_actions():
    env = InvalidActionEnvDiscrete(dim=4, n_invalid_actions=1)
    with pytest.raises(TypeError, match=r"MaskableR2VPO\(\) got the argument `clip_range`.*variance_target"):
        MaskableR2VPO("MlpPolicy", env, clip_range=0.2)
    with pytest.raises(ValueError, match=r"MaskableR2VPO supports the action spaces Discrete, MultiDiscrete, MultiBinary"):
        MaskableR2VPO("MlpPolicy", IdentityEnvBox())
    with pytest.raises(ValueError, match=r"`variance_target` must be a finite number > 0"):
        MaskableR2VPO("MlpPolicy", env, variance_target=0.0)


def _hand_made_model(space_name: str) -> tuple[MaskableR2VPO, th.Tensor, list[int]]:
    """A model whose policy's logits are the same hand-made vector for every observation."""
    model = MaskableR2VPO("MlpPolicy", MASKED_ENVS[space_name](), n_steps=4, batch_size=4, n_epochs=1, seed=0)
    action_net = model.policy.action_net
    logits = th.linspace(-1.0, 2.0, action_net.out_features)
    with th.no_grad():
        action_net.weight.zero_()
        action_net.bias.copy_(logits)
    space = model.action_space
    sizes = (
        [int(space.n)]
        if isinstance(space, spaces.Discrete)
        else [int(n) for n in space.nvec]
        if isinstance(space, spaces.MultiDiscrete)
        else [2] * int(space.n)
    )
    return model, logits, sizes


def _log_prob_by_hand(logits: th.Tensor, sizes: list[int], action: list[int], mask: th.Tensor) -> float:
    """Σ over components of log softmax over the allowed choices of that component (−inf-free: the action is allowed)."""
    total, start = 0.0, 0
    for size, choice in zip(sizes, action, strict=True):
        part, allowed = logits[start : start + size].double(), mask[start : start + size] > 0.5
        total += float(part[choice] - th.logsumexp(part[allowed], dim=0))
        start += size
    return total


class _RatioTap(MaskableR2VPO):
    """Records the ratios the policy loss is given."""

    def _policy_loss(self, ratio, advantages, variance_target, start_ratio=None):
        self.seen_ratios.append(ratio.detach().clone())
        return super()._policy_loss(ratio, advantages, variance_target, start_ratio)


@pytest.mark.parametrize("space_name", list(MASKED_ENVS))
def test_masks_change_the_log_probs_the_loss_sees(space_name, recorder):
    """
    On hand-made logits: the log-probability the loss sees is the log-softmax over the allowed actions only (an
    invalid action has zero probability, the valid ones share all of it), so the ratio to a behaviour policy that
    sampled under the same masks is exactly 1 at the start of an update (and its variance 0); without the masks the
    same samples get lower log-probabilities, which would have made every ratio < 1.
    """
    model, logits, sizes = _hand_made_model(space_name)
    n = 4
    rng = np.random.default_rng(0)
    actions = np.stack([rng.integers(size, size=n) for size in sizes], axis=1)
    masks = th.ones(n, sum(sizes))
    offsets = np.cumsum([0, *sizes[:-1]])
    for row in range(n):
        for size, offset, choice in zip(sizes, offsets, actions[row], strict=True):
            masks[row, offset + (choice + 1) % size] = 0.0  # one invalid choice per component, never the one taken
    everything = th.ones(sum(sizes))
    by_hand = th.tensor(
        [_log_prob_by_hand(logits, sizes, list(a), m) for a, m in zip(actions, masks, strict=True)], dtype=th.float64
    )
    unmasked = th.tensor([_log_prob_by_hand(logits, sizes, list(a), everything) for a in actions], dtype=th.float64)
    assert th.all(by_hand > unmasked + 1e-3)

    shape = model.observation_space.shape
    stored_actions = th.as_tensor(actions, dtype=th.float32)
    samples = MaskableRolloutBufferSamples(
        observations=th.zeros((n, *shape)) if shape else th.zeros(n, 1),
        actions=stored_actions,
        old_values=th.zeros(n),
        old_log_prob=by_hand.float(),
        advantages=th.tensor([1.0, -1.0, 0.5, -0.5]),
        returns=th.zeros(n),
        action_masks=masks,
    )
    with th.no_grad():
        masked_batch = model._minibatch(samples, None, None)
        unmasked_batch = model._minibatch(samples._replace(action_masks=th.ones_like(masks)), None, None)
    th.testing.assert_close(masked_batch.log_prob.double(), by_hand, rtol=0, atol=1e-5)
    th.testing.assert_close(unmasked_batch.log_prob.double(), unmasked, rtol=0, atol=1e-5)

    # One update on exactly this minibatch: the loss sees ratio 1 everywhere, and λ steps on a variance of 0 (without
    # the default floor, which holds λ at λ* on rollouts of 4 samples).
    tap = _RatioTap(
        "MlpPolicy", MASKED_ENVS[space_name](), n_steps=4, batch_size=4, n_epochs=1, seed=0, lagrange_multiplier_floor=None
    )
    tap.policy.load_state_dict(model.policy.state_dict())
    tap.seen_ratios = []
    tap._minibatches = lambda replay_batch: iter([(samples, None, None)])
    tap._rollout_ratio_variance = lambda replay_batch: 0.0
    tap.rollout_buffer.values[:] = 0.0
    tap._current_progress_remaining = 1.0
    attach(tap, recorder)
    before = tap.lagrange_multiplier
    tap.train()
    th.testing.assert_close(tap.seen_ratios[0], th.ones(n), rtol=0, atol=1e-5)
    assert tap.lagrange_multiplier == pytest.approx(before * np.exp(-tap.dual_step_size))  # V = 0: violation −1


def test_learns_the_invalid_action_task_as_maskable_ppo_does_and_never_picks_a_masked_action(recorder):
    """
    sb3-contrib's performance setting for MaskablePPO (70 actions, 55 masked at every step, gamma 0.4), two rollouts
    of 2048 steps each: MaskableR2VPO with its packaged zoo entry reaches MaskablePPO's evaluation return; every
    action it took or predicts is valid.
    """
    entry = load_hyperparams(packaged_hyperparams("r2vpo_mask"))[MASKED_TASK]
    brake = {key: entry[key] for key in R2VPO_ARGUMENTS if key in entry}
    assert {"variance_target", "lagrange_multiplier_floor", "dual_update_frequency"} <= set(brake)
    budget = 4096
    returns = {}
    for algorithm, kwargs in ((MaskablePPO, {}), (MaskableR2VPO, brake)):
        env = InvalidActionEnvDiscrete(dim=70, n_invalid_actions=55)
        model = algorithm("MlpPolicy", env, gamma=entry["gamma"], seed=32, **kwargs)
        if algorithm is MaskableR2VPO:
            attach(model, recorder)
        model.learn(budget)
        returns[algorithm.__name__], _ = evaluate_policy(model, env, n_eval_episodes=20, warn=False)
    assert returns["MaskableR2VPO"] >= max(90.0, returns["MaskablePPO"] - 2.0), returns
    assert recorder.series("train/lagrange_multiplier") and recorder.series("train/ratio_variance_final")

    buffer = model.rollout_buffer  # the last rollout, as collected (flattened by get(): one row per sample)
    assert _valid(buffer.actions, buffer.action_masks.reshape(-1, buffer.mask_dims), model.action_space).all()
    obs, _ = env.reset(seed=1)
    for _ in range(200):
        masks = get_action_masks(env)
        action, _ = model.predict(obs, action_masks=masks, deterministic=False)
        assert masks[int(action)], "a masked action was picked"
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()


@pytest.mark.parametrize("space_name", list(MASKED_ENVS))
def test_contrib_tools_every_space_save_load_continue(space_name, tmp_path):
    """ActionMasker, MaskableEvalCallback, contrib's evaluate_policy; save → load: same actions and λ; continue."""
    masked_env = MASKED_ENVS[space_name]
    env = make_vec_env(lambda: ActionMasker(masked_env(), lambda env: env.unwrapped.action_masks()), n_envs=2, seed=0)
    eval_env = ActionMasker(masked_env(), lambda env: env.unwrapped.action_masks())
    callback = MaskableEvalCallback(eval_env, eval_freq=64, n_eval_episodes=2, warn=False)
    model = MaskableR2VPO("MlpPolicy", env, **SMALL)
    model.learn(256, callback=callback)
    assert callback.last_mean_reward > -np.inf and model.num_timesteps >= 256
    buffer = model.rollout_buffer
    assert _valid(buffer.actions, buffer.action_masks.reshape(-1, buffer.mask_dims), model.action_space).all()
    evaluate_policy(model, eval_env, n_eval_episodes=2, warn=False)
    # Before an update the policy is μ: read back in chunks under their masks, the ratios are 1 (variance 0).
    model.collect_rollouts(model.env, _NoCallback(), model.rollout_buffer, model.n_steps)
    next(model.rollout_buffer.get(model.batch_size))
    assert model._rollout_ratio_variance(None) < 1e-10

    observations, masks = [], []
    obs = env.reset()
    for _ in range(5):
        observations.append(obs)
        masks.append(get_action_masks(env))
        obs, _, _, _ = env.step(model.predict(obs, action_masks=masks[-1], deterministic=True)[0])
    actions = [model.predict(o, action_masks=m, deterministic=True)[0] for o, m in zip(observations, masks, strict=True)]
    model.save(tmp_path / "model")
    loaded = MaskableR2VPO.load(tmp_path / "model", env=env)
    assert loaded.lagrange_multiplier == model.lagrange_multiplier and type(loaded.lagrange_multiplier) is float
    assert not hasattr(loaded, "clip_range")
    for o, m, a in zip(observations, masks, actions, strict=True):
        np.testing.assert_array_equal(loaded.predict(o, action_masks=m, deterministic=True)[0], a)
    loaded.learn(128, reset_num_timesteps=False)
    assert loaded.num_timesteps > model.num_timesteps


def test_replay_keeps_each_rollouts_masks(tmp_path):
    """
    replay_rollouts > 0: each stored rollout keeps its masks; the stale samples' log-probabilities are taken under
    them (higher than without), and the fresh samples' under the buffer's (equal to μ's before the update).
    """
    env = make_vec_env(lambda: InvalidActionEnvDiscrete(dim=8, n_invalid_actions=5), n_envs=2, seed=0)
    model = MaskableR2VPO("MlpPolicy", env, replay_rollouts=2, save_replay=True, **SMALL)
    model.learn(3 * 64 * 2)
    assert len(model.replay) == 2
    for rollout in model.replay.rollouts:
        assert rollout.action_masks.dtype == th.bool and rollout.action_masks.shape == (64, 2, 8)
        assert _valid(
            rollout.actions.reshape(-1, 1).numpy(), rollout.action_masks.reshape(-1, 8).numpy(), model.action_space
        ).all()

    model._last_obs = env.reset()
    model.collect_rollouts(env, _NoCallback(), model.rollout_buffer, model.n_steps)
    batch, _ = build_replay_batch(
        model.policy, model.rollout_buffer, model.replay, model._rollout_index, 0.99, 0.95, "gae", model.action_space
    )
    fresh = batch.ages == 0
    th.testing.assert_close(batch.start_log_prob[fresh], batch.old_log_prob[fresh], rtol=0, atol=1e-5)
    with th.no_grad():
        _, unmasked, _ = model.policy.evaluate_actions(batch.observations[~fresh], batch.actions[~fresh].long().flatten())
    assert th.all(batch.start_log_prob[~fresh] > unmasked + 1e-4)
    assert batch.samples(th.arange(3)).action_masks.shape == (3, 8)

    model.save(tmp_path / "model")
    loaded = MaskableR2VPO.load(tmp_path / "model", env=env)
    for stored, original in zip(loaded.replay.rollouts, model.replay.rollouts, strict=True):
        assert th.equal(stored.action_masks, original.action_masks)
    loaded.learn(128, reset_num_timesteps=False)


class _NoCallback:
    """What collect_rollouts needs of a callback, doing nothing."""

    def on_rollout_start(self):
        pass

    def update_locals(self, locals_):
        pass

    def on_step(self):
        return True

    def on_rollout_end(self):
        pass


def test_without_masks_env_needs_use_masking_false():
    with pytest.warns(UserWarning, match=r"`env`: .* has no action masks .* need use_masking=False") as caught:
        model = MaskableR2VPO("MlpPolicy", IdentityEnv(3), **SMALL)
    assert [w.filename for w in caught if "action masks" in str(w.message)] == [__file__]  # points at the caller
    with pytest.raises(ValueError, match="does not support action masking"):
        model.learn(64)
    model.learn(64, use_masking=False)
    assert model.num_timesteps == 64


def test_zoo_trains_r2vpo_mask_from_its_packaged_entry(tmp_path):
    """`r2vpo-zoo train --algo r2vpo_mask` on the masked task the launcher registers, with the packaged entry."""
    require("rl_zoo3", "zoo")
    from sb3_r2vpo.zoo import check_entry, main

    assert ZOO_MASKED_ENVS[MASKED_TASK][1] == {"dim": 70, "n_invalid_actions": 55}  # the task the entry was measured on
    entry = check_entry(packaged_hyperparams("r2vpo_mask"), MASKED_TASK, "r2vpo_mask")
    main(
        [
            "train",
            "--algo",
            "r2vpo_mask",
            "--env",
            MASKED_TASK,
            "-n",
            "64",
            "-f",
            str(tmp_path),
            "--seed",
            "0",
            "--eval-freq",
            "-1",
        ]
    )
    (saved,) = (tmp_path / "r2vpo_mask").glob("*_1/*.zip")
    model = MaskableR2VPO.load(saved)
    assert model.lagrange_multiplier_floor == entry["lagrange_multiplier_floor"] and model.gamma == entry["gamma"]
    assert model.num_timesteps == model.n_steps  # one whole rollout
    with pytest.raises(SystemExit, match=r"MaskableR2VPO takes no argument 'clip_range'"):
        config = tmp_path / "mine.yml"
        config.write_text(f"{MASKED_TASK}:\n  clip_range: 0.2\n")
        main(["train", "--algo", "r2vpo_mask", "--env", MASKED_TASK, "-conf", str(config), "-f", str(tmp_path)])
