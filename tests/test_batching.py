"""World-model sequence sampler and expert windows/chunks over a preprocessed cache."""
import numpy as np
import pytest

from diwa_jax.data import batching as bt
from diwa_jax.data import calvin_format as cf
from diwa_jax.data import preprocess as pp

SEGMENTS = [[0, 9], [20, 34], [50, 56]]  # 10 + 15 + 7 = 32 rows; segment starts at rows 0, 10, 25
STARTS = {0, 10, 25}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    cf.write_synthetic_split(root / "training", SEGMENTS, static_size=8, gripper_size=8, seed=0)
    # Annotations by hand: frame ids; (30, 40) crosses its segment's end (34); (2, 5) is short.
    windows = [[0, 7], [22, 29], [30, 40], [2, 5], [50, 56]]
    tasks = ["open_drawer", "open_drawer", "open_drawer", "turn_on_led", "open_drawer"]
    stats = cf.RunningStats()
    stats.add({"robot_obs": np.zeros(15), "scene_obs": np.zeros(24), "actions": np.zeros(7)})
    cf.write_split_metadata(root / "training", SEGMENTS, stats.to_statistics(), cf.make_lang_annotations(windows, tasks))
    cache = pp.load_cache(pp.build_cache(root / "training", root / "cache", image_size=8, workers=1, progress=False))
    return cf.CalvinSplit(root / "training"), cache


def test_deterministic_per_step(data):
    _, cache = data
    for carry in (True, False):
        a = bt.SequenceSampler(cache, 3, 4, seed=7, carry_state=carry, reset_prob=0.3)
        b = bt.SequenceSampler(cache, 3, 4, seed=7, carry_state=carry, reset_prob=0.3)
        later = [b.sample(s) for s in (5, 2, 9)]  # order of calls does not matter
        for s, batch in zip((5, 2, 9), later):
            for k, v in a.sample(s).items():
                np.testing.assert_array_equal(v, batch[k], err_msg=k)
        other = bt.SequenceSampler(cache, 3, 4, seed=8, carry_state=carry, reset_prob=0.3)
        assert not np.array_equal(a.sample(5)["rows"], other.sample(5)["rows"]) or not np.array_equal(
            a.sample(5)["reset"], other.sample(5)["reset"])


def test_streams_continue_and_reset_rules(data):
    _, cache = data
    sampler = bt.SequenceSampler(cache, batch_size=2, seq_len=4, seed=3, carry_state=True)
    n = len(cache)
    assert sampler.steps_per_epoch == 4  # 32 rows / 2 streams = 16 rows per stream = 4 steps of 4
    batches = [sampler.sample(s) for s in range(8)]
    for s, batch in enumerate(batches):
        rows = batch["rows"]
        assert rows.shape == (2, 4) and rows.dtype == np.int64
        np.testing.assert_array_equal(np.diff(rows, axis=1) % n, 1)  # consecutive rows (mod wrap)
        assert (rows[1, 0] - rows[0, 0]) % n == 16  # equally spaced streams
        if s % 4:  # inside an epoch: every stream continues the previous step's rows
            np.testing.assert_array_equal(rows[:, 0], (batches[s - 1]["rows"][:, -1] + 1) % n)
        # no random resets: resets exactly at segment starts and at the first step of an epoch
        expected = np.isin(rows, list(STARTS))
        expected[:, 0] |= s % 4 == 0
        np.testing.assert_array_equal(batch["reset"], expected)
    epoch_rows = np.concatenate([b["rows"] for b in batches[:4]], axis=1)
    assert sorted(epoch_rows.reshape(-1)) == list(range(n))  # one epoch visits every row once
    assert len({sampler.sample(4 * epoch)["rows"][0, 0] for epoch in range(6)}) > 1  # a new offset per epoch


