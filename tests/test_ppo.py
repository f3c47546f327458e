"""DPPO losses (diwa_jax/finetune/ppo.py) against hand computations and a numpy reference."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diwa_jax import specs
from diwa_jax.finetune import ppo
from experiments.calvin import get_config

TA, ACT = 2, 7


def test_clip_schedule_values():
    clips = np.asarray(ppo.clip_schedule(10, 0.01, 0.001, 3.0))
    j = np.arange(10)
    expected = 0.001 + 0.009 * (np.exp(3.0 * j / 9) - 1) / (math.e**3 - 1)
    np.testing.assert_allclose(clips, expected, rtol=1e-5)
    assert clips[0] == pytest.approx(0.001) and clips[-1] == pytest.approx(0.01)
    assert np.all(np.diff(clips) > 0)
    np.testing.assert_allclose(ppo.clip_schedule(3, 0.01, 0.001, 0.0), [0.001, 0.0055, 0.01], rtol=1e-6)
    np.testing.assert_allclose(ppo.clip_schedule(1, 0.01, 0.001, 3.0), [0.01])


def test_denoising_discount_values():
    discount = np.asarray(ppo.denoising_discount(10, 0.99))
    np.testing.assert_allclose(discount, [0.99 ** (9 - j) for j in range(10)], rtol=1e-6)
    assert discount[0] == pytest.approx(0.99**9) and discount[-1] == 1.0


def _logp_with_ratio(ratios):
    """(B, K', Ta, A) new log-probs whose chunk mean is log(ratio), against old log-probs of 0."""
    ratios = np.asarray(ratios, np.float32)
    return jnp.asarray(np.broadcast_to(np.log(ratios)[..., None, None], ratios.shape + (TA, ACT)).copy())


def test_zero_advantage_gives_zero_policy_gradient():
    key_new, key_old = jax.random.split(jax.random.key(0))
    new = jax.random.normal(key_new, (4, 3, TA, ACT))
    old = jax.random.normal(key_old, (4, 3, TA, ACT))
    tables = (ppo.clip_schedule(3, 0.01, 0.001, 3.0), ppo.denoising_discount(3, 0.99))
    for norm_adv in (True, False):
        grad = jax.grad(lambda n: ppo.ppo_actor_loss(n, old, jnp.zeros(4), *tables, norm_adv=norm_adv)[0])(new)
        assert np.all(np.asarray(grad) == 0.0)


def test_clipping_engages_exactly_as_specified():
    clip_coefs = jnp.array([0.1, 0.2])
    discount = jnp.array([0.5, 1.0])
    advantages = jnp.array([1.0, -1.0, 2.0, -0.5])
    ratios = np.array([[1.3, 0.5],    # A > 0: r > 1+c clipped (no grad); r < 1-c keeps the gradient
                       [0.7, 1.5],    # A < 0: r < 1-c clipped (no grad); r > 1+c keeps the gradient
                       [1.05, 1.19],  # inside the band: gradient
                       [0.95, 0.79]])  # A < 0: inside; r < 1-0.2 clipped
    clipped = np.array([[1, 0], [1, 0], [0, 0], [0, 1]], bool)
    new, old = _logp_with_ratio(ratios), jnp.zeros((4, 2, TA, ACT))

    def loss_fn(n):
        return ppo.ppo_actor_loss(n, old, advantages, clip_coefs, discount, norm_adv=False)

    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(new)
    adv_rows = np.asarray(advantages)[:, None] * np.asarray(discount)[None, :]
    c = np.asarray(clip_coefs)[None, :]
    expected_loss = np.maximum(-adv_rows * ratios, -adv_rows * np.clip(ratios, 1 - c, 1 + c)).mean()
    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)
    rows = ratios.size
    expected_grad = np.where(clipped, 0.0, -adv_rows * ratios / rows / (TA * ACT))
    np.testing.assert_allclose(np.asarray(grad), np.broadcast_to(expected_grad[..., None, None], grad.shape),
                               rtol=1e-5, atol=1e-12)
    assert np.all(np.asarray(grad)[clipped] == 0.0) and np.all(np.asarray(grad)[~clipped] != 0.0)
    assert float(metrics["clipfrac"]) == pytest.approx(5 / 8)
    assert float(metrics["ratio_max"]) == pytest.approx(1.5, rel=1e-5)
    assert float(metrics["ratio_min"]) == pytest.approx(0.5, rel=1e-5)


def _numpy_reference(new, old, advantages, clips, discount, lo=-5.0, hi=2.0):
    new_r = np.clip(new, lo, hi).mean(axis=(-2, -1))
    old_r = np.clip(old, lo, hi).mean(axis=(-2, -1))
    adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    adv = adv[:, None] * discount[None, :]
    ratio = np.exp(new_r - old_r)
    loss = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - clips, 1 + clips)).mean()
    approx_kl = ((ratio - 1) - np.log(ratio)).mean()
    return loss, approx_kl


