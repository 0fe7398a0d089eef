"""Exactly-once under the races a code review found (the execution record's state machine).

In-process runners (the Celery task body) against a real Redis and the simulator
over real HTTP. Where two copies of a job must interleave in one precise order,
the test holds one runner at the named step (``_dead``, ``_reschedule``) with an
event; where a Redis reply must be lost or late, a real TCP proxy
(:mod:`tests.support.faultproxy`) sits between the runner and Redis.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import structlog
from structlog.testing import capture_logs as _capture_logs

from dispatcher import DeadLetterStore, job_status
from dispatcher.config.settings import Settings
from dispatcher.ops.producer import prepare_job, push_jobs
from dispatcher.simulator import Simulator
from dispatcher.store.backend import get_backend
from tests.support.faultproxy import FaultProxy
from tests.support.queues import queued_envelopes
from tests.support.settings import make_settings
from tests.support.waiting import wait_for
from workers.runner import JobRunner, TransientInfrastructureError


def capture_logs() -> Any:
    return _capture_logs(processors=[structlog.contextvars.merge_contextvars])


def _message(settings: Settings, phone: str = "7275551212", **fields: object) -> dict[str, Any]:
    job = prepare_job({"agent_user": "1000", "phone_number": phone, **fields}, settings=settings)
    push_jobs([job], settings=settings)
    message: dict[str, Any] = job.to_message()
    return message


def _hold(obj: object, name: str) -> tuple[threading.Event, threading.Event]:
    """Make ``obj.name`` wait for a release event; return (reached, release)."""
    reached, release = threading.Event(), threading.Event()
    original = getattr(obj, name)

    @functools.wraps(original)
    def held(*args: Any, **kwargs: Any) -> Any:
        reached.set()
        assert release.wait(30), f"{name} never released"
        return original(*args, **kwargs)

    setattr(obj, name, held)
    return reached, release


def _in_thread(func: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(func())
        except BaseException as exc:  # reported by the test, not lost in the thread
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def _scheduled_messages(settings: Settings) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        envelopes = client.zrange(f"{settings.key_prefix}:scheduled", 0, -1)
    finally:
        client.close()
    out = []
    for envelope in envelopes:
        body = json.loads(base64.b64decode(json.loads(envelope)["body"]))
        out.append(body[0][0])
    return out


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
        runner.client.close()


@pytest.mark.parametrize("ambiguous", ["dead_letter", "reconcile"])
def test_a_copy_judged_orphaned_never_undoes_a_success(
    ambiguous: str, redis_url: str, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    """The original worker writes SUCCESS after a copy judged it lost: `added` stays,
    whether the copy writes an ambiguous dead letter or schedules a look-up."""
    settings = make_settings(redis_url, simulator, ambiguous=ambiguous)
    message = _message(settings, first_name="Ann")
    original, copy = runners(settings), runners(settings)
    # The call is answered, then the original stalls past its lease before storing the
    # answer (a call cannot start so late: the fence), and the copy judges it lost.
    answered, go_on = _hold(original, "store_added")
    first, first_out = _in_thread(lambda: original.run(message))
    assert answered.wait(10)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.hset(f"{settings.key_prefix}:exec:{message['job_id']}", "lease_until", "0")
    client.close()
    if ambiguous == "dead_letter":
        reached, release = _hold(copy.writes, "dead")
    else:
        reached, release = _hold(copy.writes, "await_lookup")
    second, _ = _in_thread(lambda: copy.run(message))
    assert reached.wait(10), "the copy should judge the claim orphaned"
    go_on.set()
    first.join(10)
    assert first_out == ["added"]
    release.set()  # the copy's late dead letter lands after the success
    second.join(10)
    status = job_status(str(message["job_id"]), settings=settings)
    assert status is not None and status["state"] == "added" and status["lead_id"] == "1"
    store = DeadLetterStore(settings=settings)
    for letter in list(store.iter()):  # an operator replaying whatever is there
        store.replay(letter)
    for queued in _queued_messages(settings) + _scheduled_messages(settings):
        runners(settings).run(queued)
    assert simulator.count_by_phone() == {"7275551212": 1}
    assert len(store) == 0
    assert simulator.lookup_count == 0  # the copy's look-up was never scheduled


def _queued_messages(settings: Settings) -> list[dict[str, Any]]:
    items = queued_envelopes(settings)
    return [json.loads(base64.b64decode(json.loads(i)["body"]))[0][0] for i in items]


def test_a_deferred_copy_never_wipes_a_claim_taken_meanwhile(
    redis_url: str, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    """A copy told to wait (rate limit) must not release the claim another copy took since."""
    throttled_settings = make_settings(redis_url, simulator, rate_limit=0.1)
    settings = make_settings(redis_url, simulator)
    message = _message(settings)
    throttled, calling = runners(throttled_settings), runners(settings)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    # The fleet's rate-limit slots are taken for the next 100 s.
    client.set(f"{settings.key_prefix}:rate:{throttled.server}", f"{time.time() + 100:.6f}")
    reached, release = _hold(throttled.writes, "reschedule")
    first, _ = _in_thread(lambda: throttled.run(message))
    assert reached.wait(10), "the first copy should be told to wait for a rate-limit slot"
    simulator.set_latency(700)
    second, second_out = _in_thread(lambda: calling.run(message))
    wait_for(lambda: simulator.call_count >= 1, message="the second copy's call")
    release.set()  # the first copy's deferral lands while the second is calling
    first.join(10)
    outcomes = [runners(settings).run(m) for m in _scheduled_messages(settings)]
    second.join(10)
    assert second_out == ["added"]
    assert "added" not in outcomes
    assert simulator.count_by_phone() == {"7275551212": 1}


def _finish(
    message: dict[str, Any], make: Callable[[], JobRunner], settings: Settings, timeout: float
) -> str:
    """Deliver ``message`` again until the job is final, as redeliveries would."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job_status(str(message["job_id"]), settings=settings) or {}
        if status.get("state") in ("added", "dead"):
            return str(status["state"])
        for queued in [message, *_scheduled_messages(settings)]:
            make().run(queued)
        time.sleep(0.2)
    raise AssertionError("job never finished")


