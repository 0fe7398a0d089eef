"""The outbox of outcome notifications (webhooks), in Redis.

A job's outcome command (``succeed``, ``reconciled``, ``dead`` in ``execution.lua``)
writes the event of that outcome into the outbox in the same atomic step as the outcome,
when the job has a receiver (its own ``notify_url``, or ``DISPATCHER_NOTIFY_URL``): a
worker that dies between the outcome and the POST loses nothing. :class:`Notify` is what
the worker hands that command (:func:`notify_for` builds it from the job and the
settings); the rest of the event's life is ``outbox.lua`` (beside this file, the key
layout at its top), wrapped by :class:`Outbox`: the senders (``workers/notifier.py``)
claim due events with a lease and settle them; operators list, retry and purge them
(``dispatcher notify``, the console); ``dispatcher forget`` erases those of its jobs.

Ordering: a job's events form a list, and only its first undelivered event is ever due,
so a receiver gets a job's ``lead.dead_lettered`` before its ``lead.replayed_added``.

Retention: a delivered event is deleted at once. One that could not be delivered within
``DISPATCHER_NOTIFY_RETRY_S`` is kept as *failed* (the events of its job behind it wait)
until retried, purged, erased, or ``DISPATCHER_NOTIFY_FAILED_RETENTION_DAYS`` after it
failed (the senders' maintenance, :meth:`Outbox.expire_failed`).

What the event says of the job: its ids, dialer, state, lead ids, reason, and the error
line, which is redacted (the one redactor) and scrubbed of the phone and of every lead
field's value before it is stored (:func:`event_error`): the event holds no lead field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis

from dispatcher.config.logs import mask_digits
from dispatcher.config.redaction import redact
from dispatcher.config.settings import Settings
from dispatcher.model.jobs import iso, new_job_id
from dispatcher.model.notifications import Event
from dispatcher.store.keys import Keys

__all__ = [
    "CLAIMED",
    "Claimed",
    "Notify",
    "Outbox",
    "OutboxCounts",
    "StoredEvent",
    "event_error",
    "notify_for",
]

_SOURCE = resources.files("dispatcher.store").joinpath("outbox.lua").read_text(encoding="utf-8")

#: The fields ``claim`` returns per event, in order (outbox.lua FIELDS).
CLAIMED = (
    "job_id",
    "type",
    "state",
    "created_at",
    "url",
    "idempotency_key",
    "dialer",
    "lead_id",
    "list_id",
    "campaign",
    "existing_lead_id",
    "reason",
    "error",
    "attempts",
    "due_since",
)
#: What an event's error line may hold at most (it is a VICIdial line or an exception).
MAX_ERROR = 500
_LEAD_VALUE_MIN = 3


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)


def event_error(line: str, lead: Mapping[str, Any] | None, secrets: Iterable[str] = ()) -> str:
    """The error line as an event may show it: passwords redacted (the one redactor),
    every value of the job's lead (phone, names, e-mail, the agent...) replaced by
    ``[lead field]``, any other run of 6+ digits masked, at most :data:`MAX_ERROR` long."""
    text = redact(line or "", tuple(secrets))
    values = sorted(
        {
            str(v).strip()
            for v in (lead or {}).values()
            if isinstance(v, str | int) and not isinstance(v, bool)
        },
        key=len,
        reverse=True,
    )
    for value in values:
        if len(value) >= _LEAD_VALUE_MIN:
            text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", "[lead field]", text)
    text = mask_digits(text)
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 3] + "..."


@dataclass(frozen=True)
class Notify:
    """The notify tail of an outcome command (execution.lua ``notify``): the event's id,
    the receiver's URL, and the facts of the job the event names besides the outcome's."""

    url: str
    idempotency_key: str = ""
    dialer: str = ""
    #: the error line as the event shows it (:func:`event_error`)
    error: str = ""
    event_id: str = ""

    def args(self) -> tuple[str, str, str, str, str]:
        return (self.event_id, self.url, self.idempotency_key, self.dialer, self.error)

    @staticmethod
    def tail(notify: Notify | None) -> tuple[str, str, str, str, str]:
        """The five arguments an outcome command ends with ('' each: no event)."""
        return notify.args() if notify is not None else ("", "", "", "", "")


def notify_for(
    job: Any, settings: Settings, *, error: str = "", dialer: str | None = None
) -> Notify | None:
    """The notify tail for an outcome of ``job`` (a :class:`~dispatcher.model.jobs.Job`
    or its message), or None when it has no receiver: its own ``notify_url``, else
    ``DISPATCHER_NOTIFY_URL``. ``error``: the outcome's error line (scrubbed here);
    ``dialer``: the dialer that served it (default: the job's)."""
    if isinstance(job, Mapping):
        url = job.get("notify_url")
        key = job.get("idempotency_key")
        lead = job.get("lead")
        named = job.get("dialer")
    else:
        url = getattr(job, "notify_url", None)
        key = getattr(job, "idempotency_key", None)
        lead_obj = getattr(job, "lead", None)
        lead = lead_obj.to_dict() if lead_obj is not None else None
        named = getattr(job, "dialer", None)
    url = url if isinstance(url, str) and url else settings.notify_url
    if not url:
        return None
    if dialer is None:
        dialer = named if isinstance(named, str) else ""
    return Notify(
        url=url,
        idempotency_key=key if isinstance(key, str) else "",
        dialer=dialer or "",
        error=event_error(error, lead if isinstance(lead, Mapping) else None, settings.secrets)
        if error
        else "",
        event_id=new_job_id(),
    )


@dataclass(frozen=True)
class Claimed:
    """An event a sender claimed: the event, where it goes, and its retry bookkeeping."""

    event: Event
    url: str
    #: attempts so far, this one included
    attempts: int
    #: when the event became its job's first undelivered one (Redis time, epoch s)
    due_since: float
    #: the claim's token (settlements other than ``delivered`` need it)
    token: str


@dataclass(frozen=True)
class StoredEvent:
    """An undelivered event as ``dispatcher notify list`` shows it."""

    event: Event
    url: str
    status: str  # pending | waiting (behind an earlier event of its job) | failed
    attempts: int
    next_at: str | None
    failed_at: str | None
    last_error: str | None
    last_status: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.event.to_dict(),
            "status": self.status,
            "receiver": self.url,
            "attempts": self.attempts,
            "next_attempt_at": self.next_at,
            "failed_at": self.failed_at,
            "last_error": self.last_error,
            "last_status": self.last_status,
        }


