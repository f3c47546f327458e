"""The ``world_model`` stage: train the RSSM on play sequences, then check its open-loop predictions.

Reads the 64x64 cache of the data set (built on first use), trains with the resumable loop, logs
reconstructions and open-loop predictions beside the ground truth, and ends with the open-loop
error on validation sequences against the baseline of repeating the last context frame.
"""
from __future__ import annotations

import os

import jax
import numpy as np

from diwa_jax import artifacts
from diwa_jax.atomic import write_json
from diwa_jax.checkpoint import Checkpointer
from diwa_jax.config import stage_key
from diwa_jax.data.batching import SequenceSampler
from diwa_jax.logging import MetricLogger, info
from diwa_jax.specs import world_model_spec
from diwa_jax.training import run_loop
from diwa_jax.world_model import model
from diwa_jax.world_model.report import (SCENE_QUANTITIES, model_batch, openloop_report, plot_scene, save_png,
                                         scene_report, side_by_side)


def train_world_model(config) -> dict:
    caches = artifacts.caches(config)
    spec = world_model_spec(config)
    wm = config.wm
    train = SequenceSampler(caches["training"], wm.batch_size, wm.seq_len, config.seed,
                            carry_state=wm.carry_state, reset_prob=wm.reset_prob)
    context, horizon = wm.openloop_context, wm.openloop_horizon
    val = SequenceSampler(caches["validation"], min(wm.batch_size, 8), context + horizon, config.seed + 1,
                          carry_state=False)
    key = stage_key(config, "world_model")
    state = model.create_train_state(key, spec, wm.batch_size)
    update = model.make_train_step(spec)
    predict = jax.jit(lambda p, b, k: model.open_loop(p, spec, b, context, horizon, k))
    out = artifacts.stage_dir(config, "world_model")

    with MetricLogger(out, tensorboard=config.log.tensorboard) as logger, \
            Checkpointer(artifacts.checkpoint_dir(config, "world_model"), config=config.to_dict()) as ck:

        def on_log(step, st, metrics):
            if step % wm.image_every and step != wm.steps:
                return
            batch = model_batch(val.sample(0))
            pred = jax.device_get(predict(st.params, batch, jax.random.fold_in(key, step)))
            if spec.uses_images:
                for camera in ("rgb_static", "rgb_gripper"):
                    truth = model.normalize_image(batch[camera][0, context:])
                    logger.image(step, f"openloop/{camera}", side_by_side(np.asarray(truth), pred[camera][0]))

        state = run_loop(name="world_model", state=state, update=update,
                         batch_fn=lambda step: model_batch(train.sample(step)), num_steps=wm.steps,
                         checkpointer=ck, logger=logger, log_every=wm.log_every, ckpt_every=wm.ckpt_every,
                         on_log=on_log, show_progress=config.log.progress)
        eval_key = stage_key(config, "world_model/openloop")
        report, batches = openloop_report(state.params, spec, val, context, horizon, eval_key)
        if spec.uses_state:
            scene = scene_report(batches, batches["predicted_state"], caches["training"].stats,
                                 config.derived.proprio_dim, context)
            report.update(scene["errors"])
            plot_scene(os.path.join(out, "openloop_scene_state.png"), scene)
            info("[world_model] open-loop decoded scene state: " + ", ".join(
                f"{name} {'follows' if report[f'{name}_follows'] else 'does not follow'} (MAE "
                f"{report[f'{name}_mae']:.3f}, tolerance {tol}, repeat-last {report[f'{name}_baseline_mae']:.3f})"
                for name, _, tol in SCENE_QUANTITIES))
        logger.scalars(wm.steps, report, prefix="world_model/openloop/")
    batch = {k: v[:val.batch_size] for k, v in batches.items()}
    summary = {"steps": int(state.step), "train_frames": len(caches["training"]),
               "openloop": {"context": context, "horizon": horizon, **report}}
    write_json(os.path.join(out, "openloop.json"), summary["openloop"])
    if spec.uses_images:
        pred = jax.device_get(predict(state.params, batch, eval_key))
        truth = np.asarray(model.normalize_image(batch["rgb_static"][0, context:]))
        save_png(os.path.join(out, "openloop_rgb_static.png"), side_by_side(truth, pred["rgb_static"][0]))
        info(f"[world_model] open-loop image MSE {report['image_mse']:.4f} vs repeat-last-frame "
             f"{report['baseline_image_mse']:.4f} (ratio {report['image_mse_ratio']:.2f})")
    artifacts.mark_done(out, summary)
    return summary
