"""Moves due retries from the ``scheduled`` set back onto the queue; heartbeats.

Every worker runs one; the move is one Lua script, so several schedulers never
move a message twice. Retries wait in Redis, not in worker memory: a worker
killed or restarted loses none of them.
"""

from __future__ import annotations

import threading
import time

from dispatcher import logs
from dispatcher.backend import get_backend
from dispatcher.settings import Settings

__all__ = ["RetryScheduler"]

_log = logs.get_logger("workers.scheduler")
_BATCH = 500


class RetryScheduler(threading.Thread):
    def __init__(self, settings: Settings, *, name: str) -> None:
        super().__init__(name="dispatcher-scheduler", daemon=True)
        self.settings = settings
        self.worker_name = name
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def tick(self) -> int:
        backend = get_backend(self.settings)
        moved = 0
        while True:
            n = int(
                backend.scripts.move_due(
                    keys=[backend.keys.scheduled, backend.keys.queue],
                    args=[f"{time.time():.6f}", _BATCH],
                )
            )
            moved += n
            if n < _BATCH:
                break
        backend.redis.hset(backend.keys.workers, self.worker_name, f"{time.time():.3f}")
        return moved

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.tick()
            except Exception as exc:  # Redis down: keep trying, never die
                _log.warning("scheduler.error", error=f"{type(exc).__name__}: {exc}")
            self._stop_event.wait(self.settings.scheduler_interval_s)
