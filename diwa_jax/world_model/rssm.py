"""RSSM cell (spec section 2.1), straight-through categorical sampling and the balanced KL (section 2.2).

All functions accept any leading batch shape (none included), so they can be vmapped per sample.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from diwa_jax.types import Latent
from diwa_jax.world_model.networks import dense, xavier_uniform, zeros


def _per_gate(init, gates: int):
    """Initialise a fused (in, gates * out) kernel as ``gates`` independent (in, out) blocks, so fan-in/out
    (Xavier) and orthogonality refer to one gate, as in a per-gate PyTorch GRU."""

    def init_fn(key, shape, dtype=jnp.float32):
        fan_in, fused = shape
        keys = jax.random.split(key, gates)
        return jnp.concatenate([init(k, (fan_in, fused // gates), dtype) for k in keys], axis=-1)

    return init_fn


class GRUCell(nn.Module):
    """Plain GRU cell with PyTorch's equations (and thus its weight layout, gate order r, z, n):

    r = sig(W_ir x + b_ir + W_hr h + b_hr), z = sig(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h.
    Each side is one fused matmul.
    """

    features: int

    @nn.compact
    def __call__(self, inputs: jnp.ndarray, state: jnp.ndarray) -> jnp.ndarray:
        x = nn.Dense(3 * self.features, kernel_init=_per_gate(xavier_uniform, 3), bias_init=zeros,
                     name="input")(inputs)
        h = nn.Dense(3 * self.features, kernel_init=_per_gate(nn.initializers.orthogonal(), 3),
                     bias_init=zeros, name="recurrent")(state)
        x_r, x_z, x_n = jnp.split(x, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(h, 3, axis=-1)
        reset = jax.nn.sigmoid(x_r + h_r)
        update = jax.nn.sigmoid(x_z + h_z)
        candidate = jnp.tanh(x_n + reset * h_n)
        return (1.0 - update) * candidate + update * state


class RSSMCell(nn.Module):
    """Transition, prior and posterior networks. Call the methods through ``apply(..., method=...)``."""

    deter: int
    stoch: int
    classes: int
    hidden: int
    ln_eps: float

    def setup(self):
        logits = self.stoch * self.classes
        self.stoch_in = dense(self.hidden)
        self.action_in = dense(self.hidden, use_bias=False)
        self.transition_norm = nn.LayerNorm(epsilon=self.ln_eps)
        self.gru = GRUCell(self.deter)
        self.prior_in = dense(self.hidden)
        self.prior_norm = nn.LayerNorm(epsilon=self.ln_eps)
        self.prior_out = dense(logits)
        self.post_deter_in = dense(self.hidden)
        self.post_embed_in = dense(self.hidden, use_bias=False)
        self.post_norm = nn.LayerNorm(epsilon=self.ln_eps)
        self.post_out = dense(logits)

    def transition(self, latent: Latent, action: jnp.ndarray) -> jnp.ndarray:
        """(h_{t-1}, z_{t-1}), a_{t-1} -> h_t. Inputs are summed (not concatenated) before LN/ELU."""
        return self.transition_from(latent, self.action_input(action))

    def action_input(self, action: jnp.ndarray) -> jnp.ndarray:
        """The action's term of the transition input: a sequence's actions are known before the filter runs,
        so ``observe`` computes them all in one product outside its time loop."""
        return self.action_in(action)

    def transition_from(self, latent: Latent, action_input: jnp.ndarray) -> jnp.ndarray:
        """``transition`` given the action's term (``action_input``)."""
        flat_stoch = latent.stoch.reshape(*latent.stoch.shape[:-2], -1)
        x = nn.elu(self.transition_norm(self.stoch_in(flat_stoch) + action_input))
        return self.gru(x, latent.deter)

    def _to_blocks(self, flat_logits: jnp.ndarray) -> jnp.ndarray:
        return flat_logits.reshape(*flat_logits.shape[:-1], self.stoch, self.classes)

    def prior(self, deter: jnp.ndarray) -> jnp.ndarray:
        """h_t -> prior logits (..., stoch, classes)."""
        return self._to_blocks(self.prior_out(nn.elu(self.prior_norm(self.prior_in(deter)))))

    def posterior(self, deter: jnp.ndarray, embed: jnp.ndarray) -> jnp.ndarray:
        """h_t, embed_t -> posterior logits (..., stoch, classes)."""
        return self.posterior_from(deter, self.embed_input(embed))

    def embed_input(self, embed: jnp.ndarray) -> jnp.ndarray:
        """The embedding's term of the posterior input (hoisted out of ``observe``'s time loop, like
        ``action_input``)."""
        return self.post_embed_in(embed)

    def posterior_from(self, deter: jnp.ndarray, embed_input: jnp.ndarray) -> jnp.ndarray:
        """``posterior`` given the embedding's term (``embed_input``)."""
        return self._to_blocks(self.post_out(nn.elu(self.post_norm(self.post_deter_in(deter) + embed_input))))

    def __call__(self, latent: Latent, action: jnp.ndarray, embed: jnp.ndarray):
        """Touches every submodule (used by ``init``)."""
        deter = self.transition(latent, action)
        return self.prior(deter), self.posterior(deter, embed)


def sample_onehot(logits: jnp.ndarray, key: jax.Array, temperature: float) -> jnp.ndarray:
    """One-hot sample per categorical block (last axis) of ``logits / temperature`` with straight-through
    gradients: the value is the one-hot sample, the gradient is that of the softmax probabilities.

    Drawn by inverting the CDF with one uniform per block: the distribution of ``jax.random.categorical``, from
    C times fewer random numbers and without its argmax, which XLA:CPU runs unvectorised (together most of an
    imagination step's time outside the matmuls)."""
    scaled = logits / temperature
    probs = jax.nn.softmax(scaled, axis=-1)
    cdf = jnp.cumsum(probs, axis=-1)
    threshold = jax.random.uniform(key, scaled.shape[:-1] + (1,), scaled.dtype) * cdf[..., -1:]
    classes = scaled.shape[-1]
    index = jnp.minimum(jnp.sum(cdf < threshold, axis=-1), classes - 1)  # the block's class u falls in
    onehot = jax.nn.one_hot(index, classes, dtype=scaled.dtype)
    return onehot + (probs - jax.lax.stop_gradient(probs))  # exactly one-hot in value


def categorical_kl(lhs_logits: jnp.ndarray, rhs_logits: jnp.ndarray) -> jnp.ndarray:
    """KL(lhs || rhs) of independent categoricals (..., S, C), summed over the S blocks -> (...)."""
    lhs_log = jax.nn.log_softmax(lhs_logits, axis=-1)
    rhs_log = jax.nn.log_softmax(rhs_logits, axis=-1)
    return jnp.sum(jnp.exp(lhs_log) * (lhs_log - rhs_log), axis=(-2, -1))


def categorical_entropy(logits: jnp.ndarray) -> jnp.ndarray:
    """Entropy of independent categoricals (..., S, C), summed over the S blocks -> (...)."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=(-2, -1))


def balanced_kl_loss(post_logits: jnp.ndarray, prior_logits: jnp.ndarray, balance: float,
                     free_nats: float = 0.0) -> tuple[jnp.ndarray, jnp.ndarray]:
    """KL balancing: ``(1 - a) KL(q || sg p) + a KL(sg q || p)``, each term averaged over all leading axes.

    With ``free_nats > 0`` each averaged term is clamped from below at ``free_nats`` (DreamerV2's
    ``free_avg``), which stops its gradient while it is under the threshold.
    Returns (loss, mean KL(q || p) value).
    """
    sg = jax.lax.stop_gradient
    train_posterior = jnp.mean(categorical_kl(post_logits, sg(prior_logits)))
    train_prior = jnp.mean(categorical_kl(sg(post_logits), prior_logits))
    if free_nats > 0:
        train_posterior = jnp.maximum(train_posterior, free_nats)
        train_prior = jnp.maximum(train_prior, free_nats)
    loss = (1.0 - balance) * train_posterior + balance * train_prior
    return loss, jnp.mean(sg(categorical_kl(post_logits, prior_logits)))
