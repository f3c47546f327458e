"""One PPO iteration on the Dream Diffusion MDP (spec section 6.2), as a single jitted program.

``iteration(state) -> (state, metrics)``: collect an imagined rollout, value the latents with the pre-update
critic, scale rewards, GAE, then ``update_epochs`` x minibatches of clipped-PPO + value + BC-regulariser steps
(one ``lax.scan``), with the actor gated by the critic warm-up and every update after an approx-KL breach
masked. The old log-probs come from the rollout's sampler (same params, same means), not a second pass.

The frozen inputs (world model, classifier, pre-trained denoiser, schedule, start pool) are not part of
``FinetuneState``: like the world model and the classifier, the pre-trained denoiser is an artifact of an
earlier stage that resuming reloads exactly from its checkpoint, so fine-tuning checkpoints hold only what
fine-tuning changes. They are passed to the jitted program as arguments (not baked-in constants) and get
neither gradients nor optimiser state.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from diwa_jax.finetune import ppo
from diwa_jax.finetune.gae import gae
from diwa_jax.finetune.imagine import (EnvState, FrozenModels, Rollout, RolloutSpec, imagine_rollout, init_env_state,
                                       rollout_metrics)
from diwa_jax.finetune.networks import critic_value, init_critic
from diwa_jax.finetune.optim import actor_optimizer, critic_optimizer
from diwa_jax.finetune.reward_scaler import VAR_EPS, RewardScalerState, init_reward_scaler, update_and_scale
from diwa_jax.mesh import split_over_data
from diwa_jax.policy.sampling import chain_logprob, sample_chain, transition_logprob
from diwa_jax.types import Latent

MINIBATCH_MODES = ("sample", "denoising_step")
UPDATE_METRICS = ("loss", "pg_loss", "value_loss", "bc_loss", "approx_kl", "clipfrac")


@struct.dataclass
class FinetuneState:
    step: jnp.ndarray  # () int32 PPO iterations done (the critic warm-up counts these)
    actor: dict  # fine-tuned denoiser params (steps t < K')
    critic: dict
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    reward_scaler: RewardScalerState
    env: EnvState | None  # the imagined envs (None when the rollouts come from a simulator)
    key: jax.Array


@dataclasses.dataclass(frozen=True)
class FinetuneSpec:
    """Static hyper-parameters of an iteration (hashable: a jit static argument)."""

    rollout: RolloutSpec
    n_envs: int
    update_epochs: int
    batch_size: int
    minibatch_mode: str
    gamma: float
    gae_lambda: float
    gamma_denoising: float
    clip: float
    clip_base: float
    clip_rate: float
    vf_coef: float
    target_kl: float
    norm_adv: bool
    max_grad_norm: float
    actor_lr: float
    critic_lr: float
    critic_warmup: int
    critic_dim: int
    reward_scaling: bool
    reward_scale_gamma: float
    reward_scale_clip: float
    alpha_bc: float
    logprob_clamp: tuple | None
    logprob_reduce: str

    def __post_init__(self):
        if self.minibatch_mode not in MINIBATCH_MODES:
            raise ValueError(f"config.ppo.minibatch_mode={self.minibatch_mode!r}: choose one of "
                             f"{', '.join(MINIBATCH_MODES)}")

    def optimizers(self) -> tuple[optax.GradientTransformationExtraArgs, optax.GradientTransformation]:
        return (actor_optimizer(self.actor_lr, self.max_grad_norm, self.critic_warmup),
                critic_optimizer(self.critic_lr))


@struct.dataclass
class PPOBatch:
    """One iteration's samples, flattened over (time, env)."""

    features: jnp.ndarray  # (B, F)
    chains: jnp.ndarray  # (B, K'+1, Ta, A)
    old_logprobs: jnp.ndarray  # (B, K', Ta, A)
    advantages: jnp.ndarray  # (B,)
    returns: jnp.ndarray  # (B,)


def _iteration_zero(spec: FinetuneSpec, critic_key: jax.Array, key: jax.Array, actor_pre: dict, feature_dim: int,
                    env: EnvState | None) -> FinetuneState:
    actor = jax.tree.map(jnp.copy, actor_pre)
    critic = init_critic(critic_key, feature_dim, spec.critic_dim)
    actor_tx, critic_tx = spec.optimizers()
    return FinetuneState(step=jnp.zeros((), jnp.int32), actor=actor, critic=critic, actor_opt=actor_tx.init(actor),
                         critic_opt=critic_tx.init(critic), reward_scaler=init_reward_scaler(spec.n_envs),
                         env=env, key=key)


@functools.partial(jax.jit, static_argnums=0)  # one compiled program instead of many eager ops
def create_finetune_state(spec: FinetuneSpec, key: jax.Array, actor_pre: dict, start_pool: Latent) -> FinetuneState:
    """Iteration 0: the fine-tuned actor a copy of ``actor_pre``, a random critic, fresh optimisers and reward
    scaler, ``spec.n_envs`` episodes started from ``start_pool``."""
    critic_key, env_key, key = jax.random.split(key, 3)
    return _iteration_zero(spec, critic_key, key, actor_pre, start_pool.feature().shape[-1],
                           init_env_state(start_pool, spec.n_envs, env_key, spec.rollout.start_scene_dim))


