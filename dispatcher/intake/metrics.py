"""``GET /metrics``: the whole fleet in Prometheus' text format, from Redis.

Workers and producers already count what happens in the ``{prefix}:stats`` hash
(see :mod:`dispatcher.store.stats`) and the queue, the retry set and the dead-letter
store live in Redis too. So a scrape of *one* intake process reads everything in
one pipelined round trip and shows the whole fleet: there is nothing to scrape on
the workers, and a worker that restarts loses no count. Counters only go back to
zero if the Redis data is wiped, which Prometheus' ``rate()``/``increase()``
handle as a counter reset.

The reading (:func:`read_snapshot`, blocking Redis I/O) and the rendering
(:func:`render_metrics`, pure) are separate so that the app can run the first in
a worker thread and tests can check the second without Redis.

Every label value that can occur is emitted, with 0 where nothing happened yet
(every dead-letter reason, the configured VICIdial server's pause state), so
that alert rules such as ``increase(dispatcher_leads_dead_lettered_total[5m]) > 0``
work from the first scrape instead of needing ``absent()``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from dispatcher.model.dialers import Dialer
from dispatcher.model.errors import all_reasons
from dispatcher.ops.status import read_fleet
from dispatcher.store.backend import Backend
from dispatcher.store.stats import LATENCY_BUCKETS_S

__all__ = [
    "CONTENT_TYPE",
    "FleetSnapshot",
    "read_snapshot",
    "render_metrics",
    "server_id",
]

#: The exposition format generate_latest writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Plain counters of the stats hash: field -> (metric name without _total, help).
_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("enqueued", "dispatcher_leads_enqueued", "Leads put on the queue (new jobs only)."),
    (
        "added",
        "dispatcher_leads_added",
        "Leads VICIdial added (SUCCESS answers, and leads a look-up found after a lost answer).",
    ),
    (
        "duplicate",
        "dispatcher_leads_duplicate",
        "Leads for a list that VICIdial's duplicate check found (job state duplicate: nothing "
        "added, the existing lead named).",
    ),
    ("retries", "dispatcher_retries", "Retries scheduled after a temporary failure."),
    (
        "duplicates_suppressed",
        "dispatcher_duplicates_suppressed",
        "Deliveries of an already-added job that were not sent to VICIdial again.",
    ),
    (
        "duplicates_detected",
        "dispatcher_duplicates_detected",
        "Leads found in VICIdial more than once for one job (reconciliation, or a late SUCCESS).",
    ),
    ("replayed", "dispatcher_dead_letters_replayed", "Dead letters replayed onto the queue."),
    ("purged", "dispatcher_dead_letters_purged", "Dead letters purged by an operator."),
    (
        "notify:created",
        "dispatcher_notifications_created",
        "Outcome notifications written to the outbox (one per final outcome with a receiver).",
    ),
    (
        "notify:delivered",
        "dispatcher_notifications_delivered",
        "Outcome notifications their receiver answered with 2xx.",
    ),
    (
        "notify:failed",
        "dispatcher_notifications_failed",
        "Outcome notifications kept as failed (not delivered within DISPATCHER_NOTIFY_RETRY_S).",
    ),
    (
        "notify:attempts_failed",
        "dispatcher_notification_attempts_failed",
        "POSTs of outcome notifications that failed (non-2xx, timeout, network), retried later.",
    ),
)


def server_id(url: str) -> str:
    """A dialer's server as a label (``host:port`` of its agent API URL)."""
    parts = urlsplit(url)
    return f"{parts.hostname or ''}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


@dataclass(frozen=True)
class FleetSnapshot:
    """What one scrape read from Redis."""

    stats: Mapping[str, float]
    queued: int
    retrying: int
    dead_letters: Mapping[str, int]
    oldest_dead_letter_age_s: float | None
    workers_alive: int
    #: dialer -> seconds until calls resume, for dialers whose calls are paused now.
    paused: Mapping[str, float] = field(default_factory=dict)
    #: (dialer, lane) -> (messages waiting, age in seconds of the oldest or None)
    lanes: Mapping[tuple[str, str], tuple[int, float | None]] = field(default_factory=dict)
    #: (dialer, lane, target) -> messages waiting (``lanes`` by target: agent, list)
    targets: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    #: Redis's used_memory and maxmemory (0: no limit); None when not read.
    memory_used_bytes: int | None = None
    memory_max_bytes: int | None = None
    #: outcome notifications: undelivered (not failed), failed, age of the oldest pending
    notifications_pending: int = 0
    notifications_failed: int = 0
    notifications_oldest_age_s: float | None = None


