"""The policy stage: BC samples pair each window row's latent with the next Ta actions of that window,
minibatches cover every sample once per epoch, and a killed-and-resumed BC run ends exactly where an
uninterrupted one does."""
import json
import os

import jax
import numpy as np
import pytest

from diwa_jax import artifacts, specs
from diwa_jax import config as configlib
from diwa_jax.checkpoint import Checkpointer
from diwa_jax.data import calvin_format as cf
from diwa_jax.stages import policy as stage
from diwa_jax.policy.denoiser import init_denoiser
from diwa_jax.world_model.featurize import Features

TRAIN_SEGMENTS = [[0, 63], [64, 127]]  # frame ids = cache rows; 16-frame windows, tasks in turn
VAL_SEGMENTS = [[128, 191]]
TASKS = ("open_drawer", "close_drawer")


def make_config(root, workdir, **overrides):
    """The tiny preset on the synthetic data set under ``root`` (shared cache), run in ``workdir``."""
    from experiments.calvin import get_config
    c = get_config("tiny")
    c.tasks = TASKS[:1]
    c.data.path = str(root / "data")
    c.data.cache_dir = str(root / "cache")
    c.data.cache_workers = 1
    c.log.tensorboard = False
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        c[section][key] = value
    return configlib.finalize(c, str(workdir))


def make_dataset(root):
    """Synthetic CALVIN splits (64x64 cameras) with their cache, and random features aligned with it."""
    for split, segments, seed in (("training", TRAIN_SEGMENTS, 0), ("validation", VAL_SEGMENTS, 1)):
        cf.write_synthetic_split(root / "data" / split, segments, tasks=TASKS, window=16, static_size=64,
                                 gripper_size=64, seed=seed)
    config = make_config(root, root / "run")
    caches = artifacts.caches(config)
    rng = np.random.default_rng(7)
    wm = config.wm
    features = {split: Features(deter=rng.normal(size=(len(cache), wm.deter)).astype(np.float32),
                                stoch=rng.integers(0, wm.classes, (len(cache), wm.stoch)).astype(np.uint8),
                                classes=wm.classes)
                for split, cache in caches.items()}
    return caches, features


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("policy_data")
    caches, features = make_dataset(root)
    return root, caches, features


def test_bc_samples_are_latent_rows_with_their_action_chunks(dataset):
    root, caches, features = dataset
    config = make_config(root, root / "run")
    cache = caches["training"]
    split = cf.CalvinSplit(os.path.join(config.derived.data_dir, "training"))
    windows = stage.expert_windows(split, cache, "open_drawer", n_windows=3, seed=42)
    all_windows = split.task_windows("open_drawer")  # frame ids == rows in this data set
    assert len(windows) == 3 and len(all_windows) == 4
    assert {tuple(w) for w in windows} <= {tuple(w) for w in all_windows}
    np.testing.assert_array_equal(windows, stage.expert_windows(split, cache, "open_drawer", 3, seed=42))

    horizon = config.policy.horizon
    rows, cond, actions = stage.bc_samples(windows, features["training"], cache.rel_actions, horizon)
    expected = [(t, features["training"].feature(np.array([t]))[0], np.asarray(cache.rel_actions[t:t + horizon]))
                for start, end in windows for t in range(start, end - horizon + 2)]
    assert len(rows) == len(expected) == sum(e - s + 2 - horizon for s, e in windows)
    for i, (row, latent, chunk) in enumerate(expected):
        assert rows[i] == row
        np.testing.assert_array_equal(cond[i], latent)
        np.testing.assert_allclose(actions[i], chunk, rtol=0, atol=1e-7)
    assert cond.shape == (len(rows), config.derived.latent_dim) and actions.shape == (len(rows), horizon, 7)

    with pytest.raises(cf.DataError, match="no annotation windows of task 'turn_on_led'"):
        stage.expert_windows(split, cache, "turn_on_led", 3, 42)


