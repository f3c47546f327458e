"""One runner per pipeline stage: ``(config) -> summary``; they read and write the workdir through
``diwa_jax/artifacts.py``."""