def read_snapshot(backend: Backend, *, now: float | None = None) -> FleetSnapshot:
    """Read everything /metrics shows: one pipeline, a fixed number of commands.

    Blocking (redis-py): run it in a worker thread. Raises BrokerUnavailable.
    """
    now = time.time() if now is None else now
    reading = read_fleet(backend, memory=True)
    paused: dict[str, float] = {}
    for server, data in reading.pauses.items():
        until = _float(data["until"]) or 0.0
        if until > reading.redis_now:
            paused[server] = round(until - reading.redis_now, 3)
    stats = reading.stats
    lanes = {
        key: (depth, None if at is None else round(max(0.0, now - at), 3))
        for key, (depth, at) in reading.lanes.items()
    }
    return FleetSnapshot(
        stats={k: v for k, v in ((str(k), _float(v)) for k, v in stats.items()) if v is not None},
        queued=reading.queued,
        retrying=reading.retrying,
        dead_letters=reading.dead_letters,
        oldest_dead_letter_age_s=(
            max(0.0, now - reading.oldest) if reading.oldest is not None else None
        ),
        workers_alive=len(reading.workers),
        paused=paused,
        lanes=lanes,
        targets=dict(reading.targets),
        memory_used_bytes=reading.memory_used,
        memory_max_bytes=reading.memory_max,
        notifications_pending=reading.notify_pending,
        notifications_failed=reading.notify_failed,
        notifications_oldest_age_s=(
            None if reading.notify_oldest is None else max(0.0, now - reading.notify_oldest)
        ),
    )


def _float(value: object) -> float | None:
    try:
        return float(str(value))
    except ValueError:
        return None