def test_a_lost_claim_reply_is_recognised_as_our_own_claim(
    settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner], proxy: FaultProxy
) -> None:
    """The claim ran in Redis but its reply was lost: the worker still adds the lead."""
    via_proxy = settings.replace(redis_url=proxy.url)
    runner = runners(via_proxy)
    runner.writes.lease_s = 2.0  # short, yet the call's 1 s deadline fits (the fence)
    assert runner.run(_message(settings, "7275550100")) == "added"  # warm: scripts, pool
    message = _message(settings)
    proxy.drop_replies(1)
    # If the runner gives up, the message goes back to the queue: a redelivery follows.
    with contextlib.suppress(TransientInfrastructureError):
        runner.run(message)
    assert proxy.dropped == 1
    assert _finish(message, lambda: runners(via_proxy), settings, timeout=20) == "added"
    assert simulator.count_by_phone()["7275551212"] == 1
    assert len(DeadLetterStore(settings=settings)) == 0


def test_a_lost_success_reply_counts_the_lead_once(
    settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner], proxy: FaultProxy
) -> None:
    via_proxy = settings.replace(redis_url=proxy.url)
    runner = runners(via_proxy)
    assert runner.run(_message(settings, "7275550100")) == "added"
    message = _message(settings)
    simulator.set_latency(300)
    thread, out = _in_thread(lambda: runner.run(message))
    wait_for(lambda: simulator.call_count >= 2, message="the call")
    proxy.drop_replies(1)  # the next reply is the outcome write's
    thread.join(20)
    assert out == ["added"]
    stats = redis.Redis.from_url(settings.redis_url, decode_responses=True).hgetall(
        f"{settings.key_prefix}:stats"
    )
    assert stats["added"] == "2" and stats["latency_count"] == "2"


