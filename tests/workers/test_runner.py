"""The job runner in-process (no Celery): exactly-once effect, against real Redis and HTTP.

Each test drives :class:`workers.runner.JobRunner` with real queue messages and
asserts what VICIdial (the simulator) received and which events were logged
(structlog's ``capture_logs``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
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
from tests.support.settings import make_settings
from workers.runner import JobRunner


def capture_logs() -> Any:
    """capture_logs with the job context bound through contextvars, as in production."""
    return _capture_logs(processors=[structlog.contextvars.merge_contextvars])


@pytest.fixture
def runner(settings: Settings) -> Iterator[JobRunner]:
    job_runner = JobRunner(settings, get_backend(settings))
    yield job_runner
    job_runner.client.close()


def _message(settings: Settings, phone: str = "7275551212", **fields: object) -> dict[str, object]:
    job = prepare_job({"agent_user": "1000", "phone_number": phone, **fields}, settings=settings)
    push_jobs([job], settings=settings)
    return job.to_message()


def test_success_then_every_later_copy_is_suppressed_without_a_call(
    settings: Settings, simulator: Simulator, runner: JobRunner
) -> None:
    message = _message(settings)
    with capture_logs() as logs:
        assert runner.run(message) == "added"
        assert runner.run(message) == "duplicate_suppressed"  # redelivered copy
        assert runner.run(dict(message, seq=0)) == "duplicate_suppressed"
    assert simulator.call_count == 1
    events = [e["event"] for e in logs]
    assert events == [
        "lead.attempt",
        "lead.added",
        "lead.duplicate_suppressed",
        "lead.duplicate_suppressed",
    ]
    added = logs[1]
    assert added["lead_id"] == "1" and added["list_id"] == "101"
    assert added["campaign"] == "TESTCAMP" and added["attempt"] == 1
    assert added["job_id"] == message["job_id"] and added["agent_user"] == "1000"
    status = job_status(str(message["job_id"]), settings=settings)
    assert status is not None and status["state"] == "added"
    stats = redis.Redis.from_url(settings.redis_url, decode_responses=True).hgetall(
        f"{settings.key_prefix}:stats"
    )
    assert stats["added"] == "1" and stats["duplicates_suppressed"] == "2"
    assert stats["latency_count"] == "1"


def test_a_stale_copy_of_a_retried_job_is_dropped(
    settings: Settings, simulator: Simulator, runner: JobRunner
) -> None:
    simulator.script_phone("7275551212", ["http_503"])
    message = _message(settings)
    assert runner.run(message) == "retrying"
    # The original publication (seq 0) comes back: a redelivery after the retry
    # was stored. The retry (seq 1) owns the job now.
    with capture_logs() as logs:
        assert runner.run(message) == "stale"
    assert logs[0]["event"] == "lead.stale_copy_dropped"
    assert simulator.call_count == 1


def test_a_copy_racing_a_call_in_flight_is_deferred_not_called(
    settings: Settings, simulator: Simulator, runner: JobRunner
) -> None:
    message = _message(settings)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    exec_key = f"{settings.key_prefix}:exec:{message['job_id']}"
    # Another worker holds the claim with a live lease.
    client.hset(
        exec_key, mapping={"state": "claimed", "seq": 0, "lease_until": f"{time.time() + 30:.6f}"}
    )
    assert runner.run(message) == "deferred"
    assert simulator.call_count == 0
    assert client.zcard(f"{settings.key_prefix}:scheduled") == 1


def test_a_worker_lost_mid_call_makes_the_job_ambiguous(
    redis_url: str, simulator: Simulator
) -> None:
    # DISPATCHER_AMBIGUOUS=dead_letter (reconcile, the default:
    # tests/workers/test_reconciler.py)
    settings = make_settings(redis_url, simulator, ambiguous="dead_letter")
    runner = JobRunner(settings, get_backend(settings))
    message = _message(settings, first_name="Ann")
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    exec_key = f"{settings.key_prefix}:exec:{message['job_id']}"
    # A claim whose lease ran out: its worker died between claim and outcome.
    client.hset(
        exec_key, mapping={"state": "claimed", "seq": 0, "lease_until": f"{time.time() - 1:.6f}"}
    )
    with capture_logs() as logs:
        assert runner.run(message) == "dead"
    assert simulator.call_count == 0  # never call again blindly
    letter = DeadLetterStore(settings=settings).get(str(message["job_id"]))
    assert letter is not None and letter.reason == "ambiguous"
    assert letter.job["lead"]["first_name"] == "Ann"
    assert logs[-1]["event"] == "lead.dead_lettered" and logs[-1]["reason"] == "ambiguous"
    # The operator checked VICIdial, the lead is not there: replay adds it once.
    assert DeadLetterStore(settings=settings).replay(letter) == "replayed"
    replayed = dict(message, seq=1, replays=1)
    assert runner.run(replayed) == "added"
    assert simulator.count_by_phone() == {"7275551212": 1}
    runner.close()


def test_reset_after_insert_is_ambiguous_and_not_retried(
    redis_url: str, simulator: Simulator
) -> None:
    settings = make_settings(redis_url, simulator, ambiguous="dead_letter")
    runner = JobRunner(settings, get_backend(settings))
    simulator.script_phone("7275551212", ["reset_after"])
    message = _message(settings)
    assert runner.run(message) == "dead"
    assert simulator.count_by_phone() == {"7275551212": 1}  # it was added, answer lost
    status = job_status(str(message["job_id"]), settings=settings)
    assert status is not None and status["reason"] == "ambiguous"
    runner.close()


def test_ambiguous_retry_policy_retries(redis_url: str, simulator: Simulator) -> None:
    settings = make_settings(redis_url, simulator, ambiguous="retry")
    job_runner = JobRunner(settings, get_backend(settings))
    simulator.script_phone("7275551212", ["stall"])
    simulator.set_stall_seconds(2.0)
    message = _message(settings)
    assert job_runner.run(message) == "retrying"
    job_runner.client.close()


def test_invalid_payloads_become_dead_letters(
    settings: Settings, simulator: Simulator, runner: JobRunner
) -> None:
    assert runner.run("not json at all") == "dead"
    assert runner.run({"v": 2, "job_id": "x1"}) == "dead"
    assert (
        runner.run(
            {
                "v": 1,
                "job_id": "x2",
                "lead": {"agent_user": "1000"},
                "dnc_check": True,
                "campaign_dnc_check": True,
            }
        )
        == "dead"
    )
    store = DeadLetterStore(settings=settings)
    assert store.counts() == {"invalid_payload": 3}
    letter = store.get("x2")
    assert letter is not None and "phone_number" in letter.error
    assert simulator.call_count == 0
