"""PPO critic (finetune/networks.py) and optimisers with the critic warm-up gate (finetune/optim.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diwa_jax.finetune.networks import critic_value, init_critic
from diwa_jax.finetune.optim import actor_optimizer, critic_optimizer


def _mish(x):
    return x * np.tanh(np.log1p(np.exp(x)))


def test_critic_matches_numpy_forward():
    latent, dim = 12, 8
    params = init_critic(jax.random.key(0), latent, dim)
    p = jax.tree.map(np.asarray, params)
    bound = 1 / np.sqrt(latent)
    assert np.abs(p["input"]["w"]).max() <= bound and np.abs(p["input"]["b"]).max() <= bound
    assert p["output"]["w"].shape == (dim, 1)
    feature = np.random.default_rng(0).normal(size=(3, 5, latent)).astype(np.float32)  # time-major (T, N, F)
    h = feature @ p["input"]["w"] + p["input"]["b"]
    r = _mish(h) @ p["block_1"]["w"] + p["block_1"]["b"]
    h = h + _mish(r) @ p["block_2"]["w"] + p["block_2"]["b"]
    expected = (h @ p["output"]["w"] + p["output"]["b"])[..., 0]
    np.testing.assert_allclose(jax.jit(critic_value)(params, feature), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="12-D latent"):
        critic_value(params, feature[..., :5])


def test_actor_gate_freezes_updates_and_state_during_warmup():
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = {"w": jnp.array([0.5, 0.1, -0.2])}
    tx = actor_optimizer(1e-2, 0.0, critic_warmup=2)
    reference = optax.adamw(1e-2, weight_decay=0.0)

    @jax.jit
    def step(state, iteration):
        return tx.update(grads, state, params, iteration=iteration)

    state = tx.init(params)
    for itr in range(2):
        updates, state = step(state, jnp.asarray(itr))
        assert np.all(np.asarray(updates["w"]) == 0.0)
    ref_state = reference.init(params)
    for itr in range(2, 4):  # the first unmasked step is AdamW's first step: the moments saw nothing before
        updates, state = step(state, jnp.asarray(itr))
        ref_updates, ref_state = reference.update(grads, ref_state, params)
        np.testing.assert_allclose(updates["w"], ref_updates["w"], rtol=1e-6)


def test_actor_global_norm_clip_and_critic():
    params = {"w": jnp.zeros(2)}
    grads = {"w": jnp.array([6.0, 8.0])}  # norm 10
    tx = actor_optimizer(1e-3, 1.0, critic_warmup=0)
    _, state = tx.update(grads, tx.init(params), params, iteration=jnp.asarray(0))
    adam_state = state.inner_state[1][0]
    np.testing.assert_allclose(adam_state.mu["w"], 0.1 * np.array([0.6, 0.8]), rtol=1e-6)  # (1 - b1) * clipped grad
    critic = critic_optimizer(1e-3)
    updates, _ = critic.update(grads, critic.init(params), params)
    np.testing.assert_allclose(updates["w"], [-1e-3, -1e-3], rtol=1e-4)  # Adam's first step: -lr * sign
