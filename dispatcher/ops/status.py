"""The fleet at a glance: queue depth per dialer and lane, waiting retries, dead letters,
workers, pauses, the outcome notifications' backlog.

One pipeline of cheap commands, whatever the keyspace holds: no SCAN, no KEYS
(pauses are kept in a set, live workers are keys with a TTL). Safe to call from
a monitoring loop and from every container's health check.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from dispatcher.config.redaction import redact
from dispatcher.model.dialers import PRIORITIES
from dispatcher.model.errors import all_reasons
from dispatcher.model.jobs import TARGETS, iso
from dispatcher.store.backend import Backend
from dispatcher.store.connection import broker_errors, unavailable_kind
from dispatcher.store.redis_health import policy_warnings

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
    #: (dialer, lane) -> (messages waiting, when the oldest was published or None), both
    #: targets together
    lanes: dict[tuple[str, str], tuple[int, float | None]]
    memory_used: int | None = None
    memory_max: int | None = None
    #: Redis's maxmemory-policy (it must be noeviction), None if INFO did not say
    memory_policy: str | None = None
    #: why INFO memory failed (refused by a managed Redis), None if it answered
    memory_error: str | None = None
    #: what the last look-up or check of each server's Non-Agent API found
    lookups: dict[str, dict[str, str]] = field(default_factory=dict)
    #: (dialer, lane, target) -> messages waiting: ``lanes`` by target (agent, list)
    targets: dict[tuple[str, str, str], int] = field(default_factory=dict)
    #: outcome notifications (the outbox): undelivered and not failed, failed, and when
    #: the oldest undelivered one was written (epoch, None when there is none)
    notify_pending: int = 0
    notify_failed: int = 0
    notify_oldest: float | None = None


def _published(envelope: Any) -> float | None:
    """When a waiting message was published (its ``published_at`` header)."""
    if not envelope:
        return None
    try:
        value = json.loads(envelope)["headers"].get("published_at")
        return float(value) if value is not None else None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _lane_lists(backend: Backend) -> list[tuple[str, str, str, list[str]]]:
    """(dialer, lane, target, the lists that make it) for every dialer, lane and target."""
    keys = backend.keys
    default = backend.settings.dialers.resolve(None)
    out = []
    for dialer in backend.settings.dialers:
        for lane in PRIORITIES:
            lists = [keys.lane(dialer.name, lane)]
            if lane == "realtime" and default is not None and dialer.name == default.name:
                lists.append(keys.queue)  # messages of older versions
            out.append((dialer.name, lane, "agent", lists))
            out.append((dialer.name, lane, "list", [keys.list_lane(dialer.name, lane)]))
    return out


def read_fleet(backend: Backend, *, memory: bool = False) -> FleetReading:
    """Everything `status` and `/metrics` show, in one pipelined round trip.

    ``memory``: also Redis's memory use and policy (INFO memory; a Redis that refuses
    INFO is noted in ``memory_error``, not raised). Raises BrokerUnavailable.
    """
    keys = backend.keys
    reasons = all_reasons()
    lanes = _lane_lists(backend)
    with broker_errors(backend.settings):
        for attempt in (1, 2):
            pipe = backend.redis.pipeline(transaction=False)
            for *_, lists in lanes:
                for name in lists:
                    pipe.llen(name)
                    pipe.lindex(name, -1)
            pipe.zcard(keys.scheduled)
            pipe.hgetall(keys.stats)
            pipe.zrange(keys.dead_letters, 0, 0, withscores=True)
            backend.fleet.queue(pipe, "alive")
            backend.execution.queue(pipe, "pauses")
            backend.execution.queue(pipe, "lookups")
            pipe.zcard(keys.notify_pending)
            pipe.zcard(keys.notify_failed)
            pipe.zrange(keys.notify_pending, 0, 0, withscores=True)
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
        info: Any = replies[-1] if memory else None
        memory_error = None
        if isinstance(info, redis.ResponseError) and unavailable_kind(info) is None:
            # A managed Redis may refuse INFO (NOPERM, renamed command): say so, go on.
            memory_error, info = f"{type(info).__name__}: {str(info)[:200]}", None
            replies = replies[:-1]
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
    per_lane: dict[tuple[str, str], tuple[int, float | None]] = {}
    per_target: dict[tuple[str, str, str], int] = {}
    at = 0
    for dialer, lane, target, lists in lanes:
        depth, oldest_at = per_lane.get((dialer, lane), (0, None))
        waiting = 0
        for _ in lists:
            waiting += int(replies[at])
            published = _published(replies[at + 1])
            if published is not None and (oldest_at is None or published < oldest_at):
                oldest_at = published
            at += 2
        per_lane[(dialer, lane)] = (depth + waiting, oldest_at)
        per_target[(dialer, lane, target)] = waiting
    retrying, stats, oldest, alive, pauses, lookups, *rest = replies[at:]
    notify_pending, notify_failed, notify_oldest, *rest = rest
    per_reason = rest[: len(reasons)]
    now, paused = backend.execution.parse_pauses(pauses)
    _, looked = backend.execution.parse_lookups(lookups)
    if not isinstance(info, dict):
        info = None
    policy = str(info.get("maxmemory_policy") or "") if info else ""
    return FleetReading(
        queued=sum(depth for depth, _ in per_lane.values()),
        retrying=int(retrying),
        stats=stats,
        oldest=float(oldest[0][1]) if oldest else None,
        workers=sorted(str(w) for w in alive),
        redis_now=now,
        pauses=paused,
        dead_letters={r: int(n) for r, n in zip(reasons, per_reason, strict=True)},
        lanes=per_lane,
        targets=per_target,
        memory_used=int(info.get("used_memory", 0)) if info else None,
        memory_max=int(info.get("maxmemory", 0)) if info else None,
        memory_policy=policy or None,
        memory_error=memory_error,
        lookups=looked,
        notify_pending=int(notify_pending),
        notify_failed=int(notify_failed),
        notify_oldest=float(notify_oldest[0][1]) if notify_oldest else None,
    )


def _notifications(reading: FleetReading, now: float) -> dict[str, Any]:
    stats = reading.stats
    oldest = reading.notify_oldest
    return {
        "pending": reading.notify_pending,
        "failed": reading.notify_failed,
        "oldest_pending_age_s": None if oldest is None else round(max(0.0, now - oldest), 1),
        "delivered_total": int(stats.get("notify:delivered", 0)),
        "failed_total": int(stats.get("notify:failed", 0)),
    }


def fleet_status(backend: Backend, *, now: float | None = None) -> dict[str, Any]:
    """What `dispatcher status --json` prints."""
    reading = read_fleet(backend, memory=True)
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
    dialers: dict[str, Any] = {}
    for dialer in backend.settings.dialers:
        queued = {lane: reading.lanes[(dialer.name, lane)][0] for lane in PRIORITIES}
        published = [
            at for lane in PRIORITIES if (at := reading.lanes[(dialer.name, lane)][1]) is not None
        ]
        dialers[dialer.name] = {
            # Both targets together; by target below.
            "queued": queued,
            "queued_by_target": {
                target: {lane: reading.targets[(dialer.name, lane, target)] for lane in PRIORITIES}
                for target in TARGETS
            },
            "oldest_queued_age_s": round(max(0.0, now - min(published)), 1) if published else None,
            "paused": dialer.name in pauses,
            "pause": pauses.get(dialer.name),
            # Its leads for a list alone: add_lead refused a permission (agent jobs go on).
            "list_paused": dialer.list_scope in pauses,
            "list_pause": pauses.get(dialer.list_scope),
            "rate_limit": dialer.rate_limit,
        }
    settings = backend.settings
    lookups = {
        server: {
            "state": data["state"] or None,
            "checked_at": (
                iso(now - (redis_now - float(data["checked_at"]))) if data["checked_at"] else None
            ),
            "missing": data["missing"] or None,
            # Stored redacted; again here for records written by older versions.
            "error": redact(data["error"], settings.secrets) or None,
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
        "dialers": dialers,
        # Reconciliation: the mode, and per VICIdial server whether its look-ups work
        # (state ok, denied, refused or unavailable; missing and fix say what to change).
        "reconcile": {
            "mode": settings.ambiguous,
            "after_s": settings.reconcile_after_s,
            "marker_field": settings.marker_field,
            "lookups": lookups,
        },
        # Outcome notifications (webhooks): the backlog, failed ones, and totals.
        "notifications": _notifications(reading, now),
        "totals": {k: _number(v) for k, v in sorted(reading.stats.items())},
        # What Redis must be for the guarantees to hold (dispatcher.store.redis_health).
        "redis": {
            "maxmemory_policy": reading.memory_policy,
            "warnings": policy_warnings(reading.memory_policy, error=reading.memory_error),
        },
    }