def test_the_outcome_is_logged_before_it_is_stored_and_stored_after_a_long_outage(
    redis_url: str, simulator: Simulator, runners: Callable[..., JobRunner], proxy: FaultProxy
) -> None:
    """Redis away for longer than the claim lease: the worker holds on and stores it."""
    settings = make_settings(redis_url, simulator, visibility_timeout_s=30.0)
    via_proxy = settings.replace(redis_url=proxy.url)
    runner = runners(via_proxy)
    runner.writes.lease_s = 2.0  # the call's 1 s deadline fits (the fence), the outage does not
    assert runner.run(_message(settings, "7275550100")) == "added"
    message = _message(settings)
    simulator.set_latency(300)
    with capture_logs() as logs:
        thread, out = _in_thread(lambda: runner.run(message))
        wait_for(lambda: simulator.call_count >= 2, message="the call")
        proxy.hold_requests(3.0)  # Redis out of reach for 3 s: longer than the 2 s lease
        wait_for(
            lambda: any(e["event"] == "lead.added" for e in logs),
            timeout=10,
            message="lead.added in the log",
        )
        status = job_status(str(message["job_id"]), settings=settings)
        assert status is not None and status["state"] != "added"  # logged first, stored next
        thread.join(20)
    assert out == ["added"]
    added = [e for e in logs if e["event"] == "lead.added"]
    assert added and added[0]["lead_id"] == "2"
    status = job_status(str(message["job_id"]), settings=settings)
    assert status is not None and status["state"] == "added" and status["lead_id"] == "2"


# -- nothing acknowledged without an outcome ---------------------------------------------


