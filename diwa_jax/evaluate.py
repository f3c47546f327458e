"""Closed-loop evaluation of a diffusion policy in a simulator (spec section 7), batched over episodes.

Start states: the task's fixed start lists (``diwa_jax/stages/start_lists.py``). An episode resets the simulator to a start state and encodes
its first frame with a reset posterior step (zero action, gripper open). Then it repeats: sample an
action chunk from the latent (``eval.deterministic``: the "deterministic" DDPM mode), execute its first
``policy.act_steps`` actions with the gripper binarised, and after each simulator step filter the new
frame with the action that produced it. Without ``eval.filter_every_frame`` only the chunk's last frame
is observed and the frames before it are predicted by the prior (our 7-D-action world model's
equivalent of the post-paper single observation per chunk). The episode ends on oracle success (start
scene vs now) or after ``eval.max_steps`` simulator steps; the frame it ends on is not filtered.

``evaluate_policy`` runs the episodes on the E simulators of a ``SimulatorBatch`` (``diwa_jax/envs/batch.py``):
each simulator holds one episode at a time and takes the next start as soon as its episode ends. Per round,
the simulators execute their chunks in parallel, then one jitted call (``filter_frames``) filters every
simulator's new frames (a scan over the chunk's steps, frames past an episode's end masked) and one
(``sample_chunks``) samples every simulator's next chunk. Episode e draws its noise from
``episode_keys(key, e)`` (world model: ``fold_in`` of the frame index; sampler: of the chunk index) whichever
simulator runs it, and both calls compute each episode with the shapes of E = 1, so its numbers are
bit-identical whatever E, the number of workers or the order the episodes are scheduled in.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from diwa_jax.data.batching import RESET_ACTION
from diwa_jax.data.preprocess import NormStats, wm_observation
from diwa_jax.envs import protocol as P
from diwa_jax.envs.batch import Reset, SimulatorBatch, Steps
from diwa_jax.policy.sampling import sample_chain
from diwa_jax.policy.schedule import DDPMSchedule
from diwa_jax.types import Latent
from diwa_jax.world_model import model


def executed_actions(actions: np.ndarray) -> np.ndarray:
    """``(..., 7)`` float64 sent to the simulator (and to the filter): the policy's actions with the gripper
    binarised, >= 0 -> +1 (open), < 0 -> -1 (close) (spec 1.4)."""
    actions = np.array(actions, np.float64)
    actions[..., 6] = P.policy_gripper(actions[..., 6])
    return actions


def observation_transform(world_model: model.WorldModel, stats: NormStats, image_size: int):
    """The picklable function a ``SimulatorBatch`` applies to each observation where it is made, for
    ``evaluate_policy``: the world model's inputs (``wm_observation``, only the keys this world model reads)."""
    return functools.partial(wm_observation, stats=stats, image_size=image_size, keys=world_model.spec.obs_keys)


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
    wm_obs = wm_observation(obs, stats, image_size, spec.obs_keys)
    reset = latent is None
    latent = model.initial_latent(1, spec) if reset else latent
    return filter_frame(world_model.params, latent, np.asarray(action, np.float32), wm_obs, np.bool_(reset), key,
                        np.int32(frame), spec=spec)


@functools.partial(jax.jit, static_argnames="spec")
def predict_frame(params: dict, latent: Latent, action: jax.Array, key: jax.Array, frame: jax.Array, *,
                  spec) -> Latent:
    """Prior step for a frame that is not observed."""
    return model.img_step(params, spec, latent, action[None], jax.random.fold_in(key, frame))


def episode_keys(key: jax.Array, episode) -> tuple[jax.Array, jax.Array]:
    """``(world-model key, policy key)`` of evaluation episode ``episode`` under the evaluation ``key``."""
    obs_key, act_key = jax.random.split(jax.random.fold_in(key, episode))
    return obs_key, act_key


