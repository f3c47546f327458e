"""The ``policy`` stage: BC pre-training of one diffusion policy per task (spec sections 1.1 rows 3-4, 3.3).

Per task: ``n_train_windows`` annotated training windows (fixed seed) -> samples (latent at row t, the
actions of rows t..t+Ta-1, all inside one window) -> epsilon-MSE with AdamW, EMA weights, for
``config.policy.epochs`` epochs through the resumable loop. Minibatches are a pure function of
(seed, task, step), so a killed run resumes to the same weights. Later stages use the EMA weights.

Writes ``<workdir>/policy/<task>/``: ``checkpoints/`` (orbax), ``metrics.jsonl`` and ``summary.json``
(written last: the task is complete).
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diwa_jax.atomic import write_json
from diwa_jax.checkpoint import Checkpointer
from diwa_jax.config import stage_key
from diwa_jax.data.batching import expert_chunks, select_windows, task_windows
from diwa_jax.data.calvin_format import CalvinSplit, DataError
from diwa_jax.data.preprocess import Cache
from diwa_jax.envs.oracle import task_index
from diwa_jax.logging import MetricLogger, info
from diwa_jax.pipeline import stage_dir
from diwa_jax.policy.bc import BCBatch, bc_loss, create_bc_state, make_bc_update
from diwa_jax.policy.denoiser import init_denoiser
from diwa_jax.policy.schedule import DDPMSchedule, make_schedule
from diwa_jax.training import run_loop
from diwa_jax.world_model.featurize import Features, load_features
from diwa_jax.world_model.stage import ensure_cache

SUMMARY = "summary.json"
LOSS_KEY_SEED = 12345  # fixed noise for the reported final loss, comparable across runs
LOSS_EVAL_SAMPLES = 4096


def split_dir(config, split: str) -> str:
    return os.path.join(config.derived.data_dir, split)


def expert_windows(split: CalvinSplit, cache: Cache, task: str, n_windows: int, seed: int) -> np.ndarray:
    """``(W, 2)`` inclusive cache-row windows: ``n_windows`` of the task's annotated windows drawn with ``seed``."""
    windows = task_windows(split, cache, task)
    if len(windows) == 0:
        raise DataError(f"{split.dir}: no annotation windows of task '{task}'; collect more data or remove the "
                        "task from config.tasks")
    return select_windows(windows, n_windows, seed)


def bc_samples(windows: np.ndarray, features: Features, rel_actions: np.ndarray, horizon: int) -> tuple:
    """``(rows (M,), cond (M, latent), actions (M, Ta, 7))``: every chunk start of every window whose chunk
    fits in the window, the latent of that row and the next ``horizon`` actions."""
    rows, chunks = expert_chunks(windows, rel_actions, horizon)
    if len(rows) == 0:
        lengths = (windows[:, 1] - windows[:, 0] + 1).tolist()
        raise DataError(f"BC samples: no window is as long as config.policy.horizon={horizon} (lengths {lengths})")
    return rows, features.feature(rows), chunks


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    return max(1, math.ceil(n_samples / batch_size))


def epoch_batch_rows(n_samples: int, batch_size: int, seed: Sequence[int], step: int) -> np.ndarray:
    """Sample indices of gradient step ``step``: each epoch is a fresh permutation drawn from (seed, epoch),
    cut into ``ceil(n / batch_size)`` batches of exactly ``batch_size`` (the last one, and every batch when
    ``n < batch_size``, continue cyclically from the permutation's start), so the update compiles once."""
    per_epoch = steps_per_epoch(n_samples, batch_size)
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([*seed, epoch]).permutation(n_samples)
    return np.resize(order, per_epoch * batch_size)[k * batch_size:(k + 1) * batch_size]


def policy_schedule(config) -> DDPMSchedule:
    return make_schedule(config.policy.denoising_steps, config.policy.cosine_s)


def _task_dir(config, task: str) -> str:
    return os.path.join(stage_dir(config, "policy"), task)


def _checkpoint_dir(config, task: str) -> str:
    return os.path.join(_task_dir(config, task), "checkpoints")


