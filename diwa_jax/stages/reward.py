"""The ``reward`` stage: one latent success classifier per task (spec sections 1.1 row 5, 5).

Training set, per task: the real (filtered) latents of ``reward.n_train_windows`` annotated training
windows, and (``reward.use_imagined``) imagined latents: from each window's first latent, the window's
actions replayed open-loop through the world-model prior. Frame i of a window is positive when the
oracle says the task is done between the window's first frame and frame i; the imagined latent after
the window's j-th action takes the label of real frame j + 1. Each real and each imagined trajectory is
an episode for the balancing (``negatives_per_episode`` negatives, the ``hard_negatives`` frames just before
success, and all positives). With
``reward.other_task_windows`` > 0, that many annotated windows of every other task join the task's own, real
and imagined alike, labelled by the same oracle (almost all negatives): the classifier then sees latents of
the robot doing something else, which is what a fine-tuned policy's failures look like. Validation: the real
latents of every validation window of the task, unbalanced.

Writes ``<workdir>/reward/<task>/``: ``checkpoints/``, ``metrics.jsonl`` and the task's completion marker
(``artifacts.DONE``: the final validation precision/recall, written last).
"""
from __future__ import annotations

import functools

import jax
import numpy as np

from diwa_jax import artifacts
from diwa_jax.artifacts import load_features, load_world_model
from diwa_jax.checkpoint import Checkpointer
from diwa_jax.config import stage_key
from diwa_jax.data.batching import epoch_batch_rows, expert_windows, other_task_windows, steps_per_epoch, task_windows
from diwa_jax.data.calvin_format import CalvinSplit, DataError
from diwa_jax.data.preprocess import Cache
from diwa_jax.envs import tasks
from diwa_jax.logging import MetricLogger, info
from diwa_jax.reward.dataset import validation_metrics, validation_set, window_actions, window_labels
from diwa_jax.reward.train import RewardBatch, balance_episode_samples, create_reward_state, make_reward_update
from diwa_jax.specs import reward_spec
from diwa_jax.training import run_loop
from diwa_jax.types import Latent
from diwa_jax.world_model import model
from diwa_jax.world_model.featurize import Features

_SHUFFLE_STREAM, _BALANCE_STREAM = 1, 2  # independent numpy streams of (seed, task, stream)


@functools.partial(jax.jit, static_argnames="spec")
def imagined_features(params, start: Latent, actions: jax.Array, key: jax.Array, *, spec) -> jax.Array:
    """``(W, T, latent)``: from ``start`` (W, ...) each window imagines ``actions`` (W, T, 7) through the prior,
    window w with ``fold_in(key, w)``, so its latents do not depend on the other windows or on padding."""
    def one(latent, acts, window_key):
        batch1 = jax.tree.map(lambda x: x[None], latent)
        return model.imagine(params, spec, batch1, acts[None], window_key).feature()[0]

    keys = jax.vmap(lambda w: jax.random.fold_in(key, w))(np.arange(actions.shape[0]))
    return jax.vmap(one)(start, actions, keys)


def training_set(config, task: str, windows: np.ndarray, cache: Cache, features: Features,
                 world_model: model.WorldModel | None, key: jax.Array) -> dict:
    """Balanced training features and labels of ``task`` plus counts: ``{"features", "labels", "n_real",
    "n_imagined", "n_windows"}``. ``world_model`` is needed only with ``reward.use_imagined``."""
    cfg = config.reward
    labels = window_labels(cache.scene_obs, windows, task)
    episodes = [(features.feature(np.arange(start, end + 1)), lab) for (start, end), lab in zip(windows, labels)]
    n_real = len(episodes)
    if cfg.use_imagined:
        imagined = np.asarray(imagined_features(world_model.params, features.latent(windows[:, 0]),
                                                window_actions(cache.rel_actions, windows), key,
                                                spec=world_model.spec))
        episodes += [(imagined[w, :len(lab) - 1], lab[1:]) for w, lab in enumerate(labels) if len(lab) > 1]
    rng = np.random.default_rng([config.seed, tasks.stream(task), _BALANCE_STREAM])
    picks = balance_episode_samples([lab for _, lab in episodes], cfg.negatives_per_episode, rng,
                                    quirk=cfg.balance_quirk, hard=cfg.hard_negatives)
    return {
        "features": np.concatenate([feat[p] for (feat, _), p in zip(episodes, picks)]).astype(np.float32),
        "labels": np.concatenate([lab[p] for (_, lab), p in zip(episodes, picks)]).astype(np.int32),
        "n_real": int(sum(len(p) for p in picks[:n_real])),
        "n_imagined": int(sum(len(p) for p in picks[n_real:])),
        "n_windows": int(len(windows)),
    }