@functools.partial(jax.jit, static_argnums=(0, 3))
def create_learner_state(spec: FinetuneSpec, key: jax.Array, actor_pre: dict, feature_dim: int) -> FinetuneState:
    """``create_finetune_state`` without imagined envs (``env=None``), for rollouts collected in a simulator:
    the same actor, critic (over ``feature_dim`` latent features), optimisers and reward scaler from ``key``."""
    critic_key, _, key = jax.random.split(key, 3)
    return _iteration_zero(spec, critic_key, key, actor_pre, feature_dim, None)


def make_iteration(spec: FinetuneSpec, models: FrozenModels,
                   start_pool: Latent) -> Callable[[FinetuneState], tuple[FinetuneState, dict]]:
    """``iteration(state) -> (state, metrics)``, jitted once per ``FinetuneSpec`` (shared across calls).
    Metrics are device scalars: success_rate, episode_return, episodes, reward_mean (this rollout), loss,
    pg_loss, value_loss, bc_loss, approx_kl, clipfrac (means over the executed minibatch steps), updates
    (minibatch steps executed), reward_scale_std."""
    return lambda state: ppo_iteration(spec, models, start_pool, state)


@functools.partial(jax.jit, static_argnums=0)
def ppo_iteration(spec: FinetuneSpec, models: FrozenModels, start_pool: Latent,
                  state: FinetuneState) -> tuple[FinetuneState, dict]:
    rollout_key, _, _ = jax.random.split(state.key, 3)
    rollout, env = imagine_rollout(models, state.actor, state.env, start_pool, rollout_key, spec=spec.rollout)
    return learn(spec, models, state.replace(env=env), rollout)


def learn(spec: FinetuneSpec, models: FrozenModels, state: FinetuneState,
          rollout: Rollout) -> tuple[FinetuneState, dict]:
    """The PPO step of an iteration from its ``rollout`` (imagined, or collected in a simulator): value the
    latents with the pre-update critic, scale rewards, GAE, ``ppo_update``; the state's key moves on and its
    step counts one more iteration. The rollout was sampled with ``split(state.key, 3)[0]``."""
    _, update_key, next_key = jax.random.split(state.key, 3)
    values = critic_value(state.critic, rollout.features)
    last_value = critic_value(state.critic, rollout.final_features)
    scaler, rewards = state.reward_scaler, rollout.rewards
    if spec.reward_scaling:
        scaler, rewards = update_and_scale(scaler, rewards, rollout.firsts, spec.reward_scale_gamma,
                                           spec.reward_scale_clip)
    advantages, returns = gae(rewards, values, rollout.terminated, last_value, spec.gamma, spec.gae_lambda)
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731  (H, N, ...) -> (H*N, ...)
    batch = PPOBatch(features=flat(rollout.features), chains=flat(rollout.chains),
                     old_logprobs=flat(rollout.logprobs), advantages=flat(advantages), returns=flat(returns))
    state = state.replace(reward_scaler=scaler, key=next_key)
    state, update_metrics = ppo_update(spec, models, state, batch, update_key)
    metrics = {**rollout_metrics(rollout), **update_metrics, "reward_scale_std": jnp.sqrt(scaler.var + VAR_EPS)}
    return state.replace(step=state.step + 1), metrics


def _losses(spec: FinetuneSpec, models: FrozenModels, actor: dict, critic: dict, batch: PPOBatch,
            rows: jnp.ndarray, bc_key: jax.Array) -> tuple[jnp.ndarray, dict]:
    """Total loss of one minibatch and its parts. ``rows`` index samples (``sample`` mode) or
    (sample, denoising step) pairs as ``sample * K' + j`` (``denoising_step`` mode)."""
    r = spec.rollout
    ft_steps = r.ft_steps
    logprob_args = dict(min_logprob_std=r.min_logprob_std, denoised_clip=r.denoised_clip)
    loss_options = dict(logprob_clamp=spec.logprob_clamp, logprob_reduce=spec.logprob_reduce,
                        norm_adv=spec.norm_adv)
    clips = ppo.clip_schedule(ft_steps, spec.clip, spec.clip_base, spec.clip_rate)
    discount = ppo.denoising_discount(ft_steps, spec.gamma_denoising)
    if spec.minibatch_mode == "sample":
        samples = rows
        new_logp = chain_logprob(actor, models.schedule, batch.features[samples], batch.chains[samples],
                                 ft_steps=ft_steps, **logprob_args)
        pg_loss, metrics = ppo.ppo_actor_loss(new_logp, batch.old_logprobs[samples], batch.advantages[samples],
                                              clips, discount, **loss_options)
    else:
        samples, step_index = rows // ft_steps, rows % ft_steps
        chains = batch.chains[samples]
        take = jax.vmap(lambda chain, j: chain[j])
        new_logp = transition_logprob(actor, models.schedule, batch.features[samples], take(chains, step_index),
                                      take(chains, step_index + 1), ft_steps - 1 - step_index, **logprob_args)
        pg_loss, metrics = ppo.ppo_actor_loss_rows(new_logp, take(batch.old_logprobs[samples], step_index),
                                                   batch.advantages[samples], step_index, clips, discount,
                                                   **loss_options)
    v_loss = ppo.value_loss(critic_value(critic, batch.features[samples]), batch.returns[samples])
    bc = jnp.zeros((), jnp.float32)
    if spec.alpha_bc > 0:  # static: alpha_bc = 0 compiles without the frozen policy's sampling
        cond = batch.features[samples]
        _, pre_chains = sample_chain(models.actor_pre, models.actor_pre, models.schedule, cond, bc_key,
                                     chunk_shape=(r.horizon, r.action_dim), ft_steps=ft_steps,
                                     min_std=r.min_sampling_std, randn_clip=r.randn_clip,
                                     denoised_clip=r.denoised_clip)
        bc_logp = chain_logprob(actor, models.schedule, cond, jax.lax.stop_gradient(pre_chains), ft_steps=ft_steps,
                                **logprob_args)
        bc = ppo.bc_loss(bc_logp, logprob_clamp=spec.logprob_clamp, logprob_reduce=spec.logprob_reduce)
    loss = ppo.total_loss(pg_loss, v_loss, bc, spec.vf_coef, spec.alpha_bc)
    parts = dict(loss=loss, pg_loss=pg_loss, value_loss=v_loss, bc_loss=bc, approx_kl=metrics["approx_kl"],
                 clipfrac=metrics["clipfrac"])
    return loss, jax.lax.stop_gradient(parts)


