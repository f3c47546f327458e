"""``SimulatorBatch``: E simulators stepped in lockstep, in this process or spread over worker processes.

One call of :meth:`SimulatorBatch.run` gives every simulator one command, :class:`Reset` (restore a start
state) or :class:`Steps` (execute a list of actions, stopping early when the task's oracle success appears),
and returns each simulator's observations. The workers run their simulators' commands in parallel (each
worker owns ``E / workers`` simulators and runs them one after another), so the parent waits once per
call, not once per step. Observations pass through ``transform`` where they are made (in the worker), so
only what the caller needs crosses the process boundary.

Each simulator remembers the scene of its last reset; ``Steps`` judges success as the oracle does in
evaluation: the task's predicate between that start scene and the scene after each step.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import traceback
from typing import Any, Callable, Sequence

import numpy as np

from diwa_jax.envs import tasks
from diwa_jax.workers import die_with_parent


@dataclasses.dataclass(frozen=True)
class Reset:
    """Restore ``robot_obs (15,)`` and ``scene_obs (24,)``; the result holds the first observation."""

    robot_obs: np.ndarray
    scene_obs: np.ndarray


@dataclasses.dataclass(frozen=True)
class Steps:
    """Execute ``actions (n, 7)`` (gripper already +-1) until one reaches the oracle success of task
    ``task`` (a registered task's name; None: never stop early)."""

    actions: np.ndarray
    task: str | None = None


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one command did: the transformed observations (one per reset or executed step) and, for
    ``Steps``, whether its last step reached the task's success."""

    observations: list
    success: bool = False


class _Slot:
    """One simulator and the scene of its last reset."""

    def __init__(self, env, transform: Callable | None):
        self.env, self.transform, self.start_scene = env, transform, None

    def _out(self, obs: dict):
        return obs if self.transform is None else self.transform(obs)

    def run(self, command) -> Outcome | None:
        if command is None:
            return None
        if isinstance(command, Reset):
            obs = self.env.reset(robot_obs=command.robot_obs, scene_obs=command.scene_obs)
            self.start_scene = np.asarray(obs["scene_obs"], np.float64)
            return Outcome([self._out(obs)])
        if self.start_scene is None:
            raise RuntimeError("SimulatorBatch: Steps before the simulator's first Reset")
        observations = []
        for action in np.asarray(command.actions, np.float64):
            obs, _ = self.env.step(action)
            observations.append(self._out(obs))
            if command.task is not None and tasks.success(command.task, self.start_scene, obs["scene_obs"]):
                return Outcome(observations, True)
        return Outcome(observations, False)


def _worker_main(connection, parent_pid: int, make_env: Callable, count: int, transform: Callable | None,
                 task_modules: tuple[str, ...]) -> None:
    """A worker's loop: build ``count`` simulators, then answer each list of commands with their outcomes."""
    die_with_parent(parent_pid)
    slots = []
    try:
        tasks.import_modules(task_modules)  # the tasks its parent registered outside diwa_jax
        slots = [_Slot(make_env(), transform) for _ in range(count)]
        connection.send(("ready", None))
        while True:
            commands = connection.recv()
            if commands is None:
                break
            try:
                connection.send(("ok", [slot.run(c) for slot, c in zip(slots, commands)]))
            except Exception:  # noqa: BLE001 - reported to the parent, which raises it
                connection.send(("error", traceback.format_exc()))
    except Exception:  # noqa: BLE001
        connection.send(("error", traceback.format_exc()))
    finally:
        for slot in slots:
            slot.env.close()
        connection.close()


class SimulatorBatch:
    """E simulators in lockstep. ``SimulatorBatch.local(envs)`` steps the given simulators in this process
    (``close`` closes them only if ``owned``); ``SimulatorBatch.spawn(make_env, E, workers)`` builds them in
    ``workers`` spawned processes that die with this one (``close`` ends them)."""

    def __init__(self, num_envs: int, slots: list[_Slot] | None = None, workers: list | None = None,
                 shares: list[int] | None = None, owned: bool = False):
        self.num_envs = num_envs
        self._slots, self._workers, self._shares, self._owned = slots, workers, shares, owned

    @classmethod
    def local(cls, envs: Sequence, transform: Callable | None = None, owned: bool = False) -> "SimulatorBatch":
        """``owned``: ``close`` closes the simulators."""
        return cls(len(envs), slots=[_Slot(env, transform) for env in envs], owned=owned)

    @classmethod
    def spawn(cls, make_env: Callable, num_envs: int, workers: int,
              transform: Callable | None = None) -> "SimulatorBatch":
        """``make_env`` and ``transform`` must pickle (module-level functions, ``functools.partial`` of them)."""
        if not 1 <= workers <= num_envs:
            raise ValueError(f"SimulatorBatch: need 1 <= workers <= num_envs, got workers={workers}, num_envs={num_envs}")
        shares = [num_envs // workers + (i < num_envs % workers) for i in range(workers)]
        context = multiprocessing.get_context("spawn")
        started = []
        try:
            for share in shares:
                parent_end, child_end = context.Pipe()
                process = context.Process(target=_worker_main, daemon=True,
                                          args=(child_end, os.getpid(), make_env, share, transform, tasks.modules()))
                process.start()
                child_end.close()
                started.append((process, parent_end))
            for _, connection in started:
                _receive(connection)
        except BaseException:
            _stop(started)
            raise
        return cls(num_envs, workers=started, shares=shares)

    def run(self, commands: Sequence) -> list[Outcome | None]:
        """One command (or None: leave it alone) per simulator, in order; their outcomes, in order."""
        if len(commands) != self.num_envs:
            raise ValueError(f"SimulatorBatch.run: {len(commands)} commands for {self.num_envs} simulators")
        if self._slots is not None:
            return [slot.run(c) for slot, c in zip(self._slots, commands)]
        sent, begin = [], 0
        for (_, connection), share in zip(self._workers, self._shares):
            try:
                connection.send(list(commands[begin:begin + share]))
                sent.append(True)
            except (BrokenPipeError, OSError):
                sent.append(False)
            begin += share
        # every worker that got its commands answers before an error is raised
        parts = [_receive_any(connection) if ok else ("error", _DIED)
                 for (_, connection), ok in zip(self._workers, sent)]
        for status, payload in parts:
            if status != "ok":
                raise RuntimeError(f"SimulatorBatch: a simulator worker failed:\n{payload}")
        return [outcome for _, payload in parts for outcome in payload]

    def close(self) -> None:
        if self._owned:
            for slot in self._slots:
                slot.env.close()
            self._owned = False
        if self._workers is not None:
            _stop(self._workers)
            self._workers = []


_DIED = "the worker process died (killed, or out of memory)"


def _receive_any(connection) -> tuple[str, Any]:
    try:
        return connection.recv()
    except EOFError:
        return "error", _DIED


def _receive(connection) -> Any:
    status, payload = _receive_any(connection)
    if status != "ready":
        raise RuntimeError(f"SimulatorBatch: a simulator worker failed to start:\n{payload}")
    return payload


def _stop(workers: list) -> None:
    for process, connection in workers:
        try:
            connection.send(None)
        except (BrokenPipeError, OSError):
            pass
    for process, connection in workers:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()
        connection.close()
