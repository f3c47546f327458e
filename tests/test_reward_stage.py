"""The reward stage: labels are the oracle relative to each window's first frame, imagined latents are the
window's actions replayed step by step through the prior, the balanced set holds the right pairs, and the
reported validation precision/recall are those of the saved classifier."""
import json
import os

import jax
import numpy as np
import pytest

from diwa_jax.data import calvin_format as cf
from diwa_jax import artifacts, specs
from diwa_jax.stages import reward as stage
from diwa_jax.reward.classifier import classifier_logits
from diwa_jax.types import Latent
from diwa_jax.world_model import model
from tests.test_policy_stage import make_config, make_dataset

DRAWER = 1  # scene_obs index


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward_data")
    caches, features = make_dataset(root)
    config = make_config(root, root / "run")
    spec = specs.world_model_spec(config)
    return root, caches, features, model.WorldModel(params=model.init_params(jax.random.key(0), spec), spec=spec)


def test_labels_are_the_oracle_relative_to_the_window_start(dataset):
    _, caches, _, _ = dataset
    scene = np.asarray(caches["training"].scene_obs)
    windows = np.array([[0, 15], [20, 40], [70, 70]])
    for task, sign in (("open_drawer", 1.0), ("close_drawer", -1.0)):
        labels = stage.window_labels(scene, windows, task)
        for (start, end), lab in zip(windows, labels):
            by_hand = [sign * (scene[i, DRAWER] - scene[start, DRAWER]) > 0.12 for i in range(start, end + 1)]
            assert lab.tolist() == by_hand and not lab[0]
    assert sum(lab.sum() for lab in stage.window_labels(scene, windows, "open_drawer")) > 0


def test_imagined_latents_equal_a_step_by_step_prior_replay(dataset):
    _, caches, features, world_model = dataset
    spec, params = world_model.spec, world_model.params
    cache, feats = caches["training"], features["training"]
    windows = np.array([[3, 10], [40, 44]])  # 8 and 5 frames: the second one is padded
    actions = stage.window_actions(cache.rel_actions, windows)
    assert actions.shape == (2, 7, 7)
    np.testing.assert_array_equal(actions[1, :4], cache.rel_actions[40:44])
    assert not actions[1, 4:].any()
    key = jax.random.key(3)
    imagined = np.asarray(stage.imagined_features(params, feats.latent(windows[:, 0]), actions, key, spec=spec))
    assert imagined.shape == (2, 7, spec.feature_dim)
    for w, (start, end) in enumerate(windows):
        latent = feats.latent(np.array([start]))
        step_keys = jax.random.split(jax.random.fold_in(key, w), actions.shape[1])
        for t in range(end - start):
            latent = model.img_step(params, spec, latent, cache.rel_actions[start + t][None], step_keys[t])
            np.testing.assert_allclose(imagined[w, t], np.asarray(latent.feature())[0], rtol=1e-5, atol=1e-5)
    # the start latent is the filtered one of the window's first row
    start = feats.latent(windows[:, 0])
    np.testing.assert_array_equal(Latent(start.deter, start.stoch).feature(), feats.feature(windows[:, 0]))


def test_training_set_pairs_latents_with_their_frame_labels(dataset):
    root, caches, features, world_model = dataset
    config = make_config(root, root / "run")
    cache, feats = caches["training"], features["training"]
    windows = np.array([[0, 15], [32, 47], [64, 79]])
    labels = stage.window_labels(cache.scene_obs, windows, "open_drawer")
    train = stage.training_set(config, "open_drawer", windows, cache, feats, world_model, jax.random.key(0))
    n_neg = config.reward.negatives_per_episode
    expect_real = sum(min(n_neg, int((~lab).sum())) + int(lab.sum()) for lab in labels)
    expect_imagined = sum(min(n_neg, int((~lab[1:]).sum())) + int(lab[1:].sum()) for lab in labels)
    assert train["n_real"] == expect_real and train["n_imagined"] == expect_imagined
    assert len(train["labels"]) == len(train["features"]) == expect_real + expect_imagined

    # every real sample is the latent of a window frame with that frame's oracle label
    rows = np.concatenate([np.arange(s, e + 1) for s, e in windows])
    row_labels = np.concatenate(labels)
    pool = feats.feature(rows)
    for feature, label in zip(train["features"][:expect_real], train["labels"][:expect_real]):
        match = np.flatnonzero((pool == feature).all(axis=1))
        assert len(match) == 1 and row_labels[match[0]] == label
    # every imagined sample is one of the window's imagined latents with the label of the matching real frame
    imagined = np.asarray(stage.imagined_features(world_model.params, feats.latent(windows[:, 0]),
                                                  stage.window_actions(cache.rel_actions, windows),
                                                  jax.random.key(0), spec=world_model.spec))
    pool = np.concatenate([imagined[w, :len(lab) - 1] for w, lab in enumerate(labels)])
    pool_labels = np.concatenate([lab[1:] for lab in labels])
    for feature, label in zip(train["features"][expect_real:], train["labels"][expect_real:]):
        match = np.flatnonzero(np.abs(pool - feature).max(axis=1) < 1e-6)
        assert len(match) >= 1 and pool_labels[match[0]] == label


