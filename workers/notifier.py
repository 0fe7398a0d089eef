"""The sender of outcome notifications (webhooks): one per worker process, on its own threads.

A job's outcome command writes its event into the outbox in Redis
(:mod:`dispatcher.store.outbox`); this component sends them. It never runs on the lead
engine's event loop or in a lead's slot, and holds nothing a lead needs: a slow or dead
receiver delays only other notifications, never a call to VICIdial.

* **One coordinator thread** stores what came back and claims due events from the outbox
  in one pipelined round trip per turn (a claim takes up to twice as many events as there
  are free slots, each with a lease: several workers share the outbox, an event is sent by
  one of them at a time, and one whose sender died comes due again when its lease ends),
  then hands each to a delivery thread.
* **A bounded pool of delivery threads** (``DISPATCHER_NOTIFY_CONCURRENCY``, 16) POST over
  one keep-alive connection pool for the process (httpcore's, which httpx is built on:
  httpx's models on top cost as much CPU again per POST, measured), every POST bounded as
  a whole by ``DISPATCHER_NOTIFY_TIMEOUT_S`` (connect, send and answer:
  :mod:`workers.http_deadline`), redirects never followed, at most 64 KiB of an answer read.
* **Per receiver** (scheme, host, port): at most ``DISPATCHER_NOTIFY_PER_RECEIVER`` (8)
  POSTs at once; an event claimed beyond that waits here for the receiver's next free
  slot (at most as many as its slots, at most one POST's time), else goes back to the
  outbox at once, its attempt not counted, and claims stay lean for a moment. And a
  breaker: after :attr:`SendPolicy.breaker_threshold` failures in a row its events are not
  sent for a cool-down that doubles while it lasts (5 s up to 5 min); then one probe. An
  event met by an open breaker counts a failed attempt (its own backoff grows), so a dead
  receiver's backlog waits in Redis without holding a slot.
* **Leads first** (:class:`CpuShare`): while the rest of the worker process is busy with
  leads, the sender takes at most ``DISPATCHER_NOTIFY_CPU_SHARE`` of their CPU; events wait
  in the outbox and go when the leads leave CPU to spare.
* **Retries**: any answer but 2xx, a timeout, a refused or dropped connection is a failed
  attempt: due again after a full-jitter backoff (``DISPATCHER_NOTIFY_RETRY_BASE_S`` doubling
  up to ``_CAP_S``) while the event's window (``DISPATCHER_NOTIFY_RETRY_S`` from when it
  became its job's first undelivered event) lasts, then kept as failed
  (``dispatcher notify list --failed``, ``retry``). A URL this worker may not send to (not
  ``DISPATCHER_NOTIFY_URL`` and not under a prefix of ``DISPATCHER_NOTIFY_ALLOWED``) fails
  at once, saying so.
* **Maintenance**: about once a minute, failed events older than
  ``DISPATCHER_NOTIFY_FAILED_RETENTION_DAYS`` are removed (``notify.expired``).

Every request is signed (``Dispatcher-Signature: t=...,v1=...``, HMAC-SHA256 of
``t.body`` with ``DISPATCHER_NOTIFY_SECRET``; :mod:`dispatcher.model.notifications`) and
carries ``Dispatcher-Event-Id``. Logs: ``notify.delivered``, ``notify.attempt_failed``,
``notify.failed``, ``notify.expired``, ``notify.receiver_unavailable`` /
``notify.receiver_available`` (a breaker opening and closing); a receiver is logged by its
origin only (its path or query may hold a token).

Redis away (full, read-only, restarting) is waited out as everywhere in the worker
(:func:`dispatcher.store.redis_health.redis_availability`): claims stop, results not yet
settled are kept and settled when Redis answers (an event whose lease ran out meanwhile
may be sent twice: at least once, receivers deduplicate by event id).
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx
import redis

from dispatcher.config import logs
from dispatcher.config.settings import Settings
from dispatcher.model.errors import BrokerUnavailable
from dispatcher.model.notifications import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    allowed,
    origin,
    signature_header,
)
from dispatcher.store.backend import Backend, get_backend
from dispatcher.store.execution import new_token
from dispatcher.store.outbox import Claimed, Outbox
from dispatcher.store.redis_health import redis_availability
from workers.http_deadline import deadline, deadline_pool

__all__ = ["Breaker", "CpuShare", "Notifier", "SendPolicy"]

#: What a POST that did not get an answer raises (httpcore's errors: no common base).
_NETWORK_ERRORS = (
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ProxyError,
    OSError,
)

_log = logs.get_logger("workers.notifier")
#: At most this much of an answer is read (then the connection is closed).
MAX_ANSWER = 64 * 1024
_USER_AGENT = "vicidial-lead-dispatcher-notify/1"
#: How often failed events past their retention are looked for.
_MAINTENANCE_S = 60.0
_EXPIRE_BATCH = 500
#: How long a stopping sender waits for its POSTs in flight.
_STOP_WAIT_S = 5.0


@dataclass(frozen=True)
class SendPolicy:
    """How the sender retries (data, like the leads' retry policy)."""

    #: full-jitter backoff: uniform(0, min(cap, base * 2 ** (attempt - 1)))
    base_s: float = 1.0
    cap_s: float = 900.0
    #: how long an event is retried (from when it became its job's first undelivered one)
    window_s: float = 86400.0
    #: failures in a row that open a receiver's breaker, and its cool-down (doubling)
    breaker_threshold: int = 5
    breaker_base_s: float = 5.0
    breaker_cap_s: float = 300.0
    #: an event claimed while its receiver's slots are all busy is due again after this
    busy_delay_s: float = 0.5
    #: the outbox is looked at this often when idle (doubling from min to max)
    poll_min_s: float = 0.05
    poll_max_s: float = 0.5
    #: CPU: while the rest of the worker process (the lead engine, its consumer) uses more
    #: than ``busy_core`` of a core, the sender takes at most ``cpu_share`` of what they
    #: use (and never less than ``cpu_floor`` of a core): leads first, notifications
    #: catch up when the leads leave CPU to spare (see :class:`CpuShare`)
    cpu_share: float = 0.2
    busy_core: float = 0.1
    cpu_floor: float = 0.02

    @classmethod
    def from_settings(cls, settings: Settings) -> SendPolicy:
        return cls(
            base_s=settings.notify_retry_base_s,
            cap_s=settings.notify_retry_cap_s,
            window_s=settings.notify_retry_s,
            # A worker that sends nothing itself only fails what it may not send.
            poll_max_s=0.5 if settings.notifies else 2.0,
            cpu_share=settings.notify_cpu_share,
        )

    def backoff(self, attempts: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.cap_s, self.base_s * 2.0 ** max(0, attempts - 1)))


