"""Fine-tuning over many devices, many hosts and many seeds.

One mesh axis, ``data``, spans every device of every process. The imagined envs are split along it, and so
is everything indexed by env or by sample: the rollout, the PPO batch, the reward scaler's per-env returns.
Parameters, optimiser states, the start pool and PRNG keys are replicated. The sharded programs are the
single-device ones jitted with in/out shardings: XLA partitions the env/sample dimension and adds the
all-reduces (gradient means, advantage statistics, metrics). Threefry random numbers are partitionable (a
sharded draw equals the unsharded one), so a sharded run reproduces the single-device run: discrete outputs
exactly, floats up to the reassociation of cross-device sums.

Multi-host: call ``initialize`` in every process (launch.py does, from its flags) before anything touches a
device; ``make_mesh`` then spans all hosts' devices, and ``shard`` places host values identical in every
process onto the mesh (each process keeps its own slices).

Seed sweeps: ``sweep_seeds`` runs whole fine-tuning runs (state creation and iterations) vmapped over
seeds, the seed axis itself split over the mesh when one is given.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diwa_jax.errors import ConfigError
from diwa_jax.finetune import agent
from diwa_jax.finetune.imagine import EnvState, FrozenModels, Rollout, RolloutSpec, imagine_rollout
from diwa_jax.mesh import DATA_AXIS
from diwa_jax.types import Latent


def initialize(coordinator_address: str | None = None, num_processes: int = 1, process_id: int = 0,
               bind_address: str | None = None) -> bool:
    """Join a multi-process JAX run (``jax.distributed.initialize``); True if it did. One process and no address:
    nothing to do. ``coordinator_address`` is ``HOST:PORT`` of process 0, or ``auto``: the cluster (Cloud TPU pod,
    SLURM, ...) tells every process the address, the count and its id.

    Process 0 runs the coordinator service, which has no authentication: it listens on ``bind_address``
    (default: the coordinator address itself, so only that interface; JAX's own default is every interface)."""
    if coordinator_address == "auto":
        jax.distributed.initialize(coordinator_bind_address=bind_address)
        return True
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"distributed: --process_id={process_id} must lie in [0, --num_processes={num_processes})")
    if num_processes == 1:
        return False
    if not coordinator_address:
        raise ValueError(f"distributed: --num_processes={num_processes} needs --coordinator_address=HOST:PORT "
                         "(process 0's address, the same in every process) or --coordinator_address=auto")
    if ":" not in coordinator_address:
        raise ValueError(f"distributed: --coordinator_address={coordinator_address} must be HOST:PORT")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, coordinator_bind_address=bind_address or coordinator_address)
    return True


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``data`` over ``devices`` (default: every device of every process)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def split(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Array axis ``axis`` split over the mesh's ``data`` axis, the others replicated."""
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), DATA_AXIS))


def _check_divisible(n: int, mesh: Mesh, what: str) -> None:
    if n % mesh.size:
        raise ConfigError(f"distributed: {what} = {n} must be a multiple of the number of devices ({mesh.size}) "
                         "to split it over the 'data' mesh axis")


def env_shardings(mesh: Mesh, start_scene: bool = False) -> EnvState:
    """Every env field split along its leading (env) axis (``start_scene``: the envs carry one)."""
    envs = split(mesh)
    return EnvState(latent=Latent(deter=envs, stoch=envs), wm_steps=envs, first=envs, episode_return=envs,
                    start_scene=envs if start_scene else None)


def rollout_shardings(mesh: Mesh) -> Rollout:
    """Time-major rollout fields split along the env axis (axis 1); the final features along axis 0."""
    steps = split(mesh, axis=1)
    return Rollout(features=steps, chains=steps, logprobs=steps, rewards=steps, terminated=steps, truncated=steps,
                   firsts=steps, episode_returns=steps, final_features=split(mesh))


def state_shardings(state: agent.FinetuneState, mesh: Mesh) -> agent.FinetuneState:
    """Envs (where the state has imagined ones) and the reward scaler's per-env returns split, everything else
    replicated."""
    shardings = jax.tree.map(lambda _: replicated(mesh), state)
    env = None if state.env is None else env_shardings(mesh, state.env.start_scene is not None)
    return shardings.replace(env=env,
                             reward_scaler=shardings.reward_scaler.replace(running_return=split(mesh)))


