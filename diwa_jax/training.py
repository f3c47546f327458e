"""The resumable loop around a jitted update: the one Python loop every training stage uses.

    state, metrics = update(state, batch_fn(step))

The state is a ``flax.struct`` dataclass with an integer ``step`` field; each of its fields is a
named checkpoint item, so later stages can restore only ``params``. The loop restores the latest
checkpoint if there is one, so rerunning a killed command continues where it stopped, and because
``batch_fn`` is a pure function of the step and every key lives in the state, the resumed run ends
with the same numbers as an uninterrupted one. It logs the mean of the metrics over each log
interval (fetched once per interval), stops with a clear error on non-finite metrics without
checkpointing them, and saves every ``ckpt_every`` steps and at the end.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from diwa_jax.checkpoint import Checkpointer
from diwa_jax.errors import TrainingDiverged
from diwa_jax.logging import MetricLogger, progress


def state_items(state: Any) -> dict[str, Any]:
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}


def restore_state(checkpointer: Checkpointer, state: Any, step: int | None = None) -> Any:
    """``state`` with every field replaced by the checkpoint's (``state`` gives the structure)."""
    return state.replace(**checkpointer.restore(state_items(state), step=step))


def run_loop(
    *,
    name: str,
    state: Any,
    update: Callable[[Any, Any], tuple[Any, dict]],
    batch_fn: Callable[[int], Any],
    num_steps: int,
    checkpointer: Checkpointer,
    logger: MetricLogger | None = None,
    log_every: int = 100,
    ckpt_every: int = 1000,
    on_log: Callable[[int, Any, dict], None] | None = None,
    show_progress: bool = True,
) -> Any:
    """Run ``update`` until ``state.step == num_steps``, resuming from the latest checkpoint."""
    if checkpointer.latest_step() is not None:
        state = restore_state(checkpointer, state)
    start = int(state.step)
    acc, count = None, 0
    for step in progress(range(start, num_steps), total=num_steps, initial=start, desc=name,
                         enabled=show_progress):
        state, metrics = update(state, batch_fn(step))
        acc = metrics if acc is None else jax.tree.map(lambda a, m: a + m, acc, metrics)
        count += 1
        done = step + 1
        if done % log_every == 0 or done == num_steps:
            mean = {k: float(v) / count for k, v in jax.device_get(acc).items()}
            bad = [k for k, v in mean.items() if not np.isfinite(v)]
            if bad:
                raise TrainingDiverged(
                    f"{name}: non-finite {', '.join(bad)} at step {done}; the last good checkpoint "
                    f"(step {checkpointer.latest_step()}) is kept in {checkpointer.directory}. "
                    "Lower the learning rate or check the data, then rerun.")
            if logger is not None:
                logger.scalars(done, mean, prefix=f"{name}/")
            if on_log is not None:
                on_log(done, state, mean)
            acc, count = None, 0
        if done % ckpt_every == 0 or done == num_steps:
            checkpointer.save(done, state_items(state))
    checkpointer.wait()
    return state
