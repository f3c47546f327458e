"""Reverse-diffusion sampling with a frozen and a fine-tuned denoiser, and chain log-probs (spec section 3.4).

Steps run t = K-1 .. 0. Steps t >= ft_steps use the frozen pre-trained params, steps t < ft_steps the
fine-tuned ones; the two parts are two ``lax.scan``s so each step evaluates only the denoiser it needs.
The chain kept for PPO is ``[x_{ft_steps}, ..., x_0]``, ``(B, ft_steps + 1, Ta, A)``.
"""
import math

import jax
import jax.numpy as jnp

from diwa_jax.policy.denoiser import cond_projection, denoise_eps_from_shares, time_projection
from diwa_jax.policy.schedule import DDPMSchedule

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _at(table: jnp.ndarray, t: jnp.ndarray, like: jnp.ndarray) -> jnp.ndarray:
    """``table[t]`` shaped to broadcast against ``like`` (t is a scalar or a leading batch vector)."""
    value = table[t]
    return value.reshape(value.shape + (1,) * (like.ndim - value.ndim))


def reverse_mean(
    params: dict, schedule: DDPMSchedule, x: jnp.ndarray, t: jnp.ndarray, shares: jnp.ndarray, denoised_clip: float
) -> jnp.ndarray:
    """Mean of reverse step t, which maps ``x = x_{t+1}`` to x_t: ``mu = c1_t * clip(x0_hat) + c2_t * x``.
    ``shares``: the first layer's time and cond shares, summed (``time_projection`` + ``cond_projection``)."""
    eps = denoise_eps_from_shares(params, x, shares)
    x0_hat = _at(schedule.sqrt_recip_acp, t, x) * x - _at(schedule.sqrt_recipm1_acp, t, x) * eps
    x0_hat = jnp.clip(x0_hat, -denoised_clip, denoised_clip)
    return _at(schedule.mu_c1, t, x) * x0_hat + _at(schedule.mu_c2, t, x) * x


def sampling_std(
    schedule: DDPMSchedule, t: jnp.ndarray, *, min_std: float, deterministic: bool, deterministic_min_std: float
) -> jnp.ndarray:
    """Std of step t: ``max(ddpm_std, min_std)`` (also at t = 0); "deterministic" eval mode:
    ``max(ddpm_std, deterministic_min_std)`` for t > 0 and exactly 0 at t = 0 (still slightly noisy)."""
    ddpm_std = schedule.ddpm_std[t]
    if deterministic:
        return jnp.where(t > 0, jnp.maximum(ddpm_std, deterministic_min_std), 0.0)
    return jnp.maximum(ddpm_std, min_std)


def gaussian_logprob(x: jnp.ndarray, mean: jnp.ndarray, std: jnp.ndarray) -> jnp.ndarray:
    """Per-element log-density of ``x`` under ``N(mean, std^2)``."""
    return -0.5 * jnp.square((x - mean) / std) - jnp.log(std) - LOG_SQRT_2PI


def _check_ft_steps(schedule: DDPMSchedule, ft_steps: int) -> None:
    if not 0 <= ft_steps <= schedule.num_steps:
        raise ValueError(
            f"policy sampling: ft_steps (config.policy.ft_denoising_steps) = {ft_steps} must lie in "
            f"[0, denoising_steps = {schedule.num_steps}]"
        )


def sample_chain(
    params_pre: dict,
    params_ft: dict,
    schedule: DDPMSchedule,
    cond: jnp.ndarray,
    key: jax.Array,
    *,
    chunk_shape: tuple,
    ft_steps: int,
    min_std: float,
    randn_clip: float,
    denoised_clip: float,
    deterministic: bool = False,
    deterministic_min_std: float = 1e-3,
    logprob_min_std: float | None = None,
) -> tuple:
    """Sample action chunks for ``cond (B, C)``: returns ``(x_0 (B, Ta, A), chain (B, ft_steps + 1, Ta, A))``.

    ``chunk_shape = (Ta, A)``. ``x_K ~ N(0, I)``; each step ``x = mu + std * clip(eps, +-randn_clip)``; no final
    action clamp. The noise of step t is drawn from ``fold_in(key, t)`` whichever params run it.

    With ``logprob_min_std`` set, also returns the fine-tuned transitions' per-element log-densities
    ``(B, ft_steps, Ta, A)`` from the means the sampler already computed, std ``max(ddpm_std_t, logprob_min_std)``:
    what ``chain_logprob(params_ft, ..., min_logprob_std=logprob_min_std)`` gives for the returned chain, without
    a second pass of the denoiser (PPO's old log-probs).
    """
    _check_ft_steps(schedule, ft_steps)
    init_key, step_key = jax.random.split(key)
    x_init = jax.random.normal(init_key, (cond.shape[0],) + tuple(chunk_shape), jnp.float32)

    def run_steps(params, x, timesteps):
        # Work that does not depend on x, hoisted out of the sequential steps: the cond's share of the first layer
        # (once per chunk), the time's (once per step, not per row), and every step's noise in one draw (the same
        # numbers as drawing from fold_in(step_key, t) at step t).
        proj = cond_projection(params, cond)
        time_shares = time_projection(params, timesteps)
        noises = jax.vmap(lambda t: jax.random.normal(jax.random.fold_in(step_key, t), x.shape))(timesteps)
        noises = jnp.clip(noises, -randn_clip, randn_clip)

        def step(x, inputs):
            t, time_share, noise = inputs
            mu = reverse_mean(params, schedule, x, t, proj + time_share, denoised_clip)
            std = sampling_std(
                schedule, t, min_std=min_std, deterministic=deterministic, deterministic_min_std=deterministic_min_std
            )
            x = mu + std * noise
            if logprob_min_std is None:
                return x, x
            return x, (x, gaussian_logprob(x, mu, jnp.maximum(schedule.ddpm_std[t], logprob_min_std)))

        return jax.lax.scan(step, x, (timesteps, time_shares, noises))

    x_ft_start, _ = run_steps(params_pre, x_init, jnp.arange(schedule.num_steps - 1, ft_steps - 1, -1))
    x_final, ft_outputs = run_steps(params_ft, x_ft_start, jnp.arange(ft_steps - 1, -1, -1))
    ft_states = ft_outputs if logprob_min_std is None else ft_outputs[0]
    chain = jnp.swapaxes(jnp.concatenate([x_ft_start[None], ft_states], axis=0), 0, 1)  # (B, ft_steps + 1, Ta, A)
    if logprob_min_std is None:
        return x_final, chain
    return x_final, chain, jnp.swapaxes(ft_outputs[1], 0, 1)


