"""Asks VICIdial whether a lead whose call got no answer was added, and decides.

The worker side of reconciliation (what the answers mean:
dispatcher/vicidial/findings.py; the look-up: dispatcher/vicidial/lookup.py; the
Non-Agent API: dispatcher/vicidial/nonagent.py). Every decision is one command of the
job's state machine (dispatcher/store/execution.lua), written by the delivery that
holds the job's claim through the writes it shares with the runner
(:class:`workers.delivery.Writes`), so reconciliation is exactly as safe against
races, lost replies and killed workers as a call:

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

Leads for a list (add_lead) are reconciled the same way, with one shortcut: a list job
that asked for a duplicate check is called again after a lost answer
(:meth:`Reconciler.recall_later`, after the settle time), because that check answers
for the lost call: the lead it names, read back by its id, is the job's if it carries
the marker (:meth:`Reconciler.duplicate_after_lost_answer`, the facts' "retry guard").
A list lead is readable by ``lead_all_info`` only if its list has a row in VICIdial
(``list_exists_check``, on by default, keeps jobs from adding to lists without one);
one that is not is a lead only ``lead_search`` sees: the outcome is unknown, never
absent, as for any hidden lead.

Look-ups never push the account toward VICIdial's lock: a refused Non-Agent login
stops every look-up to that server until an operator re-checks (`dispatcher health
--recheck`, `dispatcher dlq reconcile`), and a denied permission holds them for 5
minutes (one check at a time tries again: :mod:`workers.lookup_check`); meanwhile
ambiguous jobs become ``ambiguous`` dead letters, as without reconciliation.
"""

from __future__ import annotations

import contextlib
import random
import time

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
from dispatcher.store.outbox import notify_for
from dispatcher.store.replies import Claim, LookupGate, Stored
from dispatcher.vicidial.findings import Finding, Match, deletable
from dispatcher.vicidial.lookup import CHECK_EVERY_S, look_up, record_lookup, why_not
from dispatcher.vicidial.nonagent import NonAgentClient
from workers.delivery import MAX_RATE_WAIT_S, Delivery, Writes
from workers.dialer_clients import PerDialer, nonagent_client
from workers.list_answer import DuplicateFound, duplicate_verdict
from workers.retry import RetryPolicy

__all__ = ["Reconciler"]

_log = logs.get_logger("workers.reconciler")


