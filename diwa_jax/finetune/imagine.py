"""Imagined rollouts on the Dream Diffusion MDP (spec section 4), one jitted program without host transfers.

N envs step in parallel along a leading axis. One chunk step: sample a denoising chain with the current
policy (frozen pre-trained params for steps t >= K', fine-tuned params below), run the chunk's first
``act_steps`` actions through the world-model prior, score the post-chunk latent (the chunk's last
``success_hold`` latents) with the reward classifier (or the oracle on decoded scenes), terminate on success,
truncate when the env's world-model step counter reaches the episode length, and reset finished envs to latents
drawn from a pool of start latents. Chunk steps are a ``lax.scan``; inside each, the world-model steps and the
denoising steps are ``lax.scan``s too.

Randomness: chunk step t uses ``split(key, H)[t]``, split into (policy, world model, reset) keys; the world-model
key is split into ``act_steps`` keys, one per ``img_step`` in time order.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from diwa_jax.envs import tasks
from diwa_jax.policy.sampling import sample_chain
from diwa_jax.policy.schedule import DDPMSchedule
from diwa_jax.reward.classifier import REWARD_MODES, classifier_logits, reward_from_logits
from diwa_jax.types import Latent
from diwa_jax.world_model import model as wm

# Success threshold of the reward: argmax class 1 ("binary", rewards in {0, 1}) or probability > 0.5.
SUCCESS_THRESHOLD = {"binary": 0.0, "probability": 0.5}


REWARD_SOURCES = ("classifier", "decoded_state")


@struct.dataclass
class SceneReward:
    """The latent-decoder reward (spec section 2.5, "Hybrid WM + latent decoder"): the task's oracle on the
    scene the world model's state head decodes from a latent vs the scene it decodes from the episode's
    first latent (hybrid/state variants)."""

    state_min: jnp.ndarray  # (state_dim,) the data's state normalisation: state = x * state_scale + state_min
    state_scale: jnp.ndarray  # (state_dim,)
    task: str = struct.field(pytree_node=False)


def decoded_scene(wm_params, spec: wm.WorldModelSpec, scene_reward: SceneReward, features: jnp.ndarray) -> jnp.ndarray:
    """``(..., F)`` -> the scene part of the decoded state ``(..., state_dim - proprio_dim)`` in the data's
    units; its first entries are ``scene_obs``'s joints and lights, all the task predicates read."""
    state = wm.decode_state(wm_params, spec, features) * scene_reward.state_scale + scene_reward.state_min
    return state[..., spec.proprio_dim:]


def chunk_reward(models: FrozenModels, spec: wm.WorldModelSpec, features: jnp.ndarray, reward_mode: str,
                 success_hold: int, start_scene: jnp.ndarray | None = None):
    """The reward of a chunk from ``features (act_steps, ..., F)``, the latents after each of its actions:
    the smallest reward over the last ``success_hold`` of them (1: the post-chunk latent alone, the paper).
    The reward is the classifier's, or with ``models.scene_reward`` the task's oracle between
    ``start_scene (..., S)`` and each latent's decoded scene. The tasks' successes are states that persist,
    so requiring several steps rejects one-step firings. Returns ``(reward, terminated)``, both ``(...)``."""
    held = features[-success_hold:]
    if models.scene_reward is None:
        rewards = reward_from_logits(classifier_logits(models.classifier, held), reward_mode)
        reward = jnp.min(rewards, axis=0)
        return reward, reward > SUCCESS_THRESHOLD[reward_mode]
    scene = decoded_scene(models.wm, spec, models.scene_reward, held)
    terminated = jnp.all(tasks.success(models.scene_reward.task, start_scene, scene, xp=jnp), axis=0)
    return terminated.astype(jnp.float32), terminated


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
    """The rollout's static sizes and options (hashable: a jit static argument)."""

    wm: wm.WorldModelSpec
    n_steps: int  # H, chunk steps per rollout
    horizon: int  # Ta, actions per sampled chunk
    action_dim: int
    act_steps: int  # actions of each chunk executed in the world model
    ft_steps: int  # K', denoising steps run with the fine-tuned params
    episode_len: int  # world-model steps before truncation
    min_sampling_std: float
    min_logprob_std: float
    randn_clip: float
    denoised_clip: float
    reward_mode: str
    binarize_gripper: bool
    success_hold: int  # world-model steps at a chunk's end the reward must all call success
    reward_source: str  # classifier | decoded_state (the FrozenModels' scene_reward)

    def __post_init__(self):
        if self.reward_mode not in REWARD_MODES:
            raise ValueError(f"config.ppo.reward_mode={self.reward_mode!r}: choose one of {', '.join(REWARD_MODES)}")
        if self.reward_source not in REWARD_SOURCES or (self.reward_source == "decoded_state"
                                                        and not self.wm.uses_state):
            raise ValueError(f"config.ppo.reward_source={self.reward_source!r}: choose one of "
                             f"{', '.join(REWARD_SOURCES)} (decoded_state needs config.wm.variant hybrid or state)")
        if not 1 <= self.act_steps <= self.horizon:
            raise ValueError(f"config.policy.act_steps={self.act_steps} must lie in [1, config.policy.horizon="
                             f"{self.horizon}]")

    @property
    def start_scene_dim(self) -> int:
        """Width of ``EnvState.start_scene``: the decoded scene with the decoded-state reward, else 0 (None)."""
        return self.wm.state_dim - self.wm.proprio_dim if self.reward_source == "decoded_state" else 0