def chain_logprob(
    params_ft: dict,
    schedule: DDPMSchedule,
    cond: jnp.ndarray,
    chain: jnp.ndarray,
    *,
    ft_steps: int,
    min_logprob_std: float,
    denoised_clip: float,
    clamp: tuple = None,
) -> jnp.ndarray:
    """Per-element Gaussian log-density of each transition ``x_{t+1} -> x_t`` of ``chain (B, ft_steps + 1, Ta, A)``
    under ``params_ft``: ``(B, ft_steps, Ta, A)``, index j <-> step t = ft_steps - 1 - j.

    std = ``max(ddpm_std_t, min_logprob_std)``; ``clamp = (lo, hi)`` clips each log-density (None: no clamp).
    """
    _check_ft_steps(schedule, ft_steps)
    batch = cond.shape[0]
    if chain.ndim != 4 or chain.shape[:2] != (batch, ft_steps + 1):
        raise ValueError(
            f"chain_logprob: chain must be (B={batch}, ft_steps+1={ft_steps + 1}, Ta, A), got {chain.shape}"
        )
    chunk_shape = chain.shape[2:]
    x_next = chain[:, :-1].reshape((batch * ft_steps,) + chunk_shape)
    x_cur = chain[:, 1:].reshape((batch * ft_steps,) + chunk_shape)
    steps = jnp.arange(ft_steps - 1, -1, -1)
    timesteps = jnp.tile(steps, batch)
    # the cond's share once per sample, the time's once per step
    shares = cond_projection(params_ft, cond)[:, None] + time_projection(params_ft, steps)
    logprob = _transition_logprob(params_ft, schedule, shares.reshape(batch * ft_steps, -1), x_next, x_cur,
                                  timesteps, min_logprob_std, denoised_clip, clamp)
    return logprob.reshape((batch, ft_steps) + chunk_shape)


def transition_logprob(
    params_ft: dict,
    schedule: DDPMSchedule,
    cond: jnp.ndarray,
    x_next: jnp.ndarray,
    x_cur: jnp.ndarray,
    timesteps: jnp.ndarray,
    *,
    min_logprob_std: float,
    denoised_clip: float,
    clamp: tuple = None,
) -> jnp.ndarray:
    """``chain_logprob`` for independent rows: the log-density of ``x_cur (R, Ta, A)`` given ``x_next (R, Ta, A)``
    at denoising steps ``timesteps (R,)`` with ``cond (R, C)``, ``(R, Ta, A)``."""
    time_shares = time_projection(params_ft, jnp.arange(schedule.num_steps))[timesteps]  # a table, not per row
    return _transition_logprob(params_ft, schedule, cond_projection(params_ft, cond) + time_shares, x_next, x_cur,
                               timesteps, min_logprob_std, denoised_clip, clamp)


def _transition_logprob(params, schedule, shares, x_next, x_cur, timesteps, min_logprob_std, denoised_clip, clamp):
    mu = reverse_mean(params, schedule, x_next, timesteps, shares, denoised_clip)
    std = _at(jnp.maximum(schedule.ddpm_std, min_logprob_std), timesteps, x_cur)
    logprob = gaussian_logprob(x_cur, mu, std)
    if clamp is not None:
        logprob = jnp.clip(logprob, clamp[0], clamp[1])
    return logprob


def bc_chain_logprob_loss(
    params_pre: dict,
    params_ft: dict,
    schedule: DDPMSchedule,
    cond: jnp.ndarray,
    key: jax.Array,
    *,
    chunk_shape: tuple,
    ft_steps: int,
    min_std: float,
    randn_clip: float,
    denoised_clip: float,
    min_logprob_std: float,
    clamp: tuple = None,
) -> jnp.ndarray:
    """BC regulariser (spec section 6.2): chains sampled (stochastically) with the frozen policy at every step,
    scored under ``params_ft``; clamp, mean over (Ta, A), negative mean over samples and steps. Differentiable
    in ``params_ft`` only."""
    _, chain = sample_chain(
        params_pre, params_pre, schedule, cond, key, chunk_shape=chunk_shape, ft_steps=ft_steps,
        min_std=min_std, randn_clip=randn_clip, denoised_clip=denoised_clip,
    )
    logprob = chain_logprob(
        params_ft, schedule, cond, jax.lax.stop_gradient(chain), ft_steps=ft_steps,
        min_logprob_std=min_logprob_std, denoised_clip=denoised_clip, clamp=clamp,
    )
    return -jnp.mean(jnp.mean(logprob, axis=(-2, -1)))
