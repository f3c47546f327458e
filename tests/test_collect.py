"""The collect stage: scripted play written in CALVIN's format reads back through the reader,
annotation windows agree with the oracle, and a killed collection resumes to the same data."""
from pathlib import Path

import numpy as np
import pytest

from diwa_jax import config as configlib
from diwa_jax.data import calvin_format as cf
from diwa_jax.data import collect as segments
from diwa_jax.stages import collect
from diwa_jax.envs import tasks


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    from experiments.calvin import get_config
    c = get_config("tiny")
    c.collect.train_frames, c.collect.val_frames, c.collect.segment_frames = 240, 120, 120
    cfg = configlib.finalize(c, str(tmp_path_factory.mktemp("run")))
    summary = collect.collect(cfg)
    return cfg, summary


def test_splits_read_back(collected):
    cfg, summary = collected
    train = cf.CalvinSplit(f"{cfg.derived.data_dir}/training")
    val = cf.CalvinSplit(f"{cfg.derived.data_dir}/validation")
    assert len(train) == 240 and len(val) == 120
    np.testing.assert_array_equal(train.segments, [[0, 119], [120, 239]])
    np.testing.assert_array_equal(val.segments, [[240, 359]])
    frame = train.load_frame(5)
    assert frame["rgb_static"].shape == (cfg.env.static_size, cfg.env.static_size, 3)
    assert frame["robot_obs"].dtype == np.float64 and frame["rel_actions"].dtype == np.float64
    assert np.all(np.abs(frame["rel_actions"]) <= 1.0) and abs(frame["rel_actions"][6]) == 1.0
    stats = train.statistics()
    assert len(stats["robot_obs"][0]["mean"]) == 15 and summary["training"]["frames"] == 240
    assert train.scene_info() == {"calvin_scene_D": [0, 239]}


def test_annotation_windows_hold_under_the_oracle(collected):
    cfg, _ = collected
    n_windows = 0
    for split in ("training", "validation"):
        data = cf.CalvinSplit(f"{cfg.derived.data_dir}/{split}")
        ann = data.annotations()
        for (start, end), task in zip(ann.windows, ann.tasks):
            seg = data.segments[(data.segments[:, 0] <= start) & (start <= data.segments[:, 1])]
            assert len(seg) == 1 and end <= seg[0, 1], "a window crosses a segment boundary"
            assert end - start + 1 <= cfg.collect.window
            first = data.load_frame(start, keys=("scene_obs",))["scene_obs"]
            scenes = np.stack([data.load_frame(f, keys=("scene_obs",))["scene_obs"] for f in range(start, end + 1)])
            assert tasks.success(task, first, scenes).any(), (task, start, end)
            n_windows += 1
    assert n_windows > 0


def test_killed_collection_resumes_to_identical_data(collected):
    cfg, _ = collected
    job = collect.plan(cfg)["training"][1]
    before = cf.CalvinSplit(job.split_dir).load_frame(job.first_id + 50)
    # emulate a worker killed mid-segment: its record and some frames are gone
    segments.record_path(job).unlink()
    for fid in range(job.first_id + 40, job.first_id + job.n_frames):
        (Path(job.split_dir) / cf.frame_filename(fid)).unlink()
    collect.collect(cfg)
    after = cf.CalvinSplit(job.split_dir).load_frame(job.first_id + 50)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
