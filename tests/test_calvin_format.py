"""CALVIN on-disk format: writer -> reader round trip, real-format samples, and clear errors."""
import multiprocessing
import os

import numpy as np
import pytest
import yaml

from diwa_jax.data import calvin_format as cf
from diwa_jax.data.calvin_format import CalvinSplit, DataError


def _frame(rng, static=12, gripper=8, dtype=np.float64, **extra):
    return {
        "rgb_static": rng.integers(0, 256, (static, static, 3), dtype=np.uint8),
        "rgb_gripper": rng.integers(0, 256, (gripper, gripper, 3), dtype=np.uint8),
        "actions": rng.normal(size=7).astype(dtype),
        "rel_actions": rng.uniform(-1, 1, 7).astype(dtype),
        "robot_obs": rng.normal(size=15).astype(dtype),
        "scene_obs": rng.normal(size=24).astype(dtype),
        **extra,
    }


SEGMENTS = np.array([[5, 9], [20, 22]])  # non-contiguous ids


@pytest.fixture
def written(tmp_path):
    """A split written by our writer: frames, stats, annotations; returns (dir, frames by id)."""
    rng = np.random.default_rng(0)
    frames, stats = {}, cf.RunningStats()
    for s, e in SEGMENTS:
        for fid in range(s, e + 1):
            frames[fid] = _frame(rng, dtype=np.float32)  # the writer must store float64
            cf.write_frame(tmp_path, fid, frames[fid])
            stats.add(frames[fid])
    ann = cf.make_lang_annotations([[5, 8], [20, 22], [6, 9]], ["open_drawer", "turn_on_led", "open_drawer"])
    cf.write_split_metadata(tmp_path, SEGMENTS, stats.to_statistics(), ann)
    return tmp_path, frames


def test_round_trip(written):
    split_dir, frames = written
    split = CalvinSplit(split_dir)
    assert (split.prefix, split.digits) == ("episode_", 7)
    np.testing.assert_array_equal(split.segments, SEGMENTS)
    np.testing.assert_array_equal(split.frame_ids, [5, 6, 7, 8, 9, 20, 21, 22])
    assert sorted(p.name for p in split_dir.glob("*.npz"))[0] == "episode_0000005.npz"
    assert not list(split_dir.glob("*.tmp")) and not list(split_dir.glob(".*.tmp"))
    for fid, frame in frames.items():
        got = split.load_frame(fid)
        for k, v in frame.items():
            if k in cf.VECTOR_DIMS:
                assert got[k].dtype == np.float64, k
            np.testing.assert_array_equal(got[k], v.astype(got[k].dtype))
    np.testing.assert_array_equal(np.load(split_dir / "ep_lens.npy"), [5, 3])
    assert split.scene_info() == {"calvin_scene_D": [5, 22]}
    stats = split.statistics()
    robot = np.stack([f["robot_obs"].astype(np.float64) for f in frames.values()])
    actions = np.stack([f["actions"].astype(np.float64) for f in frames.values()])
    np.testing.assert_allclose(stats["robot_obs"][0]["mean"], robot.mean(0), atol=1e-12)
    np.testing.assert_allclose(stats["robot_obs"][0]["std"], robot.std(0), atol=1e-9)
    assert len(stats["scene_obs"][0]["mean"]) == 24
    np.testing.assert_allclose(stats["act_min_bound"], actions.min(0))
    np.testing.assert_allclose(stats["act_max_bound"], actions.max(0))
    # plain YAML in CALVIN's structure
    raw = yaml.safe_load((split_dir / "statistics.yaml").read_text())
    assert raw["robot_obs"][0]["_target_"].endswith("NormalizeVector")
    ann = np.load(split_dir / "lang_annotations" / "auto_lang_ann.npy", allow_pickle=True).item()
    assert ann["language"]["emb"].shape == (3, 1, 384) and ann["info"]["episodes"] == []
    assert ann["language"]["ann"][1] == "turn on led"
    np.testing.assert_array_equal(split.task_windows("open_drawer"), [[5, 8], [6, 9]])
    np.testing.assert_array_equal(split.task_windows("turn_on_led"), [[20, 22]])
    assert split.task_windows("close_drawer").shape == (0, 2)


def test_running_stats_merge_equals_single_pass():
    rng = np.random.default_rng(1)
    frames = [_frame(rng) for _ in range(6)]
    whole, a, b = cf.RunningStats(), cf.RunningStats(), cf.RunningStats()
    for i, f in enumerate(frames):
        whole.add(f)
        (a if i < 2 else b).add(f)
    merged, single = a.merge(b).to_statistics(), whole.to_statistics()
    for key in ("robot_obs", "scene_obs"):
        np.testing.assert_allclose(merged[key][0]["std"], single[key][0]["std"])
    np.testing.assert_array_equal(merged["act_max_bound"], single["act_max_bound"])


def _write_disjoint(args):
    split_dir, ids = args
    rng = np.random.default_rng(ids[0])
    for fid in ids:
        cf.write_frame(split_dir, fid, _frame(rng))


def test_parallel_writers_then_parent_metadata(tmp_path):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_write_disjoint, [(str(tmp_path), range(0, 6)), (str(tmp_path), range(6, 12))])
    stats = cf.RunningStats()
    for fid in range(12):
        stats.add(cf.read_frame(tmp_path / cf.frame_filename(fid)))
    cf.write_split_metadata(tmp_path, [[0, 11]], stats.to_statistics())
    split = CalvinSplit(tmp_path)
    assert len(split) == 12 and split.load_frame(11)["robot_obs"].shape == (15,)