def ppo_update(spec: FinetuneSpec, models: FrozenModels, state: FinetuneState, batch: PPOBatch,
               key: jax.Array) -> tuple[FinetuneState, dict]:
    """``update_epochs`` passes of shuffled minibatches over ``batch``, one ``lax.scan`` over all minibatch steps.

    Each step moves the critic and (from iteration ``critic_warmup`` on, via the actor optimiser's gate) the
    actor. A step whose approx-KL exceeds ``target_kl`` is still applied, every later one is skipped (DPPO's
    break). Epoch e shuffles with ``fold_in(key, e)``, so the first epochs do not depend on their count."""
    n_samples = batch.features.shape[0]
    n_rows = n_samples * (spec.rollout.ft_steps if spec.minibatch_mode == "denoising_step" else 1)
    epoch_keys = jax.vmap(lambda e: jax.random.fold_in(key, e))(jnp.arange(spec.update_epochs))
    epoch_keys = jax.vmap(jax.random.split)(epoch_keys)  # (E, 2): shuffling, BC sampling
    perm_keys, bc_keys = epoch_keys[:, 0], epoch_keys[:, 1]
    rows = jax.vmap(lambda k: ppo.minibatch_indices(k, n_rows, spec.batch_size))(perm_keys)  # (E, M, size)
    n_minibatches = rows.shape[1]
    bc_keys = jax.vmap(lambda k: jax.random.split(k, n_minibatches))(bc_keys)  # (E, M)
    rows, bc_keys = rows.reshape((-1, rows.shape[-1])), bc_keys.reshape(-1)
    rows = split_over_data(rows, axis=1)  # on a device mesh, each device computes its share of every minibatch
    actor_tx, critic_tx = spec.optimizers()
    grad_fn = jax.grad(lambda a, c, r, k: _losses(spec, models, a, c, batch, r, k), argnums=(0, 1), has_aux=True)
    metric_shapes = jax.eval_shape(lambda: _losses(spec, models, state.actor, state.critic, batch, rows[0],
                                                   bc_keys[0])[1])

    def apply(nets, minibatch):
        actor, critic, actor_opt, critic_opt = nets
        (actor_grads, critic_grads), parts = grad_fn(actor, critic, *minibatch)
        updates, actor_opt = actor_tx.update(actor_grads, actor_opt, actor, iteration=state.step)
        actor = optax.apply_updates(actor, updates)
        updates, critic_opt = critic_tx.update(critic_grads, critic_opt, critic)
        critic = optax.apply_updates(critic, updates)
        return (actor, critic, actor_opt, critic_opt), parts

    def skip(nets, minibatch):
        return nets, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)

    def step(carry, minibatch):
        nets, stopped = carry
        nets, parts = jax.lax.cond(stopped, skip, apply, nets, minibatch)
        executed = jnp.logical_not(stopped)
        stopped = stopped | (executed & (parts["approx_kl"] > spec.target_kl))
        return (nets, stopped), (parts, executed)

    nets = (state.actor, state.critic, state.actor_opt, state.critic_opt)
    (nets, _), (parts, executed) = jax.lax.scan(step, (nets, jnp.zeros((), bool)), (rows, bc_keys))
    count = jnp.sum(executed)
    metrics = {name: jnp.sum(parts[name]) / jnp.maximum(count, 1) for name in UPDATE_METRICS}
    metrics["updates"] = count.astype(jnp.float32)
    actor, critic, actor_opt, critic_opt = nets
    return state.replace(actor=actor, critic=critic, actor_opt=actor_opt, critic_opt=critic_opt), metrics
