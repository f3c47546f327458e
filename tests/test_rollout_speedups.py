"""Each speed-up of the imagined rollout (issue 7) against the plain computation it replaces.

* Mish as ``x n / (n + 2)``, ``n = e^x (e^x + 2)`` (policy/layers.py) against ``jax.nn.mish``: values, gradients.
* The inverse-CDF categorical sampler (world_model/rssm.py) against the softmax probabilities (the distribution of
  ``jax.random.categorical``), with one-hot values and straight-through gradients.
* The chain sampler with the cond's and the time's shares of the first layer hoisted out of the denoising loop and
  every step's noise drawn at once (policy/sampling.py), against a float64 numpy loop over the steps with the
  concatenated first layer and each step's noise drawn from ``fold_in(step_key, t)`` at that step.
* Chain and transition log-probs with tabulated time shares against the same numpy denoiser.

Reusing the sampler's log-probs in the rollout instead of a second pass is checked in tests/test_imagine.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diwa_jax.policy.layers import mish
from diwa_jax.policy.sampling import chain_logprob, transition_logprob
from diwa_jax.world_model.rssm import sample_onehot
from tests.test_policy_sampling import A, K, K_FT, SCHEDULE, TA, _np, nets, np_mean, sample  # noqa: F401 (fixture)


def test_mish_equals_jax_nn_mish():
    x = jnp.concatenate([jnp.linspace(-100.0, 100.0, 20_001), jnp.array([-1e-30, 0.0, 19.99, 20.0, 20.01, 1e30])])
    np.testing.assert_allclose(mish(x), jax.nn.mish(x), rtol=2e-6, atol=1e-30)
    grad = jax.vmap(jax.grad(mish))(x)
    np.testing.assert_allclose(grad, jax.vmap(jax.grad(jax.nn.mish))(x), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(grad))


def test_inverse_cdf_sampler_has_the_softmax_distribution():
    rng = np.random.default_rng(0)
    logits = np.concatenate([rng.normal(0.0, 2.0, 30), [-1e9, 6.0]]).astype(np.float32)  # one impossible class
    temperature, draws = 1.5, 200_000
    keys = jax.random.split(jax.random.key(0), draws // 1000)
    samples = jax.jit(jax.vmap(lambda k: sample_onehot(jnp.broadcast_to(logits, (1000, 32)), k, temperature)))(keys)
    samples = np.asarray(samples).reshape(-1, 32)
    assert set(np.unique(samples)) == {0.0, 1.0} and np.all(samples.sum(-1) == 1.0)
    counts = samples.sum(0)
    probs = np.asarray(jax.nn.softmax(logits / temperature))
    assert counts[30] == 0
    # every class within 4.5 binomial standard deviations, and a chi-square test over the likely classes
    np.testing.assert_array_less(np.abs(counts - draws * probs), 4.5 * np.sqrt(draws * probs * (1 - probs)) + 1)
    likely = probs * draws > 20
    chi2 = np.sum((counts[likely] - draws * probs[likely]) ** 2 / (draws * probs[likely]))
    assert chi2 < likely.sum() + 5 * np.sqrt(2 * likely.sum())
    # independent blocks: each row's 4 blocks of a batched draw land on different classes often enough
    block_draws = np.asarray(sample_onehot(jnp.zeros((500, 4, 32)), jax.random.key(1), 1.0)).argmax(-1)
    assert np.mean(block_draws[:, 0] == block_draws[:, 1]) < 0.1


def test_inverse_cdf_sampler_gradient_is_the_softmax_gradient():
    logits = jax.random.normal(jax.random.key(2), (3, 4, 5))
    weights = jax.random.normal(jax.random.key(3), (3, 4, 5))
    grad = jax.grad(lambda x: jnp.sum(weights * sample_onehot(x, jax.random.key(4), 0.7)))(logits)
    expected = jax.grad(lambda x: jnp.sum(weights * jax.nn.softmax(x / 0.7)))(logits)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def _plain_chain(params_pre, params_ft, cond, key, min_std, randn_clip):
    """The reverse process step by step in float64: per-row time embedding through the concatenated first layer,
    each step's noise drawn at that step. Returns the kept chain [x_K', ..., x_0] and its log-densities."""
    init_key, step_key = jax.random.split(key)
    batch = cond.shape[0]
    x = np.asarray(jax.random.normal(init_key, (batch, TA, A)), np.float64)
    ddpm_std = np.asarray(SCHEDULE.ddpm_std, np.float64)
    chain, logprobs = [x] if K_FT == K else [], []
    for t in range(K - 1, -1, -1):
        mu = np_mean(_np(params_ft if t < K_FT else params_pre), x, np.full(batch, t), np.asarray(cond, np.float64))
        noise = np.asarray(jax.random.normal(jax.random.fold_in(step_key, t), (batch, TA, A)), np.float64)
        x = mu + max(ddpm_std[t], min_std) * np.clip(noise, -randn_clip, randn_clip)
        if t < K_FT:
            std = max(ddpm_std[t], 0.1)
            logprobs.append(-0.5 * ((x - mu) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi))
        if t <= K_FT:
            chain.append(x)
    return np.stack(chain, 1), np.stack(logprobs, 1)


def test_hoisted_sampler_equals_the_plain_step_loop(nets):  # noqa: F811
    params_pre, params_ft, cond = nets
    key = jax.random.key(5)
    x0, chain, logprob = sample(params_pre, params_ft, SCHEDULE, cond, key, chunk_shape=(TA, A), ft_steps=K_FT,
                                min_std=0.1, randn_clip=3.0, denoised_clip=1.0, logprob_min_std=0.1)
    expected_chain, expected_logprob = _plain_chain(params_pre, params_ft, cond, key, 0.1, 3.0)
    np.testing.assert_allclose(chain, expected_chain, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(x0, chain[:, -1])
    # a log-density amplifies the mean's float32 rounding by |x - mu| / std^2 (up to 3 / 0.1)
    np.testing.assert_allclose(logprob, expected_logprob, rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("clamp", [None, (-5.0, 2.0)])
def test_tabulated_time_shares_equal_per_row_log_probs(nets, clamp):  # noqa: F811
    _, params_ft, cond = nets
    chain = jax.random.normal(jax.random.key(6), (cond.shape[0], K_FT + 1, TA, A))
    got = chain_logprob(params_ft, SCHEDULE, cond, chain, ft_steps=K_FT, min_logprob_std=0.1, denoised_clip=1.0,
                        clamp=clamp)
    p, c, ch = _np(params_ft), np.asarray(cond, np.float64), np.asarray(chain, np.float64)
    ddpm_std = np.asarray(SCHEDULE.ddpm_std, np.float64)
    for j in range(K_FT):
        t = K_FT - 1 - j
        mu, std = np_mean(p, ch[:, j], np.full(len(c), t), c), max(ddpm_std[t], 0.1)
        expected = -0.5 * ((ch[:, j + 1] - mu) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
        expected = expected if clamp is None else np.clip(expected, *clamp)
        np.testing.assert_allclose(got[:, j], expected, rtol=1e-4, atol=1e-3, err_msg=f"step {t}")
    # rows at mixed steps: the same numbers, row by row
    steps = jnp.asarray(np.random.default_rng(0).integers(0, K_FT, cond.shape[0]))
    rows = jnp.arange(cond.shape[0])
    by_row = transition_logprob(params_ft, SCHEDULE, cond, chain[rows, K_FT - 1 - steps], chain[rows, K_FT - steps],
                                steps, min_logprob_std=0.1, denoised_clip=1.0, clamp=clamp)
    np.testing.assert_allclose(by_row, got[rows, K_FT - 1 - steps], rtol=1e-5, atol=1e-5)
