"""Online DPPO, the paper's baseline: fine-tuning's PPO with its rollouts collected in a simulator.

E simulators of a ``SimulatorBatch`` each run episodes of one task. The policy sees the frozen world model's
posterior latent of the frames (the paper's "WM encoder" variant), filtered exactly as evaluation filters
them (``evaluate.filter_frames``). One chunk step samples a denoising chain for every simulator's latent with
fine-tuning's stochastic sampler (``imagine.sample_policy``), executes the chunk's first ``act_steps`` actions
with the gripper binarised, and rewards 1 where the task oracle's success appears (the simulator stops there
and the episode terminates); an episode is truncated after ``episode_len`` simulator steps. A finished
episode's simulator is reset to the next start state and its first frame encoded in the same round.

The rollout is imagination's ``Rollout`` and the update is ``agent.learn``, the program offline fine-tuning
runs after its imagined rollout. Every iteration starts fresh episodes on all simulators, so the learner
state (``FinetuneState`` without imagined envs) is all an exact resume needs.

Keys: the iteration's rollout key (``split(state.key, 3)[0]``, as in imagination): ``fold_in(., 0)`` is the
world model's filter key (``evaluate.episode_keys`` of the episode's number within the iteration, then the
frame index), ``fold_in(., 1 + t)`` the policy noise of chunk step t (one draw for all simulators).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diwa_jax.envs.batch import Reset, SimulatorBatch, Steps
from diwa_jax.evaluate import ChunkFrames, executed_actions, initial_latents
from diwa_jax.finetune.agent import FinetuneSpec, FinetuneState, learn
from diwa_jax.finetune.imagine import FrozenModels, Rollout, RolloutSpec, sample_policy
from diwa_jax.types import Latent
from diwa_jax.world_model.model import WorldModel


@dataclasses.dataclass(frozen=True)
class OnlineSpec:
    """Static settings of an online iteration (hashable)."""

    finetune: FinetuneSpec  # n_envs: the simulators
    filter_every_frame: bool  # as evaluation: filter every executed frame, or only each chunk's last


@dataclasses.dataclass
class Collected:
    """What an online rollout asked of the simulators, counted on the host."""

    sim_steps: int = 0  # executed simulator steps
    resets: int = 0  # episodes started


@functools.partial(jax.jit, static_argnames="spec")
def _act(models: FrozenModels, actor_ft: dict, latent: Latent, key: jax.Array, *, spec: RolloutSpec):
    feature = latent.feature()[:, 0]  # (E, 1, F) -> (E, F)
    chunk, chain, logprob = sample_policy(models, actor_ft, spec, feature, key)
    return feature, chunk, chain, logprob


learn_jit = jax.jit(learn, static_argnums=0)  # the update of an iteration, one program per spec


def collect_rollout(spec: OnlineSpec, models: FrozenModels, world_model: WorldModel, actor_ft: dict, key: jax.Array, *,
                    task: str, envs: SimulatorBatch, next_start: Callable[[], tuple[np.ndarray, np.ndarray]]
                    ) -> tuple[Rollout, Collected]:
    """``spec.finetune.rollout.n_steps`` chunk steps of every simulator of ``envs`` (whose observations pass through
    ``evaluate.observation_transform`` of ``world_model``), each starting a fresh episode from ``next_start()``
    (``(robot_obs, scene_obs)``, called once per episode in simulator order). Returns the time-major rollout
    (host arrays) and the counts."""
    r = spec.finetune.rollout
    count = envs.num_envs
    if count != spec.finetune.n_envs:
        raise ValueError(f"online rollout: {count} simulators for a spec of {spec.finetune.n_envs}")
    filter_key = jax.random.fold_in(key, 0)
    counts = Collected()
    episode = np.zeros(count, np.int32)  # each simulator's episode number within this rollout
    steps = np.zeros(count, np.int64)  # simulator steps of its current episode
    episode_return = np.zeros(count, np.float32)

    def reset(which: np.ndarray) -> list:
        return envs.run([Reset(*next_start()) if w else None for w in which])

    def add_resets(frames: ChunkFrames, resets: list) -> None:
        for s, outcome in enumerate(resets):
            if outcome is not None:
                frames.reset_frame(s, outcome.observations[0])
                episode[s], steps[s] = counts.resets, 0
                counts.resets += 1

    resets = reset(np.ones(count, bool))
    frames = ChunkFrames(count, r.act_steps, resets[0].observations[0], spec.filter_every_frame)
    add_resets(frames, resets)
    latent = frames.filter(world_model, initial_latents(count, world_model.spec), filter_key, episode)
    first = np.ones(count, bool)
    record = {name: [] for name in ("features", "chains", "logprobs", "rewards", "terminated", "truncated", "firsts",
                                    "episode_returns")}
    for t in range(r.n_steps):
        feature, chunk, chain, logprob = _act(models, actor_ft, latent, jax.random.fold_in(key, 1 + t), spec=r)
        chunk = np.asarray(chunk)
        commands = [Steps(executed_actions(chunk[s, :min(r.act_steps, r.episode_len - int(steps[s]))]), task)
                    for s in range(count)]
        outcomes = envs.run(commands)
        executed = np.array([len(o.observations) for o in outcomes])
        success = np.array([o.success for o in outcomes])
        counts.sim_steps += int(executed.sum())
        before = steps.copy()
        steps += executed
        truncated = ~success & (steps >= r.episode_len)
        done = success | truncated
        reward = success.astype(np.float32)
        episode_return += reward
        for name, value in (("features", feature), ("chains", chain), ("logprobs", logprob), ("rewards", reward),
                            ("terminated", success), ("truncated", truncated), ("firsts", first.copy()),
                            ("episode_returns", np.where(done, episode_return, 0.0).astype(np.float32))):
            record[name].append(np.asarray(value))
        episode_return[done] = 0.0
        frames = ChunkFrames(count, r.act_steps, outcomes[0].observations[0], spec.filter_every_frame)
        if done.any():
            add_resets(frames, reset(done))
        for s in np.flatnonzero(~done):
            for i, (action, obs) in enumerate(zip(commands[s].actions, outcomes[s].observations)):
                frames.add(s, i, action, obs, int(before[s]) + i + 1)
        latent = frames.filter(world_model, latent, filter_key, episode)
        first = done
    rollout = Rollout(**{name: np.stack(values) for name, values in record.items()},
                      final_features=np.asarray(latent.feature()[:, 0]))
    return rollout, counts


def online_iteration(spec: OnlineSpec, models: FrozenModels, world_model: WorldModel, state: FinetuneState, *,
                     task: str, envs: SimulatorBatch, next_start: Callable,
                     update: Callable[[FinetuneState, Rollout], tuple] | None = None
                     ) -> tuple[FinetuneState, dict, Collected]:
    """One online PPO iteration: a rollout in ``envs`` with ``state.actor``, then ``update(state, rollout)``
    (default: ``agent.learn`` on one device; ``distributed.sharded_learn`` splits it over a mesh). Metrics as
    offline fine-tuning's (device scalars; ``success_rate`` over the episodes that ended)."""
    rollout_key = jax.random.split(state.key, 3)[0]
    # the rollout runs on the default device whatever devices the learner's state lives on
    impl = jax.random.key_impl(rollout_key)
    actor, key_data = jax.device_get((state.actor, jax.random.key_data(rollout_key)))
    rollout, counts = collect_rollout(spec, models, world_model, actor, jax.random.wrap_key_data(key_data, impl=impl),
                                      task=task, envs=envs, next_start=next_start)
    if update is None:
        state, metrics = learn_jit(spec.finetune, models, state, jax.tree.map(jnp.asarray, rollout))
    else:
        state, metrics = update(state, rollout)
    return state, metrics, counts
