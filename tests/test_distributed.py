"""Sharded fine-tuning (diwa_jax/distributed.py) on 8 fake CPU devices against the single-device programs: the
rollout and two PPO iterations agree (discrete outputs exactly, floats to reassociation), the work is really
split (per-device matmuls see 1/8 of the envs and of each minibatch), and vmapped seed sweeps equal separate
runs. tests/conftest.py provides the 8 devices (XLA_FLAGS, before JAX starts)."""
import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from diwa_jax import distributed as dist, specs
from diwa_jax.finetune import agent
from diwa_jax.finetune.imagine import imagine_rollout, init_env_state
from tests.test_imagine import tiny_config, tiny_models

DEVICES = 8
# 8 envs (one per device), actor updated from the first iteration, BC term on: every part of the update runs
PPO = dict(n_envs=DEVICES, critic_warmup=0, alpha_bc=0.05, update_epochs=2, batch_size=12)
DISCRETE = ("rewards", "terminated", "truncated", "firsts")


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() >= DEVICES, "tests/conftest.py must set --xla_force_host_platform_device_count=8"
    return dist.make_mesh(jax.devices()[:DEVICES])


def _assert_trees_close(actual, expected, rtol=1e-5, atol=1e-6):
    """Host copies leaf by leaf: floats to tolerance, integers, booleans and PRNG key data exactly."""
    actual, expected = dist.gather(actual), dist.gather(expected)
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)):
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))
        else:
            np.testing.assert_array_equal(a, e, err_msg=jax.tree_util.keystr(path))


def _flops(compiled) -> float:
    """XLA's FLOP count of a compiled program (per device for a sharded one)."""
    analysis = compiled.cost_analysis()
    return float((analysis[0] if isinstance(analysis, list) else analysis)["flops"])


def test_sharded_rollout_equals_single_device(mesh):
    models, actor_ft, pool = tiny_models("state")
    spec = specs.rollout_spec(tiny_config(**PPO))
    env = init_env_state(pool, DEVICES, jax.random.key(1))
    key = jax.random.key(2)
    single = imagine_rollout.lower(models, actor_ft, env, pool, key, spec=spec).compile()
    expected, expected_env = single(models, actor_ft, env, pool, key)

    rep = dist.replicated(mesh)
    args = (*dist.shard((models, actor_ft), rep), dist.shard(env, dist.env_shardings(mesh)), dist.shard(pool, rep),
            key)
    program = dist.sharded_rollout(mesh, spec).lower(*args).compile()
    rollout, env_after = program(*args)
    assert rollout.chains.sharding.spec == PartitionSpec(None, "data")
    assert len(rollout.chains.sharding.device_set) == DEVICES
    for name in DISCRETE:
        np.testing.assert_array_equal(getattr(rollout, name), getattr(expected, name), err_msg=name)
    _assert_trees_close((rollout, env_after), (expected, expected_env))
    assert 0 < np.sum(expected.terminated) < expected.terminated.size  # not a degenerate case
    # each device runs its own env: an eighth of the work
    assert _flops(program) < 0.2 * _flops(single), (_flops(program), _flops(single))


@functools.lru_cache(maxsize=None)
def single_device_iteration():
    """(config, models, pool, initial state, the compiled single-device iteration(models, pool, state))."""
    config = tiny_config(**PPO)
    models, _, pool = tiny_models("state")
    state = agent.create_finetune_state(specs.finetune_spec(config, config.tasks[0]), jax.random.key(7), models.actor_pre, pool)
    compiled = agent.ppo_iteration.lower(specs.finetune_spec(config, config.tasks[0]), models, pool, state).compile()
    return config, models, pool, state, compiled


def test_sharded_iterations_equal_single_device(mesh):
    config, models, pool, state0, single = single_device_iteration()
    rep = dist.replicated(mesh)
    sharded_args = dist.shard((models, pool), rep)
    expected, state = state0, dist.shard(state0, dist.state_shardings(state0, mesh))
    program = dist.sharded_iteration(specs.finetune_spec(config, config.tasks[0]), mesh, state0).lower(*sharded_args, state).compile()
    for _ in range(2):
        expected, expected_metrics = single(models, pool, expected)
        state, metrics = program(*sharded_args, state)
        assert float(metrics["updates"]) == float(expected_metrics["updates"]) > 0
        assert float(metrics["episodes"]) == float(expected_metrics["episodes"])
        _assert_trees_close(metrics, expected_metrics, rtol=1e-4, atol=1e-6)
    assert state.env.latent.deter.sharding.spec == PartitionSpec("data")
    assert state.actor["output"]["w"].sharding.is_fully_replicated
    np.testing.assert_array_equal(state.env.first, expected.env.first)
    np.testing.assert_array_equal(state.env.wm_steps, expected.env.wm_steps)
    _assert_trees_close(state, expected, rtol=1e-4, atol=1e-6)
    assert not np.allclose(expected.actor["output"]["w"], state0.actor["output"]["w"])  # the actor did move
    # the PPO minibatches are split too, not only the rollout: each device does about an eighth of the work
    # (0.25 with padding, replicated optimiser steps and the all-reduces; above 0.6 with only the rollout split)
    assert _flops(program) < 0.35 * _flops(single), (_flops(program), _flops(single))


def test_seed_sweep_equals_separate_runs():
    config, models, pool, _, iteration = single_device_iteration()
    seeds, iterations = (3, 11), 2
    expected = []
    for seed in seeds:
        state = agent.create_finetune_state(specs.finetune_spec(config, config.tasks[0]), jax.random.key(seed), models.actor_pre, pool)
        history = []
        for _ in range(iterations):
            state, metrics = iteration(models, pool, state)
            history.append(metrics)
        expected.append((state, jax.tree.map(lambda *m: np.stack(m), *history)))
    # the seed axis split over 2 devices
    states, metrics = dist.sweep_seeds(specs.finetune_spec(config, config.tasks[0]), models, pool, seeds, iterations, mesh=dist.make_mesh(jax.devices()[:2]))
    assert metrics["loss"].shape == (len(seeds), iterations)
    for s, (state, history) in enumerate(expected):
        _assert_trees_close(jax.tree.map(lambda x: x[s], (states, metrics)), (state, history), rtol=1e-4, atol=1e-6)
    assert not np.allclose(metrics["loss"][0], metrics["loss"][1])  # the seeds really differ


def test_bad_mesh_and_process_arguments_are_named():
    config = tiny_config(n_envs=4)
    models, _, pool = tiny_models("state")
    state = agent.create_finetune_state(specs.finetune_spec(config, config.tasks[0]), jax.random.key(0), models.actor_pre, pool)
    with pytest.raises(ValueError, match=r"config.ppo.n_envs = 4 must be a multiple of the number of devices \(8\)"):
        dist.sharded_iteration(specs.finetune_spec(config, config.tasks[0]), dist.make_mesh(jax.devices()[:DEVICES]), state)
    with pytest.raises(ValueError, match="--coordinator_address"):
        dist.initialize(None, num_processes=2, process_id=0)
    with pytest.raises(ValueError, match=r"--process_id=2 must lie in \[0, --num_processes=2\)"):
        dist.initialize("127.0.0.1:1234", num_processes=2, process_id=2)
    assert dist.initialize(None, num_processes=1, process_id=0) is False
