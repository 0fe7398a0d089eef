"""Enqueueing leads: the producer side of the Python API.

``enqueue_lead`` validates, then writes the job state, the idempotency key and
the broker message in one atomic Redis round trip; it never talks to VICIdial
and answers in about a millisecond. ``enqueue_leads`` does the same for many
leads, one round trip per chunk of :data:`BATCH_SIZE`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from dispatcher import logs
from dispatcher.backend import Backend, get_backend
from dispatcher.connection import broker_errors
from dispatcher.errors import FieldError, InvalidLead
from dispatcher.jobs import Job, broker_envelope, new_job_id, state_to_status
from dispatcher.lead import make_lead
from dispatcher.settings import Settings

__all__ = ["BATCH_SIZE", "enqueue_lead", "enqueue_leads", "job_status", "prepare_job", "push_jobs"]

#: Leads per Redis round trip in enqueue_leads.
BATCH_SIZE = 1000
_CONTROL_KEYS = ("dnc_check", "campaign_dnc_check", "idempotency_key")
_log = logs.get_logger("dispatcher.producer")


def prepare_job(
    item: Mapping[str, Any],
    *,
    index: int | None = None,
    dnc_check: bool | None = None,
    campaign_dnc_check: bool | None = None,
    settings: Settings,
    now: float | None = None,
) -> Job:
    """Validate one lead (with its flags and idempotency key) into a Job; InvalidLead if bad."""
    errors: list[FieldError] = []
    lead_data = {k: v for k, v in item.items() if k not in _CONTROL_KEYS}
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
    try:
        lead = make_lead(
            lead_data,
            default_phone_code=settings.phone_code,
            non_latin=settings.vicidial_non_latin,
        )
    except InvalidLead as exc:
        errors.extend(FieldError(e.field, e.message, index) for e in exc.errors)
    if errors:
        raise InvalidLead(errors)
    return Job(
        job_id=new_job_id(),
        lead=lead,
        dnc_check=flags["dnc_check"],
        campaign_dnc_check=flags["campaign_dnc_check"],
        idempotency_key=idem,
        enqueued_at=time.time() if now is None else now,
        non_latin=settings.vicidial_non_latin,
    )


def push_jobs(jobs: list[Job], *, settings: Settings | None = None) -> list[str]:
    """Enqueue prepared jobs, one Redis round trip per BATCH_SIZE; return the job ids."""
    backend = get_backend(settings)
    now = time.time()
    ids: list[str] = []
    for start in range(0, len(jobs), BATCH_SIZE):
        ids.extend(_push(backend, jobs[start : start + BATCH_SIZE], now))
    return ids


def _push(backend: Backend, jobs: list[Job], now: float) -> list[str]:
    keys = backend.keys
    settings = backend.settings
    script_keys = [keys.queue, keys.stats]
    args: list[Any] = [f"{now:.6f}", int(settings.job_ttl_s)]
    for job in jobs:
        script_keys += [keys.idempotency(job.idempotency_key or ""), keys.job(job.job_id)]
        args += [
            job.job_id,
            broker_envelope(job.to_message(), queue=keys.queue),
            job.agent_user,
            "1" if job.idempotency_key else "0",
        ]
    with broker_errors(settings):
        result = backend.scripts.enqueue(keys=script_keys, args=args)
    ids = [str(r) for r in result]
    if logs.is_configured():
        for job, job_id in zip(jobs, ids, strict=True):
            if job_id == job.job_id:
                _log.info(
                    "lead.enqueued",
                    job_id=job_id,
                    agent_user=job.agent_user,
                    phone=job.lead.phone_number,
                    dnc_check=job.dnc_check,
                    campaign_dnc_check=job.campaign_dnc_check,
                )
            else:
                _log.info("lead.enqueue_deduplicated", job_id=job_id, agent_user=job.agent_user)
    return ids


def enqueue_lead(*, settings: Settings | None = None, **fields: Any) -> str:
    """Validate one lead and put it on the queue; return its job id.

    Keyword arguments: ``agent_user``, ``phone_number``, ``phone_code`` and any
    lead field of VICIdial's external_add_lead, plus ``dnc_check`` and
    ``campaign_dnc_check`` (default from settings: on) and ``idempotency_key``
    (a second enqueue with the same key returns the first job's id and enqueues
    nothing). Raises InvalidLead naming every bad field (nothing enqueued) and
    BrokerUnavailable when Redis cannot be reached.
    """
    return enqueue_leads([fields], settings=settings)[0]


def enqueue_leads(
    leads: Iterable[Mapping[str, Any]],
    *,
    dnc_check: bool | None = None,
    campaign_dnc_check: bool | None = None,
    settings: Settings | None = None,
) -> list[str]:
    """Validate every lead first, then enqueue them all; return the job ids in order.

    If any lead is invalid, raises one InvalidLead listing each bad item (index,
    field, why) and enqueues nothing. ``dnc_check``/``campaign_dnc_check`` are the
    defaults for items that do not set their own.
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
    return state_to_status(job_id, raw)