@functools.partial(jax.jit, static_argnames=("spec", "filter_every_frame"))
def filter_frames(wm_params: dict, latent: Latent, frames: dict, actions: jax.Array, valid: jax.Array,
                  observed: jax.Array, reset: jax.Array, frame: jax.Array, key: jax.Array, episode: jax.Array, *, spec,
                  filter_every_frame: bool) -> Latent:
    """The world model's step of one round of E episodes: filter each episode's new frames in order.

    ``latent (E, 1, ...)``; ``frames {key: (E, T, ...)}`` the world model's inputs, ``actions (E, T, 7)`` the
    actions that led to them, ``valid``/``observed``/``reset`` ``(E, T)`` bool (frames past an episode's end
    are not valid and leave its latent alone; an unobserved frame is predicted by the prior), ``frame (E, T)``
    the frames' step indices, ``episode (E,)`` each simulator's episode (its key: ``episode_keys``).

    A ``lax.map`` over the episodes, not a ``vmap``: every episode is computed with the shapes of E = 1, so
    its latents are bit-identical whatever E is (XLA's batched kernels round differently), at no measured cost
    at the sizes evaluation runs."""

    def one_episode(inputs):
        latent, frames, actions, valid, observed, reset, frame, episode = inputs
        embed = model.encode(wm_params, spec, frames)  # the episode's frames at once: the embedding needs no latent
        obs_key, _ = episode_keys(key, episode)

        def one_frame(latent, inputs):
            embed, action, valid, observed, reset, frame = inputs
            frame_key = jax.random.fold_in(obs_key, frame)
            new, _, _ = model.obs_step(wm_params, spec, latent, action[None], embed[None], reset[None], frame_key)
            if not filter_every_frame:
                prior = model.img_step(wm_params, spec, latent, action[None], frame_key)
                new = jax.tree.map(lambda post, pri: jnp.where(observed, post, pri), new, prior)
            return jax.tree.map(lambda n, old: jnp.where(valid, n, old), new, latent), None

        return jax.lax.scan(one_frame, latent, (embed, actions, valid, observed, reset, frame))[0]

    return jax.lax.map(one_episode, (latent, frames, actions, valid, observed, reset, frame, episode))


@functools.partial(jax.jit, static_argnames="settings")
def sample_chunks(actor_pre: dict, actor_ft: dict, schedule: DDPMSchedule, latent: Latent, key: jax.Array,
                  episode: jax.Array, chunk: jax.Array, *, settings: SamplerSettings) -> jax.Array:
    """The policy's step of one round: each episode's next chunk ``(E, Ta, A)`` from its ``latent (E, 1, ...)``,
    noise from ``fold_in(policy key of episode_keys, chunk)``, as ``sample_action_chunk`` draws it; a ``lax.map``
    over the episodes, as in ``filter_frames``, so each chunk is bit-identical whatever E is."""

    def one_episode(inputs):
        latent, episode, chunk = inputs
        _, act_key = episode_keys(key, episode)
        return sample_action_chunk(actor_pre, actor_ft, schedule, latent.feature(), act_key, chunk, settings=settings)

    return jax.lax.map(one_episode, (latent, episode, chunk))


class ChunkFrames:
    """One round's inputs of ``filter_frames`` for E simulators and chunks of T steps, filled frame by frame."""

    def __init__(self, count: int, horizon: int, first: dict, filter_every_frame: bool):
        self.frames = {k: np.zeros((count, horizon, *np.shape(v)), np.asarray(v).dtype) for k, v in first.items()}
        self.actions = np.zeros((count, horizon, P.ACTION_DIM), np.float32)
        self.valid, self.observed, self.reset = (np.zeros((count, horizon), bool) for _ in range(3))
        self.frame = np.zeros((count, horizon), np.int32)
        self.horizon, self.filter_every_frame = horizon, filter_every_frame

    def reset_frame(self, s: int, obs: dict) -> None:
        """Simulator ``s`` starts an episode on ``obs``: a reset step with the reset action, frame 0."""
        self.add(s, 0, RESET_ACTION, obs, 0)
        self.reset[s, 0] = self.observed[s, 0] = True

    def add(self, s: int, i: int, action, obs: dict, frame: int) -> None:
        for k, v in obs.items():
            self.frames[k][s, i] = v
        self.actions[s, i], self.valid[s, i], self.frame[s, i] = action, True, frame
        self.observed[s, i] = self.filter_every_frame or i == self.horizon - 1

    def filter(self, world_model: model.WorldModel, latent: Latent, key: jax.Array, episode: np.ndarray) -> Latent:
        return filter_frames(world_model.params, latent, self.frames, self.actions, self.valid, self.observed,
                             self.reset, self.frame, key, episode.astype(np.int32), spec=world_model.spec,
                             filter_every_frame=self.filter_every_frame)


