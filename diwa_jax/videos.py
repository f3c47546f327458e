"""Rollout videos: a policy's real episode next to the episode the world model imagines for it.

The real episode is the evaluation's own: ``evaluate_policy`` on one start state with the evaluation key, its
simulator frames recorded by the batch's observation transform. The imagined episode starts from the same encoded first latent
(the reset posterior, same key) and runs the same closed loop with every frame predicted instead of observed:
chunks from ``sample_action_chunk`` on the imagined latent with the episode's policy key (so chunk 0 is the real
episode's), their first ``act_steps`` actions with the gripper binarised as executed, each through
``predict_frame``'s prior step with the episode's world-model key. It runs ``ceil(max_steps / act_steps)`` chunks
cut to ``max_steps`` steps and never stops early (imagination has no oracle). Both show the static camera at the
world model's image size, frame t after t steps; side by side, the gap is the world model's error compounded by
the policy's reaction to it.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from diwa_jax.atomic import atomic_write
from diwa_jax.data.preprocess import resize_area
from diwa_jax.envs.batch import SimulatorBatch
from diwa_jax.evaluate import (EvalSpec, SamplerSettings, episode_keys, evaluate_policy, first_latent,
                               observation_transform, predict_frame, sample_action_chunk)
from diwa_jax.finetune.imagine import executed_gripper
from diwa_jax.logging import MetricLogger
from diwa_jax.policy.schedule import DDPMSchedule
from diwa_jax.types import Latent
from diwa_jax.world_model import model

CAMERA = "rgb_static"
FPS = 10  # 100 ms a frame: GIF frame durations are whole centiseconds


@dataclasses.dataclass(frozen=True)
class RolloutVideo:
    """One policy's episode from one start state, static camera frames as uint8 ``(T, H, W, 3)``."""

    real: np.ndarray  # 1 + sim_steps frames the simulator returned, resized as the world model reads them
    imagined: np.ndarray  # 1 + max_steps frames decoded from the imagined latents
    sim_steps: int  # simulator steps of the real episode (evaluation steps)

    def frames(self) -> np.ndarray:
        """``(T, H, 2W, 3)``, real | imagined per frame, T the longer episode, the shorter held on its last frame."""
        length = max(len(self.real), len(self.imagined))
        hold = lambda x: np.concatenate([x, np.repeat(x[-1:], length - len(x), axis=0)])  # noqa: E731
        return np.concatenate([hold(self.real), hold(self.imagined)], axis=2)


def to_uint8(image: jax.Array) -> jax.Array:
    """Decoder output in the [-1, 1] image scale -> uint8, the inverse of ``normalize_image``."""
    return jnp.round(jnp.clip((image + 1.0) * 127.5, 0.0, 255.0)).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("spec", "settings", "act_steps", "max_steps"))
def imagine_episode(params: dict, actor_pre: dict, actor_ft: dict, schedule: DDPMSchedule, latent: Latent,
                    obs_key: jax.Array, act_key: jax.Array, *, spec: model.WorldModelSpec, settings: SamplerSettings,
                    act_steps: int, max_steps: int) -> jax.Array:
    """``(1 + max_steps, H, W, 3)`` uint8: the static camera decoded from ``latent`` (batch 1) and from every
    imagined step."""

    def chunk_step(latent, chunk):
        actions = sample_action_chunk(actor_pre, actor_ft, schedule, latent.feature(), act_key, chunk,
                                      settings=settings)[:act_steps]
        actions = executed_gripper(actions)  # as ``evaluate.executed_actions``

        def wm_step(latent, inputs):
            action, frame = inputs
            latent = predict_frame(params, latent, action, obs_key, frame, spec=spec)
            return latent, latent

        return jax.lax.scan(wm_step, latent, (actions, chunk * act_steps + 1 + jnp.arange(act_steps)))

    n_chunks = -(-max_steps // act_steps)
    _, latents = jax.lax.scan(chunk_step, latent, jnp.arange(n_chunks, dtype=jnp.int32))
    features = jnp.concatenate([latent.feature(), latents.feature().reshape(-1, spec.feature_dim)])[:1 + max_steps]
    return to_uint8(model.decode(params, spec, features)[CAMERA])


def rollout_video(spec: EvalSpec, schedule: DDPMSchedule, task: str, actor_pre: dict, actor_ft: dict, *,
                  key: jax.Array, env, world_model: model.WorldModel, stats, starts: tuple) -> RolloutVideo:
    """The real and imagined episode from the first of ``starts`` (arguments as ``evaluate_policy``'s; with the
    evaluation's key, the real episode is the evaluation's first)."""
    observations, transform = [], observation_transform(world_model, stats, spec.image_size)

    def record(obs: dict) -> dict:
        observations.append(obs)
        return transform(obs)

    result = evaluate_policy(spec, task, schedule, actor_pre, actor_ft, episodes=1, key=key, world_model=world_model,
                             starts=starts, envs=SimulatorBatch.local([env], record))
    obs_key, act_key = episode_keys(key, 0)  # the real episode's keys
    latent = first_latent(spec, world_model, transform(observations[0]), key)  # the real episode's first latent
    imagined = imagine_episode(world_model.params, actor_pre, actor_ft, schedule, latent, obs_key, act_key,
                               spec=world_model.spec, settings=spec.sampler, act_steps=spec.act_steps,
                               max_steps=spec.max_steps)
    real = np.stack([resize_area(np.asarray(obs[CAMERA]), spec.image_size) for obs in observations])
    return RolloutVideo(real=real, imagined=np.asarray(imagined), sim_steps=result["sim_steps"])


def write_gif(path: str, frames: np.ndarray, fps: int = FPS) -> None:
    """An animated, looping GIF of ``frames (T, H, W, 3)`` uint8, written atomically (PIL merges repeated frames
    into one longer frame)."""
    images = [Image.fromarray(frame) for frame in frames]
    atomic_write(path, lambda f: images[0].save(f, format="GIF", save_all=True, append_images=images[1:],
                                                duration=round(1000 / fps), loop=0))


def write_task_videos(spec: EvalSpec, schedule: DDPMSchedule, task: str, policies: dict[str, tuple[dict, dict]],
                      logger: MetricLogger, directory: str, **evaluation) -> int:
    """Each policy's (``name -> (actor_pre, actor_ft)``) video from the task's first evaluation start, to TensorBoard
    (tag ``video/<task>/<name>``) and ``<directory>/<task>_<name>.gif``; returns the simulator steps used.
    ``evaluation``: key, env, world_model, stats, starts as for ``rollout_video``."""
    sim_steps = 0
    for name, (actor_pre, actor_ft) in policies.items():
        video = rollout_video(spec, schedule, task, actor_pre, actor_ft, **evaluation)
        frames = video.frames()
        logger.video(0, f"video/{task}/{name}", frames, fps=FPS)
        write_gif(os.path.join(directory, f"{task}_{name}.gif"), frames)
        sim_steps += video.sim_steps
    return sim_steps
