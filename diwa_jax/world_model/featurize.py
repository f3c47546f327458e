"""Per-frame latents of a data set: the trained RSSM as a filter over every frame (the ``featurize`` stage).

Segments are dealt to ``featurize.batch_streams`` parallel streams (whole segments, so the filter's
state runs on uninterrupted within each); the streams advance in time chunks through one jitted
``observe``, carrying the latent between chunks. Per frame we store the posterior's ``deter`` (float32)
and its categorical sample as class indices (uint8), memory-mapped and aligned with the cache rows.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diwa_jax.types import Latent
from diwa_jax.world_model import model


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


def stream_rows(segments: np.ndarray, n_streams: int) -> np.ndarray:
    """(B, L) cache rows: whole segments dealt to the least-loaded stream, longest first; -1 pads."""
    lengths = segments[:, 1] - segments[:, 0] + 1
    streams: list[list[int]] = [[] for _ in range(min(n_streams, len(segments)))]
    for i in np.argsort(-lengths, kind="stable"):
        target = min(range(len(streams)), key=lambda s: len(streams[s]))
        streams[target].extend(range(segments[i, 0], segments[i, 1] + 1))
    width = max(len(s) for s in streams)
    return np.array([s + [-1] * (width - len(s)) for s in streams], np.int64)


def make_chunk_filter(params: dict, spec: model.WorldModelSpec):
    """``filter_chunk(carry, batch, key) -> (last latent, deter (B, T, D), class indices (B, T, S) uint8)``: the
    posterior over a time chunk of ``B`` streams from the carried latent, jitted."""
    @jax.jit
    def filter_chunk(carry, batch, key):
        post, _, _ = model.observe(params, spec, batch, batch["prev_action"], batch["reset"], carry, key)
        last = jax.tree.map(lambda x: x[:, -1], post)
        return last, post.deter, jnp.argmax(post.stoch, axis=-1).astype(jnp.uint8)

    return filter_chunk
