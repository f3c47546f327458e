"""Preprocessed cache of a CALVIN split: 64x64 images, rot6d state, min-max normalisation.

A split of ~500k frames is never held in memory: every array is a memory-mapped ``.npy`` under
``<cache_dir>/<split>/``, filled chunk by chunk by worker processes that decode the npz frames and
write their rows directly. A finished chunk leaves a marker, so a killed build rerun with the same
arguments continues where it stopped; ``complete.json`` marks a finished cache, which is then reused.

Arrays (N frames in segment order, E segments):
  rgb_static, rgb_gripper (N, S, S, 3) uint8   area-interpolated (OpenCV INTER_AREA's rule)
  robot_obs (N, 15), scene_obs (N, 24) float64  raw
  rel_actions (N, 7) float32
  frame_ids (N,) int64;  segments (E, 2) int64 inclusive row bounds
  proprio (N, 18) float32   robot_obs, tcp euler -> rot6d, min-max normalised
  state (N, 51) float32     proprio (18) + scene (33: 6 scalars + 3 blocks x (pos 3 + rot6d 6)), normalised
Normalisation statistics come from the training split and are reused for the others (``stats.json``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from diwa_jax.atomic import write_json
from diwa_jax.workers import worker_pool
from diwa_jax.data.calvin_format import (EP_START_END_IDS, IMAGE_KEYS, LANG_ANN, STATISTICS, CalvinSplit, DataError,
                                        FrameSpec, read_frame)

CACHE_VERSION = 2
RAW_KEYS = ("rgb_static", "rgb_gripper", "robot_obs", "scene_obs", "rel_actions")
N_BLOCKS = 3  # red, blue, pink: scene_obs[6:24] = 3 x (pos 3, euler 3)
PLAN = "plan.json"
STATS = "stats.json"
COMPLETE = "complete.json"
PROGRESS = ".progress"
ROWS_PER_PASS = 65536  # rows per pass over the small state arrays (bounded memory)


# ------------------------------------------------------------------------------------------------
# Pure transforms
# ------------------------------------------------------------------------------------------------


def euler_to_matrix(euler: np.ndarray) -> np.ndarray:
    """(..., 3) CALVIN/pybullet euler (roll, pitch, yaw about fixed x, y, z) -> (..., 3, 3).

    ``R = Rz(yaw) @ Ry(pitch) @ Rx(roll)``, the rotation of pybullet's ``getQuaternionFromEuler``.
    """
    a, b, c = np.moveaxis(np.asarray(euler, np.float64), -1, 0)
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rows = [
        [cc * cb, cc * sb * sa - sc * ca, cc * sb * ca + sc * sa],
        [sc * cb, sc * sb * sa + cc * ca, sc * sb * ca - cc * sa],
        [-sb, cb * sa, cb * ca],
    ]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def euler_to_rot6d(euler: np.ndarray) -> np.ndarray:
    """(..., 3) euler -> (..., 6): the first two columns of the rotation matrix, column after column."""
    m = euler_to_matrix(euler)
    return np.concatenate([m[..., :, 0], m[..., :, 1]], axis=-1)


def proprio_dim(rot6d: bool) -> int:
    """Width of ``robot_obs_to_proprio``'s output: tcp pos 3, orientation (rot6d 6 | euler 3), width, 7 joints,
    gripper."""
    return 18 if rot6d else 15


def scene_state_dim(rot6d: bool) -> int:
    """Width of ``scene_obs_to_state``'s output: 6 scalars + 3 blocks x (pos 3 + orientation)."""
    return 33 if rot6d else 24


def robot_obs_to_proprio(robot_obs: np.ndarray, rot6d: bool = True) -> np.ndarray:
    """(..., 15) robot_obs -> (..., 18) [tcp pos 3, tcp rot6d 6, width 1, joints 7, gripper 1] (15 unchanged without rot6d)."""
    robot_obs = np.asarray(robot_obs, np.float64)
    if not rot6d:
        return robot_obs
    return np.concatenate([robot_obs[..., :3], euler_to_rot6d(robot_obs[..., 3:6]), robot_obs[..., 6:]], axis=-1)