class CpuShare:
    """The sender's share of its worker process's CPU, judged over short windows.

    The lead engine and the sender share one process (one interpreter lock) and the
    host's cores. A POST costs about as much CPU as a lead's whole trip through the worker
    (about half a millisecond: bench/notify.py), so a sender at full speed beside a
    busy lead engine takes CPU the leads need: measured with ``DISPATCHER_NOTIFY_CPU_SHARE=0``
    on the 2-core bench host, 0.56 of the leads/s without notifications at zero VICIdial
    latency and 0.90 at 100 ms; with the share (0.2), 0.91 and 0.98. While the rest of the
    process is busy (more than ``busy_core`` of a core in the current window) the sender
    starts no new POST once it has used ``cpu_share`` of their CPU (at least ``cpu_floor``
    of a core); the events wait in the outbox and go when the leads leave CPU to spare.
    A process whose leads run elsewhere (``-P prefork``: its children) is never busy here.
    """

    WINDOW_S = 0.25

    def __init__(self, policy: SendPolicy, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.share = policy.cpu_share
        self.busy_core = policy.busy_core
        self.floor = policy.cpu_floor
        self._clock = clock
        self._spent = 0.0
        self._start = clock()
        self._process0 = time.process_time()
        self._spent0 = 0.0
        self._last_thread = time.thread_time()
        #: windows in which the sender waited for the leads
        self.throttled = 0
        self._was_throttled = False

    def spent(self, cpu_s: float) -> None:
        """CPU a delivery thread used for one POST."""
        self._spent += cpu_s

    def allows(self) -> bool:
        """May the sender start more work now? (Called on the coordinator's thread, whose
        own CPU it counts as the sender's.)"""
        thread = time.thread_time()
        self._spent += thread - self._last_thread
        self._last_thread = thread
        now = self._clock()
        elapsed = now - self._start
        process = time.process_time() - self._process0
        mine = self._spent - self._spent0
        if elapsed >= self.WINDOW_S:
            self._start, self._process0, self._spent0 = now, time.process_time(), self._spent
            self._was_throttled = False
        if elapsed < 0.02 or self.share <= 0:
            return True
        others = max(0.0, process - mine)
        if others < self.busy_core * elapsed:
            return True
        allowed = mine <= max(self.floor * elapsed, self.share * others)
        if not allowed and not self._was_throttled:
            self._was_throttled = True
            self.throttled += 1
        return allowed


@dataclass
class Breaker:
    """One receiver's circuit breaker (this process's view of it)."""

    threshold: int
    base_s: float
    cap_s: float
    failures: int = 0
    trips: int = 0
    open_until: float = 0.0
    probing: bool = False
    last_error: str = ""

    def allow(self, now: float) -> bool:
        """May an event be sent now? Past the cool-down, one probe at a time."""
        if self.failures < self.threshold:
            return True
        if now < self.open_until or self.probing:
            return False
        self.probing = True
        return True

    def succeeded(self) -> bool:
        """A 2xx: closed. True if it was open."""
        was_open = self.failures >= self.threshold
        self.failures, self.trips, self.probing = 0, 0, False
        return was_open

    def failed(self, now: float, error: str) -> bool:
        """A failed POST. True if this opened the breaker (or opened it again)."""
        self.last_error = error
        self.failures += 1
        self.probing = False
        if self.failures < self.threshold:
            return False
        self.trips += 1
        self.open_until = now + min(self.cap_s, self.base_s * 2.0 ** (self.trips - 1))
        return self.trips == 1

    def remaining(self, now: float) -> float:
        return max(0.0, self.open_until - now)


@dataclass
class _Result:
    claimed: Claimed
    receiver: str
    status: int | None = None
    error: str | None = None
    latency_ms: float = 0.0
    #: the delivery thread's CPU for this POST
    cpu_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class _Settlement:
    """A settlement waiting for Redis, and what to log once it is stored."""

    call: tuple[Any, ...]
    claimed: Claimed
    receiver: str
    kind: str  # delivered | failed | refused | held | released
    status: int | None = None
    error: str | None = None
    latency_ms: float = 0.0
    delay_s: float = 0.0


@dataclass
class _Counts:
    delivered: int = 0
    failed: int = 0
    attempts_failed: int = 0
    released: int = 0
    posts: int = 0
    by_receiver: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class Notifier:
    """The sender of one worker process (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        backend: Backend | None = None,
        policy: SendPolicy | None = None,
        rng: random.Random | None = None,
        name: str = "",
    ) -> None:
        self.settings = settings
        self.backend = backend or get_backend(settings)
        self.outbox: Outbox = self.backend.outbox
        self.policy = policy or SendPolicy.from_settings(settings)
        self.rng = rng or random.Random()
        self.name = name
        self.concurrency = settings.notify_concurrency
        self.per_receiver = settings.notify_per_receiver
        self.timeout_s = settings.notify_timeout_s
        #: a claim outlives the longest POST (its deadline) twice: an event may wait for a
        #: slot of its receiver (at most one POST's time, see _held) before its own POST;
        #: an event whose sender died comes due again after this
        self.lease_s = 3.0 * self.timeout_s + 2.0
        self._stop_wait_s = min(self.timeout_s, _STOP_WAIT_S)
        limits = httpx.Limits(
            max_connections=self.concurrency,
            max_keepalive_connections=self.concurrency,
            keepalive_expiry=30.0,
        )
        # httpcore's keep-alive pool, every POST bounded as a whole (workers/http_deadline):
        # httpx's request and response models on top of it cost as much CPU again per
        # POST (0.48 against 0.26 ms, measured: docs/BENCHMARKS.md "notify"), spent in
        # the worker process that also runs the lead engine.
        self.http = deadline_pool(limits=limits)
        self._pool = ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="dispatcher-notify"
        )
        self._results: queue.SimpleQueue[_Result | None] = queue.SimpleQueue()
        self._unsettled: list[_Settlement] = []
        self._busy = 0
        self._busy_by_receiver: dict[str, int] = defaultdict(int)
        #: claimed events waiting for a slot of their receiver (with when they were
        #: claimed): at most per_receiver each, sent as the receiver's POSTs end
        self._held: dict[str, deque[tuple[Claimed, float]]] = defaultdict(deque)
        self._held_total = 0
        self._breakers: dict[str, Breaker] = {}
        #: each receiver's recent POST time (seconds, a moving average): how long an event
        #: handed back because the receiver was busy waits before it comes due again
        self._post_s: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_maintenance = -1e9
        self._last_error_log = -1e9
        self._claim_lean_until = 0.0
        self.governor = CpuShare(self.policy)
        self.counts = _Counts()

    # -- life ---------------------------------------------------------------------------

    def start(self) -> Notifier:
        self._thread = threading.Thread(target=self._run, name="dispatcher-notifier", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming; wait a little (at most :data:`_STOP_WAIT_S`) for the POSTs in
        flight and settle them: a worker's warm shutdown also waits for its leads' calls,
        within Celery's grace period. Anything left is sent again after its lease."""
        self._stop.set()
        self._results.put(None)
        if self._thread is not None:
            self._thread.join(self._stop_wait_s + 2.0 if timeout is None else timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()

    # -- the coordinator ----------------------------------------------------------------

    def _run(self) -> None:
        idle = self.policy.poll_min_s
        while not self._stop.is_set():
            try:
                started = self.step()
            except Exception as exc:  # never die: log (rate-limited) and go on
                self._error(exc)
                started = 0
            if started:
                idle = self.policy.poll_min_s
                self._collect(0.0)
            else:
                self._collect(idle)
                idle = min(idle * 2.0, self.policy.poll_max_s)
        # Warm shutdown: held events go back at once, the POSTs in flight finish (each
        # within its deadline), then every result is stored.
        for receiver, held in self._held.items():
            while held:
                self._release(held.popleft()[0], receiver)
        self._held_total = 0
        end = time.monotonic() + self._stop_wait_s
        while self._busy and time.monotonic() < end:
            self._collect(0.1)
        try:
            self._settle()
        except Exception as exc:
            self._error(exc)

    def step(self) -> int:
        """One round: maintenance, then the settlements that came back and a claim of due
        events in one round trip, and their dispatch. How many POSTs were started."""
        self._maintain()
        started = self._release_stale_held()
        budget = self.governor.allows()
        claim_limit = 0
        if budget and not self._stop.is_set():
            # Up to as many again as the slots: a saturated receiver's next events wait
            # here (held) for its slots. After a claim that had to hand some back (their
            # receiver's slots and held places all taken), only what free slots can take
            # for a while: a busy receiver's events are not claimed again and again.
            factor = 1 if time.monotonic() < self._claim_lean_until else 2
            claim_limit = max(0, factor * self.concurrency - self._busy - self._held_total)
        claimed = self._exchange(claim_limit)
        if claimed is None:
            return started
        for c in claimed:
            started += self._dispatch(c)
        return started

    def _exchange(self, claim_limit: int) -> list[Claimed] | None:
        """Store the pending settlements and claim up to ``claim_limit`` due events, in
        one round trip. None when Redis could not be reached (the settlements are kept)."""
        if not self._unsettled and claim_limit <= 0:
            return []
        batch, self._unsettled = self._unsettled, []
        token = new_token()
        try:
            replies, claimed = self.outbox.exchange(
                [s.call for s in batch], claim_limit=claim_limit, lease_s=self.lease_s, token=token
            )
        except (redis.RedisError, BrokerUnavailable) as exc:
            self._unsettled = batch + self._unsettled
            if not redis_availability().failed(exc, during="notifications"):
                raise
            self._collect(1.0)
            return None
        redis_availability().ok()
        self._logged_all(batch, replies)
        return claimed

    def _settle(self) -> None:
        """Store every pending settlement (no claim)."""
        self._exchange(0)

    def _collect(self, wait_s: float) -> None:
        """Take the delivery threads' results (waiting up to ``wait_s`` for the first)."""
        try:
            item = self._results.get(timeout=wait_s) if wait_s > 0 else self._results.get_nowait()
        except queue.Empty:
            return
        while True:
            if item is not None:
                self._done(item)
            try:
                item = self._results.get_nowait()
            except queue.Empty:
                return

    def _may_send(self, url: str) -> str | None:
        """Why this worker may not send to ``url``, or None."""
        settings = self.settings
        if not (url == settings.notify_url or allowed(url, settings.notify_allowed)):
            return (
                "not sent: the receiver is neither DISPATCHER_NOTIFY_URL nor under a prefix "
                "of DISPATCHER_NOTIFY_ALLOWED on this worker"
            )
        if not settings.notify_secret:
            return "not sent: DISPATCHER_NOTIFY_SECRET is not set on this worker"
        return None

    def _dispatch(self, c: Claimed) -> int:
        try:
            receiver = origin(c.url)
        except ValueError:
            receiver = "(not a URL)"
        refusal = self._may_send(c.url) if receiver != "(not a URL)" else "not sent: not a URL"
        if refusal is not None:
            self._fail(c, receiver, error=refusal, status=None, kind="refused", window_s=0.0)
            return 0
        if self._busy_by_receiver[receiver] >= self.per_receiver or self._busy >= self.concurrency:
            held = self._held[receiver]
            if len(held) < self.per_receiver:
                held.append((c, time.monotonic()))
                self._held_total += 1
            else:
                self._release(c, receiver)
            return 0
        return self._start(c, receiver)

    def _start(self, c: Claimed, receiver: str) -> int:
        """POST ``c`` now (a slot of its receiver is free), unless its breaker is open."""
        breaker = self._breaker(receiver)
        now = time.monotonic()
        if not breaker.allow(now):
            self._fail(
                c,
                receiver,
                error=f"not sent: {receiver} failed {breaker.failures} times in a row "
                f"(last: {breaker.last_error}); its breaker is open",
                status=None,
                kind="held",
                at_least=breaker.remaining(now),
            )
            return 0
        self._busy += 1
        self._busy_by_receiver[receiver] += 1
        self._pool.submit(self._deliver, c, receiver)
        return 1

    def _release(self, c: Claimed, receiver: str) -> None:
        """Back to the outbox, due again shortly, the attempt not counted (its receiver's
        slots are all busy and enough of its events wait here already)."""
        # A receiver whose POSTs take seconds frees a slot every few seconds: its events
        # come back about then, not every poll (each hand-back is a Redis write).
        wait = max(self.policy.busy_delay_s, self._post_s.get(receiver, 0.0))
        delay = wait * self.rng.uniform(0.5, 1.5)
        self._claim_lean_until = time.monotonic() + wait
        self._unsettled.append(
            _Settlement(
                Outbox.release_args(c.event.id, token=c.token, delay_s=delay),
                c,
                receiver,
                "released",
                delay_s=delay,
            )
        )

    def _next_held(self, receiver: str) -> int:
        """A slot of ``receiver`` freed: its next held event goes (then any receiver's,
        when the sender had every slot busy)."""
        started = 0
        if not self._held_total or not self.governor.allows():
            return 0
        for name in [receiver, *[r for r in self._held if r != receiver]]:
            held = self._held.get(name)
            while held and self._busy < self.concurrency:
                if self._busy_by_receiver[name] >= self.per_receiver:
                    break
                c, _ = held.popleft()
                self._held_total -= 1
                started += self._start(c, name)
        return started

    def _release_stale_held(self) -> int:
        """Held events that waited a whole POST's time go back (their lease must not run
        out here); then what can start, starts."""
        limit = time.monotonic() - self.timeout_s
        for receiver, held in self._held.items():
            while held and held[0][1] < limit:
                c, _ = held.popleft()
                self._held_total -= 1
                self._release(c, receiver)
        started = 0
        for receiver in list(self._held):
            started += self._next_held(receiver)
        return started

    def _breaker(self, receiver: str) -> Breaker:
        breaker = self._breakers.get(receiver)
        if breaker is None:
            p = self.policy
            breaker = self._breakers[receiver] = Breaker(
                p.breaker_threshold, p.breaker_base_s, p.breaker_cap_s
            )
        return breaker

    def _fail(
        self,
        c: Claimed,
        receiver: str,
        *,
        error: str,
        status: int | None,
        kind: str,
        window_s: float | None = None,
        at_least: float = 0.0,
        latency_ms: float = 0.0,
    ) -> None:
        delay = max(at_least, self.policy.backoff(c.attempts, self.rng))
        if at_least:
            delay += self.rng.uniform(0.0, self.policy.breaker_base_s)
        self._unsettled.append(
            _Settlement(
                Outbox.attempt_failed_args(
                    c.event.id,
                    token=c.token,
                    delay_s=delay,
                    window_s=self.policy.window_s if window_s is None else window_s,
                    error=error,
                    status=status,
                ),
                c,
                receiver,
                kind,
                status=status,
                error=error,
                latency_ms=latency_ms,
                delay_s=delay,
            )
        )

    def _done(self, result: _Result) -> None:
        """A delivery thread's result: the breaker learns it, the settlement is queued."""
        receiver = result.receiver
        self._busy -= 1
        self._busy_by_receiver[receiver] -= 1
        self.counts.posts += 1
        self.governor.spent(result.cpu_s)
        self._learn(result)
        self._next_held(receiver)

    def _learn(self, result: _Result) -> None:
        seconds = result.latency_ms / 1000.0
        previous = self._post_s.get(result.receiver)
        self._post_s[result.receiver] = (
            seconds if previous is None else 0.8 * previous + 0.2 * seconds
        )
        self._settle_result(result)

    def _settle_result(self, result: _Result) -> None:
        """The receiver's breaker learns the result; its settlement is queued."""
        receiver = result.receiver
        breaker = self._breaker(receiver)
        c = result.claimed
        if result.ok:
            if breaker.succeeded():
                _log.info("notify.receiver_available", receiver=receiver)
            assert result.status is not None
            self._unsettled.append(
                _Settlement(
                    Outbox.delivered_args(c.event.id, status=result.status),
                    c,
                    receiver,
                    "delivered",
                    status=result.status,
                    latency_ms=result.latency_ms,
                )
            )
            return
        error = result.error or f"HTTP {result.status}"
        if breaker.failed(time.monotonic(), error):
            _log.warning(
                "notify.receiver_unavailable",
                receiver=receiver,
                failures=breaker.failures,
                error=error,
                pause_s=round(breaker.remaining(time.monotonic()), 1),
            )
        self._fail(
            c,
            receiver,
            error=error,
            status=result.status,
            kind="failed",
            latency_ms=result.latency_ms,
        )

    def _logged_all(self, batch: list[_Settlement], replies: list[Any]) -> None:
        for s, reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                if redis_availability().failed(reply, during="notifications"):
                    self._unsettled.append(s)
                else:
                    self._error(reply)
                continue
            self._logged(s, reply)

    def _logged(self, s: _Settlement, reply: Any) -> None:
        event = s.claimed.event
        facts = {
            "event_id": event.id,
            "job_id": event.job_id,
            "type": event.type,
            "receiver": s.receiver,
            "attempt": s.claimed.attempts,
        }
        if s.kind == "delivered":
            if int(reply):
                self.counts.delivered += 1
                _log.info(
                    "notify.delivered",
                    status=s.status,
                    latency_ms=round(s.latency_ms, 1),
                    **facts,
                )
            return
        if s.kind == "released":
            self.counts.released += 1
            return
        verdict = [x.decode() if isinstance(x, bytes) else str(x) for x in reply]
        if verdict[0] == "failed":
            self.counts.failed += 1
            _log.error("notify.failed", status=s.status, error=s.error, **facts)
        elif verdict[0] == "retrying":
            self.counts.attempts_failed += 1
            if s.kind != "held":  # an open breaker's deferrals: its opening was logged
                _log.warning(
                    "notify.attempt_failed",
                    status=s.status,
                    error=s.error,
                    delay_s=round(s.delay_s, 3),
                    **facts,
                )

    def _maintain(self) -> None:
        """Failed events past DISPATCHER_NOTIFY_FAILED_RETENTION_DAYS, about once a minute."""
        days = self.settings.notify_failed_retention_days
        now = time.monotonic()
        if days <= 0 or now - self._last_maintenance < _MAINTENANCE_S:
            return
        self._last_maintenance = now
        cutoff = time.time() - days * 86400.0
        try:
            while True:
                gone = self.outbox.expire_failed(before=cutoff, limit=_EXPIRE_BATCH)
                for event_id, job_id, kind in gone:
                    _log.info("notify.expired", event_id=event_id, job_id=job_id, type=kind)
                if len(gone) < _EXPIRE_BATCH:
                    return
        except (redis.RedisError, BrokerUnavailable) as exc:
            self._last_maintenance = now - _MAINTENANCE_S + 5.0  # again in 5 s
            if not redis_availability().failed(exc, during="notifications"):
                raise

    def _error(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:  # one line per 10 s
            self._last_error_log = now
            _log.warning("notify.error", error=f"{type(exc).__name__}: {str(exc)[:300]}")

    # -- delivery threads ---------------------------------------------------------------

    def _deliver(self, c: Claimed, receiver: str) -> None:
        result = _Result(c, receiver)
        started = time.monotonic()
        cpu = time.thread_time()
        try:
            body = c.event.body()
            secret = self.settings.notify_secret or ""
            headers = [
                (b"Content-Type", b"application/json"),
                (b"User-Agent", _USER_AGENT.encode()),
                (EVENT_ID_HEADER.encode(), c.event.id.encode()),
                (
                    SIGNATURE_HEADER.encode(),
                    signature_header(secret, int(time.time()), body).encode(),
                ),
            ]
            with (
                deadline(self.timeout_s),
                self.http.stream("POST", c.url, headers=headers, content=body) as answer,
            ):
                result.status = answer.status
                read = 0
                for chunk in answer.iter_stream():
                    read += len(chunk)
                    if read >= MAX_ANSWER:
                        break
            if not result.ok:
                result.error = f"HTTP {result.status}"
        except httpcore.TimeoutException as exc:
            result.status = None
            result.error = f"timeout ({type(exc).__name__}, {self.timeout_s:g} s)"
        except _NETWORK_ERRORS as exc:
            result.status = None
            result.error = self._describe(exc, c.url, receiver)
        except Exception as exc:  # a bug here must not lose the slot's accounting
            result.status = None
            result.error = f"internal: {type(exc).__name__}: {exc}"[:300]
        result.latency_ms = (time.monotonic() - started) * 1000.0
        result.cpu_s = time.thread_time() - cpu
        self._results.put(result)

    @staticmethod
    def _describe(exc: BaseException, url: str, receiver: str) -> str:
        """A network error for logs and the event's last_error: the URL shown by its origin."""
        text = f"{type(exc).__name__}: {exc}".replace(url, receiver)
        return text[:300]