def train_task_policy(config, task: str, cond: np.ndarray, actions: np.ndarray) -> dict:
    """BC-train the policy of ``task`` on ``cond (M, latent)``/``actions (M, Ta, 7)``; resumes from its
    checkpoints. Returns the task's summary (samples, steps, final losses of the weights and EMA weights)."""
    cfg = config.policy
    n = len(cond)
    per_epoch = steps_per_epoch(n, cfg.batch_size)
    schedule = policy_schedule(config)
    state = create_bc_state(stage_key(config, f"policy/{task}"), cfg, cond.shape[-1], per_epoch)
    update = make_bc_update(cfg, schedule, per_epoch)
    seed = (config.seed, task_index(task))

    def batch_fn(step: int) -> BCBatch:
        rows = epoch_batch_rows(n, cfg.batch_size, seed, step)
        return BCBatch(cond=cond[rows], actions=actions[rows])

    out = _task_dir(config, task)
    with MetricLogger(out, tensorboard=config.log.tensorboard) as logger, \
            Checkpointer(_checkpoint_dir(config, task), config=config.to_dict()) as ck:
        state = run_loop(name=f"policy/{task}", state=state, update=update, batch_fn=batch_fn,
                         num_steps=cfg.epochs * per_epoch, checkpointer=ck, logger=logger, log_every=per_epoch,
                         ckpt_every=cfg.ckpt_every * per_epoch, show_progress=config.log.progress)
    summary = {"samples": n, "steps_per_epoch": per_epoch, "steps": int(state.step), "epochs": cfg.epochs,
               "loss": mean_bc_loss(state.params, schedule, cond, actions),
               "ema_loss": mean_bc_loss(state.ema_params, schedule, cond, actions)}
    write_json(os.path.join(out, SUMMARY), summary)
    return summary


def mean_bc_loss(params: dict, schedule: DDPMSchedule, cond: np.ndarray, actions: np.ndarray) -> float:
    """The BC loss on (up to ``LOSS_EVAL_SAMPLES`` of) the samples with fixed noise: a resume-proof report."""
    rows = slice(0, LOSS_EVAL_SAMPLES)
    loss = jax.jit(bc_loss)(params, schedule, jnp.asarray(cond[rows]), jnp.asarray(actions[rows]),
                            jax.random.key(LOSS_KEY_SEED))
    return float(loss)


def train_policies(config) -> dict:
    """Stage runner: one BC policy per task in ``config.tasks``."""
    cache = ensure_cache(config)["training"]
    split = CalvinSplit(split_dir(config, "training"))
    features = load_features(config, "training")
    if len(features) != len(cache):
        raise DataError(f"features of the training split have {len(features)} rows, its cache {len(cache)}; "
                        "delete <workdir>/featurize and rerun")
    summary = {}
    for task in config.tasks:
        windows = expert_windows(split, cache, task, config.policy.n_train_windows, config.policy.window_seed)
        _, cond, actions = bc_samples(windows, features, cache.rel_actions, config.policy.horizon)
        summary[task] = {"windows": len(windows), **train_task_policy(config, task, cond, actions)}
        info(f"[policy] {task}: {len(windows)} windows, {len(cond)} samples, final EMA loss "
             f"{summary[task]['ema_loss']:.4f}")
    return summary


def load_policy(config, task: str) -> tuple[DDPMSchedule, dict]:
    """The schedule and the EMA denoiser weights of ``task``'s trained policy (the last checkpoint)."""
    if not os.path.exists(os.path.join(_task_dir(config, task), SUMMARY)):
        raise FileNotFoundError(f"{_task_dir(config, task)}: no finished policy of '{task}'; run the 'policy' stage")
    abstract = jax.eval_shape(lambda k: init_denoiser(k, config.policy, config.derived.latent_dim), jax.random.key(0))
    with Checkpointer(_checkpoint_dir(config, task)) as ck:
        return policy_schedule(config), ck.restore({"ema_params": abstract})["ema_params"]
