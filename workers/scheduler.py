"""Per-worker housekeeping thread: due retries, heartbeats, lost in-flight pops.

Every worker runs one:

* moves due retries from the ``scheduled`` set back onto the queue (one script
  command, so several schedulers never move a message twice; "due" is Redis's
  clock). Retries wait in Redis, not in worker memory: a worker killed or
  restarted loses none;
* writes this worker's and this process's heartbeat keys (with a TTL: liveness
  is judged by Redis, never by comparing hosts' clocks);
* once a minute, a sample of the fleet's counters for the console's chart
  (:mod:`dispatcher.store.activity`);
* returns the in-flight pops of consumers whose heartbeat key expired to the
  queue, and forgets workers whose heartbeat is gone;
* once a minute, removes the dead letters older than
  DISPATCHER_DEAD_LETTER_RETENTION_DAYS (:mod:`dispatcher.ops.retention`; default: none);
* has the reconciliation look-up's permissions checked now and then
  (:class:`workers.lookup_check.LookupChecker`, in a thread of its own), so that
  ``dispatcher status``/``health`` can say what VICIdial lacks before a job needs it;
* looks at the Redis layout's version now and then (one GET): when a newer release
  has migrated it (dispatcher/store/layout.py), this worker would misread what that
  release writes, so it stops (``layout.newer``, then Celery's warm shutdown: its
  calls in flight finish). Started again, it refuses the layout with exit 1.

Redis full, read-only, slow or away never stops the thread: a tick that fails is
tried again on the next one (the retries it did not move wait in Redis, a heartbeat
missed for longer than its TTL is written again, and the consumer registers again on
its next poll); the episode is logged once (``redis.unavailable``, see
:mod:`dispatcher.store.redis_health`).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import redis

from dispatcher.config import logs
from dispatcher.config.settings import Settings
from dispatcher.model.errors import BrokerUnavailable
from dispatcher.ops import retention
from dispatcher.store.activity import record_minute
from dispatcher.store.backend import Backend, get_backend
from dispatcher.store.layout import LAYOUT_VERSION, stored_version
from dispatcher.store.letter_index import index_some_letters
from dispatcher.store.redis_health import redis_availability
from workers.lookup_check import LookupChecker
from workers.transport import consumer_id, consumer_ttl_s

__all__ = ["RetryScheduler"]

_log = logs.get_logger("workers.scheduler")
_BATCH = 500


class RetryScheduler(threading.Thread):
    def __init__(self, settings: Settings, *, name: str) -> None:
        super().__init__(name="dispatcher-scheduler", daemon=True)
        self.settings = settings
        self.worker_name = name
        self.consumer = consumer_id()
        self.ttl = consumer_ttl_s(settings.scheduler_interval_s)
        #: How often the in-flight lists of consumers gone silent go back to the queue.
        self.reap_every_s = self.ttl / 4
        self._stop_event = threading.Event()
        self._last_reap = -1e9
        self._last_minute = -1
        self._last_error_log = -1e9
        self._last_retention = -1e9
        self._last_layout = time.monotonic()  # checked at start (workers/celery_app.py)
        self._layout_every = max(1.0, 10 * settings.scheduler_interval_s)
        self._leaving = False
        self.lookups = LookupChecker(settings, get_backend(settings))

    def stop(self) -> None:
        self._stop_event.set()

    def tick(self) -> int:
        backend = get_backend(self.settings)
        # The heartbeat first: it writes (a success says Redis takes writes again).
        backend.fleet.beat(self.worker_name, consumer=self.consumer, ttl=self.ttl)
        redis_availability().ok()
        moved = 0
        while True:
            n = backend.execution.move_due(limit=_BATCH)
            moved += n
            if n < _BATCH:
                break
        wall = time.time()
        if int(wall // 60) != self._last_minute:
            # The console's per-minute chart: one sample of the counters a minute.
            self._last_minute = int(wall // 60)
            record_minute(backend, now=wall)
        now = time.monotonic()
        if now - self._last_reap >= self.reap_every_s:
            self._last_reap = now
            returned = backend.fleet.reap(backend.redis, queue=backend.keys.queue)
            for consumer, n in returned.items():
                if n:
                    _log.warning("worker.inflight_returned", consumer=consumer, messages=n)
            backend.fleet.prune()
        self.lookups.maybe_start()
        self.expire_letters(backend, now)
        if now - self._last_layout >= self._layout_every:
            self._last_layout = now
            self.check_layout(backend)
        return moved

    def expire_letters(self, backend: Backend, now: float) -> None:
        """Once a minute: dead-letter retention (DISPATCHER_DEAD_LETTER_RETENTION_DAYS),
        and the newest letters joined to the phone index if a worker of the previous
        release wrote them (dispatcher/store/letter_index.py)."""
        if now - self._last_retention >= retention.EVERY_S:
            self._last_retention = now
            retention.expire_dead_letters(backend)
            index_some_letters(backend)

    def check_layout(self, backend: Backend) -> None:
        """Stop this worker (warm shutdown) once a newer release migrated the layout."""
        found = stored_version(backend)
        if found is None or found <= LAYOUT_VERSION or self._leaving:
            return
        self._leaving = True
        _log.error(
            "layout.newer",
            found=found,
            supported=LAYOUT_VERSION,
            worker=self.worker_name,
            action="warm shutdown: a newer release migrated Redis, this one would misread it",
        )
        os.kill(os.getpid(), signal.SIGTERM)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.tick()
            except (redis.RedisError, BrokerUnavailable) as exc:
                if not redis_availability().failed(exc, during="scheduler"):
                    self._error(exc)
            except Exception as exc:  # never die
                self._error(exc)
            self._stop_event.wait(self.settings.scheduler_interval_s)

    def _error(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:  # one line per 10 s, not per tick
            self._last_error_log = now
            _log.warning("scheduler.error", error=f"{type(exc).__name__}: {exc}")