@struct.dataclass
class FrozenModels:
    """Everything fine-tuning reads but never changes."""

    wm: Any  # world-model params (only ``rssm`` is used here)
    classifier: dict  # reward-classifier params
    actor_pre: dict  # pre-trained denoiser params, used for the steps t >= K'
    schedule: DDPMSchedule
    scene_reward: SceneReward | None = None  # the reward instead of the classifier (reward_source decoded_state)


@struct.dataclass
class EnvState:
    """The N imagined envs between chunk steps (and between iterations)."""

    latent: Latent  # (N, ...) current latent
    wm_steps: jnp.ndarray  # (N,) int32 world-model steps taken in the current episode
    first: jnp.ndarray  # (N,) bool: the current latent starts an episode
    episode_return: jnp.ndarray  # (N,) float32 raw rewards summed over the current episode
    # (N, S) the decoded scene of the episode's first latent (decoded-state reward only; set on its first step)
    start_scene: jnp.ndarray | None = None


@struct.dataclass
class Rollout:
    """H chunk steps of N envs, time-major."""

    features: jnp.ndarray  # (H, N, F) latent feature the chunk was sampled for
    chains: jnp.ndarray  # (H, N, K'+1, Ta, A) fine-tuned part of the denoising chain, [x_K', ..., x_0]
    logprobs: jnp.ndarray  # (H, N, K', Ta, A) per-element log-densities of its transitions (sampling params)
    rewards: jnp.ndarray  # (H, N) raw classifier reward of the post-chunk latent
    terminated: jnp.ndarray  # (H, N) bool: success, the episode ends
    truncated: jnp.ndarray  # (H, N) bool: the episode reached episode_len world-model steps
    firsts: jnp.ndarray  # (H, N) bool: the step's latent starts an episode
    episode_returns: jnp.ndarray  # (H, N) return of the episode that ended at this step, 0 where none did
    final_features: jnp.ndarray  # (N, F) latent after the last step (after any reset): the GAE bootstrap


def _select(mask: jnp.ndarray, on_true, on_false):
    """Per-env ``where`` over two pytrees with leading axis N."""
    return jax.tree.map(lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b),
                        on_true, on_false)


def draw_starts(start_pool: Latent, n: int, key: jax.Array) -> Latent:
    """``n`` latents drawn uniformly (with replacement) from ``start_pool (P, ...)``."""
    index = jax.random.randint(key, (n,), 0, start_pool.deter.shape[0])
    return jax.tree.map(lambda x: x[index], start_pool)


def init_env_state(start_pool: Latent, n_envs: int, key: jax.Array, start_scene_dim: int = 0) -> EnvState:
    """N fresh episodes from random start latents (``start_scene_dim``: ``RolloutSpec.start_scene_dim``)."""
    if start_pool.deter.ndim != 2 or start_pool.stoch.ndim != 3:
        raise ValueError(f"diwa_jax/finetune/imagine.py: start_pool must be a Latent (P, D) / (P, S, C); got deter "
                         f"{start_pool.deter.shape}, stoch {start_pool.stoch.shape}")
    return EnvState(latent=draw_starts(start_pool, n_envs, key), wm_steps=jnp.zeros((n_envs,), jnp.int32),
                    first=jnp.ones((n_envs,), bool), episode_return=jnp.zeros((n_envs,), jnp.float32),
                    start_scene=jnp.zeros((n_envs, start_scene_dim), jnp.float32) if start_scene_dim else None)


def executed_gripper(actions: jnp.ndarray) -> jnp.ndarray:
    """``(..., A)`` actions with the gripper (last) entry as the simulator executes it: +1 where >= 0, else -1
    (``envs.protocol.policy_gripper``, in JAX)."""
    return actions.at[..., -1].set(jnp.where(actions[..., -1] >= 0, 1.0, -1.0))


