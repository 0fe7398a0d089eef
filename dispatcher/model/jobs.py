"""The job: its versioned JSON message, its broker envelope, and its state in Redis.

A job message (version 1) is a JSON object::

    {"v": 1, "job_id": "…", "lead": {"agent_user": "1000", "phone_number": "…", …},
     "dnc_check": true, "campaign_dnc_check": true, "idempotency_key": null,
     "enqueued_at": 1764250000.123, "attempts": 0, "seq": 0, "replays": 0,
     "first_failed_at": null, "agent_wait_since": null, "non_latin": false}

A job with a receiver of its own for outcome notifications also carries
``"notify_url": "https://..."`` (:mod:`dispatcher.model.notifications`; checked against
``DISPATCHER_NOTIFY_ALLOWED`` at enqueue); it travels through retries and replays.

``attempts`` counts calls already made; ``seq`` counts publications of the job
(each retry and each replay publishes it again with ``seq + 1``) and lets a worker
recognise a stale redelivered copy; the DNC flags travel unchanged through
retries and replays. ``non_latin`` records the lead rules the lead was validated
with at enqueue (the dialer's ``use_non_latin``; absent in older messages: false).

A job being reconciled (a call whose answer never came, see dispatcher/vicidial/reconcile.py)
carries ``"reconcile": {"step": "lookup" | "recall" | "verify", "since": epoch,
"error": "...", "http_status": 504 | null, "tries": 0, "absent": 0, "lead_id": "..."}``:
the next delivery looks the lead up in VICIdial (lookup), calls again after a look-up
found nothing (recall), or checks an added job for a late copy (verify). Every other
message has no such key.

The message is wrapped in a Celery protocol-2 envelope by :func:`broker_envelope`
and pushed with ``LPUSH`` inside our own Lua scripts, so that enqueueing a batch
(job state, idempotency keys, queue) is one atomic Redis round trip. The format
is the one kombu's Redis transport writes itself; the end-to-end tests prove a
stock ``celery worker`` consumes it.
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from dispatcher.model.dialers import DIALER_NAME, PRIORITIES, Dialers
from dispatcher.model.errors import InvalidLead, InvalidPayload, UnknownDialer
from dispatcher.model.lead import Lead, make_lead

__all__ = [
    "JOB_STATES",
    "JOB_VERSION",
    "RECONCILE_STEPS",
    "TASK_NAME",
    "Job",
    "Reconcile",
    "broker_envelope",
    "iso",
    "new_job_id",
    "state_to_status",
]

JOB_VERSION = 1
#: Producers send the task by this name; `dispatcher` never imports `workers`.
TASK_NAME = "dispatcher.add_lead"
JOB_STATES = ("queued", "running", "retrying", "added", "dead")

_BOOL_KEYS = ("dnc_check", "campaign_dnc_check")


#: The version (4) and variant (RFC 4122) bits of a random UUID.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def _uuid4_hex() -> str:
    """``uuid.uuid4().hex``, the same 16 random bytes from the OS, without building a
    UUID object (a producer makes two per lead: a fifth of a batched enqueue's time)."""
    n = (int.from_bytes(os.urandom(16), "big") & _UUID4_CLEAR) | _UUID4_SET
    return f"{n:032x}"


def new_job_id() -> str:
    return _uuid4_hex()


#: Timestamps a message may carry: 2000-01-01 to 2100-01-01 (epoch seconds).
EARLIEST, LATEST = 946_684_800.0, 4_102_444_800.0


def iso(epoch: float | None) -> str | None:
    """Epoch seconds -> UTC ISO 8601 with milliseconds (None, or a time no date holds: None)."""
    if epoch is None:
        return None
    try:
        return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return None


RECONCILE_STEPS = ("lookup", "recall", "verify")


@dataclass(frozen=True)
class Reconcile:
    """Where a job stands in reconciliation (the message's ``reconcile`` object)."""

    step: str
    #: when the call whose answer never came was given up (epoch seconds)
    since: float = 0.0
    #: that call's failure (the ambiguous line) and HTTP status
    error: str = ""
    http_status: int | None = None
    #: look-ups of this step that could not be answered so far
    tries: int = 0
    #: look-ups that found nothing (each was followed by a call)
    absent: int = 0
    #: verify: the lead the job was added with
    lead_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "since": self.since,
            "error": self.error,
            "http_status": self.http_status,
            "tries": self.tries,
            "absent": self.absent,
            "lead_id": self.lead_id,
        }

    def evolve(self, **changes: Any) -> Reconcile:
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, data: object) -> Reconcile:
        """Parse the message's object; InvalidPayload naming the key if it is malformed."""
        if not isinstance(data, Mapping):
            raise InvalidPayload("reconcile is not an object")
        step = data.get("step")
        if step not in RECONCILE_STEPS:
            raise InvalidPayload(f"reconcile.step is not one of {', '.join(RECONCILE_STEPS)}")
        since = data.get("since", 0.0)
        if (
            isinstance(since, bool)
            or not isinstance(since, int | float)
            or not (since == 0 or EARLIEST <= since <= LATEST)
        ):
            raise InvalidPayload("reconcile.since is not a time between 2000 and 2100")
        http_status = data.get("http_status")
        if http_status is not None and (
            isinstance(http_status, bool) or not isinstance(http_status, int)
        ):
            raise InvalidPayload("reconcile.http_status is not an integer")
        counts = {}
        for key in ("tries", "absent"):
            value = data.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
                raise InvalidPayload(f"reconcile.{key} is not a non-negative integer")
            counts[key] = value
        texts = {}
        for key in ("error", "lead_id"):
            value = data.get(key, "")
            if not isinstance(value, str) or len(value) > 2000:
                raise InvalidPayload(f"reconcile.{key} is not a string")
            texts[key] = value
        return cls(
            step=str(step),
            since=float(since),
            error=texts["error"],
            http_status=http_status,
            tries=counts["tries"],
            absent=counts["absent"],
            lead_id=texts["lead_id"],
        )