def batch_shardings(mesh: Mesh) -> agent.PPOBatch:
    samples = split(mesh)
    return agent.PPOBatch(features=samples, chains=samples, old_logprobs=samples, advantages=samples,
                          returns=samples)


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def shard(tree: Any, shardings: Any) -> Any:
    """Place ``tree`` on the mesh with ``shardings`` (a matching tree, or one sharding for all leaves).

    Multi-host: every process passes the same values (e.g. computed from the same seed); each keeps the slices
    its devices hold. Typed PRNG keys travel as their key data."""
    if isinstance(shardings, NamedSharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    def put(x, sharding):
        if _is_key(x):
            data = jax.device_put(np.asarray(jax.random.key_data(x)), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.device_put(np.asarray(x), sharding)

    return jax.tree.map(put, tree, shardings)


def gather(tree: Any) -> Any:
    """Host numpy copies of (possibly multi-host) global arrays, the same in every process; typed PRNG keys as
    their key data."""
    tree = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


@dataclasses.dataclass(frozen=True)
class MeshProgram:
    """A jitted program traced under ``jax.set_mesh(mesh)``, so that ``diwa_jax.mesh.split_over_data`` marks
    inside it take effect; call it, or ``lower(*args).compile()`` it to time compilation apart."""

    mesh: Mesh
    jitted: Callable

    def __call__(self, *args):
        with jax.set_mesh(self.mesh):
            return self.jitted(*args)

    def lower(self, *args):
        with jax.set_mesh(self.mesh):
            return self.jitted.lower(*args)


def sharded_rollout(mesh: Mesh, spec: RolloutSpec) -> MeshProgram:
    """``(models, actor_ft, env, start_pool, key) -> (Rollout, EnvState)``: ``imagine_rollout`` with the envs
    split over ``mesh``."""
    rep, envs = replicated(mesh), env_shardings(mesh, spec.start_scene_dim > 0)
    return MeshProgram(mesh, jax.jit(functools.partial(imagine_rollout, spec=spec),
                                     in_shardings=(rep, rep, envs, rep, rep),
                                     out_shardings=(rollout_shardings(mesh), envs)))


def sharded_iteration(spec: agent.FinetuneSpec, mesh: Mesh, state: agent.FinetuneState) -> MeshProgram:
    """``(models, start_pool, state) -> (state, metrics)``: ``agent.make_iteration``'s program with the envs (so
    the rollout) and every PPO minibatch split over ``mesh``; ``state`` gives the state's structure."""
    _check_divisible(spec.n_envs, mesh, "config.ppo.n_envs")
    rep, states = replicated(mesh), state_shardings(state, mesh)
    return MeshProgram(mesh, jax.jit(functools.partial(agent.ppo_iteration, spec), in_shardings=(rep, rep, states),
                                     out_shardings=(states, rep)))


def sharded_learn(spec: agent.FinetuneSpec, mesh: Mesh, state: agent.FinetuneState) -> MeshProgram:
    """``(models, state, rollout) -> (state, metrics)``: ``agent.learn`` on a rollout collected outside the program
    (online fine-tuning's), with its envs and every PPO minibatch split over ``mesh``."""
    _check_divisible(spec.n_envs, mesh, "the number of simulators (config.online.envs)")
    rep, states = replicated(mesh), state_shardings(state, mesh)
    return MeshProgram(mesh, jax.jit(functools.partial(agent.learn, spec), in_shardings=(rep, states,
                                                                                      rollout_shardings(mesh)),
                                     out_shardings=(states, rep)))


def sharded_ppo_update(spec: agent.FinetuneSpec, mesh: Mesh, state: agent.FinetuneState) -> MeshProgram:
    """``(models, state, batch, key) -> (state, metrics)``: ``agent.ppo_update`` with the batch and every
    minibatch split over ``mesh``."""
    rep, states = replicated(mesh), state_shardings(state, mesh)
    return MeshProgram(mesh, jax.jit(functools.partial(agent.ppo_update, spec),
                                     in_shardings=(rep, states, batch_shardings(mesh), rep),
                                     out_shardings=(states, rep)))


def sweep_seeds(spec: agent.FinetuneSpec, models: FrozenModels, start_pool: Latent, seeds: Sequence[int], iterations: int,
                mesh: Mesh | None = None) -> tuple[agent.FinetuneState, dict]:
    """Whole fine-tuning runs, one per seed, vmapped: run s starts from ``create_finetune_state(key(seeds[s]))``
    and does ``iterations`` iterations. Returns the final states and every iteration's metrics, each with a
    leading seed axis (metrics ``(S, iterations)``). With ``mesh``, the seed axis is split over it: each device
    runs whole runs (no mesh context, so nothing inside a run is split further)."""
    seeds = jnp.asarray(seeds, jnp.uint32)
    run = jax.vmap(functools.partial(_finetune_run, spec, iterations), in_axes=(None, None, None, 0))
    if mesh is None:
        return jax.jit(run)(models, models.actor_pre, start_pool, seeds)
    _check_divisible(seeds.shape[0], mesh, "the number of seeds")
    rep, seed_axis = replicated(mesh), split(mesh)
    sharded = jax.jit(run, in_shardings=(rep, rep, rep, seed_axis), out_shardings=seed_axis)
    return sharded(*shard((models, models.actor_pre, start_pool), rep), shard(seeds, seed_axis))


def _finetune_run(spec: agent.FinetuneSpec, iterations: int, models: FrozenModels, actor_pre: dict,
                  start_pool: Latent, seed: jnp.ndarray) -> tuple[agent.FinetuneState, dict]:
    state = agent.create_finetune_state(spec, jax.random.key(seed), actor_pre, start_pool)
    return jax.lax.scan(lambda s, _: agent.ppo_iteration(spec, models, start_pool, s), state, None, length=iterations)
