"""The checker of a fault run (:mod:`dispatcher.devtools.fault_schedule`): it reads the
final history only, never what the product said along the way.

The history: for each lead the producer handed over, the job ids it was given and each
job's final state (``job_status``); every dead letter; every lead the simulator stored
(its id, phone and marker). Each lead has a phone of its own, so the simulator's leads
are matched to jobs by phone, and the marker (``source_id``: the job id) confirms whose
they are.

What must hold (the README's "Guarantees"):

* every job is final (``added``, ``dead`` or ``duplicate``): none queued, retrying or
  running at the end, none unknown (*lost*); a ``dead`` job has its letter (the letter
  holds the job: without it the lead is lost); an ``added`` job's lead is in VICIdial;
* an ``added`` job has exactly one lead in VICIdial, the one its ``lead_id`` names;
* a ``duplicate`` job (a lead for a list that VICIdial's duplicate check found) names a
  lead of its phone that is not its own: each lead of a run has a phone of its own, so
  a ``duplicate`` here can only be a job's own lead, added by a call whose answer was
  lost, taken for another's (and the job's lead would be neither added nor replayable);
* a dead letter other than ``ambiguous`` has no lead in VICIdial (a replay would add
  it twice); an ``ambiguous`` one has 0 or 1 (*ambiguous left*: counted, reported);
* no lead in VICIdial that no job accounts for, none with another job's marker;
* a lead handed over once (one idempotency key) is one job, whatever the producer's
  retries; a job reports duplicates only if VICIdial holds them;
* no worker ended on its own (the schedule's kills aside): a worker waits out every
  fault of Redis and VICIdial.

*Duplicated* counts the leads VICIdial holds beyond one per lead handed over.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FINAL_STATES",
    "NOTABLE_EVENTS",
    "History",
    "JobRecord",
    "Letter",
    "Problem",
    "StoredRecord",
    "Verdict",
    "check",
    "count_events",
]

FINAL_STATES = frozenset({"added", "dead", "duplicate"})
#: Problems that mean a lead lost, and those that mean a lead added twice.
LOST_KINDS = frozenset({"lost", "dead_without_letter", "added_not_in_vicidial", "not_enqueued"})
DUPLICATED_KINDS = frozenset({"duplicated", "unaccounted_lead"})
#: Log events that show what the faults did (counted for the report).
NOTABLE_EVENTS = (
    "lead.claim_lapsed",
    "lead.duplicate_suppressed",
    "lead.reconcile_scheduled",
    "lead.reconciled",
    "lead.duplicate_detected",
    "lead.dead_lettered",
    "redis.unavailable",
    "worker.inflight_returned",
)


@dataclass(frozen=True)
class JobRecord:
    """One lead the producer handed over: its phone, the job id(s) it was given (one,
    whatever its retries: the idempotency key) and each job's final ``job_status``
    (None: Redis does not know the job)."""

    index: int
    phone: str
    job_ids: tuple[str, ...]
    states: Mapping[str, Mapping[str, Any] | None]
    #: how often the producer's enqueue was refused (Redis away or full) and retried
    enqueue_errors: int = 0
    #: the simulator fault its first request met ("" for none)
    answer_lost: str = ""
    #: where the lead goes: ``agent``, ``list`` or ``list_dup`` (with a duplicate check)
    target: str = "agent"


@dataclass(frozen=True)
class Letter:
    letter_id: str
    job_id: str
    reason: str
    error: str = ""


@dataclass(frozen=True)
class StoredRecord:
    """A lead in VICIdial (the simulator's table)."""

    lead_id: str
    phone: str
    #: the marker field (``source_id``) as stored: the job id the dispatcher wrote
    marker: str = ""


@dataclass(frozen=True)
class History:
    """What a fault run left, and what it did (for the report)."""

    seed: int
    #: faults by kind, as scheduled
    faults: Mapping[str, int]
    jobs: Sequence[JobRecord]
    letters: Sequence[Letter]
    stored: Sequence[StoredRecord]
    #: the schedule's steps as applied (with their times), for the report
    applied: Sequence[str] = ()
    schedule: Sequence[str] = ()
    #: worker name -> its log file (JSON lines): the stories of problem jobs
    logs: Mapping[str, Path] = field(default_factory=dict)
    #: workers that had exited on their own by the end
    worker_exits: Sequence[str] = ()
    wall_s: float = 0.0
    #: what the faults did, counted in the workers' logs (reported, never judged)
    events: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Problem:
    """One violation: its kind, the lead (index and phone), the job, what was found."""

    kind: str
    index: int
    phone: str
    job_id: str
    detail: str

    def line(self) -> str:
        return (
            f"{self.kind}: lead #{self.index} phone {self.phone} job {self.job_id}: {self.detail}"
        )


@dataclass(frozen=True)
class Verdict:
    history: History
    problems: tuple[Problem, ...]
    states: Mapping[str, int]
    dead_reasons: Mapping[str, int]
    lost: int
    duplicated: int
    ambiguous_left: int
    #: of the ambiguous letters left, how many have their lead in VICIdial
    ambiguous_in_vicidial: int
    enqueue_retries: int

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: seed, leads, faults by kind, lost, duplicated, ambiguous left, time."""
        h = self.history
        faults = " ".join(f"{kind}={n}" for kind, n in h.faults.items())
        states = " ".join(f"{state}={n}" for state, n in sorted(self.states.items()))
        verdict = "OK" if self.ok else f"FAILED ({len(self.problems)} problems)"
        return (
            f"seed={h.seed} leads={len(h.jobs)} faults[{faults}] {states} "
            f"lost={self.lost} duplicated={self.duplicated} "
            f"ambiguous_left={self.ambiguous_left} (in VICIdial {self.ambiguous_in_vicidial}) "
            f"enqueue_retries={self.enqueue_retries} wall={h.wall_s:.1f}s {verdict}"
        )

    def report(self, *, stories: int = 5) -> str:
        """The summary, every problem, the stories of the first problem jobs (their
        events in the workers' logs), the faults as applied and how to replay."""
        h = self.history
        lines = [self.summary()]
        if self.dead_reasons:
            reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.dead_reasons.items()))
            lines.append(f"dead letters by reason: {reasons}")
        if h.events:
            seen = ", ".join(f"{name} {n}" for name, n in h.events.items())
            lines.append(f"in the workers' logs: {seen}")
        if h.worker_exits:
            lines.append(f"workers that exited on their own: {', '.join(h.worker_exits)}")
        if self.problems:
            lines.append(f"problems ({len(self.problems)}):")
            lines.extend(f"  {p.line()}" for p in self.problems)
            shown = list(dict.fromkeys(p.job_id for p in self.problems if p.job_id))[:stories]
            if shown:
                events = _events(h.logs, set(shown))
                for job_id in shown:
                    lines.append(f"story of job {job_id} (worker logs):")
                    lines.extend(f"  {e}" for e in events.get(job_id, ["(no event logged)"]))
        lines.append("schedule:")
        lines.extend(f"  {s}" for s in h.schedule)
        lines.append("applied:")
        lines.extend(f"  {a}" for a in h.applied)
        if h.logs:
            lines.append("worker logs: " + ", ".join(f"{n} {p}" for n, p in h.logs.items()))
        lines.append(
            f"replay this schedule: DISPATCHER_FAULT_SEED={h.seed} "
            ".venv/bin/python -m pytest -n 0 -s tests/e2e/test_fault_schedule.py"
        )
        return "\n".join(lines)


