"""Closed-loop evaluation of a diffusion policy in a simulator (spec section 7).

Start states: the task's fixed start lists (``diwa_jax/stages/start_lists.py``). An episode resets the simulator to a start state and encodes
its first frame with a reset posterior step (zero action, gripper open). Then it repeats: sample an
action chunk from the latent (``eval.deterministic``: the "deterministic" DDPM mode), execute its first
``policy.act_steps`` actions with the gripper binarised, and after each simulator step filter the new
frame with the action that produced it. Without ``eval.filter_every_frame`` only the chunk's last frame
is observed and the frames before it are predicted by the prior (our 7-D-action world model's
equivalent of the post-paper single observation per chunk). The episode ends on oracle success (start
scene vs now) or after ``eval.max_steps`` simulator steps.

The world-model steps and the sampler are jitted once (module-level, keyed on static sizes), so
repeated evaluations reuse the compiled programs; the Python loop only drives the simulator.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import numpy as np

from diwa_jax.data.batching import RESET_ACTION
from diwa_jax.data.preprocess import NormStats, resize_area, robot_obs_to_proprio, scene_obs_to_state
from diwa_jax.envs import protocol as P
from diwa_jax.envs.oracle import success_all_np, task_index
from diwa_jax.policy.sampling import sample_chain
from diwa_jax.policy.schedule import DDPMSchedule
from diwa_jax.types import Latent
from diwa_jax.world_model import model


def wm_observation(obs: dict, stats: NormStats, image_size: int = 64) -> dict:
    """A simulator observation as the world model reads it, exactly as the data cache stores frames: both
    cameras area-resized to ``image_size``, proprio (18) and state (51) min-max normalised with ``stats``."""
    proprio = robot_obs_to_proprio(obs["robot_obs"], stats.rot6d)
    state = np.concatenate([proprio, scene_obs_to_state(obs["scene_obs"], stats.rot6d)], axis=-1)
    return {
        "rgb_static": resize_area(np.asarray(obs["rgb_static"]), image_size),
        "rgb_gripper": resize_area(np.asarray(obs["rgb_gripper"]), image_size),
        "proprio": stats.normalize_proprio(proprio),
        "state": stats.normalize_state(state),
    }


def executed_action(action: np.ndarray) -> np.ndarray:
    """(7,) float64 sent to the simulator (and to the filter): the policy's action with the gripper binarised,
    >= 0 -> +1 (open), < 0 -> -1 (close) (spec 1.4)."""
    action = np.array(action, np.float64)
    action[6] = P.policy_gripper(action[6])
    return action


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """The static arguments of ``sample_chain`` for evaluation (hashable: one compiled sampler each)."""

    chunk_shape: tuple
    ft_steps: int
    min_std: float
    randn_clip: float
    denoised_clip: float
    deterministic: bool
    deterministic_min_std: float


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """How a closed-loop episode runs (hashable)."""

    sampler: SamplerSettings
    act_steps: int  # actions of each chunk executed
    max_steps: int  # simulator steps before an episode fails
    filter_every_frame: bool
    image_size: int  # the world model's camera size


@functools.partial(jax.jit, static_argnames="settings")
def sample_action_chunk(actor_pre: dict, actor_ft: dict, schedule: DDPMSchedule, feature: jax.Array, key: jax.Array,
                        chunk: jax.Array, *, settings: SamplerSettings) -> jax.Array:
    """One ``(Ta, A)`` chunk for ``feature (1, latent)``, noise from ``fold_in(key, chunk)``."""
    actions, _ = sample_chain(actor_pre, actor_ft, schedule, feature, jax.random.fold_in(key, chunk),
                              chunk_shape=settings.chunk_shape, ft_steps=settings.ft_steps,
                              min_std=settings.min_std, randn_clip=settings.randn_clip,
                              denoised_clip=settings.denoised_clip, deterministic=settings.deterministic,
                              deterministic_min_std=settings.deterministic_min_std)
    return actions[0]


@functools.partial(jax.jit, static_argnames="spec")
def filter_frame(params: dict, latent: Latent, action: jax.Array, obs: dict, reset: jax.Array, key: jax.Array,
                 frame: jax.Array, *, spec) -> Latent:
    """Posterior step on one unbatched frame ``obs`` reached by ``action (7,)``; ``latent`` has batch 1."""
    embed = model.encode(params, spec, jax.tree.map(lambda x: x[None], obs))
    post, _, _ = model.obs_step(params, spec, latent, action[None], embed, reset[None], jax.random.fold_in(key, frame))
    return post


def encode_observation(world_model: model.WorldModel, stats: NormStats, obs: dict, latent: Latent | None, action,
                       key: jax.Array, frame: int, image_size: int = 64) -> Latent:
    """Posterior latent (batch 1) of one simulator observation: an episode's first frame when ``latent`` is
    None (a reset step from the zero latent; pass ``RESET_ACTION``), else the frame ``action`` led to."""
    spec = world_model.spec
    wm_obs = {k: v for k, v in wm_observation(obs, stats, image_size).items() if k in spec.obs_keys}
    reset = latent is None
    latent = model.initial_latent(1, spec) if reset else latent
    return filter_frame(world_model.params, latent, np.asarray(action, np.float32), wm_obs, np.bool_(reset), key,
                        np.int32(frame), spec=spec)


@functools.partial(jax.jit, static_argnames="spec")
def predict_frame(params: dict, latent: Latent, action: jax.Array, key: jax.Array, frame: jax.Array, *,
                  spec) -> Latent:
    """Prior step for a frame that is not observed."""
    return model.img_step(params, spec, latent, action[None], jax.random.fold_in(key, frame))


@dataclasses.dataclass(frozen=True)
class ClosedLoop:
    """The models as host callables for one episode. ``frame`` counts simulator steps (0 = the reset frame).

    observe(latent | None, action (7,), obs, frame) -> latent   (None: the reset step of the first frame)
    predict(latent, action (7,), frame) -> latent
    act(latent, chunk index) -> (Ta, 7) actions
    """

    observe: Callable[[Any, np.ndarray, dict, int], Any]
    predict: Callable[[Any, np.ndarray, int], Any]
    act: Callable[[Any, int], np.ndarray]


def episode_keys(key: jax.Array, episode: int) -> tuple[jax.Array, jax.Array]:
    """``(world-model key, policy key)`` of evaluation episode ``episode`` under the evaluation ``key``."""
    obs_key, act_key = jax.random.split(jax.random.fold_in(key, episode))
    return obs_key, act_key


def run_episode(env, robot_obs: np.ndarray, scene_obs: np.ndarray, task: str, loop: ClosedLoop, *, act_steps: int,
                max_steps: int, filter_every_frame: bool = True,
                on_frame: Callable[[dict], None] | None = None) -> tuple[bool, int]:
    """One closed-loop episode from a start state: ``(success, simulator steps used)``.

    ``on_frame`` (optional) sees every simulator observation, the reset one first, without changing the episode
    (rollout videos record the frames this way instead of copying the loop)."""
    column = task_index(task)
    obs = env.reset(robot_obs=robot_obs, scene_obs=scene_obs)
    if on_frame is not None:
        on_frame(obs)
    start_scene = np.asarray(obs["scene_obs"], np.float64)
    latent = loop.observe(None, RESET_ACTION.astype(np.float64), obs, 0)
    steps, chunk = 0, 0
    while True:
        actions = np.asarray(loop.act(latent, chunk))
        chunk += 1
        for i in range(act_steps):
            action = executed_action(actions[i])
            obs, _ = env.step(action)
            steps += 1
            if on_frame is not None:
                on_frame(obs)
            if success_all_np(start_scene, np.asarray(obs["scene_obs"]))[column]:
                return True, steps
            if steps >= max_steps:
                return False, steps
            if filter_every_frame or i == act_steps - 1:
                latent = loop.observe(latent, action, obs, steps)
            else:
                latent = loop.predict(latent, action, steps)


def evaluate_policy(spec: EvalSpec, task: str, schedule: DDPMSchedule, actor_pre: dict, actor_ft: dict,
                    episodes: int | None = None, *, key: jax.Array, world_model: model.WorldModel, stats: NormStats,
                    starts: tuple, env, on_frame: Callable[[dict], None] | None = None) -> dict:
    """Success of the policy (``actor_pre`` for denoising steps >= ``spec.sampler.ft_steps``, ``actor_ft`` below)
    on ``task`` in the simulator ``env``.

    ``episodes``: how many of the start states to use (None: all of them). ``stats`` the training split's
    NormStats, ``starts = (robot_obs (E, 15), scene_obs (E, 24))``; episode e draws its noise from
    ``episode_keys(key, e)``. ``on_frame``: passed to every ``run_episode``. Returns success_rate, successes,
    episodes, mean_steps, sim_steps.
    """
    robot_starts, scene_starts = starts
    n = len(robot_starts) if episodes is None else min(int(episodes), len(robot_starts))
    if n == 0:
        raise ValueError(f"evaluate '{task}': no start states (the validation split has no window of the task); "
                         "collect more validation data (config.collect.val_frames) or drop the task")

    def loop_for(episode: int) -> ClosedLoop:
        obs_key, act_key = episode_keys(key, episode)

        def observe(latent, action, obs, frame):
            return encode_observation(world_model, stats, obs, latent, action, obs_key, frame, spec.image_size)

        def predict(latent, action, frame):
            return predict_frame(world_model.params, latent, np.asarray(action, np.float32), obs_key, np.int32(frame),
                                 spec=world_model.spec)

        def act(latent, chunk):
            return jax.device_get(sample_action_chunk(actor_pre, actor_ft, schedule, latent.feature(), act_key,
                                                      np.int32(chunk), settings=spec.sampler))

        return ClosedLoop(observe=observe, predict=predict, act=act)

    results = [run_episode(env, robot_starts[episode], scene_starts[episode], task, loop_for(episode),
                           act_steps=spec.act_steps, max_steps=spec.max_steps,
                           filter_every_frame=spec.filter_every_frame, on_frame=on_frame) for episode in range(n)]
    successes = sum(success for success, _ in results)
    sim_steps = sum(steps for _, steps in results)
    return {"success_rate": successes / n, "successes": int(successes), "episodes": n,
            "mean_steps": sim_steps / n, "sim_steps": int(sim_steps),
            "episode_success": [bool(success) for success, _ in results],
            "episode_steps": [int(steps) for _, steps in results]}