def render_metrics(
    snapshot: FleetSnapshot | None, *, dialers: Mapping[str, Dialer] | None = None
) -> bytes:
    """The Prometheus text for ``snapshot`` (None: Redis did not answer).

    ``dialers`` are the dialers known from configuration: each is shown (not
    paused: 0) even when nothing is recorded for it, with its rate limit and its
    server (``host:port``) as a label.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(_families(snapshot, dialers or {})))
    return generate_latest(registry)


class _Families:
    """A one-shot collector: the families of one scrape."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def _families(snapshot: FleetSnapshot | None, dialers: Mapping[str, Dialer]) -> list[Metric]:
    up = GaugeMetricFamily(
        "dispatcher_redis_up", "1 when Redis answered this scrape, else 0 (nothing else shown)."
    )
    up.add_metric([], 0.0 if snapshot is None else 1.0)
    if snapshot is None:
        return [up]
    stats = snapshot.stats
    out: list[Metric] = [up]
    for key, name, doc in _COUNTERS:
        out.append(CounterMetricFamily(name, doc, value=stats.get(key, 0.0)))

    reasons = dict.fromkeys(all_reasons())
    reasons.update(
        dict.fromkeys(k.split(":", 1)[1] for k in stats if k.startswith("dead_lettered:"))
    )
    dead_total = CounterMetricFamily(
        "dispatcher_leads_dead_lettered",
        "Leads moved to the dead-letter store, by reason.",
        labels=["reason"],
    )
    for reason in reasons:
        dead_total.add_metric([reason], stats.get(f"dead_lettered:{reason}", 0.0))
    out.append(dead_total)
    reconciled = CounterMetricFamily(
        "dispatcher_reconciliations",
        "Ambiguous calls looked up in VICIdial: scheduled (and requested by an operator), then "
        "found (added), absent (called again) or unknown (ambiguous dead letter).",
        labels=["result"],
    )
    for result in ("scheduled", "requested", "found", "absent", "unknown"):
        reconciled.add_metric([result], stats.get(f"reconcile:{result}", 0.0))
    out.append(reconciled)
    out.append(_latency_histogram(stats))

    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, value=value)

    depth = GaugeMetricFamily(
        "dispatcher_queue_depth",
        "Jobs waiting in a dialer's lane (sum() for the whole queue).",
        labels=["dialer", "lane"],
    )
    age = GaugeMetricFamily(
        "dispatcher_queue_oldest_age_seconds",
        "How long the next job of a dialer's lane has waited (0 when the lane is empty).",
        labels=["dialer", "lane"],
    )
    for (dialer_name, lane), (waiting, oldest) in sorted(snapshot.lanes.items()):
        depth.add_metric([dialer_name, lane], waiting)
        age.add_metric([dialer_name, lane], oldest or 0.0)
    by_target = GaugeMetricFamily(
        "dispatcher_queue_depth_by_target",
        "dispatcher_queue_depth by the jobs' target: leads for an agent (external_add_lead) "
        "or for a list (add_lead), each in lanes of its own.",
        labels=["dialer", "lane", "target"],
    )
    for (dialer_name, lane, target), waiting in sorted(snapshot.targets.items()):
        by_target.add_metric([dialer_name, lane, target], waiting)
    out += [depth, age, by_target]
    out.append(
        gauge(
            "dispatcher_retries_waiting",
            "Jobs waiting for their retry time after a temporary failure.",
            snapshot.retrying,
        )
    )
    dead_now = GaugeMetricFamily(
        "dispatcher_dead_letters",
        "Dead letters in the store now, by reason.",
        labels=["reason"],
    )
    for reason in dict.fromkeys([*all_reasons(), *snapshot.dead_letters]):
        dead_now.add_metric([reason], snapshot.dead_letters.get(reason, 0))
    out.append(dead_now)
    out.append(
        gauge(
            "dispatcher_dead_letter_oldest_age_seconds",
            "Age of the oldest dead letter's last failure (0 when the store is empty).",
            snapshot.oldest_dead_letter_age_s or 0.0,
        )
    )
    paused = GaugeMetricFamily(
        "dispatcher_vicidial_paused",
        "1 while calls to this dialer are paused fleet-wide (refused credentials, outage), else 0.",
        labels=["dialer", "server"],
    )
    remaining = GaugeMetricFamily(
        "dispatcher_vicidial_pause_remaining_seconds",
        "Seconds until calls to this dialer resume (0 when not paused).",
        labels=["dialer", "server"],
    )
    rate = GaugeMetricFamily(
        "dispatcher_dialer_rate_limit",
        "Calls per second to this dialer across the fleet (0: no limit).",
        labels=["dialer"],
    )
    list_paused = GaugeMetricFamily(
        "dispatcher_list_jobs_paused",
        "1 while this dialer's leads for a list alone are paused (add_lead refused a permission "
        "that its agent jobs do not need), else 0.",
        labels=["dialer"],
    )
    scopes = {dialer.list_scope: name for name, dialer in dialers.items()}
    for name in sorted(dialers):
        list_paused.add_metric([name], 1.0 if dialers[name].list_scope in snapshot.paused else 0.0)
    for name in sorted({*dialers, *(p for p in snapshot.paused if p not in scopes)}):
        dialer = dialers.get(name)
        server = server_id(dialer.url) if dialer is not None and dialer.url else ""
        left = snapshot.paused.get(name)
        paused.add_metric([name, server], 0.0 if left is None else 1.0)
        remaining.add_metric([name, server], left or 0.0)
        if dialer is not None:
            rate.add_metric([name], dialer.rate_limit)
    out += [paused, remaining, rate, list_paused]
    out.append(
        gauge(
            "dispatcher_workers_alive",
            "Workers whose heartbeat key lives in Redis (it expires when they stop).",
            snapshot.workers_alive,
        )
    )
    out.append(
        gauge(
            "dispatcher_notifications_backlog",
            "Outcome notifications not delivered yet (not failed): due, waiting for a retry, "
            "or behind an earlier event of their job.",
            snapshot.notifications_pending,
        )
    )
    out.append(
        gauge(
            "dispatcher_notifications_failed_waiting",
            "Failed outcome notifications kept for `dispatcher notify retry`.",
            snapshot.notifications_failed,
        )
    )
    out.append(
        gauge(
            "dispatcher_notifications_oldest_age_seconds",
            "Age of the oldest undelivered (not failed) outcome notification (0 when none).",
            snapshot.notifications_oldest_age_s or 0.0,
        )
    )
    if snapshot.memory_used_bytes is not None:
        out.append(
            gauge(
                "dispatcher_redis_memory_used_bytes",
                "Memory Redis uses (INFO memory used_memory).",
                snapshot.memory_used_bytes,
            )
        )
        out.append(
            gauge(
                "dispatcher_redis_memory_max_bytes",
                "Redis's maxmemory (0: no limit). At the limit every write is refused "
                "(noeviction): enqueues fail, workers wait.",
                snapshot.memory_max_bytes or 0,
            )
        )
    return out


def _latency_histogram(stats: Mapping[str, float]) -> HistogramMetricFamily:
    """The stats hash keeps one count per bucket; Prometheus wants running totals."""
    running = 0.0
    buckets: list[tuple[str, float]] = []
    for le in LATENCY_BUCKETS_S:
        running += stats.get(f"latency_bucket:{le:g}", 0.0)
        buckets.append((repr(float(le)), running))
    running += stats.get("latency_bucket:+Inf", 0.0)
    buckets.append(("+Inf", running))
    return HistogramMetricFamily(
        "dispatcher_vicidial_call_duration_seconds",
        "Duration of external_add_lead calls that VICIdial answered with SUCCESS.",
        buckets=buckets,
        sum_value=stats.get("latency_sum_ms", 0.0) / 1000.0,
        unit="",
    )
