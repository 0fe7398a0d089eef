"""Reconciliation end to end: real `celery worker` processes, real Redis, the simulator,
and the installed `dispatcher` command (health, status, dlq reconcile).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from dispatcher import DeadLetterStore, enqueue_lead, enqueue_leads, job_status
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.simulator import Simulator
from tests.support.cli import check, run_cli
from tests.support.settings import make_settings
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def _final(ids: list[str], settings: Settings, timeout: float = 30) -> dict[str, dict[str, Any]]:
    def done() -> dict[str, dict[str, Any]] | None:
        states = {i: job_status(i, settings=settings) or {} for i in ids}
        if all(s.get("state") in ("added", "dead") for s in states.values()):
            return states
        return None

    result: dict[str, dict[str, Any]] = wait_for(
        done, timeout=timeout, interval=0.1, message="every job to finish"
    )
    return result


def _lead_ids(simulator: Simulator, phone: str) -> list[str]:
    return [str(x.lead_id) for x in simulator.leads if x.phone_number == phone]


def _add_marked(simulator: Simulator, phone: str, job_id: str) -> None:
    reply = httpx.post(
        simulator.url,
        data={
            "source": "test",
            "user": "6666",
            "pass": "1234",
            "function": "external_add_lead",
            "agent_user": "1000",
            "phone_code": "1",
            "value": phone,
            "source_id": job_id,
        },
        timeout=5,
    )
    assert reply.text.startswith("SUCCESS"), reply.text


def test_each_lost_answer_resolves_to_exactly_one_lead(
    redis_url: str, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    """Faults after the insert -> added with that lead; before it -> called again."""
    settings = make_settings(redis_url, simulator, reconcile_after_s=0.5)
    simulator.set_stall_seconds(2.5)  # past the 1 s read timeout
    after = {
        "7275552001": "reset_after",
        "7275552002": "stall_after",
        "7275552003": "http_504_after",
    }
    before = {"7275552004": "reset", "7275552005": "stall", "7275552006": "http_504"}
    for phone, fault in {**after, **before}.items():
        simulator.script_phone(phone, [fault])
    worker = start_worker(settings, concurrency=4)
    phones = [*after, *before]
    ids = enqueue_leads(
        [{"agent_user": "1000", "phone_number": p, "first_name": "Ann"} for p in phones],
        settings=settings,
    )
    states = _final(ids, settings)
    for job_id, phone in zip(ids, phones, strict=True):
        state = states[job_id]
        (lead_id,) = _lead_ids(simulator, phone)  # one row per lead, whatever happened
        assert (state["state"], state["lead_id"]) == ("added", lead_id), (phone, state)
        assert state["duplicate_lead_ids"] is None
        assert state["attempts"] == (1 if phone in after else 2), (phone, state)
    events = worker.logs()
    reconciled = {e["job_id"]: e for e in events if e.get("event") == "lead.reconciled"}
    for job_id, phone in zip(ids, phones, strict=True):
        assert reconciled[job_id]["found"] == (1 if phone in after else 0)
    assert simulator.call_count == 9  # 6 calls, 3 of them made again
    print(f"look-ups: {simulator.lookup_count} for 6 ambiguous calls (3 verifications)")


def test_a_look_up_not_permitted_is_the_dead_letter_of_before_and_health_says_why(
    redis_url: str, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = make_settings(redis_url, simulator)
    simulator.update_user("6666", view_reports=False)  # as VICIdial's seed user 6666
    simulator.script_phone("7275552101", ["reset_after"])
    worker = start_worker(settings)
    job_id = enqueue_lead(agent_user="1000", phone_number="7275552101", settings=settings)
    state = _final([job_id], settings)[job_id]
    assert (state["state"], state["reason"]) == ("dead", "ambiguous")
    letter = DeadLetterStore(settings=settings).get(job_id)
    assert letter is not None and "View Reports" in letter.error
    health = run_cli(settings, "health")
    check(health)  # a warning, not an unhealthy process
    text = health.stdout + health.stderr
    assert "ok: redis" in health.stdout
    assert "NOT permitted" in text and "View Reports" in text and "Users" in text
    status = run_cli(settings, "status", "--json")
    check(status)
    lookups = json.loads(status.stdout)["reconcile"]["lookups"]
    (record,) = lookups.values()
    assert record["state"] == "denied" and record["missing"] == "View Reports"
    assert simulator.failed_logins("6666") == 0
    # The operator sets View Reports, checks, and resolves the letter.
    simulator.update_user("6666", view_reports=True)
    recheck = run_cli(settings, "health", "--recheck")
    check(recheck)
    assert "look-ups permitted" in recheck.stdout
    check(run_cli(settings, "dlq", "reconcile", job_id, "--yes"))
    state = _final([job_id], settings)[job_id]
    assert (state["state"], state["lead_id"]) == ("added", _lead_ids(simulator, "7275552101")[0])
    assert worker.alive()


def test_dlq_reconcile_dry_run_then_for_real_on_a_mix_of_letters(
    redis_url: str, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    # Letters made the old way (DISPATCHER_AMBIGUOUS=dead_letter), by a real worker.
    old = make_settings(redis_url, simulator, ambiguous="dead_letter")
    landed, lost, twice, dnc = "7275552201", "7275552202", "7275552203", "7275550000"
    simulator.script_phone(landed, ["reset_after"])
    simulator.script_phone(lost, ["reset"])
    simulator.script_phone(twice, ["reset_after"])
    old_worker = start_worker(old, name="old")
    phones = [landed, lost, twice, dnc]
    ids = enqueue_leads([{"agent_user": "1000", "phone_number": p} for p in phones], settings=old)
    states = _final(ids, old)
    by_phone = dict(zip(phones, ids, strict=True))
    assert [states[i]["reason"] for i in ids] == ["ambiguous", "ambiguous", "ambiguous", "dnc"]
    _add_marked(simulator, twice, by_phone[twice])  # a second copy of that job's lead
    old_worker.stop()
    settings = make_settings(redis_url, simulator)
    store = DeadLetterStore(settings=settings)
    before = len(store)

    dry = run_cli(settings, "dlq", "reconcile", "--all", "--dry-run")
    check(dry)
    lines = {line.split()[0]: line for line in dry.stdout.splitlines()}
    assert set(lines) == {by_phone[landed], by_phone[lost], by_phone[twice]}
    assert (
        f"would be marked added: lead {_lead_ids(simulator, landed)[0]}" in lines[by_phone[landed]]
    )
    assert "would be called again" in lines[by_phone[lost]]
    first, second = _lead_ids(simulator, twice)
    assert f"lead {first} (found 2: duplicates {second})" in lines[by_phone[twice]]
    assert "2202" in lines[by_phone[lost]] and lost not in dry.stdout  # phones masked
    assert "nothing changed" in dry.stderr
    assert len(store) == before and simulator.call_count == 5  # 4 jobs, 1 copy by hand

    as_json = run_cli(settings, "dlq", "reconcile", "--reason", "ambiguous", "--dry-run", "--json")
    check(as_json)
    rows = {r["id"]: r for r in json.loads(as_json.stdout)}
    assert rows[by_phone[twice]]["duplicate_lead_ids"] == [second]

    named = run_cli(settings, "dlq", "reconcile", by_phone[dnc], "--yes")
    check(named, code=1)  # nothing ambiguous among the named letters
    assert "not ambiguous" in named.stderr

    start_worker(settings, name="new")
    real = run_cli(settings, "dlq", "reconcile", "--all", "--yes")
    check(real)
    assert "handed 3 letter(s) to the workers" in real.stderr
    states = _final(ids, settings)
    assert states[by_phone[landed]]["lead_id"] == _lead_ids(simulator, landed)[0]
    assert len(_lead_ids(simulator, lost)) == 1
    assert states[by_phone[lost]]["state"] == "added"
    assert states[by_phone[twice]]["lead_id"] == first
    assert states[by_phone[twice]]["duplicate_lead_ids"] == [second]
    assert states[by_phone[dnc]]["state"] == "dead"  # left alone
    assert [x.reason for x in store.iter()] == ["dnc"]
