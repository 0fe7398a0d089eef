"""Looking a job's lead up in VICIdial, and the record of each server's look-ups.

:func:`look_up` asks the Non-Agent API about the job's phone (lead_all_info, then
lead_search, then the ids only the search found) and hands the answers to
:func:`dispatcher.vicidial.findings.lookup_finding`; the workers' reconciler
(``workers/reconciler.py``) and ``dispatcher dlq reconcile --dry-run``
(:func:`preview`) use it. What a server's look-ups last found (permitted, denied,
refused: ``P:lookup:{server}``) is kept by :func:`record_lookup` and checked ahead of
need by :func:`check_lookups`, so that ``dispatcher status``/``health`` say what
permission is missing before a job needs a look-up; a refused login holds every
automatic look-up (VICIdial's lock counts each refusal), and :func:`why_not` says so
in the ``ambiguous`` letter.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass

from dispatcher.config.logs import redact_vicidial_line
from dispatcher.model.errors import LookupDenied, LookupFailed, LookupRefused
from dispatcher.model.jobs import Job
from dispatcher.model.lead import Lead
from dispatcher.store.backend import Backend
from dispatcher.vicidial.findings import Finding, lookup_finding
from dispatcher.vicidial.nonagent import LookupAnswer, NonAgentClient, SearchAnswer

__all__ = [
    "CHECK_EVERY_S",
    "DENIED_HOLD_S",
    "MAX_ID_LOOKUPS",
    "REFUSED_HOLD_S",
    "LookupCheck",
    "Preview",
    "check_lookups",
    "look_up",
    "preview",
    "record_lookup",
    "why_not",
]


#: At most this many ids that lead_search found and lead_all_info did not show are
#: looked up one by one (each shows its lead if readable, else names its list).
MAX_ID_LOOKUPS = 3


def look_up(
    client: NonAgentClient,
    *,
    job_id: str,
    lead: Lead,
    marker_field: str,
    known: Collection[str] = (),
) -> Finding:
    """Ask VICIdial about the job's phone; what the answers mean (:func:`lookup_finding`).

    lead_all_info first, then lead_search: a lead inserted between the two (a request
    stuck in PHP, inserting now) is then one the search found and lead_all_info did
    not show, looked up by its id (it shows if readable), never silently missed.
    Raises :class:`~dispatcher.model.errors.LookupFailed` as the client does (a lead_search
    that is not permitted does not raise: lead_all_info alone can still find the lead).
    """
    phone = lead.phone_number
    answer = client.lead_all_info(phone)
    search = client.lead_search(phone)
    by_id: list[LookupAnswer] = []
    if search.ids is not None:
        shown = {r.lead_id for r in answer.records}
        unseen = [i for i in search.ids if i not in shown and i not in known]
        for lead_id in unseen[:MAX_ID_LOOKUPS]:
            by_id.append(client.lead_by_id(lead_id))
    return lookup_finding(
        answer,
        job_id=job_id,
        lead=lead,
        marker_field=marker_field,
        search=search,
        by_id=by_id,
        known=known,
    )


# -- the record of each server's look-ups (P:lookup:{server}) ------------------------------

#: A record older than this is checked again (by a worker, or `dispatcher health`);
#: look-ups keep it up to date meanwhile.
CHECK_EVERY_S = 600.0
#: After a denied permission, no automatic look-up or check for this long.
DENIED_HOLD_S = 300.0
#: After a refused login, no automatic look-up or check: each refusal counts toward
#: VICIdial's lock (10 failures, shared with the agent API), and the facts say never
#: to retry one automatically. Only an operator's `dispatcher health --recheck` or
#: `dispatcher dlq reconcile` tries again (30 days: "until then", bounded).
REFUSED_HOLD_S = 30 * 86400.0


def record_lookup(
    backend: Backend, server: str, error: LookupFailed | None, *, search: SearchAnswer | None = None
) -> str:
    """Store what a look-up or check found (None: it answered); the state before.

    A refused login or denied permission pauses the server's look-ups (its record's
    hold), as a refused call pauses its calls. The calls are not paused: a user of
    level 6 or below is refused by the Non-Agent API and fine for external_add_lead,
    and a wrong password pauses the calls through their own refusals. ``search``:
    what lead_search answered; when it is not permitted, look-ups still work (state
    ok) and the record says what is missing to prove a lead absent.
    """
    settings = backend.settings
    if error is None:
        refused = search is not None and search.ids is None
        return backend.execution.lookup_record(
            server,
            state="ok",
            error=redact_vicidial_line(search.line, settings.secrets) if refused and search else "",
            missing=search.missing if refused and search else "",
            fix=search.fix if refused and search else "",
            hold_s=0,
        )
    hold = {"denied": DENIED_HOLD_S, "refused": REFUSED_HOLD_S}.get(error.state, 0.0)
    before = backend.execution.lookup_record(
        server,
        state=error.state,
        error=redact_vicidial_line(error.line, settings.secrets),
        missing=error.missing,
        fix=error.fix,
        hold_s=hold,
    )
    return before


@dataclass(frozen=True)
class LookupCheck:
    """The outcome of :func:`check_lookups`."""

    #: ok | denied | refused | unavailable | held (not asked: a refusal is held) |
    #: fresh (not asked: an ok check is recent) | off (reconciliation not configured).
    #: ok with ``missing``: look-ups work, but lead_search is not permitted (a lead
    #: cannot be proven absent)
    state: str
    error: str = ""
    missing: str = ""
    fix: str = ""


def check_lookups(
    backend: Backend, client: NonAgentClient, *, server: str, mode: str = "check"
) -> LookupCheck:
    """Check the look-up's permissions against VICIdial and record the result.

    ``mode``: ``check`` asks VICIdial only when there is no result younger than
    :data:`CHECK_EVERY_S` and no refusal is held (one caller at a time across the
    fleet); ``force`` asks now (an operator's explicit request).
    """
    gate = backend.execution.lookup_gate(
        server, mode=mode, lease_s=2 * backend.settings.http_timeout_s + 5, fresh_s=CHECK_EVERY_S
    )
    if gate.verdict != "go":
        return LookupCheck(gate.verdict, gate.error, gate.missing, gate.fix)
    try:
        search = client.check(delete=backend.settings.reconcile_delete_duplicates)
    except LookupFailed as exc:
        record_lookup(backend, server, exc)
        return LookupCheck(exc.state, exc.line, exc.missing, exc.fix)
    record_lookup(backend, server, None, search=search)
    if search.ids is None:
        return LookupCheck("ok", search.line, search.missing, search.fix)
    return LookupCheck("ok")


def why_not(state: str, missing: str, error: str, fix: str) -> str:
    """Why a look-up could not be made, for a dead letter's error and the CLI."""
    head = {"refused": "the Non-Agent API refused the login", "denied": "look-ups not permitted"}
    text = head.get(state, f"look-ups {state or 'unavailable'}")
    if missing:
        text += f" (missing: {missing})"
    if error:
        text += f": {error}"
    if fix:
        text += f". Fix: {fix}; then `dispatcher dlq reconcile --reason ambiguous`"
    return text


# -- operators: `dispatcher dlq reconcile --dry-run` --------------------------------------


@dataclass(frozen=True)
class Preview:
    """What a dead letter would become if handed to the workers now (a dry run)."""

    #: added | called_again | dead_letter (cannot tell) | already_added (the letter
    #: is removed, nothing sent) | not_looked_up (paused, VICIdial not answering)
    would: str
    lead_id: str = ""
    duplicates: tuple[str, ...] = ()
    found: int = 0
    why: str = ""


def preview(backend: Backend, client: NonAgentClient, job: Job, *, server: str) -> Preview:
    """Look one ambiguous letter's lead up and say what reconciling it would do.

    Read-only in VICIdial (lead_all_info); obeys the server's pause, rate limit and
    look-up holds like a worker's look-up, and records what it learns about the
    look-up's permissions.
    """
    settings = backend.settings
    state, lead_id = backend.redis.hmget(backend.keys.execution(job.job_id), "state", "lead_id")
    if state == "done":
        return Preview("already_added", lead_id=str(lead_id or ""))
    rate = client.dialer.rate_limit
    interval = 1.0 / rate if rate > 0 else 0.0
    for _ in range(100):
        gate = backend.execution.gate(server, rate_interval_s=interval, max_rate_wait_s=5.0)
        if gate.verdict != "throttled":
            break
        time.sleep(min(gate.delay_s, 5.0))
    if gate.verdict == "paused":
        return Preview(
            "not_looked_up",
            why=f"calls to {server} are paused ({gate.reason or 'pause'}) for {gate.delay_s:.0f} s",
        )
    if gate.delay_s > 0:
        time.sleep(gate.delay_s)
    held = backend.execution.lookup_gate(
        server, mode="lookup", lease_s=2 * settings.http_timeout_s + 5, fresh_s=CHECK_EVERY_S
    )
    if held.verdict == "held":
        return Preview("dead_letter", why=why_not(held.state, held.missing, held.error, held.fix))
    try:
        finding = look_up(
            client, job_id=job.job_id, lead=job.lead, marker_field=settings.marker_field
        )
    except (LookupRefused, LookupDenied) as exc:
        refusal = client.diagnose(exc) if isinstance(exc, LookupDenied) else exc
        record_lookup(backend, server, refusal)
        return Preview(
            "dead_letter",
            why=why_not(refusal.state, refusal.missing, refusal.line, refusal.fix),
        )
    except LookupFailed as exc:
        return Preview("not_looked_up", why=exc.line)
    if held.state != "ok":
        record_lookup(backend, server, None)
    if finding.kind == "found":
        return Preview(
            "added", lead_id=finding.lead_id, duplicates=finding.duplicates, found=finding.found
        )
    if finding.kind == "absent":
        return Preview("called_again")
    return Preview("dead_letter", why=finding.why)
