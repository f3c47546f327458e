"""Dense layers as pure functions over ``{"w": (in, out), "b": (out,)}`` dicts.

Initialised like PyTorch's ``nn.Linear`` default (weights and biases uniform in +-1/sqrt(fan_in)), which
is what the original MLPs (denoiser, critic, reward classifier) use.
"""
import jax
import jax.numpy as jnp


def init_dense(key: jax.Array, fan_in: int, fan_out: int) -> dict:
    """One ``Linear(fan_in -> fan_out)`` with PyTorch's default initialisation."""
    w_key, b_key = jax.random.split(key)
    bound = 1.0 / jnp.sqrt(fan_in)
    return {
        "w": jax.random.uniform(w_key, (fan_in, fan_out), jnp.float32, -bound, bound),
        "b": jax.random.uniform(b_key, (fan_out,), jnp.float32, -bound, bound),
    }


def dense(layer: dict, x: jnp.ndarray) -> jnp.ndarray:
    return x @ layer["w"] + layer["b"]