def test_epoch_batches_cover_every_sample_and_depend_only_on_the_step():
    n, batch = 10, 4  # 3 steps per epoch, the last one continues from the permutation's start
    epoch0 = [stage.epoch_batch_rows(n, batch, (0, 1), step) for step in range(3)]
    assert all(len(b) == batch for b in epoch0)
    flat = np.concatenate(epoch0)
    assert sorted(flat[:n]) == list(range(n))
    np.testing.assert_array_equal(flat[n:], flat[:2])
    np.testing.assert_array_equal(stage.epoch_batch_rows(n, batch, (0, 1), 1), epoch0[1])
    epoch1 = np.concatenate([stage.epoch_batch_rows(n, batch, (0, 1), step) for step in range(3, 6)])
    assert sorted(epoch1[:n]) == list(range(n)) and not np.array_equal(epoch1, flat)
    small = stage.epoch_batch_rows(3, 8, (0,), 0)  # fewer samples than a batch: repeated
    assert len(small) == 8 and sorted(set(small)) == [0, 1, 2]


def _restored_state(config, task):
    abstract = jax.eval_shape(lambda k: init_denoiser(k, specs.denoiser_spec(config), config.derived.latent_dim), jax.random.key(0))
    with Checkpointer(os.path.join(config.derived.workdir, "policy", task, "checkpoints")) as ck:
        return ck.latest_step(), ck.restore({"params": abstract, "ema_params": abstract})


def test_killed_and_resumed_policy_training_equals_uninterrupted(dataset, monkeypatch, tmp_path):
    root, _, features = dataset
    monkeypatch.setattr(stage, "load_features", lambda config, split: features[split])

    full = make_config(root, tmp_path / "full")
    summary = stage.train_policies(full)["open_drawer"]
    per_epoch = summary["steps_per_epoch"]
    assert summary["samples"] == 4 * (16 - full.policy.horizon + 1)  # the 4 open_drawer windows (n_train_windows=4)
    assert per_epoch == 2 and summary["steps"] == full.policy.epochs * per_epoch
    assert np.isfinite(summary["loss"]) and np.isfinite(summary["ema_loss"])

    killed = make_config(root, tmp_path / "killed")
    real_rows = stage.epoch_batch_rows
    kill_at = 5  # after the checkpoint of step 4 (ckpt_every = 2 epochs)

    def dies_at_kill(n, batch_size, seed, step):
        if step == kill_at:
            raise KeyboardInterrupt("simulated kill")
        return real_rows(n, batch_size, seed, step)

    monkeypatch.setattr(stage, "epoch_batch_rows", dies_at_kill)
    with pytest.raises(KeyboardInterrupt):
        stage.train_policies(killed)
    assert _restored_state(killed, "open_drawer")[0] == 4

    steps_seen = []

    def counting(n, batch_size, seed, step):
        steps_seen.append(step)
        return real_rows(n, batch_size, seed, step)

    monkeypatch.setattr(stage, "epoch_batch_rows", counting)
    resumed = stage.train_policies(killed)["open_drawer"]
    assert steps_seen == list(range(4, 8))  # it continued from the checkpoint
    assert resumed == summary

    step_full, state_full = _restored_state(full, "open_drawer")
    step_resumed, state_resumed = _restored_state(killed, "open_drawer")
    assert step_full == step_resumed == 8
    for a, b in zip(jax.tree.leaves(state_full), jax.tree.leaves(state_resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    schedule, ema = artifacts.load_policy(killed, "open_drawer")
    assert schedule.num_steps == killed.policy.denoising_steps
    for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(state_full["ema_params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # EMA is what later stages get; after epoch 1 (ema_start = 1) it differs from the raw weights.
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(state_full["params"])))
    with open(os.path.join(killed.derived.workdir, "policy", "open_drawer", artifacts.DONE)) as f:
        assert json.load(f) == {k: v for k, v in summary.items() if k != "windows"}
    with pytest.raises(FileNotFoundError, match="run the 'policy' stage"):
        artifacts.load_policy(killed, "close_drawer")
