"""The jitted PPO iteration (diwa_jax/finetune/agent.py): finite metrics, critic warm-up gating the actor,
approx-KL early stop, the BC term (and its absence at alpha_bc = 0), the two minibatch modes on one batch,
and an interrupted, resumed fine-tuning run ending bitwise equal to an uninterrupted one."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diwa_jax import specs
from diwa_jax.checkpoint import Checkpointer
from diwa_jax.finetune import agent
from diwa_jax.training import run_loop
from tests.test_imagine import tiny_config, tiny_models

# critic warm-up of one iteration; 2 epochs of one full-batch minibatch (12 samples < batch 64)
MAIN = dict(alpha_bc=0.05, critic_warmup=1, update_epochs=2, batch_size=64)
# 36 (sample, denoising step) rows in minibatches of 12: up to 3 x 3 steps; a large actor step breaks a tiny KL target
EARLY_STOP = dict(alpha_bc=0.0, critic_warmup=0, update_epochs=3, batch_size=12, minibatch_mode="denoising_step",
                  target_kl=1e-6, actor_lr=1e-2)


@functools.lru_cache(maxsize=None)
def setup(**ppo):
    """(config, models, start pool, iteration, initial state); models as in test_imagine, actor_ft = actor_pre."""
    config = tiny_config(**ppo)
    models, _, pool = tiny_models()
    state = agent.create_finetune_state(specs.finetune_spec(config, config.tasks[0]), jax.random.key(7), models.actor_pre, pool)
    # committed to the device like a restored checkpoint, so resuming in-process reuses the compiled iteration
    state = jax.device_put(state, jax.devices()[0])
    return config, models, pool, agent.make_iteration(specs.finetune_spec(config, config.tasks[0]), models, pool), state


def as_numpy(tree):
    """Host copies of every leaf, typed PRNG keys as their key data."""
    is_key = lambda x: isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)  # noqa: E731
    return jax.tree.map(lambda x: np.asarray(jax.random.key_data(x) if is_key(x) else x), tree)


def leaves_equal(a, b) -> bool:
    a, b = jax.tree.leaves(as_numpy(a)), jax.tree.leaves(as_numpy(b))
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_actor_frozen_during_critic_warmup_then_updated():
    _, models, _, iteration, state0 = setup(**MAIN)
    state1, metrics1 = iteration(state0)
    with jax.transfer_guard("disallow"):  # compiled: the whole iteration runs without host transfers
        state2, metrics2 = iteration(state1)
        jax.block_until_ready((state2, metrics2))
    for metrics in (metrics1, metrics2):
        metrics = jax.device_get(metrics)
        assert all(np.isfinite(v) for v in metrics.values()), metrics
        assert metrics["updates"] == 2.0 and metrics["bc_loss"] != 0.0 and metrics["value_loss"] > 0
        assert 0.0 <= metrics["success_rate"] <= 1.0 and metrics["reward_scale_std"] > 0
    assert int(state1.step) == 1 and int(state2.step) == 2
    # iteration 0 < critic_warmup: the actor and its AdamW state untouched, the critic stepped twice
    assert leaves_equal(state1.actor, state0.actor)
    assert int(optax.tree.get(state1.actor_opt, "count")) == 0
    assert int(optax.tree.get(state1.critic_opt, "count")) == 2
    assert not leaves_equal(state1.critic, state0.critic)
    # iteration 1: the actor moves; AdamW starts from its first step
    assert not leaves_equal(state2.actor, state1.actor)
    assert int(optax.tree.get(state2.actor_opt, "count")) == 2
    # the frozen pre-trained params are not touched
    assert leaves_equal(models.actor_pre, tiny_models()[0].actor_pre) and leaves_equal(state0.actor, models.actor_pre)
    # collection continued the episodes and the reward scaler absorbed both iterations (12 returns each)
    assert float(state2.reward_scaler.count) == pytest.approx(24 + 1e-4)
    assert not leaves_equal(state2.env.latent, state0.env.latent)


def test_approx_kl_early_stop_masks_later_updates_and_alpha_bc_zero_runs():
    _, _, _, iteration, state0 = setup(**EARLY_STOP)
    state1, metrics = iteration(state0)
    metrics = jax.device_get(metrics)
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    # step 1 (ratio 1, KL ~ 0) and step 2 (KL > target, still applied) run; the other 7 of 9 are masked
    assert metrics["updates"] == 2.0 and metrics["approx_kl"] > 1e-6
    assert int(optax.tree.get(state1.actor_opt, "count")) == 2
    assert int(optax.tree.get(state1.critic_opt, "count")) == 2
    assert metrics["bc_loss"] == 0.0
    assert not leaves_equal(state1.actor, state0.actor)


def _count_loops(config, models, pool, state):
    spec = specs.finetune_spec(config, config.tasks[0])
    return agent.ppo_iteration.lower(spec, models, pool, state).as_text().count("stablehlo.while")


def test_alpha_bc_zero_compiles_without_the_frozen_policy_sampling():
    config, models, pool, _, state = setup(**EARLY_STOP)
    with_bc = tiny_config(**{**EARLY_STOP, "alpha_bc": 0.05})
    # sampling the frozen policy's chains adds scans (over steps t >= K' and t < K') to every minibatch step
    assert _count_loops(with_bc, models, pool, state) > _count_loops(config, models, pool, state)


def test_minibatch_modes_agree_on_the_full_batch():
    """Both modes give the same losses when one minibatch holds everything: rows index the same transitions."""
    config, models, _, _, state = setup(**MAIN)
    rng = np.random.default_rng(0)
    samples, ft_steps = 12, config.policy.ft_denoising_steps
    batch = agent.PPOBatch(
        features=jnp.asarray(rng.normal(size=(samples, state.env.latent.feature().shape[-1])), jnp.float32),
        chains=jnp.asarray(rng.normal(size=(samples, ft_steps + 1, 4, 7)), jnp.float32),
        old_logprobs=jnp.asarray(rng.normal(-1.0, 0.5, size=(samples, ft_steps, 4, 7)), jnp.float32),
        advantages=jnp.asarray(rng.normal(size=samples), jnp.float32),
        returns=jnp.asarray(rng.normal(size=samples), jnp.float32))
    spec = dataclasses.replace(specs.finetune_spec(config, config.tasks[0]), alpha_bc=0.0)
    row_spec = dataclasses.replace(spec, minibatch_mode="denoising_step")
    losses = jax.jit(agent._losses, static_argnums=0)
    key = jax.random.key(0)
    _, by_sample = losses(spec, models, state.actor, state.critic, batch, jnp.arange(samples), key)
    order = jnp.asarray(rng.permutation(samples * ft_steps))
    _, by_row = losses(row_spec, models, state.actor, state.critic, batch, order, key)
    for name in ("loss", "pg_loss", "value_loss", "approx_kl", "clipfrac"):
        assert float(by_row[name]) == pytest.approx(float(by_sample[name]), rel=1e-4, abs=1e-6), name
    assert float(by_sample["approx_kl"]) > 1e-3  # random old log-probs: the comparison is not trivial


def _finetune(directory, iterations, fail_at=None):
    """A few iterations through run_loop with checkpoints every 2 iterations; ``fail_at`` interrupts it."""
    config, _, _, iteration, state = setup(**MAIN)

    def no_batch(step):
        if step == fail_at:
            raise KeyboardInterrupt("simulated kill")
        return None

    with Checkpointer(directory, config=config.to_dict()) as checkpointer:
        return run_loop(name="finetune", state=state, update=lambda s, _: iteration(s), batch_fn=no_batch,
                        num_steps=iterations, checkpointer=checkpointer, log_every=1, ckpt_every=2,
                        show_progress=False)


def test_interrupted_and_resumed_run_is_bitwise_equal(tmp_path):
    straight = _finetune(str(tmp_path / "straight"), 4)
    with pytest.raises(KeyboardInterrupt):
        _finetune(str(tmp_path / "resumed"), 4, fail_at=3)  # iteration 3 done but not saved: redone
    with Checkpointer(str(tmp_path / "resumed")) as checkpointer:
        assert checkpointer.latest_step() == 2
    resumed = _finetune(str(tmp_path / "resumed"), 4)
    assert int(resumed.step) == 4
    flat_straight, flat_resumed = as_numpy(straight), as_numpy(resumed)
    assert jax.tree.structure(flat_straight) == jax.tree.structure(flat_resumed)
    for path, a, b in zip(jax.tree_util.tree_leaves_with_path(flat_straight), jax.tree.leaves(flat_straight),
                          jax.tree.leaves(flat_resumed)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path[0]))
    # the run did something: the actor moved after the warm-up, and the scaler saw every iteration
    assert not leaves_equal(straight.actor, setup(**MAIN)[4].actor)
    assert float(resumed.reward_scaler.count) == pytest.approx(4 * 12 + 1e-4)
