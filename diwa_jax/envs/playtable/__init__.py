"""The embedded CALVIN-compatible pybullet play-table: scene, Panda control, cameras, scripted skills
and the play stream. ``PlayTable`` (env.py) implements ``diwa_jax.envs.protocol.Simulator``."""
