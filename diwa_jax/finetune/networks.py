"""The PPO critic (spec section 6.1 "Critic"): a residual Mish MLP on the latent feature.

``Linear(F -> d) -> [Mish -> Linear(d -> d) -> Mish -> Linear(d -> d)] + skip -> Linear(d -> 1)``
(dims [d, d, d], one pre-activation residual block, no LayerNorm, identity output). Layers use PyTorch's
default initialisation, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weights and biases, as the original
critic is randomly initialised that way.
"""
import jax
import jax.numpy as jnp

LAYERS = ("input", "block_1", "block_2", "output")


def _init_linear(key, fan_in: int, fan_out: int):
    bound = 1.0 / jnp.sqrt(fan_in)
    kernel_key, bias_key = jax.random.split(key)
    return {
        "kernel": jax.random.uniform(kernel_key, (fan_in, fan_out), jnp.float32, -bound, bound),
        "bias": jax.random.uniform(bias_key, (fan_out,), jnp.float32, -bound, bound),
    }


def _linear(layer, x):
    return x @ layer["kernel"] + layer["bias"]


def init_critic(key, latent_dim: int, dim: int):
    """Critic parameters for ``(..., latent_dim)`` features with hidden width ``dim`` (config.ppo.critic_dim)."""
    fans = {"input": (latent_dim, dim), "block_1": (dim, dim), "block_2": (dim, dim), "output": (dim, 1)}
    keys = jax.random.split(key, len(LAYERS))
    return {name: _init_linear(k, *fans[name]) for name, k in zip(LAYERS, keys)}


def critic_value(params, feature):
    """``V(feature)``: ``(..., F) -> (...)``."""
    expected = params["input"]["kernel"].shape[0]
    if feature.shape[-1] != expected:
        raise ValueError(
            f"diwa_jax/finetune/networks.py: critic built for {expected}-D latent features (deter + stoch*classes);"
            f" got feature shape {feature.shape}")
    hidden = _linear(params["input"], feature)
    residual = _linear(params["block_1"], jax.nn.mish(hidden))
    hidden = hidden + _linear(params["block_2"], jax.nn.mish(residual))
    return _linear(params["output"], hidden)[..., 0]
