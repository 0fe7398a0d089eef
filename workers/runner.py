"""One job, start to end: claim -> call -> classify -> added / retry / dead letter.

:class:`JobRunner` is the body of the Celery task, kept free of Celery so that it
reads top to bottom. One runner per worker process (one ``httpx.Client`` per dialer,
one Redis pool), shared by the pool's threads (:func:`get_runner`). It decides; what
it decides is written by its :class:`~workers.delivery.Writes` (each write a
compare-and-set on the job's execution record, with the delivery's token), which the
lead engine (``workers/engine.py``) and the reconciler share.

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
(:func:`dispatcher.model.marker.mark`) so that the look-up can recognise it.

Leads for a list (the Non-Agent API's ``add_lead``, :mod:`workers.list_client`) take
the same path through the same client cache (one client per dialer per process), with
three differences: add_lead's duplicate check may end the job ``duplicate`` (after a
lost answer, the lead it names is the job's if it carries the marker:
:meth:`JobRunner.duplicate_found`); a list job whose duplicate check guards a second
call is called again after a lost answer instead of looked up by phone (the check
names the lead the lost call added, if it did); and add_lead's refusal of a
permission pauses the dialer's list jobs alone (``Dialer.list_scope``), probed with
``ListClient.probe`` before they resume, while a refused login pauses the dialer.

Nothing is acknowledged without an outcome: an unexpected error becomes an
``internal`` dead letter holding the whole job (``ambiguous`` if the call had been
sent), and only a Redis failure hands the message back to the queue.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable

import redis
import structlog

from dispatcher.config import logs
from dispatcher.config.settings import Settings, get_settings
from dispatcher.model.dialers import Dialer
from dispatcher.model.errors import (
    AmbiguousFailure,
    AuthFailed,
    BrokerUnavailable,
    CallFailed,
    ClaimLapsed,
    HTTPStatusError,
    InvalidPayload,
    ListNotAllowed,
    ListUndefined,
    NetworkError,
    ServerRefused,
    UnknownDialer,
)
from dispatcher.model.jobs import Job
from dispatcher.store.backend import Backend, get_backend
from dispatcher.store.redis_health import redis_availability
from dispatcher.store.replies import Claim, Stored
from workers.delivery import Added, Delivery, Writes
from workers.dialer_clients import PerDialer
from workers.list_answer import DuplicateFound
from workers.list_client import ListClient, ListOutcome
from workers.reconciler import Reconciler
from workers.retry import RetryPolicy
from workers.vicidial import AddLeadResult, VicidialClient

__all__ = ["JobRunner", "TransientInfrastructureError", "get_runner"]

_log = logs.get_logger("workers.runner")
#: A delivery whose fence refused its call this often in a row hands the job back to
#: the queue instead of claiming it again (a worker that keeps stalling).
_MAX_LAPSES = 3
#: A list job whose phone's add_lead lock another job holds looks again after at most
#: this long (jittered): the holder's call usually ends in milliseconds, its lease
#: (the lock's expiry) only bounds a holder that died.
LOCK_RECHECK_S = 1.0


class TransientInfrastructureError(Exception):
    """Redis failed under us: the message must go back to the queue, not be acked."""


class JobRunner:
    """Every step of a job from the message to its stored outcome, on a thread: the
    Celery task's body, and what the lead engine hands over past its common path.

    ``client``: the default dialer's VICIdial client (default: one made on first use,
    as for every other dialer); ``rng``: the jitter of every delay.
    """

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
        self.dialers = settings.dialers
        default = self.dialers.resolve(None)
        #: one client (one connection pool) per dialer, made on first use
        self.clients = PerDialer(lambda dialer: VicidialClient(settings, dialer=dialer))
        #: add_lead's client (leads for a list) per dialer, made on first use
        self.list_clients = PerDialer(lambda dialer: ListClient(settings, dialer=dialer))
        if client is not None:
            self.clients.put(client.server, client)
        #: the default dialer's name (its pause, breaker and rate-limit keys)
        self.server = client.server if client is not None else default.name if default else ""
        self.policy = RetryPolicy.from_settings(settings)
        self.rng = rng or random.Random()
        #: every write of a delivery to the job's record (shared with the engine)
        self.writes = Writes(settings, backend, rng=self.rng)
        self.reconciler = Reconciler(settings, self.writes, policy=self.policy, rng=self.rng)

    def close(self) -> None:
        self.clients.close()
        self.list_clients.close()
        self.reconciler.close()

    @property
    def client(self) -> VicidialClient:
        """The default dialer's client."""
        return self.client_for(self.dialers.by_name[self.server])

    @client.setter
    def client(self, value: VicidialClient) -> None:
        self.clients.put(value.server, value)

    def client_for(self, dialer: Dialer) -> VicidialClient:
        """The dialer's client."""
        return self.clients.get(dialer)

    def list_client_for(self, dialer: Dialer) -> ListClient:
        """The dialer's add_lead client (leads for a list)."""
        return self.list_clients.get(dialer)

    # -- entry point ---------------------------------------------------------------------

    def run(self, message: object) -> str:
        """Process one queue message; return the outcome name (for tests and metrics).

        Never raises for bad data, VICIdial failures or a bug in the job's path
        (those end as dead letters). Raises TransientInfrastructureError only when
        Redis itself fails, so that the broker message is returned to the queue
        instead of being acknowledged.
        """
        started = time.monotonic()
        writes = self.writes

        def whole() -> str:
            try:
                job = Job.from_message(message, dialers=self.dialers)
            except UnknownDialer as exc:
                return writes.await_dialer(exc, started)
            except InvalidPayload as exc:
                return writes.invalid_payload(message, exc, started)
            d = writes.delivery(job, started)
            return self.step(d, lambda: self.claimed(d))

        return self.step(None, whole)

    def step(self, d: Delivery | None, body: Callable[[], str]) -> str:
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
                    d.bind()
                return body()
            except (TransientInfrastructureError, BrokerUnavailable, redis.RedisError):
                raise
            except Exception as exc:
                if d is None:
                    raise
                return self.writes.internal(d, exc)
        except (BrokerUnavailable, redis.RedisError) as exc:
            # The episode itself is logged once (redis.unavailable); this job goes back.
            redis_availability().failed(exc, during="job")
            _log.warning("worker.job_returned", why="redis unavailable", error=str(exc))
            raise TransientInfrastructureError(str(exc)) from None
        finally:
            structlog.contextvars.clear_contextvars()

    def claimed(self, d: Delivery) -> str:
        """Claim the job for the delivery (retrying while Redis is away), then follow
        what the claim says."""
        return self.follow_claim(d, self.writes.claim(d))

    def follow_claim(self, d: Delivery, claim: Claim) -> str:
        """Everything after the claim: the call, or what the verdict says instead."""
        writes = self.writes
        writes.granted(d, claim)
        job = d.job
        verdict = claim.verdict
        if verdict == "done" and job.reconcile is not None and job.reconcile.step == "verify":
            return self.reconciler.verify(d, claim.lead_id)
        if verdict in ("done", "duplicate"):
            # Final (added, or a list's lead VICIdial's duplicate check found): this copy
            # is acknowledged without a call.
            self.backend.redis.hincrby(self.backend.keys.stats, "duplicates_suppressed", 1)
            _log.info(
                "lead.duplicate_suppressed",
                lead_id=claim.lead_id or None,
                seq=job.seq,
                final=verdict,
            )
            return "duplicate_suppressed"
        if verdict == "stale":
            _log.info("lead.stale_copy_dropped", seq=job.seq, current_seq=claim.seq)
            return "stale"
        if verdict == "busy":
            # Another copy is calling for this very publication (a redelivery raced
            # it): look again when its lease ends, never call in parallel.
            return writes.reschedule(d, delay=claim.delay_s + 1.0, why="busy", held=False)
        if verdict == "paused":
            left = claim.delay_s
            if claim.reason == "network":
                # An outage pause: look again soon (a probe call may lift it early;
                # a look costs one Redis call, not a VICIdial call).
                delay = min(left, self.settings.breaker_pause_s)
                delay += self.rng.uniform(0, min(1.0, self.settings.breaker_pause_s))
            else:
                # Refused credentials: nothing changes before the cool-down ends;
                # spread the held jobs a little so they do not return at once.
                delay = left + self.rng.uniform(0, min(30.0, self.settings.pause_s / 10))
            return writes.reschedule(d, delay=delay, why=claim.reason or "paused", held=False)
        if verdict == "throttled":
            return writes.reschedule(d, delay=claim.delay_s, why="rate_limit", held=False)
        if verdict == "locked":
            # Another job's add_lead for this phone is in flight on this dialer: look again
            # soon, without a worker slot (held: a claim of ours asked again is released).
            delay = min(claim.delay_s, LOCK_RECHECK_S) * self.rng.uniform(0.5, 1.5)
            return writes.reschedule(d, delay=delay, why="add_lead_lock", held=True)
        if verdict == "orphaned":
            # The copy that claimed this publication vanished between claim and
            # outcome; this copy took the claim over and decides now.
            return self.failed(
                d, AmbiguousFailure("worker lost during the call: the lead may have been added")
            )
        if claim.delay_s > 0:
            time.sleep(claim.delay_s)
        if verdict == "probe_refused" and not self._probe(d):
            return "deferred"
        if verdict == "probe_list" and not self._probe_list(d, scope=True):
            return "deferred"
        if d.looks_up:
            return self.reconciler.lookup(d)
        return self._call(d)

    # -- the call ------------------------------------------------------------------------

    def _call(self, d: Delivery) -> str:
        job = d.job
        lead = self.writes.attempt(d)
        result: AddLeadResult | ListOutcome
        try:
            if job.list_options is not None:
                # A lead for a list: add_lead, the same fence, deadline and answer cap.
                result, latency_ms = self.list_client_for(d.dialer).add_lead(
                    lead,
                    job.list_options,
                    dnc_check=job.dnc_check,
                    campaign_dnc_check=job.campaign_dnc_check,
                    fence=d.fence,
                )
            else:
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
            return self.failed(d, exc)
        if isinstance(result, DuplicateFound):
            return self.duplicate_found(d, result)
        d.answer = "added"
        self.writes.log_added(d, result, latency_ms)
        return self.store_added(d, result, latency_ms)

    def duplicate_found(self, d: Delivery, found: DuplicateFound) -> str:
        """add_lead's duplicate check found a lead and added nothing. On a call that does
        not follow a lost answer of the job, the job is ``duplicate``; after a lost answer
        the lead named may be the one the lost call added: the reconciler reads it back
        and decides by the job's marker (``added``, ``duplicate`` or, if VICIdial cannot
        tell, the ``ambiguous`` letter)."""
        d.answer = "failed"  # nothing was added by this call
        rec = d.job.reconcile
        if rec is not None and rec.step == "recall":
            return self.reconciler.duplicate_after_lost_answer(d, found)
        return self.writes.duplicate(d, found)

    def claim_lapsed(self, d: Delivery) -> str:
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
            return self.writes.reschedule(d, delay=0.0, why="claim_lapsed", held=True)
        return self.claimed(d)

    def store_added(self, d: Delivery, result: Added, latency_ms: float) -> str:
        """Store the success (logged already), retrying while Redis is away; what the
        record says then."""
        return self.after_added(d, result, self.writes.store_added(d, result, latency_ms))

    def after_added(self, d: Delivery, result: Added, stored: Stored) -> str:
        """What the stored success says (added, or a duplicate found); a job called again
        after a look-up found nothing is verified later (the reconciler)."""
        outcome = self.writes.added(d, result, stored)
        if stored.verdict == "ok" and d.job.reconcile is not None:
            self.reconciler.after_added(d, result.lead_id)
        return outcome

    def failed(self, d: Delivery, error: CallFailed) -> str:
        """The call failed (or its worker vanished mid-call): pause what must pause, then
        retry, look the lead up, or dead-letter it, as the retry policy says."""
        writes = self.writes
        job = d.job
        now = time.time()
        paused_s: float | None = None
        if isinstance(error, NetworkError | HTTPStatusError):
            paused_s = writes.network_failure(d)
        if isinstance(error, ServerRefused):
            if job.list_options is not None and not isinstance(error, AuthFailed):
                # add_lead refused a permission external_add_lead does not need: the
                # dialer's list jobs pause, its agent jobs go on. A refused login is the
                # same account for both APIs (one failed-login count): the dialer pauses.
                writes.pause_refused(d, error, server=d.dialer.list_scope)
            else:
                writes.pause_refused(d, error)
        failed = job.evolve(
            attempts=job.attempts + 1,
            first_failed_at=job.first_failed_at if job.first_failed_at is not None else now,
        )
        if isinstance(error, AmbiguousFailure) and self.reconciler.recalls(job):
            # A list job whose duplicate check guards the next call: called again (its
            # answer names the lead the lost call added, if it did), not looked up.
            return self.reconciler.recall_later(d, failed, error)
        if isinstance(error, AmbiguousFailure) and self.settings.ambiguous == "reconcile":
            return self.reconciler.later(d, failed, error)
        decision = self.policy.retry_or_dead_letter(error, failed, now=now, rng=self.rng)
        failed = failed.evolve(agent_wait_since=decision.agent_wait_since)
        if decision.retry:
            delay = decision.delay_s
            if paused_s is not None:
                # The breaker is open: the next attempt waits for the pause to end.
                delay = max(delay, paused_s + self.rng.uniform(0, 1.0))
            return writes.retry(d, failed, error, delay=delay)
        return writes.dead(d, failed, error, now=now)

    # -- protecting VICIdial -------------------------------------------------------------

    def _probe(self, d: Delivery) -> bool:
        """After a refusal cool-down: True if the credentials work again (pause lifted)."""
        if d.job.list_options is not None:
            return self._probe_list(d, scope=False)
        writes = self.writes
        name = d.dialer.name
        try:
            self.client_for(d.dialer).probe_credentials()
        except ServerRefused as exc:
            writes.pause_refused(d, exc)
            writes.reschedule(d, delay=self.settings.pause_s, why=exc.reason, held=True)
            return False
        except CallFailed as exc:
            # VICIdial unreachable or confused: keep the pause a little longer.
            wait = self.settings.breaker_pause_s
            writes.persist(d.started, lambda: writes.execution.extend_pause(name, seconds=wait))
            writes.reschedule(d, delay=wait, why=exc.reason, held=True)
            return False
        writes.persist(d.started, lambda: writes.execution.resume(name))
        _log.warning("vicidial.resumed", server=name, after="credentials probe")
        return True

    def _probe_list(self, d: Delivery, *, scope: bool) -> bool:
        """A list job probes a pause whose cool-down is over (``scope``: its dialer's list
        jobs' pause; else the dialer's) with add_lead's own check, which stores nothing
        (login, source, the function's permission, the right to add leads, the job's
        list): True if the job may call now (the pause lifted). A refused login pauses
        the dialer; a refused permission the dialer's list jobs."""
        writes = self.writes
        dialer = d.dialer
        probed = dialer.list_scope if scope else dialer.name
        try:
            self.list_client_for(dialer).probe(d.job.lead.list_id)
        except (ListNotAllowed, ListUndefined):
            pass  # the account may add leads; this job's list is refused (its call says so)
        except AuthFailed as exc:
            writes.pause_refused(d, exc)
            if scope:
                writes.persist(d.started, lambda: writes.execution.resume(probed))
            writes.reschedule(d, delay=self.settings.pause_s, why=exc.reason, held=True)
            return False
        except ServerRefused as exc:
            if not scope:
                # The login works (the dialer resumes); add_lead's permission does not.
                writes.persist(d.started, lambda: writes.execution.resume(probed))
                _log.warning("vicidial.resumed", server=probed, after="add_lead probe")
            writes.pause_refused(d, exc, server=dialer.list_scope)
            writes.reschedule(d, delay=self.settings.pause_s, why=exc.reason, held=True)
            return False
        except CallFailed as exc:
            wait = self.settings.breaker_pause_s
            writes.persist(d.started, lambda: writes.execution.extend_pause(probed, seconds=wait))
            writes.reschedule(d, delay=wait, why=exc.reason, held=True)
            return False
        writes.persist(d.started, lambda: writes.execution.resume(probed))
        _log.warning("vicidial.resumed", server=probed, after="add_lead probe")
        return True


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