def check(history: History) -> Verdict:
    """Judge the final history (see the module docstring)."""
    by_phone: dict[str, list[StoredRecord]] = {}
    for lead in history.stored:
        by_phone.setdefault(lead.phone, []).append(lead)
    letters: dict[str, list[Letter]] = {}
    for letter in history.letters:
        letters.setdefault(letter.job_id, []).append(letter)
    problems: list[Problem] = []
    states: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    ambiguous = ambiguous_in = 0
    phones = {record.phone for record in history.jobs}
    known_ids = {job_id for record in history.jobs for job_id in record.job_ids}

    for record in history.jobs:
        here = by_phone.get(record.phone, [])
        ids = ", ".join(x.lead_id for x in here) or "none"

        def problem(kind: str, job_id: str, detail: str, record: JobRecord = record) -> None:
            problems.append(Problem(kind, record.index, record.phone, job_id, detail))

        if not record.job_ids:
            problem("not_enqueued", "", f"never taken ({record.enqueue_errors} refusals)")
        if len(record.job_ids) > 1:
            problem("enqueued_twice", record.job_ids[0], f"one lead, jobs {record.job_ids}")
        if len(here) > 1:
            problem("duplicated", record.job_ids[0] if record.job_ids else "", f"leads {ids}")
        for lead in here:
            if lead.marker and lead.marker not in record.job_ids:
                problem("foreign_marker", lead.marker, f"lead {lead.lead_id} marked {lead.marker}")
        for job_id in record.job_ids:
            status = record.states.get(job_id)
            state = status.get("state") if status else None
            states[str(state)] += 1
            if status is None or state not in FINAL_STATES:
                why = "unknown to Redis" if status is None else _brief(status)
                problem("lost", job_id, f"not final: {why}; VICIdial leads {ids}")
                continue
            if letters.get(job_id) and state != "dead":
                reasons_here = [x.reason for x in letters[job_id]]
                problem("stray_letter", job_id, f"{state} yet dead letter(s) {reasons_here}")
            if state == "added":
                lead_id = str(status.get("lead_id") or "")
                if not here:
                    problem("added_not_in_vicidial", job_id, f"lead_id {lead_id} not stored")
                elif lead_id not in {x.lead_id for x in here}:
                    problem("wrong_lead_id", job_id, f"says lead {lead_id}, VICIdial has {ids}")
                if status.get("duplicate_lead_ids") and len(here) <= 1:
                    problem(
                        "false_duplicate",
                        job_id,
                        f"reports duplicates {status['duplicate_lead_ids']}, VICIdial has {ids}",
                    )
            elif state == "duplicate":
                existing = str(status.get("existing_lead_id") or "")
                own = [x.lead_id for x in here if x.marker in record.job_ids]
                if not record.target.startswith("list"):
                    problem("duplicate_of_agent_job", job_id, "an agent's lead ended duplicate")
                elif existing in own or (not existing and own):
                    problem(
                        "duplicate_of_own_lead",
                        job_id,
                        f"duplicate of lead {existing or '?'}, which carries this job's marker: "
                        f"its own lead, never added (VICIdial has {ids})",
                    )
                elif existing not in {x.lead_id for x in here}:
                    problem(
                        "duplicate_of_nothing", job_id, f"names lead {existing}, VICIdial {ids}"
                    )
            elif state == "dead":
                reason = str(status.get("reason") or "")
                reasons[reason] += 1
                if not letters.get(job_id):
                    problem("dead_without_letter", job_id, f"dead ({reason}), no letter")
                if reason == "ambiguous":
                    ambiguous += 1
                    ambiguous_in += bool(here)
                elif here:
                    problem(
                        "dead_but_added",
                        job_id,
                        f"dead letter {reason} but VICIdial has lead {ids}: a replay adds it again",
                    )

    for phone, leads in sorted(by_phone.items()):
        if phone not in phones:
            for lead in leads:
                problems.append(
                    Problem(
                        "unaccounted_lead",
                        -1,
                        phone,
                        lead.marker if lead.marker in known_ids else "",
                        f"lead {lead.lead_id} (marker {lead.marker or 'none'}) of no job",
                    )
                )
    for exited in history.worker_exits:
        # A worker waits out Redis and VICIdial faults; one that ends on its own
        # (not killed by the schedule) broke "nothing of a worker dies".
        problems.append(Problem("worker_exited", -1, "", "", f"{exited}: see its log"))
    for letter in history.letters:
        if letter.job_id not in known_ids:
            problems.append(
                Problem("foreign_letter", -1, "", letter.job_id, f"letter {letter.reason}")
            )

    lost = sum(1 for p in problems if p.kind in LOST_KINDS)
    duplicated = sum(len(v) - 1 for k, v in by_phone.items() if k in phones and len(v) > 1)
    duplicated += sum(len(v) for k, v in by_phone.items() if k not in phones)
    return Verdict(
        history=history,
        problems=tuple(problems),
        states=dict(states),
        dead_reasons=dict(reasons),
        lost=lost,
        duplicated=duplicated,
        ambiguous_left=ambiguous,
        ambiguous_in_vicidial=ambiguous_in,
        enqueue_retries=sum(1 for r in history.jobs if r.enqueue_errors),
    )


