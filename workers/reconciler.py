"""Asks VICIdial whether a lead whose call got no answer was added, and decides.

The worker side of reconciliation (what the answers mean: dispatcher/vicidial/reconcile.py;
the Non-Agent API: dispatcher/vicidial/nonagent.py). Every decision is one command of the
job's state machine (dispatcher/store/execution.lua), made by the delivery that holds the
job's claim, so reconciliation is exactly as safe against races, lost replies and
killed workers as a call:

* :meth:`Reconciler.later` - a call's answer never came (or its worker vanished):
  ``await_lookup`` ends the publication and schedules a look-up after
  ``DISPATCHER_RECONCILE_AFTER_S`` (the job waits in Redis, no thread is held);
* :meth:`Reconciler.lookup` - that delivery, claimed like a call (the server's pause,
  circuit breaker and rate limit apply), looks the phone up and writes
  ``reconciled`` (found: added, duplicates recorded), ``retry`` (absent: called
  again, the DNC flags unchanged, the lost call counted), ``dead`` (cannot tell: the
  ``ambiguous`` letter of before, with why and what to fix) or ``await_lookup``
  again (VICIdial could not answer the look-up; it counts toward the breaker);
* :meth:`Reconciler.after_added` and :meth:`Reconciler.verify` - a job called again
  after a look-up found nothing is looked up once more after it was added: a request
  stuck in VICIdial longer than the settle time may still have inserted a copy
  (reported, and deleted with ``DISPATCHER_RECONCILE_DELETE_DUPLICATES``).

Look-ups never push the account toward VICIdial's lock: a refused Non-Agent login
stops every look-up to that server until an operator re-checks (`dispatcher health
--recheck`, `dispatcher dlq reconcile`), and a denied permission holds them for 5
minutes (one check at a time tries again); meanwhile ambiguous jobs become
``ambiguous`` dead letters, as without reconciliation.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import httpx
import redis

from dispatcher.config import logs
from dispatcher.config.settings import Settings
from dispatcher.model.dialers import Dialer
from dispatcher.model.errors import (
    AmbiguousFailure,
    BrokerUnavailable,
    CallFailed,
    LookupDenied,
    LookupFailed,
    LookupRefused,
)
from dispatcher.model.jobs import Job, Reconcile, broker_envelope
from dispatcher.store.backend import Backend
from dispatcher.store.execution import Execution
from dispatcher.store.keys import Keys
from dispatcher.store.outbox import notify_for
from dispatcher.vicidial.nonagent import NonAgentClient
from dispatcher.vicidial.reconcile import (
    CHECK_EVERY_S,
    Finding,
    LookupCheck,
    check_lookups,
    deletable,
    look_up,
    record_lookup,
    why_not,
)
from workers.http_deadline import DeadlineTransport, deadline
from workers.outcomes import RetryPolicy

__all__ = ["LookupChecker", "Reconciler"]

_log = logs.get_logger("workers.reconciler")
_T = TypeVar("_T")
#: Longest a look-up that is not a job's call waits for a rate-limit slot.
_MAX_RATE_WAIT_S = 5.0


class _Delivery(Protocol):
    job: Job
    dialer: Dialer
    token: str
    started: float


class _Runner(Protocol):
    """What the reconciler uses of workers.runner.JobRunner (no import circle)."""

    settings: Settings
    backend: Backend
    keys: Keys
    execution: Execution
    rng: random.Random
    policy: RetryPolicy
    lease_s: float
    _ttl: int

    def _lane(self, d: Any) -> str: ...

    def _persist(self, started: float, write: Callable[[], _T]) -> _T: ...

    def _retry(self, d: Any, job: Job, error: CallFailed, *, delay: float) -> str: ...

    def _dead(self, d: Any, job: Job, error: CallFailed, *, now: float) -> str: ...

    def _superseded(self, result: str, outcome: str, error: CallFailed) -> str: ...

    def _network_failure(self, d: Any) -> float | None: ...


def make_client(settings: Settings, dialer: Dialer | None = None) -> NonAgentClient:
    """A Non-Agent API client of ``dialer`` (default: the default one) whose requests end
    within the HTTP timeout (as calls do)."""
    timeout = settings.http_timeout_s
    limits = httpx.Limits(max_connections=10, max_keepalive_connections=10, keepalive_expiry=4.0)
    http = httpx.Client(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0), pool=min(timeout, 5.0)),
        limits=limits,
        headers={"User-Agent": "vicidial-lead-dispatcher/0.1"},
        transport=DeadlineTransport(limits=limits),
    )
    client = NonAgentClient(settings, dialer=dialer, http=http, bound=lambda: deadline(timeout))
    client._own = True  # close() closes our httpx client
    return client


class Reconciler:
    """The reconciliation steps of one worker process's runner."""

    def __init__(self, runner: _Runner) -> None:
        self.r = runner
        self.settings = runner.settings
        self._clients: dict[str, NonAgentClient] = {}
        self._lock = threading.Lock()

    def client(self, dialer: Dialer) -> NonAgentClient:
        # Built on first use: a worker that never meets an ambiguous call opens nothing.
        client = self._clients.get(dialer.name)
        if client is None:
            with self._lock:
                client = self._clients.get(dialer.name)
                if client is None:
                    client = make_client(self.settings, dialer)
                    self._clients[dialer.name] = client
        return client

    def close(self) -> None:
        for client in list(self._clients.values()):
            client.close()

    @staticmethod
    def _rate_interval(d: _Delivery) -> float:
        return 1.0 / d.dialer.rate_limit if d.dialer.rate_limit > 0 else 0.0

    # -- 1. an ambiguous outcome ------------------------------------------------------------

    def later(self, d: _Delivery, failed: Job, error: CallFailed) -> str:
        """The call may have added the lead: look it up after the settle time."""
        before = d.job.reconcile
        if before is not None and before.step == "lookup":
            # The copy that died was looking up, not calling: no call was lost.
            failed = failed.evolve(attempts=d.job.attempts)
        rec = Reconcile(
            step="lookup",
            since=time.time(),
            error=before.error if before is not None and before.step == "lookup" else error.line,
            http_status=error.http_status,
            absent=before.absent if before is not None else 0,
        )
        return self._await(d, failed, rec, delay=self.settings.reconcile_after_s)

    def _await(self, d: _Delivery, job: Job, rec: Reconcile, *, delay: float) -> str:
        r = self.r
        nxt = job.evolve(seq=job.seq + 1, reconcile=rec)
        envelope = broker_envelope(nxt.to_message(), queue=r._lane(d))
        reply = r._persist(
            d.started,
            lambda: r.execution.await_lookup(
                job.job_id,
                token=d.token,
                seq=job.seq,
                envelope=envelope,
                delay_s=delay,
                ttl=r._ttl,
                attempts=job.attempts,
                error=rec.error,
                http_status=rec.http_status,
                server=d.dialer.name,
            ),
        )
        if reply[0] not in ("ok", "again"):
            return r._superseded(reply[0], "reconcile", AmbiguousFailure(rec.error))
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

    # -- 2. the look-up ---------------------------------------------------------------------

    @staticmethod
    def wants_lookup(job: Job) -> bool:
        return job.reconcile is not None and job.reconcile.step == "lookup"

    def lookup(self, d: _Delivery) -> str:
        """A claimed look-up delivery: ask VICIdial, decide through the state machine."""
        job = d.job
        rec = job.reconcile
        assert rec is not None
        try:
            return self._lookup(d, job, rec)
        except (BrokerUnavailable, redis.RedisError):
            raise
        except Exception as exc:  # a bug here must not become a replayable letter
            _log.error("reconcile.internal_error", error=f"{type(exc).__name__}: {exc}")
            return self._give_up(d, job, rec, why=f"internal error ({type(exc).__name__})")

    def _lookup(self, d: _Delivery, job: Job, rec: Reconcile) -> str:
        r = self.r
        gate = r._persist(
            d.started,
            lambda: r.execution.lookup_gate(
                d.dialer.name, mode="lookup", lease_s=r.lease_s, fresh_s=CHECK_EVERY_S
            ),
        )
        if gate.verdict == "held":
            return self._give_up(
                d, job, rec, why=why_not(gate.state, gate.missing, gate.error, gate.fix)
            )
        try:
            finding = look_up(
                self.client(d.dialer),
                job_id=job.job_id,
                lead=job.lead,
                marker_field=self.settings.marker_field,
            )
        except LookupFailed as exc:
            return self._lookup_failed(d, job, rec, exc)
        if gate.state != "ok":
            r._persist(d.started, lambda: record_lookup(r.backend, d.dialer.name, None))
            _log.info("reconcile.permitted", server=d.dialer.name, before=gate.state or None)
        _log.info(
            "lead.reconciled",
            found=finding.found,
            lead_id=finding.lead_id or None,
            outcome=finding.kind,
            matched_by=finding.matched_by or None,
            unseen_lead_ids=list(finding.unseen) or None,
            phone=job.lead.phone_number,
        )
        if finding.kind == "found":
            return self._found(d, job, rec, finding)
        if finding.kind == "absent":
            return self._absent(d, job, rec)
        return self._give_up(d, job, rec, why=finding.why)

    def _lookup_failed(self, d: _Delivery, job: Job, rec: Reconcile, exc: LookupFailed) -> str:
        r = self.r
        if isinstance(exc, LookupRefused | LookupDenied):
            if isinstance(exc, LookupDenied):
                with contextlib.suppress(LookupFailed):
                    exc = self.client(d.dialer).diagnose(exc)
            r._persist(d.started, lambda: record_lookup(r.backend, d.dialer.name, exc))
            _log.warning(
                "reconcile.not_permitted",
                server=d.dialer.name,
                state=exc.state,
                error=exc.line,
                missing=exc.missing,
                fix=exc.fix,
            )
            return self._give_up(
                d, job, rec, why=why_not(exc.state, exc.missing, exc.line, exc.fix)
            )
        if exc.http_status == 500 and _holds_quote(job):
            # lead_all_info cannot print a record holding ' (HTTP 500, every time).
            return self._give_up(
                d,
                job,
                rec,
                why="the lead holds a ' and VICIdial's lead_all_info cannot read such a "
                "lead back (HTTP 500): check VICIdial by hand",
            )
        paused_s = r._network_failure(d) if exc.network else None
        tries = rec.tries + 1
        _log.warning("reconcile.lookup_failed", error=exc.line, tries=tries)
        if tries >= self.settings.max_attempts:
            return self._give_up(
                d, job, rec, why=f"VICIdial could not answer the look-up: {exc.line}"
            )
        delay = r.policy.backoff(tries, r.rng)
        if paused_s is not None:
            delay = max(delay, paused_s + r.rng.uniform(0, 1.0))
        return self._await(d, job, rec.evolve(tries=tries), delay=delay)

    def _found(self, d: _Delivery, job: Job, rec: Reconcile, finding: Finding) -> str:
        r = self.r
        reply = r._persist(
            d.started,
            lambda: r.execution.reconciled(
                job.job_id,
                token=d.token,
                lead_id=finding.lead_id,
                list_id=finding.list_id,
                duplicates=finding.duplicates,
                done_ttl=int(self.settings.done_ttl_s),
                ttl=r._ttl,
                attempts=job.attempts,
                server=d.dialer.name,
                notify=notify_for(job, self.settings, dialer=d.dialer.name),
            ),
        )
        if reply[0] == "done" and reply[1] != finding.lead_id:
            # Another copy added it (with reply[1]) meanwhile: the others are copies.
            others = tuple(m.lead_id for m in finding.matches if m.lead_id != reply[1])
            if others:
                r._persist(
                    d.started,
                    lambda: r.execution.duplicates(
                        job.job_id, lead_ids=others, deleted=(), ttl=r._ttl
                    ),
                )
                _log.error(
                    "lead.duplicate_detected",
                    lead_id=reply[1],
                    lead_ids=[reply[1], *others],
                    phone=job.lead.phone_number,
                )
            return "duplicate_suppressed"
        if reply[0] == "ok":
            if reply[1]:
                _log.warning("lead.dead_letter_retired", reason=reply[1], lead_id=finding.lead_id)
            if reply[2] == "1":
                _log.warning("vicidial.resumed", server=d.dialer.name, after="outage")
        if finding.duplicates:
            _log.error(
                "lead.duplicate_detected",
                lead_id=finding.lead_id,
                lead_ids=[finding.lead_id, *finding.duplicates],
                phone=job.lead.phone_number,
            )
            self._repair(d, job, finding, keep=finding.lead_id)
        if finding.unseen:
            # Leads of the phone the API user cannot read: copies of ours, perhaps.
            self._unverified(d, job, finding.lead_id, finding.unseen)
        if rec.absent:
            # The job was called again after a look-up found nothing: that call's
            # request may still be stuck in VICIdial as well.
            self._verify_later(d, job, rec, lead_id=finding.lead_id)
        return "added"

    def _absent(self, d: _Delivery, job: Job, rec: Reconcile) -> str:
        r = self.r
        absent = rec.absent + 1
        r.backend.redis.hincrby(r.keys.stats, "reconcile:absent", 1)
        if job.attempts >= self.settings.max_attempts:
            error = AmbiguousFailure(
                f"{rec.error}; reconciliation: not in VICIdial (looked up), but the attempts "
                "are used up: safe to replay",
                http_status=rec.http_status,
            )
            return r._dead(d, job.evolve(reconcile=None), error, now=time.time())
        again = job.evolve(reconcile=rec.evolve(step="recall", tries=0, absent=absent))
        error = AmbiguousFailure(
            f"{rec.error}; reconciliation: not in VICIdial (looked up): calling again",
            http_status=rec.http_status,
        )
        return r._retry(d, again, error, delay=0.0)

    def _give_up(self, d: _Delivery, job: Job, rec: Reconcile, *, why: str) -> str:
        """Cannot tell: the ambiguous dead letter of before, saying why."""
        r = self.r
        r.backend.redis.hincrby(r.keys.stats, "reconcile:unknown", 1)
        error = AmbiguousFailure(f"{rec.error}; reconciliation: {why}", http_status=rec.http_status)
        return r._dead(d, job.evolve(reconcile=None), error, now=time.time())

    # -- 3. the verification after a call made again ----------------------------------------

    def after_added(self, d: _Delivery, lead_id: str) -> None:
        """A job called again after a look-up found nothing was added: verify it later."""
        rec = d.job.reconcile
        if rec is not None and rec.absent and lead_id:
            self._verify_later(d, d.job, rec, lead_id=lead_id)

    def _verify_later(
        self, d: _Delivery, job: Job, rec: Reconcile, *, lead_id: str, delay: float | None = None
    ) -> None:
        r = self.r
        wait = self.settings.reconcile_after_s if delay is None else delay
        verify = job.evolve(reconcile=rec.evolve(step="verify", lead_id=lead_id))
        envelope = broker_envelope(verify.to_message(), queue=r._lane(d))
        reply = r._persist(
            d.started,
            lambda: r.execution.verify_later(
                job.job_id, lead_id=lead_id, envelope=envelope, delay_s=wait, ttl=r._ttl
            ),
        )
        if reply[0] == "ok":
            _log.info("lead.reconcile_verify_scheduled", lead_id=lead_id, delay_s=round(wait, 3))

    def verify(self, d: _Delivery, lead_id: str) -> str:
        """A verification delivery (the job is done): look again for late copies."""
        job = d.job
        rec = job.reconcile
        assert rec is not None
        r = self.r
        gate = r._persist(
            d.started,
            lambda: r.execution.gate(
                d.dialer.name,
                rate_interval_s=self._rate_interval(d),
                max_rate_wait_s=_MAX_RATE_WAIT_S,
            ),
        )
        if gate.verdict != "ok":
            delay = gate.seconds + r.rng.uniform(0, 1.0)
            self._verify_later(d, job, rec, lead_id=lead_id, delay=delay)
            return "deferred"
        if gate.seconds > 0:
            time.sleep(gate.seconds)
        held = r._persist(
            d.started,
            lambda: r.execution.lookup_gate(
                d.dialer.name, mode="lookup", lease_s=r.lease_s, fresh_s=CHECK_EVERY_S
            ),
        )
        if held.verdict == "held":
            _log.warning("reconcile.verify_skipped", lead_id=lead_id, state=held.state)
            return "verify_skipped"
        try:
            finding = look_up(
                self.client(d.dialer),
                job_id=job.job_id,
                lead=job.lead,
                marker_field=self.settings.marker_field,
                known=(lead_id,),
            )
        except LookupFailed as exc:
            refusal = exc
            if isinstance(refusal, LookupRefused | LookupDenied):
                r._persist(d.started, lambda: record_lookup(r.backend, d.dialer.name, refusal))
                _log.warning("reconcile.verify_skipped", lead_id=lead_id, state=refusal.state)
                return "verify_skipped"
            if exc.network:
                r._network_failure(d)
            tries = rec.tries + 1
            if tries >= self.settings.max_attempts:
                _log.warning("reconcile.verify_failed", lead_id=lead_id, error=exc.line)
                return "verify_failed"
            delay = r.policy.backoff(tries, r.rng)
            self._verify_later(d, job, rec.evolve(tries=tries), lead_id=lead_id, delay=delay)
            return "deferred"
        others = tuple(
            sorted((m.lead_id for m in finding.matches if m.lead_id != lead_id), key=int)
        )
        if not others and (finding.kind == "unknown" or finding.unseen):
            # The same rule as the look-up's: not seeing a copy is not "verified"
            # unless VICIdial could have shown every lead of the phone.
            self._unverified(d, job, lead_id, finding.unseen, why=finding.why)
            return "unverified"
        if not others:
            r._persist(
                d.started,
                lambda: r.execution.duplicates(job.job_id, lead_ids=(), deleted=(), ttl=r._ttl),
            )
            _log.info("lead.reconcile_verified", lead_id=lead_id, found=finding.found)
            return "verified"
        if finding.unseen:
            self._unverified(d, job, lead_id, finding.unseen)
        r._persist(
            d.started,
            lambda: r.execution.duplicates(job.job_id, lead_ids=others, deleted=(), ttl=r._ttl),
        )
        _log.error(
            "lead.duplicate_detected",
            lead_id=lead_id,
            lead_ids=[lead_id, *others],
            phone=job.lead.phone_number,
            found=finding.found,
        )
        self._repair(d, job, finding, keep=lead_id)
        return "duplicates"

    def _unverified(
        self, d: _Delivery, job: Job, lead_id: str, unseen: tuple[str, ...], *, why: str = ""
    ) -> None:
        """The job is added (with ``lead_id``), but lead_search finds leads of the phone the
        API user cannot read: they may be copies of it. Recorded on the job
        (``unverified_lead_ids``, reconcile ``unverified``) for a person to check."""
        r = self.r
        r._persist(
            d.started,
            lambda: r.execution.duplicates(
                job.job_id, lead_ids=(), deleted=(), unverified=unseen, ttl=r._ttl
            ),
        )
        _log.warning(
            "lead.reconcile_unverified",
            lead_id=lead_id,
            lead_ids=list(unseen),
            why=why
            or "lead_search finds leads of this phone that lead_all_info does not show the "
            "API user: they may be copies of this job's lead",
            phone=job.lead.phone_number,
        )

    # -- the optional repair ----------------------------------------------------------------

    def _repair(self, d: _Delivery, job: Job, finding: Finding, *, keep: str) -> None:
        """Delete the later copies that carry this job's marker and were never touched."""
        if not self.settings.reconcile_delete_duplicates:
            return
        r = self.r
        deleted: list[str] = []
        for match in sorted(finding.matches, key=lambda m: int(m.lead_id)):
            if match.lead_id == keep or int(match.lead_id) < int(keep):
                continue
            if not deletable(match):
                why = "no marker (matched by fields)" if not match.by_marker else "touched"
                _log.warning(
                    "lead.duplicate_kept",
                    lead_id=match.lead_id,
                    why=why,
                    status=match.record.status,
                    called_count=match.record.called_count,
                )
                continue
            gate = r._persist(
                d.started,
                lambda: r.execution.gate(
                    d.dialer.name,
                    rate_interval_s=self._rate_interval(d),
                    max_rate_wait_s=_MAX_RATE_WAIT_S,
                ),
            )
            if gate.verdict != "ok":
                _log.warning("lead.duplicate_kept", lead_id=match.lead_id, why=gate.verdict)
                continue
            if gate.seconds > 0:
                time.sleep(gate.seconds)
            try:
                gone = self.client(d.dialer).delete_lead(match.lead_id)
            except LookupFailed as exc:
                _log.warning("lead.duplicate_delete_failed", lead_id=match.lead_id, error=exc.line)
                continue
            if gone:
                deleted.append(match.lead_id)
                _log.warning("lead.duplicate_deleted", lead_id=match.lead_id, kept=keep)
        if deleted:
            r._persist(
                d.started,
                lambda: r.execution.duplicates(
                    job.job_id, lead_ids=(), deleted=tuple(deleted), ttl=r._ttl
                ),
            )


