"""CALVIN's on-disk data format: one compressed npz per 30 Hz frame plus split metadata.

Layout and keys follow ``calvin_conventions.md`` section 1. The writer is safe to use from several
processes writing disjoint frame ids of one split directory (every file is written to a private
temporary name and renamed into place); the split metadata is written once, by one process, at the end.
The reader validates what it loads and raises :class:`DataError` naming the bad file and the fix.
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from diwa_jax.atomic import atomic_write
from diwa_jax.errors import DataError

FRAME_PREFIX = "episode_"
FRAME_DIGITS = 7
IMAGE_KEYS = ("rgb_static", "rgb_gripper")
VECTOR_DIMS = {"actions": 7, "rel_actions": 7, "robot_obs": 15, "scene_obs": 24}
FRAME_KEYS = IMAGE_KEYS + tuple(VECTOR_DIMS)
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
LANG_EMB_DIM = 384  # MiniLM sentence embeddings in CALVIN's annotations
NORMALIZER_TARGET = "calvin_agent.utils.transforms.NormalizeVector"  # opaque to us; kept for CALVIN's tools
DEFAULT_SCENE = "calvin_scene_D"

EP_START_END_IDS = "ep_start_end_ids.npy"
EP_LENS = "ep_lens.npy"
SCENE_INFO = "scene_info.npy"
LANG_ANN = os.path.join("lang_annotations", "auto_lang_ann.npy")
STATISTICS = "statistics.yaml"

# Physical bounds of every state/action value, generous: positions (m) within metres of the table,
# angles (rad) within two turns (pybullet reports [-pi, pi]; absolute targets may be unwrapped), joint
# positions, the gripper width, light bits and +-1 gripper commands all far inside. rel_actions are
# clipped to [-1, 1] by definition. A value beyond them is a corrupt file, not data (1e30 would squash
# the min-max normalisation of its feature to 0 everywhere else).
VALUE_BOUNDS = {"actions": 4 * math.pi, "rel_actions": 1.0 + 1e-3, "robot_obs": 4 * math.pi, "scene_obs": 4 * math.pi}
VECTOR_LABELS = {
    "actions": ("tcp_x", "tcp_y", "tcp_z", "tcp_euler_x", "tcp_euler_y", "tcp_euler_z", "gripper"),
    "rel_actions": ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"),
    "robot_obs": ("tcp_pos_x", "tcp_pos_y", "tcp_pos_z", "tcp_orn_x", "tcp_orn_y", "tcp_orn_z",
                  "gripper_opening_width", *(f"robot_joint_{i}" for i in range(7)), "gripper_action"),
    "scene_obs": ("sliding_door", "drawer", "button", "switch", "lightbulb", "green_led",
                  *(f"{block}_block_{q}" for block in ("red", "blue", "pink")
                    for q in ("x", "y", "z", "euler_x", "euler_y", "euler_z"))),
}

_FRAME_NAME = re.compile(r"^(?P<prefix>.*?)(?P<counter>\d+)\.npz$")


# ------------------------------------------------------------------------------------------------
# Writer
# ------------------------------------------------------------------------------------------------


def frame_filename(frame_id: int, prefix: str = FRAME_PREFIX, digits: int = FRAME_DIGITS) -> str:
    return f"{prefix}{int(frame_id):0{digits}d}.npz"


def _check_frame_input(frame: Mapping[str, Any]) -> dict[str, np.ndarray]:
    missing = [k for k in FRAME_KEYS if k not in frame]
    if missing:
        raise ValueError(f"write_frame: frame lacks CALVIN keys {missing}; required: {list(FRAME_KEYS)}")
    arrays = {k: np.asarray(v) for k, v in frame.items()}
    for k in IMAGE_KEYS:
        a = arrays[k]
        if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8:
            raise ValueError(f"write_frame: {k} must be an (H, W, 3) uint8 image, got {a.shape} {a.dtype}")
    for k, dim in VECTOR_DIMS.items():
        a = arrays[k]
        if a.shape != (dim,):
            raise ValueError(f"write_frame: {k} must have shape ({dim},), got {a.shape}")
        problem = _out_of_range(k, a)
        if problem:
            raise ValueError(f"write_frame: {problem}")
        arrays[k] = a.astype(np.float64)  # CALVIN stores state/action vectors as float64
    return arrays


def write_frame(split_dir: str | os.PathLike, frame_id: int, frame: Mapping[str, Any]) -> Path:
    """Writes ``episode_<frame_id>.npz`` (compressed) atomically; extra keys (e.g. depth) are kept."""
    arrays = _check_frame_input(frame)
    path = Path(split_dir) / frame_filename(frame_id)
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
    return path


@dataclasses.dataclass
class RunningStats:
    """Mergeable sums for ``statistics.yaml``: workers accumulate their frames, the parent merges.

    ``robot``/``scene`` hold (count, sum, sum of squares) of robot_obs/scene_obs; ``act_min``/``act_max``
    the bounds of the absolute ``actions``.
    """

    count: int = 0
    robot_sum: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(15))
    robot_sumsq: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(15))
    scene_sum: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(24))
    scene_sumsq: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(24))
    act_min: np.ndarray = dataclasses.field(default_factory=lambda: np.full(7, np.inf))
    act_max: np.ndarray = dataclasses.field(default_factory=lambda: np.full(7, -np.inf))

    def add(self, frame: Mapping[str, Any]) -> None:
        robot = np.asarray(frame["robot_obs"], np.float64)
        scene = np.asarray(frame["scene_obs"], np.float64)
        actions = np.asarray(frame["actions"], np.float64)
        self.count += 1
        self.robot_sum += robot
        self.robot_sumsq += robot**2
        self.scene_sum += scene
        self.scene_sumsq += scene**2
        self.act_min = np.minimum(self.act_min, actions)
        self.act_max = np.maximum(self.act_max, actions)

    def merge(self, other: "RunningStats") -> "RunningStats":
        return RunningStats(
            count=self.count + other.count,
            robot_sum=self.robot_sum + other.robot_sum,
            robot_sumsq=self.robot_sumsq + other.robot_sumsq,
            scene_sum=self.scene_sum + other.scene_sum,
            scene_sumsq=self.scene_sumsq + other.scene_sumsq,
            act_min=np.minimum(self.act_min, other.act_min),
            act_max=np.maximum(self.act_max, other.act_max),
        )

    def to_statistics(self) -> dict:
        """The ``statistics.yaml`` structure (section 1.6), population mean/std."""
        if self.count == 0:
            raise ValueError("RunningStats.to_statistics: no frames were added")

        def entry(total: np.ndarray, total_sq: np.ndarray) -> list[dict]:
            mean = total / self.count
            std = np.sqrt(np.maximum(total_sq / self.count - mean**2, 0.0))
            return [{"_target_": NORMALIZER_TARGET, "mean": mean.tolist(), "std": std.tolist()}]

        return {
            "robot_obs": entry(self.robot_sum, self.robot_sumsq),
            "scene_obs": entry(self.scene_sum, self.scene_sumsq),
            "act_min_bound": self.act_min.tolist(),
            "act_max_bound": self.act_max.tolist(),
        }


def make_lang_annotations(
    windows: np.ndarray | Sequence[Sequence[int]],
    tasks: Sequence[str],
    instructions: Sequence[str] | None = None,
) -> dict:
    """``auto_lang_ann`` dict: inclusive frame-id windows, task ids, instructions, zero embeddings.

    Without a sentence model the embeddings are zeros of CALVIN's shape ``(N, 1, 384)``; instructions
    default to the task id with spaces.
    """
    windows = np.asarray(windows, np.int64).reshape(-1, 2)
    if len(tasks) != len(windows) or (instructions is not None and len(instructions) != len(windows)):
        raise ValueError(f"make_lang_annotations: {len(windows)} windows but {len(tasks)} tasks")
    ann = list(instructions) if instructions is not None else [t.replace("_", " ") for t in tasks]
    return {
        "language": {
            "ann": ann,
            "task": list(tasks),
            "emb": np.zeros((len(windows), 1, LANG_EMB_DIM), np.float32),
        },
        "info": {"indx": [(int(s), int(e)) for s, e in windows], "episodes": []},
    }


def write_split_metadata(
    split_dir: str | os.PathLike,
    ep_start_end_ids: np.ndarray | Sequence[Sequence[int]],
    statistics: Mapping[str, Any],
    lang_annotations: Mapping[str, Any] | None = None,
    scene_info: Mapping[str, Sequence[int]] | None = None,
) -> None:
    """Writes the side files of a split (call once, after every frame is written).

    ``ep_start_end_ids``: (E, 2) inclusive frame-id bounds of the recorded segments.
    ``statistics``: e.g. ``RunningStats.to_statistics()``. ``scene_info`` defaults to
    ``{calvin_scene_D: [first id, last id]}``.
    """
    split_dir = Path(split_dir)
    segments = np.asarray(ep_start_end_ids, np.int64).reshape(-1, 2)
    if len(segments) == 0 or np.any(segments[:, 1] < segments[:, 0]):
        raise ValueError(f"write_split_metadata: ep_start_end_ids must be (E>0, 2) with end >= start, got {segments}")
    if scene_info is None:
        scene_info = {DEFAULT_SCENE: [int(segments.min()), int(segments.max())]}
    save = lambda name, value: atomic_write(split_dir / name, lambda f: np.save(f, value, allow_pickle=True))
    save(EP_START_END_IDS, segments)
    save(EP_LENS, segments[:, 1] - segments[:, 0] + 1)
    save(SCENE_INFO, np.array(dict(scene_info), dtype=object))
    if lang_annotations is not None:
        save(LANG_ANN, np.array(dict(lang_annotations), dtype=object))
    text = yaml.safe_dump(_plain(statistics), sort_keys=False, default_flow_style=None)
    atomic_write(split_dir / STATISTICS, lambda f: f.write(text.encode()))


def write_synthetic_split(
    split_dir: str | os.PathLike,
    segments: np.ndarray | Sequence[Sequence[int]],
    tasks: Sequence[str] = ("open_drawer", "close_drawer"),
    window: int = 16,
    static_size: int = 200,
    gripper_size: int = 84,
    seed: int = 0,
) -> None:
    """A small random split in CALVIN's format, for tests: frames of every segment, metadata, and
    annotation windows of ``window`` frames tiling each segment, tasks assigned in turn."""
    rng = np.random.default_rng(seed)
    segments = np.asarray(segments, np.int64).reshape(-1, 2)
    stats = RunningStats()
    for start, end in segments:
        for fid in range(start, end + 1):
            frame = {
                "rgb_static": rng.integers(0, 256, (static_size, static_size, 3), dtype=np.uint8),
                "rgb_gripper": rng.integers(0, 256, (gripper_size, gripper_size, 3), dtype=np.uint8),
                "actions": rng.uniform(-3, 3, 7),
                "rel_actions": np.append(rng.uniform(-1, 1, 6), rng.choice([-1.0, 1.0])),
                "robot_obs": rng.uniform(-3, 3, 15),
                "scene_obs": rng.uniform(-3, 3, 24),
            }
            write_frame(split_dir, fid, frame)
            stats.add(frame)
    windows = [(s, min(s + window - 1, end)) for start, end in segments for s in range(start, end + 1, window)]
    tasks_of = [tasks[i % len(tasks)] for i in range(len(windows))]
    write_split_metadata(split_dir, segments, stats.to_statistics(), make_lang_annotations(windows, tasks_of))


def _plain(value: Any) -> Any:
    """numpy values -> Python lists/floats so that yaml.safe_dump writes plain YAML."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# ------------------------------------------------------------------------------------------------
