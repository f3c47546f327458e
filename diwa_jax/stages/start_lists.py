"""Fixed evaluation start lists (used by the finetune and evaluate stages and by re-evaluation).

Per task two lists, made once and stored in ``<workdir>/starts/<task>/<list>.npz``, so every policy, every
fine-tuning seed and every rerun is judged from exactly the same starts:

* ``final``: the result table's episodes (the evaluate stage and re-evaluation);
* ``periodic``: the smaller list of fine-tuning's periodic evaluations (the success curves), disjoint from
  ``final``, so nothing about the final list is seen before the end.

``config.eval.start_source``:
  ``validation`` (CALVIN's protocol): the first state of each validation window of the task, shuffled with
    ``eval.start_seed``; the first ``eval.periodic_episodes`` form the periodic list, the next
    ``eval.episodes`` (0: all the rest) the final one.
  ``simulator``: random starts of the task in the backend's scene (its registered start distribution,
    ``skills.sample_start_state``), each list from its own numpy
    stream ``(eval.start_seed, crc32(task), stream)``. ``config.seed`` is not part of it, so runs of other
    seeds evaluate on the same lists; fine-tuning's start pools come from streams with ``config.seed``
    and a different stream number. Streams follow the task's name, not its position in the task list.
A stored list made under other values of those keys is refused (the file is named, so it can be deleted).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from diwa_jax import artifacts, specs
from diwa_jax.atomic import atomic_write
from diwa_jax.data.batching import task_windows
from diwa_jax.data.calvin_format import CalvinSplit
from diwa_jax.envs import tasks
from diwa_jax.errors import ConfigError, DataError

LISTS = ("final", "periodic")
STREAMS = {"final": 7101, "periodic": 7102}
SHAPING_KEYS = {"final": ("start_source", "start_seed", "episodes", "periodic_episodes"),  # of config.eval
                "periodic": ("start_source", "start_seed", "periodic_episodes")}


@dataclasses.dataclass(frozen=True)
class StartList:
    robot_obs: np.ndarray  # (E, 15)
    scene_obs: np.ndarray  # (E, 24)
    source: str  # validation | simulator
    name: str  # final | periodic

    def __len__(self) -> int:
        return len(self.robot_obs)

    @property
    def states(self) -> tuple[np.ndarray, np.ndarray]:
        return self.robot_obs, self.scene_obs

    def describe(self) -> str:
        return f"{self.name} list, {len(self)} {self.source} starts"


def sampled_starts(task: str, n: int, stream: tuple[int, ...], geometry) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random starts of ``task`` in a scene of ``geometry`` from the numpy stream ``stream``: ``(robot_obs
    (n, 15), scene_obs (n, 24))``; the first ``m`` of ``n`` are the ``m`` starts of a shorter draw."""
    from diwa_jax.envs.playtable.skills import sample_start_state  # pybullet kinematics: import on use
    rng = np.random.default_rng(list(stream))
    robot, scene = zip(*(sample_start_state(task, rng, geometry) for _ in range(n)))
    return np.stack(robot), np.stack(scene)


def window_starts(split: CalvinSplit, cache, task: str) -> tuple[np.ndarray, np.ndarray]:
    """The first robot/scene state of every window of ``task`` in ``split`` (its ``cache``), in window order:
    CALVIN's start states (evaluation's validation lists, fine-tuning's pool with the calvin_env backend)."""
    rows = task_windows(split, cache, task)[:, 0]
    return np.asarray(cache.robot_obs[rows]), np.asarray(cache.scene_obs[rows])


def _make(config, task: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    e = config.eval
    if e.start_source == "simulator":
        return sampled_starts(task, e.episodes if name == "final" else e.periodic_episodes,
                              (e.start_seed, tasks.stream(task), STREAMS[name]), specs.scene_geometry(config))
    robot, scene = window_starts(CalvinSplit(artifacts.data_split_dir(config, "validation")),
                                 artifacts.caches(config)["validation"], task)
    if len(robot) <= e.periodic_episodes:
        raise DataError(f"{artifacts.data_split_dir(config, 'validation')}: {len(robot)} validation windows of "
                        f"'{task}', not more than config.eval.periodic_episodes={e.periodic_episodes}; collect more "
                        "validation data, lower eval.periodic_episodes or use eval.start_source='simulator'")
    order = np.random.default_rng([e.start_seed, tasks.stream(task), STREAMS["final"]]).permutation(len(robot))
    periodic, final = order[:e.periodic_episodes], order[e.periodic_episodes:]
    if e.episodes:
        final = final[:e.episodes]
    rows = final if name == "final" else periodic
    return robot[rows], scene[rows]


def start_list(config, task: str, name: str) -> StartList:
    """The stored start list ``name`` of ``task`` (made and stored on first use)."""
    if name not in LISTS:
        raise ValueError(f"start list {name!r}: choose one of {', '.join(LISTS)}")
    path = artifacts.start_list_path(config, task, name)
    wanted = {k: config.eval[k] for k in SHAPING_KEYS[name]}
    if not os.path.exists(path):
        robot, scene = _make(config, task, name)
        atomic_write(path, lambda f: np.savez(f, robot_obs=robot, scene_obs=scene,
                                              **{k: np.asarray(v) for k, v in wanted.items()}))
    with np.load(path) as saved:
        stored = {k: saved[k].item() for k in wanted if k in saved}
        differ = [k for k in wanted if stored.get(k) != wanted[k]]
        if differ:
            keys = ", ".join(f"config.eval.{k}={wanted[k]!r} (the list has {stored.get(k)!r})" for k in differ)
            redo = "evaluate/" if name == "final" else "finetune/ and evaluate/"
            raise ConfigError(f"{path}: the stored {name} start list was made under other values: {keys}; restore "
                              f"them, or delete the file and the {redo} folders to redo what used it")
        return StartList(saved["robot_obs"], saved["scene_obs"], config.eval.start_source, name)
