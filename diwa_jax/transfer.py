"""The transfer diagnostic: does real success follow imagined success from the same start states?

For one task and policy, S start states run three ways, with the evaluation's sampler (``EvalSpec``) and
the evaluation's noise (``evaluate.episode_keys`` of episode e for start e):

- **real**: closed loop in the simulator (``evaluate_policy``), judged by the task's oracle;
- **imagined**: closed loop in the world model's prior from the start frame's latent (the real episode's
  own first latent, ``evaluate.first_latent``), each chunk's executed actions (gripper binarised, as the
  simulator gets them) stepped through the prior, judged by the reward classifier after every chunk as
  fine-tuning's rollouts are; up to ``max_steps`` world-model steps;
- **replayed**: the imagined episode's actions executed open loop in the simulator from the same start,
  judged by the oracle. The classifier's precision on imagined rollouts is the share of imagined successes
  whose replay reaches the oracle's success by the chunk the classifier fired on.

The classifier also judges the real episodes' own post-chunk latents (filtered from the simulator's frames):
``classifier_false_alarms_real`` is the share of the failed real episodes it said yes on at some chunk (a
real episode ends on the oracle's success before that frame is filtered, so a yes on a successful episode
only comes early). Side by side with the precision on imagined rollouts, it tells the classifier's own
false alarms from the imagination's drift.

Plus how far the policy moved: the RMS difference between its first chunk and the pre-trained policy's,
from the same latents and noise (0 for the pre-trained policy itself).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diwa_jax.envs.batch import Reset, SimulatorBatch, Steps
from diwa_jax.evaluate import EvalSpec, episode_keys, evaluate_policy, executed_actions, first_latent, sample_chunks
from diwa_jax.finetune.imagine import FrozenModels, chunk_reward, decoded_scene, executed_gripper
from diwa_jax.policy.schedule import DDPMSchedule
from diwa_jax.types import Latent
from diwa_jax.world_model import model


@functools.partial(jax.jit, static_argnames=("spec", "act_steps", "reward_mode", "success_hold"))
def imagine_chunks(models: FrozenModels, latent: Latent, chunks: jax.Array, key: jax.Array, episode: jax.Array,
                   frame: jax.Array, start_scene: jax.Array | None, *, spec: model.WorldModelSpec, act_steps: int,
                   reward_mode: str, success_hold: int) -> tuple[Latent, jax.Array]:
    """Each episode's chunk ``chunks (E, Ta, A)``: its first ``act_steps`` actions (gripper binarised) through
    the prior from ``latent (E, 1, ...)``, frame keys as ``evaluate.predict_frame`` draws them (``fold_in`` of
    the episode's world-model key and the frame index after ``frame (E,)``); returns the latents after and
    the success ``(E,)`` as fine-tuning's ``chunk_reward`` judges the chunk (``start_scene (E, S)``: the
    decoded-state reward's, else None). A ``lax.map`` over the episodes, as evaluation's calls."""

    def one_episode(inputs):
        latent, chunk, episode, frame = inputs
        obs_key, _ = episode_keys(key, episode)
        actions = executed_gripper(chunk[:act_steps])

        def prior_step(latent, i):
            frame_key = jax.random.fold_in(obs_key, frame + i + 1)
            latent = model.img_step(models.wm, spec, latent, actions[i][None], frame_key)
            return latent, latent.feature()[0]

        return jax.lax.scan(prior_step, latent, jnp.arange(act_steps))

    latent, features = jax.lax.map(one_episode, (latent, chunks, episode, frame))  # features (E, act_steps, F)
    return latent, chunk_reward(models, spec, jnp.swapaxes(features, 0, 1), reward_mode, success_hold, start_scene)[1]


@functools.partial(jax.jit, static_argnames="reward_mode")
def classify_latents(models: FrozenModels, latent: Latent, *, reward_mode: str) -> jax.Array:
    """The classifier's success on each post-chunk latent ``(E, 1, ...)``: ``(E,)`` bool."""
    return chunk_reward(models, None, latent.feature()[None, :, 0], reward_mode, 1)[1]


def _rounds(count: int, size: int):
    """Slices of ``range(count)`` of at most ``size``."""
    return [slice(begin, min(begin + size, count)) for begin in range(0, count, size)]


def _run(envs: SimulatorBatch, commands: list) -> list:
    """At most ``envs.num_envs`` commands on the first simulators; their outcomes."""
    return envs.run(commands + [None] * (envs.num_envs - len(commands)))[:len(commands)]


def first_latents(spec: EvalSpec, world_model: model.WorldModel, envs: SimulatorBatch, starts: tuple,
                  key: jax.Array) -> Latent:
    """``(S, 1, ...)``: start e's first latent exactly as evaluation episode e computes it."""
    robot, scene = starts
    resets = [o for part in _rounds(len(robot), envs.num_envs)
              for o in _run(envs, [Reset(r, s) for r, s in zip(robot[part], scene[part])])]
    latents = [first_latent(spec, world_model, outcome.observations[0], key, e) for e, outcome in enumerate(resets)]
    return jax.tree.map(lambda *x: jnp.stack(x), *latents)


def imagine_episodes(spec: EvalSpec, world_model: model.WorldModel, models: FrozenModels, reward_mode: str,
                     success_hold: int, actor_ft: dict, latent: Latent, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """Closed loop in imagination from ``latent (S, 1, ...)``: ``(success (S,) bool, actions (S, n, 7))``,
    the executed actions up to and including the chunk the reward fired on (all chunks where it never
    did), each episode's list padded with NaN rows past its end."""
    count = latent.deter.shape[0]
    n_chunks = -(-spec.max_steps // spec.act_steps)
    episode = np.arange(count, dtype=np.int32)
    success = np.zeros(count, bool)
    actions = np.full((count, n_chunks * spec.act_steps, 7), np.nan)
    start_scene = (None if models.scene_reward is None else
                   decoded_scene(models.wm, world_model.spec, models.scene_reward, latent.feature()[:, 0]))
    for c in range(n_chunks):
        chunk_index = np.full(count, c, np.int32)
        chunks = sample_chunks(models.actor_pre, actor_ft, models.schedule, latent, key, episode, chunk_index,
                               settings=spec.sampler)
        running = ~success
        span = slice(c * spec.act_steps, (c + 1) * spec.act_steps)
        actions[running, span] = executed_actions(np.asarray(chunks)[running, :spec.act_steps])
        latent, fired = imagine_chunks(models, latent, chunks, key, episode, chunk_index * spec.act_steps,
                                       start_scene, spec=world_model.spec, act_steps=spec.act_steps,
                                       reward_mode=reward_mode, success_hold=success_hold)
        success |= running & np.asarray(fired)
    return success, actions[:, :spec.max_steps]


def replay(envs: SimulatorBatch, task: str, starts: tuple, actions: np.ndarray) -> tuple[np.ndarray, int]:
    """Each start's ``actions`` (NaN rows dropped) open loop in the simulator: ``(oracle success (S,), steps)``;
    a replay stops at the oracle's success."""
    robot, scene = starts
    success, steps = [], 0
    for part in _rounds(len(robot), envs.num_envs):
        _run(envs, [Reset(r, s) for r, s in zip(robot[part], scene[part])])
        outcomes = _run(envs, [Steps(a[~np.isnan(a).any(axis=1)], task) for a in actions[part]])
        success += [o.success for o in outcomes]
        steps += sum(len(o.observations) for o in outcomes)
    return np.array(success, bool), steps


def first_chunk_distance(spec: EvalSpec, schedule: DDPMSchedule, actor_pre: dict, actor_ft: dict, latent: Latent,
                         key: jax.Array) -> float:
    """RMS difference between the first chunks of the policy and of the pre-trained one (same latents, noise)."""
    episode, chunk = np.arange(latent.deter.shape[0], dtype=np.int32), np.zeros(latent.deter.shape[0], np.int32)
    ft = sample_chunks(actor_pre, actor_ft, schedule, latent, key, episode, chunk, settings=spec.sampler)
    pre = sample_chunks(actor_pre, actor_pre, schedule, latent, key, episode, chunk, settings=spec.sampler)
    return float(jnp.sqrt(jnp.mean(jnp.square(ft - pre))))


def transfer_diagnostic(spec: EvalSpec, task: str, models: FrozenModels, actor_ft: dict, *, reward_mode: str,
                        success_hold: int, world_model: model.WorldModel, starts: tuple, envs: SimulatorBatch,
                        key: jax.Array) -> dict:
    """Real, imagined and replayed success of the policy ``actor_ft`` (over ``models.actor_pre``) from
    ``starts = (robot_obs (S, 15), scene_obs (S, 24))`` (module docstring), imagined success judged by
    ``models``' reward (its classifier, or its ``scene_reward``; the false alarms on real episodes are the
    classifier's only). ``sim_steps`` counts every simulator step it took."""
    schedule, actor_pre = models.schedule, models.actor_pre
    judge = functools.partial(classify_latents, models, reward_mode=reward_mode) if models.scene_reward is None else None
    real = evaluate_policy(spec, task, schedule, actor_pre, actor_ft, key=key, world_model=world_model,
                           starts=starts, envs=envs, judge=judge)
    latent = first_latents(spec, world_model, envs, starts, key)
    imagined, actions = imagine_episodes(spec, world_model, models, reward_mode, success_hold, actor_ft, latent, key)
    replayed, replay_steps = replay(envs, task, starts, actions)
    real_success = np.array(real["episode_success"], bool)
    positives = int(imagined.sum())
    return {
        "starts": len(imagined),
        "real_success": float(real_success.mean()),
        "imagined_success": float(imagined.mean()),
        "replayed_success": float(replayed.mean()),
        "imagined_successes": positives,
        "confirmed_successes": int((imagined & replayed).sum()),  # imagined successes whose replay succeeds
        "classifier_precision_imagined": float((imagined & replayed).sum() / positives) if positives else None,
        "agreement": float((imagined == real_success).mean()),
        "first_chunk_rms_from_pretrained": first_chunk_distance(spec, schedule, actor_pre, actor_ft, latent, key),
        "episode_real": real_success.tolist(), "episode_imagined": imagined.tolist(),
        "episode_replayed": replayed.tolist(),
        "sim_steps": int(real["sim_steps"]) + replay_steps,
        **(_false_alarms(real_success, np.array(real["episode_judged"], bool)) if judge is not None else {}),
    }


def _false_alarms(real_success: np.ndarray, judged: np.ndarray) -> dict:
    """The classifier on the real episodes' own latents: its false alarms without the imagination's drift."""
    failures = ~real_success
    return {"real_failures": int(failures.sum()), "real_false_alarms": int((judged & failures).sum()),
            "classifier_false_alarms_real": float((judged & failures).sum() / failures.sum()) if failures.any() else None,
            "episode_judged_real": judged.tolist()}
