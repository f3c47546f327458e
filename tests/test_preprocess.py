"""Preprocessed cache: values against direct computations, rot6d, statistics, resumable build."""
import numpy as np
import pybullet
import pytest

from diwa_jax.data import calvin_format as cf
from diwa_jax.data import preprocess as pp
from diwa_jax.data.calvin_format import CalvinSplit, DataError

SIZE = 8  # cache image size (tiny for speed); sources 20x20 (fractional scale) and 16x16 (2x2 blocks)
BUILD = dict(image_size=SIZE, workers=1, chunk_frames=8, progress=False)


def _area_reference(image, size):
    """Area interpolation written out pixel by pixel: each source pixel weighted by its overlap."""
    h, w = image.shape[:2]
    out = np.zeros((size, size, image.shape[2]))
    for i in range(size):
        for j in range(size):
            y0, y1, x0, x1 = i * h / size, (i + 1) * h / size, j * w / size, (j + 1) * w / size
            for y in range(int(y0), min(int(np.ceil(y1)), h)):
                for x in range(int(x0), min(int(np.ceil(x1)), w)):
                    weight = (min(y1, y + 1) - max(y0, y)) * (min(x1, x + 1) - max(x0, x))
                    out[i, j] += weight * image[y, x]
            out[i, j] /= (y1 - y0) * (x1 - x0)
    return out


def test_resize_area():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    block_mean = image.reshape(8, 2, 8, 2, 3).mean((1, 3))
    assert np.abs(pp.resize_area(image, 8) - block_mean).max() <= 0.5
    for h, w, size in [(20, 20, 8), (84, 84, 64), (200, 200, 64), (21, 13, 5), (6, 9, 8)]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        got = pp.resize_area(image, size)
        assert got.shape == (size, size, 3) and got.dtype == np.uint8
        assert np.abs(got - _area_reference(image, size)).max() <= 0.5 + 1e-3
    flat = np.full((200, 200, 3), 77, np.uint8)
    np.testing.assert_array_equal(pp.resize_area(flat, 64), 77)


def _pybullet_matrix(euler):
    return np.array(pybullet.getMatrixFromQuaternion(pybullet.getQuaternionFromEuler(euler))).reshape(3, 3)


def test_rot6d_known_rotations():
    np.testing.assert_allclose(pp.euler_to_rot6d(np.zeros(3)), [1, 0, 0, 0, 1, 0], atol=1e-12)
    # yaw 90 deg: x -> y, y -> -x
    np.testing.assert_allclose(pp.euler_to_rot6d([0, 0, np.pi / 2]), [0, 1, 0, -1, 0, 0], atol=1e-12)
    # roll 90 deg: y -> z
    np.testing.assert_allclose(pp.euler_to_rot6d([np.pi / 2, 0, 0]), [1, 0, 0, 0, 0, 1], atol=1e-12)
    # pitch 90 deg: x -> -z
    np.testing.assert_allclose(pp.euler_to_rot6d([0, np.pi / 2, 0]), [0, 0, -1, 0, 1, 0], atol=1e-12)


def test_euler_matches_pybullet_convention():
    eulers = np.random.default_rng(0).uniform(-np.pi, np.pi, (20, 3))
    eulers[0] = [3.09045411, -0.02908596, 1.50013585]  # CALVIN's neutral TCP orientation
    got = pp.euler_to_matrix(eulers)
    for e, m in zip(eulers, got):
        np.testing.assert_allclose(m, _pybullet_matrix(e), atol=1e-6)
    six = pp.euler_to_rot6d(eulers)
    np.testing.assert_allclose(six[:, :3], got[:, :, 0])
    np.testing.assert_allclose(six[:, 3:], got[:, :, 1])


def test_proprio_and_state_layout():
    rng = np.random.default_rng(1)
    robot, scene = rng.normal(size=15), rng.normal(size=24)
    proprio = pp.robot_obs_to_proprio(robot)
    assert proprio.shape == (18,)
    np.testing.assert_array_equal(proprio[:3], robot[:3])
    np.testing.assert_allclose(proprio[3:9], np.concatenate([_pybullet_matrix(robot[3:6])[:, 0], _pybullet_matrix(robot[3:6])[:, 1]]), atol=1e-6)
    np.testing.assert_array_equal(proprio[9:], robot[6:])
    state = pp.scene_obs_to_state(scene)
    assert state.shape == (33,)
    np.testing.assert_array_equal(state[:6], scene[:6])
    for i in range(3):  # block i: pos, rot6d
        block = scene[6 + 6 * i : 12 + 6 * i]
        np.testing.assert_array_equal(state[6 + 9 * i : 9 + 9 * i], block[:3])
        np.testing.assert_allclose(state[9 + 9 * i : 15 + 9 * i], pp.euler_to_rot6d(block[3:]))
    np.testing.assert_array_equal(pp.robot_obs_to_proprio(robot, rot6d=False), robot)


def _split(root, name, segments, seed):
    cf.write_synthetic_split(root / name, segments, static_size=20, gripper_size=16, seed=seed)
    return root / name


