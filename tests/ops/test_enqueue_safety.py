"""Enqueues that may have happened, idempotency keys reused with another lead, and
re-running an interrupted import: never a lead enqueued twice by accident."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
import redis

from dispatcher import BrokerUnavailable, enqueue_lead, enqueue_leads
from dispatcher.config.settings import Settings
from dispatcher.model.errors import EnqueueUnconfirmed, IdempotencyConflict
from tests.support.cli import check, run_cli, start_cli
from tests.support.faultproxy import FaultProxy
from tests.support.intake import start_intake
from tests.support.queues import queue_length
from tests.support.settings import make_settings
from tests.support.waiting import wait_for


@pytest.fixture
def rsettings(redis_url: str) -> Settings:
    return make_settings(redis_url, intake_tokens=("t0k3n-abcdef",))


def test_a_key_reused_with_another_lead_is_a_conflict_everywhere(rsettings: Settings) -> None:
    first = enqueue_lead(
        agent_user="1000", phone_number="7275551212", idempotency_key="form-1", settings=rsettings
    )
    same = enqueue_lead(
        agent_user="1000",
        phone_number="(727) 555-1212",
        idempotency_key="form-1",
        settings=rsettings,
    )
    assert same == first  # the same lead again: the first job's id
    with pytest.raises(IdempotencyConflict) as caught:
        enqueue_lead(
            agent_user="1000",
            phone_number="7275559999",
            idempotency_key="form-1",
            settings=rsettings,
        )
    assert isinstance(caught.value, ValueError) and first in str(caught.value)
    # A batch with one conflicting item enqueues nothing.
    with pytest.raises(IdempotencyConflict):
        enqueue_leads(
            [
                {"agent_user": "1000", "phone_number": "7275550001"},
                {"agent_user": "1000", "phone_number": "7275550002", "idempotency_key": "form-1"},
            ],
            settings=rsettings,
        )
    assert queue_length(rsettings) == 1
    intake = start_intake(rsettings)
    with httpx.Client(base_url=intake.url, timeout=10) as http:
        reply = http.post(
            "/v1/leads",
            json={"agent_user": "1000", "phone_number": "7275559999"},
            headers={"Authorization": "Bearer t0k3n-abcdef", "Idempotency-Key": "form-1"},
        )
        assert reply.status_code == 409
        assert reply.json()["job_id"] == first
        batch = http.post(
            "/v1/leads:batch",
            json={
                "leads": [
                    {"agent_user": "1000", "phone_number": "7275550003"},
                    {
                        "agent_user": "1000",
                        "phone_number": "7275550004",
                        "idempotency_key": "form-1",
                    },
                ]
            },
            headers={"Authorization": "Bearer t0k3n-abcdef"},
        )
        results = batch.json()["results"]
        assert "job_id" in results[0]
        assert results[1]["errors"][0]["field"] == "idempotency_key"
    intake.stop()
    cli = run_cli(
        rsettings,
        "enqueue",
        "--agent-user",
        "1000",
        "--phone",
        "7275558888",
        "--idempotency-key",
        "form-1",
    )
    check(cli, 2)
    assert "form-1" in cli.stderr and "another lead" in cli.stderr
    assert queue_length(rsettings) == 2


def test_rerunning_an_interrupted_import_enqueues_each_row_once(
    rsettings: Settings, tmp_path: Path
) -> None:
    rows = 3000
    csv_path = tmp_path / "nightly.csv"
    csv_path.write_text(
        "agent_user,phone_number\n" + "".join(f"1000,727{n:07d}\n" for n in range(rows))
    )
    first = start_cli(rsettings, "enqueue", "--file", str(csv_path), "--batch-size", "1")
    wait_for(lambda: queue_length(rsettings) >= 50, timeout=30, message="the import under way")
    first.send_signal(signal.SIGKILL)  # the import host dies half-way
    first.wait()
    interrupted_at = queue_length(rsettings)
    assert 0 < interrupted_at < rows
    again = run_cli(rsettings, "enqueue", "--file", str(csv_path), timeout=120)
    check(again)
    assert f"{rows - interrupted_at} lead(s)" in again.stderr
    assert queue_length(rsettings) == rows  # every row once, none twice


def test_an_enqueue_whose_answer_was_lost_is_resolved_not_repeated(
    rsettings: Settings, proxy: FaultProxy
) -> None:
    via_proxy = rsettings.replace(redis_url=proxy.url)
    enqueue_lead(agent_user="1000", phone_number="7275550100", settings=via_proxy)  # warm
    proxy.drop_replies(1)
    job_id = enqueue_lead(agent_user="1000", phone_number="7275551212", settings=via_proxy)
    assert proxy.dropped == 1
    assert queue_length(rsettings) == 2  # it ran once; nobody ran it again blindly
    client = redis.Redis.from_url(rsettings.redis_url, decode_responses=True)
    assert client.hget(f"{rsettings.key_prefix}:job:{job_id}", "state") == "queued"
    assert int(client.hget(f"{rsettings.key_prefix}:stats", "enqueued") or 0) == 2
    # The answer lost and Redis gone for a while: the caller is told it may have happened.
    proxy.drop_replies(1, then_refuse_s=8.0)
    started = time.monotonic()
    with pytest.raises(EnqueueUnconfirmed) as caught:
        enqueue_lead(agent_user="1000", phone_number="7275551313", settings=via_proxy)
    assert isinstance(caught.value, BrokerUnavailable)
    assert "may have been enqueued" in str(caught.value)
    assert "idempotency" in str(caught.value)
    assert time.monotonic() - started < 8
    assert queue_length(rsettings) == 3
    client.close()
