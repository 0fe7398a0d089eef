"""Outcome notifications end to end: real `celery worker` processes, the simulator, a real
HTTP receiver on loopback.

A lead added and a DNC lead each notify their outcome, signed, in order with a later
replay; a worker SIGKILLed between the outcome and the POST (its POST in flight, never
answered) loses nothing: the event is sent after the restart; a worker configured to
notify without a secret refuses to start.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dispatcher import enqueue_lead, job_status
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.ops.notifications import list_notifications
from dispatcher.simulator import Simulator
from dispatcher.store.backend import get_backend
from dispatcher.store.deadletter import DeadLetterStore
from tests.support.receiver import SECRET, Receiver, verify
from tests.support.settings import make_settings
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow
DNC_PHONE = "7275550000"  # on the simulator's DNC list


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as rec:
        yield rec


def esettings(redis_url: str, sim: Simulator, receiver: Receiver, **over: Any) -> Settings:
    values: dict[str, Any] = {
        "notify_allowed": (receiver.url.rsplit("/", 1)[0] + "/",),
        "notify_secret": SECRET,
        "notify_timeout_s": 1.0,
        "notify_retry_base_s": 0.05,
        "notify_retry_cap_s": 0.3,
    }
    values.update(over)
    return make_settings(redis_url, sim, **values)


def test_added_dead_lettered_then_replayed_added_each_notified_in_order(
    redis_url: str,
    simulator: Simulator,
    receiver: Receiver,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    s = esettings(redis_url, simulator, receiver)
    start_worker(s)
    added = enqueue_lead(
        settings=s,
        agent_user="1000",
        phone_number="7275551212",
        first_name="Bobby",
        idempotency_key="form-1",
        notify_url=receiver.url,
    )
    dnc = enqueue_lead(
        settings=s, agent_user="1000", phone_number=DNC_PHONE, notify_url=receiver.url
    )
    quiet = enqueue_lead(settings=s, agent_user="1000", phone_number="7275551214")
    wait_for(lambda: len(receiver.delivered()) == 2, timeout=30, message="two notifications")
    by_job = {body["job_id"]: body for body in receiver.delivered()}
    assert set(by_job) == {added, dnc}  # the job without a receiver is not notified
    status = job_status(added, settings=s)
    assert status is not None
    assert by_job[added]["type"] == "lead.added"
    assert by_job[added]["lead_id"] == status["lead_id"]
    assert by_job[added]["idempotency_key"] == "form-1"
    assert by_job[dnc]["type"] == "lead.dead_lettered"
    assert (by_job[dnc]["state"], by_job[dnc]["reason"]) == ("dead", "dnc")
    assert by_job[dnc]["error"].startswith("ERROR: add_lead PHONE NUMBER IN DNC")
    for r in receiver.received:
        assert verify(r)
        assert DNC_PHONE not in r.body.decode() and "Bobby" not in r.body.decode()
    assert job_status(quiet, settings=s) is not None
    # The number leaves the DNC list; the letter is replayed and added: a third event.
    simulator.remove_dnc(DNC_PHONE)
    store = DeadLetterStore(get_backend(s))
    letter = store.get(dnc)
    assert letter is not None and store.replay(letter) == "replayed"
    wait_for(lambda: len(receiver.delivered()) == 3, timeout=30, message="the replay's event")
    assert [b["type"] for b in receiver.delivered() if b["job_id"] == dnc] == [
        "lead.dead_lettered",
        "lead.replayed_added",
    ]
    wait_for(lambda: list_notifications(get_backend(s)).counts.pending == 0, message="settled")


def test_a_worker_killed_between_the_outcome_and_the_post_sends_it_after_restart(
    redis_url: str,
    simulator: Simulator,
    receiver: Receiver,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    s = esettings(redis_url, simulator, receiver, notify_url=receiver.url)
    backend = get_backend(s)
    receiver.mode = "hang"  # the POST leaves, its answer never comes
    first = start_worker(s, name="w1")
    job_id = enqueue_lead(settings=s, agent_user="1000", phone_number="7275551212")
    wait_for(lambda: receiver.received, timeout=30, message="the POST in flight")
    assert (job_status(job_id, settings=s) or {}).get("state") == "added"
    first.kill()  # SIGKILL: the worker dies with its POST unanswered
    receiver.release()
    assert list_notifications(backend).counts.pending == 1  # nothing lost
    receiver.mode = "ok"
    start_worker(s, name="w2")
    wait_for(lambda: receiver.delivered(), timeout=30, message="the event, sent again")
    (sent,) = receiver.delivered()
    assert sent["job_id"] == job_id and sent["type"] == "lead.added"
    assert sent["id"] == receiver.received[0].json()["id"]  # the same event, same id
    wait_for(lambda: list_notifications(backend).counts.pending == 0, message="settled")


def test_a_worker_that_would_notify_without_a_secret_refuses_to_start(
    redis_url: str, simulator: Simulator, receiver: Receiver, tmp_path: Any
) -> None:
    s = make_settings(redis_url, simulator, notify_url=receiver.url)
    worker = WorkerProcess(s, tmp_path / "w.log")
    worker.start(wait=False)
    assert worker.process is not None
    try:
        code = worker.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        raise
    assert code == 2
    assert "DISPATCHER_NOTIFY_SECRET is required" in worker.tail()


def test_a_lead_found_by_reconciliation_is_notified_once_as_added(
    redis_url: str,
    simulator: Simulator,
    receiver: Receiver,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    s = esettings(redis_url, simulator, receiver, notify_url=receiver.url)
    simulator.script_phone("7275551212", ["reset_after"])  # inserted, the answer lost
    start_worker(s)
    job_id = enqueue_lead(settings=s, agent_user="1000", phone_number="7275551212")
    wait_for(
        lambda: (job_status(job_id, settings=s) or {}).get("reconcile") == "found",
        timeout=60,
        message="the job reconciled",
    )
    wait_for(lambda: receiver.delivered(), timeout=30, message="the notification")
    (body,) = receiver.delivered()
    status = job_status(job_id, settings=s)
    assert status is not None
    assert (body["type"], body["lead_id"]) == ("lead.added", status["lead_id"])
    assert simulator.count_by_phone() == {"7275551212": 1}


def test_a_list_job_s_duplicate_and_addition_are_notified(
    redis_url: str,
    simulator: Simulator,
    receiver: Receiver,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Leads for a list (issue 27): ``lead.added`` with the list, and ``lead.duplicate``
    naming the lead VICIdial's duplicate check found (written in the outcome's own step)."""
    s = esettings(redis_url, simulator, receiver)
    start_worker(s)
    lead = {
        "list_id": "101",
        "campaign_id": "TESTCAMP",
        "phone_number": "7275551400",
        "duplicate_check": "DUPLIST",
        "notify_url": receiver.url,
    }
    first = enqueue_lead(settings=s, **lead)
    wait_for(lambda: len(receiver.delivered()) == 1, timeout=30, message="the first event")
    again = enqueue_lead(settings=s, **lead, first_name="Ann")
    wait_for(lambda: len(receiver.delivered()) == 2, timeout=30, message="the second event")
    by_job = {body["job_id"]: body for body in receiver.delivered()}
    added = by_job[first]
    assert (added["type"], added["state"], added["list_id"]) == ("lead.added", "added", "101")
    duplicate = by_job[again]
    assert (duplicate["type"], duplicate["state"]) == ("lead.duplicate", "duplicate")
    assert duplicate["existing_lead_id"] == added["lead_id"] and duplicate["list_id"] == "101"
    assert duplicate["lead_id"] is None and duplicate["reason"] is None
    assert "7275551400" not in str(duplicate)
