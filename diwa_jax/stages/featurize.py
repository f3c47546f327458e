"""The ``featurize`` stage: the trained RSSM as a filter over every frame of both splits (``world_model/featurize.py``).

After every chunk the carried latent and the chunk index are saved (after flushing the arrays), so a killed run
resumes at the next chunk without redoing finished ones.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diwa_jax import artifacts
from diwa_jax.atomic import atomic_write
from diwa_jax.config import stage_key
from diwa_jax.data.batching import model_inputs
from diwa_jax.data.preprocess import Cache
from diwa_jax.logging import progress
from diwa_jax.types import Latent
from diwa_jax.world_model import model
from diwa_jax.world_model.featurize import make_chunk_filter, stream_rows

PROGRESS = "progress.npz"


def featurize_split(config, spec, params, cache: Cache, split: str, key: jax.Array) -> None:
    out = artifacts.features_dir(config, split)
    if artifacts.is_done(out):
        return
    out.mkdir(parents=True, exist_ok=True)
    rows = stream_rows(cache.segments, config.featurize.batch_streams)
    chunk = max(1, config.featurize.chunk_frames // len(rows))
    n_chunks = -(-rows.shape[1] // chunk)
    rows = np.pad(rows, ((0, 0), (0, n_chunks * chunk - rows.shape[1])), constant_values=-1)

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

    filter_chunk = make_chunk_filter(params, spec)

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
        atomic_write(out / PROGRESS, lambda f: np.savez(f, deter=np.asarray(carry.deter), stoch=np.asarray(carry.stoch),
                                                        next_chunk=c + 1))
    artifacts.mark_done(out, {"frames": len(cache), "classes": spec.classes, "chunks": n_chunks})


def featurize(config) -> dict:
    """Stage runner."""
    caches = artifacts.caches(config)
    world_model = artifacts.load_world_model(config)
    key = stage_key(config, "featurize")
    for i, split in enumerate(artifacts.SPLITS):
        featurize_split(config, world_model.spec, world_model.params, caches[split], split, jax.random.fold_in(key, i))
    return {split: {"frames": len(caches[split])} for split in artifacts.SPLITS}
