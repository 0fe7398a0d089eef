"""Enqueueing leads: the producer side of the Python API.

``enqueue_lead`` validates, then writes the job state, the idempotency key and
the broker message in one atomic Redis round trip (the ``enqueue`` command of
execution.lua); it never talks to VICIdial and answers in about a millisecond.
``enqueue_leads`` does the same for many leads, one round trip per chunk of
:data:`BATCH_SIZE`.

An enqueue whose reply is lost (the connection dropped after the command was
sent) may or may not have happened. It is never re-sent blindly: the job ids are
made here, so Redis is asked whether the batch's jobs exist; if they do, their
ids are returned, if not the batch is sent again, and if Redis cannot be asked
within a few seconds the caller gets :class:`EnqueueUnconfirmed` (retry with the
same idempotency keys; without keys a retry may enqueue the leads twice).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from dispatcher.config import logs
from dispatcher.config.logs import redact_vicidial_line
from dispatcher.config.settings import Settings, redact_url
from dispatcher.model.dialers import PRIORITIES, Dialer
from dispatcher.model.errors import (
    BrokerUnavailable,
    EnqueueUnconfirmed,
    FieldError,
    IdempotencyConflict,
    InvalidLead,
)
from dispatcher.model.jobs import Job, broker_envelope, new_job_id, state_to_status
from dispatcher.model.lead import Lead, make_lead
from dispatcher.model.list_lead import make_list_lead
from dispatcher.model.list_options import (
    LIST_OPTION_KEYS,
    ListOptions,
    check_with_lead,
    make_list_options,
)
from dispatcher.model.notifications import allowed, notify_url_problem
from dispatcher.store.backend import Backend, get_backend
from dispatcher.store.connection import broker_errors
from dispatcher.store.execution import EnqueueItem, IndexKeyChanged
from dispatcher.store.layout import ensure_layout
from dispatcher.store.phone_index import index_key, phone_key

__all__ = [
    "BATCH_SIZE",
    "MAX_FIELDS",
    "enqueue_lead",
    "enqueue_leads",
    "fingerprint",
    "job_status",
    "notify_url_refusal",
    "prepare_job",
    "push_jobs",
]

#: Leads per Redis round trip in enqueue_leads.
BATCH_SIZE = 1000
#: More keys than this in one lead is refused before anything else is looked at
#: (VICIdial has about 25 lead fields; 45,000 keys once cost seconds of validation).
MAX_FIELDS = 64
#: How long a producer keeps asking Redis whether an enqueue whose reply was lost ran.
RESOLVE_S = 3.0
_CONTROL_KEYS = (
    "dnc_check",
    "campaign_dnc_check",
    "idempotency_key",
    "dialer",
    "priority",
    "notify_url",
)
_log = logs.get_logger("dispatcher.ops.producer")


def fingerprint(job: Job) -> str:
    """What an idempotency key is bound to: the normalised lead and its DNC checks (and a
    list job's options)."""
    data: dict[str, Any] = {
        "lead": job.lead.to_dict(),
        "dnc": job.dnc_check,
        "cdnc": job.campaign_dnc_check,
    }
    if job.list_options is not None:
        data["list"] = job.list_options.to_dict()
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def notify_url_refusal(url: object, prefixes: tuple[str, ...]) -> str | None:
    """Why a job may not name ``url`` as its receiver of outcome notifications, or None:
    it must be a receiver URL under one of ``prefixes`` (DISPATCHER_NOTIFY_ALLOWED)."""
    if not isinstance(url, str):
        return "must be a string (an http(s) URL)"
    why = notify_url_problem(url)
    if why is not None:
        return why
    if not prefixes:
        return (
            "not allowed: DISPATCHER_NOTIFY_ALLOWED lists no URL prefix, so a job cannot "
            "name a receiver of its own"
        )
    if not allowed(url, prefixes):
        return (
            "not allowed: not under a prefix of DISPATCHER_NOTIFY_ALLOWED (same scheme, "
            "host and port, and a path under the prefix's)"
        )
    return None


def prepare_job(
    item: Mapping[str, Any],
    *,
    index: int | None = None,
    dnc_check: bool | None = None,
    campaign_dnc_check: bool | None = None,
    priority: str = "realtime",
    settings: Settings,
    now: float | None = None,
) -> Job:
    """Validate one lead (with its flags, key, dialer and priority) into a Job; InvalidLead if bad.

    ``priority`` is the lane of a lead that names none (``enqueue_lead`` and the
    single-lead ways in: realtime; bulk ways in: bulk).
    """
    if len(item) > MAX_FIELDS:
        raise InvalidLead(
            [FieldError("lead", f"too many fields ({len(item)}; at most {MAX_FIELDS})", index)]
        )
    errors: list[FieldError] = []
    flags: dict[str, bool] = {}
    for key, default, fallback in (
        ("dnc_check", dnc_check, settings.dnc_check),
        ("campaign_dnc_check", campaign_dnc_check, settings.campaign_dnc_check),
    ):
        value = item.get(key, default)
        if value is None:
            value = fallback
        if not isinstance(value, bool):
            errors.append(FieldError(key, "must be true or false", index))
            value = fallback
        flags[key] = value
    idem = item.get("idempotency_key")
    if idem is not None and (
        not isinstance(idem, str) or not 1 <= len(idem) <= 200 or not idem.isprintable()
    ):
        errors.append(FieldError("idempotency_key", "must be 1-200 printable characters", index))
        idem = None
    dialers = settings.dialers
    dialer = dialers.resolve(item.get("dialer"))
    if dialer is None:
        name = item.get("dialer")
        why = (
            f"unknown dialer {name!r}"
            if name not in (None, "")
            else "no dialer given and no default one in the dialers file"
        )
        errors.append(FieldError("dialer", f"{why} (known: {', '.join(dialers.names)})", index))
    lane = item.get("priority")
    if lane in (None, ""):
        lane = priority
    if lane not in PRIORITIES:
        errors.append(FieldError("priority", f"must be one of {', '.join(PRIORITIES)}", index))
    notify_url = item.get("notify_url")
    if notify_url in (None, ""):
        notify_url = None
    else:
        refusal = notify_url_refusal(notify_url, settings.notify_allowed)
        if refusal is not None:
            errors.append(FieldError("notify_url", refusal, index))
            notify_url = None
    non_latin = dialer.non_latin if dialer is not None else settings.vicidial_non_latin
    phone_code = (dialer.phone_code if dialer is not None else None) or settings.phone_code
    lead, options, problems = _lead_and_target(
        item,
        dialer,
        phone_code=phone_code,
        non_latin=non_latin,
        campaign_dnc_check=flags["campaign_dnc_check"],
    )
    if problems:
        errors.extend(FieldError(e.field, e.message, index) for e in problems)
    if errors:
        raise InvalidLead(errors)
    assert dialer is not None and lead is not None
    return Job(
        job_id=new_job_id(),
        lead=lead,
        dnc_check=flags["dnc_check"],
        campaign_dnc_check=flags["campaign_dnc_check"],
        idempotency_key=idem,
        enqueued_at=time.time() if now is None else now,
        non_latin=non_latin,
        dialer=dialer.name,
        priority=str(lane),
        list_options=options,
        notify_url=notify_url,
    )


#: The keys of a job that are not lead fields (checked per lead: a set).
_LIST_OPTIONS = frozenset(LIST_OPTION_KEYS)
_NOT_LEAD = frozenset(_CONTROL_KEYS) | _LIST_OPTIONS


def _given(value: object) -> bool:
    """A blank value (None, or a string of white space) counts as not given."""
    return value is not None and not (isinstance(value, str) and not value.strip())


_BOTH = (
    "give agent_user (a lead for that logged-in agent: external_add_lead) or list_id (a lead "
    "for a list: add_lead), not both"
)
_NEITHER = (
    "one of agent_user (a lead for that logged-in agent: external_add_lead) and list_id (a "
    "lead for a list: add_lead) is required"
)


def _lead_and_target(
    item: Mapping[str, Any],
    dialer: Dialer | None,
    *,
    phone_code: str,
    non_latin: bool,
    campaign_dnc_check: bool,
) -> tuple[Lead | None, ListOptions | None, list[FieldError]]:
    """The lead, by the rules of its target, and a list job's options; every problem.

    A job names ``agent_user`` (external_add_lead) or ``list_id`` (add_lead); naming
    neither takes the dialer's default list, if it has one.
    """
    lead_data = {k: v for k, v in item.items() if k not in _NOT_LEAD}
    agent = _given(item.get("agent_user"))
    if agent and "list_id" not in item and _LIST_OPTIONS.isdisjoint(item):
        # The common case, an agent's lead: as fast as before lists existed.
        try:
            return (
                make_lead(lead_data, default_phone_code=phone_code, non_latin=non_latin),
                None,
                [],
            )
        except InvalidLead as exc:
            return None, None, exc.errors
    listed = _given(item.get("list_id"))
    # A blank target counts as not given (None from JSON, "" from a form): not a field.
    if not agent:
        lead_data.pop("agent_user", None)
    if not listed:
        lead_data.pop("list_id", None)
    default_list = dialer.list_id if dialer is not None else None
    if not agent and not listed and default_list:
        lead_data["list_id"] = default_list
        listed = True
    errors: list[FieldError] = []
    if agent and listed:
        # Which rules the other fields follow is unknown: the agent's (the stricter
        # phone) tell what else is wrong.
        try:
            make_lead(
                {k: v for k, v in lead_data.items() if k != "list_id"},
                default_phone_code=phone_code,
                non_latin=non_latin,
            )
        except InvalidLead as exc:
            errors += [e for e in exc.errors if e.field not in ("agent_user", "list_id")]
        errors[:0] = [FieldError("agent_user", _BOTH), FieldError("list_id", _BOTH)]
        return None, None, errors
    if not listed:
        try:
            lead = make_lead(lead_data, default_phone_code=phone_code, non_latin=non_latin)
        except InvalidLead as exc:
            errors += exc.errors
            lead = None
        if not agent:
            errors = [e for e in errors if e.field != "agent_user"]
            errors[:0] = [FieldError("agent_user", _NEITHER), FieldError("list_id", _NEITHER)]
        if not _LIST_OPTIONS.isdisjoint(item):
            errors += [
                FieldError(key, "an option of add_lead: only for a lead for a list (list_id)")
                for key in LIST_OPTION_KEYS
                if _given(item.get(key))
            ]
        return (None, None, errors) if errors else (lead, None, [])
    list_lead: Lead | None = None
    try:
        list_lead = make_list_lead(lead_data, default_phone_code=phone_code, non_latin=non_latin)
    except InvalidLead as exc:
        errors += exc.errors
    raw_list = list_lead.list_id if list_lead is not None else str(lead_data.get("list_id"))
    options: ListOptions | None = None
    try:
        options = make_list_options(
            item,
            campaign_dnc_check=campaign_dnc_check,
            default_campaign_id=dialer.campaign_for(raw_list.strip()) if dialer else None,
            default_duplicate_check=dialer.duplicate_check if dialer else None,
            non_latin=non_latin,
        )
    except InvalidLead as exc:
        errors += exc.errors
    if list_lead is not None and options is not None:
        errors += check_with_lead(list_lead, options)
    if errors:
        return None, None, errors
    return list_lead, options, []


def push_jobs(
    jobs: list[Job], *, settings: Settings | None = None, strict: bool = True
) -> list[str]:
    """Enqueue prepared jobs, one Redis round trip per BATCH_SIZE; return the job ids.

    ``strict``: an idempotency key already bound to another lead raises
    IdempotencyConflict and nothing of that batch is enqueued. Not strict (the
    intake's batch route): such a job is left out and its id is the key's job,
    marked by :func:`push_results`.
    """
    return [job_id for _, job_id in push_results(jobs, settings=settings, strict=strict)]


def push_results(
    jobs: list[Job], *, settings: Settings | None = None, strict: bool = True
) -> list[tuple[str, str]]:
    """As :func:`push_jobs`, with ("new" | "existing" | "conflict", job id) per job."""
    backend = get_backend(settings)
    # Once per process: a layout this release cannot write to is a LayoutMismatch.
    ensure_layout(backend, role="producer", write=True)
    now = time.time()
    out: list[tuple[str, str]] = []
    for start in range(0, len(jobs), BATCH_SIZE):
        out.extend(_push(backend, jobs[start : start + BATCH_SIZE], now, strict, start))
    return out


def _check_keys(jobs: list[Job], offset: int) -> list[str]:
    """Fingerprints; a key given twice in the batch with different leads is a conflict."""
    prints = [fingerprint(job) for job in jobs]
    seen: dict[str, tuple[str, str]] = {}
    for i, (job, fp) in enumerate(zip(jobs, prints, strict=True)):
        key = job.idempotency_key
        if not key:
            continue
        first = seen.setdefault(key, (fp, job.job_id))
        if first[0] != fp:
            raise IdempotencyConflict(key, first[1], index=offset + i)
    return prints


def _push(
    backend: Backend, jobs: list[Job], now: float, strict: bool, offset: int
) -> list[tuple[str, str]]:
    settings = backend.settings
    prints = _check_keys(jobs, offset)
    ttl = int(settings.job_ttl_s)
    with broker_errors(settings):
        key = index_key(backend)  # read once per process; a failure here wrote nothing
    items = _items(backend, jobs, prints, key)
    try:
        with broker_errors(settings):
            try:
                results = backend.execution.enqueue(
                    items, now=now, ttl=ttl, strict=strict, index_key=key.hex()
                )
            except IndexKeyChanged:
                key = index_key(backend, fresh=True)
                items = _items(backend, jobs, prints, key)
                results = backend.execution.enqueue(
                    items, now=now, ttl=ttl, strict=strict, index_key=key.hex()
                )
    except BrokerUnavailable as exc:
        if type(exc) is not BrokerUnavailable or exc.connecting:
            raise  # refused, or never reached Redis: nothing was written
        results = _resolve(backend, jobs, items, now=now, strict=strict, index_key=key.hex())
    for i, (kind, job_id) in enumerate(results):
        if kind == "conflict" and strict:
            job = jobs[i]
            raise IdempotencyConflict(job.idempotency_key or "", job_id, index=offset + i)
    if logs.is_configured():
        for job, (kind, job_id) in zip(jobs, results, strict=True):
            target = _target_facts(job)
            if kind == "new":
                _log.info(
                    "lead.enqueued",
                    job_id=job_id,
                    phone=job.lead.phone_number,
                    dnc_check=job.dnc_check,
                    campaign_dnc_check=job.campaign_dnc_check,
                    **target,
                )
            else:
                _log.info(f"lead.enqueue_{kind}", job_id=job_id, **target)
    return results


def _target_facts(job: Job) -> dict[str, str]:
    """Who gets the job's lead, for its log lines."""
    if job.list_options is None:
        return {"agent_user": job.agent_user}
    facts = {"target": "list", "list_id": job.lead.list_id}
    if job.list_options.campaign_id:
        facts["campaign"] = job.list_options.campaign_id
    return facts


def _state_fields(job: Job) -> str:
    """The job state's fields beside the common ones (a list job's target), as JSON."""
    if job.list_options is None:
        return ""
    fields = {"target": "list", "target_list_id": job.lead.list_id}
    if job.list_options.campaign_id:
        fields["campaign_id"] = job.list_options.campaign_id
    return json.dumps(fields, separators=(",", ":"))


def _items(backend: Backend, jobs: list[Job], prints: list[str], key: bytes) -> list[EnqueueItem]:
    """The enqueue command's items: each job's envelope, keys and phone index key."""
    keys = backend.keys
    items = []
    for job, fp in zip(jobs, prints, strict=True):
        lane = keys.target_lane(job.dialer, job.priority, job.target)
        envelope = broker_envelope(job.to_message(), queue=lane)
        items.append(
            EnqueueItem(
                job.job_id,
                envelope,
                job.agent_user,
                job.idempotency_key or "",
                fp,
                lane,
                phone_key(key, job.lead.phone_number),
                _state_fields(job),
            )
        )
    return items


def _resolve(
    backend: Backend,
    jobs: list[Job],
    items: list[EnqueueItem],
    *,
    now: float,
    strict: bool,
    index_key: str,
) -> list[tuple[str, str]]:
    """The enqueue was sent and its reply lost: find out whether it ran, never run it twice."""
    settings = backend.settings
    keys = backend.keys
    deadline = time.monotonic() + RESOLVE_S
    while True:
        try:
            with broker_errors(settings):
                pipe = backend.redis.pipeline(transaction=False)
                for job in jobs:
                    pipe.exists(keys.job(job.job_id))
                    pipe.get(keys.idempotency(job.idempotency_key or ""))
                found = pipe.execute()
                exists, bound = found[0::2], found[1::2]
                if not any(exists):
                    # It did not run (or every job was a duplicate): sending it is safe.
                    return backend.execution.enqueue(
                        items,
                        now=now,
                        ttl=int(settings.job_ttl_s),
                        strict=strict,
                        index_key=index_key,
                    )
        except BrokerUnavailable as exc:
            if type(exc) is not BrokerUnavailable or time.monotonic() > deadline:
                raise EnqueueUnconfirmed(
                    f"Redis at {redact_url(settings.redis_url)} took the enqueue of "
                    f"{len(jobs)} lead(s) but its answer was lost, and it could not be asked "
                    "afterwards: they may have been enqueued. Retry with the same idempotency "
                    "key(s) to be safe; without one a retry may enqueue a lead twice"
                ) from None
            time.sleep(0.2)
            continue
        out: list[tuple[str, str]] = []
        for job, made, value in zip(jobs, exists, bound, strict=True):
            if made:
                out.append(("new", job.job_id))
            else:  # its key belonged to an earlier job
                first = str(value or "").split(" ", 1)[0]
                out.append(("existing", first or job.job_id))
        return out


def enqueue_lead(*, settings: Settings | None = None, **fields: Any) -> str:
    """Validate one lead and put it on the queue; return its job id.

    Keyword arguments: ``agent_user`` (a lead for that logged-in agent: VICIdial's
    external_add_lead) or ``list_id`` (a lead for a list: add_lead, with its options
    ``campaign_id``, ``duplicate_check``, ``add_to_hopper``, ``hopper_priority``,
    ``callback``, ``custom_fields``, ``lookup_state``, ``tz_method``,
    ``usacan_prefix_check``, ``usacan_areacode_check``, ``list_exists_check``; see
    :mod:`dispatcher.model.list_options`), ``phone_number``, ``phone_code`` and any
    lead field of that call, plus ``dnc_check`` and
    ``campaign_dnc_check`` (default from settings: on), ``idempotency_key`` (a
    second enqueue with the same key returns the first job's id and enqueues
    nothing), ``dialer`` (default: the fleet's default dialer) and ``priority``
    (``realtime``, the default here, or ``bulk``) and ``notify_url`` (the job's own
    receiver of outcome notifications, under a prefix of DISPATCHER_NOTIFY_ALLOWED;
    default: DISPATCHER_NOTIFY_URL, if set). Raises InvalidLead naming every
    bad field (nothing enqueued), IdempotencyConflict, and BrokerUnavailable when
    Redis cannot be reached.
    """
    return enqueue_leads([fields], settings=settings, priority="realtime")[0]


def enqueue_leads(
    leads: Iterable[Mapping[str, Any]],
    *,
    dnc_check: bool | None = None,
    campaign_dnc_check: bool | None = None,
    priority: str = "bulk",
    settings: Settings | None = None,
) -> list[str]:
    """Validate every lead first, then enqueue them all; return the job ids in order.

    If any lead is invalid, raises one InvalidLead listing each bad item (index,
    field, why) and enqueues nothing. ``dnc_check``/``campaign_dnc_check`` and
    ``priority`` (``bulk`` by default here) are the defaults for items that do not
    set their own.
    """
    backend = get_backend(settings)
    now = time.time()
    jobs: list[Job] = []
    errors: list[FieldError] = []
    for index, item in enumerate(leads):
        if not isinstance(item, Mapping):
            errors.append(FieldError("lead", "must be a mapping of field names to values", index))
            continue
        try:
            jobs.append(
                prepare_job(
                    item,
                    index=index,
                    dnc_check=dnc_check,
                    campaign_dnc_check=campaign_dnc_check,
                    priority=priority,
                    settings=backend.settings,
                    now=now,
                )
            )
        except InvalidLead as exc:
            errors.extend(exc.errors)
    if errors:
        if len(jobs) + len({e.index for e in errors}) == 1:
            # A single lead: its errors need no index.
            errors = [FieldError(e.field, e.message) for e in errors]
        raise InvalidLead(errors)
    return push_jobs(jobs, settings=backend.settings)


def job_status(job_id: str, *, settings: Settings | None = None) -> dict[str, Any] | None:
    """The job's state as `dispatcher job --json` prints it, or None for an unknown id."""
    backend = get_backend(settings)
    with broker_errors(backend.settings):
        raw: dict[str, str] = backend.redis.hgetall(backend.keys.job(job_id))  # type: ignore[assignment]
    if not raw:
        return None
    status = state_to_status(job_id, raw)
    if status["error"]:  # stored redacted; again here for state written by older versions
        status["error"] = redact_vicidial_line(status["error"], backend.settings.secrets)
    return status
