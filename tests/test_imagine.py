"""Imagined rollouts (diwa_jax/finetune/imagine.py): the scanned rollout against an unrolled Python loop with
numpy bookkeeping, no host transfers inside the compiled rollout, and termination / truncation / auto-reset
on classifiers that always or never fire."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diwa_jax import specs
from diwa_jax.finetune.imagine import (FrozenModels, RolloutSpec, SceneReward, chunk_reward, imagine_rollout,
                                       init_env_state, rollout_metrics)
from diwa_jax.policy.denoiser import init_denoiser
from diwa_jax.policy.sampling import chain_logprob, sample_chain
from diwa_jax.policy.schedule import make_schedule
from diwa_jax.reward.classifier import classifier_logits, init_classifier
from diwa_jax.types import Latent
from diwa_jax.world_model import model as wm
from experiments.calvin import get_config

POOL = 5


def tiny_config(**ppo):
    config = get_config("tiny")  # latent 32 + 4x4 = 48, K = 6, K' = 3, N = 4
    config.ppo.n_steps = 3
    config.ppo.episode_len = 8  # 2 chunks: truncations inside and across rollouts
    config.ppo.update(ppo)
    return config


@functools.lru_cache(maxsize=None)
def tiny_models(wm_variant: str = "vision"):
    """Frozen models and a perturbed fine-tuned actor from the real init functions, and a start pool.
    Imagination uses only the RSSM: ``wm_variant="state"`` gives the same sizes without the conv towers'
    initialisation to compile."""
    config = tiny_config()
    config.wm.variant = wm_variant
    spec = specs.world_model_spec(config)

    @jax.jit
    def init(key):
        keys = jax.random.split(key, 4)
        actor_pre = init_denoiser(keys[1], specs.denoiser_spec(config), spec.feature_dim)
        leaves, tree = jax.tree.flatten(actor_pre)
        noise = jax.random.split(keys[3], len(leaves))
        actor_ft = jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, noise)])
        classifier = init_classifier(keys[2], specs.reward_spec(config), spec.feature_dim)
        # centre the class margin on latent-like features (tanh deter, one-hot stoch) so about half fire
        deter_key, stoch_key = jax.random.split(keys[2])
        probe = Latent(deter=jnp.tanh(jax.random.normal(deter_key, (256, spec.deter))),
                       stoch=jax.nn.one_hot(jax.random.randint(stoch_key, (256, spec.stoch), 0, spec.classes),
                                            spec.classes))
        logits = classifier_logits(classifier, probe.feature())
        classifier["head_2"]["b"] = classifier["head_2"]["b"].at[1].add(-jnp.median(logits[:, 1] - logits[:, 0]))
        models = FrozenModels(wm=wm.init_params(keys[0], spec), actor_pre=actor_pre, classifier=classifier,
                              schedule=make_schedule(config.policy.denoising_steps))
        return models, actor_ft

    models, actor_ft = init(jax.random.key(0))
    rng = np.random.default_rng(0)
    pool = Latent(deter=jnp.asarray(rng.normal(size=(POOL, spec.deter)), jnp.float32),
                  stoch=jnp.asarray(np.eye(spec.classes, dtype=np.float32)[rng.integers(0, spec.classes,
                                                                                         (POOL, spec.stoch))]))
    return models, actor_ft, pool


def with_constant_classifier(models, fires: bool):
    """A classifier whose logits ignore the latent: class 1 always (``fires``) or never wins."""
    head = models.classifier["head_2"]
    bias = jnp.array([0.0, 5.0] if fires else [5.0, 0.0])
    classifier = {**models.classifier, "head_2": {"w": jnp.zeros_like(head["w"]), "b": bias}}
    return models.replace(classifier=classifier)


# ---- the unrolled reference -------------------------------------------------------------------------------

SAMPLER_STATIC = ("chunk_shape", "ft_steps", "min_std", "randn_clip", "denoised_clip")
sample_jit = jax.jit(sample_chain, static_argnames=SAMPLER_STATIC)
logprob_jit = jax.jit(chain_logprob, static_argnames=("ft_steps", "min_logprob_std", "denoised_clip"))
img_step_jit = jax.jit(wm.img_step, static_argnums=1)
logits_jit = jax.jit(classifier_logits)


decode_state_jit = jax.jit(wm.decode_state, static_argnums=1)


def reference_rollout(models, actor_ft, env, pool, key, spec: RolloutSpec):
    """Python loops over chunk steps and world-model steps, bookkeeping in numpy, one env at a time."""
    scene_reward = models.scene_reward
    start_scene = None if env.start_scene is None else np.array(env.start_scene)

    def scene_of(feature):  # the decoded-state reward's scene, in numpy
        state = np.asarray(decode_state_jit(models.wm, spec.wm, jnp.asarray(feature)), np.float64)
        return (state * np.asarray(scene_reward.state_scale) + np.asarray(scene_reward.state_min))[:, spec.wm.proprio_dim:]

    latent = jax.tree.map(np.array, env.latent)
    wm_steps, first, ep_return = np.array(env.wm_steps), np.array(env.first), np.array(env.episode_return)
    pool_np = jax.tree.map(np.asarray, pool)
    out = {name: [] for name in ("features", "chains", "logprobs", "rewards", "terminated", "truncated", "firsts",
                                 "episode_returns")}
    for step_key in jax.random.split(key, spec.n_steps):
        policy_key, wm_key, reset_key = jax.random.split(step_key, 3)
        feature = np.concatenate([latent.deter, latent.stoch.reshape(len(latent.deter), -1)], -1)
        chunk, chain = sample_jit(models.actor_pre, actor_ft, models.schedule, feature, policy_key,
                                  chunk_shape=(spec.horizon, spec.action_dim), ft_steps=spec.ft_steps,
                                  min_std=spec.min_sampling_std, randn_clip=spec.randn_clip,
                                  denoised_clip=spec.denoised_clip)
        logprob = logprob_jit(actor_ft, models.schedule, feature, chain, ft_steps=spec.ft_steps,
                              min_logprob_std=spec.min_logprob_std, denoised_clip=spec.denoised_clip)
        actions = np.array(chunk)
        if spec.binarize_gripper:
            actions[..., 6] = np.where(actions[..., 6] >= 0, 1.0, -1.0)
        state = Latent(deter=jnp.asarray(latent.deter), stoch=jnp.asarray(latent.stoch))
        if scene_reward is not None:
            start_scene[first] = scene_of(feature)[first]
        step_rewards = []  # the reward after each world-model step of the chunk
        for i, wm_step_key in enumerate(jax.random.split(wm_key, spec.act_steps)):
            state = img_step_jit(models.wm, spec.wm, state, jnp.asarray(actions[:, i]), wm_step_key)
            if scene_reward is not None:
                now = scene_of(state.feature())
                # open_drawer: the drawer (scene_obs 1) out by more than 0.12 m
                step_rewards.append((now[:, 1] - start_scene[:, 1] > 0.12).astype(np.float32))
                continue
            logits = np.asarray(logits_jit(models.classifier, state.feature()), np.float64)
            if spec.reward_mode == "binary":
                step_rewards.append((logits[:, 1] > logits[:, 0]).astype(np.float32))
            else:
                step_rewards.append((1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))).astype(np.float32))
        reward = np.min(step_rewards[spec.act_steps - spec.success_hold:], axis=0)  # held over the last steps
        terminated = reward > (0 if spec.reward_mode == "binary" else 0.5)
        out["features"].append(feature)
        out["chains"].append(np.asarray(chain))
        out["logprobs"].append(np.asarray(logprob))
        out["rewards"].append(reward)
        out["terminated"].append(terminated)
        out["firsts"].append(first.copy())
        wm_steps = wm_steps + spec.act_steps
        truncated = wm_steps >= spec.episode_len
        out["truncated"].append(truncated)
        ep_return = ep_return + reward
        out["episode_returns"].append(np.where(terminated | truncated, ep_return, 0.0))
        latent = jax.tree.map(np.array, state)
        draws = np.asarray(jax.random.randint(reset_key, (len(reward),), 0, POOL))
        for n in range(len(reward)):
            first[n] = terminated[n] or truncated[n]
            if first[n]:
                latent.deter[n], latent.stoch[n] = pool_np.deter[draws[n]], pool_np.stoch[draws[n]]
                wm_steps[n], ep_return[n] = 0, 0.0
    final = np.concatenate([latent.deter, latent.stoch.reshape(len(latent.deter), -1)], -1)
    return ({name: np.stack(values) for name, values in out.items()}, final,
            (latent, wm_steps, first, ep_return, start_scene))


def decoded_state_models(scale: float):
    """The state-variant models with the decoded-state reward of open_drawer (state = head * scale)."""
    models, actor_ft, pool = tiny_models("state")
    dim = specs.world_model_spec(tiny_config()).state_dim
    scene_reward = SceneReward(state_min=jnp.zeros(dim), state_scale=jnp.full(dim, scale), task="open_drawer")
    return models.replace(scene_reward=scene_reward), actor_ft, pool


@pytest.mark.parametrize("options", [dict(), dict(reward_mode="probability", binarize_gripper=True),
                                     dict(success_hold=3), dict(reward_mode="probability", success_hold=2),
                                     dict(reward_source="decoded_state"),
                                     dict(reward_source="decoded_state", success_hold=2)],
                         ids=["binary", "probability-binarized", "binary-hold3", "probability-hold2", "decoded-state",
                              "decoded-state-hold2"])
def test_scan_equals_unrolled_reference(options):
    config = tiny_config(**options)
    if config.ppo.reward_source == "decoded_state":
        config.wm.variant = "state"
        models, actor_ft, pool = decoded_state_models(scale=3.0)
    else:
        models, actor_ft, pool = tiny_models()
    spec = specs.rollout_spec(config)
    env = init_env_state(pool, 4, jax.random.key(1), spec.start_scene_dim)
    # two consecutive rollouts: the second starts mid-episode (carried counters, returns, firsts)
    for key in jax.random.split(jax.random.key(2), 2):
        rollout, new_env = imagine_rollout(models, actor_ft, env, pool, key, spec=spec)
        expected, final, (latent, wm_steps, first, ep_return, start_scene) = reference_rollout(
            models, actor_ft, env, pool, key, spec)
        for name, value in expected.items():
            # a log-density amplifies float32 rounding of the mean by |x - mu| / std^2 (up to 3 / 0.1 here)
            tol = 1e-4 if name == "logprobs" else 1e-5
            np.testing.assert_allclose(np.asarray(getattr(rollout, name)), value, rtol=tol, atol=tol, err_msg=name)
        np.testing.assert_allclose(rollout.final_features, final, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(new_env.latent.deter, latent.deter, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(new_env.latent.stoch, latent.stoch)
        np.testing.assert_array_equal(new_env.wm_steps, wm_steps)
        np.testing.assert_array_equal(new_env.first, first)
        np.testing.assert_allclose(new_env.episode_return, ep_return, rtol=1e-6)
        if start_scene is not None:  # the start scenes of the episodes still running
            running = ~first
            np.testing.assert_allclose(np.asarray(new_env.start_scene)[running], start_scene[running], rtol=1e-5,
                                       atol=1e-5)
        env = new_env
    assert rollout.chains.shape == (3, 4, 3 + 1, 4, 7) and rollout.logprobs.shape == (3, 4, 3, 4, 7)
    # the case is not degenerate: successes, failures, truncations and resets all happen
    assert 0 < np.sum(expected["terminated"]) < expected["terminated"].size
    assert np.any(expected["truncated"]) and np.any(expected["firsts"][1:])


def test_held_success_needs_the_classifier_on_each_of_the_chunks_last_steps():
    models, _, _ = tiny_models()
    spec = specs.world_model_spec(tiny_config())
    rng = np.random.default_rng(3)  # 4 world-model steps x 64 envs of latent-like features
    features = np.concatenate([np.tanh(rng.normal(size=(4, 64, spec.deter))),
                               np.eye(spec.classes)[rng.integers(0, spec.classes, (4, 64, spec.stoch))]
                               .reshape(4, 64, -1)], -1).astype(np.float32)
    logits = np.asarray(classifier_logits(models.classifier, jnp.asarray(features)))
    fires = logits[..., 1] > logits[..., 0]  # (4, 64)
    outcomes = []
    for hold in (1, 2, 4):
        reward, terminated = chunk_reward(models, spec, jnp.asarray(features), "binary", hold)
        np.testing.assert_array_equal(np.asarray(terminated), fires[4 - hold:].all(0))
        np.testing.assert_array_equal(np.asarray(reward), fires[4 - hold:].all(0).astype(np.float32))
        outcomes.append(np.asarray(terminated))
    assert outcomes[0].sum() > outcomes[1].sum() > outcomes[2].sum()  # each extra step rejects some firings
    probability, _ = chunk_reward(models, spec, jnp.asarray(features), "probability", 2)
    np.testing.assert_allclose(np.asarray(probability), jax.nn.softmax(logits, -1)[..., 1][2:].min(0), rtol=1e-6)


def test_no_host_transfer_inside_the_compiled_rollout():
    models, actor_ft, pool = tiny_models()
    spec = specs.rollout_spec(tiny_config())
    env = init_env_state(pool, 4, jax.random.key(1))
    key = jax.random.key(3)
    metrics_fn = jax.jit(rollout_metrics)
    jax.block_until_ready(metrics_fn(imagine_rollout(models, actor_ft, env, pool, key, spec=spec)[0]))  # compile
    with jax.transfer_guard("disallow"):
        rollout, env = imagine_rollout(models, actor_ft, env, pool, key, spec=spec)
        metrics = metrics_fn(rollout)
        jax.block_until_ready((rollout, env, metrics))
        with pytest.raises(Exception, match="[Dd]isallowed"):  # the guard is active: a host array is refused
            jnp.asarray(np.ones(3)) + 1


def _in_pool(features, pool):
    """Per row of ``features (..., F)``: is it exactly one of the pool's features?"""
    pool_features = np.asarray(pool.feature())
    return (np.asarray(features)[..., None, :] == pool_features).all(-1).any(-1)


