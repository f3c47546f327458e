"""A task added the way a user adds one: one module that registers it (imported by the test and by every
worker process). It has no scripted skill, so play collection does not perform it; it labels the play data
wherever the sliding door moved 5 cm to the left, which the move_slider_left skill and partial moves do."""
from diwa_jax.envs import tasks

TOY = tasks.register(tasks.Task(
    "nudge_slider_left",
    success=lambda xp, s0, s: s[..., 0] - s0[..., 0] > 0.05,
    start_scene=lambda rng: {"slider": rng.uniform(0.0, 0.1)},
), before="open_drawer")  # before every other task: nothing about them may change
