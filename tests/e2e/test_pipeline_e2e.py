"""End to end: enqueue -> real Redis -> real `celery worker` process -> simulator over HTTP.

Each test asserts what the simulator received (calls, stored rows), the job
state, the dead-letter store and the worker's structured log events.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from dispatcher import DeadLetterStore, enqueue_lead, enqueue_leads, job_status
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.devtools.redis_server import free_port
from dispatcher.simulator import Simulator
from tests.support.settings import make_settings
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def _final(job_id: str, settings: Settings, timeout: float = 20.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status = job_status(job_id, settings=settings)
        return status if status and status["state"] in ("added", "dead") else None

    result: dict[str, Any] = wait_for(done, timeout=timeout, message=f"job {job_id} to finish")
    return result


def _calls_for(sim: Simulator, phone: str) -> int:
    return sum(1 for r in sim.requests if r.fields.get("phone_number") == phone)


@pytest.fixture
def worker(settings: Settings, start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start_worker(settings)


def test_lead_is_added_with_the_simulators_lead_id(
    settings: Settings, simulator: Simulator, worker: WorkerProcess
) -> None:
    job_id = enqueue_lead(
        agent_user="1000",
        phone_number="(727) 555-1212",
        first_name="Bob",
        last_name="Smith",
        settings=settings,
    )
    status = _final(job_id, settings)
    assert status["state"] == "added"
    [row] = simulator.leads
    assert status["lead_id"] == str(row.lead_id)
    assert status["list_id"] == row.list_id and status["campaign"] == row.campaign
    assert row.phone_number == "7275551212"
    assert row.fields["first_name"] == "Bob" and row.fields["last_name"] == "Smith"
    assert status["attempts"] == 1
    [request] = simulator.requests
    assert request.method == "POST"
    # The POST quirk: value must be the phone, or VICIdial stores "Smith" as the phone.
    assert request.fields["value"] == "7275551212"
    assert request.fields["dnc_check"] == "YES"
    assert request.fields["campaign_dnc_check"] == "YES"
    assert "pass" not in request.fields

    events = {e["event"]: e for e in worker.logs() if e.get("job_id") == job_id}
    added = events["lead.added"]
    assert added["lead_id"] == str(row.lead_id) and added["phone"] == "******1212"
    assert added["agent_user"] == "1000" and added["level"] == "info"
    assert "latency_ms" in added and added["timestamp"].endswith("Z")
    assert events["lead.attempt"]["attempt"] == 1


def test_non_latin_lead_is_stored_exactly_as_sent(
    settings: Settings, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    # A call center running VICIdial's use_non_latin=1, and a fleet told so.
    simulator.set_non_latin(True)
    settings = settings.replace(vicidial_non_latin=True)
    start_worker(settings)
    names = {"first_name": "Иван", "last_name": "Петров", "city": "李小龍"}
    job_id = enqueue_lead(
        agent_user="1000",
        phone_number="7275551212",
        comments="Перезвонить завтра\nVIP",
        **names,
        settings=settings,
    )
    status = _final(job_id, settings)
    assert status["state"] == "added", status
    [row] = simulator.leads
    # source_id: the job's marker (reconciliation), where the producer sent none.
    assert row.fields == {**names, "comments": "Перезвонить завтра\nVIP", "source_id": job_id}


def test_dnc_flags_off_are_explicit_and_travel_with_the_job(
    settings: Settings, simulator: Simulator, worker: WorkerProcess
) -> None:
    job_id = enqueue_lead(
        agent_user="1000",
        phone_number="7275550000",
        dnc_check=False,
        campaign_dnc_check=False,
        settings=settings,
    )
    assert _final(job_id, settings)["state"] == "added"  # on the DNC list, but unchecked
    [request] = simulator.requests
    assert "dnc_check" not in request.fields and "campaign_dnc_check" not in request.fields


@pytest.mark.parametrize(
    ("agent", "phone", "reason"),
    [
        ("1000", "7275550000", "dnc"),
        ("1000", "7275550001", "campaign_dnc"),
        ("1003", "7275551213", "manual_list_undefined"),
    ],
)
def test_permanent_failures_dead_letter_after_exactly_one_call(
    settings: Settings,
    simulator: Simulator,
    worker: WorkerProcess,
    agent: str,
    phone: str,
    reason: str,
) -> None:
    job_id = enqueue_lead(
        agent_user=agent,
        phone_number=phone,
        first_name="Ann",
        idempotency_key=f"k-{phone}",
        settings=settings,
    )
    status = _final(job_id, settings)
    assert status["state"] == "dead" and status["reason"] == reason
    assert _calls_for(simulator, phone) == 1
    assert simulator.leads == []
    letter = DeadLetterStore(settings=settings).get(job_id)
    assert letter is not None and letter.reason == reason and letter.attempts == 1
    assert letter.http_status == 200 and letter.error.startswith("ERROR: ")
    assert letter.job["lead"]["phone_number"] == phone
    assert letter.job["lead"]["first_name"] == "Ann"
    assert letter.job["dnc_check"] is True and letter.job["idempotency_key"] == f"k-{phone}"
    dead = [e for e in worker.logs() if e.get("event") == "lead.dead_lettered"]
    assert dead and dead[0]["reason"] == reason and dead[0]["job_id"] == job_id


def test_503_twice_then_success_is_added_after_three_calls(
    settings: Settings, simulator: Simulator, worker: WorkerProcess
) -> None:
    simulator.script_phone("7275551214", ["http_503", "http_503"])
    job_id = enqueue_lead(agent_user="1000", phone_number="7275551214", settings=settings)
    status = _final(job_id, settings)
    assert status["state"] == "added" and status["attempts"] == 3
    assert _calls_for(simulator, "7275551214") == 3
    assert simulator.count_by_phone()["7275551214"] == 1
    retries = [
        e
        for e in worker.logs()
        if e.get("event") == "lead.retry_scheduled" and e.get("job_id") == job_id
    ]
    assert [r["reason"] for r in retries] == ["http_error", "http_error"]
    assert all(r["http_status"] == 503 and "delay_s" in r for r in retries)


def test_agent_who_logs_in_after_the_second_attempt_gets_the_lead(
    settings: Settings, simulator: Simulator, worker: WorkerProcess
) -> None:
    simulator.logout("1000")
    job_id = enqueue_lead(agent_user="1000", phone_number="7275551215", settings=settings)
    wait_for(lambda: _calls_for(simulator, "7275551215") >= 2, message="two attempts")
    simulator.login("1000", "TESTCAMP")
    status = _final(job_id, settings)
    assert status["state"] == "added"
    assert simulator.count_by_phone()["7275551215"] == 1


def test_agent_who_never_logs_in_is_dead_lettered_after_agent_wait(
    redis_url: str, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = make_settings(redis_url, simulator, agent_wait_s=1.5, max_attempts=2)
    start_worker(settings)
    started = time.time()
    job_id = enqueue_lead(agent_user="4242", phone_number="7275551216", settings=settings)
    status = _final(job_id, settings)
    elapsed = time.time() - started
    assert status["state"] == "dead" and status["reason"] == "agent_not_logged_in"
    # Waited AGENT_WAIT_S (not MAX_ATTEMPTS=2 calls), then gave up.
    assert elapsed >= 1.5
    assert _calls_for(simulator, "7275551216") > 2


def test_outage_longer_than_the_attempts_dead_letters_the_whole_job(
    redis_url: str, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = make_settings(redis_url, simulator, max_attempts=3)
    start_worker(settings)
    simulator.set_outage("http_503")
    job_id = enqueue_lead(
        agent_user="1000",
        phone_number="7275551217",
        last_name="Lee",
        dnc_check=False,
        settings=settings,
    )
    status = _final(job_id, settings)
    assert status["state"] == "dead" and status["reason"] == "http_error"
    assert _calls_for(simulator, "7275551217") == 3
    letter = DeadLetterStore(settings=settings).get(job_id)
    assert letter is not None and letter.http_status == 503 and letter.attempts == 3
    assert letter.job["lead"] == {
        "agent_user": "1000",
        "phone_number": "7275551217",
        "phone_code": "1",
        "last_name": "Lee",
    }
    assert letter.job["dnc_check"] is False and letter.job["campaign_dnc_check"] is True
    assert letter.first_failed_at is not None and letter.last_failed_at is not None


def test_connection_refused_is_a_network_dead_letter(
    redis_url: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = make_settings(
        redis_url,
        None,
        vicidial_url=f"http://127.0.0.1:{free_port()}/agc/api.php",
        vicidial_user="6666",
        vicidial_pass="1234",
        max_attempts=2,
    )
    start_worker(settings)
    job_id = enqueue_lead(agent_user="1000", phone_number="7275551218", settings=settings)
    status = _final(job_id, settings)
    assert status["state"] == "dead" and status["reason"] == "network"
    assert status["http_status"] is None


def test_bulk_enqueue_all_added_once(
    settings: Settings, simulator: Simulator, worker: WorkerProcess
) -> None:
    phones = [f"72755{n:05d}" for n in range(2000, 2040)]
    ids = enqueue_leads(
        [{"agent_user": "1000", "phone_number": p} for p in phones], settings=settings
    )
    for job_id in ids:
        assert _final(job_id, settings)["state"] == "added"
    counts = simulator.count_by_phone()
    assert all(counts[p] == 1 for p in phones)


def test_wrong_password_never_leaks_and_is_dead_lettered_as_auth(
    redis_url: str, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = make_settings(redis_url, simulator, vicidial_pass="Wr0ngPw9", pause_s=30.0)
    worker = start_worker(settings)
    job_id = enqueue_lead(agent_user="1000", phone_number="7275551219", settings=settings)
    status = _final(job_id, settings)
    assert status["state"] == "dead" and status["reason"] == "auth"
    letter = DeadLetterStore(settings=settings).get(job_id)
    assert letter is not None
    everything = worker.log_path.read_text() + json.dumps(status) + json.dumps(letter.to_dict())
    assert "Wr0ngPw9" not in everything
    assert "[REDACTED]" in letter.error
    assert "7275551219" not in worker.log_path.read_text()
