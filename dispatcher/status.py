"""The fleet at a glance: queue depth, waiting retries, dead letters, workers, pauses.

One pipeline of cheap commands (LLEN, ZCARD, HGETALL): safe to call from a
monitoring loop.
"""

from __future__ import annotations

import time
from typing import Any

from dispatcher.backend import Backend
from dispatcher.connection import broker_errors
from dispatcher.deadletter import DeadLetterStore
from dispatcher.jobs import iso

__all__ = ["WORKER_STALE_S", "fleet_status"]

#: A worker whose heartbeat is older than this is not counted as alive.
WORKER_STALE_S = 30.0


def _number(value: str) -> int | float:
    """Counters are integers; latency_sum_ms is a float (HINCRBYFLOAT)."""
    try:
        return int(value)
    except ValueError:
        return round(float(value), 3)


def fleet_status(backend: Backend, *, now: float | None = None) -> dict[str, Any]:
    """What `dispatcher status --json` prints."""
    now = time.time() if now is None else now
    keys = backend.keys
    store = DeadLetterStore(backend)
    with broker_errors(backend.settings):
        pipe = backend.redis.pipeline(transaction=False)
        pipe.llen(keys.queue)
        pipe.zcard(keys.scheduled)
        pipe.hgetall(keys.workers)
        pipe.hgetall(keys.stats)
        queued, retrying, beats, stats = pipe.execute()
        pauses: dict[str, Any] = {}
        for key in backend.redis.scan_iter(match=keys.pause("*"), count=1000):
            data = backend.redis.hgetall(key)
            until = float(data.get("until") or 0)
            if until <= now:
                continue
            server = str(key)[len(keys.pause("")) :]
            pauses[server] = {
                "reason": data.get("reason"),
                "kind": data.get("kind"),
                "since": iso(float(data["since"])) if data.get("since") else None,
                "until": iso(until),
                "remaining_s": round(until - now, 1),
            }
    oldest = store.oldest()
    workers = sorted(name for name, ts in beats.items() if now - float(ts) <= WORKER_STALE_S)
    return {
        "queued": int(queued),
        "retrying": int(retrying),
        "dead_letters": store.counts(),
        "oldest_dead_letter_age_s": None if oldest is None else round(now - oldest, 1),
        "workers": workers,
        "paused": pauses,
        "totals": {k: _number(v) for k, v in sorted(stats.items())},
    }
