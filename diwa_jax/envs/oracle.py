"""Success predicates of the 8 DiWA tasks as a pure function of two ``scene_obs`` vectors.

``success(s0, s, task)`` compares the scene at the episode (or window) start with the scene now
(``calvin_conventions.md`` section 3): door tasks are relative moves beyond a threshold, light tasks
need the start state and the current state to match the 0->1 / 1->0 transition. The predicates read
only articulation joints and light bits, so the same function labels dataset windows, judges
simulator rollouts and runs inside jitted code. All eight are computed at once (one comparison each)
and a task is selected with a one-hot mask, so there are no branches.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from diwa_jax.envs.protocol import DRAWER, LED, LIGHTBULB, SLIDER

# Order of experiments/calvin.py TASKS; task_index refers to it.
TASKS = (
    "open_drawer",
    "close_drawer",
    "move_slider_left",
    "move_slider_right",
    "turn_on_lightbulb",
    "turn_off_lightbulb",
    "turn_on_led",
    "turn_off_led",
)
NUM_TASKS = len(TASKS)
DRAWER_THRESHOLD = 0.12
SLIDER_THRESHOLD = 0.15
LIGHT_ON_ABOVE = 0.5  # lights are stored as floats; > 0.5 reads as 1


def task_index(task: str) -> int:
    """Index of a task name in :data:`TASKS`."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; the oracle knows {TASKS}")
    return TASKS.index(task)


def _success_table(xp, scene_start, scene_now):
    """(..., 8) bool, columns in TASKS order; ``xp`` is numpy or jax.numpy."""
    scene_start = xp.asarray(scene_start)
    scene_now = xp.asarray(scene_now)
    d_drawer = scene_now[..., DRAWER] - scene_start[..., DRAWER]
    d_slide = scene_now[..., SLIDER] - scene_start[..., SLIDER]
    bulb0 = scene_start[..., LIGHTBULB] > LIGHT_ON_ABOVE
    bulb = scene_now[..., LIGHTBULB] > LIGHT_ON_ABOVE
    led0 = scene_start[..., LED] > LIGHT_ON_ABOVE
    led = scene_now[..., LED] > LIGHT_ON_ABOVE
    columns = (
        d_drawer > DRAWER_THRESHOLD,
        d_drawer < -DRAWER_THRESHOLD,
        d_slide > SLIDER_THRESHOLD,
        d_slide < -SLIDER_THRESHOLD,
        ~bulb0 & bulb,
        bulb0 & ~bulb,
        ~led0 & led,
        led0 & ~led,
    )
    return xp.stack(xp.broadcast_arrays(*columns), axis=-1)


def success_all(scene_start, scene_now) -> jnp.ndarray:
    """All 8 predicates, ``(..., 8)`` bool (jnp, jittable; leading axes broadcast)."""
    return _success_table(jnp, scene_start, scene_now)


def task_success(scene_start, scene_now, task_index) -> jnp.ndarray:
    """Success of task ``task_index`` (int or int array, broadcast against the leading axes), bool."""
    onehot = jnp.arange(NUM_TASKS) == jnp.asarray(task_index)[..., None]
    return jnp.any(success_all(scene_start, scene_now) & onehot, axis=-1)


def success_all_np(scene_start, scene_now) -> np.ndarray:
    """NumPy twin of :func:`success_all` for per-step host checks (no device dispatch)."""
    return _success_table(np, scene_start, scene_now)


def completed_tasks(scene_start, scene_now) -> tuple[str, ...]:
    """Names of the tasks whose predicate holds between two single ``scene_obs`` vectors."""
    flags = success_all_np(scene_start, scene_now)
    if flags.ndim != 1:
        raise ValueError(f"completed_tasks takes single (24,) scene_obs vectors, got batch shape {flags.shape[:-1]}")
    return tuple(name for name, done in zip(TASKS, flags) if done)
