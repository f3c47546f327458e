"""The ``collect`` stage: scripted play in the embedded play-table, written in CALVIN's format.

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
import os
from pathlib import Path

import numpy as np

from diwa_jax.atomic import atomic_write
from diwa_jax.data import calvin_format as cf
from diwa_jax.envs.oracle import TASKS, success_all_np
from diwa_jax.logging import info, progress
from diwa_jax.workers import worker_pool

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


def _record_path(job: SegmentJob) -> Path:
    return Path(job.split_dir) / SEGMENT_RECORDS / f"segment_{job.segment_index:05d}.npz"


def annotation_window(scenes: np.ndarray, completed: int, task: str, window: int, post: int) -> tuple[int, int]:
    """CALVIN-style window (segment offsets, inclusive) around the completion of ``task`` at offset
    ``completed``: it ends ``post`` frames after it and spans ``window`` frames, shorter near the
    segment start, or where an earlier start would not satisfy the oracle (the window then starts at
    the first frame from which the task counts as done at ``completed``, so labels relative to the
    window's first frame hold)."""
    end = min(completed + post, len(scenes) - 1)
    start = max(end - window + 1, 0)
    holds = success_all_np(scenes[start:completed + 1], scenes[completed])[:, TASKS.index(task)]
    return start + int(np.argmax(holds)), end


_ENV = None  # one simulator per worker process, built by _init_worker


def _init_worker(env_kwargs: dict) -> None:
    global _ENV
    from diwa_jax.envs.playtable.env import PlayTable
    _ENV = PlayTable(**env_kwargs)


def _collect_segment(job: SegmentJob) -> int:
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
    path = _record_path(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {f.name: np.asarray(getattr(stats, f.name)) for f in dataclasses.fields(stats)}
    atomic_write(path, lambda f: np.savez(f, windows=np.asarray(windows, np.int64).reshape(-1, 2),
                                              tasks=np.asarray(tasks, dtype=str), **fields))
    return job.n_frames


def _segment_done(job: SegmentJob) -> bool:
    """The segment's record exists and so does every frame it was made from (a record alone is not
    enough: frames deleted or lost since are remade)."""
    if not _record_path(job).exists():
        return False
    split_dir = Path(job.split_dir)
    return all((split_dir / cf.frame_filename(job.first_id + i)).exists() for i in range(job.n_frames))


def _load_record(job: SegmentJob) -> tuple[np.ndarray, list[str], cf.RunningStats]:
    with np.load(_record_path(job)) as rec:
        stats = cf.RunningStats(**{f.name: (int(rec[f.name]) if f.name == "count" else rec[f.name])
                                   for f in dataclasses.fields(cf.RunningStats)})
        return rec["windows"], [str(t) for t in rec["tasks"]], stats


def plan(config) -> dict[str, list[SegmentJob]]:
    c = config.collect
    jobs, first = {}, 0
    for split_index, (split, total) in enumerate(zip(SPLITS, (c.train_frames, c.val_frames))):
        split_dir = os.path.join(config.derived.data_dir, split)
        sizes = [c.segment_frames] * (total // c.segment_frames)
        if total % c.segment_frames:
            sizes.append(total % c.segment_frames)
        jobs[split] = []
        for i, n in enumerate(sizes):
            jobs[split].append(SegmentJob(split_dir, split_index, i, first, n, config.seed, c.skill_noise,
                                          c.failure_prob, c.window, c.post_completion_frames))
            first += n
    return jobs


def collect(config) -> dict:
    """Stage runner: collect every missing segment, then write each split's metadata."""
    env_kwargs = dict(static_size=config.env.static_size, gripper_size=config.env.gripper_size,
                      renderer=config.env.renderer, render=True)
    jobs = plan(config)
    todo = [j for split in SPLITS for j in jobs[split] if not _segment_done(j)]
    total = sum(j.n_frames for split in SPLITS for j in jobs[split])
    done = total - sum(j.n_frames for j in todo)
    if done:
        info(f"[collect] resuming: {done} of {total} frames already written")
    for split in SPLITS:
        os.makedirs(os.path.join(config.derived.data_dir, split), exist_ok=True)
    if todo:
        bar = progress(range(total), total=total, initial=done, desc="collect", enabled=config.log.progress)
        workers = min(config.collect.workers, len(todo))
        with worker_pool(workers, initializer=_init_worker, initargs=(env_kwargs,)) as pool:
            for n in pool.imap_unordered(_collect_segment, todo):
                if hasattr(bar, "update"):
                    bar.update(n)
        if hasattr(bar, "close"):
            bar.close()
    summary = {}
    for split in SPLITS:
        windows, tasks, stats = [], [], cf.RunningStats()
        for job in jobs[split]:
            w, t, s = _load_record(job)
            windows.append(w)
            tasks += t
            stats = stats.merge(s)
        segments = [(j.first_id, j.first_id + j.n_frames - 1) for j in jobs[split]]
        cf.write_split_metadata(jobs[split][0].split_dir, segments, stats.to_statistics(),
                                cf.make_lang_annotations(np.concatenate(windows), tasks))
        summary[split] = {"frames": stats.count, "windows": {t: tasks.count(t) for t in sorted(set(tasks))}}
    return summary