class Reconciler:
    """The reconciliation steps of one worker process's runner."""

    def __init__(
        self, settings: Settings, writes: Writes, *, policy: RetryPolicy, rng: random.Random
    ) -> None:
        self.settings = settings
        #: the delivery's writes (shared with the runner and the engine)
        self.writes = writes
        self.policy = policy
        self.rng = rng
        # Made on first use: a worker that never meets an ambiguous call opens nothing.
        self.clients = PerDialer(lambda dialer: nonagent_client(settings, dialer))

    def client(self, dialer: Dialer) -> NonAgentClient:
        """The dialer's Non-Agent API client."""
        return self.clients.get(dialer)

    def close(self) -> None:
        self.clients.close()

    def _gate(self, d: Delivery) -> Claim:
        """The dialer's pause and rate limit, for a request that is not the job's call
        (a verification, a deletion): ok once the rate-limit slot is here."""
        w = self.writes
        rate = d.dialer.rate_limit
        gate = w.persist(
            d.started,
            lambda: w.execution.gate(
                d.dialer.name,
                rate_interval_s=1.0 / rate if rate > 0 else 0.0,
                max_rate_wait_s=MAX_RATE_WAIT_S,
            ),
        )
        if gate.verdict == "ok" and gate.delay_s > 0:
            time.sleep(gate.delay_s)
        return gate

    def _look_up(self, d: Delivery, *, known: tuple[str, ...] = ()) -> Finding:
        """Ask VICIdial about the delivery's lead (dispatcher.vicidial.lookup.look_up);
        ``known``: lead ids already known to be the job's."""
        job = d.job
        return look_up(
            self.client(d.dialer),
            job_id=job.job_id,
            lead=job.lead,
            marker_field=self.settings.marker_field,
            known=known,
        )

    def _lookup_gate(self, d: Delivery) -> LookupGate:
        """Whether the dialer's look-ups are held (a refused login, a denied permission)."""
        w = self.writes
        return w.persist(
            d.started,
            lambda: w.execution.lookup_gate(
                d.dialer.name, mode="lookup", lease_s=w.lease_s, fresh_s=CHECK_EVERY_S
            ),
        )

    # -- 1. an ambiguous outcome ------------------------------------------------------------

    def later(self, d: Delivery, failed: Job, error: CallFailed) -> str:
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
        return self.writes.await_lookup(d, failed, rec, delay=self.settings.reconcile_after_s)

    # -- 1b. a list job whose duplicate check guards the next call ---------------------------

    def recalls(self, job: Job) -> bool:
        """Whether a lost answer of ``job`` is followed by calling it again rather than by
        a look-up: a list job with a duplicate check (unless lost answers are dead letters)."""
        options = job.list_options
        return (
            options is not None
            and options.checks_duplicates
            and self.settings.ambiguous != "dead_letter"
        )

    def recall_later(self, d: Delivery, failed: Job, error: CallFailed) -> str:
        """The call may have added the lead: call again after the settle time (with
        ``DISPATCHER_AMBIGUOUS=retry``: the retry's backoff), marked as following a lost
        answer (reconcile step ``recall``), so that a duplicate answer is read as the
        lost call's lead when it carries the job's marker."""
        w = self.writes
        before = d.job.reconcile
        if before is not None and before.step == "lookup":
            failed = failed.evolve(attempts=d.job.attempts)  # the lost copy looked up
        if failed.attempts >= self.settings.max_attempts:
            return w.dead(d, failed.evolve(reconcile=None), error, now=time.time())
        rec = Reconcile(
            step="recall",
            since=time.time(),
            error=error.line,
            http_status=error.http_status,
            absent=before.absent if before is not None else 0,
        )
        if self.settings.ambiguous == "reconcile":
            delay = self.settings.reconcile_after_s
        else:
            delay = self.policy.backoff(failed.attempts, self.rng)
        return w.retry(d, failed.evolve(reconcile=rec), error, delay=delay)

    def duplicate_after_lost_answer(self, d: Delivery, found: DuplicateFound) -> str:
        """The call after a lost answer got add_lead's duplicate answer: the lead it names
        is the one the lost call added, or an older one. Read back by its id: ``added``
        with it if it carries the job's marker, ``duplicate`` if it does not; when
        VICIdial cannot tell (the lead cannot be read, the answer names none, no marker
        was written), the ``ambiguous`` letter saying why."""
        job = d.job.evolve(attempts=d.job.attempts + 1)  # this call counts
        rec = job.reconcile
        assert rec is not None
        gate = self._lookup_gate(d)
        if gate.verdict == "held":
            why = why_not(gate.state, gate.missing, gate.error, gate.fix)
            return self._give_up(d, job, rec, why=f"{found.line}; {why}")
        record = None
        if found.existing_lead_id:
            try:
                answer = self.client(d.dialer).lead_by_id(found.existing_lead_id)
            except LookupFailed as exc:
                # The duplicate may be the job's lead: look the phone up as for any lost
                # answer (the look-up's own rules decide, or call again if it is absent).
                return self._lookup_failed(d, job, rec.evolve(step="lookup"), exc)
            record = next((r for r in answer.records if r.lead_id == found.existing_lead_id), None)
        verdict = duplicate_verdict(
            found,
            record,
            job_id=job.job_id,
            lead=job.lead,
            marker_field=self.settings.marker_field,
            after_lost_answer=True,
        )
        _log.info(
            "lead.reconciled",
            found=1 if verdict == "added" else 0,
            lead_id=found.existing_lead_id or None,
            outcome=verdict,
            matched_by="duplicate_check",
            phone=job.lead.phone_number,
        )
        if verdict == "added" and record is not None:
            finding = Finding(
                "found",
                lead_id=record.lead_id,
                list_id=record.values.get("list_id", found.existing_list_id),
                matches=(Match(record, True),),
                matched_by="marker",
            )
            return self._found(d, job, rec, finding)
        if verdict == "duplicate":
            return self.writes.duplicate(d, found)
        why = (
            f"VICIdial's duplicate check names lead {found.existing_lead_id}, which the API "
            "user cannot read back (lead_all_info): it may be the lead the lost call added"
            if found.existing_lead_id and record is None
            else "the duplicate answer names no lead, or the job carries no marker to "
            "recognise it by"
        )
        return self._give_up(d, job, rec, why=f"{found.line}; {why}")

    # -- 2. the look-up ---------------------------------------------------------------------

    def lookup(self, d: Delivery) -> str:
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

    def _lookup(self, d: Delivery, job: Job, rec: Reconcile) -> str:
        w = self.writes
        gate = self._lookup_gate(d)
        if gate.verdict == "held":
            return self._give_up(
                d, job, rec, why=why_not(gate.state, gate.missing, gate.error, gate.fix)
            )
        try:
            finding = self._look_up(d)
        except LookupFailed as exc:
            return self._lookup_failed(d, job, rec, exc)
        if gate.state != "ok":
            w.persist(d.started, lambda: record_lookup(w.backend, d.dialer.name, None))
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

    def _lookup_failed(self, d: Delivery, job: Job, rec: Reconcile, exc: LookupFailed) -> str:
        w = self.writes
        if isinstance(exc, LookupRefused | LookupDenied):
            if isinstance(exc, LookupDenied):
                with contextlib.suppress(LookupFailed):
                    exc = self.client(d.dialer).diagnose(exc)
            w.persist(d.started, lambda: record_lookup(w.backend, d.dialer.name, exc))
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
        paused_s = w.network_failure(d) if exc.network else None
        tries = rec.tries + 1
        _log.warning("reconcile.lookup_failed", error=exc.line, tries=tries)
        if tries >= self.settings.max_attempts:
            return self._give_up(
                d, job, rec, why=f"VICIdial could not answer the look-up: {exc.line}"
            )
        delay = self.policy.backoff(tries, self.rng)
        if paused_s is not None:
            delay = max(delay, paused_s + self.rng.uniform(0, 1.0))
        return self.writes.await_lookup(d, job, rec.evolve(tries=tries), delay=delay)

    def _found(self, d: Delivery, job: Job, rec: Reconcile, finding: Finding) -> str:
        w = self.writes
        stored = Stored.from_reply(
            w.persist(
                d.started,
                lambda: w.execution.reconciled(
                    job.job_id,
                    token=d.token,
                    lead_id=finding.lead_id,
                    list_id=finding.list_id,
                    duplicates=finding.duplicates,
                    done_ttl=int(self.settings.done_ttl_s),
                    ttl=w.ttl,
                    attempts=job.attempts,
                    server=d.dialer.name,
                    notify=notify_for(job, self.settings, dialer=d.dialer.name),
                ),
            )
        )
        recorded = stored.lead_id
        if stored.verdict == "done" and recorded != finding.lead_id:
            # Another copy added it (with that lead) meanwhile: the others are copies.
            others = tuple(m.lead_id for m in finding.matches if m.lead_id != recorded)
            if others:
                w.persist(
                    d.started,
                    lambda: w.execution.duplicates(
                        job.job_id, lead_ids=others, deleted=(), ttl=w.ttl
                    ),
                )
                _log.error(
                    "lead.duplicate_detected",
                    lead_id=recorded,
                    lead_ids=[recorded, *others],
                    phone=job.lead.phone_number,
                )
            return "duplicate_suppressed"
        w.log_stored(d, stored, lead_id=finding.lead_id)
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

    def _absent(self, d: Delivery, job: Job, rec: Reconcile) -> str:
        w = self.writes
        absent = rec.absent + 1
        w.backend.redis.hincrby(w.keys.stats, "reconcile:absent", 1)
        if job.attempts >= self.settings.max_attempts:
            error = AmbiguousFailure(
                f"{rec.error}; reconciliation: not in VICIdial (looked up), but the attempts "
                "are used up: safe to replay",
                http_status=rec.http_status,
            )
            return w.dead(d, job.evolve(reconcile=None), error, now=time.time())
        again = job.evolve(reconcile=rec.evolve(step="recall", tries=0, absent=absent))
        error = AmbiguousFailure(
            f"{rec.error}; reconciliation: not in VICIdial (looked up): calling again",
            http_status=rec.http_status,
        )
        return w.retry(d, again, error, delay=0.0)

    def _give_up(self, d: Delivery, job: Job, rec: Reconcile, *, why: str) -> str:
        """Cannot tell: the ambiguous dead letter of before, saying why."""
        w = self.writes
        w.backend.redis.hincrby(w.keys.stats, "reconcile:unknown", 1)
        error = AmbiguousFailure(f"{rec.error}; reconciliation: {why}", http_status=rec.http_status)
        return w.dead(d, job.evolve(reconcile=None), error, now=time.time())

    # -- 3. the verification after a call made again ----------------------------------------

    def after_added(self, d: Delivery, lead_id: str) -> None:
        """A job called again after a lost answer (a look-up found nothing, or a list job's
        duplicate check guarded the call) was added: verify it later."""
        rec = d.job.reconcile
        if rec is not None and rec.step == "recall" and lead_id:
            self._verify_later(d, d.job, rec, lead_id=lead_id)

    def _verify_later(
        self, d: Delivery, job: Job, rec: Reconcile, *, lead_id: str, delay: float | None = None
    ) -> None:
        w = self.writes
        wait = self.settings.reconcile_after_s if delay is None else delay
        verify = job.evolve(reconcile=rec.evolve(step="verify", lead_id=lead_id))
        envelope = broker_envelope(verify.to_message(), queue=w.lane(d))
        reply = w.persist(
            d.started,
            lambda: w.execution.verify_later(
                job.job_id, lead_id=lead_id, envelope=envelope, delay_s=wait, ttl=w.ttl
            ),
        )
        if reply[0] == "ok":
            _log.info("lead.reconcile_verify_scheduled", lead_id=lead_id, delay_s=round(wait, 3))

    def verify(self, d: Delivery, lead_id: str) -> str:
        """A verification delivery (the job is done): look again for late copies."""
        job = d.job
        rec = job.reconcile
        assert rec is not None
        w = self.writes
        gate = self._gate(d)
        if gate.verdict != "ok":
            delay = gate.delay_s + self.rng.uniform(0, 1.0)
            self._verify_later(d, job, rec, lead_id=lead_id, delay=delay)
            return "deferred"
        held = self._lookup_gate(d)
        if held.verdict == "held":
            _log.warning("reconcile.verify_skipped", lead_id=lead_id, state=held.state)
            return "verify_skipped"
        try:
            finding = self._look_up(d, known=(lead_id,))
        except LookupFailed as exc:
            refusal = exc
            if isinstance(refusal, LookupRefused | LookupDenied):
                w.persist(d.started, lambda: record_lookup(w.backend, d.dialer.name, refusal))
                _log.warning("reconcile.verify_skipped", lead_id=lead_id, state=refusal.state)
                return "verify_skipped"
            if exc.network:
                w.network_failure(d)
            tries = rec.tries + 1
            if tries >= self.settings.max_attempts:
                _log.warning("reconcile.verify_failed", lead_id=lead_id, error=exc.line)
                return "verify_failed"
            delay = self.policy.backoff(tries, self.rng)
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
            w.persist(
                d.started,
                lambda: w.execution.duplicates(job.job_id, lead_ids=(), deleted=(), ttl=w.ttl),
            )
            _log.info("lead.reconcile_verified", lead_id=lead_id, found=finding.found)
            return "verified"
        if finding.unseen:
            self._unverified(d, job, lead_id, finding.unseen)
        w.persist(
            d.started,
            lambda: w.execution.duplicates(job.job_id, lead_ids=others, deleted=(), ttl=w.ttl),
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
        self, d: Delivery, job: Job, lead_id: str, unseen: tuple[str, ...], *, why: str = ""
    ) -> None:
        """The job is added (with ``lead_id``), but lead_search finds leads of the phone the
        API user cannot read: they may be copies of it. Recorded on the job
        (``unverified_lead_ids``, reconcile ``unverified``) for a person to check."""
        w = self.writes
        w.persist(
            d.started,
            lambda: w.execution.duplicates(
                job.job_id, lead_ids=(), deleted=(), unverified=unseen, ttl=w.ttl
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

    def _repair(self, d: Delivery, job: Job, finding: Finding, *, keep: str) -> None:
        """Delete the later copies that carry this job's marker and were never touched."""
        if not self.settings.reconcile_delete_duplicates:
            return
        w = self.writes
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
            gate = self._gate(d)
            if gate.verdict != "ok":
                _log.warning("lead.duplicate_kept", lead_id=match.lead_id, why=gate.verdict)
                continue
            try:
                gone = self.client(d.dialer).delete_lead(match.lead_id)
            except LookupFailed as exc:
                _log.warning("lead.duplicate_delete_failed", lead_id=match.lead_id, error=exc.line)
                continue
            if gone:
                deleted.append(match.lead_id)
                _log.warning("lead.duplicate_deleted", lead_id=match.lead_id, kept=keep)
        if deleted:
            w.persist(
                d.started,
                lambda: w.execution.duplicates(
                    job.job_id, lead_ids=(), deleted=tuple(deleted), ttl=w.ttl
                ),
            )


def _holds_quote(job: Job) -> bool:
    return any("'" in value for value in job.lead.fields.values())
