"""Metrics out of a run: TensorBoard scalars/images/videos, a JSONL of scalars, progress bars.

Only process 0 writes; on other processes every method is a no-op, so callers never branch on the
process index. Values may be device arrays: they are fetched here, once per call, never inside a
jitted loop.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Iterable, Mapping

import jax
import numpy as np

from diwa_jax.atomic import atomic_write


def is_main_process() -> bool:
    return jax.process_index() == 0


class MetricLogger:
    """Writes ``<logdir>/metrics.jsonl`` and TensorBoard event files (``tensorboard=True``)."""

    def __init__(self, logdir: str, *, tensorboard: bool = True, video: bool = False):
        self.logdir = logdir
        self._active = is_main_process()
        self._video = video
        self._tb = None
        self._jsonl = None
        if not self._active:
            return
        os.makedirs(logdir, exist_ok=True)
        self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(logdir=logdir, flush_secs=30)
        if video:
            try:
                import moviepy  # noqa: F401
            except ImportError as e:
                raise ImportError("config.log.video=True needs moviepy: pip install 'diwa-jax[video]'") from e

    def scalars(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
        """Log scalars; returns them as Python floats (handy for progress bars)."""
        values = {f"{prefix}{k}": float(v) for k, v in jax.device_get(dict(metrics)).items()}
        if not self._active:
            return values
        self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **values}) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, int(step))
        return values

    def drop_after(self, step: int) -> None:
        """Forget the lines logged after ``step``: a run resumed from the checkpoint of ``step`` logs them
        again (TensorBoard keeps both; it shows the latest)."""
        if not self._active:
            return
        path = os.path.join(self.logdir, "metrics.jsonl")
        self._jsonl.close()
        with open(path) as f:
            lines = f.readlines()
        kept = [line for line in lines if _logged_step(line) <= step]
        if len(kept) != len(lines):
            atomic_write(path, lambda f: f.write("".join(kept).encode()))
        self._jsonl = open(path, "a", buffering=1)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """``image``: (H, W, 3) uint8 or float in [0, 1]."""
        if self._active and self._tb is not None:
            self._tb.add_image(tag, _to_uint8(image), int(step), dataformats="HWC")

    def video(self, step: int, tag: str, frames: np.ndarray, fps: int = 15) -> None:
        """``frames``: (T, H, W, 3); written only when video logging is on."""
        if self._active and self._tb is not None and self._video:
            vid = _to_uint8(frames)[None].transpose(0, 1, 4, 2, 3)  # N T C H W
            self._tb.add_video(tag, vid, int(step), fps=fps)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()

    def __enter__(self) -> "MetricLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _logged_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")  # a line cut by a kill: dropped


def _to_uint8(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    return (np.clip(x, 0.0, 1.0) * 255).round().astype(np.uint8)


def progress(iterable: Iterable, *, total: int | None = None, initial: int = 0, desc: str = "",
             enabled: bool = True):
    """A tqdm bar on process 0 (to stderr); the bare iterable elsewhere or when disabled."""
    if not (enabled and is_main_process()):
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, initial=initial, desc=desc, file=sys.stderr, dynamic_ncols=True,
                mininterval=2.0)


def info(message: str) -> None:
    """A one-line status message on process 0."""
    if is_main_process():
        print(message, flush=True)
