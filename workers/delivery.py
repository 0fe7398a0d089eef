"""One delivery of a job to this worker, and every write it makes to the job's record.

A message taken from the queue becomes a :class:`Delivery`: the job, its dialer, and a
fresh token. The job's execution record (``dispatcher/store/execution.lua``) is claimed
with that token, and every outcome is a compare-and-set on it, so a copy that lost its
claim cannot overwrite what the claim's new holder decided, and a write repeated after
a lost reply is recognised ("again", "own"). :class:`Writes` holds those writes (the
claim, a success, a retry, a look-up scheduled, a deferral, a dead letter, a pause),
each retried while Redis is away for as long as this worker holds the message
(:meth:`Writes.persist`), its answer typed (:mod:`dispatcher.store.replies`) and logged
here, once (a success before it is stored). A lead for a list (add_lead) is written the
same way; its claim also obeys the pause of the dialer's list jobs alone and takes the
phone's add_lead lock (at most one add_lead in flight per dialer and phone, fleet-wide:
VICIdial's duplicate check has no lock), and its outcome may be ``duplicate``
(:meth:`Writes.duplicate`). One :class:`Writes` per worker process
serves the three that decide what to write: the runner (``workers/runner.py``), the
lead engine (``workers/engine.py``) and the reconciler (``workers/reconciler.py``).
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import structlog

from dispatcher.config import logs
from dispatcher.config.settings import Settings
from dispatcher.model.dialers import Dialer
from dispatcher.model.errors import (
    AmbiguousFailure,
    BrokerUnavailable,
    CallFailed,
    InternalFailure,
    InvalidPayload,
    UnknownDialer,
)
from dispatcher.model.jobs import Job, Reconcile, broker_envelope
from dispatcher.model.lead import Lead
from dispatcher.model.marker import mark
from dispatcher.store.backend import Backend
from dispatcher.store.connection import broker_errors
from dispatcher.store.deadletter import DeadLetterStore
from dispatcher.store.execution import FENCE_MARGIN_S, Fence, claim_clock, new_token
from dispatcher.store.outbox import notify_for
from dispatcher.store.phone_index import cached_index_key, index_key, phone_key
from dispatcher.store.redis_health import redis_availability
from dispatcher.store.replies import Claim, DialerWait, Stored, Written
from dispatcher.store.stats import latency_bucket_field
from workers.list_answer import DuplicateFound, ListLeadAdded
from workers.vicidial import AddLeadResult

__all__ = ["MAX_RATE_WAIT_S", "Added", "Delivery", "Writes"]

#: What a call that added the lead answered: external_add_lead's SUCCESS, or add_lead's.
Added = AddLeadResult | ListLeadAdded

_log = logs.get_logger("workers.delivery")
#: Longest a worker thread sleeps for a fleet rate-limit slot before it hands the
#: job back to the scheduler instead (it holds a broker message meanwhile).
MAX_RATE_WAIT_S = 5.0
#: A worker gives up holding a message (Redis away) this long before the
#: visibility timeout hands the message to another worker.
_HOLD_MARGIN_S = 5.0
#: How long to wait for a replica to confirm a `done` record (when there is one).
_WAIT_REPLICA_MS = 500
#: A job whose dialer this worker does not know is handed out again after about a
#: twentieth of its wait (30 s of the default 600, at least 1 s; jittered; never past
#: the wait's end), for a worker that knows it.
_DIALER_LOOK_AGAIN_S = (1.0, 30.0)
_T = TypeVar("_T")


@dataclass
class Delivery:
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
    #: the fence of the claim granted (Writes.granted), checked before the request
    fence: Fence | None = None
    #: how often the fence refused this delivery's call
    lapses: int = 0

    @property
    def looks_up(self) -> bool:
        """This delivery looks the job's lead up in VICIdial instead of calling
        (reconciliation's ``lookup`` step: workers/reconciler.py)."""
        rec = self.job.reconcile
        return rec is not None and rec.step == "lookup"

    @property
    def adds_to_list(self) -> bool:
        """This delivery calls add_lead (a lead for a list), under the phone's lock."""
        return self.job.list_options is not None and not self.looks_up

    def calls_after(self, claim: Claim) -> bool:
        """Whether ``claim`` leads this delivery straight to the call (after
        ``claim.delay_s``): the common case, which :mod:`workers.engine` runs on its event
        loop (every other verdict: :meth:`workers.runner.JobRunner.follow_claim`)."""
        return claim.verdict in ("ok", "probe_outage") and not self.looks_up

    def bind(self) -> None:
        """Every log line of the job names it (structlog's context variables)."""
        structlog.contextvars.bind_contextvars(
            job_id=self.job.job_id, agent_user=self.job.agent_user, dialer=self.dialer.name
        )


class Writes:
    """The deliveries of one worker process and every write they make to the job's
    record, each retried while Redis is away (:meth:`persist`).

    ``rng``: the jitter of the delays chosen here (shared with the runner's).
    """

    #: the clock of the claim fence (dispatcher.store.execution.claim_clock)
    fence_clock = staticmethod(claim_clock)

    def __init__(
        self, settings: Settings, backend: Backend, *, rng: random.Random | None = None
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.keys = backend.keys
        self.execution = backend.execution.direct()
        self.dead_letters = DeadLetterStore(backend)
        self.dialers = settings.dialers
        self.rng = rng or random.Random()
        # host and pid name the process for people; the nonce makes it unique per
        # boot (with `init: true` every container's process is pid 1).
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        #: A claim's lease covers the longest call (its deadline is the HTTP timeout),
        #: a credentials probe before it, and margin.
        self.lease_s = 2 * settings.http_timeout_s + 5
        #: How long a write is retried while Redis is away (this worker holds the message).
        self.hold_s = max(self.lease_s, settings.visibility_timeout_s - _HOLD_MARGIN_S)
        #: The TTL of the job's state and record.
        self.ttl = int(settings.job_ttl_s)
        self._replicas_checked = -1e9
        self._replicas = 0

    def delivery(self, job: Job, started: float) -> Delivery:
        """A new delivery of a valid job (its own token), taken at monotonic ``started``."""
        dialer = self.dialers.resolve(job.dialer)
        assert dialer is not None  # Job.from_message checked it
        return Delivery(job, dialer, new_token(), started)

    def lane(self, d: Delivery) -> str:
        """The queue list of the delivery's dialer, priority and target."""
        return self.keys.target_lane(d.dialer.name, d.job.priority, d.job.target)

    def persist(self, started: float, write: Callable[[], _T]) -> _T:
        """Run a Redis write, retrying while Redis is away (a restart, a stall, a full
        memory), for as long as this worker may hold the message taken at ``started``.

        Every write here is safe to repeat: the token makes a repeated claim or
        outcome recognisable. Past the visibility timeout another worker gets the
        message, so this one gives up (BrokerUnavailable) and lets it go back to the
        queue.
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

    # -- the claim -----------------------------------------------------------------------

    def claim(self, d: Delivery) -> Claim:
        """Claim the job for the delivery, retrying while Redis is away."""
        # Built (and stamped) per attempt: the grant is one of the last attempt.
        return Claim.from_reply(
            self.persist(d.started, lambda: self.execution.call(*self.claim_args(d)))
        )

    def claim_args(self, d: Delivery) -> tuple[Any, ...]:
        """The delivery's ``claim`` command (dispatcher.store.execution), to be sent now.

        Stamps the delivery's fence clock: Redis grants the claim after this moment, so
        the claim's age is at most the time since (build the command right before
        sending it). A list job's claim also obeys its dialer's list pause and takes
        the add_lead lock of its phone (:meth:`lock_key`; reads the index key from
        Redis the first time: see :meth:`needs_index_key`)."""
        job = d.job
        rate = d.dialer.rate_limit
        listed = job.list_options is not None
        lock = self.lock_key(d) if d.adds_to_list else ""
        d.asked_at = self.fence_clock()
        return self.execution.claim_args(
            job.job_id,
            seq=job.seq,
            token=d.token,
            lease_s=self.lease_s,
            ttl=self.ttl,
            rate_interval_s=1.0 / rate if rate > 0 else 0.0,
            worker=self.worker_id,
            max_rate_wait_s=MAX_RATE_WAIT_S,
            server=d.dialer.name,
            scope=d.dialer.list_scope if listed else "",
            lock=lock,
        )

    def lock_key(self, d: Delivery) -> str:
        """The name of the add_lead lock of the delivery's phone: the phone's index key
        (``P:phone:{h}``'s h, HMAC-SHA256 under the deployment's key: never the phone)."""
        return phone_key(index_key(self.backend), d.job.lead.phone_number)

    def needs_index_key(self, d: Delivery) -> bool:
        """Whether building the delivery's claim would first read the phone index's key
        from Redis (once per process): an event loop claims such a delivery on a thread."""
        return d.adds_to_list and cached_index_key(self.backend) is None

    def granted(self, d: Delivery, claim: Claim) -> None:
        """Fence the delivery's call by the claim Redis just answered (a lease of
        ``lease_s`` plus the reserved rate-limit slot's delay, from ``d.asked_at``)."""
        delay = claim.delay_s if claim.verdict in ("ok", "probe_refused", "probe_outage") else 0.0
        d.fence = Fence(
            d.asked_at,
            lease_s=self.lease_s + delay,
            call_s=self.settings.http_timeout_s + FENCE_MARGIN_S,
            clock=self.fence_clock,
        )

    def attempt(self, d: Delivery) -> Lead:
        """Log the attempt and mark the delivery called: the lead to send (with the job's
        marker, dispatcher.model.marker)."""
        job = d.job
        _log.info("lead.attempt", attempt=job.attempts + 1, phone=job.lead.phone_number)
        d.called = True
        return mark(job.lead, job.job_id, self.settings.marker_field)

    # -- a success -----------------------------------------------------------------------

    def log_added(self, d: Delivery, result: Added, latency_ms: float) -> None:
        # On record before it is stored: if Redis never takes it, the log still
        # says which lead VICIdial made for this job.
        more: dict[str, Any] = {}
        if isinstance(result, ListLeadAdded):
            more = {k: v or None for k, v in _list_facts(d, result).items()}
            more["http_status"] = result.http_status if not result.complete else None
        _log.info(
            "lead.added",
            attempt=d.job.attempts + 1,
            phone=d.job.lead.phone_number,
            lead_id=result.lead_id,
            list_id=result.list_id,
            campaign=_campaign(d, result),
            latency_ms=round(latency_ms, 1),
            notes=list(result.notes) or None,
            **more,
        )

    def has_replicas(self) -> bool:
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

    def succeed_args(self, d: Delivery, result: Added, latency_ms: float) -> tuple[Any, ...]:
        """The delivery's ``succeed`` command (dispatcher.store.execution); a list's lead
        also records what add_lead reported of it (hopper, callback, custom fields)."""
        facts = ""
        if isinstance(result, ListLeadAdded):
            facts = json.dumps(_list_facts(d, result), separators=(",", ":"))
        return self.execution.succeed_args(
            d.job.job_id,
            token=d.token,
            lead_id=result.lead_id,
            list_id=result.list_id,
            campaign=_campaign(d, result),
            done_ttl=int(self.settings.done_ttl_s),
            ttl=self.ttl,
            attempts=d.job.attempts + 1,
            latency_field=latency_bucket_field(latency_ms / 1000),
            latency_ms=latency_ms,
            server=d.dialer.name,
            state_fields=facts,
            notify=notify_for(d.job, self.settings, dialer=d.dialer.name),
        )

    def store_added(self, d: Delivery, result: Added, latency_ms: float) -> Stored:
        """Store the success, retrying while Redis is away (waiting for a replica if any)."""
        args = self.succeed_args(d, result, latency_ms)

        def write() -> Any:
            if not self.has_replicas():
                return self.execution.call(*args)
            # After a failover only what reached a replica survives: wait for one.
            pipe = self.backend.redis.pipeline(transaction=False)
            self.execution.call(*args, client=pipe)
            pipe.execute_command("WAIT", 1, _WAIT_REPLICA_MS)
            reply, acked = pipe.execute()
            if not int(acked):
                _log.warning("worker.replica_not_confirmed", timeout_ms=_WAIT_REPLICA_MS)
            return reply

        return Stored.from_reply(self.persist(d.started, write))

    def added(self, d: Delivery, result: Added, stored: Stored) -> str:
        """What the stored success says: added, or a duplicate found. (A job with a
        reconcile step is then verified later: the runner asks the reconciler.)"""
        if stored.verdict == "same":
            # Recorded done with this very lead already (a look-up found it before
            # this late answer was stored): the same lead, not a copy of it.
            _log.info("lead.already_recorded", lead_id=result.lead_id)
            return "added"
        if stored.verdict == "duplicate":
            _log.error(
                "lead.duplicate_detected",
                lead_id=stored.lead_id,
                lead_ids=[stored.lead_id, result.lead_id],
                phone=d.job.lead.phone_number,
            )
            return "duplicate"
        self.log_stored(d, stored, lead_id=result.lead_id)
        return "added"

    def log_stored(self, d: Delivery, stored: Stored, *, lead_id: str) -> None:
        """What a success recorded now ended: the job's dead letter a copy wrote
        meanwhile, the dialer's outage pause."""
        if stored.verdict != "ok":
            return
        if stored.retired:
            _log.warning("lead.dead_letter_retired", reason=stored.retired, lead_id=lead_id)
        if stored.resumed:
            _log.warning("vicidial.resumed", server=d.dialer.name, after="outage")

    # -- a duplicate (add_lead's duplicate check) ----------------------------------------

    def duplicate(self, d: Delivery, found: DuplicateFound) -> str:
        """add_lead's duplicate check found a lead (``found``) and added nothing: the job
        ends in the final state ``duplicate`` naming it (no dead letter, nothing to
        replay; ``lead.duplicate``)."""
        job = d.job
        # Built once: a write resent after a lost reply carries the same event id.
        args = self.execution.duplicate_args(
            job.job_id,
            token=d.token,
            existing_lead_id=found.existing_lead_id,
            list_id=found.existing_list_id,
            check=found.check,
            done_ttl=int(self.settings.done_ttl_s),
            ttl=self.ttl,
            attempts=job.attempts + 1,
            server=d.dialer.name,
            notify=notify_for(job, self.settings, dialer=d.dialer.name),
        )
        stored = Stored.from_reply(self.persist(d.started, lambda: self.execution.call(*args)))
        if stored.verdict == "done":
            _log.info("lead.duplicate_suppressed", lead_id=stored.lead_id or None, seq=job.seq)
            return "duplicate_suppressed"
        if stored.verdict == "superseded":
            _log.warning("lead.outcome_superseded", outcome="duplicate", why=stored.verdict)
            return "superseded"
        _log.info(
            "lead.duplicate",
            attempt=job.attempts + 1,
            phone=job.lead.phone_number,
            existing_lead_id=found.existing_lead_id or None,
            list_id=found.existing_list_id or None,
            check=found.check or None,
            matched=found.matched or None,
            target_list_id=job.lead.list_id,
        )
        self.log_stored(d, stored, lead_id=found.existing_lead_id)
        return "duplicate"

    # -- the next publication: a retry, a look-up ----------------------------------------

    def retry(self, d: Delivery, job: Job, error: CallFailed, *, delay: float) -> str:
        """Publish the failed ``job`` again after ``delay`` (a new publication, seq + 1)."""
        written = self._publish_next(
            d,
            job.evolve(seq=job.seq + 1),
            lambda envelope: self.execution.retry(
                job.job_id,
                token=d.token,
                seq=job.seq,
                envelope=envelope,
                delay_s=delay,
                ttl=self.ttl,
                attempts=job.attempts,
                reason=error.reason,
                error=error.line,
                http_status=error.http_status,
                server=d.dialer.name,
            ),
        )
        if not written.applied:
            return self.superseded(written.verdict, "retry", error)
        _log.info(
            "lead.retry_scheduled",
            attempt=job.attempts,
            reason=error.reason,
            error=error.line,
            http_status=error.http_status,
            delay_s=round(delay, 3),
        )
        return "retrying"

    def await_lookup(self, d: Delivery, job: Job, rec: Reconcile, *, delay: float) -> str:
        """Publish ``job`` again as a look-up (``rec``) after ``delay``: the call's answer
        never came (workers/reconciler.py)."""
        written = self._publish_next(
            d,
            job.looking_up(rec),
            lambda envelope: self.execution.await_lookup(
                job.job_id,
                token=d.token,
                seq=job.seq,
                envelope=envelope,
                delay_s=delay,
                ttl=self.ttl,
                attempts=job.attempts,
                error=rec.error,
                http_status=rec.http_status,
                server=d.dialer.name,
            ),
        )
        if not written.applied:
            return self.superseded(written.verdict, "reconcile", AmbiguousFailure(rec.error))
        _log.info(
            "lead.reconcile_scheduled",
            attempt=job.attempts,
            reason="ambiguous",
            error=rec.error,
            http_status=rec.http_status,
            delay_s=round(delay, 3),
            tries=rec.tries,
        )
        return "reconciling"

    def _publish_next(self, d: Delivery, nxt: Job, write: Callable[[str], list[str]]) -> Written:
        """The compare-and-set that ends this publication and schedules the next one,
        ``nxt`` (seq + 1; execution.lua's ``reschedule``): ``write`` gets its envelope."""
        envelope = broker_envelope(nxt.to_message(), queue=self.lane(d))
        return Written.from_reply(self.persist(d.started, lambda: write(envelope)))

    # -- the same publication, later -----------------------------------------------------

    def reschedule(self, d: Delivery, *, delay: float, why: str, held: bool) -> str:
        """Put this same publication (same seq) back for later; no attempt is used.

        ``held``: this copy holds the claim (it is released); otherwise the
        record is left to whoever holds it.
        """
        job = d.job
        envelope = broker_envelope(job.to_message(), queue=self.lane(d))
        written = Written.from_reply(
            self.persist(
                d.started,
                lambda: self.execution.defer(
                    job.job_id,
                    token=d.token if held else "",
                    seq=job.seq,
                    envelope=envelope,
                    delay_s=max(0.0, delay),
                    ttl=self.ttl,
                ),
            )
        )
        if written.verdict == "done":
            _log.info("lead.duplicate_suppressed", seq=job.seq)
            return "duplicate_suppressed"
        if written.verdict == "stale":
            _log.info("lead.stale_copy_dropped", seq=job.seq)
            return "stale"
        _log.info("lead.delayed", why=why, delay_s=round(max(0.0, delay), 3))
        return "deferred"

    # -- dead letters --------------------------------------------------------------------

    def dead(self, d: Delivery, job: Job, error: CallFailed, *, now: float) -> str:
        """The delivery's dead letter, holding ``job`` whole."""
        return self._dead_letter(
            job, error, started=d.started, token=d.token, server=d.dialer.name, now=now
        )

    def _dead_letter(
        self, job: Job, error: CallFailed, *, started: float, token: str, server: str, now: float
    ) -> str:
        letter = self.dead_letters.letter(
            job=job.to_message(),
            reason=error.reason,
            error=error.line,
            http_status=error.http_status,
            attempts=job.attempts,
            first_failed_at=job.first_failed_at,
            now=now,
        )
        written = Written(
            self.persist(
                started,
                lambda: self.dead_letters.write(letter, token=token, seq=job.seq, server=server),
            )
        )
        if not written.applied:
            return self.superseded(written.verdict, "dead_letter", error)
        _log.warning(
            "lead.dead_lettered",
            attempt=job.attempts,
            phone=job.lead.phone_number,
            reason=error.reason,
            error=error.line,
            http_status=error.http_status,
        )
        return "dead"

    def superseded(self, verdict: str, outcome: str, error: CallFailed) -> str:
        """The record moved on without us (added, or taken over by another copy)."""
        if verdict == "done":
            _log.info("lead.duplicate_suppressed", outcome=outcome, reason=error.reason)
            return "duplicate_suppressed"
        _log.warning("lead.outcome_superseded", outcome=outcome, reason=error.reason, why=verdict)
        return "superseded"

    def internal(self, d: Delivery, exc: Exception) -> str:
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
        return self.dead(d, failed, error, now=time.time())

    def invalid_payload(self, message: object, exc: InvalidPayload, started: float) -> str:
        """A message that cannot be read as a job: the ``invalid_payload`` letter, raw."""
        job: dict[str, Any]
        job_id: str | None = None
        if isinstance(message, Mapping):
            job = dict(message)
            raw_id = message.get("job_id")
            job_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 100 else None
        else:
            job = {"raw": message if isinstance(message, str) else repr(message)[:10_000]}
        letter = self.persist(
            started,
            lambda: self.dead_letters.poison(raw=job, error=exc.line, job_id=job_id),
        )
        _log.warning(
            "lead.dead_lettered", job_id=letter.job_id, reason="invalid_payload", error=exc.line
        )
        return "dead"

    def await_dialer(self, exc: UnknownDialer, started: float) -> str:
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
            job.to_message(), queue=self.keys.target_lane(lane_dialer, job.priority, job.target)
        )
        low, high = _DIALER_LOOK_AGAIN_S
        delay = min(high, max(low, settings.unknown_dialer_wait_s / 20))
        delay *= self.rng.uniform(0.5, 1.0)
        wait = DialerWait.from_reply(
            self.persist(
                started,
                lambda: self.execution.await_dialer(
                    job.job_id,
                    seq=job.seq,
                    envelope=envelope,
                    delay_s=delay,
                    wait_s=settings.unknown_dialer_wait_s,
                    dialer=exc.dialer,
                    error=exc.line,
                    ttl=self.ttl,
                ),
            )
        )
        if wait.verdict == "done":
            _log.info("lead.duplicate_suppressed", lead_id=wait.lead_id or None, seq=job.seq)
            return "duplicate_suppressed"
        if wait.verdict == "stale":
            _log.info("lead.stale_copy_dropped", seq=job.seq)
            return "stale"
        if wait.verdict == "waiting":
            _log.warning(
                "lead.waiting_for_dialer",
                reason=exc.reason,
                error=exc.line,
                delay_s=round(wait.due - time.time(), 3) if wait.due else None,
                wait_until=wait.wait_until,
            )
            return "waiting"
        # The wait is over: the replayable letter, under the job's own id.
        waited = f"no worker that knows it took the job within {settings.unknown_dialer_wait_s:g} s"
        error = UnknownDialer(f"{exc.line}; {waited}", job=job, dialer=exc.dialer)
        return self._dead_letter(job, error, started=started, token="", server="", now=time.time())

    # -- protecting VICIdial -------------------------------------------------------------

    def network_failure(self, d: Delivery) -> float | None:
        """Count a consecutive network failure; the seconds paused if the breaker is open."""
        _count, paused_s, tripped = self.persist(
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

    def pause_refused(self, d: Delivery, error: CallFailed, *, server: str = "") -> None:
        """VICIdial refuses every call (credentials, permission, API off): pause the
        dialer's calls fleet-wide (``server``: another pause, such as the dialer's list
        jobs alone, ``Dialer.list_scope``)."""
        name = server or d.dialer.name
        self.persist(
            d.started,
            lambda: self.execution.pause(
                name,
                seconds=self.settings.pause_s,
                reason=error.reason,
                error=error.line,
            ),
        )
        _log.warning(
            "vicidial.paused",
            server=name,
            reason=error.reason,
            error=error.line,
            delay_s=self.settings.pause_s,
        )


def _campaign(d: Delivery, result: Added) -> str:
    """The campaign a success records: the agent's (external_add_lead's answer), or the
    one a list job sent (add_lead's answer names none)."""
    if isinstance(result, AddLeadResult):
        return result.campaign
    options = d.job.list_options
    return options.campaign_id if options is not None else ""


def _list_facts(d: Delivery, result: ListLeadAdded) -> dict[str, str]:
    """What add_lead reported of a list's lead, as job-state fields (strings): the hopper,
    the callback, the custom fields (each '' when not reported), and what the job asked
    for that the answer does not report done (``unfinished``: VICIdial failed after the
    INSERT, a callback user not valid, outside the local call time...)."""
    options = d.job.list_options
    unfinished = result.unfinished(options) if options is not None else ()
    return {
        "hopper": result.hopper,
        "callback": result.callback,
        "custom_fields": result.custom_fields,
        "unfinished": "; ".join(unfinished),
    }
