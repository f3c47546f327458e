"""Scripted play in a simulator of any backend, written in CALVIN's format.

Each split is cut into recorded segments (rows of ``ep_start_end_ids``) of ``collect.segment_frames``
frames. A segment is one ``play_stream`` from a random start, seeded by (seed, split, segment), so it
is the same data whichever worker makes it and however often the run is restarted. Workers (separate
processes, each with its own simulator) write frames and then a small per-segment record (annotation
windows, statistics sums); a rerun skips segments whose record and frames exist. Workers die with
the parent. When every segment is there, the parent writes the split's metadata. Frame ids: training
first, validation after it, one id space as in CALVIN. The data set lives in the stage's own folder,
``<workdir>/collect/data``, so deleting that folder redoes the collection.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from diwa_jax.atomic import atomic_write
from diwa_jax.data import calvin_format as cf
from diwa_jax.envs import tasks

SPLITS = ("training", "validation")
SEGMENT_RECORDS = ".segments"


@dataclasses.dataclass(frozen=True)
class SegmentJob:
    split_dir: str
    split_index: int
    segment_index: int
    first_id: int
    n_frames: int
    seed: int
    noise: float
    failure_prob: float
    window: int
    post_completion: int


def record_path(job: SegmentJob) -> Path:
    return Path(job.split_dir) / SEGMENT_RECORDS / f"segment_{job.segment_index:05d}.npz"


def annotation_window(scenes: np.ndarray, completed: int, task: str, window: int, post: int) -> tuple[int, int]:
    """CALVIN-style window (segment offsets, inclusive) around the completion of ``task`` at offset
    ``completed``: it ends ``post`` frames after it and spans ``window`` frames, shorter near the
    segment start, or where an earlier start would not satisfy the oracle (the window then starts at
    the first frame from which the task counts as done at ``completed``, so labels relative to the
    window's first frame hold)."""
    end = min(completed + post, len(scenes) - 1)
    start = max(end - window + 1, 0)
    holds = tasks.success(task, scenes[start:completed + 1], scenes[completed])
    return start + int(np.argmax(holds)), end


_ENV = None  # one simulator per worker process, built by init_worker


def init_worker(make_env, task_modules: tuple[str, ...]) -> None:
    """Builds this worker's simulator with ``make_env`` (a picklable callable: any backend)."""
    global _ENV
    tasks.import_modules(task_modules)  # play labels every task its parent knows
    _ENV = make_env()


def collect_segment(job: SegmentJob) -> int:
    from diwa_jax.envs.playtable.play import play_stream

    rng = np.random.default_rng([job.seed, job.split_index, job.segment_index])
    stats = cf.RunningStats()
    scenes = np.zeros((job.n_frames, 24))
    completions = []
    for offset, frame in enumerate(play_stream(_ENV, rng, job.n_frames, job.noise, job.failure_prob)):
        record = {**frame.obs, "rel_actions": frame.rel_action, "actions": frame.actions_abs}
        cf.write_frame(job.split_dir, job.first_id + offset, record)
        stats.add(record)
        scenes[offset] = frame.obs["scene_obs"]
        completions += [(offset, task) for task in frame.completed]
    tasks = [task for _, task in completions]
    windows = [np.add(annotation_window(scenes, offset, task, job.window, job.post_completion), job.first_id)
               for offset, task in completions]
    path = record_path(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {f.name: np.asarray(getattr(stats, f.name)) for f in dataclasses.fields(stats)}
    atomic_write(path, lambda f: np.savez(f, windows=np.asarray(windows, np.int64).reshape(-1, 2),
                                              tasks=np.asarray(tasks, dtype=str), **fields))
    return job.n_frames


def segment_done(job: SegmentJob) -> bool:
    """The segment's record exists and so does every frame it was made from (a record alone is not
    enough: frames deleted or lost since are remade)."""
    if not record_path(job).exists():
        return False
    split_dir = Path(job.split_dir)
    return all((split_dir / cf.frame_filename(job.first_id + i)).exists() for i in range(job.n_frames))


def load_record(job: SegmentJob) -> tuple[np.ndarray, list[str], cf.RunningStats]:
    with np.load(record_path(job)) as rec:
        stats = cf.RunningStats(**{f.name: (int(rec[f.name]) if f.name == "count" else rec[f.name])
                                   for f in dataclasses.fields(cf.RunningStats)})
        return rec["windows"], [str(t) for t in rec["tasks"]], stats