@dataclass(frozen=True)
class OutboxCounts:
    """The backlog at a glance (one script call)."""

    #: undelivered events not failed (waiting behind another of their job included)
    pending: int
    failed: int
    #: pending events whose time has come (not claimed, not waiting)
    due: int
    #: age of the oldest pending event, seconds (None: none pending)
    oldest_pending_age_s: float | None


def _num(value: str) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


class Outbox:
    """The commands of outbox.lua, bound to one Redis client and key prefix."""

    def __init__(self, client: redis.Redis, *, keys: Keys) -> None:
        self._client = client
        self._script: Any = client.register_script(_SOURCE)
        self._keys = keys
        self._prefix = keys.prefix

    def call(self, command: str, *args: Any, client: Any = None) -> Any:
        return self._script(keys=[self._prefix], args=[command, *args], client=client)

    def queue(self, pipe: Any, command: str, *args: Any) -> None:
        """Queue one command on a pipeline as a bare EVALSHA (the caller handles NOSCRIPT)."""
        pipe.evalsha(self._script.sha, 1, self._prefix, command, *args)

    def load(self) -> None:
        self._script.registered_client.script_load(self._script.script)

    # -- senders --------------------------------------------------------------------------

    def claim(self, *, limit: int, lease_s: float, token: str) -> list[Claimed]:
        """Claim up to ``limit`` due events for ``lease_s`` seconds."""
        return self._claimed(self.call("claim", limit, f"{lease_s:.3f}", token), token)

    @staticmethod
    def _claimed(raw: Any, token: str) -> list[Claimed]:
        reply = [_text(x) for x in raw]
        width = 1 + len(CLAIMED)
        out = []
        for i in range(0, len(reply), width):
            eid = reply[i]
            fields = dict(zip(CLAIMED, reply[i + 1 : i + width], strict=True))
            out.append(
                Claimed(
                    event=Event.from_fields(
                        eid, fields, created_at=iso(_num(fields["created_at"]))
                    ),
                    url=fields["url"],
                    attempts=int(fields["attempts"] or 1),
                    due_since=_num(fields["due_since"]) or 0.0,
                    token=token,
                )
            )
        return out

    @staticmethod
    def delivered_args(event_id: str, *, status: int) -> tuple[Any, ...]:
        return ("delivered", event_id, status)

    @staticmethod
    def attempt_failed_args(
        event_id: str,
        *,
        token: str,
        delay_s: float,
        window_s: float,
        error: str,
        status: int | None,
    ) -> tuple[Any, ...]:
        return (
            "attempt_failed",
            event_id,
            token,
            f"{delay_s:.3f}",
            f"{window_s:.3f}",
            error[:MAX_ERROR],
            "" if status is None else status,
        )

    @staticmethod
    def release_args(event_id: str, *, token: str, delay_s: float) -> tuple[Any, ...]:
        return ("release", event_id, token, f"{delay_s:.3f}")

    def settle(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        """Run several settlements (the ``*_args`` tuples) in one round trip; each reply
        in its place (an error reply as its exception). Raises for a lost connection."""
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            self.queue(pipe, *call)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
            self.load()
            missing = [
                i for i, r in enumerate(replies) if isinstance(r, redis.exceptions.NoScriptError)
            ]
            again = self.settle([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    def exchange(
        self, calls: list[tuple[Any, ...]], *, claim_limit: int, lease_s: float, token: str
    ) -> tuple[list[Any], list[Claimed]]:
        """Settlements (as :meth:`settle`) and then a claim of up to ``claim_limit`` due
        events (none for 0), in one round trip: a sender's every turn."""
        if claim_limit <= 0:
            return (self.settle(calls) if calls else []), []
        claim = ("claim", claim_limit, f"{lease_s:.3f}", token)
        replies = self.settle([*calls, claim])
        reply = replies.pop()
        if isinstance(reply, Exception):
            raise reply
        return replies, self._claimed(reply, token)

    def expire_failed(self, *, before: float, limit: int) -> list[tuple[str, str, str]]:
        """Remove failed events that failed before ``before`` (epoch): (id, job id, type)."""
        items = [_text(x) for x in self.call("expire_failed", f"{before:.6f}", limit)]
        return list(zip(items[0::3], items[1::3], items[2::3], strict=True))

    # -- operators ------------------------------------------------------------------------

    def retry(self, event_ids: list[str]) -> int:
        """Send failed events again (a new retry window); how many were failed."""
        return int(self.call("retry", *event_ids)) if event_ids else 0

    def purge(self, event_ids: list[str]) -> int:
        """Remove failed events for good; how many were failed."""
        return int(self.call("purge", *event_ids)) if event_ids else 0

    def forget(self, job_ids: Iterable[str], *, dry_run: bool) -> int:
        """Remove the undelivered events of these jobs (an erasure); how many."""
        ids = list(job_ids)
        if not ids:
            return 0
        return int(self.call("forget", "1" if dry_run else "0", *ids))

    def counts(self) -> OutboxCounts:
        return self.parse_counts(self.call("counts"))

    @staticmethod
    def parse_counts(reply: Any) -> OutboxCounts:
        now, pending, failed, due, oldest = (_text(x) for x in reply)
        at = _num(oldest)
        return OutboxCounts(
            pending=int(pending),
            failed=int(failed),
            due=int(due),
            oldest_pending_age_s=None if at is None else round(max(0.0, float(now) - at), 1),
        )

    def failed_ids(self, *, limit: int, offset: int = 0) -> list[str]:
        """Failed event ids, oldest failure first."""
        ids = self._client.zrange(self._keys.notify_failed, offset, offset + limit - 1)
        return [_text(x) for x in ids]

    def pending_ids(self, *, limit: int, offset: int = 0) -> list[str]:
        """Pending event ids, oldest first."""
        ids = self._client.zrange(self._keys.notify_pending, offset, offset + limit - 1)
        return [_text(x) for x in ids]

    def read(self, event_ids: list[str]) -> list[StoredEvent]:
        """The events (gone ones left out), in the order given."""
        if not event_ids:
            return []
        pipe = self._client.pipeline(transaction=False)
        for eid in event_ids:
            pipe.hgetall(self._keys.notify_event(eid))
        for eid in event_ids:
            pipe.zscore(self._keys.notify_due, eid)
        replies = pipe.execute()
        n = len(event_ids)
        out = []
        for eid, raw, due in zip(event_ids, replies[:n], replies[n:], strict=True):
            if not raw:
                continue
            fields = {_text(k): _text(v) for k, v in raw.items()}
            status = fields.get("status") or ("pending" if due is not None else "waiting")
            last_status = fields.get("last_status") or ""
            out.append(
                StoredEvent(
                    event=Event.from_fields(
                        eid, fields, created_at=iso(_num(fields.get("created_at", "")))
                    ),
                    url=fields.get("url", ""),
                    status=status,
                    attempts=int(fields.get("attempts") or 0),
                    next_at=iso(_num(fields.get("next_at", ""))) if status == "pending" else None,
                    failed_at=iso(_num(fields.get("failed_at", ""))),
                    last_error=fields.get("last_error") or None,
                    last_status=int(last_status) if last_status.isdigit() else None,
                )
            )
        return out