def scene_obs_to_state(scene_obs: np.ndarray, rot6d: bool = True) -> np.ndarray:
    """(..., 24) scene_obs -> (..., 33) [6 articulation/light scalars, 3 x (pos 3, rot6d 6)] (24 unchanged without rot6d)."""
    scene_obs = np.asarray(scene_obs, np.float64)
    if not rot6d:
        return scene_obs
    parts = [scene_obs[..., :6]]
    for i in range(N_BLOCKS):
        block = scene_obs[..., 6 + 6 * i : 12 + 6 * i]
        parts += [block[..., :3], euler_to_rot6d(block[..., 3:])]
    return np.concatenate(parts, axis=-1)


def area_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Area interpolation along one axis as (dst, K) source indices and weights.

    Output pixel i averages the source interval [i, i + 1) * src / dst, each source pixel weighted by
    its overlap (OpenCV's INTER_AREA rule; PIL's BOX filter instead takes whole pixels whose centre
    falls inside, which differs at fractional scales). Each output touches at most K = ceil(scale) + 1
    neighbouring pixels, so the resize is K multiply-adds per pixel and needs no (thread-hungry) BLAS.
    """
    scale = src / dst
    lo = np.arange(dst) * scale
    first = np.floor(lo).astype(np.int64)
    index = first[:, None] + np.arange(int(np.ceil(scale)) + 1)
    overlap = np.minimum(lo[:, None] + scale, index + 1) - np.maximum(lo[:, None], index)
    weight = np.where(index < src, np.clip(overlap, 0.0, None), 0.0) / scale
    return np.minimum(index, src - 1), weight.astype(np.float32)


def resize_area(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) uint8 -> (size, size, C) uint8 by area interpolation, rounded to nearest."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    (rows, row_w), (cols, col_w) = area_taps(h, size), area_taps(w, size)
    x = image.astype(np.float32)
    x = np.einsum("ikwc,ik->iwc", x[rows], row_w)  # (size, W, C)
    x = np.einsum("ijkc,jk->ijc", x[:, cols], col_w)  # (size, size, C)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class NormStats:
    """Min-max statistics of the (un-normalised) proprio and state vectors of the training split."""

    proprio_min: np.ndarray
    proprio_max: np.ndarray
    state_min: np.ndarray
    state_max: np.ndarray
    rot6d: bool
    source: str  # the split the statistics were computed on

    @staticmethod
    def _scale(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        # A dimension constant over the data set (range 0) maps to 0 instead of dividing by zero.
        return np.where(hi - lo > 1e-8, hi - lo, 1.0)

    def normalize_proprio(self, proprio: np.ndarray) -> np.ndarray:
        return ((proprio - self.proprio_min) / self._scale(self.proprio_min, self.proprio_max)).astype(np.float32)

    def normalize_state(self, state: np.ndarray) -> np.ndarray:
        return ((state - self.state_min) / self._scale(self.state_min, self.state_max)).astype(np.float32)

    def denormalize_state(self, state: np.ndarray) -> np.ndarray:
        return np.asarray(state, np.float64) * self.state_scale() + self.state_min

    def state_scale(self) -> np.ndarray:
        """``denormalize_state(x) = x * state_scale() + state_min``, for code that denormalises in JAX."""
        return self._scale(self.state_min, self.state_max)

    def to_json(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "NormStats":
        arrays = {k: np.asarray(d[k], np.float64) for k in ("proprio_min", "proprio_max", "state_min", "state_max")}
        return cls(**arrays, rot6d=bool(d["rot6d"]), source=str(d["source"]))

    def same_values(self, other: "NormStats") -> bool:
        return self.rot6d == other.rot6d and all(
            np.array_equal(getattr(self, k), getattr(other, k)) for k in ("proprio_min", "proprio_max", "state_min", "state_max"))


def wm_observation(obs: dict, stats: NormStats, image_size: int = 64, keys: Sequence[str] | None = None) -> dict:
    """A simulator observation as the world model reads it, exactly as the data cache stores frames: both
    cameras area-resized to ``image_size``, proprio (18) and state (51) min-max normalised with ``stats``.
    ``keys``: only these of rgb_static, rgb_gripper, proprio, state (None: all)."""
    proprio = robot_obs_to_proprio(obs["robot_obs"], stats.rot6d)
    wanted = ("rgb_static", "rgb_gripper", "proprio", "state") if keys is None else tuple(keys)
    out = {}
    for camera in ("rgb_static", "rgb_gripper"):
        if camera in wanted:
            out[camera] = resize_area(np.asarray(obs[camera]), image_size)
    if "proprio" in wanted:
        out["proprio"] = stats.normalize_proprio(proprio)
    if "state" in wanted:
        out["state"] = stats.normalize_state(np.concatenate([proprio, scene_obs_to_state(obs["scene_obs"], stats.rot6d)], axis=-1))
    return out


def _proprio_and_state(robot_obs: np.ndarray, scene_obs: np.ndarray, rot6d: bool) -> tuple[np.ndarray, np.ndarray]:
    proprio = robot_obs_to_proprio(robot_obs, rot6d)
    return proprio, np.concatenate([proprio, scene_obs_to_state(scene_obs, rot6d)], axis=-1)


def compute_norm_stats(robot_obs: np.ndarray, scene_obs: np.ndarray, rot6d: bool, source: str) -> NormStats:
    """Min/max of proprio and state over all rows, reading ``robot_obs``/``scene_obs`` (memmaps) in chunks."""
    lo_p = hi_p = lo_s = hi_s = None
    for r0 in range(0, len(robot_obs), ROWS_PER_PASS):
        rows = slice(r0, r0 + ROWS_PER_PASS)
        p, s = _proprio_and_state(robot_obs[rows], scene_obs[rows], rot6d)
        lo_p = p.min(0) if lo_p is None else np.minimum(lo_p, p.min(0))
        hi_p = p.max(0) if hi_p is None else np.maximum(hi_p, p.max(0))
        lo_s = s.min(0) if lo_s is None else np.minimum(lo_s, s.min(0))
        hi_s = s.max(0) if hi_s is None else np.maximum(hi_s, s.max(0))
    return NormStats(lo_p, hi_p, lo_s, hi_s, rot6d=rot6d, source=source)


# ------------------------------------------------------------------------------------------------
# Cache build
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ChunkTask:
    cache_dir: str
    index: int
    row0: int
    paths: tuple[str, ...]
    spec: FrameSpec
    image_size: int


def _decode_chunk(task: _ChunkTask) -> int:
    """Worker: decodes a chunk's frames and writes its rows straight into the cache's memmaps."""
    out = {k: np.load(os.path.join(task.cache_dir, f"{k}.npy"), mmap_mode="r+") for k in RAW_KEYS}
    for i, path in enumerate(task.paths):
        frame = read_frame(path, task.spec, RAW_KEYS)
        row = task.row0 + i
        for k in IMAGE_KEYS:
            out[k][row] = resize_area(frame[k], task.image_size)
        for k in ("robot_obs", "scene_obs", "rel_actions"):
            out[k][row] = frame[k]
    for array in out.values():
        array.flush()
    return task.index


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _plan(split: CalvinSplit, image_size: int, rot6d: bool, chunk_frames: int) -> dict:
    return {
        "version": CACHE_VERSION,
        "source": str(split.dir.resolve()),
        "n_frames": len(split),
        "frame_ids_sha1": hashlib.sha1(split.frame_ids.tobytes()).hexdigest(),
        # the split's side files change with its content (statistics are sums over every frame): a split
        # regenerated in place under other values never reuses the old cache
        "metadata_sha1": _files_sha1(split.dir, (STATISTICS, EP_START_END_IDS, LANG_ANN)),
        "image_shapes": [list(split.spec.shape(k)) for k in IMAGE_KEYS],
        "image_size": image_size,
        "rot6d": rot6d,
        "chunk_frames": chunk_frames,
    }


def _files_sha1(directory: Path, names: Sequence[str]) -> str:
    digest = hashlib.sha1()
    for name in names:
        path = directory / name
        digest.update(name.encode() + (path.read_bytes() if path.exists() else b"<absent>"))
    return digest.hexdigest()


def _start_fresh(out: Path, split: CalvinSplit, plan: dict) -> None:
    """Empties ``out`` and allocates every array; the plan, written last, says the allocation finished."""
    if out.exists():
        shutil.rmtree(out)
    (out / PROGRESS).mkdir(parents=True)
    n, size = len(split), plan["image_size"]
    proprio, state = _proprio_and_state(np.zeros(15), np.zeros(24), plan["rot6d"])
    shapes = {
        "rgb_static": ((n, size, size, 3), np.uint8),
        "rgb_gripper": ((n, size, size, 3), np.uint8),
        "robot_obs": ((n, 15), np.float64),
        "scene_obs": ((n, 24), np.float64),
        "rel_actions": ((n, 7), np.float32),
        "proprio": ((n, len(proprio)), np.float32),
        "state": ((n, len(state)), np.float32),
    }
    for name, (shape, dtype) in shapes.items():
        np.lib.format.open_memmap(out / f"{name}.npy", mode="w+", dtype=dtype, shape=shape).flush()
    np.save(out / "frame_ids.npy", split.frame_ids)
    lengths = split.segments[:, 1] - split.segments[:, 0] + 1
    ends = np.cumsum(lengths) - 1
    np.save(out / "segments.npy", np.stack([ends - lengths + 1, ends], axis=1).astype(np.int64))
    write_json(out / PLAN, plan)


def build_cache(
    split_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    stats: NormStats | None = None,
    image_size: int = 64,
    rot6d: bool = True,
    workers: int = 2,
    chunk_frames: int = 512,
    progress: bool = True,
) -> Path:
    """Builds, resumes or reuses the cache of one split in ``<cache_dir>/<split name>``; returns that path.

    ``stats=None`` computes the normalisation statistics on this split (the training split); pass the
    training split's ``load_cache(...).stats`` for the others. ``workers > 1`` decodes in that many
    spawned processes (a script calling this needs the ``if __name__ == "__main__"`` guard).
    """
    if stats is not None and stats.rot6d != rot6d:
        raise ValueError(f"build_cache: statistics from {stats.source} have rot6d={stats.rot6d}, this build rot6d={rot6d}")
    split = CalvinSplit(split_dir)
    out = Path(cache_dir) / split.name
    plan = _plan(split, image_size, rot6d, chunk_frames)
    if _read_json(out / PLAN) != plan:
        _start_fresh(out, split, plan)
    if (out / COMPLETE).exists() and (stats is None or NormStats.from_json(_read_json(out / STATS)).same_values(stats)):
        return out
    (out / COMPLETE).unlink(missing_ok=True)

    n_chunks = -(-len(split) // chunk_frames)
    marker = lambda i: out / PROGRESS / f"chunk_{i:06d}.done"
    todo = [
        _ChunkTask(str(out), i, i * chunk_frames,
                   tuple(str(split.frame_path(f)) for f in split.frame_ids[i * chunk_frames : (i + 1) * chunk_frames]),
                   split.spec, image_size)
        for i in range(n_chunks) if not marker(i).exists()
    ]
    sizes = {t.index: len(t.paths) for t in todo}
    with tqdm(total=len(split), initial=len(split) - sum(sizes.values()), unit="frame",
              desc=f"cache {split.name}", disable=not progress) as bar:
        if workers > 1 and len(todo) > 1:
            pool = worker_pool(min(workers, len(todo)))
            finished = pool.imap_unordered(_decode_chunk, todo)
        else:
            pool, finished = None, map(_decode_chunk, todo)
        try:
            for index in finished:
                marker(index).touch()  # after the worker flushed the chunk's rows
                bar.update(sizes[index])
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()

    robot_obs = np.load(out / "robot_obs.npy", mmap_mode="r")
    scene_obs = np.load(out / "scene_obs.npy", mmap_mode="r")
    if stats is None:
        stats = compute_norm_stats(robot_obs, scene_obs, rot6d, source=str(split.dir.resolve()))
    proprio = np.load(out / "proprio.npy", mmap_mode="r+")
    state = np.load(out / "state.npy", mmap_mode="r+")
    for r0 in range(0, len(split), ROWS_PER_PASS):
        rows = slice(r0, r0 + ROWS_PER_PASS)
        p, s = _proprio_and_state(robot_obs[rows], scene_obs[rows], rot6d)
        proprio[rows] = stats.normalize_proprio(p)
        state[rows] = stats.normalize_state(s)
    proprio.flush()
    state.flush()
    write_json(out / STATS, stats.to_json())
    write_json(out / COMPLETE, {"n_frames": len(split)})
    return out


def build_dataset_cache(root: str | os.PathLike, cache_dir: str | os.PathLike,
                        splits: Sequence[str] = ("training", "validation"), **kwargs) -> dict[str, Path]:
    """Caches the splits of a CALVIN root (e.g. ``task_D_D``); the first split's statistics normalise all."""
    paths: dict[str, Path] = {}
    stats = None
    for name in splits:
        paths[name] = build_cache(Path(root) / name, cache_dir, stats=stats, **kwargs)
        stats = stats or load_cache(paths[name]).stats
    return paths