def train_task_reward(config, task: str, train: dict, val_features: np.ndarray, val_labels: np.ndarray) -> dict:
    """Train the classifier of ``task`` (resuming from its checkpoints); write and return its metrics."""
    cfg = config.reward
    n = len(train["labels"])
    per_epoch = steps_per_epoch(n, cfg.batch_size)
    spec = reward_spec(config)
    state = create_reward_state(stage_key(config, f"reward/{task}"), spec, train["features"].shape[-1])
    seed = (config.seed, tasks.stream(task), _SHUFFLE_STREAM)

    def batch_fn(step: int) -> RewardBatch:
        rows = epoch_batch_rows(n, cfg.batch_size, seed, step)
        return RewardBatch(features=train["features"][rows], labels=train["labels"][rows])

    out = artifacts.task_dir(config, "reward", task)
    with MetricLogger(out, tensorboard=config.log.tensorboard) as logger, \
            Checkpointer(artifacts.checkpoint_dir(config, "reward", task), config=config.to_dict()) as ck:

        def on_log(step, state, _):
            logger.scalars(step, {k: v for k, v in validation_metrics(state.params, val_features, val_labels).items()
                                  if v is not None}, prefix=f"reward/{task}/val/")

        state = run_loop(name=f"reward/{task}", state=state, update=make_reward_update(spec), batch_fn=batch_fn,
                         num_steps=cfg.epochs * per_epoch, checkpointer=ck, logger=logger,
                         log_every=cfg.eval_every * per_epoch, ckpt_every=cfg.eval_every * per_epoch, on_log=on_log,
                         show_progress=config.log.progress)
    metrics = {**validation_metrics(state.params, val_features, val_labels),
               "val_frames": int(len(val_labels)), "val_positives": int(val_labels.sum()),
               "train_samples": n, "train_positives": int(train["labels"].sum()),
               "train_real": train["n_real"], "train_imagined": train["n_imagined"],
               "train_windows": train["n_windows"], "steps": int(state.step)}
    artifacts.mark_done(out, metrics)
    return metrics


def train_rewards(config) -> dict:
    """Stage runner: one classifier per task in ``config.tasks``; the summary holds each task's metrics and
    the mean validation precision/recall."""
    caches = artifacts.caches(config)
    splits = {name: CalvinSplit(artifacts.data_split_dir(config, name)) for name in ("training", "validation")}
    features = {name: load_features(config, name) for name in splits}
    for name in splits:
        if len(features[name]) != len(caches[name]):
            raise DataError(f"features of the {name} split have {len(features[name])} rows, its cache "
                            f"{len(caches[name])}; delete <workdir>/featurize and rerun")
    world_model = load_world_model(config) if config.reward.use_imagined else None
    summary = {}
    for task in config.tasks:
        windows = expert_windows(splits["training"], caches["training"], task, config.reward.n_train_windows,
                                 config.reward.window_seed)
        if config.reward.other_task_windows:
            windows = np.concatenate([windows, other_task_windows(
                splits["training"], caches["training"], task, config.reward.other_task_windows,
                config.reward.window_seed)])
        train = training_set(config, task, windows, caches["training"], features["training"], world_model,
                             stage_key(config, f"reward/{task}/imagine"))
        val_windows = task_windows(splits["validation"], caches["validation"], task)
        val_features, val_labels = validation_set(val_windows, caches["validation"], features["validation"], task)
        summary[task] = train_task_reward(config, task, train, val_features, val_labels)
        info(f"[reward] {task}: validation precision {summary[task]['precision']}, recall "
             f"{summary[task]['recall']} on {len(val_windows)} windows")
    means = {}
    for name in ("precision", "recall"):
        values = [metrics[name] for metrics in summary.values() if metrics[name] is not None]
        means[f"mean_{name}"] = float(np.mean(values)) if values else None
    return {**summary, **means}
