"""The resumable loop around a jitted update: the one Python loop every training stage uses.

    state, metrics = update(state, batch_fn(step))

The state is a ``flax.struct`` dataclass with an integer ``step`` field; each of its fields is a
named checkpoint item, so later stages can restore only ``params``. The loop restores the latest
checkpoint if there is one, so rerunning a killed command continues where it stopped, and because
``batch_fn`` is a pure function of the step and every key lives in the state, the resumed run ends
with the same numbers as an uninterrupted one. It logs the mean of the metrics over each log
interval (fetched once per interval) and saves every ``ckpt_every`` steps and at the end.

A non-finite value never reaches a checkpoint: every step folds "are the metrics finite" into an
on-device flag (no host transfer), and before each log and each save the flag, and before each save
the state itself, is checked; on the first non-finite value the loop stops with ``TrainingDiverged``
naming the last (finite) checkpoint. A resumed run drops the metrics lines logged after the
checkpoint it resumes from, so ``metrics.jsonl`` holds each step once.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from diwa_jax.checkpoint import Checkpointer
from diwa_jax.errors import TrainingDiverged
from diwa_jax.logging import MetricLogger, progress


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


@jax.jit
def _first_bad_step(first_bad: jax.Array, done: int, metrics: dict) -> jax.Array:
    """The first step (counted from 1) whose metrics held a non-finite value (-1: none yet); stays on device."""
    return jnp.where((first_bad < 0) & ~_all_finite(metrics), done, first_bad)


_state_finite = jax.jit(_all_finite)


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
        if not bool(_state_finite(state)):
            raise TrainingDiverged(
                f"{name}: the checkpoint of step {checkpointer.latest_step()} in {checkpointer.directory} holds "
                "non-finite values; delete that folder to retrain", None)
    start = int(state.step)
    if logger is not None:
        logger.drop_after(start)
    acc, count = None, 0
    first_bad = jnp.int32(-1)

    def stop_if_diverged(done: int, what: str) -> None:
        bad = int(first_bad)
        if bad < 0 and what == "state" and not bool(_state_finite(state)):
            bad = done
        if bad >= 0:
            if what == "metrics" and acc is not None:
                what = ", ".join(k for k, v in jax.device_get(acc).items() if not np.all(np.isfinite(v))) or what
            checkpointer.wait()
            last = checkpointer.latest_step()
            kept = (f"the last finite checkpoint (step {last}) is kept in {checkpointer.directory}" if last is not None
                    else f"no checkpoint was saved in {checkpointer.directory}")
            raise TrainingDiverged(
                f"{name}: non-finite {what} at step {bad}; {kept}. Lower the "
                "learning rate or check the data, then rerun (the run resumes from that checkpoint)", last)

    for step in progress(range(start, num_steps), total=num_steps, initial=start, desc=name,
                         enabled=show_progress):
        state, metrics = update(state, batch_fn(step))
        done = step + 1
        first_bad = _first_bad_step(first_bad, done, metrics)
        acc = metrics if acc is None else jax.tree.map(lambda a, m: a + m, acc, metrics)
        count += 1
        if done % log_every == 0 or done == num_steps:
            stop_if_diverged(done, "metrics")
            mean = {k: float(v) / count for k, v in jax.device_get(acc).items()}
            if logger is not None:
                logger.scalars(done, mean, prefix=f"{name}/")
            if on_log is not None:
                on_log(done, state, mean)
            acc, count = None, 0
        if done % ckpt_every == 0 or done == num_steps:
            stop_if_diverged(done, "metrics")
            stop_if_diverged(done, "state")
            checkpointer.save(done, state_items(state))
    checkpointer.wait()
    return state