def _holds_quote(job: Job) -> bool:
    return any("'" in value for value in job.lead.fields.values())


class LookupChecker:
    """Checks the look-up's permissions now and then, in a thread of its own.

    Run from each worker's scheduler thread (:meth:`maybe_start`): a few seconds
    after start and then every minute it asks Redis, and one worker of the fleet at
    a time asks VICIdial when the last result is older than
    :data:`~dispatcher.vicidial.reconcile.CHECK_EVERY_S` (a refusal is held longer), so
    ``dispatcher status``/``health`` show a missing permission before any job needs
    a look-up. Never while the server's calls are paused for refused credentials:
    the check's login would count toward VICIdial's lock too.
    """

    #: The first check waits this long after start: a wrong password shows in the
    #: first calls, which pause the server, and then the check does not log in.
    FIRST_DELAY_S = 5.0

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend
        self._thread: threading.Thread | None = None
        self._next = time.monotonic() + self.FIRST_DELAY_S
        self.last: LookupCheck | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.ambiguous == "reconcile"

    def maybe_start(self) -> None:
        now = time.monotonic()
        if not self.enabled or now < self._next:
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._next = now + 60.0
        self._thread = threading.Thread(target=self.run_all, name="lookup-check", daemon=True)
        self._thread.start()

    def run_all(self) -> None:
        """Check the look-ups of every dialer this worker serves."""
        for dialer in self.settings.served_dialers():
            self.run_once(dialer)

    def run_once(self, dialer: Dialer | None = None) -> LookupCheck | None:
        dialer = dialer or self.settings.dialers.resolve(None)
        if dialer is None:
            return None
        server = dialer.name
        try:
            if self.backend.redis.hget(self.backend.keys.pause(server), "kind") == "refused":
                return None
            client = make_client(self.settings, dialer)
        except LookupFailed as exc:
            _log.warning("reconcile.unavailable", server=server, error=exc.line, fix=exc.fix)
            return None
        except Exception as exc:  # Redis away: the next minute tries again
            _log.warning("reconcile.check_failed", error=f"{type(exc).__name__}: {exc}")
            return None
        try:
            check = check_lookups(self.backend, client, server=server)
        except Exception as exc:
            _log.warning("reconcile.check_failed", error=f"{type(exc).__name__}: {exc}")
            return None
        finally:
            client.close()
        self.last = check
        if check.state in ("denied", "refused"):
            _log.warning(
                "reconcile.not_permitted",
                server=server,
                state=check.state,
                error=check.error,
                missing=check.missing,
                fix=check.fix,
            )
        elif check.state == "unavailable":
            _log.warning("reconcile.unavailable", server=server, error=check.error, fix=check.fix)
        elif check.state == "ok" and check.missing:
            _log.warning(
                "reconcile.search_not_permitted",
                server=server,
                error=check.error,
                missing=check.missing,
                fix=check.fix,
            )
        elif check.state == "ok":
            _log.info("reconcile.permitted", server=server)
        return check