def test_batch_contents_and_prev_action(data):
    split, cache = data
    sampler = bt.SequenceSampler(cache, batch_size=4, seq_len=8, seed=0, carry_state=False)
    for step in range(3):
        batch = sampler.sample(step)
        rows = batch["rows"]
        assert batch["rgb_static"].shape == (4, 8, 8, 8, 3) and batch["rgb_static"].dtype == np.uint8
        assert batch["proprio"].shape == (4, 8, 18) and batch["state"].shape == (4, 8, 51)
        assert batch["prev_action"].dtype == np.float32 and batch["reset"].dtype == bool
        np.testing.assert_array_equal(batch["rgb_gripper"], np.asarray(cache.rgb_gripper)[rows])
        np.testing.assert_array_equal(batch["state"], np.asarray(cache.state)[rows])
        assert batch["reset"][:, 0].all()  # a random window starts fresh
        np.testing.assert_array_equal(batch["reset"][:, 1:], np.isin(rows[:, 1:], list(STARTS)))
        for b in range(4):
            for t in range(8):
                row = rows[b, t]
                if row in STARTS:
                    expected = [0, 0, 0, 0, 0, 0, 1]
                else:  # the rel_action stored in the previous frame's file
                    expected = split.load_frame(cache.frame_ids[row - 1])["rel_actions"]
                np.testing.assert_allclose(batch["prev_action"][b, t], expected, rtol=1e-6)


def test_random_resets(data):
    _, cache = data
    sampler = bt.SequenceSampler(cache, batch_size=8, seq_len=16, seed=1, carry_state=True, reset_prob=0.25)
    base = bt.SequenceSampler(cache, batch_size=8, seq_len=16, seed=1, carry_state=True, reset_prob=0.0)
    extra = np.concatenate([(sampler.sample(s)["reset"] & ~base.sample(s)["reset"]).reshape(-1) for s in range(20)])
    non_start = np.concatenate([(~base.sample(s)["reset"]).reshape(-1) for s in range(20)])
    assert 0.18 < extra.sum() / non_start.sum() < 0.32
    assert (sampler.sample(3)["reset"] >= base.sample(3)["reset"]).all()  # never removes a reset


def test_task_windows_and_selection(data):
    split, cache = data
    windows = bt.task_windows(split, cache, "open_drawer")
    # frame ids -> rows: segment [20, 34] starts at row 10, [50, 56] at row 25; (30, 40) clipped at 34 -> row 24
    np.testing.assert_array_equal(windows, [[0, 7], [12, 19], [20, 24], [25, 31]])
    np.testing.assert_array_equal(bt.task_windows(split, cache, "turn_on_led"), [[2, 5]])
    assert bt.task_windows(split, cache, "close_drawer").shape == (0, 2)

    picked = bt.select_windows(windows, 2, seed=42)
    assert picked.shape == (2, 2) and len({tuple(w) for w in picked}) == 2
    assert all(any((w == v).all() for v in windows) for w in picked)
    np.testing.assert_array_equal(picked, bt.select_windows(windows, 2, seed=42))
    draws = {tuple(map(tuple, bt.select_windows(windows, 2, seed=s))) for s in range(10)}
    assert len(draws) > 1
    np.testing.assert_array_equal(bt.select_windows(windows, 50, seed=42), windows)


def test_expert_chunks(data):
    _, cache = data
    actions = np.asarray(cache.rel_actions)
    starts, chunks = bt.expert_chunks(np.array([[0, 7], [12, 14], [20, 24]]), actions, horizon=4)
    # (0, 7): 8 frames -> starts 0..4; (12, 14): 3 frames < 4 -> none; (20, 24): 5 frames -> 20, 21
    np.testing.assert_array_equal(starts, [0, 1, 2, 3, 4, 20, 21])
    assert chunks.shape == (7, 4, 7) and chunks.dtype == np.float32
    for start, chunk in zip(starts, chunks):
        np.testing.assert_array_equal(chunk, actions[start : start + 4])
    starts, chunks = bt.expert_chunks(np.array([[12, 14]]), actions, horizon=4)
    assert starts.shape == (0,) and chunks.shape == (0, 4, 7)


def test_rejects_a_split_shorter_than_a_sequence(data):
    _, cache = data
    with pytest.raises(ValueError, match="seq_len=40"):
        bt.SequenceSampler(cache, batch_size=2, seq_len=40, seed=0)