# ------------------------------------------------------------------------------------------------
# Cache access
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cache:
    """A finished cache: read-only memmaps plus segment bounds and normalisation statistics."""

    path: Path
    rgb_static: np.ndarray
    rgb_gripper: np.ndarray
    robot_obs: np.ndarray
    scene_obs: np.ndarray
    rel_actions: np.ndarray
    proprio: np.ndarray
    state: np.ndarray
    frame_ids: np.ndarray
    segments: np.ndarray
    stats: NormStats

    def __len__(self) -> int:
        return len(self.frame_ids)

    @property
    def segment_start(self) -> np.ndarray:
        """(N,) bool: True at the first row of every segment."""
        mask = np.zeros(len(self), bool)
        mask[self.segments[:, 0]] = True
        return mask

    def rows_of(self, frame_ids: np.ndarray) -> np.ndarray:
        """Rows of the given frame ids (the cache's frame ids are sorted); DataError for ids it lacks."""
        frame_ids = np.asarray(frame_ids, np.int64)
        rows = np.clip(np.searchsorted(self.frame_ids, frame_ids), 0, len(self) - 1)
        bad = self.frame_ids[rows] != frame_ids
        if np.any(bad):
            raise DataError(f"{self.path}: frame ids {frame_ids[bad][:5].tolist()} are not in this split's segments")
        return rows