@dataclass(frozen=True)
class Job:
    job_id: str
    lead: Lead
    dnc_check: bool = True
    campaign_dnc_check: bool = True
    idempotency_key: str | None = None
    enqueued_at: float = 0.0
    attempts: int = 0
    seq: int = 0
    replays: int = 0
    first_failed_at: float | None = None
    agent_wait_since: float | None = None
    non_latin: bool = False
    #: the dialer (VICIdial server) that gets the lead; "" (older messages): the default
    dialer: str = ""
    #: "realtime" or "bulk": within a dialer, realtime jobs are taken first
    priority: str = "realtime"
    #: reconciliation in progress (None for every other job: the key is left out)
    reconcile: Reconcile | None = None
    #: the job's own receiver of outcome notifications (None: DISPATCHER_NOTIFY_URL, if
    #: any; the key is left out of the message)
    notify_url: str | None = None
    v: int = field(default=JOB_VERSION)

    @property
    def agent_user(self) -> str:
        return self.lead.agent_user

    def to_message(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies the Lead field by field, only for
        # the next line to replace it, and was 44% of enqueue_leads' time.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["lead"] = self.lead.to_dict()
        if self.reconcile is None:
            del data["reconcile"]
        else:
            data["reconcile"] = self.reconcile.to_dict()
        if self.notify_url is None:
            del data["notify_url"]
        return data

    def evolve(self, **changes: Any) -> Job:
        return replace(self, **changes)

    @classmethod
    def from_message(cls, data: object, *, dialers: Dialers | None = None) -> Job:
        """Parse a queue message; anything that is not a valid v1 job is InvalidPayload.

        The lead is validated again, with the rules of its dialer's mode (``non_latin``
        of the dialer the worker sends it to, from ``dialers``, which a worker passes)
        or, without ``dialers``, of the mode the message records from its enqueue.
        A valid job whose dialer ``dialers`` does not know, or whose lead passes only
        the mode it was enqueued with, is :class:`~dispatcher.model.errors.UnknownDialer`
        (carrying the job as enqueued).
        """
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except ValueError:
                raise InvalidPayload("message is not JSON") from None
        if not isinstance(data, Mapping):
            raise InvalidPayload(f"message is a {type(data).__name__}, not a JSON object")
        if data.get("v") != JOB_VERSION:
            raise InvalidPayload(f"unsupported job version {data.get('v')!r}")
        job_id = data.get("job_id")
        if not isinstance(job_id, str) or not 1 <= len(job_id) <= 100:
            raise InvalidPayload("job_id missing or not a string")
        lead_data = data.get("lead")
        if not isinstance(lead_data, Mapping):
            raise InvalidPayload("lead missing or not an object")
        recorded = data.get("non_latin", False)
        if not isinstance(recorded, bool):
            raise InvalidPayload("non_latin is not a boolean")
        dialer_name = data.get("dialer", "")
        if not isinstance(dialer_name, str) or (
            dialer_name and not DIALER_NAME.fullmatch(dialer_name)
        ):
            raise InvalidPayload("dialer is not a dialer name")
        priority = data.get("priority", "realtime")
        if priority not in PRIORITIES:
            raise InvalidPayload(f"priority is not one of {', '.join(PRIORITIES)}")
        mode = recorded
        if dialers is not None:
            dialer = dialers.resolve(dialer_name)
            if dialer is None:
                # A job, as enqueued (else InvalidPayload), for a dialer this worker does
                # not know: it waits for one that does.
                raise UnknownDialer(
                    f"dialer {dialer_name or '(the default one)'!r} is not one this worker "
                    f"knows (it knows: {', '.join(dialers.names)})",
                    job=cls.from_message(data),
                    dialer=dialer_name,
                )
            mode = dialer.non_latin
        try:
            # Re-validating costs microseconds and keeps a hand-made message from
            # reaching VICIdial with a field it would mangle.
            lead = make_lead(lead_data, default_phone_code="", non_latin=mode)
        except InvalidLead as exc:
            if mode == recorded or dialers is None:
                raise InvalidPayload(str(exc)) from None
            # Valid as enqueued, not with this worker's non_latin for the dialer: one
            # of the two configurations is stale (a rolling deploy). Wait for a worker
            # that agrees with the job's, rather than bury or mangle the lead.
            raise UnknownDialer(
                f"dialer {dialer_name or '(the default one)'!r} has non_latin="
                f"{str(mode).lower()} on this worker, but the lead was validated with "
                f"non_latin={str(recorded).lower()}: {exc}",
                job=cls.from_message(data),
                dialer=dialer_name,
            ) from None
        for key in _BOOL_KEYS:
            if not isinstance(data.get(key), bool):
                raise InvalidPayload(f"{key} missing or not a boolean")
        idem = data.get("idempotency_key")
        if idem is not None and not isinstance(idem, str):
            raise InvalidPayload("idempotency_key is not a string")
        # Checked at enqueue. One a hand-made message spoiled does not cost the lead: it
        # is kept as it is and the sender refuses it (a failed notification says why).
        raw_notify = data.get("notify_url")
        notify_url = raw_notify if isinstance(raw_notify, str) and raw_notify else None
        raw_reconcile = data.get("reconcile")
        reconcile = None if raw_reconcile is None else Reconcile.from_dict(raw_reconcile)
        ints = {}
        for key in ("attempts", "seq", "replays"):
            value = data.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
                raise InvalidPayload(f"{key} is not a non-negative integer below 2**31")
            ints[key] = value
        floats: dict[str, float | None] = {}
        for key in ("enqueued_at", "first_failed_at", "agent_wait_since"):
            value = data.get(key)
            if value is not None and (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
            ):
                raise InvalidPayload(f"{key} is not a number")
            if value and not EARLIEST <= value <= LATEST:
                # A date no datetime can show (1e20) once crashed the worker mid-job.
                raise InvalidPayload(f"{key} is not a time between 2000 and 2100: {value!r}")
            floats[key] = None if value is None else float(value)
        return cls(
            job_id=job_id,
            lead=lead,
            dnc_check=bool(data["dnc_check"]),
            campaign_dnc_check=bool(data["campaign_dnc_check"]),
            idempotency_key=idem,
            enqueued_at=floats["enqueued_at"] or 0.0,
            attempts=ints["attempts"],
            seq=ints["seq"],
            replays=ints["replays"],
            first_failed_at=floats["first_failed_at"],
            agent_wait_since=floats["agent_wait_since"],
            non_latin=mode,
            dialer=dialer_name,
            priority=str(priority),
            reconcile=reconcile,
            notify_url=notify_url,
        )


_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _envelope_template() -> str:
    """The envelope below as JSON, with %-placeholders for the parts that vary.

    Built once from the same structure, so it cannot drift from it; formatting
    it costs about half of building the dict and encoding it per message.
    """
    marks = {k: f"\x00{k}\x00" for k in ("body", "id", "retries", "queue", "tag", "at")}
    headers = {
        "lang": "py",
        "task": TASK_NAME,
        "id": marks["id"],
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": marks["retries"],
        "timelimit": [None, None],
        "root_id": marks["id"],
        "parent_id": None,
        # Celery logs argsrepr; never let it print the lead (phone numbers).
        "argsrepr": "(<job>,)",
        "kwargsrepr": "{}",
        "origin": "dispatcher",
        "ignore_result": True,
        # When this publication was pushed: the age of the oldest waiting job per lane.
        "published_at": marks["at"],
    }
    envelope = {
        "body": marks["body"],
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": marks["id"],
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": marks["queue"]},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": marks["tag"],
        },
    }
    text = json.dumps(envelope, separators=(",", ":")).replace("%", "%%")
    for key, mark in marks.items():
        text = text.replace(json.dumps(mark), f"%({key})s")
    return text