# Reader
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FrameSpec:
    """Expected image shapes of a split (from its first frame); picklable for worker processes."""

    image_shapes: tuple[tuple[str, tuple[int, int, int]], ...]

    def shape(self, key: str) -> tuple[int, int, int]:
        return dict(self.image_shapes)[key]


def read_frame(path: str | os.PathLike, spec: FrameSpec | None = None, keys: Sequence[str] = FRAME_KEYS) -> dict[str, np.ndarray]:
    """Loads and validates ``keys`` of one frame file (other keys, e.g. depth, are never decoded).

    Images must be (H, W, 3) uint8 (and match ``spec`` when given); vectors float32/float64 of CALVIN's
    sizes with finite values.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path}: frame lacks keys {missing} (has {sorted(npz.files)}); CALVIN frames need "
                    f"{list(FRAME_KEYS)}: regenerate or re-download this split"
                )
            arrays = {k: npz[k] for k in keys}
    except DataError:
        raise
    except FileNotFoundError as e:
        raise DataError(f"{path}: frame file is missing; re-download or regenerate the split") from e
    except Exception as e:  # zipfile/zlib/format errors of a truncated or corrupt archive
        raise DataError(
            f"{path}: cannot read frame ({type(e).__name__}: {e}); the file is truncated or corrupt: "
            "re-download it or regenerate the split"
        ) from e
    for k, a in arrays.items():
        if k in IMAGE_KEYS:
            expected = spec.shape(k) if spec is not None else None
            if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8 or (expected and a.shape != expected):
                want = f"{expected}" if expected else "(H, W, 3)"
                raise DataError(f"{path}: '{k}' is {a.shape} {a.dtype}, expected {want} uint8 like the split's first frame")
        elif k in VECTOR_DIMS:
            if a.shape != (VECTOR_DIMS[k],) or a.dtype not in FLOAT_DTYPES:
                raise DataError(f"{path}: '{k}' is {a.shape} {a.dtype}, expected ({VECTOR_DIMS[k]},) float32 or float64")
            problem = _out_of_range(k, a)
            if problem:
                raise DataError(f"{path}: {problem}; the frame is corrupt: regenerate or re-download it")
    return arrays


def _out_of_range(key: str, values: np.ndarray) -> str | None:
    """What is wrong with a state/action vector (non-finite or outside ``VALUE_BOUNDS``), or None."""
    bound = VALUE_BOUNDS[key]
    bad = np.flatnonzero(~(np.abs(values) <= bound))  # NaN compares False: caught too
    if not len(bad):
        return None
    i = int(bad[0])
    kind = "non-finite" if not np.isfinite(values[i]) else f"outside the physical range [-{bound:.4g}, {bound:.4g}]"
    more = f" ({len(bad) - 1} more values too)" if len(bad) > 1 else ""
    return f"'{key}'[{i}] ({VECTOR_LABELS[key][i]}) = {float(values[i])!r} is {kind}{more}"


def _find_frames(split_dir: Path) -> tuple[str, int, np.ndarray]:
    """The frame naming pattern (prefix, counter digits) and the ids present, from a directory scan."""
    found: dict[tuple[str, int], list[int]] = {}
    with os.scandir(split_dir) as entries:
        for entry in entries:
            m = _FRAME_NAME.match(entry.name)
            if m:
                found.setdefault((m["prefix"], len(m["counter"])), []).append(int(m["counter"]))
    if not found:
        raise DataError(f"{split_dir}: no frame files (<prefix><zero-padded id>.npz); is this a CALVIN split directory?")
    (prefix, digits), ids = max(found.items(), key=lambda item: len(item[1]))
    return prefix, digits, np.sort(np.asarray(ids, np.int64))


# What a pickled side file (CALVIN's auto_lang_ann.npy, scene_info.npy: dicts of lists, strings and
# arrays) may build: NumPy arrays, dtypes and scalars, builtin containers and scalars. Nothing else is
# looked up, so a pickle whose reduce names any other callable (os.system, ...) never runs it.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("collections", "OrderedDict"),
    *(("builtins", name) for name in ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray",
                                       "int", "float", "complex", "bool", "slice", "range")),
}


class UnsafePickle(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise UnsafePickle(f"it references {module}.{name}, which is neither a NumPy array nor a builtin container")
        return super().find_class(module, name)


def _load_pickled_npy(path: Path) -> Any:
    """An ``.npy`` file holding a pickled object array, loaded with the restricted unpickler."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError(f"unsupported .npy version {version}")
        _, _, dtype = read_header[version](f)
        if not dtype.hasobject:
            f.seek(0)
            return np.load(io.BytesIO(f.read()), allow_pickle=False)
        return _RestrictedUnpickler(f).load()