def test_train_rewards_reports_the_saved_classifiers_precision_recall(dataset, monkeypatch, tmp_path):
    root, caches, features, world_model = dataset
    monkeypatch.setattr(stage, "load_features", lambda config, split: features[split])
    monkeypatch.setattr(stage, "load_world_model", lambda config: world_model)
    config = make_config(root, tmp_path / "run", **{"reward.epochs": 3, "reward.eval_every": 1})
    summary = stage.train_rewards(config)
    metrics = summary["open_drawer"]
    with open(os.path.join(config.derived.workdir, "reward", "open_drawer", artifacts.DONE)) as f:
        assert json.load(f) == metrics

    # independent computation of the validation numbers from the saved weights
    split = cf.CalvinSplit(os.path.join(config.derived.data_dir, "validation"))
    val_windows = split.task_windows("open_drawer")  # frame ids 128.. = validation cache rows + 128
    val_rows = np.concatenate([np.arange(s, e + 1) for s, e in val_windows]) - 128
    scene = np.asarray(caches["validation"].scene_obs)
    labels = np.concatenate([scene[np.arange(s, e + 1) - 128, DRAWER] - scene[s - 128, DRAWER] > 0.12
                             for s, e in val_windows])
    params = artifacts.load_reward(config, "open_drawer")
    pred = np.argmax(np.asarray(classifier_logits(params, features["validation"].feature(val_rows))), axis=-1) == 1
    true_pos = np.sum(pred & labels)
    assert metrics["val_frames"] == len(labels) == 32 and metrics["val_positives"] == labels.sum()
    assert metrics["precision"] == pytest.approx(true_pos / pred.sum() if pred.sum() else 0.0, abs=1e-6)
    assert metrics["recall"] == pytest.approx(true_pos / labels.sum(), abs=1e-6)
    assert metrics["train_imagined"] > 0 and metrics["train_real"] > 0
    assert metrics["steps"] == 3 * -(-metrics["train_samples"] // config.reward.batch_size)
    assert summary["mean_precision"] == pytest.approx(metrics["precision"])
    with open(os.path.join(config.derived.workdir, "reward", "open_drawer", "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    assert sum("reward/open_drawer/val/recall" in line for line in logged) == 3  # every epoch (eval_every=1)


def test_other_task_windows_join_the_training_set(dataset, monkeypatch, tmp_path):
    """``reward.other_task_windows=n``: up to n annotated windows of each other task (none of the task's own)
    join the task's windows, real and imagined, labelled by the task's oracle."""
    root, caches, features, world_model = dataset
    split = cf.CalvinSplit(os.path.join(root, "data", "training"))
    others = stage.other_task_windows(split, caches["training"], "open_drawer", 1, seed=42)
    own = {tuple(w) for w in split.task_windows("open_drawer")}
    close = {tuple(w) for w in split.task_windows("close_drawer")}
    assert len(others) == 1 and {tuple(w) for w in others} <= close and not own & {tuple(w) for w in others}
    assert len(stage.other_task_windows(split, caches["training"], "open_drawer", 100, seed=42)) == len(close)

    monkeypatch.setattr(stage, "load_features", lambda config, split: features[split])
    monkeypatch.setattr(stage, "load_world_model", lambda config: world_model)
    counts = {}
    for n in (0, 2):
        config = make_config(root, tmp_path / f"run{n}", **{"reward.epochs": 1, "reward.other_task_windows": n})
        counts[n] = stage.train_rewards(config)["open_drawer"]
    assert counts[2]["train_windows"] == counts[0]["train_windows"] + 2
    # each added window is one real and one imagined episode: 2 * 2 more balanced episodes' samples
    n_neg = make_config(root, tmp_path / "x").reward.negatives_per_episode
    assert counts[0]["train_samples"] < counts[2]["train_samples"] <= counts[0]["train_samples"] + 4 * (n_neg + 16)
