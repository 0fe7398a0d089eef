"""Reconciliation: how the dispatcher recognises its own lead in VICIdial, and decides.

A call whose answer never came (read timeout, connection dropped after sending,
HTTP 504, a worker killed mid-call) may or may not have added the lead. With
``DISPATCHER_AMBIGUOUS=reconcile`` the job waits ``DISPATCHER_RECONCILE_AFTER_S`` (a
request stuck in PHP can still insert late), then a worker looks the phone up with
the Non-Agent API (:func:`look_up`, from ``workers/reconciler.py``) and
:func:`decide` says what the answers mean:

* **found** (one lead or more that are ours): the job is *added* with the oldest
  one's lead_id; the others are duplicates (``lead.duplicate_detected``);
* **absent** (no lead of ours, and VICIdial could have shown every lead of that
  phone): the job is called again;
* **unknown** (a lead the API user may not see, unreadable records, or no way to
  tell): the job becomes the ``ambiguous`` dead letter of before, with the reason.

``absent`` needs proof. ``lead_all_info`` never shows a lead whose list is not a
list row (list 0: what external_add_lead gives when the agent's campaign has no
manual dial list) or whose campaign the API user's group may not read, and says so
(``LIST NOT FOUND``) only when it could show no lead at all: beside a readable lead
of the same phone, a hidden one is left out silently. So every look-up also asks
``lead_search``, which sees every list: a lead id it finds that lead_all_info did
not show (looked up by its id, which shows it if it is readable after all) makes
the outcome unknown, never absent. Without lead_search (not permitted: user level 8
needed) a lead can still be found, never proven absent. The one case this cannot
decide: a lead of that phone that only lead_search sees (its list is hidden from
the API user): it may be this job's, so the job stays an ``ambiguous`` letter that
names it and its list, for a person to check.

Which leads are "ours". Every call carries the job's **marker**
(:func:`marker`) in ``DISPATCHER_MARKER_FIELD`` (``source_id`` by default) when the
producer left that field empty; a lead carrying it is this job's, whatever else it
holds. Where the producer filled the field (or the setting is ``none``), no marker
is written and a lead is ours when *every field the job sent* has the stored value:
weaker, because two jobs for the same person with the same data, or a lead someone
typed in by hand, look alike; such matches are never deleted.

The marker is the job id itself where it fits the field and is made of
``[0-9a-zA-Z._-]`` (job ids made by the dispatcher are 32 hex digits: in
``source_id``, 50 characters, the marker *is* the job id, so an operator can find
the lead in VICIdial by it), else the first characters of the SHA-256 of the job
id in hex (``vendor_lead_code`` holds 20). Either way it passes the lead rules and
VICIdial stores it unchanged.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

from dispatcher.config.logs import redact_vicidial_line
from dispatcher.model.errors import LookupDenied, LookupFailed, LookupRefused
from dispatcher.model.jobs import Job
from dispatcher.model.lead import Lead
from dispatcher.store.backend import Backend
from dispatcher.vicidial.nonagent import LeadRecord, LookupAnswer, NonAgentClient, SearchAnswer

__all__ = [
    "CHECK_EVERY_S",
    "DENIED_HOLD_S",
    "MARKER_FIELDS",
    "MAX_ID_LOOKUPS",
    "REFUSED_HOLD_S",
    "Finding",
    "LookupCheck",
    "Match",
    "Preview",
    "check_lookups",
    "decide",
    "deletable",
    "look_up",
    "mark",
    "marker",
    "preview",
    "record_lookup",
    "why_not",
]

#: The lead fields a marker can go in, with their VICIdial column sizes.
MARKER_FIELDS: dict[str, int] = {"source_id": 50, "vendor_lead_code": 20}
_SAFE = re.compile(r"[0-9a-zA-Z._-]+")


def marker(job_id: str, field: str) -> str:
    """The job's marker for ``field`` (``source_id`` or ``vendor_lead_code``)."""
    size = MARKER_FIELDS[field]
    if len(job_id) <= size and _SAFE.fullmatch(job_id):
        return job_id
    return hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()[:size]


def mark(lead: Lead, job_id: str, field: str) -> Lead:
    """``lead`` with the job's marker in ``field`` if the producer left it empty.

    ``field`` is the setting (``none``: the lead unchanged). The marker is valid for
    the field by construction, so the lead needs no new validation.
    """
    if field == "none" or field in lead.fields:
        return lead
    # replace() keeps who gets the lead (agent_user, or a list's list_id) as it is.
    return replace(lead, fields={**lead.fields, field: marker(job_id, field)})


@dataclass(frozen=True)
class Match:
    """A lead of the answer that is this job's, and how that was recognised."""

    record: LeadRecord
    #: True: it carries the job's marker; False: every field sent matched (weaker)
    by_marker: bool

    @property
    def lead_id(self) -> str:
        return self.record.lead_id


@dataclass(frozen=True)
class Finding:
    """What a look-up says about one job."""

    kind: str  # found | absent | unknown
    #: the oldest lead that is ours (found)
    lead_id: str = ""
    list_id: str = ""
    #: the other leads that are ours, lowest id first
    duplicates: tuple[str, ...] = ()
    #: every lead that is ours, in the answer's order (newest first)
    matches: tuple[Match, ...] = ()
    matched_by: str = ""
    why: str = ""
    #: lead ids lead_search found for the phone that no lead_all_info answer showed
    #: (hidden lists), leaving out the ones the caller knew as the job's own
    unseen: tuple[str, ...] = ()

    @property
    def found(self) -> int:
        return len(self.matches)