def _expected(split_dir, stats=None):
    """Direct computation from the frame files: PIL BOX resize, rot6d, min-max over this split."""
    split = CalvinSplit(split_dir)
    frames = [split.load_frame(f) for f in split.frame_ids]
    stack = lambda k: np.stack([f[k] for f in frames])
    resize = lambda a: np.stack([_area_reference(x, SIZE) for x in a])
    robot, scene = stack("robot_obs"), stack("scene_obs")
    proprio = np.concatenate([robot[:, :3], pp.euler_to_rot6d(robot[:, 3:6]), robot[:, 6:]], 1)
    state = np.concatenate([proprio, pp.scene_obs_to_state(scene)], 1)
    if stats is None:
        lo_p, hi_p, lo_s, hi_s = proprio.min(0), proprio.max(0), state.min(0), state.max(0)
    else:
        lo_p, hi_p, lo_s, hi_s = stats.proprio_min, stats.proprio_max, stats.state_min, stats.state_max
    return {
        "rgb_static": resize(stack("rgb_static")),
        "rgb_gripper": resize(stack("rgb_gripper")),
        "robot_obs": robot,
        "scene_obs": scene,
        "rel_actions": stack("rel_actions").astype(np.float32),
        "frame_ids": split.frame_ids,
        "proprio": ((proprio - lo_p) / (hi_p - lo_p)).astype(np.float32),
        "state": ((state - lo_s) / (hi_s - lo_s)).astype(np.float32),
    }


def _assert_matches(cache, expected):
    for k in ARRAYS:
        got = np.asarray(getattr(cache, k))
        if k.startswith("rgb"):  # uint8 rounding of the exact area average
            assert np.abs(got - expected[k]).max() <= 0.5 + 1e-3, k
        else:
            np.testing.assert_allclose(got, expected[k], rtol=1e-6, atol=1e-6, err_msg=k)


ARRAYS = ("rgb_static", "rgb_gripper", "robot_obs", "scene_obs", "rel_actions", "frame_ids", "proprio", "state")


def test_cache_equals_direct_computation_and_val_uses_train_stats(tmp_path):
    train = _split(tmp_path, "training", [[0, 11], [40, 52]], seed=0)
    val = _split(tmp_path, "validation", [[12, 20]], seed=1)
    paths = pp.build_dataset_cache(tmp_path, tmp_path / "cache", **BUILD)
    cache = pp.load_cache(paths["training"])
    expected = _expected(train)
    _assert_matches(cache, expected)
    assert cache.rgb_static.dtype == np.uint8 and cache.state.dtype == np.float32 and cache.robot_obs.dtype == np.float64
    assert cache.proprio.shape == (25, 18) and cache.state.shape == (25, 51)
    np.testing.assert_array_equal(cache.segments, [[0, 11], [12, 24]])
    assert cache.proprio.min() == 0.0 and cache.proprio.max() == 1.0
    np.testing.assert_array_equal(cache.rows_of([40, 5]), [12, 5])
    with pytest.raises(DataError, match=r"\[30\]"):
        cache.rows_of([30])

    val_cache = pp.load_cache(paths["validation"])
    assert val_cache.stats.same_values(cache.stats) and val_cache.stats.source == str(train.resolve())
    expected_val = _expected(val, cache.stats)
    _assert_matches(val_cache, expected_val)


def _counting(monkeypatch):
    decoded = []
    original = pp._decode_chunk
    monkeypatch.setattr(pp, "_decode_chunk", lambda task: decoded.append(task.index) or original(task))
    return decoded


def test_interrupted_build_resumes_without_redoing_chunks(tmp_path, monkeypatch):
    split_dir = _split(tmp_path, "training", [[0, 19], [30, 49]], seed=2)  # 40 frames = 5 chunks of 8
    reference = pp.load_cache(pp.build_cache(split_dir, tmp_path / "reference", **BUILD))

    # Frame 30 is row 20, in chunk 2: the build stops there with chunks 0 and 1 finished.
    bad = split_dir / "episode_0000030.npz"
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[:100])
    decoded = _counting(monkeypatch)
    with pytest.raises(DataError, match="episode_0000030"):
        pp.build_cache(split_dir, tmp_path / "cache", **BUILD)
    assert decoded == [0, 1, 2]
    with pytest.raises(DataError, match="incomplete"):
        pp.load_cache(tmp_path / "cache" / "training")

    bad.write_bytes(good_bytes)
    decoded.clear()
    cache = pp.load_cache(pp.build_cache(split_dir, tmp_path / "cache", **BUILD))
    assert decoded == [2, 3, 4]
    for k in ARRAYS:
        np.testing.assert_array_equal(np.asarray(getattr(cache, k)), np.asarray(getattr(reference, k)), err_msg=k)

    decoded.clear()  # a complete cache is reused as it is
    pp.build_cache(split_dir, tmp_path / "cache", **BUILD)
    assert decoded == []
    # other statistics: only the normalised arrays are rewritten
    other = pp.NormStats(cache.stats.proprio_min - 1, cache.stats.proprio_max, cache.stats.state_min,
                         cache.stats.state_max, rot6d=True, source="elsewhere")
    renormalised = pp.load_cache(pp.build_cache(split_dir, tmp_path / "cache", stats=other, **BUILD))
    assert decoded == [] and renormalised.stats.source == "elsewhere"
    assert not np.array_equal(np.asarray(renormalised.proprio), np.asarray(reference.proprio))
    # another image size is another plan: the cache starts over
    rebuilt = pp.load_cache(pp.build_cache(split_dir, tmp_path / "cache", **{**BUILD, "image_size": 4}))
    assert decoded == [0, 1, 2, 3, 4] and rebuilt.rgb_static.shape == (40, 4, 4, 3)


def test_worker_processes_give_the_same_cache(tmp_path):
    split_dir = _split(tmp_path, "training", [[0, 23]], seed=3)
    one = pp.load_cache(pp.build_cache(split_dir, tmp_path / "one", **BUILD))
    two = pp.load_cache(pp.build_cache(split_dir, tmp_path / "two", **{**BUILD, "workers": 2}))
    for k in ARRAYS:
        np.testing.assert_array_equal(np.asarray(getattr(one, k)), np.asarray(getattr(two, k)), err_msg=k)
