"""One job, start to end: claim -> call -> classify -> added / retry / dead letter.

:class:`JobRunner` is the body of the Celery task, kept free of Celery so that it
reads top to bottom. One runner per worker process (one ``httpx.Client``, one
Redis pool), shared by the pool's threads.

Redis round trips per added lead: one ``CLAIM`` script (execution record,
pause, rate limit) and one ``SUCCESS`` script. Failures cost one or two more.

Exactly-once effect: the execution record of a job says ``done`` once VICIdial
answered SUCCESS, and every later copy of the job (a redelivery after a worker
died, a stale copy, a double publish, a replay) is acknowledged without a call
and logged as ``lead.duplicate_suppressed``. A copy whose predecessor claimed
the job and vanished mid-call is *ambiguous* (the lead may have been added) and
is handled like a lost answer: dead letter ``ambiguous`` by default.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
import structlog

from dispatcher import logs
from dispatcher.backend import Backend
from dispatcher.connection import broker_errors
from dispatcher.deadletter import DeadLetterStore
from dispatcher.errors import (
    AmbiguousFailure,
    BrokerUnavailable,
    CallFailed,
    HTTPStatusError,
    InvalidPayload,
    NetworkError,
    ServerRefused,
)
from dispatcher.jobs import Job, broker_envelope
from dispatcher.settings import Settings
from dispatcher.stats import latency_bucket_field
from workers.outcomes import RetryPolicy
from workers.vicidial import AddLeadResult, VicidialClient

__all__ = ["JobRunner", "TransientInfrastructureError"]

_log = logs.get_logger("workers.runner")
#: Longest a worker thread sleeps for a fleet rate-limit slot before it hands the
#: job back to the scheduler instead (it holds a broker message meanwhile).
MAX_RATE_WAIT_S = 5.0


class TransientInfrastructureError(Exception):
    """Redis failed under us: the message must go back to the queue, not be acked."""


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
        self.scripts = backend.scripts
        self.dead_letters = DeadLetterStore(backend)
        self.client = client or VicidialClient(settings)
        self.server = self.client.server
        self.policy = RetryPolicy.from_settings(settings)
        self.rng = rng or random.Random()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        # A claim lease covers the longest call: connect + read timeouts and margin.
        self.lease_s = 2 * settings.http_timeout_s + 5
        self.rate_interval = 1.0 / settings.rate_limit if settings.rate_limit > 0 else 0.0

    # -- entry point ---------------------------------------------------------------------

    def run(self, message: object) -> str:
        """Process one queue message; return the outcome name (for tests and metrics).

        Never raises for bad data or VICIdial failures. Raises
        TransientInfrastructureError only when Redis itself fails, so that the
        broker message is returned to the queue instead of being acknowledged.
        """
        structlog.contextvars.clear_contextvars()
        try:
            try:
                job = Job.from_message(message)
            except InvalidPayload as exc:
                return self._invalid_payload(message, exc)
            structlog.contextvars.bind_contextvars(job_id=job.job_id, agent_user=job.agent_user)
            return self._run(job)
        except (BrokerUnavailable, redis.RedisError) as exc:
            _log.error("worker.redis_unavailable", error=str(exc))
            raise TransientInfrastructureError(str(exc)) from None
        finally:
            structlog.contextvars.clear_contextvars()

    def _run(self, job: Job) -> str:
        now = time.time()
        with broker_errors(self.settings):
            verdict, detail, *rest = self.scripts.claim(
                keys=[
                    self.keys.execution(job.job_id),
                    self.keys.job(job.job_id),
                    self.keys.pause(self.server),
                    self.keys.rate(self.server),
                ],
                args=[
                    f"{now:.6f}",
                    job.seq,
                    self.lease_s,
                    int(self.settings.job_ttl_s),
                    self.rate_interval,
                    self.worker_id,
                    MAX_RATE_WAIT_S,
                ],
            )
        verdict = _text(verdict)
        detail = _text(detail)
        if verdict == "done":
            self.backend.redis.hincrby(self.keys.stats, "duplicates_suppressed", 1)
            _log.info("lead.duplicate_suppressed", lead_id=detail or None, seq=job.seq)
            return "duplicate_suppressed"
        if verdict == "stale":
            _log.info("lead.stale_copy_dropped", seq=job.seq, current_seq=int(detail))
            return "stale"
        if verdict == "busy":
            # Another worker is calling for this very publication (a redelivery
            # raced it): look again when its lease ends, never call in parallel.
            self._reschedule(job, due=float(detail) + 1.0, why="busy")
            return "deferred"
        if verdict == "paused":
            reason = _text(rest[0]) if rest else "paused"
            until = float(detail)
            if reason == "network":
                # An outage pause: look again soon (a probe call may lift it early;
                # a look costs one Redis call, not a VICIdial call).
                due = min(until, now + self.settings.breaker_pause_s)
                due += self.rng.uniform(0, min(1.0, self.settings.breaker_pause_s))
            else:
                # Refused credentials: nothing changes before the cool-down ends;
                # spread the held jobs a little so they do not return at once.
                due = until + self.rng.uniform(0, min(30.0, self.settings.pause_s / 10))
            self._reschedule(job, due=due, why=reason)
            return "deferred"
        if verdict == "throttled":
            self._reschedule(job, due=now + float(detail), why="rate_limit")
            return "deferred"
        if verdict == "orphaned":
            # The worker that claimed this publication died between claim and outcome.
            return self._failed(
                job,
                AmbiguousFailure("worker lost during the call: the lead may have been added"),
            )
        delay = float(detail)
        if delay > 0:
            time.sleep(delay)
        if verdict == "probe_refused" and not self._probe(job):
            return "deferred"
        return self._call(job)

    # -- the call ------------------------------------------------------------------------

    def _call(self, job: Job) -> str:
        attempt = job.attempts + 1
        _log.info("lead.attempt", attempt=attempt, phone=job.lead.phone_number)
        try:
            result, latency_ms = self.client.add_lead(
                job.lead, dnc_check=job.dnc_check, campaign_dnc_check=job.campaign_dnc_check
            )
        except CallFailed as exc:
            return self._failed(job, exc)
        return self._added(job, result, latency_ms)

    def _added(self, job: Job, result: AddLeadResult, latency_ms: float) -> str:
        now = time.time()
        attempts = job.attempts + 1
        resumed = self._persist(
            lambda: self.scripts.success(
                keys=[
                    self.keys.execution(job.job_id),
                    self.keys.job(job.job_id),
                    self.keys.stats,
                    self.keys.breaker(self.server),
                    self.keys.pause(self.server),
                ],
                args=[
                    result.lead_id,
                    result.list_id,
                    result.campaign,
                    f"{now:.6f}",
                    int(self.settings.done_ttl_s),
                    int(self.settings.job_ttl_s),
                    attempts,
                    latency_bucket_field(latency_ms / 1000),
                    f"{latency_ms:.3f}",
                ],
            )
        )
        if int(resumed):
            _log.warning("vicidial.resumed", server=self.server, after="outage")
        _log.info(
            "lead.added",
            attempt=attempts,
            phone=job.lead.phone_number,
            lead_id=result.lead_id,
            list_id=result.list_id,
            campaign=result.campaign,
            latency_ms=round(latency_ms, 1),
            notes=list(result.notes) or None,
        )
        return "added"

    def _failed(self, job: Job, error: CallFailed) -> str:
        now = time.time()
        paused_until: float | None = None
        if isinstance(error, NetworkError | HTTPStatusError):
            paused_until = self._network_failure(now)
        if isinstance(error, ServerRefused):
            self._pause_refused(error, now)
        failed = job.evolve(
            attempts=job.attempts + 1,
            first_failed_at=job.first_failed_at if job.first_failed_at is not None else now,
        )
        decision = self.policy.decide(error, failed, now=now, rng=self.rng)
        failed = failed.evolve(agent_wait_since=decision.agent_wait_since)
        if decision.retry:
            delay = decision.delay_s
            if paused_until is not None:
                # The breaker is open: the next attempt waits for the pause to end.
                delay = max(delay, paused_until - now + self.rng.uniform(0, 1.0))
            self._retry(failed, error, delay=delay, now=now)
            return "retrying"
        self._dead(failed, error, now=now)
        return "dead"

    # -- outcomes ------------------------------------------------------------------------

    def _retry(self, job: Job, error: CallFailed, *, delay: float, now: float) -> None:
        due = now + delay
        nxt = job.evolve(seq=job.seq + 1)
        envelope = broker_envelope(nxt.to_message(), queue=self.keys.queue)

        def write() -> None:
            pipe = self.backend.redis.pipeline(transaction=True)
            pipe.zadd(self.keys.scheduled, {envelope: due})
            pipe.hset(
                self.keys.execution(job.job_id), mapping={"state": "scheduled", "seq": nxt.seq}
            )
            pipe.hdel(self.keys.execution(job.job_id), "lease_until")
            pipe.hset(
                self.keys.job(job.job_id),
                mapping={
                    "state": "retrying",
                    "attempts": job.attempts,
                    "reason": error.reason,
                    "error": error.line,
                    "http_status": "" if error.http_status is None else error.http_status,
                    "next_attempt_at": f"{due:.6f}",
                    "updated_at": f"{now:.6f}",
                },
            )
            pipe.hincrby(self.keys.stats, "retries", 1)
            if error.http_status == 200:
                # VICIdial answered: whatever else, the network failures are not consecutive.
                pipe.delete(self.keys.breaker(self.server))
            pipe.execute()

        self._persist(write)
        _log.info(
            "lead.retry_scheduled",
            attempt=job.attempts,
            reason=error.reason,
            error=error.line,
            http_status=error.http_status,
            delay_s=round(delay, 3),
        )

    def _dead(self, job: Job, error: CallFailed, *, now: float) -> None:
        self._persist(
            lambda: self.dead_letters.record(
                job=job.to_message(),
                reason=error.reason,
                error=error.line,
                http_status=error.http_status,
                attempts=job.attempts,
                first_failed_at=job.first_failed_at,
                now=now,
                next_seq=job.seq + 1,
            )
        )
        if error.http_status == 200:
            self.backend.redis.delete(self.keys.breaker(self.server))
        _log.warning(
            "lead.dead_lettered",
            attempt=job.attempts,
            phone=job.lead.phone_number,
            reason=error.reason,
            error=error.line,
            http_status=error.http_status,
        )

    def _reschedule(self, job: Job, *, due: float, why: str) -> None:
        """Put this same publication (same seq) back for later, no attempt consumed."""
        envelope = broker_envelope(job.to_message(), queue=self.keys.queue)
        with broker_errors(self.settings):
            pipe = self.backend.redis.pipeline(transaction=True)
            pipe.zadd(self.keys.scheduled, {envelope: due})
            if why != "busy":
                # Release our claim (if any) so the rescheduled copy may claim again.
                pipe.hset(
                    self.keys.execution(job.job_id), mapping={"state": "scheduled", "seq": job.seq}
                )
                pipe.hdel(self.keys.execution(job.job_id), "lease_until")
                pipe.hset(
                    self.keys.job(job.job_id),
                    mapping={"state": "retrying", "next_attempt_at": f"{due:.6f}"},
                )
            pipe.execute()
        _log.info("lead.delayed", why=why, delay_s=round(max(0.0, due - time.time()), 3))

    def _invalid_payload(self, message: object, exc: InvalidPayload) -> str:
        job: dict[str, Any]
        job_id: str | None = None
        if isinstance(message, Mapping):
            job = dict(message)
            raw_id = message.get("job_id")
            job_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 100 else None
        else:
            job = {"raw": message if isinstance(message, str) else repr(message)[:10_000]}
        letter = self.dead_letters.record(
            job=job,
            reason="invalid_payload",
            error=exc.line,
            http_status=None,
            attempts=0,
            first_failed_at=None,
            job_id=job_id,
        )
        _log.warning(
            "lead.dead_lettered", job_id=letter.job_id, reason="invalid_payload", error=exc.line
        )
        return "dead"

    def _persist(self, write: Callable[[], Any]) -> Any:
        """Run an outcome write, retrying while Redis is briefly away (a restart).

        The call to VICIdial already happened: losing its outcome would turn a
        clean success into an ambiguous job. Bounded by the claim lease, after
        which another worker may take the job over.
        """
        deadline = time.monotonic() + self.lease_s
        delay = 0.1
        while True:
            try:
                with broker_errors(self.settings):
                    return write()
            except BrokerUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
                _log.warning("worker.outcome_write_retry", delay_s=delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- protecting VICIdial -------------------------------------------------------------

    def _network_failure(self, now: float) -> float | None:
        """Count a consecutive network failure; the pause end if the breaker is open."""
        with broker_errors(self.settings):
            _count, until, tripped = self.scripts.network_failure(
                keys=[self.keys.breaker(self.server), self.keys.pause(self.server)],
                args=[
                    f"{now:.6f}",
                    self.settings.breaker_threshold,
                    self.settings.breaker_pause_s,
                    self.settings.retry_cap_s,
                ],
            )
        until_s = _text(until)
        if int(tripped):
            _log.warning(
                "vicidial.paused",
                server=self.server,
                reason="network",
                until=until_s,
                delay_s=round(float(until_s) - now, 3),
            )
        return float(until_s) if until_s else None

    def _pause_refused(self, error: CallFailed, now: float) -> None:
        until = now + self.settings.pause_s
        with broker_errors(self.settings):
            self.backend.redis.hset(
                self.keys.pause(self.server),
                mapping={
                    "until": f"{until:.6f}",
                    "kind": "refused",
                    "reason": error.reason,
                    "since": f"{now:.6f}",
                    "error": error.line,
                },
            )
        _log.warning(
            "vicidial.paused",
            server=self.server,
            reason=error.reason,
            error=error.line,
            delay_s=self.settings.pause_s,
        )

    def _probe(self, job: Job) -> bool:
        """After a refusal cool-down: True if the credentials work again (pause lifted)."""
        now = time.time()
        try:
            self.client.probe_credentials()
        except ServerRefused as exc:
            self._pause_refused(exc, now)
            self._reschedule(job, due=now + self.settings.pause_s, why=exc.reason)
            return False
        except CallFailed as exc:
            # VICIdial unreachable or confused: keep the pause a little longer.
            retry_at = now + self.settings.breaker_pause_s
            self.backend.redis.hset(self.keys.pause(self.server), "until", f"{retry_at:.6f}")
            self._reschedule(job, due=retry_at, why=exc.reason)
            return False
        with broker_errors(self.settings):
            self.backend.redis.delete(self.keys.pause(self.server))
        _log.warning("vicidial.resumed", server=self.server, after="credentials probe")
        return True


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value) if value is not None else ""