def _random_batch(seed, batch=5, ft_steps=3):
    rng = np.random.default_rng(seed)
    old = rng.normal(-1.0, 2.0, (batch, ft_steps, TA, ACT)).astype(np.float32)  # some elements beyond [-5, 2]
    new = (old + rng.normal(0.0, 0.05, old.shape)).astype(np.float32)
    advantages = rng.normal(size=batch).astype(np.float32)
    clips = np.asarray(ppo.clip_schedule(ft_steps, 0.01, 0.001, 3.0))
    discount = np.asarray(ppo.denoising_discount(ft_steps, 0.99))
    return new, old, advantages, clips, discount


def test_loss_and_approx_kl_match_numpy_reference():
    new, old, advantages, clips, discount = _random_batch(0)
    new[0, 0, 0, 0] = -7.0  # below the clamp: this element must get no gradient
    loss_fn = jax.jit(lambda n: ppo.ppo_actor_loss(n, old, advantages, clips, discount))
    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(new)
    expected_loss, expected_kl = _numpy_reference(new, old, advantages, clips, discount)
    assert float(loss) == pytest.approx(expected_loss, rel=1e-4, abs=1e-7)
    assert float(metrics["approx_kl"]) == pytest.approx(expected_kl, rel=1e-3, abs=1e-9)
    assert float(metrics["pg_loss"]) == pytest.approx(float(loss))
    assert float(grad[0, 0, 0, 0]) == 0.0


def test_minibatch_modes_agree_on_full_batch():
    new, old, advantages, clips, discount = _random_batch(1)
    batch, ft_steps = new.shape[:2]
    order = np.random.default_rng(2).permutation(batch * ft_steps)  # rows in any order
    sample_idx, step_idx = order // ft_steps, order % ft_steps

    def sample_mode(n):
        return ppo.ppo_actor_loss(n, old, advantages, clips, discount)

    def row_mode(n):
        return ppo.ppo_actor_loss_rows(n[sample_idx, step_idx], old[sample_idx, step_idx], advantages[sample_idx],
                                       jnp.asarray(step_idx), clips, discount)

    (loss_s, metrics_s), grad_s = jax.value_and_grad(sample_mode, has_aux=True)(new)
    (loss_r, metrics_r), grad_r = jax.value_and_grad(row_mode, has_aux=True)(new)
    # the loss is a mean of O(1) terms that nearly cancel: compare at float32 summation-order precision
    assert float(loss_s) == pytest.approx(float(loss_r), rel=1e-5, abs=1e-6)
    for name in metrics_s:
        assert float(metrics_s[name]) == pytest.approx(float(metrics_r[name]), rel=1e-4, abs=1e-6), name
    np.testing.assert_allclose(grad_s, grad_r, rtol=1e-4, atol=1e-10)
    assert np.abs(np.asarray(grad_s)).max() > 0


def test_value_bc_and_total_loss():
    values, returns = jnp.array([1.0, 2.0, 4.0]), jnp.array([0.0, 2.0, 1.0])
    assert float(ppo.value_loss(values, returns)) == pytest.approx(0.5 * (1 + 0 + 9) / 3)
    logp = jnp.full((2, 3, TA, ACT), -1.0).at[0, 0].set(-9.0)  # clamped to -5
    expected_bc = (1.0 * 5 + 5.0) / 6
    assert float(ppo.bc_loss(logp)) == pytest.approx(expected_bc)
    assert float(ppo.bc_loss(logp, logprob_clamp=None, logprob_reduce="sum")) == pytest.approx((9 + 5) * TA * ACT / 6)
    assert float(ppo.total_loss(1.0, 2.0, 3.0, vf_coef=0.5, alpha_bc=0.05)) == pytest.approx(1.0 + 1.0 + 0.15)


def test_logprob_options_from_config():
    config = get_config("tiny").ppo
    assert specs.logprob_options(config) == dict(logprob_clamp=(-5.0, 2.0), logprob_reduce="mean")
    config.clamp_logprob = False
    assert specs.logprob_options(config)["logprob_clamp"] is None


def test_minibatch_indices():
    key = jax.random.key(3)
    full = np.asarray(ppo.minibatch_indices(key, 1800, 7500))
    assert full.shape == (1, 1800) and np.array_equal(np.sort(full[0]), np.arange(1800))
    split = np.asarray(ppo.minibatch_indices(key, 18000, 7500))
    assert split.shape == (2, 7500) and len(np.unique(split)) == 15000 and split.max() < 18000
