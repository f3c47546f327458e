"""DDPM cosine schedule against the tables of spec section 3.2 (K = 20)."""
import numpy as np

from diwa_jax.policy.schedule import make_schedule

SPEC_BETAS = [0.00799, 0.02007, 0.03225, 0.04468, 0.05752, 0.07096, 0.08521, 0.10055, 0.1173, 0.13592, 0.157,
              0.18136, 0.21021, 0.24537, 0.28973, 0.34814, 0.42943, 0.55102, 0.74848, 0.999]
SPEC_SQRT_BETA_TILDE = [0, .076, .123, .162, .195, .226, .255, .283, .311, .339, .369, .401, .435, .474, .519, .573,
                        .641, .731, .857, .996]


def test_betas_match_spec_table():
    np.testing.assert_allclose(np.asarray(make_schedule(20).betas), SPEC_BETAS, atol=1e-4 * 1.01, rtol=0)


def test_posterior_std_matches_spec_table():
    schedule = make_schedule(20)
    # The table has three decimals; t = 0 is the 1e-20 variance floor, i.e. std 1e-10.
    np.testing.assert_allclose(np.asarray(schedule.ddpm_std), SPEC_SQRT_BETA_TILDE, atol=5e-4 + 1e-6, rtol=0)
    assert abs(float(schedule.ddpm_std[0]) - 1e-10) < 1e-12
    np.testing.assert_allclose(np.asarray(schedule.posterior_logvar)[0], np.log(1e-20), rtol=1e-6)


def test_terminal_signal_and_posterior_coefficients():
    schedule = make_schedule(20)
    acp = np.asarray(schedule.alphas_cumprod, np.float64)
    assert 1e-6 < acp[-1] < 2e-5  # ~1e-5: x_K is essentially pure noise
    betas = np.asarray(schedule.betas, np.float64)
    np.testing.assert_allclose(acp, np.cumprod(1 - betas), rtol=1e-3)  # 1 - 0.999 in float32
    acp_prev = np.concatenate([[1.0], acp[:-1]])
    np.testing.assert_allclose(schedule.alphas_cumprod_prev, acp_prev, rtol=1e-6)
    # With the noise-free x0 the posterior mean must reproduce the forward process:
    # c1 * x0 + c2 * x_t with x_t = sqrt(acp) x0 equals sqrt(acp_prev) x0.
    c1, c2 = np.asarray(schedule.mu_c1), np.asarray(schedule.mu_c2)
    np.testing.assert_allclose(c1 + c2 * np.sqrt(acp), np.sqrt(acp_prev), rtol=1e-5)
    np.testing.assert_allclose(schedule.sqrt_recip_acp * np.sqrt(acp), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.square(schedule.sqrt_recipm1_acp), 1 / acp - 1, rtol=1e-4)


def test_beta_clip():
    betas = np.asarray(make_schedule(3).betas)
    assert betas.max() <= 0.999 + 1e-7 and np.isclose(betas[-1], 0.999)
