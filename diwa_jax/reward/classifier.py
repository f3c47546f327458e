"""Latent success classifier (spec section 5.1): embedding MLP + classification head, pure functions of params.

``feature (B, latent)`` -> embedding ``(B, embed_dim)`` (the contrastive loss's input) -> logits ``(B, 2)``;
class 1 = task solved.
"""
import dataclasses

import jax
import jax.numpy as jnp

from diwa_jax.policy.layers import dense, init_dense

REWARD_MODES = ("binary", "probability")


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """The classifier's sizes and its training (contrastive temperature, cross-entropy weight, Adam's rate)."""

    embed_hidden: int
    embed_dim: int
    head_hidden: int
    tau: float
    ce_weight: float
    lr: float


def init_classifier(key: jax.Array, spec: RewardSpec, latent_dim: int) -> dict:
    """Parameters for ``spec``'s sizes on features of ``latent_dim``."""
    keys = jax.random.split(key, 4)
    return {
        "embed_1": init_dense(keys[0], latent_dim, spec.embed_hidden),
        "embed_2": init_dense(keys[1], spec.embed_hidden, spec.embed_dim),
        "head_1": init_dense(keys[2], spec.embed_dim, spec.head_hidden),
        "head_2": init_dense(keys[3], spec.head_hidden, 2),
    }


def classifier_embed(params: dict, feature: jnp.ndarray) -> jnp.ndarray:
    return dense(params["embed_2"], jax.nn.relu(dense(params["embed_1"], feature)))


def classifier_head(params: dict, embedding: jnp.ndarray) -> jnp.ndarray:
    return dense(params["head_2"], jax.nn.relu(dense(params["head_1"], embedding)))


def classifier_logits(params: dict, feature: jnp.ndarray) -> jnp.ndarray:
    return classifier_head(params, classifier_embed(params, feature))


def reward_from_logits(logits: jnp.ndarray, mode: str) -> jnp.ndarray:
    """``(..., 2) -> (...)`` float32: "binary" = argmax in {0, 1}; "probability" = softmax probability of class 1."""
    if mode == "binary":
        return jnp.argmax(logits, axis=-1).astype(jnp.float32)
    if mode == "probability":
        return jax.nn.softmax(logits, axis=-1)[..., 1]
    raise ValueError(f"reward_from_logits: unknown mode {mode!r} (config.ppo.reward_mode); use one of {REWARD_MODES}")