class _BrokenPolicy:
    """A retry policy with a bug: deciding about a failed call raises."""

    def retry_or_dead_letter(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the worker")


def test_an_unexpected_error_becomes_an_internal_dead_letter_holding_the_job(
    settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    runner = runners()
    runner.policy = _BrokenPolicy()  # type: ignore[assignment]
    simulator.script_phone("7275551212", ["http_503"])  # a known "not added"
    message = _message(settings, first_name="Ann")
    with capture_logs() as logs:
        assert runner.run(message) == "dead"
    store = DeadLetterStore(settings=settings)
    letter = store.get(str(message["job_id"]))
    assert letter is not None and letter.reason == "internal"
    assert "RuntimeError" in letter.error and letter.job["lead"]["first_name"] == "Ann"
    assert any(e["event"] == "worker.internal_error" for e in logs)
    assert store.replay(letter) == "replayed"
    assert runners().run(_queued_messages(settings)[0]) == "added"
    assert simulator.count_by_phone() == {"7275551212": 1}


def test_timestamps_out_of_range_are_refused_at_the_message_boundary(
    settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    message = _message(settings, "7275550000")  # on the DNC list: it would dead-letter
    message["enqueued_at"] = 1e20  # a year no datetime can hold
    assert runners().run(message) == "dead"
    [letter] = DeadLetterStore(settings=settings).iter(reason="invalid_payload")
    assert letter.job["job_id"] == message["job_id"] and "enqueued_at" in letter.error
    assert simulator.call_count == 0


# -- redaction, bounded answers -----------------------------------------------------------


def test_a_server_error_page_holding_the_password_is_redacted_everywhere(
    redis_url: str, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    secret = "Tr0ub4dor-pw"
    simulator.set_password("6666", secret)
    settings = make_settings(redis_url, simulator, vicidial_pass=secret, max_attempts=2)
    simulator.set_outage("http_500_sql")
    message = _message(settings)
    runner = runners(settings)
    with capture_logs() as logs:
        assert runner.run(message) == "retrying"
        status = job_status(str(message["job_id"]), settings=settings)
        assert status is not None and status["error"] and "HTTP 500" in status["error"]
        assert secret not in json.dumps(status)
        assert runner.run(_scheduled_messages(settings)[0]) == "dead"
    letter = DeadLetterStore(settings=settings).get(str(message["job_id"]))
    assert letter is not None and letter.reason == "http_error"
    assert secret not in json.dumps(letter.to_dict()) and "Fatal error" in letter.error
    assert secret not in json.dumps(job_status(str(message["job_id"]), settings=settings))
    assert secret not in repr(logs)


def test_a_dripping_answer_is_cut_at_the_call_deadline_inside_the_lease(
    settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    simulator.script_phone("7275551212", ["drip_after"])  # 50 bytes, one per 0.3 s
    runner = runners()
    message = _message(settings)
    started = time.monotonic()
    assert runner.run(message) == "reconciling"
    elapsed = time.monotonic() - started
    assert elapsed < runner.writes.lease_s, f"the call outlived its {runner.writes.lease_s} s lease"
    status = job_status(str(message["job_id"]), settings=settings)
    assert status is not None and status["reason"] == "ambiguous"
    # The look-up finds the lead the cut answer was about.
    assert runner.run(_scheduled_messages(settings)[0]) == "added"
    assert simulator.count_by_phone() == {"7275551212": 1}


def test_an_endless_answer_is_read_only_up_to_the_cap(
    settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    simulator.script_phone("7275551212", ["flood"])  # 2 MiB, no result line
    message = _message(settings)
    assert runners().run(message) == "reconciling"
    status = job_status(str(message["job_id"]), settings=settings)
    assert status is not None and status["reason"] == "ambiguous"
    assert "65536" in str(status["error"])


# -- smaller holes --------------------------------------------------------------------------


def test_an_outage_pause_ends_on_any_answer_from_vicidial(
    settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    runner = runners()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    key = f"{settings.key_prefix}:pause:{runner.server}"
    client.hset(
        key, mapping={"until": f"{time.time() - 1:.6f}", "kind": "outage", "reason": "network"}
    )
    client.sadd(f"{settings.key_prefix}:pauses", runner.server)
    # The probe after the outage is a lead on the DNC list: VICIdial answered.
    assert runner.run(_message(settings, "7275550000")) == "dead"
    assert not client.exists(key)
    assert runner.run(_message(settings, "7275551212")) == "added"


def test_a_bad_message_carrying_a_real_job_id_leaves_that_job_alone(
    settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    runner = runners()
    message = _message(settings, "7275550000")
    assert runner.run(message) == "dead"
    assert runner.run({"v": 1, "job_id": message["job_id"], "lead": "forged"}) == "dead"
    store = DeadLetterStore(settings=settings)
    letter = store.get(str(message["job_id"]))
    assert letter is not None and letter.reason == "dnc"
    assert store.counts() == {"dnc": 1, "invalid_payload": 1}
    assert len(store) == 2
    status = job_status(str(message["job_id"]), settings=settings)
    assert status is not None and status["reason"] == "dnc"


def test_a_late_success_of_the_lead_reconciliation_found_is_not_its_own_duplicate(
    settings: Settings, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    """The original's answer (lead N) is stored after a copy's reconciliation recorded N.

    Same lead, two reports of it: no duplicate, no `lead.duplicate_detected` (compliance
    evidence of a double add that never happened)."""
    message = _message(settings)
    original, copy = runners(), runners()
    reached, release = _hold(original, "store_added")  # answered, then stalled
    thread, out = _in_thread(lambda: original.run(message))
    assert reached.wait(10), "the original's call should have been answered"
    # Its lease runs out (as a stall past it would do) and a copy takes the job over.
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.hset(f"{settings.key_prefix}:exec:{message['job_id']}", "lease_until", "0")
    client.close()
    assert copy.run(message) == "reconciling"
    (lookup,) = _scheduled_messages(settings)
    assert copy.run(lookup) == "added"  # reconciliation found the original's lead
    with capture_logs() as logs:
        release.set()
        thread.join(10)
    assert out == ["added"]
    status = job_status(str(message["job_id"]), settings=settings)
    assert status is not None and (status["state"], status["lead_id"]) == ("added", "1")
    assert status["duplicate_lead_ids"] is None
    assert not [e for e in logs if e["event"] == "lead.duplicate_detected"]
    stats = redis.Redis.from_url(settings.redis_url, decode_responses=True).hgetall(
        f"{settings.key_prefix}:stats"
    )
    assert "duplicates_detected" not in stats
    assert simulator.count_by_phone() == {"7275551212": 1}


def test_a_late_success_with_another_lead_is_still_a_duplicate(settings: Settings) -> None:
    execution = get_backend(settings).execution
    common = {
        "list_id": "101",
        "campaign": "TESTCAMP",
        "done_ttl": 60,
        "ttl": 60,
        "attempts": 1,
        "latency_field": "latency_le_0_1",
        "latency_ms": 1.0,
        "server": "default",
    }

    def succeed(token: str, lead_id: str) -> list[str]:
        reply = execution.succeed("job-x", token=token, lead_id=lead_id, **common)
        return [x.decode() if isinstance(x, bytes) else str(x) for x in reply]

    assert succeed("a", "5")[0] == "ok"
    assert succeed("b", "5") == ["same", "5"]  # another copy's report of the same lead
    assert succeed("c", "9") == ["duplicate", "5"]  # another lead: VICIdial holds two
    status = job_status("job-x", settings=settings)
    assert status is not None and status["duplicate_lead_ids"] == ["9"]