def test_calvin_exact_sample_with_extra_keys_and_other_naming(tmp_path):
    """Files as CALVIN ships them: float64 vectors, depth and tactile keys, a 6-digit other prefix."""
    rng = np.random.default_rng(2)
    extra = lambda: {
        "depth_static": rng.random((12, 12)).astype(np.float32),
        "depth_gripper": rng.random((8, 8)).astype(np.float32),
        "rgb_tactile": rng.integers(0, 256, (16, 12, 6), dtype=np.uint8),
        "depth_tactile": rng.random((16, 12, 2)).astype(np.float32),
    }
    frames = {fid: _frame(rng, **extra()) for fid in (100, 101, 102)}
    frames[101] = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in frames[101].items()}
    for fid, frame in frames.items():
        np.savez_compressed(tmp_path / f"frame_{fid:06d}.npz", **frame)
    np.save(tmp_path / "ep_start_end_ids.npy", np.array([[100, 102]]))
    split = CalvinSplit(tmp_path)
    assert (split.prefix, split.digits) == ("frame_", 6)
    got = split.load_frame(101)
    assert set(got) == set(cf.FRAME_KEYS) and got["scene_obs"].dtype == np.float32
    np.testing.assert_array_equal(split.load_frame(102)["rgb_static"], frames[102]["rgb_static"])
    assert split.load_frame(100, keys=("depth_static",))["depth_static"].shape == (12, 12)
    with pytest.raises(DataError, match="statistics"):
        split.statistics()
    with pytest.raises(DataError, match="auto_lang_ann.npy"):
        split.annotations()


def _assert_error_names(path, fn):
    with pytest.raises(DataError) as info:
        fn()
    assert str(path) in str(info.value)
    return str(info.value)


def test_missing_frame_file(written):
    split_dir, _ = written
    os.remove(split_dir / "episode_0000021.npz")
    msg = _assert_error_names(split_dir / "episode_0000021.npz", lambda: CalvinSplit(split_dir))
    assert "missing" in msg


def test_truncated_npz(written):
    split_dir, _ = written
    path = split_dir / "episode_0000007.npz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    split = CalvinSplit(split_dir)
    msg = _assert_error_names(path, lambda: split.load_frame(7))
    assert "truncated or corrupt" in msg
    split.load_frame(8)  # the others still read


def test_corrupt_bytes(written):
    split_dir, _ = written
    path = split_dir / "episode_0000022.npz"
    path.write_bytes(b"not a zip archive at all")
    _assert_error_names(path, lambda: CalvinSplit(split_dir).load_frame(22))


@pytest.mark.parametrize(
    "key, value, what",
    [
        ("robot_obs", np.zeros(14), "(15,)"),
        ("rel_actions", np.zeros(7, np.int64), "float32 or float64"),
        ("rgb_static", np.zeros((12, 13, 3), np.uint8), "(12, 12, 3)"),
        ("rgb_gripper", np.zeros((8, 8, 3), np.float32), "uint8"),
    ],
)
def test_wrong_shape_or_dtype(written, key, value, what):
    split_dir, frames = written
    path = split_dir / "episode_0000009.npz"
    np.savez_compressed(path, **{**frames[9], key: value})
    msg = _assert_error_names(path, lambda: CalvinSplit(split_dir).load_frame(9))
    assert key in msg and what in msg


def test_nan(written):
    split_dir, frames = written
    path = split_dir / "episode_0000020.npz"
    scene = frames[20]["scene_obs"].astype(np.float64)
    scene[3] = np.nan
    np.savez_compressed(path, **{**frames[20], "scene_obs": scene})
    msg = _assert_error_names(path, lambda: CalvinSplit(split_dir).load_frame(20))
    assert "non-finite" in msg


def test_missing_key(written):
    split_dir, frames = written
    path = split_dir / "episode_0000006.npz"
    np.savez_compressed(path, **{k: v for k, v in frames[6].items() if k != "rel_actions"})
    msg = _assert_error_names(path, lambda: CalvinSplit(split_dir).load_frame(6))
    assert "rel_actions" in msg


def test_missing_or_bad_ep_start_end_ids(written):
    split_dir, _ = written
    os.remove(split_dir / "ep_start_end_ids.npy")
    _assert_error_names(split_dir / "ep_start_end_ids.npy", lambda: CalvinSplit(split_dir))
    np.save(split_dir / "ep_start_end_ids.npy", np.array([[5, 9], [8, 22]]))  # overlapping
    msg = _assert_error_names(split_dir / "ep_start_end_ids.npy", lambda: CalvinSplit(split_dir))
    assert "overlap" in msg


def test_truncated_annotations(written):
    split_dir, _ = written
    path = split_dir / "lang_annotations" / "auto_lang_ann.npy"
    path.write_bytes(path.read_bytes()[:40])
    _assert_error_names(path, lambda: CalvinSplit(split_dir).annotations())


def test_writer_rejects_bad_frames(tmp_path):
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="scene_obs"):
        cf.write_frame(tmp_path, 0, {**_frame(rng), "scene_obs": np.zeros(23)})
    with pytest.raises(ValueError, match="rgb_static"):
        cf.write_frame(tmp_path, 0, {k: v for k, v in _frame(rng).items() if k != "rgb_static"})
    assert not list(tmp_path.iterdir())