_ENVELOPE = _envelope_template()


def broker_envelope(message: Mapping[str, Any], *, queue: str, task_id: str | None = None) -> str:
    """A Celery protocol-2 message for ``dispatcher.add_lead(message)`` as kombu stores it.

    ``queue`` is the list the message is pushed to (its routing key: kombu puts a
    message whose worker died back where it came from). Every publication gets a
    fresh delivery tag; the task id is the job id, so Celery's own logs name the job.
    """
    task_id = task_id or str(message.get("job_id") or new_job_id())
    tag = _uuid4_hex()  # the delivery tag, as str(uuid.uuid4()) writes it
    try:
        body = orjson.dumps([[message], {}, _EMBED])
    except (TypeError, orjson.JSONEncodeError):  # what orjson refuses (an int past 64 bits)
        body = json.dumps([[message], {}, _EMBED]).encode()
    return _ENVELOPE % {
        # base64 needs no JSON escaping: quoted as it is.
        "body": '"' + base64.b64encode(body).decode("ascii") + '"',
        "id": json.dumps(task_id),
        "retries": int(message.get("attempts", 0) or 0),
        "queue": json.dumps(queue),
        "tag": f'"{tag[:8]}-{tag[8:12]}-{tag[12:16]}-{tag[16:20]}-{tag[20:]}"',
        "at": f"{time.time():.3f}",
    }


