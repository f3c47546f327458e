"""The ``world_model`` stage: train the RSSM on play sequences, then check its open-loop predictions.

Reads the 64x64 cache of the data set (built on first use), trains with the resumable loop, logs
reconstructions and open-loop predictions beside the ground truth, and ends with the open-loop
error on validation sequences against the baseline of repeating the last context frame.
"""
from __future__ import annotations

import os

import jax
import numpy as np

from diwa_jax.atomic import write_json
from diwa_jax.checkpoint import Checkpointer
from diwa_jax.config import stage_key
from diwa_jax.data.batching import SequenceSampler
from diwa_jax.data.preprocess import Cache, build_dataset_cache, load_cache
from diwa_jax.logging import MetricLogger, info
from diwa_jax.pipeline import stage_dir
from diwa_jax.training import run_loop
from diwa_jax.world_model import model

SPLITS = ("training", "validation")
MODEL_KEYS = ("rgb_static", "rgb_gripper", "proprio", "state", "prev_action", "reset")
OPENLOOP_BATCHES = 4
# Decoded scene quantities checked in the open-loop report of the hybrid/state variants:
# (name, scene_obs index, tolerance). A joint's tolerance is a quarter of its task threshold (spec 5.2: slider
# 0.15 m, drawer 0.12 m), so a decoded state within it still tells a finished task from an unfinished one;
# a light's is the fraction of steps whose rounded bit may be wrong.
SCENE_QUANTITIES = (("slider", 0, 0.0375), ("drawer", 1, 0.03), ("lightbulb", 4, 0.1), ("led", 5, 0.1))
LIGHTS = ("lightbulb", "led")


def ensure_cache(config) -> dict[str, Cache]:
    """The preprocessed cache of both splits (built, or resumed, on first use; training statistics)."""
    paths = build_dataset_cache(config.derived.data_dir, config.derived.cache_dir, splits=SPLITS,
                                image_size=config.data.image_size, rot6d=config.data.rot6d,
                                workers=config.data.cache_workers, chunk_frames=config.data.cache_chunk_frames,
                                progress=config.log.progress)
    return {split: load_cache(path) for split, path in paths.items()}


def world_model_spec(config) -> model.WorldModelSpec:
    return model.as_spec(config.wm, image_size=config.data.image_size, proprio_dim=config.derived.proprio_dim,
                         state_dim=config.derived.state_dim, action_dim=config.policy.action_dim)


def _checkpoint_dir(config) -> str:
    return os.path.join(stage_dir(config, "world_model"), "checkpoints")


def load_world_model(config) -> tuple[model.WorldModelSpec, dict]:
    """The trained world model's spec and parameters (only the ``params`` item is read)."""
    spec = world_model_spec(config)
    abstract = jax.eval_shape(lambda k: model.init_params(k, spec), jax.random.key(0))
    with Checkpointer(_checkpoint_dir(config)) as ck:
        return spec, ck.restore({"params": abstract})["params"]


def _model_batch(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_KEYS}


def _side_by_side(truth: np.ndarray, predicted: np.ndarray, frames: int = 8) -> np.ndarray:
    """A (2H, frames*W, 3) image: ground truth above, prediction below, ``frames`` evenly spaced steps."""
    steps = np.linspace(0, truth.shape[0] - 1, min(frames, truth.shape[0])).round().astype(int)
    to_unit = lambda x: np.clip((np.asarray(x, np.float32) + 1.0) / 2.0, 0.0, 1.0)  # noqa: E731
    row = lambda seq: np.concatenate([to_unit(seq[i]) for i in steps], axis=1)  # noqa: E731
    return np.concatenate([row(truth), row(predicted)], axis=0)


