"""What a look-up's answers say about one job: found, absent or unknown.

A call whose answer never came (read timeout, connection dropped after sending,
HTTP 504, a worker killed mid-call) may or may not have added the lead. With
``DISPATCHER_AMBIGUOUS=reconcile`` the job waits ``DISPATCHER_RECONCILE_AFTER_S`` (a
request stuck in PHP can still insert late), then a worker looks the phone up with
the Non-Agent API (:func:`dispatcher.vicidial.lookup.look_up`, from
``workers/reconciler.py``) and :func:`lookup_finding` says what the answers mean:

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

Which leads are "ours": a lead carrying the job's marker
(:mod:`dispatcher.model.marker`), whatever else it holds. Where the producer filled
the marker's field (or the setting is ``none``), no marker was written and a lead is
ours when *every field the job sent* has the stored value: weaker, because two jobs
for the same person with the same data, or a lead someone typed in by hand, look
alike; such matches are never deleted (:func:`deletable`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from dispatcher.model.lead import Lead
from dispatcher.model.marker import MARKER_FIELDS, marker
from dispatcher.vicidial.nonagent import LeadRecord, LookupAnswer, SearchAnswer

__all__ = ["Finding", "Match", "deletable", "lookup_finding"]


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


def lookup_finding(
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


def deletable(match: Match) -> bool:
    """Whether a duplicate may be deleted: it carries the job's marker and was never
    touched (status NEW, never called)."""
    record = match.record
    return match.by_marker and record.status == "NEW" and record.called_count == "0"
