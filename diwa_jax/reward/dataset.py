"""The reward classifier's examples from annotated windows: oracle labels, window actions, validation sets."""
from __future__ import annotations

import numpy as np

from diwa_jax.data.preprocess import Cache
from diwa_jax.envs import tasks
from diwa_jax.reward.train import evaluate_classifier


def window_labels(scene_obs: np.ndarray, windows: np.ndarray, task: str) -> list[np.ndarray]:
    """Per window ``(L,)`` bool: the oracle on (the window's first scene, each frame's scene)."""
    return [tasks.success(task, scene_obs[start], scene_obs[start:end + 1])
            for start, end in windows]


def window_actions(rel_actions: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """``(W, T, 7)`` float32 with T = (longest window) - 1: window w's actions rows start..end-1 (the action
    at row r leads to row r + 1), zero-padded after them."""
    lengths = windows[:, 1] - windows[:, 0]
    actions = np.zeros((len(windows), max(int(lengths.max()), 1), rel_actions.shape[-1]), np.float32)
    for w, (start, end) in enumerate(windows):
        actions[w, :end - start] = rel_actions[start:end]
    return actions


def validation_set(windows: np.ndarray, cache: Cache, features, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Real latents (``features.feature(rows)``) and labels of every frame of every window, unbalanced."""
    rows = np.concatenate([np.arange(start, end + 1) for start, end in windows] or [np.zeros(0, np.int64)])
    labels = np.concatenate(window_labels(cache.scene_obs, windows, task) or [np.zeros(0, bool)]).astype(np.int32)
    return features.feature(rows), labels


def validation_metrics(params: dict, val_features: np.ndarray, val_labels: np.ndarray) -> dict:
    """Precision, recall and accuracy on the validation set; None when it is empty."""
    if len(val_labels) == 0:
        return {"precision": None, "recall": None, "accuracy": None}
    return evaluate_classifier(params, val_features, val_labels)
