"""The static specs of the libraries, built from the experiment config in one place.

Libraries take these frozen, hashable specs (jit statics), never the config; the stages build them here.
"""
from __future__ import annotations

import dataclasses
import functools

from diwa_jax import config as configlib
from diwa_jax.data.preprocess import proprio_dim, scene_state_dim
from diwa_jax.evaluate import EvalSpec, SamplerSettings, observation_transform
from diwa_jax.finetune.agent import FinetuneSpec
from diwa_jax.finetune.imagine import RolloutSpec
from diwa_jax.policy.bc import BCSpec
from diwa_jax.policy.denoiser import DenoiserSpec
from diwa_jax.policy.schedule import DDPMSchedule, make_schedule
from diwa_jax.reward.classifier import RewardSpec
from diwa_jax.world_model import model


def world_model_spec(config) -> model.WorldModelSpec:
    """The world model's spec: ``config.wm`` with the input sizes the data set's preprocessing gives
    (``config.data``), the one every stage trains, restores and imagines with."""
    rot6d = config.data.rot6d
    fields = {f.name for f in dataclasses.fields(model.WorldModelSpec)} - {"image_size", "proprio_dim", "state_dim",
                                                                           "action_dim"}
    return model.WorldModelSpec(
        **{name: config.wm[name] for name in fields if name in config.wm}, image_size=config.data.image_size,
        proprio_dim=proprio_dim(rot6d), state_dim=proprio_dim(rot6d) + scene_state_dim(rot6d),
        action_dim=config.policy.action_dim)


def policy_schedule(config) -> DDPMSchedule:
    return make_schedule(config.policy.denoising_steps, config.policy.cosine_s)


def denoiser_spec(config) -> DenoiserSpec:
    p = config.policy
    return DenoiserSpec(horizon=p.horizon, action_dim=p.action_dim, time_dim=p.time_dim, mlp_dim=p.mlp_dim)


def bc_spec(config) -> BCSpec:
    p = config.policy
    return BCSpec(denoiser=denoiser_spec(config), lr=p.lr, min_lr=p.min_lr, weight_decay=p.weight_decay,
                  warmup_epochs=p.warmup_epochs, cosine_epochs=p.cosine_epochs, ema_decay=p.ema_decay,
                  ema_every=p.ema_every, ema_start=p.ema_start)


def reward_spec(config) -> RewardSpec:
    r = config.reward
    return RewardSpec(embed_hidden=r.embed_hidden, embed_dim=r.embed_dim, head_hidden=r.head_hidden, tau=r.tau,
                      ce_weight=r.ce_weight, lr=r.lr)


def logprob_options(ppo_config) -> dict:
    """``reduce_chain_logprob``'s options from ``config.ppo``, for the PPO and BC losses alike."""
    clamp = (ppo_config.logprob_min, ppo_config.logprob_max) if ppo_config.clamp_logprob else None
    return dict(logprob_clamp=clamp, logprob_reduce=ppo_config.logprob_reduce)


def rollout_spec(config) -> RolloutSpec:
    """The imagined rollout's sizes and options (sections ``wm``, ``data``, ``policy``, ``ppo``)."""
    return RolloutSpec(wm=world_model_spec(config), n_steps=config.ppo.n_steps, horizon=config.policy.horizon,
                       action_dim=config.policy.action_dim, act_steps=config.policy.act_steps,
                       ft_steps=config.policy.ft_denoising_steps, episode_len=config.ppo.episode_len,
                       min_sampling_std=config.ppo.min_sampling_std, min_logprob_std=config.ppo.min_logprob_std,
                       randn_clip=config.ppo.randn_clip, denoised_clip=config.policy.denoised_clip,
                       reward_mode=config.ppo.reward_mode, binarize_gripper=config.ppo.binarize_gripper,
                       success_hold=config.ppo.success_hold, reward_source=config.ppo.reward_source)


def finetune_spec(config, task: str) -> FinetuneSpec:
    """PPO's settings for ``task`` (its alpha_BC: ``config.ppo.alpha_bc_by_task`` or ``config.ppo.alpha_bc``)."""
    p = config.ppo
    return FinetuneSpec(
        rollout=rollout_spec(config), n_envs=p.n_envs, update_epochs=p.update_epochs,
        batch_size=p.batch_size, minibatch_mode=p.minibatch_mode, gamma=p.gamma, gae_lambda=p.gae_lambda,
        gamma_denoising=p.gamma_denoising, clip=p.clip, clip_base=p.clip_base, clip_rate=p.clip_rate,
        vf_coef=p.vf_coef, target_kl=p.target_kl, norm_adv=p.norm_adv, max_grad_norm=p.max_grad_norm,
        actor_lr=p.actor_lr, critic_lr=p.critic_lr, critic_warmup=p.critic_warmup, critic_dim=p.critic_dim,
        reward_scaling=p.reward_scaling, reward_scale_gamma=p.reward_scale_gamma,
        reward_scale_clip=p.reward_scale_clip, alpha_bc=configlib.alpha_bc(config, task), **logprob_options(p))


