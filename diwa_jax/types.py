"""Typed pytrees shared across stages."""
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Latent:
    """RSSM state: GRU state ``deter (..., D)`` and one-hot ``stoch (..., S, C)``."""

    deter: jnp.ndarray
    stoch: jnp.ndarray

    def feature(self) -> jnp.ndarray:
        """The policy/critic/classifier input: ``concat(deter, flatten(stoch))``, ``(..., D + S*C)``."""
        flat = self.stoch.reshape(*self.stoch.shape[:-2], -1)
        return jnp.concatenate([self.deter, flat.astype(self.deter.dtype)], axis=-1)