def _load_npy(path: Path, what: str, pickled: bool) -> Any:
    if not path.exists():
        raise DataError(f"{path}: missing {what}; the split is incomplete: re-download it or rerun the collection")
    try:
        if not pickled:
            return np.load(path, allow_pickle=False)
        value = _load_pickled_npy(path)
        return value.item() if isinstance(value, np.ndarray) and value.shape == () else value
    except UnsafePickle as e:
        raise DataError(f"{path}: refused to load {what}: {e}; this file may run code when unpickled: "
                        "take it from a source you trust or regenerate it") from e
    except Exception as e:
        raise DataError(f"{path}: cannot read {what} ({type(e).__name__}: {e}); re-download or regenerate it") from e


@dataclasses.dataclass(frozen=True)
class LangAnnotations:
    """Language-annotated windows: ``windows (N, 2)`` inclusive frame ids, task id and instruction each."""

    windows: np.ndarray
    tasks: tuple[str, ...]
    instructions: tuple[str, ...]

    def task_windows(self, task: str) -> np.ndarray:
        return self.windows[np.asarray([t == task for t in self.tasks], bool)].reshape(-1, 2)


def load_annotations(split_dir: str | os.PathLike) -> LangAnnotations:
    """The language-annotated windows of a split (``lang_annotations/auto_lang_ann.npy``), validated."""
    path = Path(split_dir) / LANG_ANN
    raw = _load_npy(path, "language annotations", pickled=True)
    try:
        windows = np.asarray(raw["info"]["indx"], np.int64).reshape(-1, 2)
        tasks = tuple(str(t) for t in raw["language"]["task"])
        instructions = tuple(str(a) for a in raw["language"]["ann"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: expected {{'language': {{'ann', 'task', 'emb'}}, 'info': {{'indx'}}}} ({e})") from e
    if not (len(windows) == len(tasks) == len(instructions)):
        raise DataError(f"{path}: {len(windows)} windows, {len(tasks)} tasks, {len(instructions)} instructions")
    if np.any(windows[:, 1] < windows[:, 0]):
        raise DataError(f"{path}: annotation windows with end < start")
    return LangAnnotations(windows, tasks, instructions)


class CalvinSplit:
    """One split directory (e.g. ``task_D_D/training``) of CALVIN's format.

    Segments (``ep_start_end_ids``) are sorted by start; ``frame_ids`` lists every frame of every
    segment in that order (ids need not be contiguous across segments). Opening checks that every
    listed frame file exists; frames are validated when loaded.
    """

    def __init__(self, split_dir: str | os.PathLike):
        self.dir = Path(split_dir)
        if not self.dir.is_dir():
            raise DataError(f"{self.dir}: not a directory; pass a CALVIN split such as task_D_D/training")
        self.name = self.dir.name
        self.prefix, self.digits, present = _find_frames(self.dir)
        self.segments = self._load_segments()
        self.frame_ids = np.concatenate([np.arange(s, e + 1, dtype=np.int64) for s, e in self.segments])
        missing = self.frame_ids[~np.isin(self.frame_ids, present)]
        if len(missing):
            raise DataError(
                f"{self.frame_path(missing[0])}: frame file missing ({len(missing)} frames listed in "
                f"{EP_START_END_IDS} are absent); the split is incomplete: re-download it or rerun the collection"
            )
        first = read_frame(self.frame_path(self.frame_ids[0]))
        self.spec = FrameSpec(tuple((k, tuple(first[k].shape)) for k in IMAGE_KEYS))
        self._annotations: LangAnnotations | None = None

    def _load_segments(self) -> np.ndarray:
        path = self.dir / EP_START_END_IDS
        seg = _load_npy(path, "segment bounds (E, 2) inclusive frame ids", pickled=False)
        if seg.ndim != 2 or seg.shape[1] != 2 or len(seg) == 0 or not np.issubdtype(seg.dtype, np.integer):
            raise DataError(f"{path}: expected a non-empty (E, 2) integer array, got {seg.shape} {seg.dtype}")
        seg = seg[np.argsort(seg[:, 0], kind="stable")].astype(np.int64)
        if np.any(seg[:, 1] < seg[:, 0]) or np.any(seg[1:, 0] <= seg[:-1, 1]):
            raise DataError(f"{path}: segments have end < start or overlap; regenerate the split metadata")
        return seg

    def __len__(self) -> int:
        return len(self.frame_ids)

    def frame_path(self, frame_id: int) -> Path:
        return self.dir / frame_filename(frame_id, self.prefix, self.digits)

    def load_frame(self, frame_id: int, keys: Sequence[str] = FRAME_KEYS) -> dict[str, np.ndarray]:
        return read_frame(self.frame_path(frame_id), self.spec, keys)

    def scene_info(self) -> dict:
        return _load_npy(self.dir / SCENE_INFO, "scene_info (pickled dict scene -> [first, last] id)", pickled=True)

    def statistics(self) -> dict:
        path = self.dir / STATISTICS
        if not path.exists():
            raise DataError(f"{path}: missing statistics; re-download the split or rerun the collection")
        try:
            stats = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise DataError(f"{path}: invalid YAML ({e}); re-download or regenerate it") from e
        for key in ("robot_obs", "scene_obs", "act_min_bound", "act_max_bound"):
            if not isinstance(stats, dict) or key not in stats:
                raise DataError(f"{path}: lacks '{key}'; expected CALVIN's statistics.yaml structure")
        return stats

    def annotations(self) -> LangAnnotations:
        if self._annotations is None:
            self._annotations = load_annotations(self.dir)
        return self._annotations

    def task_windows(self, task: str) -> np.ndarray:
        """(W, 2) inclusive frame-id windows annotated with ``task``."""
        return self.annotations().task_windows(task)
