"""Producer side against a real Redis: validation, idempotency, batching, job state."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest
import redis

from dispatcher import (
    BrokerUnavailable,
    InvalidLead,
    enqueue_lead,
    enqueue_leads,
    job_status,
)
from dispatcher.config.settings import Settings
from dispatcher.devtools.redis_server import free_port
from dispatcher.model.errors import InvalidPayload, UnknownDialer
from dispatcher.model.jobs import TASK_NAME, Job, broker_envelope, new_job_id
from tests.support.leads import INVALID
from tests.support.queues import queued_envelopes
from tests.support.settings import make_settings


@pytest.fixture
def psettings(redis_url: str) -> Settings:
    return make_settings(redis_url)


def _queue(settings: Settings) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return [json.loads(x) for x in queued_envelopes(settings)]
    finally:
        client.close()


def _job_of(envelope: dict[str, Any]) -> dict[str, Any]:
    body = json.loads(base64.b64decode(envelope["body"]))
    message: dict[str, Any] = body[0][0]
    return message


def test_enqueue_writes_state_and_a_celery_message(psettings: Settings) -> None:
    job_id = enqueue_lead(
        agent_user="1000", phone_number="727-555-1212", first_name="José", settings=psettings
    )
    [envelope] = _queue(psettings)
    assert envelope["headers"]["task"] == TASK_NAME and envelope["headers"]["id"] == job_id
    lane = f"{psettings.queue}.default.realtime"  # the default dialer's realtime lane
    assert envelope["properties"]["delivery_info"]["routing_key"] == lane
    job = Job.from_message(_job_of(envelope))
    assert job.job_id == job_id and job.lead.phone_number == "7275551212"
    assert job.lead.fields["first_name"] == "Jose"
    assert job.dnc_check is True and job.campaign_dnc_check is True
    status = job_status(job_id, settings=psettings)
    assert status is not None
    assert status["state"] == "queued" and status["attempts"] == 0
    assert set(status) >= {
        "job_id",
        "state",
        "attempts",
        "reason",
        "error",
        "lead_id",
        "list_id",
        "campaign",
        "enqueued_at",
        "updated_at",
        "next_attempt_at",
    }
    assert status["lead_id"] is None and status["next_attempt_at"] is None


def test_non_latin_lead_is_validated_at_enqueue_and_again_by_the_worker(
    psettings: Settings,
) -> None:
    lead = {"agent_user": "1000", "phone_number": "7275551212", "first_name": "Иван"}
    with pytest.raises(InvalidLead, match="first_name"):
        enqueue_lead(**lead, settings=psettings)  # a latin dialer would drop the letters
    nl_settings = psettings.replace(vicidial_non_latin=True)
    job_id = enqueue_lead(**lead, comments="Перезвонить завтра", settings=nl_settings)
    [envelope] = _queue(nl_settings)
    message = _job_of(envelope)
    assert message["non_latin"] is True
    # The worker parses the message: the lead passes its re-validation unchanged.
    job = Job.from_message(message)
    assert job.job_id == job_id and job.non_latin is True
    assert dict(job.lead.fields) == {"first_name": "Иван", "comments": "Перезвонить завтра"}
    assert job.to_message()["non_latin"] is True  # kept through retries and replays
    # A worker whose dialer runs without use_non_latin does not call: the two
    # configurations disagree, and the job waits for a worker that agrees with its own
    # (issue 23: not an invalid_payload letter).
    with pytest.raises(UnknownDialer, match="first_name") as raised:
        Job.from_message(message, dialers=psettings.dialers)
    assert raised.value.job == job and raised.value.reason == "unknown_dialer"
    assert Job.from_message(message, dialers=nl_settings.dialers) == job
    # Older messages (no key) are latin-mode jobs; a non-boolean is refused.
    old = {k: v for k, v in message.items() if k != "non_latin"}
    with pytest.raises(InvalidPayload, match="first_name"):
        Job.from_message(old)
    with pytest.raises(InvalidPayload, match="non_latin"):
        Job.from_message({**message, "non_latin": "yes"})


def test_latin_jobs_record_their_mode(psettings: Settings) -> None:
    enqueue_lead(agent_user="1000", phone_number="7275551212", settings=psettings)
    [envelope] = _queue(psettings)
    message = _job_of(envelope)
    assert message["non_latin"] is False
    # An ASCII lead is valid in both modes: a non-Latin worker takes it unchanged.
    non_latin = psettings.replace(vicidial_non_latin=True).dialers
    assert Job.from_message(message, dialers=non_latin).lead == Job.from_message(message).lead


def test_unknown_job_status_is_none(psettings: Settings) -> None:
    assert job_status("nope", settings=psettings) is None


def test_idempotency_key_returns_first_job_and_enqueues_nothing(psettings: Settings) -> None:
    first = enqueue_lead(
        agent_user="1000",
        phone_number="7275551212",
        idempotency_key="webform-8812",
        settings=psettings,
    )
    # The same lead again (the form posted twice): the first job's id, nothing enqueued.
    # (A different lead under the same key is a conflict: tests/ops/test_enqueue_safety.py.)
    second = enqueue_lead(
        agent_user="1000",
        phone_number="727-555-1212",
        idempotency_key="webform-8812",
        settings=psettings,
    )
    assert second == first
    assert len(_queue(psettings)) == 1
    ids = enqueue_leads(
        [
            {"agent_user": "1000", "phone_number": "7275551300", "idempotency_key": "a"},
            {"agent_user": "1000", "phone_number": "7275551300", "idempotency_key": "a"},
            {"agent_user": "1000", "phone_number": "7275551212", "idempotency_key": "webform-8812"},
        ],
        settings=psettings,
    )
    assert ids[0] == ids[1] and ids[2] == first
    assert len(_queue(psettings)) == 2


def test_settings_defaults_for_dnc_flags_are_used(redis_url: str) -> None:
    settings = make_settings(redis_url, dnc_check=False)
    enqueue_lead(agent_user="1000", phone_number="7275551212", settings=settings)
    enqueue_leads(
        [{"agent_user": "1000", "phone_number": "7275551213", "dnc_check": True}],
        campaign_dnc_check=False,
        settings=settings,
    )
    jobs = {j["lead"]["phone_number"]: j for j in map(_job_of, _queue(settings))}
    first, second = jobs["7275551212"], jobs["7275551213"]
    assert (first["dnc_check"], first["campaign_dnc_check"]) == (False, True)
    assert (second["dnc_check"], second["campaign_dnc_check"]) == (True, False)


def test_bulk_is_one_round_trip_per_batch(psettings: Settings) -> None:
    client = redis.Redis.from_url(psettings.redis_url)
    leads = [{"agent_user": "1000", "phone_number": f"727555{n:04d}"} for n in range(300)]
    enqueue_lead(agent_user="1000", phone_number="7275550999", settings=psettings)  # warm up
    client.config_resetstat()
    ids = enqueue_leads(leads, settings=psettings)
    stats = client.info("commandstats")
    calls = sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_config", "cmdstat_info"))
    client.close()
    assert len(ids) == 300 and len(set(ids)) == 300
    assert len(_queue(psettings)) == 301
    # One EVALSHA; Redis counts the commands the script runs inside it too.
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert calls > 300  # (the LPUSH/HSET inside the script)


@pytest.mark.parametrize(
    ("lead", "field"),
    [
        ({"phone_number": "7275551212"}, "agent_user"),
        ({"agent_user": "1000"}, "phone_number"),
        ({"agent_user": "1000", "phone_number": "123"}, "phone_number"),
        ({"agent_user": "1000", "phone_number": "72755512#2"}, "phone_number"),
        ({"agent_user": "1000", "phone_number": "7275551212", "gender": "X"}, "gender"),
        ({"agent_user": "1000", "phone_number": "7275551212", "shoe_size": "9"}, "shoe_size"),
        ({"agent_user": "1000", "phone_number": "7275551212", "dnc_check": "yes"}, "dnc_check"),
        (
            {"agent_user": "1000", "phone_number": "7275551212", "idempotency_key": ""},
            "idempotency_key",
        ),
        ({"agent_user": "1000", "phone_number": "7275551212", "rank": 70000}, "rank"),
        (
            {"agent_user": "1000", "phone_number": "7275551212", "date_of_birth": "2001-02-30"},
            "date_of_birth",
        ),
    ],
)
def test_invalid_lead_names_the_field_and_enqueues_nothing(
    psettings: Settings, lead: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidLead) as info:
        enqueue_lead(settings=psettings, **lead)
    assert field in [e.field for e in info.value.errors]
    assert field in str(info.value)
    assert _queue(psettings) == []
    assert redis.Redis.from_url(psettings.redis_url).dbsize() == 0


def test_bulk_with_bad_items_lists_each_and_enqueues_nothing(psettings: Settings) -> None:
    leads = [
        {"agent_user": "1000", "phone_number": "7275551212"},
        {"agent_user": "1000", "phone_number": "12"},
        {"agent_user": "1000", "phone_number": "7275551214"},
        {"agent_user": "x", "phone_number": "7275551215", "gender": "Q"},
    ]
    with pytest.raises(InvalidLead) as info:
        enqueue_leads(leads, settings=psettings)
    where = {(e.index, e.field) for e in info.value.errors}
    assert where == {(1, "phone_number"), (3, "agent_user"), (3, "gender")}
    assert "lead 1: phone_number" in str(info.value)
    assert _queue(psettings) == []


def test_redis_unreachable_is_a_clear_error_not_a_hang() -> None:
    settings = Settings(redis_url=f"redis://:pw-in-url@127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        enqueue_lead(agent_user="1000", phone_number="7275551212", settings=settings)
    assert time.monotonic() - started < 10
    assert "unreachable" in str(info.value) and "pw-in-url" not in str(info.value)


def test_every_invalid_lead_of_the_validation_table_enqueues_nothing(
    psettings: Settings,
) -> None:
    """The whole table of tests/model/test_lead.py through enqueue_lead and a real Redis."""
    client = redis.Redis.from_url(psettings.redis_url)
    rejected = 0
    for param in INVALID:
        data, field, fragment = param.values
        if not isinstance(data, dict):
            continue
        lead = dict(data)
        if "dnc_check" in lead or "idempotency_key" in lead or "campaign_dnc_check" in lead:
            continue  # enqueue_lead's own options: tested above
        with pytest.raises(InvalidLead) as info:
            enqueue_leads([lead], settings=psettings)
        assert field in [e.field for e in info.value.errors], (data, str(info.value))
        assert fragment in str(info.value), (data, str(info.value))
        rejected += 1
    assert rejected >= 25
    assert client.dbsize() == 0
    client.close()


def test_job_ids_and_delivery_tags_are_random_version_4_uuids() -> None:
    """Made without uuid.uuid4() (dispatcher.model.jobs._uuid4_hex), written as it writes them."""
    ids = {new_job_id() for _ in range(2000)}
    assert len(ids) == 2000
    for job_id in ids:
        parsed = uuid.UUID(job_id)
        assert parsed.hex == job_id and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    envelopes = [json.loads(broker_envelope({"job_id": "a" * 32}, queue="q")) for _ in range(200)]
    tags = {e["properties"]["delivery_tag"] for e in envelopes}
    assert len(tags) == 200
    assert all(str(uuid.UUID(tag)) == tag and uuid.UUID(tag).version == 4 for tag in tags)