def initial_latents(count: int, spec: model.WorldModelSpec) -> Latent:
    """``(E, 1, ...)`` zero latents, one per simulator."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (count, *x.shape)), model.initial_latent(1, spec))


def first_latent(spec: EvalSpec, world_model: model.WorldModel, obs: dict, key: jax.Array, episode: int = 0) -> Latent:
    """Episode ``episode``'s first latent ``(1, ...)`` from its first observation ``obs`` (transformed), computed
    exactly as ``evaluate_policy`` with one simulator computes it."""
    step = ChunkFrames(1, spec.act_steps, obs, spec.filter_every_frame)
    step.reset_frame(0, obs)
    latent = step.filter(world_model, initial_latents(1, world_model.spec), key, np.array([episode]))
    return jax.tree.map(lambda x: x[0], latent)


def evaluate_policy(spec: EvalSpec, task: str, schedule: DDPMSchedule, actor_pre: dict, actor_ft: dict,
                    episodes: int | None = None, *, key: jax.Array, world_model: model.WorldModel, starts: tuple,
                    envs: SimulatorBatch, judge=None) -> dict:
    """Success of the policy (``actor_pre`` for denoising steps >= ``spec.sampler.ft_steps``, ``actor_ft`` below)
    on ``task`` in the simulators ``envs`` (their transform ``observation_transform`` of this world model).

    ``episodes``: how many of the start states to use (None: all of them); ``starts = (robot_obs (n, 15),
    scene_obs (n, 24))``, episode e from start e. Returns success_rate, successes, episodes, mean_steps,
    sim_steps and the per-episode episode_success / episode_steps. ``judge``: a function of the post-chunk
    latents ``(E, 1, ...)`` to bool ``(E,)`` (the reward classifier's verdict); given, the result adds
    episode_judged, whether it said yes on one of the episode's latents (all before the oracle's success,
    whose frame is not filtered).
    """
    robot_starts, scene_starts = starts
    n = len(robot_starts) if episodes is None else min(int(episodes), len(robot_starts))
    if n == 0:
        raise ValueError(f"evaluate '{task}': no start states (the validation split has no window of the task); "
                         "collect more validation data (config.collect.val_frames) or drop the task")
    count, horizon = envs.num_envs, spec.act_steps
    success, used, judged = np.zeros(n, bool), np.zeros(n, np.int64), np.zeros(n, bool)
    episode = np.full(count, -1)  # the episode each simulator runs (-1: none)
    steps, chunk = np.zeros(count, np.int64), np.zeros(count, np.int32)
    latent, chunks, started = initial_latents(count, world_model.spec), None, 0
    while True:
        commands = [None] * count
        for s in range(count):
            if episode[s] >= 0:
                budget = min(horizon, spec.max_steps - int(steps[s]))
                commands[s] = Steps(executed_actions(chunks[s, :budget]), task)
            elif started < n:
                episode[s], steps[s], chunk[s] = started, 0, 0
                commands[s] = Reset(robot_starts[started], scene_starts[started])
                started += 1
        if all(c is None for c in commands):
            break
        outcomes = envs.run(commands)
        first = next(o.observations[0] for o in outcomes if o is not None)
        step = ChunkFrames(count, horizon, first, spec.filter_every_frame)
        for s, (command, outcome) in enumerate(zip(commands, outcomes)):
            if isinstance(command, Reset):
                step.reset_frame(s, outcome.observations[0])
            elif isinstance(command, Steps):
                before = int(steps[s])
                steps[s] += len(outcome.observations)
                if outcome.success or steps[s] >= spec.max_steps:  # the episode ends on this frame: not filtered
                    success[episode[s]], used[episode[s]], episode[s] = outcome.success, steps[s], -1
                    continue
                for i, (action, obs) in enumerate(zip(command.actions, outcome.observations)):
                    step.add(s, i, action, obs, before + i + 1)
        if (episode < 0).all():
            continue
        running = np.maximum(episode, 0)
        latent = step.filter(world_model, latent, key, running)
        if judge is not None:
            live = episode >= 0
            judged[episode[live]] |= np.asarray(judge(latent))[live]
        chunks = np.asarray(sample_chunks(actor_pre, actor_ft, schedule, latent, key, running.astype(np.int32), chunk,
                                          settings=spec.sampler))
        chunk[episode >= 0] += 1
    successes = int(success.sum())
    return {"success_rate": successes / n, "successes": successes, "episodes": n,
            "mean_steps": float(used.sum()) / n, "sim_steps": int(used.sum()),
            "episode_success": success.tolist(), "episode_steps": used.tolist(),
            **({"episode_judged": judged.tolist()} if judge is not None else {})}
