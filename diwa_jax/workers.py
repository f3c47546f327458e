"""Process pools whose workers never outlive the process that started them.

A worker left running after its parent was killed (``kill -9``) would keep writing into files the
rerun reads or rebuilds. Each worker asks the kernel to kill it when its parent dies (Linux
``PR_SET_PDEATHSIG``; elsewhere a thread watching the parent's pid), and exits at once if the parent
died before it could ask. Workers are spawned, not forked: the parent has JAX's threads running.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

_PR_SET_PDEATHSIG = 1


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)


def die_with_parent(parent_pid: int) -> None:
    """Called first in a spawned worker: ask to be killed when ``parent_pid`` dies (exit now if it has)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the request above
        os._exit(1)


def _die_with_parent(parent_pid: int, initializer: Callable | None, initargs: tuple) -> None:
    die_with_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)


def worker_pool(processes: int, initializer: Callable | None = None, initargs: tuple[Any, ...] = ()):
    """A spawned ``multiprocessing.Pool`` of ``processes`` workers that die with this process."""
    return multiprocessing.get_context("spawn").Pool(
        processes, initializer=_die_with_parent, initargs=(os.getpid(), initializer, initargs))
