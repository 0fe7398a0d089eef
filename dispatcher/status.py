"""The fleet at a glance: queue depth, waiting retries, dead letters, workers, pauses.

One pipeline of cheap commands, whatever the keyspace holds: no SCAN, no KEYS
(pauses are kept in a set, live workers are keys with a TTL). Safe to call from
a monitoring loop and from every container's health check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis

from dispatcher.backend import Backend
from dispatcher.connection import broker_errors
from dispatcher.errors import all_reasons
from dispatcher.jobs import iso

__all__ = ["FleetReading", "fleet_status", "read_fleet"]


def _number(value: str) -> int | float:
    """Counters are integers; latency_sum_ms is a float (HINCRBYFLOAT)."""
    try:
        return int(value)
    except ValueError:
        return round(float(value), 3)


@dataclass(frozen=True)
class FleetReading:
    """What one read of the fleet's state found."""

    queued: int
    retrying: int
    stats: dict[str, str]
    #: epoch of the oldest dead letter's last failure, None when the store is empty
    oldest: float | None
    workers: list[str]
    #: Redis's clock at the read (pauses are kept in it)
    redis_now: float
    pauses: dict[str, dict[str, str]]
    dead_letters: dict[str, int]
    memory_used: int | None = None
    memory_max: int | None = None
    #: what the last look-up or check of each server's Non-Agent API found
    lookups: dict[str, dict[str, str]] = field(default_factory=dict)


def read_fleet(backend: Backend, *, memory: bool = False) -> FleetReading:
    """Everything `status` and `/metrics` show, in one pipelined round trip.

    ``memory``: also Redis's memory use (INFO memory). Raises BrokerUnavailable.
    """
    keys = backend.keys
    reasons = all_reasons()
    with broker_errors(backend.settings):
        for attempt in (1, 2):
            pipe = backend.redis.pipeline(transaction=False)
            pipe.llen(keys.queue)
            pipe.zcard(keys.scheduled)
            pipe.hgetall(keys.stats)
            pipe.zrange(keys.dead_letters, 0, 0, withscores=True)
            backend.fleet.queue(pipe, "alive")
            backend.execution.queue(pipe, "pauses")
            backend.execution.queue(pipe, "lookups")
            for reason in reasons:
                pipe.zcard(keys.dead_letters_by_reason(reason))
            if memory:
                pipe.info("memory")
            replies = pipe.execute(raise_on_error=False)
            missing = any(isinstance(r, redis.exceptions.NoScriptError) for r in replies)
            if not missing or attempt == 2:
                break
            # A restarted or flushed Redis lost the scripts: load them, read again.
            backend.fleet.load()
            backend.execution.load()
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
    queued, retrying, stats, oldest, alive, pauses, lookups, *rest = replies
    per_reason = rest[: len(reasons)]
    now, paused = backend.execution.parse_pauses(pauses)
    _, looked = backend.execution.parse_lookups(lookups)
    info = rest[len(reasons)] if memory else None
    return FleetReading(
        queued=int(queued),
        retrying=int(retrying),
        stats=stats,
        oldest=float(oldest[0][1]) if oldest else None,
        workers=sorted(str(w) for w in alive),
        redis_now=now,
        pauses=paused,
        dead_letters={r: int(n) for r, n in zip(reasons, per_reason, strict=True)},
        memory_used=int(info.get("used_memory", 0)) if info else None,
        memory_max=int(info.get("maxmemory", 0)) if info else None,
        lookups=looked,
    )


def fleet_status(backend: Backend, *, now: float | None = None) -> dict[str, Any]:
    """What `dispatcher status --json` prints."""
    reading = read_fleet(backend)
    redis_now = reading.redis_now
    now = time.time() if now is None else now
    pauses: dict[str, Any] = {}
    for server, data in reading.pauses.items():
        until = float(data["until"] or 0)
        if until <= redis_now:
            continue
        # Remaining time by Redis's clock; shown as times on this host's clock.
        left = until - redis_now
        since = float(data["since"]) if data["since"] else None
        pauses[server] = {
            "reason": data["reason"] or None,
            "kind": data["kind"] or None,
            "since": iso(now - (redis_now - since)) if since else None,
            "until": iso(now + left),
            "remaining_s": round(left, 1),
        }
    oldest = reading.oldest
    settings = backend.settings
    lookups = {
        server: {
            "state": data["state"] or None,
            "checked_at": (
                iso(now - (redis_now - float(data["checked_at"]))) if data["checked_at"] else None
            ),
            "missing": data["missing"] or None,
            "error": data["error"] or None,
            "fix": data["fix"] or None,
        }
        for server, data in reading.lookups.items()
    }
    return {
        "queued": reading.queued,
        "retrying": reading.retrying,
        "dead_letters": {r: n for r, n in reading.dead_letters.items() if n},
        "oldest_dead_letter_age_s": None if oldest is None else round(now - oldest, 1),
        "workers": reading.workers,
        "paused": pauses,
        # Reconciliation: the mode, and per VICIdial server whether its look-ups work
        # (state ok, denied, refused or unavailable; missing and fix say what to change).
        "reconcile": {
            "mode": settings.ambiguous,
            "after_s": settings.reconcile_after_s,
            "marker_field": settings.marker_field,
            "lookups": lookups,
        },
        "totals": {k: _number(v) for k, v in sorted(reading.stats.items())},
    }
