"""The ``featurize`` stage: the trained RSSM as a filter over every frame of both splits.

Segments are dealt to ``featurize.batch_streams`` parallel streams (whole segments, so the filter's
state runs on uninterrupted within each); the streams advance in time chunks through one jitted
``observe``, carrying the latent between chunks. Per frame we store the posterior's ``deter`` (float32)
and its categorical sample as class indices (uint8), memory-mapped and aligned with the cache rows.
After every chunk the carried latent and the chunk index are saved (after flushing the arrays), so a
killed run resumes at the next chunk without redoing finished ones.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from diwa_jax.config import stage_key
from diwa_jax.data.batching import model_inputs
from diwa_jax.data.preprocess import Cache
from diwa_jax.logging import progress
from diwa_jax.pipeline import stage_dir
from diwa_jax.types import Latent
from diwa_jax.world_model import model
from diwa_jax.world_model.stage import SPLITS, ensure_cache, load_world_model

PROGRESS = "progress.npz"
COMPLETE = "complete.json"


@dataclasses.dataclass(frozen=True)
class Features:
    """Per-frame latents of one split, aligned with its cache rows."""

    deter: np.ndarray  # (N, D) float32
    stoch: np.ndarray  # (N, S) uint8 class indices
    classes: int

    def __len__(self) -> int:
        return len(self.deter)

    def latent(self, rows: np.ndarray) -> Latent:
        rows = np.asarray(rows)
        onehot = np.eye(self.classes, dtype=np.float32)[np.asarray(self.stoch[rows])]
        return Latent(deter=np.asarray(self.deter[rows]), stoch=onehot)

    def feature(self, rows: np.ndarray) -> np.ndarray:
        """``(..., D + S*C)`` float32: [deter, flattened one-hot stoch], as ``Latent.feature``."""
        latent = self.latent(rows)
        return np.concatenate([latent.deter, latent.stoch.reshape(*latent.stoch.shape[:-2], -1)], axis=-1)


def _split_dir(config, split: str) -> Path:
    return Path(stage_dir(config, "featurize")) / split


def load_features(config, split: str) -> Features:
    path = _split_dir(config, split)
    if not (path / COMPLETE).exists():
        raise FileNotFoundError(f"{path}: no complete features; run the 'featurize' stage first")
    return Features(np.load(path / "deter.npy", mmap_mode="r"), np.load(path / "stoch.npy", mmap_mode="r"),
                    json.loads((path / COMPLETE).read_text())["classes"])


def stream_rows(segments: np.ndarray, n_streams: int) -> np.ndarray:
    """(B, L) cache rows: whole segments dealt to the least-loaded stream, longest first; -1 pads."""
    lengths = segments[:, 1] - segments[:, 0] + 1
    streams: list[list[int]] = [[] for _ in range(min(n_streams, len(segments)))]
    for i in np.argsort(-lengths, kind="stable"):
        target = min(range(len(streams)), key=lambda s: len(streams[s]))
        streams[target].extend(range(segments[i, 0], segments[i, 1] + 1))
    width = max(len(s) for s in streams)
    return np.array([s + [-1] * (width - len(s)) for s in streams], np.int64)


def featurize_split(config, spec, params, cache: Cache, split: str, key: jax.Array) -> None:
    out = _split_dir(config, split)
    if (out / COMPLETE).exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    rows = stream_rows(cache.segments, config.featurize.batch_streams)
    chunk = max(1, config.featurize.chunk_frames // len(rows))
    n_chunks = -(-rows.shape[1] // chunk)
    rows = np.pad(rows, ((0, 0), (0, n_chunks * chunk - rows.shape[1])), constant_values=-1)
    if spec.classes > 256:
        raise ValueError(f"config.wm.classes={spec.classes}: featurize stores class indices as uint8 (<= 256)")

    def open_array(name, shape, dtype):
        path = out / name
        mode = "r+" if path.exists() else "w+"
        return np.lib.format.open_memmap(path, mode=mode, dtype=dtype, shape=shape)

    deter = open_array("deter.npy", (len(cache), spec.deter), np.float32)
    stoch = open_array("stoch.npy", (len(cache), spec.stoch), np.uint8)
    carry, first = model.initial_latent(len(rows), spec), 0
    if (out / PROGRESS).exists():
        with np.load(out / PROGRESS) as saved:
            carry, first = Latent(jnp.asarray(saved["deter"]), jnp.asarray(saved["stoch"])), int(saved["next_chunk"])

    @jax.jit
    def filter_chunk(carry, batch, key):
        post, _, _ = model.observe(params, spec, batch, batch["prev_action"], batch["reset"], carry, key)
        last = jax.tree.map(lambda x: x[:, -1], post)
        return last, post.deter, jnp.argmax(post.stoch, axis=-1).astype(jnp.uint8)

    for c in progress(range(first, n_chunks), total=n_chunks, initial=first, desc=f"featurize {split}",
                      enabled=config.log.progress):
        block = rows[:, c * chunk:(c + 1) * chunk]
        valid = block >= 0
        batch = model_inputs(cache, np.where(valid, block, 0))
        batch = {k: batch[k] for k in (*spec.obs_keys, "prev_action", "reset")}
        carry, d, s = filter_chunk(carry, batch, jax.random.fold_in(key, c))
        deter[block[valid]] = np.asarray(d)[valid]
        stoch[block[valid]] = np.asarray(s)[valid]
        deter.flush()
        stoch.flush()
        tmp = out / (PROGRESS + ".tmp.npz")
        np.savez(tmp, deter=np.asarray(carry.deter), stoch=np.asarray(carry.stoch), next_chunk=c + 1)
        os.replace(tmp, out / PROGRESS)
    (out / COMPLETE).write_text(json.dumps({"frames": len(cache), "classes": spec.classes, "chunks": n_chunks}))


def featurize(config) -> dict:
    """Stage runner."""
    caches = ensure_cache(config)
    spec, params = load_world_model(config)
    key = stage_key(config, "featurize")
    for i, split in enumerate(SPLITS):
        featurize_split(config, spec, params, caches[split], split, jax.random.fold_in(key, i))
    return {split: {"frames": len(caches[split])} for split in SPLITS}