def openloop_report(params, spec, sampler: SequenceSampler, context: int, horizon: int, key) -> tuple[dict, dict]:
    """Open-loop errors averaged over a few validation batches, and those batches (for state variants with
    the open-loop predicted states under ``predicted_state``) concatenated."""
    @jax.jit
    def errors(p, b, k):  # one open-loop run per batch: its errors, and its states for the scene report
        predicted = model.open_loop(p, spec, b, context, horizon, k)
        return model.prediction_error(spec, b, predicted, context, horizon), predicted.get("state")

    totals, batches = {}, []
    for i in range(OPENLOOP_BATCHES):
        batch = _model_batch(sampler.sample(i))
        metrics, predicted_state = jax.device_get(errors(params, batch, jax.random.fold_in(key, i)))
        for k, v in metrics.items():
            if np.ndim(v) == 0:
                totals[k] = totals.get(k, 0.0) + float(v) / OPENLOOP_BATCHES
        if spec.uses_state:
            batch["predicted_state"] = np.asarray(predicted_state)
        batches.append(batch)
    if "image_mse" in totals:
        totals["image_mse_ratio"] = totals["image_mse"] / totals["baseline_image_mse"]
    return totals, {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def train_world_model(config) -> dict:
    caches = ensure_cache(config)
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
    out = stage_dir(config, "world_model")

    with MetricLogger(out, tensorboard=config.log.tensorboard) as logger, \
            Checkpointer(_checkpoint_dir(config), config=config.to_dict()) as ck:

        def on_log(step, st, metrics):
            if step % wm.image_every and step != wm.steps:
                return
            batch = _model_batch(val.sample(0))
            pred = jax.device_get(predict(st.params, batch, jax.random.fold_in(key, step)))
            if spec.uses_images:
                for camera in ("rgb_static", "rgb_gripper"):
                    truth = model.normalize_image(batch[camera][0, context:])
                    logger.image(step, f"openloop/{camera}", _side_by_side(np.asarray(truth), pred[camera][0]))

        state = run_loop(name="world_model", state=state, update=update,
                         batch_fn=lambda step: _model_batch(train.sample(step)), num_steps=wm.steps,
                         checkpointer=ck, logger=logger, log_every=wm.log_every, ckpt_every=wm.ckpt_every,
                         on_log=on_log, show_progress=config.log.progress)
        eval_key = stage_key(config, "world_model/openloop")
        report, batches = openloop_report(state.params, spec, val, context, horizon, eval_key)
        if spec.uses_state:
            scene = scene_report(batches, batches["predicted_state"], caches["training"].stats,
                                 config.derived.proprio_dim, context)
            report.update(scene["errors"])
            _plot_scene(os.path.join(out, "openloop_scene_state.png"), scene)
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
        _save_png(os.path.join(out, "openloop_rgb_static.png"), _side_by_side(truth, pred["rgb_static"][0]))
        info(f"[world_model] open-loop image MSE {report['image_mse']:.4f} vs repeat-last-frame "
             f"{report['baseline_image_mse']:.4f} (ratio {report['image_mse_ratio']:.2f})")
    return summary


def scene_report(batch: dict, predicted_state: np.ndarray, stats, proprio_dim: int, context: int) -> dict:
    """Decoded slider/drawer (m) and light states vs the truth over an open-loop horizon.

    ``batch["state"]`` (N, context + H, D) normalised true states, ``predicted_state`` (N, H, D). Per quantity:
    mean absolute error of the model and of repeating the last context frame (lights as rounded bits: error
    rate), the same on the sequences where the quantity moves by more than its tolerance (``*_moving_*``),
    and ``*_follows``: the error is within the tolerance and, where something moves, below the baseline's
    (holding the last value is not enough). ``series``: truth and prediction of the most-moving sequence."""
    truth = stats.denormalize_state(batch["state"][:, context:])
    last = stats.denormalize_state(batch["state"][:, context - 1:context])
    pred = stats.denormalize_state(predicted_state)
    errors, series = {}, {}
    for name, index, tolerance in SCENE_QUANTITIES:
        col = proprio_dim + index
        t, p, b = truth[..., col], pred[..., col], np.broadcast_to(last[..., col], truth[..., col].shape)
        if name in LIGHTS:
            p = np.round(np.clip(p, 0, 1))
        model_err, base_err = np.abs(p - t), np.abs(b - t)
        change = np.max(base_err, axis=1)  # largest departure from the last seen value, per sequence
        moving = change > tolerance
        errors[f"{name}_mae"] = float(np.mean(model_err))
        errors[f"{name}_baseline_mae"] = float(np.mean(base_err))
        errors[f"{name}_moving_sequences"] = int(np.sum(moving))
        if moving.any():
            errors[f"{name}_moving_mae"] = float(np.mean(model_err[moving]))
            errors[f"{name}_moving_baseline_mae"] = float(np.mean(base_err[moving]))
        follows_motion = not moving.any() or errors[f"{name}_moving_mae"] < errors[f"{name}_moving_baseline_mae"]
        errors[f"{name}_follows"] = bool(errors[f"{name}_mae"] <= tolerance and follows_motion)
        shown = int(np.argmax(change))
        series[name] = (t[shown], pred[shown, :, col])
    return {"errors": errors, "series": series}


def _plot_scene(path: str, scene: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(scene["series"]), figsize=(3.2 * len(scene["series"]), 2.6))
    for ax, (name, (truth, pred)) in zip(axes, scene["series"].items()):
        ax.plot(truth, label="truth")
        ax.plot(pred, "--", label="open-loop")
        ax.set_title(f"{name} ({'on/off' if name in LIGHTS else 'm'})")
        ax.set_xlabel("open-loop step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _save_png(path: str, image: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).resize(
        (image.shape[1] * 2, image.shape[0] * 2), Image.NEAREST).save(path)