def test_always_firing_classifier_terminates_and_resets_every_chunk():
    models, actor_ft, pool = tiny_models()
    spec = specs.rollout_spec(tiny_config())
    env = init_env_state(pool, 4, jax.random.key(1))
    rollout, env = imagine_rollout(with_constant_classifier(models, True), actor_ft, env, pool, jax.random.key(4),
                                   spec=spec)
    ones = np.ones((3, 4))
    np.testing.assert_array_equal(rollout.rewards, ones)
    np.testing.assert_array_equal(rollout.terminated, ones.astype(bool))
    np.testing.assert_array_equal(rollout.truncated, ~ones.astype(bool))
    np.testing.assert_array_equal(rollout.firsts, ones.astype(bool))  # fresh at t = 0, reset after every chunk
    np.testing.assert_array_equal(rollout.episode_returns, ones)
    assert _in_pool(rollout.features, pool).all() and _in_pool(rollout.final_features, pool).all()
    np.testing.assert_array_equal(env.wm_steps, 0)
    metrics = jax.device_get(rollout_metrics(rollout))
    assert (metrics["success_rate"], metrics["episode_return"], metrics["episodes"]) == (1.0, 1.0, 12.0)


def test_never_firing_classifier_truncates_at_episode_len_across_rollouts():
    models, actor_ft, pool = tiny_models()
    models = with_constant_classifier(models, False)
    spec = specs.rollout_spec(tiny_config())  # 3 chunk steps per rollout, episodes of 2 chunks (8 WM steps)
    env = init_env_state(pool, 4, jax.random.key(1))
    first_half, env = imagine_rollout(models, actor_ft, env, pool, jax.random.key(5), spec=spec)
    np.testing.assert_array_equal(env.wm_steps, 4)  # one chunk into the second episode
    np.testing.assert_array_equal(env.first, False)
    second_half, env = imagine_rollout(models, actor_ft, env, pool, jax.random.key(6), spec=spec)
    truncated = np.concatenate([first_half.truncated, second_half.truncated])
    firsts = np.concatenate([first_half.firsts, second_half.firsts])
    features = np.concatenate([first_half.features, second_half.features])
    expected_truncated = np.array([0, 1, 0, 1, 0, 1], bool)[:, None].repeat(4, 1)
    np.testing.assert_array_equal(truncated, expected_truncated)
    np.testing.assert_array_equal(firsts, np.array([1, 0, 1, 0, 1, 0], bool)[:, None].repeat(4, 1))
    assert not np.any(first_half.terminated) and not np.any(second_half.terminated)
    np.testing.assert_array_equal(np.concatenate([first_half.rewards, second_half.rewards]), 0.0)
    # episode starts come from the pool; one chunk later the latent has moved off it
    np.testing.assert_array_equal(_in_pool(features, pool), firsts)
    assert _in_pool(second_half.final_features, pool).all()  # truncated at the last step, reset
    metrics = jax.device_get(rollout_metrics(second_half))
    # truncations at t = 0 and t = 2
    assert (metrics["success_rate"], metrics["episode_return"], metrics["episodes"]) == (0.0, 0.0, 8.0)


@pytest.mark.parametrize("rot6d", [True, False])
def test_imagination_uses_the_world_model_spec_the_stages_train_and_restore(rot6d, tmp_path):
    """One WorldModelSpec per config: the one the world_model stage trains (and artifacts restores) is the one the
    imagined rollout and the PPO iteration are compiled for, input sizes included (without rot6d: 15-D proprio,
    39-D state)."""
    from diwa_jax import config as configlib
    config = tiny_config()
    config.data.rot6d = rot6d
    config = configlib.finalize(config, str(tmp_path))
    trained = specs.world_model_spec(config)
    assert (trained.proprio_dim, trained.state_dim) == (config.derived.proprio_dim, config.derived.state_dim)
    assert trained.proprio_dim == (18 if rot6d else 15) and trained.state_dim == (51 if rot6d else 39)
    assert specs.rollout_spec(config).wm == trained
    assert specs.finetune_spec(config, config.tasks[0]).rollout.wm == trained
