"""Per-worker housekeeping thread: due retries, heartbeats, lost in-flight pops.

Every worker runs one:

* moves due retries from the ``scheduled`` set back onto the queue (one Lua
  script, so several schedulers never move a message twice). Retries wait in
  Redis, not in worker memory: a worker killed or restarted loses none;
* writes this worker's heartbeat (``dispatcher status``, readiness, health) and
  this process's consumer heartbeat, and once a minute a sample of the fleet's
  counters for the console's chart (:mod:`dispatcher.activity`);
* returns the in-flight pops of consumers whose heartbeat stopped (see
  workers/transport.py) to the queue.
"""

from __future__ import annotations

import threading
import time

from dispatcher import logs
from dispatcher.activity import record_minute
from dispatcher.backend import get_backend
from dispatcher.settings import Settings
from workers.transport import consumer_id, reap_inflight

__all__ = ["RetryScheduler", "consumer_stale_s"]

_log = logs.get_logger("workers.scheduler")
_BATCH = 500
_FORGET_S = 86400.0


def consumer_stale_s(settings: Settings) -> float:
    """A consumer silent this long is dead: its in-flight pops go back to the queue."""
    return max(5.0, 20 * settings.scheduler_interval_s)


class RetryScheduler(threading.Thread):
    def __init__(self, settings: Settings, *, name: str) -> None:
        super().__init__(name="dispatcher-scheduler", daemon=True)
        self.settings = settings
        self.worker_name = name
        self.consumer = consumer_id()
        self._stop_event = threading.Event()
        self._last_reap = 0.0
        self._last_minute = -1
        self._last_error_log = -1e9

    def stop(self) -> None:
        self._stop_event.set()

    def tick(self) -> int:
        backend = get_backend(self.settings)
        keys = backend.keys
        moved = 0
        while True:
            n = int(
                backend.scripts.move_due(
                    keys=[keys.scheduled, keys.queue],
                    args=[f"{time.time():.6f}", _BATCH],
                )
            )
            moved += n
            if n < _BATCH:
                break
        now = time.time()
        pipe = backend.redis.pipeline(transaction=False)
        pipe.hset(keys.workers, self.worker_name, f"{now:.3f}")
        pipe.hset(keys.consumers, self.consumer, f"{now:.3f}")
        pipe.execute()
        if int(now // 60) != self._last_minute:
            # The console's per-minute chart: one sample of the counters a minute.
            self._last_minute = int(now // 60)
            record_minute(backend, now=now)
        stale = consumer_stale_s(self.settings)
        if now - self._last_reap >= stale / 2:
            self._last_reap = now
            beats = {str(c): float(ts) for c, ts in backend.redis.hgetall(keys.consumers).items()}
            alive = {c for c, ts in beats.items() if now - ts < stale}
            forgotten = [c for c, ts in beats.items() if now - ts > _FORGET_S]
            if forgotten:
                backend.redis.hdel(keys.consumers, *forgotten)
            reap_inflight(backend.redis, queue=keys.queue, alive=alive)
        return moved

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.tick()
            except Exception as exc:  # Redis down: keep trying, never die
                now = time.monotonic()
                if now - self._last_error_log >= 10.0:  # one line per 10 s, not per tick
                    self._last_error_log = now
                    _log.warning("scheduler.error", error=f"{type(exc).__name__}: {exc}")
            self._stop_event.wait(self.settings.scheduler_interval_s)
