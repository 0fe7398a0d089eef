"""One job, start to end: claim -> call -> classify -> added / retry / dead letter.

:class:`JobRunner` is the body of the Celery task, kept free of Celery so that it
reads top to bottom. One runner per worker process (one ``httpx.Client``, one
Redis pool), shared by the pool's threads (:func:`get_runner`).

Redis round trips per added lead: one ``claim`` (execution record, pause, rate
limit) and one ``succeed``. Failures cost one or two more.

Exactly-once effect. Each delivery of a message gets a fresh token; the job's
execution record (``dispatcher/store/execution.lua``) is claimed with it, and every
outcome is a compare-and-set on it:

* ``done`` is final: every later copy of the job (a redelivery, a stale copy, a
  double publish, a replay) is acknowledged without a call
  (``lead.duplicate_suppressed``), and a SUCCESS retires a dead letter a copy
  wrote meanwhile;
* a copy that lost its claim (its lease ran out and another copy took the job
  over) cannot overwrite what the new holder decided ("superseded");
* a claim or outcome whose reply was lost is asked again with the same token
  and recognised ("own", "again"), never judged a lost worker, never counted
  twice. Redis writes are retried while this worker holds the message, up to
  the visibility timeout; the outcome is logged (with the lead_id) before it is
  stored, so even an outcome Redis never took is on record.

The claim fence: right before the request leaves, the delivery checks that its
call would still end inside its claim's lease, counted from before the claim was
sent (:class:`dispatcher.store.execution.Fence`). A worker frozen between claim and
request past its lease, while another copy took the job over, does not send:
``lead.claim_lapsed``, and the job goes on as a copy would (:meth:`JobRunner.claim_lapsed`).

A copy whose predecessor claimed the job and vanished mid-call is *ambiguous*
(the lead may have been added) and is handled like a lost answer: with
``DISPATCHER_AMBIGUOUS=reconcile`` (the default) :mod:`workers.reconciler` looks
the lead up in VICIdial later and decides; every call carries the job's marker
(:func:`dispatcher.vicidial.reconcile.mark`) so that the look-up can recognise it.

Nothing is acknowledged without an outcome: an unexpected error becomes an
``internal`` dead letter holding the whole job (``ambiguous`` if the call had been
sent), and only a Redis failure hands the message back to the queue.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import structlog

from dispatcher.config import logs
from dispatcher.config.settings import Settings, get_settings
from dispatcher.model.dialers import Dialer
from dispatcher.model.errors import (
    AmbiguousFailure,
    BrokerUnavailable,
    CallFailed,
    ClaimLapsed,
    HTTPStatusError,
    InternalFailure,
    InvalidPayload,
    NetworkError,
    ServerRefused,
    UnknownDialer,
)
from dispatcher.model.jobs import Job, broker_envelope
from dispatcher.model.lead import Lead
from dispatcher.store.backend import Backend, get_backend
from dispatcher.store.connection import broker_errors
from dispatcher.store.deadletter import DeadLetterStore
from dispatcher.store.execution import FENCE_MARGIN_S, Claim, Fence, claim_clock, new_token
from dispatcher.store.outbox import notify_for
from dispatcher.store.redis_health import redis_availability
from dispatcher.store.stats import latency_bucket_field
from dispatcher.vicidial.reconcile import mark
from workers.outcomes import RetryPolicy
from workers.reconciler import Reconciler
from workers.vicidial import AddLeadResult, VicidialClient

__all__ = ["JobRunner", "TransientInfrastructureError", "get_runner"]

_log = logs.get_logger("workers.runner")
#: Longest a worker thread sleeps for a fleet rate-limit slot before it hands the
#: job back to the scheduler instead (it holds a broker message meanwhile).
MAX_RATE_WAIT_S = 5.0
#: A worker gives up holding a message (Redis away) this long before the
#: visibility timeout hands the message to another worker.
_HOLD_MARGIN_S = 5.0
#: How long to wait for a replica to confirm a `done` record (when there is one).
_WAIT_REPLICA_MS = 500
#: A delivery whose fence refused its call this often in a row hands the job back to
#: the queue instead of claiming it again (a worker that keeps stalling).
_MAX_LAPSES = 3
#: A job whose dialer this worker does not know is handed out again after about a
#: twentieth of its wait (30 s of the default 600, at least 1 s; jittered; never past
#: the wait's end), for a worker that knows it.
_DIALER_LOOK_AGAIN_S = (1.0, 30.0)
_T = TypeVar("_T")


class TransientInfrastructureError(Exception):
    """Redis failed under us: the message must go back to the queue, not be acked."""


@dataclass
class _Delivery:
    """One delivery of a job to this worker."""

    job: Job
    dialer: Dialer
    token: str
    #: monotonic time the message was taken: Redis writes are retried until
    #: the visibility timeout from here
    started: float
    #: the request to VICIdial was (perhaps) sent
    called: bool = False
    #: what the call's answer said, once known: "added", "failed" (not added) or
    #: "ambiguous"; None while unknown
    answer: str | None = None
    #: claim_clock() before the delivery's last claim command was sent
    asked_at: float = 0.0
    #: the fence of the claim granted (JobRunner.granted), checked before the request
    fence: Fence | None = None
    #: how often the fence refused this delivery's call
    lapses: int = 0


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        *,
        client: VicidialClient | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.keys = backend.keys
        self.execution = backend.execution.direct()
        self.dead_letters = DeadLetterStore(backend)
        self.dialers = settings.dialers
        default = self.dialers.resolve(None)
        #: one client (one connection pool) per dialer, made on first use
        self._clients: dict[str, VicidialClient] = {}
        self._clients_lock = threading.Lock()
        if client is not None:
            self._clients[client.server] = client
        #: the default dialer's name (its pause, breaker and rate-limit keys)
        self.server = client.server if client is not None else default.name if default else ""
        self.policy = RetryPolicy.from_settings(settings)
        self.rng = rng or random.Random()
        # host and pid name the process for people; the nonce makes it unique per
        # boot (with `init: true` every container's process is pid 1).
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # A claim lease covers the longest call (its deadline is the HTTP timeout),
        # a credentials probe before it, and margin.
        self.lease_s = 2 * settings.http_timeout_s + 5
        self.hold_s = max(self.lease_s, settings.visibility_timeout_s - _HOLD_MARGIN_S)
        self._ttl = int(settings.job_ttl_s)
        self._replicas_checked = -1e9
        self._replicas = 0
        self.reconciler = Reconciler(self)

    def close(self) -> None:
        for client in list(self._clients.values()):
            client.close()
        self.reconciler.close()

    @property
    def client(self) -> VicidialClient:
        """The default dialer's client."""
        return self.client_for(self.dialers.by_name[self.server])

    @client.setter
    def client(self, value: VicidialClient) -> None:
        self._clients[value.server] = value

    def client_for(self, dialer: Dialer) -> VicidialClient:
        client = self._clients.get(dialer.name)
        if client is None:
            with self._clients_lock:
                client = self._clients.get(dialer.name)
                if client is None:
                    client = VicidialClient(self.settings, dialer=dialer)
                    self._clients[dialer.name] = client
        return client

    def _lane(self, d: _Delivery) -> str:
        return self.keys.lane(d.dialer.name, d.job.priority)

    # -- entry point ---------------------------------------------------------------------

    def run(self, message: object) -> str:
        """Process one queue message; return the outcome name (for tests and metrics).

        Never raises for bad data, VICIdial failures or a bug in the job's path
        (those end as dead letters). Raises TransientInfrastructureError only when
        Redis itself fails, so that the broker message is returned to the queue
        instead of being acknowledged.
        """
        started = time.monotonic()

        def whole() -> str:
            try:
                job = Job.from_message(message, dialers=self.dialers)
            except UnknownDialer as exc:
                return self._unknown_dialer(exc, started)
            except InvalidPayload as exc:
                return self._invalid_payload(message, exc, started)
            d = self.delivery(job, started)
            return self.step(d, lambda: self._run(d))

        return self.step(None, whole)

    def delivery(self, job: Job, started: float) -> _Delivery:
        """A new delivery of a valid job (its own token), taken at monotonic ``started``."""
        dialer = self.dialers.resolve(job.dialer)
        assert dialer is not None  # Job.from_message checked it
        return _Delivery(job, dialer, new_token(), started)

    def step(self, d: _Delivery | None, body: Callable[[], str]) -> str:
        """Run part of a job's path with its log context; what escapes ends as a dead letter.

        An unexpected exception becomes an ``internal`` (or ``ambiguous``) dead
        letter; a Redis failure raises TransientInfrastructureError so that the
        message goes back to the queue. ``d`` None: before the job is known, an
        unexpected exception propagates.
        """
        structlog.contextvars.clear_contextvars()
        try:
            try:
                if d is not None:
                    self.bind(d)
                return body()
            except (TransientInfrastructureError, BrokerUnavailable, redis.RedisError):
                raise
            except Exception as exc:
                if d is None:
                    raise
                return self._internal(d, exc)
        except (BrokerUnavailable, redis.RedisError) as exc:
            # The episode itself is logged once (redis.unavailable); this job goes back.
            redis_availability().failed(exc, during="job")
            _log.warning("worker.job_returned", why="redis unavailable", error=str(exc))
            raise TransientInfrastructureError(str(exc)) from None
        finally:
            structlog.contextvars.clear_contextvars()

    @staticmethod
    def bind(d: _Delivery) -> None:
        """Every log line of the job names it (structlog's context variables)."""
        structlog.contextvars.bind_contextvars(
            job_id=d.job.job_id, agent_user=d.job.agent_user, dialer=d.dialer.name
        )

    def _run(self, d: _Delivery) -> str:
        return self.decide(d, self.claim(d))

    def claim(self, d: _Delivery) -> Claim:
        """Claim the job for this delivery, retrying while Redis is away."""
        # Built (and stamped) per attempt: the grant is one of the last attempt.
        return Claim.from_reply(
            self._persist(d.started, lambda: self.execution.call(*self.claim_args(d)))
        )

    #: the clock of the claim fence (dispatcher.store.execution.claim_clock)
    fence_clock = staticmethod(claim_clock)

    def claim_args(self, d: _Delivery) -> tuple[Any, ...]:
        """The delivery's ``claim`` command (dispatcher.store.execution), to be sent now.

        Stamps the delivery's fence clock: Redis grants the claim after this moment, so
        the claim's age is at most the time since (build the command right before
        sending it)."""
        d.asked_at = self.fence_clock()
        job = d.job
        return self.execution.claim_args(
            job.job_id,
            seq=job.seq,
            token=d.token,
            lease_s=self.lease_s,
            ttl=self._ttl,
            rate_interval_s=1.0 / d.dialer.rate_limit if d.dialer.rate_limit > 0 else 0.0,
            worker=self.worker_id,
            max_rate_wait_s=MAX_RATE_WAIT_S,
            server=d.dialer.name,
        )

    def granted(self, d: _Delivery, claim: Claim) -> None:
        """Fence the delivery's call by the claim Redis just answered (a lease of
        ``lease_s`` plus the reserved rate-limit slot's delay, from ``d.asked_at``)."""
        delay = claim.seconds if claim.verdict in ("ok", "probe_refused", "probe_outage") else 0.0
        d.fence = Fence(
            d.asked_at,
            lease_s=self.lease_s + delay,
            call_s=self.settings.http_timeout_s + FENCE_MARGIN_S,
            clock=self.fence_clock,
        )

    def calls_now(self, d: _Delivery, claim: Claim) -> bool:
        """Whether the claim leads straight to the call (after ``claim.seconds``), the
        common case :mod:`workers.engine` runs on its event loop."""
        return claim.verdict in ("ok", "probe_outage") and not self.reconciler.wants_lookup(d.job)

    def decide(self, d: _Delivery, claim: Claim) -> str:
        """Everything after the claim: the call, or what the verdict says instead."""
        self.granted(d, claim)
        job = d.job
        verdict = claim.verdict
        if verdict == "done" and job.reconcile is not None and job.reconcile.step == "verify":
            return self.reconciler.verify(d, claim.detail)
        if verdict == "done":
            self.backend.redis.hincrby(self.keys.stats, "duplicates_suppressed", 1)
            _log.info("lead.duplicate_suppressed", lead_id=claim.detail or None, seq=job.seq)
            return "duplicate_suppressed"
        if verdict == "stale":
            _log.info("lead.stale_copy_dropped", seq=job.seq, current_seq=int(claim.detail))
            return "stale"
        if verdict == "busy":
            # Another copy is calling for this very publication (a redelivery raced
            # it): look again when its lease ends, never call in parallel.
            return self._reschedule(d, delay=claim.seconds + 1.0, why="busy", held=False)
        if verdict == "paused":
            left = claim.seconds
            if claim.extra == "network":
                # An outage pause: look again soon (a probe call may lift it early;
                # a look costs one Redis call, not a VICIdial call).
                delay = min(left, self.settings.breaker_pause_s)
                delay += self.rng.uniform(0, min(1.0, self.settings.breaker_pause_s))
            else:
                # Refused credentials: nothing changes before the cool-down ends;
                # spread the held jobs a little so they do not return at once.
                delay = left + self.rng.uniform(0, min(30.0, self.settings.pause_s / 10))
            return self._reschedule(d, delay=delay, why=claim.extra or "paused", held=False)
        if verdict == "throttled":
            return self._reschedule(d, delay=claim.seconds, why="rate_limit", held=False)
        if verdict == "orphaned":
            # The copy that claimed this publication vanished between claim and
            # outcome; this copy took the claim over and decides now.
            return self._failed(
                d, AmbiguousFailure("worker lost during the call: the lead may have been added")
            )
        if claim.seconds > 0:
            time.sleep(claim.seconds)
        if verdict == "probe_refused" and not self._probe(d):
            return "deferred"
        if self.reconciler.wants_lookup(job):
            return self.reconciler.lookup(d)
        return self._call(d)

    # -- the call ------------------------------------------------------------------------

    def attempt(self, d: _Delivery) -> Lead:
        """Log the attempt and mark the delivery called: the lead to send (with its marker)."""
        job = d.job
        _log.info("lead.attempt", attempt=job.attempts + 1, phone=job.lead.phone_number)
        d.called = True
        return mark(job.lead, job.job_id, self.settings.marker_field)

    def _call(self, d: _Delivery) -> str:
        job = d.job
        lead = self.attempt(d)
        try:
            result, latency_ms = self.client_for(d.dialer).add_lead(
                lead,
                dnc_check=job.dnc_check,
                campaign_dnc_check=job.campaign_dnc_check,
                fence=d.fence,
            )
        except ClaimLapsed:
            return self.claim_lapsed(d)
        except CallFailed as exc:
            d.answer = "ambiguous" if isinstance(exc, AmbiguousFailure) else "failed"
            return self._failed(d, exc)
        d.answer = "added"
        return self._added(d, result, latency_ms)

    def claim_lapsed(self, d: _Delivery) -> str:
        """The fence refused the call (nothing was sent): the job goes on as a copy would.

        The claim is asked again with the same token: still ours (nobody took the job
        over meanwhile), it is granted a fresh lease and the call goes ahead under a
        new fence; otherwise the record says who holds it (busy: look again later),
        that the job moved on (stale: dropped) or that it is done (acknowledged, no
        call). A delivery refused again and again hands the job back to the queue.
        """
        fence = d.fence
        d.called, d.answer, d.fence = False, None, None
        d.lapses += 1
        _log.warning(
            "lead.claim_lapsed",
            sent=False,
            age_s=round(fence.age(), 3) if fence is not None else None,
            lease_s=round(fence.lease_s, 3) if fence is not None else None,
            lapses=d.lapses,
        )
        if d.lapses >= _MAX_LAPSES:
            return self._reschedule(d, delay=0.0, why="claim_lapsed", held=True)
        return self._run(d)

    def _added(self, d: _Delivery, result: AddLeadResult, latency_ms: float) -> str:
        self.log_added(d, result, latency_ms)
        return self.store_added(d, result, latency_ms)

    def log_added(self, d: _Delivery, result: AddLeadResult, latency_ms: float) -> None:
        # On record before it is stored: if Redis never takes it, the log still
        # says which lead VICIdial made for this job.
        _log.info(
            "lead.added",
            attempt=d.job.attempts + 1,
            phone=d.job.lead.phone_number,
            lead_id=result.lead_id,
            list_id=result.list_id,
            campaign=result.campaign,
            latency_ms=round(latency_ms, 1),
            notes=list(result.notes) or None,
        )

    def stores_added_at_once(self, d: _Delivery) -> bool:
        """Whether storing this success is one quick write (no reconcile step, no replica
        to wait for): the event loop of :mod:`workers.engine` does those itself."""
        return d.job.reconcile is None and not self._has_replicas()

    def store_added(self, d: _Delivery, result: AddLeadResult, latency_ms: float) -> str:
        """Store the success, retrying while Redis is away (waiting for a replica if any)."""
        args = self.succeed_args(d, result, latency_ms)

        def write() -> Any:
            if not self._has_replicas():
                return self.execution.call(*args)
            # After a failover only what reached a replica survives: wait for one.
            pipe = self.backend.redis.pipeline(transaction=False)
            self.execution.call(*args, client=pipe)
            pipe.execute_command("WAIT", 1, _WAIT_REPLICA_MS)
            reply, acked = pipe.execute()
            if not int(acked):
                _log.warning("worker.replica_not_confirmed", timeout_ms=_WAIT_REPLICA_MS)
            return reply

        return self.after_added(d, result, self._persist(d.started, write))

    def succeed_args(
        self, d: _Delivery, result: AddLeadResult, latency_ms: float
    ) -> tuple[Any, ...]:
        """The delivery's ``succeed`` command (dispatcher.store.execution)."""
        return self.execution.succeed_args(
            d.job.job_id,
            token=d.token,
            lead_id=result.lead_id,
            list_id=result.list_id,
            campaign=result.campaign,
            done_ttl=int(self.settings.done_ttl_s),
            ttl=self._ttl,
            attempts=d.job.attempts + 1,
            latency_field=latency_bucket_field(latency_ms / 1000),
            latency_ms=latency_ms,
            server=d.dialer.name,
            notify=notify_for(d.job, self.settings, dialer=d.dialer.name),
        )

    def after_added(self, d: _Delivery, result: AddLeadResult, stored: Any) -> str:
        """What the ``succeed`` reply says: added, or a duplicate found."""
        job = d.job
        reply = [_text(x) for x in stored]
        if reply[0] == "same":
            # Recorded done with this very lead already (a look-up found it before
            # this late answer was stored): the same lead, not a copy of it.
            _log.info("lead.already_recorded", lead_id=result.lead_id)
            return "added"
        if reply[0] == "duplicate":
            _log.error(
                "lead.duplicate_detected",
                lead_id=reply[1],
                lead_ids=[reply[1], result.lead_id],
                phone=job.lead.phone_number,
            )
            return "duplicate"
        if reply[0] == "ok":
            if reply[1]:
                _log.warning("lead.dead_letter_retired", reason=reply[1], lead_id=result.lead_id)
            if reply[2] == "1":
                _log.warning("vicidial.resumed", server=d.dialer.name, after="outage")
            if job.reconcile is not None:
                self.reconciler.after_added(d, result.lead_id)
        return "added"

    def _failed(self, d: _Delivery, error: CallFailed) -> str:
        job = d.job
        now = time.time()
        paused_s: float | None = None
        if isinstance(error, NetworkError | HTTPStatusError):
            paused_s = self._network_failure(d)
        if isinstance(error, ServerRefused):
            self._pause_refused(d, error)
        failed = job.evolve(
            attempts=job.attempts + 1,
            first_failed_at=job.first_failed_at if job.first_failed_at is not None else now,
        )
        if isinstance(error, AmbiguousFailure) and self.settings.ambiguous == "reconcile":
            return self.reconciler.later(d, failed, error)
        decision = self.policy.decide(error, failed, now=now, rng=self.rng)
        failed = failed.evolve(agent_wait_since=decision.agent_wait_since)
        if decision.retry:
            delay = decision.delay_s
            if paused_s is not None:
                # The breaker is open: the next attempt waits for the pause to end.
                delay = max(delay, paused_s + self.rng.uniform(0, 1.0))
            return self._retry(d, failed, error, delay=delay)
        return self._dead(d, failed, error, now=now)

    # -- outcomes ------------------------------------------------------------------------

    def _retry(self, d: _Delivery, job: Job, error: CallFailed, *, delay: float) -> str:
        envelope = broker_envelope(job.evolve(seq=job.seq + 1).to_message(), queue=self._lane(d))
        reply = self._persist(
            d.started,
            lambda: self.execution.retry(
                job.job_id,
                token=d.token,
                seq=job.seq,
                envelope=envelope,
                delay_s=delay,
                ttl=self._ttl,
                attempts=job.attempts,
                reason=error.reason,
                error=error.line,
                http_status=error.http_status,
                server=d.dialer.name,
            ),
        )
        if reply[0] not in ("ok", "again"):
            return self._superseded(reply[0], "retry", error)
        _log.info(
            "lead.retry_scheduled",
            attempt=job.attempts,
            reason=error.reason,
            error=error.line,
            http_status=error.http_status,
            delay_s=round(delay, 3),
        )
        return "retrying"

    def _dead(self, d: _Delivery, job: Job, error: CallFailed, *, now: float) -> str:
        letter = self.dead_letters.letter(
            job=job.to_message(),
            reason=error.reason,
            error=error.line,
            http_status=error.http_status,
            attempts=job.attempts,
            first_failed_at=job.first_failed_at,
            now=now,
        )
        result = self._persist(
            d.started,
            lambda: self.dead_letters.write(
                letter, token=d.token, seq=job.seq, server=d.dialer.name
            ),
        )
        if result not in ("ok", "again"):
            return self._superseded(result, "dead_letter", error)
        _log.warning(
            "lead.dead_lettered",
            attempt=job.attempts,
            phone=job.lead.phone_number,
            reason=error.reason,
            error=error.line,
            http_status=error.http_status,
        )
        return "dead"

    def _superseded(self, result: str, outcome: str, error: CallFailed) -> str:
        """The record moved on without us (added, or taken over by another copy)."""
        if result == "done":
            _log.info("lead.duplicate_suppressed", outcome=outcome, reason=error.reason)
            return "duplicate_suppressed"
        _log.warning("lead.outcome_superseded", outcome=outcome, reason=error.reason, why=result)
        return "superseded"

    def _reschedule(self, d: _Delivery, *, delay: float, why: str, held: bool) -> str:
        """Put this same publication (same seq) back for later; no attempt is used.

        ``held``: this copy holds the claim (it is released); otherwise the
        record is left to whoever holds it.
        """
        job = d.job
        envelope = broker_envelope(job.to_message(), queue=self._lane(d))
        reply = self._persist(
            d.started,
            lambda: self.execution.defer(
                job.job_id,
                token=d.token if held else "",
                seq=job.seq,
                envelope=envelope,
                delay_s=max(0.0, delay),
                ttl=self._ttl,
            ),
        )
        if reply[0] == "done":
            _log.info("lead.duplicate_suppressed", seq=job.seq)
            return "duplicate_suppressed"
        if reply[0] == "stale":
            _log.info("lead.stale_copy_dropped", seq=job.seq)
            return "stale"
        _log.info("lead.delayed", why=why, delay_s=round(max(0.0, delay), 3))
        return "deferred"

    def _internal(self, d: _Delivery, exc: Exception) -> str:
        """A bug on the job's path: dead letter with the whole job, never a silent ack."""
        _log.error(
            "worker.internal_error",
            error=f"{type(exc).__name__}: {exc}",
            exception="".join(traceback.format_exception(exc))[-4000:],
        )
        job = d.job
        failed = job.evolve(attempts=job.attempts + (1 if d.called else 0))
        error: CallFailed
        if d.called and d.answer != "failed":
            # The lead may be (or is) in VICIdial: never to be replayed blindly.
            error = AmbiguousFailure(
                f"{type(exc).__name__} in the worker after the call "
                f"(answer: {d.answer or 'unknown'}): {exc}"
            )
        else:
            error = InternalFailure(f"{type(exc).__name__}: {exc}")
        return self._dead(d, failed, error, now=time.time())

    def _unknown_dialer(self, exc: UnknownDialer, started: float) -> str:
        """A job whose dialer this worker does not know (as the job knows it): nothing is
        claimed or called. The same publication waits for a worker that knows the
        dialer, in a lane of this worker's (where it was found: a worker that knows the
        dialer and serves that lane takes it); after ``DISPATCHER_UNKNOWN_DIALER_WAIT_S``
        it becomes the dead letter ``unknown_dialer`` under its own job id, replayable
        once the dialers files agree."""
        job = exc.job
        assert isinstance(job, Job)
        structlog.contextvars.bind_contextvars(
            job_id=job.job_id, agent_user=job.agent_user, dialer=exc.dialer or None
        )
        settings = self.settings
        served = [d.name for d in settings.served_dialers()]
        default = self.dialers.resolve(None)
        if job.dialer in served:
            lane_dialer = job.dialer
        elif default is not None and default.name in served:
            lane_dialer = default.name
        else:
            lane_dialer = served[0]
        envelope = broker_envelope(
            job.to_message(), queue=self.keys.lane(lane_dialer, job.priority)
        )
        low, high = _DIALER_LOOK_AGAIN_S
        delay = min(high, max(low, settings.unknown_dialer_wait_s / 20))
        delay *= self.rng.uniform(0.5, 1.0)
        reply = self._persist(
            started,
            lambda: self.execution.await_dialer(
                job.job_id,
                seq=job.seq,
                envelope=envelope,
                delay_s=delay,
                wait_s=settings.unknown_dialer_wait_s,
                dialer=exc.dialer,
                error=exc.line,
                ttl=self._ttl,
            ),
        )
        if reply[0] == "done":
            _log.info("lead.duplicate_suppressed", lead_id=reply[1] or None, seq=job.seq)
            return "duplicate_suppressed"
        if reply[0] == "stale":
            _log.info("lead.stale_copy_dropped", seq=job.seq)
            return "stale"
        if reply[0] == "waiting":
            _log.warning(
                "lead.waiting_for_dialer",
                reason=exc.reason,
                error=exc.line,
                delay_s=round(float(reply[1]) - time.time(), 3) if reply[1] else None,
                wait_until=float(reply[2]),
            )
            return "waiting"
        # The wait is over: the replayable letter, under the job's own id.
        waited = f"no worker that knows it took the job within {settings.unknown_dialer_wait_s:g} s"
        error = UnknownDialer(f"{exc.line}; {waited}", job=job, dialer=exc.dialer)
        letter = self.dead_letters.letter(
            job=job.to_message(),
            reason=error.reason,
            error=error.line,
            http_status=None,
            attempts=job.attempts,
            first_failed_at=job.first_failed_at,
            now=time.time(),
        )
        result = self._persist(
            started, lambda: self.dead_letters.write(letter, token="", seq=job.seq)
        )
        if result not in ("ok", "again"):
            return self._superseded(result, "dead_letter", error)
        _log.warning(
            "lead.dead_lettered",
            attempt=job.attempts,
            phone=job.lead.phone_number,
            reason=error.reason,
            error=error.line,
        )
        return "dead"

    def _invalid_payload(self, message: object, exc: InvalidPayload, started: float) -> str:
        job: dict[str, Any]
        job_id: str | None = None
        if isinstance(message, Mapping):
            job = dict(message)
            raw_id = message.get("job_id")
            job_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 100 else None
        else:
            job = {"raw": message if isinstance(message, str) else repr(message)[:10_000]}
        letter = self._persist(
            started,
            lambda: self.dead_letters.poison(raw=job, error=exc.line, job_id=job_id),
        )
        _log.warning(
            "lead.dead_lettered", job_id=letter.job_id, reason="invalid_payload", error=exc.line
        )
        return "dead"

    def _persist(self, started: float, write: Callable[[], _T]) -> _T:
        """Run a Redis write, retrying while Redis is away (a restart, a stall, a full
        memory), for as long as this worker may hold the message.

        Every write here is safe to repeat: the token makes a repeated claim or
        outcome recognisable. Past the visibility timeout another worker gets the
        message, so this one gives up and lets it go back to the queue.
        """
        deadline = started + self.hold_s
        delay = 0.1
        availability = redis_availability()
        while True:
            try:
                with broker_errors(self.settings):
                    result = write()
            except BrokerUnavailable as exc:
                # Logged once per episode (redis.unavailable), not once per try.
                availability.failed(exc, during="job")
                if time.monotonic() + delay > deadline:
                    raise
                _log.debug("worker.redis_write_retry", delay_s=delay, error=str(exc))
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                availability.ok()
                return result

    def _has_replicas(self) -> bool:
        """Whether Redis has a replica to wait for (checked every 30 s)."""
        now = time.monotonic()
        if now - self._replicas_checked >= 30.0:
            self._replicas_checked = now
            try:
                info = self.backend.redis.info("replication")
                self._replicas = int(info.get("connected_slaves", 0) or 0)
            except redis.RedisError:
                pass
        return self._replicas > 0

    # -- protecting VICIdial -------------------------------------------------------------

    def _network_failure(self, d: _Delivery) -> float | None:
        """Count a consecutive network failure; the seconds paused if the breaker is open."""
        _count, paused_s, tripped = self._persist(
            d.started,
            lambda: self.execution.network_failure(
                d.dialer.name,
                threshold=self.settings.breaker_threshold,
                base_s=self.settings.breaker_pause_s,
                max_s=self.settings.retry_cap_s,
            ),
        )
        if tripped:
            _log.warning(
                "vicidial.paused",
                server=d.dialer.name,
                reason="network",
                delay_s=round(paused_s or 0.0, 3),
            )
        return paused_s

    def _pause_refused(self, d: _Delivery, error: CallFailed) -> None:
        self._persist(
            d.started,
            lambda: self.execution.pause(
                d.dialer.name,
                seconds=self.settings.pause_s,
                reason=error.reason,
                error=error.line,
            ),
        )
        _log.warning(
            "vicidial.paused",
            server=d.dialer.name,
            reason=error.reason,
            error=error.line,
            delay_s=self.settings.pause_s,
        )

    def _probe(self, d: _Delivery) -> bool:
        """After a refusal cool-down: True if the credentials work again (pause lifted)."""
        name = d.dialer.name
        try:
            self.client_for(d.dialer).probe_credentials()
        except ServerRefused as exc:
            self._pause_refused(d, exc)
            self._reschedule(d, delay=self.settings.pause_s, why=exc.reason, held=True)
            return False
        except CallFailed as exc:
            # VICIdial unreachable or confused: keep the pause a little longer.
            wait = self.settings.breaker_pause_s
            self._persist(d.started, lambda: self.execution.extend_pause(name, seconds=wait))
            self._reschedule(d, delay=wait, why=exc.reason, held=True)
            return False
        self._persist(d.started, lambda: self.execution.resume(name))
        _log.warning("vicidial.resumed", server=name, after="credentials probe")
        return True


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value) if value is not None else ""


_runner: JobRunner | None = None
_runner_pid = 0
_lock = threading.Lock()


def get_runner() -> JobRunner:
    """The process's runner: one httpx.Client and one Redis pool per process.

    Created lazily and again after a fork (prefork children must not share the
    parent's sockets).
    """
    global _runner, _runner_pid
    if _runner is None or _runner_pid != os.getpid():
        with _lock:
            if _runner is None or _runner_pid != os.getpid():
                settings = get_settings()
                _runner = JobRunner(settings, get_backend(settings))
                _runner_pid = os.getpid()
    return _runner