def count_events(logs: Mapping[str, Path]) -> dict[str, int]:
    """How often each of :data:`NOTABLE_EVENTS` was logged, across the workers."""
    counts = dict.fromkeys(NOTABLE_EVENTS, 0)
    for path in logs.values():
        with contextlib.suppress(OSError):
            for raw in path.read_text(errors="replace").splitlines():
                if raw.startswith("{"):
                    with contextlib.suppress(ValueError):
                        name = json.loads(raw).get("event")
                        if name in counts:
                            counts[name] += 1
    return counts


def _brief(status: Mapping[str, Any]) -> str:
    keys = ("state", "reason", "attempts", "reconcile", "next_attempt_at", "updated_at")
    return ", ".join(f"{k}={status.get(k)}" for k in keys if status.get(k) is not None)


def _events(logs: Mapping[str, Path], job_ids: set[str]) -> dict[str, list[str]]:
    """Each job's log events across the workers, in time order."""
    found: dict[str, list[tuple[str, str]]] = {}
    keys = ("attempt", "reason", "lead_id", "found", "sent", "outcome", "error")
    for name, path in logs.items():
        with contextlib.suppress(OSError):
            for raw in path.read_text(errors="replace").splitlines():
                if not raw.startswith("{"):
                    continue
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                job_id = event.get("job_id")
                if job_id not in job_ids:
                    continue
                facts = " ".join(f"{k}={event[k]}" for k in keys if event.get(k) is not None)
                stamp = str(event.get("timestamp", ""))
                found.setdefault(job_id, []).append(
                    (stamp, f"{stamp} {name} {event.get('event')} {facts}".rstrip())
                )
    return {job_id: [line for _, line in sorted(items)] for job_id, items in found.items()}
