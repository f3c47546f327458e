"""The task registry: one record per task, owning everything the pipeline asks about that task.

A :class:`Task` holds its success predicate (the oracle: a pure function of the scene at the episode or
window start and the scene now, ``calvin_conventions.md`` section 3), its start distribution (in any
play-table, and optionally a scripted :class:`Skill` with which play collection performs it. Adding a
task is one file: a module in this package that calls :func:`register` is found automatically; a task
defined elsewhere is registered by importing its module before the run (e.g. from the experiment file);
worker processes import that module too (:func:`modules`), so it must be importable, not ``__main__``.

Nothing depends on a task's position in the registry: random streams are derived from the task's name
(:func:`stream`), and predicates are looked up by name, so registering a task changes no other task's
numbers. Play collection draws its next skill from the scripted tasks in registry order, so registering
a *scripted* task does change the collected data.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import zlib
from typing import Any, Callable

import numpy as np

# (xp, scene_start, scene_now) -> (...,) bool, xp being numpy or jax.numpy; leading axes broadcast.
Predicate = Callable[[Any, Any, Any], Any]


@dataclasses.dataclass(frozen=True)
class Skill:
    """How scripted play performs a task in any backend's scene (``envs/playtable/skills.py`` runs it)."""

    # scene_obs -> True when the task is not done yet and can succeed from this scene
    precondition: Callable[[np.ndarray], bool]
    # (geometry, scene_obs, frac, rng, approach_offsets (3,)) -> the skill's waypoints in a scene of that
    # envs.geometry.SceneGeometry; frac < 1 shortens the contact phase
    waypoints: Callable[..., list]
    # (scene_obs index, sign of the motion, limit it moves toward): play may nudge this part partway
    nudge: tuple[int, float, float] | None = None


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    success: Predicate
    # rng -> the scene parts a start of this task fixes (keyword arguments of envs.geometry.sample_scene_obs),
    # drawn before the rest of the scene
    start_scene: Callable[[np.random.Generator], dict]
    skill: Skill | None = None


_REGISTRY: dict[str, Task] = {}


def register(task: Task, *, before: str | None = None) -> Task:
    """Adds ``task`` (last, or just before the task named ``before``); a name can be registered once."""
    if task.name in _REGISTRY:
        raise ValueError(f"task {task.name!r} is already registered")
    if before is None:
        _REGISTRY[task.name] = task
        return task
    get(before)
    items = list(_REGISTRY.items())
    at = [name for name, _ in items].index(before)
    _REGISTRY.clear()
    _REGISTRY.update(items[:at] + [(task.name, task)] + items[at:])
    return task


def unregister(name: str) -> None:
    get(name)
    del _REGISTRY[name]


def names() -> tuple[str, ...]:
    """Every registered task, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> Task:
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; registered: {', '.join(_REGISTRY)} "
                         "(a new task is registered with diwa_jax.envs.tasks.register)")
    return _REGISTRY[name]


def scripted() -> tuple[str, ...]:
    """The tasks play collection can perform, in registration order."""
    return tuple(name for name, task in _REGISTRY.items() if task.skill is not None)


def modules() -> tuple[str, ...]:
    """The modules outside this package that define registered tasks: a spawned worker process imports them
    (:func:`import_modules`) so that it knows the same tasks as its parent."""
    defining = {task.success.__module__ for task in _REGISTRY.values()}
    return tuple(sorted(m for m in defining if m != "__main__" and not m.startswith(__name__)))


def import_modules(names: tuple[str, ...]) -> None:
    for name in names:
        importlib.import_module(name)


def stream(name: str) -> int:
    """A task's random-stream number, from its name alone."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def success(name: str, scene_start, scene_now, xp=np):
    """Whether task ``name`` is done between two (batches of) ``scene_obs``: ``(...,)`` bool."""
    return get(name).success(xp, xp.asarray(scene_start), xp.asarray(scene_now))


def success_table(scene_start, scene_now, xp=np):
    """Every registered task's predicate, ``(..., len(names()))`` bool, columns in :func:`names` order."""
    columns = [success(name, scene_start, scene_now, xp) for name in _REGISTRY]
    return xp.stack(xp.broadcast_arrays(*columns), axis=-1)


def completed_tasks(scene_start, scene_now) -> tuple[str, ...]:
    """Names of the tasks whose predicate holds between two single ``scene_obs`` vectors."""
    flags = success_table(scene_start, scene_now)
    if flags.ndim != 1:
        raise ValueError(f"completed_tasks takes single (24,) scene_obs vectors, got batch shape {flags.shape[:-1]}")
    return tuple(name for name, done in zip(_REGISTRY, flags) if done)


for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
