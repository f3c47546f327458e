"""The world_model and featurize stages end to end on tiny data: a checkpoint and an open-loop
report exist, every frame gets a latent, and a featurize run killed mid-way resumes without redoing
finished chunks and ends with the same latents."""
import json
import shutil

import numpy as np
import pytest

from diwa_jax import artifacts
from diwa_jax import config as configlib
from diwa_jax import pipeline
from diwa_jax.stages import featurize as featurize_mod
from diwa_jax.stages import world_model as wm_stage


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from experiments.calvin import get_config
    cfg = configlib.finalize(get_config("tiny"), str(tmp_path_factory.mktemp("run")))
    pipeline.run(cfg, ["collect", "world_model"])
    return cfg


def test_world_model_stage_outputs(trained):
    cfg = trained
    with open(pipeline.stage_dir(cfg, "world_model") + "/openloop.json") as f:
        report = json.load(f)
    assert report["horizon"] == cfg.wm.openloop_horizon and np.isfinite(report["image_mse"])
    spec = artifacts.load_world_model(cfg).spec
    assert spec.deter == cfg.wm.deter
    with open(pipeline.stage_dir(cfg, "world_model") + "/metrics.jsonl") as f:
        losses = [m for m in map(json.loads, f) if "world_model/loss" in m]
    assert losses[-1]["step"] == cfg.wm.steps and np.isfinite(losses[-1]["world_model/loss"])


def test_state_variant_reports_decoded_scene(trained, tmp_path):
    """The hybrid/state report on the stage's own data: every quantity judged, the plot written."""
    from experiments.calvin import get_config
    config = get_config("tiny")
    config.wm.variant = "state"
    config.data.path = trained.derived.data_dir
    config.data.cache_dir = trained.derived.cache_dir
    cfg = configlib.finalize(config, str(tmp_path))
    summary = wm_stage.train_world_model(cfg)
    report = summary["openloop"]
    for name, _, _ in wm_stage.SCENE_QUANTITIES:
        assert isinstance(report[f"{name}_follows"], bool)
        assert np.isfinite(report[f"{name}_mae"]) and np.isfinite(report[f"{name}_baseline_mae"])
    assert "image_mse" not in report
    assert (tmp_path / "world_model" / "openloop_scene_state.png").stat().st_size > 0


def test_featurize_covers_every_frame_and_resumes(trained, monkeypatch):
    cfg = trained
    caches = artifacts.caches(cfg)
    world_model = artifacts.load_world_model(cfg)
    spec, params = world_model.spec, world_model.params
    key = configlib.stage_key(cfg, "featurize")
    featurize_mod.featurize_split(cfg, spec, params, caches["training"], "training", key)
    straight = artifacts.load_features(cfg, "training")
    assert len(straight) == len(caches["training"])
    assert np.all(np.abs(np.asarray(straight.deter)).sum(axis=1) > 0), "a frame has no latent"
    feats = straight.feature(np.arange(5))
    assert feats.shape == (5, cfg.derived.latent_dim)
    np.testing.assert_array_equal(feats[:, cfg.wm.deter:].reshape(5, cfg.wm.stoch, cfg.wm.classes).sum(-1), 1)
    expected = (np.array(straight.deter), np.array(straight.stoch))

    shutil.rmtree(pipeline.stage_dir(cfg, "featurize"))
    real_inputs, calls = featurize_mod.model_inputs, []

    def killed_at_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_inputs(*args, **kwargs)

    monkeypatch.setattr(featurize_mod, "model_inputs", killed_at_third)
    with pytest.raises(KeyboardInterrupt):
        featurize_mod.featurize_split(cfg, spec, params, caches["training"], "training", key)

    resumed_calls = []
    monkeypatch.setattr(featurize_mod, "model_inputs", lambda *a, **k: resumed_calls.append(1) or real_inputs(*a, **k))
    featurize_mod.featurize_split(cfg, spec, params, caches["training"], "training", key)
    total = json.loads((artifacts.features_dir(cfg, "training") / artifacts.DONE).read_text())["chunks"]
    assert len(resumed_calls) == total - 2, "finished chunks were redone"
    resumed = artifacts.load_features(cfg, "training")
    np.testing.assert_array_equal(np.asarray(resumed.deter), expected[0])
    np.testing.assert_array_equal(np.asarray(resumed.stoch), expected[1])


def test_stream_rows_keep_segments_whole():
    segments = np.array([[0, 9], [10, 12], [13, 30], [31, 34]])
    rows = featurize_mod.stream_rows(segments, 2)
    assert rows.shape[0] == 2
    seen = np.sort(rows[rows >= 0])
    np.testing.assert_array_equal(seen, np.arange(35))
    for stream in rows:
        valid = stream[stream >= 0]
        for s, e in segments:
            inside = valid[(valid >= s) & (valid <= e)]
            assert len(inside) in (0, e - s + 1) and np.all(np.diff(inside) == 1)


def test_scene_report_measures_decoded_articulations():
    from diwa_jax.data.preprocess import NormStats
    proprio_dim, t = 18, 6
    stats = NormStats(np.zeros(18), np.ones(18), np.zeros(51), np.full(51, 2.0), True, "training")
    true_scene = np.zeros((2, t, 51))
    true_scene[0, :, proprio_dim + 1] = np.linspace(0.0, 0.2, t)  # the drawer opens in sequence 0
    true_scene[1, :, proprio_dim + 1] = 0.1  # and stays half open in sequence 1
    true_scene[0, 3:, proprio_dim + 5] = 1.0  # the LED turns on at step 3 of sequence 0
    batch = {"state": true_scene / 2.0}  # normalised: (x - 0) / 2
    context = 2
    exact = wm_stage.scene_report(batch, batch["state"][:, context:], stats, proprio_dim, context)["errors"]
    assert exact["drawer_mae"] == 0.0 and exact["led_mae"] == 0.0
    assert exact["drawer_follows"] and exact["led_follows"] and exact["slider_follows"]
    opening = true_scene[0, 2:, 19] - true_scene[0, 1, 19]
    np.testing.assert_allclose(exact["drawer_baseline_mae"], np.mean(np.abs(opening)) / 2)
    assert exact["drawer_moving_sequences"] == 1 and exact["led_moving_sequences"] == 1
    np.testing.assert_allclose(exact["drawer_moving_baseline_mae"], np.mean(np.abs(opening)))
    assert exact["led_baseline_mae"] == 0.375  # repeating "off" misses 3 "on" steps of 8

    held = np.broadcast_to(batch["state"][:, context - 1:context], (2, t - context, 51))
    hold = wm_stage.scene_report(batch, held, stats, proprio_dim, context)["errors"]
    # holding the last value is within the LED's tolerance on average only if nothing toggles: here it misses
    assert not hold["led_follows"] and not hold["drawer_follows"]  # the opening drawer is not followed
    assert hold["slider_follows"]  # a slider that never moves is held exactly

    off = wm_stage.scene_report(batch, np.zeros((2, t - context, 51)), stats, proprio_dim, context)["errors"]
    assert off["led_mae"] == 0.375 and off["drawer_mae"] > 0.05 and not off["drawer_follows"]
