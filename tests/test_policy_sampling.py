"""Denoiser, chain sampling and chain log-probs against an independent float64 numpy implementation."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diwa_jax.policy.denoiser import (DenoiserSpec, cond_projection, denoise_eps, denoise_eps_from_projection,
                                      init_denoiser)
from diwa_jax.policy.sampling import bc_chain_logprob_loss, chain_logprob, sample_chain
from diwa_jax.policy.schedule import make_schedule

TA, A, COND, K, K_FT = 4, 7, 6, 20, 10
CFG = DenoiserSpec(horizon=TA, action_dim=A, time_dim=8, mlp_dim=16)
SCHEDULE = make_schedule(K)
COMMON = dict(chunk_shape=(TA, A), ft_steps=K_FT, denoised_clip=1.0)
SAMPLER_STATIC = ("chunk_shape", "ft_steps", "min_std", "randn_clip", "denoised_clip", "deterministic")
sample = jax.jit(sample_chain, static_argnames=SAMPLER_STATIC)


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _perturb(params, key, scale=0.3):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def nets():
    params_pre = jax.jit(lambda key: init_denoiser(key, CFG, COND))(jax.random.key(0))
    params_ft = jax.jit(_perturb)(params_pre, jax.random.key(1))
    cond = jax.random.normal(jax.random.key(2), (64, COND))
    return params_pre, params_ft, cond


def np_mish(x):
    return x * np.tanh(np.log1p(np.exp(x)))


def np_denoise(p, x, t, cond):
    """Plain form: one Linear over concat(flatten(x), time_emb, cond)."""
    half = p["time_1"]["w"].shape[0] // 2
    freqs = np.exp(np.arange(half) * -(math.log(10000.0) / (half - 1)))
    angles = np.asarray(t, np.float64)[:, None] * freqs[None]
    temb = np.concatenate([np.sin(angles), np.cos(angles)], -1)
    temb = np_mish(temb @ p["time_1"]["w"] + p["time_1"]["b"]) @ p["time_2"]["w"] + p["time_2"]["b"]
    w_in = np.concatenate([p["input"]["w_noisy"], p["input"]["w_time"], p["input"]["w_cond"]], 0)
    h = np.concatenate([x.reshape(len(x), -1), temb, cond], -1) @ w_in + p["input"]["b"]
    r = np_mish(np_mish(h) @ p["res_1"]["w"] + p["res_1"]["b"]) @ p["res_2"]["w"] + p["res_2"]["b"]
    return ((h + r) @ p["output"]["w"] + p["output"]["b"]).reshape(x.shape)


def np_mean(p, x, t, cond, clip=1.0):
    s = _np(SCHEDULE)
    t = np.asarray(t)
    eps = np_denoise(p, x, t, cond)
    col = lambda table: table[t][:, None, None]
    x0 = np.clip(col(s.sqrt_recip_acp) * x - col(s.sqrt_recipm1_acp) * eps, -clip, clip)
    return col(s.mu_c1) * x0 + col(s.mu_c2) * x


def recovered_noise(params_pre, params_ft, cond, chain, std_rule):
    """(x_t - mu) / std of every fine-tuned transition, with mu recomputed in numpy: (K_FT, B, Ta, A)."""
    p_ft, c, ch = _np(params_ft), np.asarray(cond, np.float64), np.asarray(chain, np.float64)
    out = []
    for j in range(K_FT):
        t = K_FT - 1 - j
        mu = np_mean(p_ft, ch[:, j], np.full(len(c), t), c)
        out.append((ch[:, j + 1] - mu) / std_rule(t))
    return np.stack(out)


def test_split_projection_denoiser_equals_plain_numpy(nets):
    params, _, cond = nets
    x = jax.random.normal(jax.random.key(3), (64, TA, A))
    t = jax.random.randint(jax.random.key(4), (64,), 0, K)
    expected = np_denoise(_np(params), np.asarray(x, np.float64), np.asarray(t), np.asarray(cond, np.float64))
    np.testing.assert_allclose(denoise_eps(params, x, t, cond), expected, rtol=1e-4, atol=1e-5)
    # Scalar step, projection computed once and reused: same values as the per-sample path.
    proj = cond_projection(params, cond)
    np.testing.assert_allclose(
        denoise_eps_from_projection(params, x, jnp.int32(7), proj),
        np_denoise(_np(params), np.asarray(x, np.float64), np.full(64, 7), np.asarray(cond, np.float64)),
        rtol=1e-4, atol=1e-5,
    )


@pytest.mark.parametrize("clamp", [None, (-5.0, 2.0)])
def test_chain_logprob_matches_numpy(nets, clamp):
    params_pre, params_ft, cond = nets
    _, chain = sample(params_pre, params_pre, SCHEDULE, cond, jax.random.key(5), min_std=0.1, randn_clip=3.0,
                            **COMMON)
    logprob = chain_logprob(params_ft, SCHEDULE, cond, chain, ft_steps=K_FT, min_logprob_std=0.1, denoised_clip=1.0,
                            clamp=clamp)
    assert logprob.shape == (64, K_FT, TA, A)
    ddpm_std = np.asarray(SCHEDULE.ddpm_std, np.float64)
    expected = []
    for j in range(K_FT):
        t = K_FT - 1 - j
        std = max(ddpm_std[t], 0.1)
        mu = np_mean(_np(params_ft), np.asarray(chain[:, j], np.float64), np.full(64, t), np.asarray(cond, np.float64))
        x = np.asarray(chain[:, j + 1], np.float64)
        expected.append(-0.5 * ((x - mu) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi))
    expected = np.stack(expected, 1)
    if clamp is None:
        assert expected.min() < -5.0  # the perturbed fine-tuned net makes some transitions unlikely
    else:
        expected = np.clip(expected, *clamp)
    np.testing.assert_allclose(logprob, expected, rtol=1e-3, atol=2e-3)


def test_frozen_steps_do_not_depend_on_params_ft(nets):
    params_pre, params_ft, cond = nets
    kw = dict(min_std=0.1, randn_clip=3.0, **COMMON)
    _, chain_a = sample(params_pre, params_pre, SCHEDULE, cond, jax.random.key(6), **kw)
    _, chain_b = sample(params_pre, params_ft, SCHEDULE, cond, jax.random.key(6), **kw)
    np.testing.assert_array_equal(chain_a[:, 0], chain_b[:, 0])
    assert np.abs(np.asarray(chain_a[:, -1] - chain_b[:, -1])).max() > 1e-2

    def frozen_and_last(ft):
        chain = sample(params_pre, ft, SCHEDULE, cond, jax.random.key(6), **kw)[1]
        return jnp.sum(chain[:, 0]), jnp.sum(chain[:, -1])

    grad_frozen, grad_last = jax.jit(jax.jacrev(frozen_and_last))(params_ft)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grad_frozen)) == 0.0
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grad_last)) > 0.0


def test_sampled_transitions_follow_the_reverse_step(nets):
    params_pre, params_ft, cond = nets
    x0, chain = sample(params_pre, params_ft, SCHEDULE, cond, jax.random.key(7), min_std=0.1, randn_clip=3.0,
                             **COMMON)
    assert chain.shape == (64, K_FT + 1, TA, A)
    np.testing.assert_array_equal(x0, chain[:, -1])
    ddpm_std = np.asarray(SCHEDULE.ddpm_std, np.float64)
    noise = recovered_noise(params_pre, params_ft, cond, chain, lambda t: max(ddpm_std[t], 0.1))
    assert np.abs(noise).max() <= 3.0 + 1e-3
    np.testing.assert_allclose(noise.reshape(K_FT, -1).std(axis=1), 1.0, atol=0.06)  # 1792 draws per step
    np.testing.assert_allclose(noise.mean(), 0.0, atol=0.03)


def test_noise_clipping_engages(nets):
    params_pre, params_ft, cond = nets
    _, chain = sample(params_pre, params_ft, SCHEDULE, cond, jax.random.key(8), min_std=0.1, randn_clip=0.5,
                            **COMMON)
    ddpm_std = np.asarray(SCHEDULE.ddpm_std, np.float64)
    noise = np.abs(recovered_noise(params_pre, params_ft, cond, chain, lambda t: max(ddpm_std[t], 0.1)))
    assert noise.max() <= 0.5 + 1e-3
    at_bound = np.mean(noise > 0.5 - 1e-3)
    assert abs(at_bound - 0.617) < 0.03  # P(|N(0,1)| > 0.5)


def test_deterministic_mode_variance_rule(nets):
    params_pre, params_ft, cond = nets
    ddpm_std = np.asarray(SCHEDULE.ddpm_std, np.float64)
    assert ddpm_std[1] < 0.1  # t = 1 tells the two rules apart
    kw = dict(min_std=0.1, randn_clip=3.0, **COMMON)
    _, chain = sample(params_pre, params_ft, SCHEDULE, cond, jax.random.key(9), deterministic=True, **kw)
    deviation = recovered_noise(params_pre, params_ft, cond, chain, lambda t: 1.0)
    assert np.abs(deviation[-1]).max() < 1e-5  # t = 0: std exactly 0, x_0 = mu
    np.testing.assert_allclose(deviation[-2].std(), ddpm_std[1], rtol=0.06)  # t = 1: DDPM std, not the 0.1 floor
    _, chain = sample(params_pre, params_ft, SCHEDULE, cond, jax.random.key(9), **kw)
    deviation = recovered_noise(params_pre, params_ft, cond, chain, lambda t: 1.0)
    np.testing.assert_allclose(deviation[-1].std(), 0.1, rtol=0.06)  # stochastic: floor 0.1 also at t = 0
    np.testing.assert_allclose(deviation[-2].std(), 0.1, rtol=0.06)


def test_ft_steps_edge_cases(nets):
    params_pre, params_ft, cond = nets
    kw = dict(chunk_shape=(TA, A), min_std=0.1, randn_clip=3.0, denoised_clip=1.0)
    x0, chain = sample(params_pre, params_ft, SCHEDULE, cond, jax.random.key(10), ft_steps=0, **kw)
    assert chain.shape == (64, 1, TA, A)
    _, full = sample(params_pre, params_ft, SCHEDULE, cond, jax.random.key(10), ft_steps=K, **kw)
    assert full.shape == (64, K + 1, TA, A)
    assert abs(float(full[:, 0].std()) - 1.0) < 0.05  # x_K: the initial N(0, I) draw
    with pytest.raises(ValueError, match="ft_denoising_steps"):
        sample(params_pre, params_ft, SCHEDULE, cond, jax.random.key(10), ft_steps=K + 1, **kw)


def test_bc_regulariser(nets):
    params_pre, params_ft, cond = nets
    kw = dict(min_std=0.1, randn_clip=3.0, **COMMON)
    loss_fn = jax.jit(lambda pre, ft: bc_chain_logprob_loss(pre, ft, SCHEDULE, cond, jax.random.key(11), min_logprob_std=0.1,
                                                    clamp=(-5.0, 2.0), **kw))
    _, chain = sample(params_pre, params_pre, SCHEDULE, cond, jax.random.key(11), **kw)
    logprob = chain_logprob(params_ft, SCHEDULE, cond, chain, ft_steps=K_FT, min_logprob_std=0.1, denoised_clip=1.0,
                            clamp=(-5.0, 2.0))
    np.testing.assert_allclose(loss_fn(params_pre, params_ft), -np.mean(np.asarray(logprob)), rtol=1e-5)
    # Scored under the frozen policy itself the chains are likely; under the perturbed one less so.
    assert float(loss_fn(params_pre, params_pre)) < float(loss_fn(params_pre, params_ft))
    grad_pre, grad_ft = jax.jit(jax.grad(loss_fn, argnums=(0, 1)))(params_pre, params_ft)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grad_pre)) == 0.0
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grad_ft)) > 0.0
