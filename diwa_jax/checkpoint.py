"""Orbax checkpoints: atomic saves, keep-N, resume from the latest, partial restore.

A checkpoint is a set of named items (``{"params": ..., "opt_state": ..., "loop": ...}``), each a
pytree, plus the resolved config as JSON. Restoring names the items it wants, so a later stage can
load only the world model's ``params`` of a world-model checkpoint. Typed PRNG keys are stored as
their key data and rebuilt from the target's key type on restore.

Orbax writes each step into a temporary folder and renames it when complete, so a run killed during
a save leaves the previous checkpoint intact. Saves run asynchronously; ``Checkpointer`` is a
context manager that waits for them on normal exit and on exceptions.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from diwa_jax.errors import CheckpointError

CONFIG_ITEM = "config"


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract(tree: Any) -> Any:
    """Abstract restore target (shapes/dtypes), typed keys replaced by their key-data layout."""
    def leaf(x):
        if _is_key(x):
            data = jax.eval_shape(jax.random.key_data, x)
            return jax.ShapeDtypeStruct(data.shape, data.dtype)
        if isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)):
            return jax.ShapeDtypeStruct(x.shape, x.dtype)
        return x
    return jax.tree.map(leaf, tree)


def _data_to_keys(restored: Any, target: Any) -> Any:
    def leaf(r, t):
        if _is_key(t):
            return jax.random.wrap_key_data(r, impl=jax.random.key_impl(t))
        return r
    return jax.tree.map(leaf, restored, target)


class Checkpointer:
    """Named-item checkpoints in ``directory`` (one sub-folder per step)."""

    def __init__(self, directory: str, *, max_to_keep: int | None = 3, config: Mapping | None = None,
                 async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self._config = None if config is None else json.loads(json.dumps(dict(config), default=_json_default))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    # -- context manager: never lose an in-flight async save ------------------------------------
    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    # -- queries --------------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    # -- save / restore -------------------------------------------------------------------------
    def save(self, step: int, items: Mapping[str, Any], *, force: bool = False) -> bool:
        if CONFIG_ITEM in items:
            raise CheckpointError(f"item name {CONFIG_ITEM!r} is reserved for the resolved config")
        # each item is wrapped in a dict: orbax's standard handler refuses a bare array (a step counter)
        args = {name: ocp.args.StandardSave({"value": _keys_to_data(tree)}) for name, tree in items.items()}
        if self._config is not None:
            args[CONFIG_ITEM] = ocp.args.JsonSave(self._config)
        return self._manager.save(int(step), args=ocp.args.Composite(**args), force=force)

    def restore(self, targets: Mapping[str, Any], step: int | None = None) -> dict[str, Any]:
        """Restore the items named in ``targets`` (pytrees or abstract pytrees giving structure,
        shapes and dtypes). Items not named are not read: that is the partial restore."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}: run the stage that writes it first")
        args = {name: ocp.args.StandardRestore({"value": _abstract(t)}) for name, t in targets.items()}
        try:
            restored = self._manager.restore(int(step), args=ocp.args.Composite(**args))
            restored = {name: restored[name]["value"] for name in targets}
        except (ValueError, KeyError, FileNotFoundError) as e:
            # a field added later as None (no data) is absent from older checkpoints: match leaves by path
            restored = self._restore_by_path(step, targets, e)
        return {name: _data_to_keys(restored[name], t) for name, t in targets.items()}

    def _restore_by_path(self, step: int, targets: Mapping[str, Any], cause: Exception) -> dict[str, Any]:
        """Restore without a target and rebuild each target from its leaves' paths. Refused unless the
        stored arrays and the target's arrays are the same set of paths with the same shapes."""
        def refuse(why: str) -> CheckpointError:
            return CheckpointError(
                f"cannot restore items {sorted(targets)} of step {step} from {self.directory}: {why}. "
                "The checkpoint was written by a different config or code version; use a new --workdir "
                "or delete this folder to retrain.")
        try:
            raw = self._manager.restore(int(step), args=ocp.args.Composite(
                **{name: ocp.args.StandardRestore() for name in targets}))
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise refuse(str(e)) from e
        out = {}
        for name, target in targets.items():
            stored = dict(jax.tree_util.tree_flatten_with_path(raw[name]["value"])[0])
            stored = {_path_key(p): v for p, v in stored.items()}
            wanted, treedef = jax.tree_util.tree_flatten_with_path(_abstract(target))
            leaves = []
            for path, like in wanted:
                value = stored.pop(_path_key(path), None)
                if value is None or getattr(value, "shape", None) != getattr(like, "shape", None):
                    raise refuse(str(cause)) from cause
                leaves.append(value)
            if stored:
                raise refuse(f"stored {sorted(stored)} not in the target") from cause
            out[name] = jax.tree.unflatten(treedef, leaves)
        return out

    def restore_config(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        return self._manager.restore(int(step), args=ocp.args.Composite(
            **{CONFIG_ITEM: ocp.args.JsonRestore()}))[CONFIG_ITEM]


def _path_key(path: tuple) -> tuple[str, ...]:
    """A leaf's path as strings, the same for a dataclass field, a dict key and a sequence index."""
    def part(k):
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)
    return tuple(part(k) for k in path)


def _json_default(x: Any) -> Any:
    if isinstance(x, (tuple, set)):
        return list(x)
    if isinstance(x, np.generic):
        return x.item()
    if hasattr(x, "to_dict"):
        return x.to_dict()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