def ensure_cache(root: str | os.PathLike, cache_dir: str | os.PathLike,
                 splits: Sequence[str] = ("training", "validation"), **kwargs) -> dict[str, Cache]:
    """The open caches of the splits of a CALVIN root, built (or resumed) first where unfinished."""
    return {name: load_cache(path) for name, path in build_dataset_cache(root, cache_dir, splits, **kwargs).items()}


def load_cache(cache_split_dir: str | os.PathLike) -> Cache:
    """Opens a finished cache read-only; DataError when it is incomplete or inconsistent."""
    path = Path(cache_split_dir)
    complete, stats = _read_json(path / COMPLETE), _read_json(path / STATS)
    if complete is None or stats is None:
        raise DataError(f"{path}: cache is missing or incomplete ({COMPLETE} or {STATS} absent); rerun build_cache to finish it")
    try:
        arrays = {k: np.load(path / f"{k}.npy", mmap_mode="r") for k in RAW_KEYS + ("proprio", "state")}
        frame_ids = np.load(path / "frame_ids.npy")
        segments = np.load(path / "segments.npy")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot open cache arrays ({e}); delete the folder and rebuild") from e
    n = complete["n_frames"]
    bad = {k: a.shape for k, a in arrays.items() if len(a) != n}
    if len(frame_ids) != n or bad or segments.ndim != 2 or segments[-1, 1] != n - 1:
        raise DataError(f"{path}: arrays disagree with {n} frames ({bad}); delete the folder and rebuild")
    return Cache(path=path, frame_ids=frame_ids, segments=segments, stats=NormStats.from_json(stats), **arrays)
