"""DDPM cosine noise schedule and the posterior coefficients of the reverse step (spec section 3.2)."""
import jax.numpy as jnp
import numpy as np
from flax import struct

MAX_BETA = 0.999
POSTERIOR_VAR_FLOOR = 1e-20  # the posterior variance is 0 at t = 0; its log is taken of at least this


@struct.dataclass
class DDPMSchedule:
    """Per-step tables, each ``(K,)`` float32, indexed by the denoising step t = 0..K-1.

    Reverse step: ``x0_hat = sqrt_recip_acp[t] * x_t - sqrt_recipm1_acp[t] * eps``,
    ``mu = mu_c1[t] * x0_hat + mu_c2[t] * x_t``, DDPM std ``ddpm_std[t] = exp(0.5 * posterior_logvar[t])``.
    """

    betas: jnp.ndarray
    alphas_cumprod: jnp.ndarray
    alphas_cumprod_prev: jnp.ndarray
    sqrt_recip_acp: jnp.ndarray
    sqrt_recipm1_acp: jnp.ndarray
    mu_c1: jnp.ndarray
    mu_c2: jnp.ndarray
    posterior_logvar: jnp.ndarray
    ddpm_std: jnp.ndarray

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]


def make_schedule(num_steps: int, s: float = 0.008) -> DDPMSchedule:
    """Cosine schedule (Nichol & Dhariwal) on the diffuser grid ``linspace(0, K+1, K+1) / (K+1)``.

    The grid ends at 1 but has K+1 points spaced (K+1)/K apart (a quirk of the original code kept for
    parity); betas are clipped at 0.999. Tables are computed in float64 and stored as float32.
    """
    if num_steps < 1:
        raise ValueError(f"make_schedule: num_steps (config.policy.denoising_steps) must be >= 1, got {num_steps}")
    grid = np.linspace(0.0, num_steps + 1, num_steps + 1) / (num_steps + 1)
    acp_grid = np.cos((grid + s) / (1.0 + s) * np.pi * 0.5) ** 2
    acp_grid = acp_grid / acp_grid[0]
    betas = np.clip(1.0 - acp_grid[1:] / acp_grid[:-1], 0.0, MAX_BETA)
    alphas = 1.0 - betas
    acp = np.cumprod(alphas)
    acp_prev = np.concatenate([[1.0], acp[:-1]])
    posterior_var = betas * (1.0 - acp_prev) / (1.0 - acp)
    posterior_logvar = np.log(np.maximum(posterior_var, POSTERIOR_VAR_FLOOR))
    tables = dict(
        betas=betas,
        alphas_cumprod=acp,
        alphas_cumprod_prev=acp_prev,
        sqrt_recip_acp=np.sqrt(1.0 / acp),
        sqrt_recipm1_acp=np.sqrt(1.0 / acp - 1.0),
        mu_c1=betas * np.sqrt(acp_prev) / (1.0 - acp),
        mu_c2=(1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp),
        posterior_logvar=posterior_logvar,
        ddpm_std=np.exp(0.5 * posterior_logvar),
    )
    return DDPMSchedule(**{name: jnp.asarray(value, jnp.float32) for name, value in tables.items()})
