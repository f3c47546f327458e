"""The world model's open-loop report: predictions against the truth on validation sequences.

Errors against the baseline of repeating the last context frame, side-by-side images of the predicted and true
frames, and (hybrid/state variants) the decoded scene quantities the tasks depend on.
"""
from __future__ import annotations

import jax
import numpy as np

from diwa_jax.data.batching import SequenceSampler
from diwa_jax.world_model import model

MODEL_KEYS = ("rgb_static", "rgb_gripper", "proprio", "state", "prev_action", "reset")
OPENLOOP_BATCHES = 4
# Decoded scene quantities checked in the open-loop report of the hybrid/state variants:
# (name, scene_obs index, tolerance). A joint's tolerance is a quarter of its task threshold (spec 5.2: slider
# 0.15 m, drawer 0.12 m), so a decoded state within it still tells a finished task from an unfinished one;
# a light's is the fraction of steps whose rounded bit may be wrong.
SCENE_QUANTITIES = (("slider", 0, 0.0375), ("drawer", 1, 0.03), ("lightbulb", 4, 0.1), ("led", 5, 0.1))
LIGHTS = ("lightbulb", "led")


def model_batch(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_KEYS}


def side_by_side(truth: np.ndarray, predicted: np.ndarray, frames: int = 8) -> np.ndarray:
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
        batch = model_batch(sampler.sample(i))
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


def plot_scene(path: str, scene: dict) -> None:
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


def save_png(path: str, image: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).resize(
        (image.shape[1] * 2, image.shape[0] * 2), Image.NEAREST).save(path)
