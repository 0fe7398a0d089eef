"""Reconciliation in the job runner: real Redis, real HTTP to the simulator, no Celery.

Each test drives :class:`workers.runner.JobRunner` message by message (taking the
scheduled look-ups out of Redis itself), so every step of a job's reconciliation is
visible: the ambiguous call, the look-up, the decision through the state machine.
End to end with real worker processes: tests/e2e/test_reconcile_e2e.py.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
import structlog
from structlog.testing import capture_logs as _capture_logs

from dispatcher import DeadLetterStore, job_status
from dispatcher.cli.reconcile import lookup_lines
from dispatcher.config.settings import Settings
from dispatcher.ops.producer import prepare_job, push_jobs
from dispatcher.ops.status import fleet_status
from dispatcher.simulator import Simulator
from dispatcher.store.backend import get_backend
from dispatcher.vicidial.lookup import check_lookups
from dispatcher.vicidial.nonagent import NonAgentClient
from tests.support.settings import make_settings
from workers.lookup_check import LookupChecker
from workers.runner import JobRunner

PHONE = "7275551212"


def capture_logs() -> Any:
    return _capture_logs(processors=[structlog.contextvars.merge_contextvars])


@pytest.fixture
def settings(redis_url: str, simulator: Simulator) -> Settings:
    return make_settings(redis_url, simulator, reconcile_after_s=0.0)


@pytest.fixture
def runners(settings: Settings) -> Iterator[Callable[..., JobRunner]]:
    made: list[JobRunner] = []

    def make(s: Settings | None = None) -> JobRunner:
        s = s or settings
        runner = JobRunner(s, get_backend(s))
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.close()


def _message(settings: Settings, phone: str = PHONE, **fields: object) -> dict[str, Any]:
    job = prepare_job({"agent_user": "1000", "phone_number": phone, **fields}, settings=settings)
    push_jobs([job], settings=settings)
    return job.to_message()


def _take_scheduled(settings: Settings) -> list[dict[str, Any]]:
    """Pop every scheduled message (due or not), oldest first."""
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        popped = client.zpopmin(f"{settings.key_prefix}:scheduled", 1000)
    finally:
        client.close()
    out = []
    for envelope, _ in popped:
        body = json.loads(base64.b64decode(json.loads(envelope)["body"]))
        out.append(body[0][0])
    return out


def _run_next(runner: JobRunner, settings: Settings) -> str:
    (message,) = _take_scheduled(settings)
    return runner.run(message)


def _stats(settings: Settings) -> dict[str, str]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        return client.hgetall(f"{settings.key_prefix}:stats")
    finally:
        client.close()


def _lead_ids(simulator: Simulator, phone: str = PHONE) -> list[str]:
    return [str(x.lead_id) for x in simulator.leads if x.phone_number == phone]


@pytest.mark.parametrize("fault", ["reset_after", "stall_after", "http_504_after"])
def test_an_insert_whose_answer_was_lost_is_found_and_added_once(
    fault: str, settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    simulator.set_stall_seconds(3.0)  # past the 1 s read timeout
    simulator.script_phone(PHONE, [fault])
    runner = runners()
    message = _message(settings, first_name="Ann")
    assert runner.run(message) == "reconciling"
    status = job_status(message["job_id"], settings=settings)
    assert status is not None and status["state"] == "retrying"
    assert status["reason"] == "ambiguous" and status["reconcile"] == "pending"
    with capture_logs() as logs:
        assert _run_next(runner, settings) == "added"
    (lead_id,) = _lead_ids(simulator)
    status = job_status(message["job_id"], settings=settings)
    assert status is not None and (status["state"], status["lead_id"]) == ("added", lead_id)
    assert status["reconcile"] == "found" and status["attempts"] == 1
    reconciled = [e for e in logs if e["event"] == "lead.reconciled"]
    assert reconciled and reconciled[0]["found"] == 1 and reconciled[0]["lead_id"] == lead_id
    # One look-up: lead_all_info, then lead_search (which sees every list).
    assert simulator.call_count == 1 and simulator.lookup_count == 2
    # The lead carries the job's marker: the job id, in source_id.
    assert simulator.leads[0].fields["source_id"] == message["job_id"]
    assert simulator.leads[0].fields["first_name"] == "Ann"
    assert _stats(settings)["reconcile:found"] == "1"
    assert not _take_scheduled(settings)  # nothing else pending (no verification needed)


@pytest.mark.parametrize("fault", ["reset", "stall", "http_504"])
def test_a_call_that_never_arrived_is_not_found_and_called_again(
    fault: str, settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    simulator.set_stall_seconds(3.0)
    simulator.script_phone(PHONE, [fault])
    runner = runners()
    message = _message(settings, dnc_check=True)
    assert runner.run(message) == "reconciling"
    with capture_logs() as logs:
        assert _run_next(runner, settings) == "retrying"
    reconciled = [e for e in logs if e["event"] == "lead.reconciled"]
    assert reconciled and reconciled[0]["found"] == 0
    (again,) = _take_scheduled(settings)
    assert again["dnc_check"] is True and again["campaign_dnc_check"] is True
    assert again["attempts"] == 1  # the lost call counts
    assert again["reconcile"]["step"] == "recall" and again["reconcile"]["absent"] == 1
    assert runner.run(again) == "added"
    assert len(_lead_ids(simulator)) == 1
    status = job_status(message["job_id"], settings=settings)
    assert status is not None and status["state"] == "added" and status["attempts"] == 2
    assert simulator.requests[-1].fields["dnc_check"] == "YES"
    # Called again after "absent": one verification look-up is scheduled for later.
    (verify,) = _take_scheduled(settings)
    assert verify["reconcile"]["step"] == "verify"
    assert runner.run(verify) == "verified"
    assert simulator.lookup_count == 4  # two look-ups, lead_all_info and lead_search each
    status = job_status(message["job_id"], settings=settings)
    assert status is not None and status["reconcile"] == "verified"


def test_a_lead_found_twice_is_added_with_the_oldest_and_the_duplicate_reported(
    settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    simulator.script_phone(PHONE, ["reset_after"])
    runner = runners()
    message = _message(settings)
    assert runner.run(message) == "reconciling"
    # Something (a stuck request of ours) added the same lead again meanwhile.
    _add_marked(simulator, message["job_id"])
    first, second = _lead_ids(simulator)
    with capture_logs() as logs:
        assert _run_next(runner, settings) == "added"
    status = job_status(message["job_id"], settings=settings)
    assert status is not None and status["lead_id"] == first
    assert status["duplicate_lead_ids"] == [second] and status["reconcile"] == "duplicates"
    dup = [e for e in logs if e["event"] == "lead.duplicate_detected"]
    assert dup and dup[0]["lead_ids"] == [first, second]
    assert [e["found"] for e in logs if e["event"] == "lead.reconciled"] == [2]
    assert _stats(settings)["duplicates_detected"] == "1"
    assert len(_lead_ids(simulator)) == 2  # reported, not deleted (repair is off)


def _add_marked(simulator: Simulator, job_id: str, phone: str = PHONE) -> None:
    with httpx.Client(timeout=5) as http:
        reply = http.post(
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
        )
    assert reply.text.startswith("SUCCESS"), reply.text


def test_the_repair_deletes_later_untouched_copies_only(
    redis_url: str, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    settings = make_settings(
        redis_url, simulator, reconcile_after_s=0.0, reconcile_delete_duplicates=True
    )
    simulator.script_phone(PHONE, ["reset_after"])
    runner = runners(settings)
    message = _message(settings)
    assert runner.run(message) == "reconciling"
    _add_marked(simulator, message["job_id"])
    _add_marked(simulator, message["job_id"])
    first, second, third = _lead_ids(simulator)
    simulator.touch_lead(int(third), status="NA", called_count=1)  # an agent dialled it
    with capture_logs() as logs:
        assert _run_next(runner, settings) == "added"
    assert _lead_ids(simulator) == [first, third]
    deleted = [e for e in logs if e["event"] == "lead.duplicate_deleted"]
    assert [e["lead_id"] for e in deleted] == [second]
    kept = [e for e in logs if e["event"] == "lead.duplicate_kept"]
    assert [e["lead_id"] for e in kept] == [third]
    status = job_status(message["job_id"], settings=settings)
    assert status is not None and status["lead_id"] == first
    assert status["duplicate_lead_ids"] == [second, third]
    assert status["deleted_lead_ids"] == [second]


def test_a_stuck_request_that_inserts_after_the_look_up_is_caught_by_the_verification(
    redis_url: str, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    settings = make_settings(redis_url, simulator, reconcile_after_s=0.0)
    simulator.set_stall_seconds(60.0)
    simulator.script_phone(PHONE, ["hold_insert"])
    runner = runners(settings)
    message = _message(settings)
    assert runner.run(message) == "reconciling"  # read timeout: the request is stuck
    assert _run_next(runner, settings) == "retrying"  # the look-up: not there (yet)
    assert runner.run(_take_scheduled(settings)[0]) == "added"  # called again
    (mine,) = _lead_ids(simulator)
    assert simulator.release_held() == 1  # the stuck request inserts now
    deadline = time.monotonic() + 5
    while len(_lead_ids(simulator)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    _, late = _lead_ids(simulator)
    with capture_logs() as logs:
        assert _run_next(runner, settings) == "duplicates"  # the verification
    status = job_status(message["job_id"], settings=settings)
    assert status is not None and status["lead_id"] == mine
    assert status["duplicate_lead_ids"] == [late]
    dup = [e for e in logs if e["event"] == "lead.duplicate_detected"]
    assert dup and dup[0]["lead_ids"] == [mine, late]


def _add_other(simulator: Simulator, phone: str = PHONE) -> str:
    """A lead of someone else with the same phone, in list 101 (readable): its id."""

    with httpx.Client(timeout=5) as http:
        reply = http.post(
            simulator.url,
            data={
                "source": "test",
                "user": "6666",
                "pass": "1234",
                "function": "external_add_lead",
                "agent_user": "1000",
                "phone_code": "1",
                "value": phone,
            },
        )
    assert reply.text.startswith("SUCCESS"), reply.text
    return reply.text.strip().split("|")[-2]


@pytest.mark.parametrize(
    ("agent", "readable"),
    [("1001", None), ("1002", ["TESTCAMP"])],
    ids=["list-0", "list-of-a-campaign-the-group-cannot-read"],
)
def test_a_lead_only_lead_search_sees_is_never_called_again(
    agent: str,
    readable: list[str] | None,
    settings: Settings,
    simulator: Simulator,
    runners: Callable[..., JobRunner],
) -> None:
    """Issue 23, item 1: lead_all_info shows the phone's other lead (list 101) and never
    ours (list 0 of NOLIST, or list 102 of a campaign the API user's group may not
    read), with no LIST NOT FOUND line. That is not "absent": never a second call."""
    if readable is not None:
        simulator.set_user_group("ADMIN", allowed_campaigns=readable)
    other = _add_other(simulator)
    simulator.script_phone(PHONE, ["reset_after"])  # ours is inserted, the answer lost
    runner = runners()
    message = _message(settings, agent_user=agent)
    assert runner.run(message) == "reconciling"
    (ours,) = [x for x in _lead_ids(simulator) if x != other]
    with capture_logs() as logs:
        outcome = _run_next(runner, settings)
    assert simulator.call_count == 2  # the other lead's add and ours: nothing more
    assert sorted(_lead_ids(simulator), key=int) == sorted([other, ours], key=int)
    assert outcome == "dead"
    letter = DeadLetterStore(settings=settings).get(message["job_id"])
    assert letter is not None and letter.reason == "ambiguous"
    assert f"lead {ours}" in letter.error and "lead_search" in letter.error
    reconciled = [e for e in logs if e["event"] == "lead.reconciled"]
    assert reconciled and reconciled[0]["outcome"] == "unknown"
    assert not _take_scheduled(settings)


def test_a_verification_that_cannot_see_every_lead_does_not_say_verified(
    redis_url: str, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    """The verification after a call made again follows the same rule: a copy that only
    lead_search sees (list 0) leaves the job unverified, never "verified"."""
    settings = make_settings(redis_url, simulator, reconcile_after_s=0.0)
    other = _add_other(simulator)
    simulator.set_stall_seconds(60.0)
    simulator.script_phone(PHONE, ["hold_insert"])
    runner = runners(settings)
    message = _message(settings, agent_user="1001")  # NOLIST: list 0
    assert runner.run(message) == "reconciling"  # read timeout: the request is stuck
    assert _run_next(runner, settings) == "retrying"  # not there (yet): called again
    assert runner.run(_take_scheduled(settings)[0]) == "added"
    (mine,) = [x for x in _lead_ids(simulator) if x != other]
    assert simulator.release_held() == 1  # the stuck request inserts a copy now
    deadline = time.monotonic() + 5
    while len(_lead_ids(simulator)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    (late,) = [x for x in _lead_ids(simulator) if x not in (other, mine)]
    with capture_logs() as logs:
        assert _run_next(runner, settings) == "unverified"
    status = job_status(message["job_id"], settings=settings)
    assert status is not None and status["lead_id"] == mine
    assert status["reconcile"] == "unverified"
    assert status["unverified_lead_ids"] == [late]
    warned = [e for e in logs if e["event"] == "lead.reconcile_unverified"]
    assert warned and warned[0]["lead_ids"] == [late]


def test_a_visible_lead_beside_a_hidden_late_copy_is_not_verified(
    redis_url: str, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    """The job's own lead is readable, a late copy is not (the agent moved to a campaign
    without a manual dial list before the stuck request inserted it): unverified."""
    settings = make_settings(redis_url, simulator, reconcile_after_s=0.0)
    simulator.set_stall_seconds(60.0)
    simulator.script_phone(PHONE, ["hold_insert"])
    runner = runners(settings)
    message = _message(settings)
    assert runner.run(message) == "reconciling"
    assert _run_next(runner, settings) == "retrying"
    assert runner.run(_take_scheduled(settings)[0]) == "added"  # lead in list 101
    (mine,) = _lead_ids(simulator)
    simulator.login("1000", "NOLIST")
    assert simulator.release_held() == 1  # the late copy lands in list 0
    deadline = time.monotonic() + 5
    while len(_lead_ids(simulator)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    (late,) = [x for x in _lead_ids(simulator) if x != mine]
    assert _run_next(runner, settings) == "unverified"
    status = job_status(message["job_id"], settings=settings)
    assert status is not None and status["unverified_lead_ids"] == [late]


def test_a_worker_lost_mid_call_is_looked_up_not_dead_lettered(
    settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    message = _message(settings)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.hset(
        f"{settings.key_prefix}:exec:{message['job_id']}",
        mapping={"state": "claimed", "seq": 0, "lease_until": f"{time.time() - 1:.6f}"},
    )
    runner = runners()
    assert runner.run(message) == "reconciling"
    assert simulator.call_count == 0
    assert _run_next(runner, settings) == "retrying"  # it died before sending
    assert runner.run(_take_scheduled(settings)[0]) == "added"
    assert len(_lead_ids(simulator)) == 1


def test_a_look_up_that_fails_is_tried_again_and_counts_toward_the_breaker(
    settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    simulator.script_phone(PHONE, ["reset_after", "http_503"])
    runner = runners()
    message = _message(settings)
    assert runner.run(message) == "reconciling"
    assert _run_next(runner, settings) == "reconciling"  # 503: looked up again later
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    assert client.get(f"{settings.key_prefix}:breaker:{runner.server}") == "1"
    assert _run_next(runner, settings) == "added"
    # The 503 (lead_all_info), then lead_all_info and lead_search.
    assert simulator.lookup_count == 3 and len(_lead_ids(simulator)) == 1


def test_look_ups_wait_for_a_paused_server(
    settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    simulator.script_phone(PHONE, ["reset_after"])
    runner = runners()
    message = _message(settings)
    assert runner.run(message) == "reconciling"
    runner.writes.execution.pause(runner.server, seconds=30, reason="auth", error="test")
    assert _run_next(runner, settings) == "deferred"
    assert simulator.lookup_count == 0
    runner.writes.execution.resume(runner.server)
    assert _run_next(runner, settings) == "added"


def test_a_look_up_not_permitted_leaves_the_dead_letter_of_before(
    settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    simulator.update_user("6666", view_reports=False)
    simulator.script_phone(PHONE, ["reset_after"])
    runner = runners()
    message = _message(settings)
    assert runner.run(message) == "reconciling"
    assert _run_next(runner, settings) == "dead"
    letter = DeadLetterStore(settings=settings).get(message["job_id"])
    assert letter is not None and letter.reason == "ambiguous"
    assert "View Reports" in letter.error and "reconcile" not in letter.job
    assert simulator.failed_logins("6666") == 0
    lookups = simulator.lookup_count
    # The next ambiguous job does not ask again while the refusal is held.
    simulator.script_phone("7275551213", ["reset_after"])
    other = _message(settings, "7275551213")
    assert runner.run(other) == "reconciling"
    assert _run_next(runner, settings) == "dead"
    assert simulator.lookup_count == lookups


def test_a_refused_login_costs_one_failed_login_and_stops_look_ups_not_calls(
    settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    simulator.update_user("6666", user_level=6)  # fine for agc/api.php, not for look-ups
    runner = runners()
    for i in range(3):
        simulator.script_phone(f"727555130{i}", ["reset_after"])
        assert runner.run(_message(settings, f"727555130{i}")) == "reconciling"
    outcomes = [runner.run(m) for m in _take_scheduled(settings)]
    assert outcomes == ["dead", "dead", "dead"]  # the letters of before, with why
    assert simulator.failed_logins("6666") == 1 and simulator.lookup_count == 1
    assert not simulator.is_locked("6666")
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    record = client.hgetall(f"{settings.key_prefix}:lookup:{runner.server}")
    assert record["state"] == "refused" and "User Level" in record["fix"]
    letter = DeadLetterStore(settings=settings).get(_message_ids(settings)[0])
    assert letter is not None and "User Level" in letter.error
    # Calls are not paused: the user is fine for external_add_lead.
    assert not client.exists(f"{settings.key_prefix}:pause:{runner.server}")
    assert runner.run(_message(settings, "7275551399")) == "added"
    # Nothing logs in again by itself...
    simulator.script_phone("7275551398", ["reset_after"])
    assert runner.run(_message(settings, "7275551398")) == "reconciling"
    assert _run_next(runner, settings) == "dead"
    assert simulator.failed_logins("6666") == 1
    # ...until the operator fixed the level and asks again (health --recheck, dlq reconcile).
    simulator.update_user("6666", user_level=9)
    runner.writes.execution.lookup_release(runner.server)
    simulator.script_phone("7275551397", ["reset_after"])
    assert runner.run(_message(settings, "7275551397")) == "reconciling"
    assert _run_next(runner, settings) == "added"
    assert client.hget(f"{settings.key_prefix}:lookup:{runner.server}", "state") == "ok"


def _message_ids(settings: Settings) -> list[str]:
    """Dead letter ids, oldest first."""
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        return list(client.zrange(f"{settings.key_prefix}:dlq", 0, -1))
    finally:
        client.close()


def test_the_marker_goes_in_vendor_lead_code_when_asked(
    redis_url: str, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    settings = make_settings(
        redis_url, simulator, reconcile_after_s=0.0, marker_field="vendor_lead_code"
    )
    simulator.script_phone(PHONE, ["reset_after"])
    runner = runners(settings)
    message = _message(settings, source_id="crm-1")
    assert runner.run(message) == "reconciling"
    stored = simulator.leads[0].fields
    assert stored["source_id"] == "crm-1" and len(stored["vendor_lead_code"]) == 20
    assert _run_next(runner, settings) == "added"


def test_without_a_marker_the_fields_sent_must_match(
    settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    simulator.script_phone(PHONE, ["reset_after"])
    runner = runners()
    message = _message(settings, source_id="crm-1", first_name="Ann")
    assert runner.run(message) == "reconciling"
    assert simulator.leads[0].fields["source_id"] == "crm-1"  # the producer's, kept
    with capture_logs() as logs:
        assert _run_next(runner, settings) == "added"
    reconciled = [e for e in logs if e["event"] == "lead.reconciled"]
    assert reconciled[0]["matched_by"] == "fields"


def test_dead_letter_mode_is_unchanged(
    redis_url: str, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    settings = make_settings(redis_url, simulator, ambiguous="dead_letter")
    simulator.script_phone(PHONE, ["reset_after"])
    message = _message(settings)
    assert runners(settings).run(message) == "dead"
    assert simulator.lookup_count == 0


def test_permission_checks_ask_vicidial_once_and_respect_holds(
    settings: Settings, simulator: Simulator
) -> None:
    backend = get_backend(settings)
    server = "default"  # the one dialer the VICIDIAL_* variables define
    client = NonAgentClient(settings)
    try:
        assert check_lookups(backend, client, server=server).state == "ok"
        assert simulator.lookup_count == 2  # lead_all_info, and lead_search
        assert check_lookups(backend, client, server=server).state == "fresh"  # no request
        assert simulator.lookup_count == 2
        simulator.update_user("6666", view_reports=False)
        denied = check_lookups(backend, client, server=server, mode="force")
        assert denied.state == "denied" and denied.missing == "View Reports"
        assert '"View Reports"' in denied.fix
        asked = simulator.lookup_count  # lead_all_info, then lead_search to narrow it down
        assert check_lookups(backend, client, server=server).state == "held"
        simulator.update_user("6666", view_reports=True, user_level=5)
        refused = check_lookups(backend, client, server=server, mode="force")
        assert refused.state == "refused" and simulator.failed_logins("6666") == 1
        for _ in range(3):  # neither checks nor the workers' checker log in again
            assert check_lookups(backend, client, server=server).state == "held"
            assert LookupChecker(settings, backend).run_once() is not None
        assert simulator.failed_logins("6666") == 1
        assert simulator.lookup_count == asked + 1
    finally:
        client.close()


def test_without_lead_search_a_lead_is_found_but_never_proven_absent(
    settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    """User level 7: lead_all_info answers, lead_search does not (it needs 8)."""

    simulator.update_user("6666", user_level=7)
    backend = get_backend(settings)
    client = NonAgentClient(settings)
    try:
        check = check_lookups(backend, client, server="default")
    finally:
        client.close()
    assert check.state == "ok" and "lead_search" in check.missing
    assert '"User Level" 8' in check.fix
    lines = lookup_lines(settings, fleet_status(backend)["reconcile"]["lookups"])
    assert [ok for ok, _ in lines] == [False]
    assert "but lead_search is not" in lines[0][1]
    runner = runners()
    simulator.script_phone(PHONE, ["reset_after"])  # inserted: found without lead_search
    found = _message(settings)
    assert runner.run(found) == "reconciling"
    assert _run_next(runner, settings) == "added"
    simulator.script_phone("7275551213", ["reset"])  # not inserted: cannot be proven
    absent = _message(settings, "7275551213")
    assert runner.run(absent) == "reconciling"
    assert _run_next(runner, settings) == "dead"
    letter = DeadLetterStore(settings=settings).get(absent["job_id"])
    assert letter is not None and letter.reason == "ambiguous"
    assert "absence cannot be proven without lead_search" in letter.error
    assert simulator.call_count == 2  # never called a second time
    assert simulator.failed_logins("6666") == 0


def test_the_workers_checker_never_logs_in_while_calls_are_paused_for_credentials(
    settings: Settings, simulator: Simulator
) -> None:
    backend = get_backend(settings)
    backend.execution.pause("default", seconds=30, reason="auth", error="x")
    assert LookupChecker(settings, backend).run_once() is None
    assert simulator.lookup_count == 0
    off = LookupChecker(settings.replace(ambiguous="dead_letter"), backend)
    assert not off.enabled


def test_a_lead_holding_a_quote_cannot_be_read_back_and_says_so(
    settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    simulator.script_phone(PHONE, ["reset_after"])
    runner = runners()
    message = _message(settings, last_name="O'Brien")
    assert runner.run(message) == "reconciling"
    assert _run_next(runner, settings) == "dead"  # no retries: it fails every time
    assert simulator.lookup_count == 1
    letter = DeadLetterStore(settings=settings).get(message["job_id"])
    assert letter is not None and letter.reason == "ambiguous"
    assert "holds a '" in letter.error and "by hand" in letter.error
