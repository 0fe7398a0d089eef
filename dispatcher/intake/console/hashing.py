"""The small pool that console password checks (Argon2) run on, apart from everything else.

An Argon2id check costs about a third of a second of CPU and 64 MiB, and
argon2-cffi runs its lanes on threads of their own (4 with the default parameters).
Run on the event loop's default thread pool, a flood of logins took the threads
and the cores the intake's ``POST /v1/leads`` needs. Here:

* at most :data:`THREADS` checks run at once, on threads of this pool only;
* at most :data:`WAITING` more wait for a thread; past that a login is refused at
  once (:class:`HashingBusy`, a 503 page) without being checked;
* on Linux each pool thread lowers its own scheduling priority (nice
  :data:`NICENESS`; threads argon2 starts inherit it), so the kernel gives the
  intake's threads the CPU first whenever both want it.

Waiting for a check holds no thread: the handler awaits the pool's future.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["NICENESS", "THREADS", "WAITING", "HashingBusy", "HashingPool"]

#: Password checks at once, and how many more may wait for a thread.
THREADS = 1
WAITING = 16
#: How much lower than the rest of the process the pool's threads run (Linux).
NICENESS = 10

T = TypeVar("T")


class HashingBusy(Exception):
    """Too many password checks are waiting already: try again in a moment."""


def _lower_priority() -> None:
    # On Linux, PRIO_PROCESS with a thread id sets that thread's nice value alone.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)


class HashingPool:
    """A bounded pool for password hashing (see the module docstring)."""

    def __init__(self, *, threads: int = THREADS, waiting: int = WAITING) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="console-argon2", initializer=_lower_priority
        )
        self._limit = threads + waiting
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Checks running or waiting now."""
        return self._pending

    async def run(self, func: Callable[..., T], *args: object) -> T:
        """``func(*args)`` on the pool; HashingBusy at once if the pool is full."""
        with self._lock:
            if self._pending >= self._limit:
                raise HashingBusy
            self._pending += 1
        try:
            return await asyncio.wrap_future(self._executor.submit(func, *args))
        finally:
            with self._lock:
                self._pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
