"""The ``collect`` stage: every missing recorded segment of both splits (``data/collect.py``), then each split's
metadata. Workers are separate processes, each with its own simulator of ``config.env.backend``; the data set
records which simulator made it (``artifacts.data_simulator``)."""
from __future__ import annotations

import os

import numpy as np

from diwa_jax import artifacts
from diwa_jax.data import calvin_format as cf
from diwa_jax.data.collect import SPLITS, SegmentJob, collect_segment, init_worker, load_record, segment_done
from diwa_jax.envs import tasks as task_registry
from diwa_jax.logging import info, progress
from diwa_jax.specs import env_factory
from diwa_jax.workers import worker_pool


def plan(config) -> dict[str, list[SegmentJob]]:
    c = config.collect
    jobs, first = {}, 0
    for split_index, (split, total) in enumerate(zip(SPLITS, (c.train_frames, c.val_frames))):
        split_dir = artifacts.data_split_dir(config, split)
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
    jobs = plan(config)
    todo = [j for split in SPLITS for j in jobs[split] if not segment_done(j)]
    total = sum(j.n_frames for split in SPLITS for j in jobs[split])
    done = total - sum(j.n_frames for j in todo)
    if done:
        info(f"[collect] resuming: {done} of {total} frames already written")
    os.makedirs(config.derived.data_dir, exist_ok=True)
    artifacts.record_data_simulator(config)  # before the first frame: a resumed collection checks it up front
    for split in SPLITS:
        os.makedirs(artifacts.data_split_dir(config, split), exist_ok=True)
    if todo:
        bar = progress(range(total), total=total, initial=done, desc="collect", enabled=config.log.progress)
        workers = min(config.collect.workers, len(todo))
        with worker_pool(workers, initializer=init_worker,
                         initargs=(env_factory(config), task_registry.modules())) as pool:
            for n in pool.imap_unordered(collect_segment, todo):
                if hasattr(bar, "update"):
                    bar.update(n)
        if hasattr(bar, "close"):
            bar.close()
    summary = {}
    for split in SPLITS:
        windows, tasks, stats = [], [], cf.RunningStats()
        for job in jobs[split]:
            w, t, s = load_record(job)
            windows.append(w)
            tasks += t
            stats = stats.merge(s)
        segments = [(j.first_id, j.first_id + j.n_frames - 1) for j in jobs[split]]
        cf.write_split_metadata(jobs[split][0].split_dir, segments, stats.to_statistics(),
                                cf.make_lang_annotations(np.concatenate(windows), tasks))
        summary[split] = {"frames": stats.count, "windows": {t: tasks.count(t) for t in sorted(set(tasks))}}
    return summary
