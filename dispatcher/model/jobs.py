"""The job: its versioned JSON message, its broker envelope, and its state in Redis.

A job message of a lead for an agent (version 1) is a JSON object::

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

A job being reconciled (a call whose answer never came, see
dispatcher/vicidial/findings.py) carries ``"reconcile": {"step": "lookup" | "recall" |
"verify", "since": epoch, "error": "...", "http_status": 504 | null, "tries": 0,
"absent": 0, "lead_id": "..."}``:
the next delivery looks the lead up in VICIdial (lookup), calls again after a look-up
found nothing (recall), or checks an added job for a late copy (verify). Every other
message has no such key.

A job of a lead for a list (the Non-Agent API's ``add_lead``; DESIGN.md "Two ways into
VICIdial") is a version 2 message: its ``lead`` names ``list_id`` instead of
``agent_user`` (and follows add_lead's field rules, :mod:`dispatcher.model.list_lead`),
and it carries add_lead's options (:mod:`dispatcher.model.list_options`)::

    {"v": 2, "job_id": "…", "lead": {"list_id": "101", "phone_number": "…", …},
     "list_options": {"campaign_id": "TESTCAMP", "duplicate_check": "DUPLIST",
                      "add_to_hopper": false, "hopper_priority": null, "callback": null,
                      "custom_fields": {}, "lookup_state": false, "tz_method": "",
                      "usacan_prefix_check": false, "usacan_areacode_check": false,
                      "list_exists_check": true},
     … every other key as in version 1}

Producers write version 1 for agent jobs, unchanged, so that the previous release's
workers keep serving them during a rolling upgrade; version 2 only for list jobs, which
those workers cannot serve: they would refuse version 2 as a message that is not a job
(an ``invalid_payload`` letter), so list jobs travel in lanes of their own
(``Keys.list_lane``) that those workers never poll (README "Upgrading"). A worker reads
both and serves both targets (:meth:`Job.from_message`'s ``serves``: a job of a target
left out waits for a worker that serves it, as a job of an unknown dialer does).

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
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from dispatcher.model.dialers import DIALER_NAME, PRIORITIES, Dialers
from dispatcher.model.errors import InvalidLead, InvalidPayload, UnknownDialer
from dispatcher.model.lead import Lead, make_lead
from dispatcher.model.list_lead import make_list_lead
from dispatcher.model.list_options import (
    LIST_OPTION_KEYS,
    ListOptions,
    check_with_lead,
    make_list_options,
)

__all__ = [
    "JOB_STATES",
    "JOB_VERSION",
    "LIST_JOB_VERSION",
    "RECONCILE_STEPS",
    "TARGETS",
    "TASK_NAME",
    "Job",
    "Reconcile",
    "broker_envelope",
    "iso",
    "new_job_id",
    "state_to_status",
]

JOB_VERSION = 1
#: The message version of list jobs (version 1 and the list target).
LIST_JOB_VERSION = 2
#: Producers send the task by this name; `dispatcher` never imports `workers`.
TASK_NAME = "dispatcher.add_lead"
#: ``duplicate``: a list job whose lead VICIdial's duplicate check found (final).
JOB_STATES = ("queued", "running", "retrying", "added", "duplicate", "dead")
#: Where a job's lead goes: an agent's manual dial list (external_add_lead), or a list
#: (add_lead).
TARGETS = ("agent", "list")

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
    #: add_lead's options: a list job's (None for an agent job: the key is left out)
    list_options: ListOptions | None = None
    #: the job's own receiver of outcome notifications (None: DISPATCHER_NOTIFY_URL, if
    #: any; the key is left out of the message)
    notify_url: str | None = None
    v: int = field(default=JOB_VERSION)

    def __post_init__(self) -> None:
        if self.lead.list_id:
            if self.list_options is None:
                raise ValueError("a job of a lead for a list needs its list_options")
            if self.v < LIST_JOB_VERSION:
                object.__setattr__(self, "v", LIST_JOB_VERSION)  # the version it needs
        elif self.list_options is not None:
            raise ValueError("list_options belong to a job of a lead for a list")

    @property
    def agent_user(self) -> str:
        """The agent of an agent job ("" for a list job)."""
        return self.lead.agent_user

    @property
    def target(self) -> str:
        """``"agent"`` (external_add_lead) or ``"list"`` (add_lead)."""
        return self.lead.target

    def to_message(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies the Lead field by field, only for
        # the next line to replace it, and was 44% of enqueue_leads' time.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["lead"] = self.lead.to_dict()
        if self.reconcile is None:
            del data["reconcile"]
        else:
            data["reconcile"] = self.reconcile.to_dict()
        if self.list_options is None:
            del data["list_options"]  # an agent job's message is version 1's, unchanged
        else:
            data["list_options"] = self.list_options.to_dict()
        if self.notify_url is None:
            del data["notify_url"]
        return data

    def evolve(self, **changes: Any) -> Job:
        return replace(self, **changes)

    def replayed(self, *, lost_answer: str = "") -> Job:
        """The publication a replay of the job's dead letter sends: the next one (seq + 1),
        with a fresh attempt count and agent wait, one replay more, and no reconciliation
        (a replay calls VICIdial; it does not look the lead up). Everything else, the
        DNC checks and the idempotency key first, travels unchanged.

        ``lost_answer``: the letter's error when it is ``ambiguous`` (a call's answer was
        lost). A list job whose duplicate check guards the call then goes out as a call
        that follows a lost answer (reconcile step ``recall``): a duplicate answer naming
        the lead the lost call added is recognised by the job's marker, not taken for
        another lead."""
        recall = None
        options = self.list_options
        if lost_answer and options is not None and options.checks_duplicates:
            recall = Reconcile(step="recall", error=lost_answer[:2000])
        return replace(
            self,
            attempts=0,
            seq=self.seq + 1,
            replays=self.replays + 1,
            first_failed_at=None,
            agent_wait_since=None,
            reconcile=recall,
        )

    def looking_up(self, reconcile: Reconcile) -> Job:
        """The next publication (seq + 1): a look-up of the job's lead in VICIdial, where
        ``reconcile`` says how the reconciliation stands (the attempts made still count)."""
        return replace(self, seq=self.seq + 1, reconcile=reconcile)

    @classmethod
    def from_message(
        cls,
        data: object,
        *,
        dialers: Dialers | None = None,
        serves: Collection[str] = ("agent", "list"),
    ) -> Job:
        """Parse a queue message; anything that is not a valid job is InvalidPayload.

        The lead is validated again, with the rules of its target (agent or list) and of
        its dialer's mode (``non_latin`` of the dialer the worker sends it to, from
        ``dialers``, which a worker passes) or, without ``dialers``, of the mode the
        message records from its enqueue. A valid job whose dialer ``dialers`` does not
        know, or whose lead passes only the mode it was enqueued with, is
        :class:`~dispatcher.model.errors.UnknownDialer` (carrying the job as enqueued).
        So is, for a worker (``dialers`` given), a job whose target is not among
        ``serves``: it waits for a worker that serves it, nothing is called.
        """
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except ValueError:
                raise InvalidPayload("message is not JSON") from None
        if not isinstance(data, Mapping):
            raise InvalidPayload(f"message is a {type(data).__name__}, not a JSON object")
        version = data.get("v")
        if isinstance(version, bool) or version not in (JOB_VERSION, LIST_JOB_VERSION):
            raise InvalidPayload(f"unsupported job version {version!r}")
        job_id = data.get("job_id")
        if not isinstance(job_id, str) or not 1 <= len(job_id) <= 100:
            raise InvalidPayload("job_id missing or not a string")
        lead_data = data.get("lead")
        if not isinstance(lead_data, Mapping):
            raise InvalidPayload("lead missing or not an object")
        if "list_id" in lead_data and version == JOB_VERSION:
            raise InvalidPayload("a lead for a list (list_id) is a version 2 message")
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
            lead, options = _target(data, lead_data, mode)
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
        job = cls(
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
            list_options=options,
            notify_url=notify_url,
            v=int(version),
        )
        if dialers is not None and job.target not in serves:
            whom = "a list (add_lead)" if job.target == "list" else "an agent"
            raise UnknownDialer(
                f"this worker does not serve leads for {whom}: the job waits for a worker "
                f"that does (target {job.target!r}; served: {', '.join(serves) or 'none'})",
                job=cls.from_message(data),
                dialer=dialer_name,
            )
        return job


def _target(
    data: Mapping[str, Any], lead_data: Mapping[str, Any], non_latin: bool
) -> tuple[Lead, ListOptions | None]:
    """The message's lead, by its target's rules, and a list job's options; InvalidLead
    (its fields wrong) or InvalidPayload (the message's shape wrong)."""
    raw = data.get("list_options")
    if "list_id" not in lead_data:
        if raw is not None:
            raise InvalidPayload("list_options in a job of a lead for an agent")
        return make_lead(lead_data, default_phone_code="", non_latin=non_latin), None
    if not isinstance(raw, Mapping):
        raise InvalidPayload("list_options missing or not an object")
    unknown = sorted(str(k) for k in raw if k not in LIST_OPTION_KEYS)
    if unknown:
        raise InvalidPayload(f"list_options: unknown key {unknown[0]!r}")
    lead = make_list_lead(lead_data, default_phone_code="", non_latin=non_latin)
    options = make_list_options(
        raw, campaign_dnc_check=data.get("campaign_dnc_check") is True, non_latin=non_latin
    )
    problems = check_with_lead(lead, options)
    if problems:
        raise InvalidLead(problems)
    return lead, options


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
        # The list the lead is in: where it was added, or (duplicate) where the lead
        # VICIdial found is, where its answer says.
        "list_id": raw.get("list_id") if raw.get("state") in ("added", "duplicate") else None,
        "campaign": raw.get("campaign") or None,
        "agent_user": raw.get("agent_user") or None,
        # Where the lead goes: an agent's manual dial list, or a list (the list asked
        # for and the campaign sent with it).
        "target": raw.get("target") or "agent",
        "target_list_id": raw.get("target_list_id") or None,
        "campaign_id": raw.get("campaign_id") or None,
        # duplicate: the lead VICIdial's duplicate check found instead of adding one, and
        # the check that found it (DUPLIST, DUPSYS, ...).
        "existing_lead_id": raw.get("existing_lead_id") or None,
        "duplicate_check": raw.get("duplicate_check") or None,
        # A list's lead added: what add_lead reported of the hopper, the callback and the
        # custom fields (added, outside_local_time, user_not_valid, ...), and what the
        # job asked for that the answer does not report done.
        "hopper": raw.get("hopper") or None,
        "callback": raw.get("callback") or None,
        "custom_fields": raw.get("custom_fields") or None,
        "unfinished": [x for x in raw["unfinished"].split("; ") if x]
        if raw.get("unfinished")
        else None,
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
