"""Residual-MLP epsilon network of the diffusion policy (spec section 3.1), as pure functions of params.

``x (B, Ta, A)`` noisy chunk, ``t`` integer step (scalar or ``(B,)``), ``cond (B, C)`` latent feature ->
predicted noise ``(B, Ta, A)``. The first layer acts on ``concat(flatten(x), time_emb, cond)``; its weight is
stored as three row blocks so the cond's share (by far the largest, C = 2048 of 2092 inputs) can be computed
once per chunk with ``cond_projection`` and reused across the K denoising steps, and the time's share once per
step with ``time_projection``.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp

from diwa_jax.policy.layers import dense, init_dense, mish


def sinusoidal_embedding(t: jnp.ndarray, dim: int) -> jnp.ndarray:
    """``(...,) -> (..., dim)``: concat[sin, cos] at frequencies ``exp(-i * log(10000) / (dim/2 - 1))``."""
    half = dim // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000.0) / (half - 1)))
    angles = jnp.asarray(t, jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


@dataclasses.dataclass(frozen=True)
class DenoiserSpec:
    """The denoiser's sizes: action chunks ``(horizon, action_dim)``, time embedding, MLP width."""

    horizon: int
    action_dim: int
    time_dim: int
    mlp_dim: int


def init_denoiser(key: jax.Array, spec: DenoiserSpec, cond_dim: int) -> dict:
    """Parameters for ``spec``'s sizes and a cond of ``cond_dim``."""
    time_dim, mlp_dim = spec.time_dim, spec.mlp_dim
    chunk_dim = spec.horizon * spec.action_dim
    if time_dim < 4 or time_dim % 2:
        raise ValueError(f"config.policy.time_dim must be even and >= 4 (sinusoidal embedding), got {time_dim}")
    keys = jax.random.split(key, 6)
    # One Linear over the concatenated input, initialised with the full fan-in, then split into row blocks.
    first = init_dense(keys[2], chunk_dim + time_dim + cond_dim, mlp_dim)
    return {
        "time_1": init_dense(keys[0], time_dim, 2 * time_dim),
        "time_2": init_dense(keys[1], 2 * time_dim, time_dim),
        "input": {
            "w_noisy": first["w"][:chunk_dim],
            "w_time": first["w"][chunk_dim : chunk_dim + time_dim],
            "w_cond": first["w"][chunk_dim + time_dim :],
            "b": first["b"],
        },
        "res_1": init_dense(keys[3], mlp_dim, mlp_dim),
        "res_2": init_dense(keys[4], mlp_dim, mlp_dim),
        "output": init_dense(keys[5], mlp_dim, chunk_dim),
    }


def cond_projection(params: dict, cond: jnp.ndarray) -> jnp.ndarray:
    """The cond's share of the first layer, bias included: ``(B, C) -> (B, mlp_dim)``."""
    return cond @ params["input"]["w_cond"] + params["input"]["b"]


def time_projection(params: dict, t: jnp.ndarray) -> jnp.ndarray:
    """The time embedding's share of the first layer: ``t`` (scalar or ``(B,)``) -> ``(mlp_dim,)`` or
    ``(B, mlp_dim)``. It depends on t alone, so samplers tabulate it per denoising step, not per row."""
    time_dim = params["time_1"]["w"].shape[0]
    time_emb = sinusoidal_embedding(t, time_dim)
    time_emb = dense(params["time_2"], mish(dense(params["time_1"], time_emb)))
    return time_emb @ params["input"]["w_time"]


def denoise_eps_from_shares(params: dict, x: jnp.ndarray, shares: jnp.ndarray) -> jnp.ndarray:
    """``denoise_eps`` given the first layer's time and cond shares, summed (``(B, mlp_dim)``, or broadcastable)."""
    flat_x = x.reshape(x.shape[0], -1)
    h = flat_x @ params["input"]["w_noisy"] + shares
    # One pre-activation residual block.
    h = h + dense(params["res_2"], mish(dense(params["res_1"], mish(h))))
    return dense(params["output"], h).reshape(x.shape)


def denoise_eps_from_projection(params: dict, x: jnp.ndarray, t: jnp.ndarray, proj: jnp.ndarray) -> jnp.ndarray:
    """``denoise_eps`` with the cond already projected by ``cond_projection``."""
    return denoise_eps_from_shares(params, x, time_projection(params, t) + proj)


def denoise_eps(params: dict, x: jnp.ndarray, t: jnp.ndarray, cond: jnp.ndarray) -> jnp.ndarray:
    """Predicted noise for noisy chunks ``x (B, Ta, A)`` at steps ``t`` (scalar or ``(B,)``) given ``cond (B, C)``."""
    return denoise_eps_from_projection(params, x, t, cond_projection(params, cond))