def execute_chunk(wm_params, spec: RolloutSpec, latent: Latent, chunk: jnp.ndarray,
                  key: jax.Array) -> tuple[Latent, jnp.ndarray]:
    """Run the first ``act_steps`` actions of ``chunk (N, Ta, A)`` through the world-model prior: the latent
    after, and the features of the latents after each action ``(act_steps, N, F)``."""
    actions = chunk[:, :spec.act_steps]
    if spec.binarize_gripper:  # as the simulator does (spec section 9 row 10)
        actions = executed_gripper(actions)

    def wm_step(state, inputs):
        action, step_key = inputs
        state = wm.img_step(wm_params, spec.wm, state, action, step_key)
        return state, state.feature()

    return jax.lax.scan(wm_step, latent, (jnp.swapaxes(actions, 0, 1), jax.random.split(key, spec.act_steps)))


def sample_policy(models: FrozenModels, actor_ft: dict, spec: RolloutSpec, feature: jnp.ndarray, key: jax.Array):
    """Fine-tuning's stochastic chunk for ``feature (N, F)``: ``(chunk (N, Ta, A), chain, logprob)`` with the
    fine-tuned part of the chain and its transitions' log-densities (PPO's old log-probs)."""
    return sample_chain(
        models.actor_pre, actor_ft, models.schedule, feature, key, chunk_shape=(spec.horizon, spec.action_dim),
        ft_steps=spec.ft_steps, min_std=spec.min_sampling_std, randn_clip=spec.randn_clip,
        denoised_clip=spec.denoised_clip, logprob_min_std=spec.min_logprob_std)


def _chunk_step(models: FrozenModels, actor_ft: dict, spec: RolloutSpec, start_pool: Latent, env: EnvState,
                key: jax.Array):
    policy_key, wm_key, reset_key = jax.random.split(key, 3)
    feature = env.latent.feature()
    chunk, chain, logprob = sample_policy(models, actor_ft, spec, feature, policy_key)
    latent, features = execute_chunk(models.wm, spec, env.latent, chunk, wm_key)
    start_scene = env.start_scene
    if start_scene is not None:  # an episode's first step decodes its start scene
        start_scene = jnp.where(env.first[:, None], decoded_scene(models.wm, spec.wm, models.scene_reward, feature),
                                start_scene)
    reward, terminated = chunk_reward(models, spec.wm, features, spec.reward_mode, spec.success_hold, start_scene)
    wm_steps = env.wm_steps + spec.act_steps
    truncated = wm_steps >= spec.episode_len
    done = terminated | truncated
    episode_return = env.episode_return + reward
    n = feature.shape[0]
    next_env = EnvState(
        latent=_select(done, draw_starts(start_pool, n, reset_key), latent),
        wm_steps=jnp.where(done, 0, wm_steps),
        first=done,
        episode_return=jnp.where(done, 0.0, episode_return),
        start_scene=start_scene)
    step = dict(features=feature, chains=chain, logprobs=logprob, rewards=reward, terminated=terminated,
                truncated=truncated, firsts=env.first, episode_returns=jnp.where(done, episode_return, 0.0))
    return next_env, step


@functools.partial(jax.jit, static_argnames="spec")
def imagine_rollout(models: FrozenModels, actor_ft: dict, env: EnvState, start_pool: Latent, key: jax.Array, *,
                    spec: RolloutSpec) -> tuple[Rollout, EnvState]:
    """``spec.n_steps`` chunk steps of every env in ``env`` with the fine-tuned params ``actor_ft``.

    Returns the time-major ``Rollout`` and the env state to continue from (episodes carry over)."""
    def step(env, step_key):
        return _chunk_step(models, actor_ft, spec, start_pool, env, step_key)

    env, steps = jax.lax.scan(step, env, jax.random.split(key, spec.n_steps))
    return Rollout(**steps, final_features=env.latent.feature()), env


def rollout_metrics(rollout: Rollout) -> dict:
    """Scalars reduced on device: over the episodes that ended in this rollout, the imagined success rate
    and mean (raw) return (0 when none ended), their count, and the mean raw reward per chunk step."""
    done = rollout.terminated | rollout.truncated
    episodes = jnp.sum(done)
    per_episode = jnp.maximum(episodes, 1).astype(jnp.float32)
    return {
        "success_rate": jnp.sum(rollout.terminated) / per_episode,
        "episode_return": jnp.sum(rollout.episode_returns) / per_episode,
        "episodes": episodes.astype(jnp.float32),
        "reward_mean": jnp.mean(rollout.rewards),
    }
