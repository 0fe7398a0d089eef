"""Erasing one phone number from everything the dispatcher keeps (``dispatcher forget``).

An erasure request (GDPR art. 17, CCPA) names a phone number. :func:`forget_phone`
finds what the dispatcher holds about it through the phone index
(:mod:`dispatcher.store.phone_index`: no keyspace scan) and erases it, store by store:

* **jobs** (execution.lua ``forget``, one atomic step): each job's state, its dead
  letter, its idempotency record, then the index entry itself; a job not yet final is
  stopped (its queued copies are dropped unread by the worker that takes them);
* **fleet messages**: the few pause and look-up records whose error line quotes the
  number (VICIdial echoes the phone in some refusals) get it masked.

Each store is one function in :data:`ERASERS`, called with the :class:`Target`
(the normalised phone, its index key, the job ids found) and ``dry_run``, returning
counts by kind. A store that holds phone numbers or job ids plugs in with
:func:`register_eraser` and is erased, counted and logged with the others: the
notification backlog of the outcome webhooks (:mod:`dispatcher.ops.notifications`: the
undelivered events of the jobs found) is one. The jobs' own eraser runs last (it
removes the index the others may read).

What is not ours to erase: VICIdial's copy of the lead (its Non-Agent API
``update_lead`` with ``delete_lead=Y``, or its admin screens), and log lines already
written (phones in them are masked to their last four digits).

``scan``: jobs enqueued by the release before the index have no entry in it; they are
found by reading every dead letter (the ``dlq`` index), every queued and scheduled
message, and SCANning job states and idempotency records: slow (the whole store), for
once after an upgrade.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dispatcher.config import logs
from dispatcher.model.lead import make_lead
from dispatcher.ops.notifications import erase_notifications
from dispatcher.store.backend import Backend
from dispatcher.store.connection import broker_errors
from dispatcher.store.letter_index import index_complete
from dispatcher.store.phone_index import index_key, phone_key

__all__ = [
    "ERASERS",
    "KINDS",
    "VICIDIAL_NOTE",
    "Eraser",
    "Erasure",
    "Target",
    "forget_phone",
    "normalise_phone",
    "register_eraser",
]

#: What the command says about VICIdial's own copy (facts: non_agent_api_lookup.md).
VICIDIAL_NOTE = (
    "VICIdial's own copy of the lead is VICIdial's to erase: its Non-Agent API "
    "update_lead with delete_lead=Y (search_method=PHONE_NUMBER finds every lead of the "
    "number), or its admin screens; the dispatcher does not delete leads in VICIdial."
)
#: What each kind counts, for people (the command's lines, the console's table).
KINDS = {
    "fleet_messages": "pause and look-up messages quoting it (masked)",
    "job_states": "job states",
    "dead_letters": "dead letters",
    "idempotency_records": "idempotency records",
    "stopped": "jobs not yet final, stopped (their queued copies are dropped unread)",
    "in_flight": "of them calling VICIdial right now (the lead may still be added)",
    "notifications": "outcome notifications of its jobs not yet delivered (or failed)",
}
_SCAN_PAGE = 500
_log = logs.get_logger("dispatcher.ops.erasure")


@dataclass(frozen=True)
class Target:
    """What an eraser is given: the phone, its index key, and the jobs found for it."""

    phone: str
    phone_key: str
    #: job ids listed in the index (read before anything is erased)
    job_ids: tuple[str, ...] = ()
    #: (job id, idempotency key) of jobs found by --scan (not in the index)
    scanned: tuple[tuple[str, str], ...] = ()


#: One store's eraser: counts by kind (with ``dry_run``: what it would erase).
Eraser = Callable[[Backend, Target, bool], dict[str, int]]


def _erase_fleet_messages(backend: Backend, target: Target, dry_run: bool) -> dict[str, int]:
    """Pause and look-up records (one per dialer) whose error line quotes the number."""
    keys = backend.keys
    found = 0
    pattern = re.compile(rf"(?<!\d){re.escape(target.phone)}(?!\d)")
    with broker_errors(backend.settings):
        servers = {str(s) for s in backend.redis.smembers(keys.pauses)}
        records = [keys.pause(s) for s in servers]
        looked = {str(s) for s in backend.redis.smembers(keys.lookups)}
        records += [keys.lookup(s) for s in looked]
        for key in records:
            error = str(backend.redis.hget(key, "error") or "")
            if pattern.search(error):
                found += 1
                if not dry_run:
                    masked = pattern.sub(lambda m: logs.mask_phone(m.group(0)), error)
                    backend.redis.hset(key, "error", masked)  # TTL kept: HSET leaves it
    return {"fleet_messages": found}


#: Every store besides the jobs' own, in order. See :func:`register_eraser`.
ERASERS: dict[str, Eraser] = {"fleet_messages": _erase_fleet_messages}


def register_eraser(name: str, eraser: Eraser) -> None:
    """Add a store to what :func:`forget_phone` erases (before the jobs' own eraser)."""
    ERASERS[name] = eraser


# The outcome notifications' backlog (the outbox): events of the jobs being forgotten.
register_eraser("notifications", erase_notifications)


def _erase_jobs(backend: Backend, target: Target, dry_run: bool) -> dict[str, int]:
    with broker_errors(backend.settings):
        return backend.execution.forget(
            target.phone_key,
            dry_run=dry_run,
            ttl=int(backend.settings.job_ttl_s),
            extra=list(target.scanned),
        )


@dataclass(frozen=True)
class Erasure:
    """What :func:`forget_phone` did (or, with ``dry_run``, would do)."""

    masked_phone: str
    counts: dict[str, int]
    dry_run: bool
    scanned: bool
    #: whether every dead letter is in the phone index (False while the workers still
    #: index the previous release's letters: then only --scan is sure to find them all)
    index_complete: bool = True

    @property
    def total(self) -> int:
        return sum(n for kind, n in self.counts.items() if kind != "in_flight")

    def to_dict(self) -> dict[str, Any]:
        return {
            "phone": self.masked_phone,
            "dry_run": self.dry_run,
            "scanned": self.scanned,
            "index_complete": self.index_complete,
            "erased": dict(self.counts),
            "vicidial": VICIDIAL_NOTE,
        }


def normalise_phone(text: str, *, default_phone_code: str = "1") -> str:
    """The phone as jobs hold it (the lead rules' formatting removed); InvalidLead naming
    ``phone_number`` when it is not a phone number."""
    lead = make_lead(
        {"agent_user": "forget", "phone_number": text}, default_phone_code=default_phone_code
    )
    return lead.phone_number


def forget_phone(
    backend: Backend,
    phone: str,
    *,
    dry_run: bool = False,
    scan: bool = False,
    operator: str | None = None,
) -> Erasure:
    """Erase ``phone`` from every store (see the module docstring); log ``data.forgotten``.

    Raises InvalidLead (field ``phone_number``) for something that is not a phone number.
    """
    digits = normalise_phone(phone, default_phone_code=backend.settings.phone_code)
    key = phone_key(index_key(backend), digits)
    with broker_errors(backend.settings):
        listed = [str(f) for f in backend.redis.hkeys(backend.keys.phone(key)) if f[:1] != "#"]
    scanned = tuple(_scan(backend, digits)) if scan else ()
    target = Target(digits, key, tuple(listed), scanned)
    counts: dict[str, int] = {}
    for eraser in [*ERASERS.values(), _erase_jobs]:
        for kind, n in eraser(backend, target, dry_run).items():
            counts[kind] = counts.get(kind, 0) + n
    erasure = Erasure(
        logs.mask_phone(digits), counts, dry_run, scan, index_complete=index_complete(backend)
    )
    _log.info(
        "data.forgotten" if not dry_run else "data.forget_previewed",
        phone=digits,
        operator=operator,
        scanned=scan,
        **counts,
    )
    return erasure


# -- --scan: jobs of the release before the index ------------------------------------------


def _message_of(envelope: str) -> dict[str, Any] | None:
    """The job message inside a broker envelope (kombu's JSON, base64 body), if any."""
    try:
        body = json.loads(base64.b64decode(json.loads(envelope)["body"]))
        message = body[0][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return message if isinstance(message, dict) else None


def _holds(job: Any, phone: str) -> bool:
    lead = job.get("lead") if isinstance(job, dict) else None
    return isinstance(lead, dict) and phone in (lead.get("phone_number"), lead.get("alt_phone"))


def _quotes(text: str, phone: str) -> bool:
    """``text`` holds ``phone`` as a number of its own (not inside a longer run of digits)."""
    return re.search(rf"(?<!\d){re.escape(phone)}(?!\d)", text) is not None


def _scan(backend: Backend, phone: str) -> Iterator[tuple[str, str]]:
    """(job id, idempotency key) of every job holding ``phone``, found by reading it all."""
    keys = backend.keys
    r = backend.redis
    found: dict[str, str] = {}
    with broker_errors(backend.settings):
        # Dead letters, through their index (no keyspace scan for these).
        start = 0
        while True:
            ids = [str(i) for i in r.zrange(keys.dead_letters, start, start + _SCAN_PAGE - 1)]
            if not ids:
                break
            for dl_id, raw in zip(ids, r.mget([keys.dead_letter(i) for i in ids]), strict=True):
                if raw is None:
                    continue
                try:
                    job = json.loads(raw).get("job")
                except ValueError:
                    continue
                if _holds(job, phone) or _quotes(str(raw), phone):
                    found[dl_id] = str((job or {}).get("idempotency_key") or "")
            start += _SCAN_PAGE
        # Messages waiting in the lanes and the retry schedule.
        lists = [
            keys.queue,
            *(
                named(d, p)
                for d in backend.settings.dialers.names
                for p in ("realtime", "bulk")
                for named in (keys.lane, keys.list_lane)
            ),
        ]
        for name in lists:

            def lane(a: int, b: int, name: str = name) -> Any:
                return r.lrange(name, a, b)

            for chunk in _chunks(lane):
                for envelope in chunk:
                    message = _message_of(str(envelope))
                    if message is not None and _holds(message, phone):
                        found.setdefault(
                            str(message.get("job_id")), str(message.get("idempotency_key") or "")
                        )

        def scheduled(a: int, b: int) -> Any:
            return r.zrange(keys.scheduled, a, b)

        for chunk in _chunks(scheduled):
            for envelope in chunk:
                message = _message_of(str(envelope))
                if message is not None and _holds(message, phone):
                    found.setdefault(
                        str(message.get("job_id")), str(message.get("idempotency_key") or "")
                    )
        # Job states whose error line quotes the number (VICIdial echoes it), by SCAN.
        for key in r.scan_iter(match=keys.job("*"), count=1000):
            if _quotes(str(r.hget(key, "error") or ""), phone):
                found.setdefault(str(key).rsplit(":", 1)[1], "")
        # Idempotency records naming a job found (the key itself is the producer's).
        for key in r.scan_iter(match=keys.idempotency("*"), count=1000):
            job_id = str(r.get(key) or "").split(" ", 1)[0]
            if job_id in found and not found[job_id]:
                found[job_id] = str(key)[len(keys.idempotency("")) :]
    yield from found.items()


def _chunks(read: Callable[[int, int], Any]) -> Iterator[list[Any]]:
    start = 0
    while True:
        chunk = list(read(start, start + _SCAN_PAGE - 1))
        if not chunk:
            return
        yield chunk
        start += _SCAN_PAGE