def _num(value: str | None) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def state_to_status(job_id: str, raw: Mapping[str, str]) -> dict[str, Any]:
    """The job-state hash as `dispatcher job --json` prints it (absent facts are null)."""
    attempts = raw.get("attempts")
    http_status = raw.get("http_status")
    waiting = (
        raw.get("waiting_for_dialer") or "(the default one)"
        if raw.get("state") == "retrying" and raw.get("reason") == "unknown_dialer"
        else None
    )
    return {
        "job_id": job_id,
        "state": raw.get("state"),
        "attempts": int(attempts) if attempts else 0,
        "reason": raw.get("reason") or None,
        "error": raw.get("error") or None,
        "http_status": int(http_status) if http_status else None,
        "lead_id": raw.get("lead_id") or None,
        "list_id": raw.get("list_id") if raw.get("state") == "added" else None,
        "campaign": raw.get("campaign") or None,
        "agent_user": raw.get("agent_user") or None,
        "dialer": raw.get("dialer") or None,
        "priority": raw.get("priority") or None,
        "enqueued_at": iso(_num(raw.get("enqueued_at"))),
        "updated_at": iso(_num(raw.get("updated_at"))),
        "next_attempt_at": iso(_num(raw.get("next_attempt_at"))),
        # Reconciliation: pending (a look-up is due), found, duplicates, unverified,
        # verifying, verified; the job's other leads in VICIdial, those deleted as
        # duplicates, and leads of its phone only lead_search sees (perhaps copies).
        "reconcile": raw.get("reconcile") or None,
        # A job whose dialer the worker that took it did not know: the dialer it waits
        # for, and when it becomes the dead letter unknown_dialer.
        "waiting_for_dialer": waiting,
        "dialer_wait_until": iso(_num(raw.get("dialer_wait_until"))) if waiting else None,
        "duplicate_lead_ids": _ids(raw.get("duplicate_lead_ids")),
        "deleted_lead_ids": _ids(raw.get("deleted_lead_ids")),
        "unverified_lead_ids": _ids(raw.get("unverified_lead_ids")),
    }


def _ids(value: str | None) -> list[str] | None:
    return [x for x in value.split(",") if x] if value else None