def _has_marker(record: LeadRecord, markers: dict[str, str]) -> bool:
    if record.complete:
        return any(record.values.get(f) == m for f, m in markers.items())
    # Extra pipes somewhere: the marker as a whole field anywhere in the record.
    parts = set(record.raw.split("|"))
    return any(m in parts for m in markers.values())


def _fields_match(record: LeadRecord, lead: Lead) -> bool:
    if not record.complete:
        return False
    values = record.values
    if values.get("phone_number") != lead.phone_number or values.get("phone_code") != (
        lead.phone_code
    ):
        return False
    return all(values.get(name) == value for name, value in lead.fields.items())


def decide(
    answer: LookupAnswer,
    *,
    job_id: str,
    lead: Lead,
    marker_field: str,
    search: SearchAnswer,
    by_id: Sequence[LookupAnswer] = (),
    known: Collection[str] = (),
) -> Finding:
    """What the look-up's answers for the job's phone mean for the job.

    ``answer``: lead_all_info by phone; ``search``: lead_search for the same phone,
    asked after it; ``by_id``: lead_all_info by lead id of ids the search found and
    ``answer`` did not show; ``known``: lead ids known to be the job's (the one it was
    added with, when verifying), which need no showing.

    ``marker_field`` is the setting: when it says a marker was written (the producer
    left that field empty), only leads with a marker are ours; otherwise leads whose
    every field sent matches. A marker in either field counts in both cases (the
    setting may have changed since the call).
    """
    markers = {f: marker(job_id, f) for f in MARKER_FIELDS if f not in lead.fields}
    by_fields = marker_field == "none" or marker_field in lead.fields
    records = list(answer.records)
    for extra in by_id:
        records.extend(extra.records)
    shown = {r.lead_id for r in records}
    unseen: tuple[str, ...] = ()
    if search.ids is not None:
        unseen = tuple(i for i in search.ids if i not in shown and i not in known)
    matches: list[Match] = []
    seen: set[str] = set()
    for record in records:
        if record.lead_id in seen:
            continue
        seen.add(record.lead_id)
        if _has_marker(record, markers):
            matches.append(Match(record, True))
        elif by_fields and _fields_match(record, lead):
            matches.append(Match(record, False))
    if matches:
        ordered = sorted(matches, key=lambda m: int(m.lead_id))
        oldest = ordered[0]
        return Finding(
            "found",
            lead_id=oldest.lead_id,
            list_id=oldest.record.values.get("list_id", ""),
            duplicates=tuple(m.lead_id for m in ordered[1:]),
            matches=tuple(matches),
            matched_by="marker" if all(m.by_marker for m in matches) else "fields",
            unseen=unseen,
        )
    if unseen:
        lists: dict[str, str] = {}
        for extra in by_id:
            lists.update(extra.hidden_lists())
        named = ", ".join(
            f"lead {i}" + (f" (list {lists[i]})" if i in lists else "") for i in unseen[:10]
        )
        more = f" and {len(unseen) - 10} more" if len(unseen) > 10 else ""
        return Finding(
            "unknown",
            why=f"lead_search finds {named}{more} with this phone, which lead_all_info does "
            "not show the API user (list 0 of a campaign without a manual dial list, or a "
            "list outside the user group's allowed campaigns): it may be this job's lead, so "
            "it is not called again. Check VICIdial by hand: `dispatcher dlq replay` if none "
            "of them is this job's lead, `dispatcher dlq purge` if one is",
            unseen=unseen,
        )
    if answer.hidden and search.ids is None:
        return Finding(
            "unknown",
            why="VICIdial has leads with this phone that the API user may not see "
            f"({answer.hidden[-1]}): a lead in list 0 (a campaign without a manual dial "
            "list) or in a list outside the user group's campaigns cannot be looked up",
        )
    if answer.unreadable or (by_fields and any(not r.complete for r in records)):
        return Finding(
            "unknown",
            why="VICIdial's answer holds records that cannot be read field by field "
            "(a | or line break inside a field)",
        )
    if answer.truncated:
        return Finding("unknown", why="VICIdial's answer was larger than the dispatcher reads")
    if search.ids is None:
        return Finding(
            "unknown",
            why="not found by lead_all_info, but absence cannot be proven without lead_search "
            "(lead_all_info does not show leads of list 0 or of lists outside the user "
            f"group's campaigns): {search.line}"
            + (f" (missing: {search.missing})" if search.missing else "")
            + (f". Fix: {search.fix}" if search.fix else ""),
        )
    return Finding("absent")


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
    """Ask VICIdial about the job's phone and decide (:func:`decide`).

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
    return decide(
        answer,
        job_id=job_id,
        lead=lead,
        marker_field=marker_field,
        search=search,
        by_id=by_id,
        known=known,
    )


def deletable(match: Match) -> bool:
    """Whether a duplicate may be deleted: it carries the job's marker and was never
    touched (status NEW, never called)."""
    record = match.record
    return match.by_marker and record.status == "NEW" and record.called_count == "0"


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
        time.sleep(min(gate.seconds, 5.0))
    if gate.verdict == "paused":
        return Preview(
            "not_looked_up",
            why=f"calls to {server} are paused ({gate.extra or 'pause'}) for {gate.seconds:.0f} s",
        )
    if gate.seconds > 0:
        time.sleep(gate.seconds)
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
