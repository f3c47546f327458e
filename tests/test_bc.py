"""BC pre-training: loss, per-epoch learning-rate schedule, EMA rule."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diwa_jax.policy.bc import (
    BCBatch,
    BCSpec,
    bc_epoch_learning_rate,
    bc_learning_rate,
    bc_loss,
    create_bc_state,
    make_bc_update,
)
from diwa_jax.policy.denoiser import DenoiserSpec
from diwa_jax.policy.schedule import make_schedule

COND = 8


def policy_cfg(**overrides):
    cfg = dict(lr=1e-4, min_lr=1e-5, weight_decay=1e-6, warmup_epochs=100, cosine_epochs=10_000, ema_decay=0.995,
               ema_every=10, ema_start=20)
    cfg.update(overrides)
    return BCSpec(denoiser=DenoiserSpec(horizon=4, action_dim=7, time_dim=8, mlp_dim=32), **cfg)


def toy_batch(n=32):
    cond = jax.random.normal(jax.random.key(0), (n, COND))
    proj = jax.random.normal(jax.random.key(1), (COND, 4 * 7)) / math.sqrt(COND)
    return BCBatch(cond=cond, actions=jnp.tanh(cond @ proj).reshape(n, 4, 7))


def test_lr_schedule_matches_hand_values():
    cfg = policy_cfg()  # the paper's numbers
    per_epoch = bc_epoch_learning_rate(cfg)
    cosine = lambda epoch: 1e-5 + 9e-5 * 0.5 * (1 + math.cos(math.pi * (epoch - 100) / 9900))
    expected = {0: 1e-5, 50: 5.5e-5, 99: 1e-5 + 9e-5 * 0.99, 100: 1e-4, 2575: cosine(2575), 5000: cosine(5000),
                5050: 5.5e-5, 10_000: 1e-5}
    for epoch, lr in expected.items():
        assert float(per_epoch(epoch)) == pytest.approx(lr, rel=1e-5), epoch
    per_step = bc_learning_rate(cfg, steps_per_epoch=12)
    assert float(per_step(50 * 12)) == pytest.approx(5.5e-5, rel=1e-5)
    assert float(per_step(50 * 12 + 11)) == pytest.approx(5.5e-5, rel=1e-5)
    assert float(per_step(50 * 12 - 1)) == pytest.approx(1e-5 + 9e-5 * 0.49, rel=1e-5)
    with pytest.raises(ValueError, match="cosine_epochs"):
        bc_epoch_learning_rate(policy_cfg(cosine_epochs=100))


def test_first_adamw_step_uses_the_epoch_learning_rate():
    cfg = policy_cfg()
    schedule = make_schedule(6)
    state = create_bc_state(jax.random.key(2), cfg, COND, steps_per_epoch=3)
    new_state, metrics = make_bc_update(cfg, schedule, steps_per_epoch=3)(state, toy_batch())
    assert float(metrics["lr"]) == pytest.approx(1e-5)
    # Adam's first step is lr * sign(grad) (plus a 1e-6 * lr decay term): every moved weight moves by ~min_lr.
    deltas = np.concatenate([np.abs(np.asarray(a - b)).ravel()
                             for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(state.params))])
    assert deltas.max() <= 1e-5 * 1.01  # float32 rounding of the weights
    assert np.median(deltas) == pytest.approx(1e-5, rel=1e-2)


def test_bc_loss_falls_on_tiny_data():
    cfg = policy_cfg(lr=3e-3, min_lr=3e-3, warmup_epochs=0, cosine_epochs=10)
    schedule = make_schedule(6)
    batch = toy_batch()
    state = create_bc_state(jax.random.key(3), cfg, COND, steps_per_epoch=1)
    update = make_bc_update(cfg, schedule, steps_per_epoch=1)
    eval_keys = jax.random.split(jax.random.key(4), 16)
    eval_loss = jax.jit(lambda p: jnp.mean(jax.vmap(lambda k: bc_loss(p, schedule, batch.cond, batch.actions, k))(eval_keys)))
    before = float(eval_loss(state.params))
    for _ in range(300):
        state, _ = update(state, batch)
    after = float(eval_loss(state.params))
    assert int(state.step) == 300
    assert after < 0.5 * before, (before, after)


def test_ema_rule():
    spe, decay = 2, 0.9
    cfg = policy_cfg(ema_decay=decay, ema_every=2, ema_start=4, lr=1e-3, min_lr=1e-3, warmup_epochs=0)
    update = make_bc_update(cfg, make_schedule(6), steps_per_epoch=spe)
    state = create_bc_state(jax.random.key(5), cfg, COND, steps_per_epoch=spe)
    batch = toy_batch()
    expected = state.ema_params
    n_updates = 0
    for step in range(1, 21):
        previous = state.ema_params
        state, _ = update(state, batch)
        epoch = step // spe - 1
        if step % spe == 0 and epoch % 2 == 0:
            n_updates += 1
            if epoch < 4:
                expected = state.params
            else:
                expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, expected, state.params)
        else:  # untouched between EMA updates
            jax.tree.map(np.testing.assert_array_equal, state.ema_params, previous)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), state.ema_params, expected)
    assert n_updates == 5  # end of epochs 0, 2 (copies), 4, 6, 8 (averages)
    # After averaging has started the EMA lags the model.
    gap = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(state.params)))
    assert gap > 1e-4