def sampler_settings(config, ft_steps: int) -> SamplerSettings:
    """Evaluation sampling as in fine-tuning (noise clip ``ppo.randn_clip``, std floor ``ppo.min_sampling_std``
    when not deterministic)."""
    return SamplerSettings(
        chunk_shape=(config.policy.horizon, config.policy.action_dim), ft_steps=int(ft_steps),
        min_std=config.ppo.min_sampling_std, randn_clip=config.ppo.randn_clip,
        denoised_clip=config.policy.denoised_clip, deterministic=bool(config.eval.deterministic),
        deterministic_min_std=config.policy.deterministic_min_std)


def sampler_record(config, ft_steps: int) -> dict:
    """What a fine-tuned policy must be sampled with, as stored in its fine-tuning marker: K, K' and the
    sampler settings of ``sampler_settings`` (plain values, comparable with JSON), all but the evaluation's
    own choice of deterministic or stochastic sampling."""
    settings = dataclasses.asdict(sampler_settings(config, ft_steps))
    settings["chunk_shape"] = list(settings["chunk_shape"])
    del settings["deterministic"]
    return {"denoising_steps": config.policy.denoising_steps, "cosine_s": config.policy.cosine_s, **settings}


def eval_spec(config) -> EvalSpec:
    """Closed-loop evaluation of the policies with ``config.policy.ft_denoising_steps`` fine-tuned steps."""
    return EvalSpec(sampler=sampler_settings(config, config.policy.ft_denoising_steps),
                    act_steps=config.policy.act_steps, max_steps=config.eval.max_steps,
                    filter_every_frame=bool(config.eval.filter_every_frame), image_size=config.data.image_size)


def env_factory(config):
    """A picklable callable building the simulator of ``config.env.backend``: the embedded play-table or
    the ``calvin_env`` adapter (worker processes build theirs with it)."""
    if config.env.backend == "playtable":
        from diwa_jax.envs.playtable.env import PlayTable
        return functools.partial(PlayTable, static_size=config.env.static_size, gripper_size=config.env.gripper_size,
                                 renderer=config.env.renderer, seed=config.seed)
    if config.env.backend == "calvin_env":
        from diwa_jax.envs.calvin_env import CalvinEnvAdapter
        return functools.partial(CalvinEnvAdapter, conf_dir=config.env.calvin_env_conf_dir or None,
                                 use_egl=config.env.renderer == "egl", seed=config.seed,
                                 static_size=config.env.static_size, gripper_size=config.env.gripper_size)
    raise ValueError(f"config.env.backend={config.env.backend!r}: choose playtable or calvin_env")


def scene_geometry(config):
    """The ``envs.geometry.SceneGeometry`` of ``config.env.backend``'s scene, without building a simulator."""
    if config.env.backend == "playtable":
        from diwa_jax.envs.playtable.scene import GEOMETRY
        return GEOMETRY
    from diwa_jax.envs.geometry import CALVIN_SCENE_D
    return CALVIN_SCENE_D


def make_env(config):
    """One simulator of ``config.env.backend``."""
    return env_factory(config)()


def simulator_batch(config, world_model: model.WorldModel, stats, count: int, workers: int):
    """A ``SimulatorBatch`` of ``count`` simulators of ``config.env.backend`` in ``workers`` worker processes (0: in
    this process), observations turned into ``world_model``'s inputs (normalised with the training split's
    ``stats``); ``close()`` closes them."""
    from diwa_jax.envs.batch import SimulatorBatch
    transform = observation_transform(world_model, stats, config.data.image_size)
    if workers == 0:
        return SimulatorBatch.local([make_env(config) for _ in range(count)], transform, owned=True)
    return SimulatorBatch.spawn(env_factory(config), count, workers, transform)


def evaluation_batch(config, world_model: model.WorldModel, stats):
    """The evaluation's ``simulator_batch``: ``config.eval.envs`` simulators in ``config.eval.workers`` processes."""
    return simulator_batch(config, world_model, stats, config.eval.envs, config.eval.workers)
