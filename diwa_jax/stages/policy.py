"""The ``policy`` stage: BC pre-training of one diffusion policy per task (spec sections 1.1 rows 3-4, 3.3).

Per task: ``n_train_windows`` annotated training windows (fixed seed) -> samples (latent at row t, the
actions of rows t..t+Ta-1, all inside one window) -> epsilon-MSE with AdamW, EMA weights, for
``config.policy.epochs`` epochs through the resumable loop. Minibatches are a pure function of
(seed, task, step), so a killed run resumes to the same weights. Later stages use the EMA weights.

Writes ``<workdir>/policy/<task>/``: ``checkpoints/`` (orbax), ``metrics.jsonl`` and the task's completion
marker (``artifacts.DONE``, its summary, written last).
"""
from __future__ import annotations

import numpy as np

from diwa_jax import artifacts
from diwa_jax.artifacts import load_features
from diwa_jax.checkpoint import Checkpointer
from diwa_jax.config import stage_key
from diwa_jax.data.batching import epoch_batch_rows, expert_windows, steps_per_epoch
from diwa_jax.data.calvin_format import CalvinSplit, DataError
from diwa_jax.envs import tasks
from diwa_jax.logging import MetricLogger, info
from diwa_jax.policy.bc import BCBatch, bc_samples, create_bc_state, make_bc_update, mean_bc_loss
from diwa_jax.specs import bc_spec, policy_schedule
from diwa_jax.training import run_loop


def train_task_policy(config, task: str, cond: np.ndarray, actions: np.ndarray) -> dict:
    """BC-train the policy of ``task`` on ``cond (M, latent)``/``actions (M, Ta, 7)``; resumes from its
    checkpoints. Returns the task's summary (samples, steps, final losses of the weights and EMA weights)."""
    cfg = config.policy
    n = len(cond)
    per_epoch = steps_per_epoch(n, cfg.batch_size)
    schedule = policy_schedule(config)
    spec = bc_spec(config)
    state = create_bc_state(stage_key(config, f"policy/{task}"), spec, cond.shape[-1], per_epoch)
    update = make_bc_update(spec, schedule, per_epoch)
    seed = (config.seed, tasks.stream(task))

    def batch_fn(step: int) -> BCBatch:
        rows = epoch_batch_rows(n, cfg.batch_size, seed, step)
        return BCBatch(cond=cond[rows], actions=actions[rows])

    out = artifacts.task_dir(config, "policy", task)
    with MetricLogger(out, tensorboard=config.log.tensorboard) as logger, \
            Checkpointer(artifacts.checkpoint_dir(config, "policy", task), config=config.to_dict()) as ck:
        state = run_loop(name=f"policy/{task}", state=state, update=update, batch_fn=batch_fn,
                         num_steps=cfg.epochs * per_epoch, checkpointer=ck, logger=logger, log_every=per_epoch,
                         ckpt_every=cfg.ckpt_every * per_epoch, show_progress=config.log.progress)
    summary = {"samples": n, "steps_per_epoch": per_epoch, "steps": int(state.step), "epochs": cfg.epochs,
               "loss": mean_bc_loss(state.params, schedule, cond, actions),
               "ema_loss": mean_bc_loss(state.ema_params, schedule, cond, actions)}
    artifacts.mark_done(out, summary)
    return summary


def train_policies(config) -> dict:
    """Stage runner: one BC policy per task in ``config.tasks``."""
    cache = artifacts.caches(config)["training"]
    split = CalvinSplit(artifacts.data_split_dir(config, "training"))
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
