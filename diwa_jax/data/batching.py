"""Host-side batching over a preprocessed cache: world-model sequences and expert windows.

Every batch is a pure function of ``(seed, step)``, so a resumed run draws exactly the batches it
would have drawn without the interruption.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from diwa_jax.data.calvin_format import CalvinSplit, DataError
from diwa_jax.data.preprocess import Cache

# The action fed with the first frame of a segment: no motion, gripper open (spec section 2.3).
RESET_ACTION = np.array([0, 0, 0, 0, 0, 0, 1], np.float32)

_OFFSET, _WINDOWS, _RESETS = 0, 1, 2  # independent random streams derived from (seed, tag, index)


def _rng(seed: int, tag: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, tag, index])


class SequenceSampler:
    """World-model training batches of ``batch_size`` sequences of ``seq_len`` consecutive rows.

    ``carry_state=True`` ("equidistant" streams): the split's rows, concatenated, are read by
    ``batch_size`` streams starting equally spaced from a random offset drawn per epoch; step k of an
    epoch continues every stream where step k-1 stopped, so the RSSM state can be carried across
    steps. A new epoch moves the streams, so its first step resets. ``carry_state=False``: independent
    random windows, each starting with a reset.

    ``reset`` is also True at segment starts and, with probability ``reset_prob``, anywhere.
    ``prev_action`` is the action that led into each frame (``RESET_ACTION`` at segment starts).
    """

    def __init__(self, cache: Cache, batch_size: int, seq_len: int, seed: int,
                 carry_state: bool = True, reset_prob: float = 0.0):
        n = len(cache)
        if n < seq_len:
            raise ValueError(f"SequenceSampler: {cache.path} has {n} frames, fewer than seq_len={seq_len}")
        self.cache = cache
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.carry_state = carry_state
        self.reset_prob = reset_prob
        self._segment_start = cache.segment_start
        # Streams never overlap within an epoch unless the split is shorter than batch_size x seq_len.
        self.steps_per_epoch = max(1, (n // batch_size) // seq_len)

    def rows(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, T) row indices of ``step`` and the (B, T) resets they start with (new stream/window)."""
        n, b, t = len(self.cache), self.batch_size, self.seq_len
        fresh = np.zeros((b, t), bool)
        if self.carry_state:
            epoch, k = divmod(step, self.steps_per_epoch)
            offset = _rng(self.seed, _OFFSET, epoch).integers(n)
            starts = (offset + np.arange(b) * n // b + k * t) % n
            # Row n-1 -> 0 wraps inside a window; row 0 is a segment start, so that resets anyway.
            rows = (starts[:, None] + np.arange(t)) % n
            fresh[:, 0] = k == 0
        else:
            starts = _rng(self.seed, _WINDOWS, step).integers(0, n - t + 1, size=b)
            rows = starts[:, None] + np.arange(t)
            fresh[:, 0] = True
        return rows.astype(np.int64), fresh

    def sample(self, step: int) -> dict[str, np.ndarray]:
        rows, fresh = self.rows(step)
        batch = model_inputs(self.cache, rows, self._segment_start)
        random_reset = _rng(self.seed, _RESETS, step).random(rows.shape) < self.reset_prob
        batch["reset"] = batch["reset"] | fresh | random_reset
        batch["rows"] = rows
        return batch


def model_inputs(cache: Cache, rows: np.ndarray, segment_start: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """What the world model reads at cache ``rows`` (any shape): both cameras, proprio, state, the
    action that led into each frame (``RESET_ACTION`` at segment starts) and resets at segment starts."""
    segment_start = cache.segment_start if segment_start is None else segment_start
    flat = rows.reshape(-1)
    at_start = segment_start[rows]
    prev_action = np.asarray(cache.rel_actions[(flat - 1) % len(cache)], np.float32).reshape(*rows.shape, -1)
    prev_action[at_start] = RESET_ACTION
    gather = lambda a: np.asarray(a[flat]).reshape(*rows.shape, *a.shape[1:])  # noqa: E731
    return {
        "rgb_static": gather(cache.rgb_static),
        "rgb_gripper": gather(cache.rgb_gripper),
        "proprio": gather(cache.proprio),
        "state": gather(cache.state),
        "prev_action": prev_action,
        "reset": at_start,
    }


def task_windows(split: CalvinSplit, cache: Cache, task: str) -> np.ndarray:
    """(W, 2) inclusive row windows of ``task``'s annotations, each clipped to the end of its segment."""
    frame_windows = split.task_windows(task)
    if len(frame_windows) == 0:
        return np.zeros((0, 2), np.int64)
    try:
        start = cache.rows_of(frame_windows[:, 0])
    except DataError as e:
        raise DataError(f"{split.dir}: annotations of '{task}' start outside the split's segments: {e}") from e
    segment = np.searchsorted(cache.segments[:, 0], start, side="right") - 1
    end = np.minimum(start + frame_windows[:, 1] - frame_windows[:, 0], cache.segments[segment, 1])
    return np.stack([start, end], axis=1)


def select_windows(windows: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` windows drawn without replacement (all of them when fewer), in their original order."""
    pick = np.random.default_rng(seed).choice(len(windows), size=min(n, len(windows)), replace=False)
    return windows[np.sort(pick)]


def expert_chunks(windows: np.ndarray, rel_actions: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Start rows ``(M,)`` and action chunks ``(M, horizon, 7)`` for every start whose chunk fits in its window.

    A window (s, e) of L = e - s + 1 frames gives starts s .. e - horizon + 1 (L - horizon + 1 chunks).
    """
    starts = np.concatenate([np.arange(s, e - horizon + 2, dtype=np.int64) for s, e in windows] or [np.zeros(0, np.int64)])
    chunks = np.asarray(rel_actions[(starts[:, None] + np.arange(horizon)).reshape(-1)], np.float32)
    return starts, chunks.reshape(len(starts), horizon, rel_actions.shape[-1])


def expert_windows(split: CalvinSplit, cache: Cache, task: str, n_windows: int, seed: int) -> np.ndarray:
    """``(W, 2)`` inclusive cache-row windows: ``n_windows`` of the task's annotated windows drawn with ``seed``."""
    windows = task_windows(split, cache, task)
    if len(windows) == 0:
        raise DataError(f"{split.dir}: no annotation windows of task '{task}'; collect more data or remove the "
                        "task from config.tasks")
    return select_windows(windows, n_windows, seed)


def other_task_windows(split: CalvinSplit, cache: Cache, task: str, n_per_task: int, seed: int) -> np.ndarray:
    """``(W, 2)`` inclusive cache-row windows: up to ``n_per_task`` annotated windows of every other task the
    split annotates (sorted by name), each task's drawn with ``seed``."""
    others = sorted(set(split.annotations().tasks) - {task})
    picked = [select_windows(task_windows(split, cache, other), n_per_task, seed) for other in others]
    return np.concatenate(picked or [np.zeros((0, 2), np.int64)]).reshape(-1, 2)


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    return max(1, math.ceil(n_samples / batch_size))


def epoch_batch_rows(n_samples: int, batch_size: int, seed: Sequence[int], step: int) -> np.ndarray:
    """Sample indices of gradient step ``step``: each epoch is a fresh permutation drawn from (seed, epoch),
    cut into ``ceil(n / batch_size)`` batches of exactly ``batch_size`` (the last one, and every batch when
    ``n < batch_size``, continue cyclically from the permutation's start), so the update compiles once."""
    per_epoch = steps_per_epoch(n_samples, batch_size)
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([*seed, epoch]).permutation(n_samples)
    return np.resize(order, per_epoch * batch_size)[k * batch_size:(k + 1) * batch_size]
