"""diwa-jax: DiWA (diffusion policy adaptation with world models) in JAX/Flax."""

__version__ = "0.1.0"
