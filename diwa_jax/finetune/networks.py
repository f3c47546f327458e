"""The PPO critic (spec section 6.1 "Critic"): a residual Mish MLP on the latent feature.

``Linear(F -> d) -> [Mish -> Linear(d -> d) -> Mish -> Linear(d -> d)] + skip -> Linear(d -> 1)``
(dims [d, d, d], one pre-activation residual block, no LayerNorm, identity output). Layers use PyTorch's
default initialisation, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weights and biases, as the original
critic is randomly initialised that way.
"""
import jax

from diwa_jax.policy.layers import dense, init_dense, mish

LAYERS = ("input", "block_1", "block_2", "output")


def init_critic(key, latent_dim: int, dim: int):
    """Critic parameters for ``(..., latent_dim)`` features with hidden width ``dim`` (config.ppo.critic_dim)."""
    fans = {"input": (latent_dim, dim), "block_1": (dim, dim), "block_2": (dim, dim), "output": (dim, 1)}
    keys = jax.random.split(key, len(LAYERS))
    return {name: init_dense(k, *fans[name]) for name, k in zip(LAYERS, keys)}


def critic_value(params, feature):
    """``V(feature)``: ``(..., F) -> (...)``."""
    expected = params["input"]["w"].shape[0]
    if feature.shape[-1] != expected:
        raise ValueError(
            f"diwa_jax/finetune/networks.py: critic built for {expected}-D latent features (deter + stoch*classes);"
            f" got feature shape {feature.shape}")
    hidden = dense(params["input"], feature)
    residual = dense(params["block_1"], mish(hidden))
    hidden = hidden + dense(params["block_2"], mish(residual))
    return dense(params["output"], hidden)[..., 0]
