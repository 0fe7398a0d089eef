"""The claim fence: a call is never sent once its claim could have lapsed (issue 23, item 2).

A worker frozen between its claim and its request (SIGSTOP, `docker pause`, a VM
pause, a long GC, a blocked loop) past the claim's lease, while another worker takes
the job over, finds the lead absent, calls and adds it: the first one must not add
it again when it thaws. End to end with real worker processes stopped by SIGSTOP,
both send paths (the lead engine and the threaded runner); in-process with a runner
held between claim and call; the fence's decision with a controlled clock.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from structlog.testing import capture_logs

from dispatcher import job_status
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.model.jobs import Job
from dispatcher.ops.producer import prepare_job, push_jobs
from dispatcher.simulator import Simulator
from dispatcher.store.backend import get_backend
from dispatcher.store.execution import FENCE_MARGIN_S, Fence
from dispatcher.store.replies import Claim
from tests.support.faultproxy import FaultProxy
from tests.support.settings import make_settings
from tests.support.waiting import wait_for
from workers.runner import JobRunner
from workers.vicidial import VicidialClient

PHONE = "7275551212"


def _enqueue(settings: Settings, phone: str = PHONE) -> dict[str, Any]:
    job = prepare_job({"agent_user": "1000", "phone_number": phone}, settings=settings)
    push_jobs([job], settings=settings)
    return job.to_message()


# -- the decision -------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_fence_lets_a_call_go_only_if_it_ends_inside_the_lease() -> None:
    clock = Clock()
    fence = Fence(asked_at=clock.now, lease_s=25.0, call_s=10.0 + FENCE_MARGIN_S, clock=clock)
    clock.now += 0.002  # the claim's round trip
    fence.check()
    clock.now += 25.0 - 10.0 - FENCE_MARGIN_S - 0.002 - 0.001  # just in time
    fence.check()
    assert not fence.lapsed
    clock.now += 0.002  # the call could end after the lease: not sent
    with pytest.raises(Exception, match="not sent") as raised:
        fence.check()
    assert type(raised.value).__name__ == "ClaimLapsed"
    assert fence.lapsed


def test_the_fence_counts_from_before_the_claim_was_sent(settings: Settings) -> None:
    """The stamp is taken before the claim leaves (Redis grants it after): a claim whose
    reply comes late counts as old, whatever the reply says."""
    runner = JobRunner(settings, get_backend(settings))
    writes = runner.writes
    try:
        d = writes.delivery(_job(settings), time.monotonic())
        before = writes.fence_clock()
        writes.claim_args(d)
        after = writes.fence_clock()
        assert before <= d.asked_at <= after
        writes.granted(d, Claim("ok", delay_s=0.75))
        assert d.fence is not None
        assert d.fence.lease_s == pytest.approx(writes.lease_s + 0.75)  # the rate-limit slot
        assert d.fence.call_s == pytest.approx(settings.http_timeout_s + FENCE_MARGIN_S)
    finally:
        runner.close()


def _job(settings: Settings) -> Any:
    return Job.from_message(_enqueue(settings), dialers=settings.dialers)


# -- in process: a runner held between its claim and its call -----------------------------


@pytest.fixture
def runners(settings: Settings) -> Iterator[Callable[..., JobRunner]]:
    made: list[JobRunner] = []

    def make(s: Settings | None = None, **options: Any) -> JobRunner:
        runner = JobRunner(s or settings, get_backend(s or settings), **options)
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.close()


def test_a_runner_held_past_its_lease_between_claim_and_call_never_calls(
    redis_url: str, simulator: Simulator, runners: Callable[..., JobRunner]
) -> None:
    settings = make_settings(redis_url, simulator, reconcile_after_s=0.0)
    reached, release = threading.Event(), threading.Event()

    class HeldClient(VicidialClient):
        """Claimed; frozen before the request (the fence is checked as it leaves)."""

        def add_lead(self, *args: Any, **kwargs: Any) -> Any:
            reached.set()
            assert release.wait(30)
            return super().add_lead(*args, **kwargs)

    stalled = runners(settings, client=HeldClient(settings))
    copy = runners(settings)
    stalled.writes.lease_s = 2.0  # the fence allows 2.0 - 1.0 (the call) - 0.5 s between them
    copy.writes.lease_s = 2.0
    message = _enqueue(settings)
    out: list[str] = []
    thread = threading.Thread(target=lambda: out.append(stalled.run(message)), daemon=True)
    thread.start()
    assert reached.wait(10)
    time.sleep(2.2)  # past the lease
    # Another copy takes the job over, finds nothing in VICIdial and calls: lead 1.
    assert copy.run(message) == "reconciling"
    scheduled = _scheduled(settings)
    assert copy.run(scheduled[0]) == "retrying"  # looked up: absent
    assert copy.run(_scheduled(settings)[0]) == "added"
    assert simulator.count_by_phone() == {PHONE: 1}

    with capture_logs() as logs:
        release.set()
        thread.join(15)
    assert out and out[0] in ("stale", "duplicate_suppressed")
    assert simulator.count_by_phone() == {PHONE: 1}
    lapsed = [e for e in logs if e["event"] == "lead.claim_lapsed"]
    assert lapsed and lapsed[0]["sent"] is False


def _scheduled(settings: Settings) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        popped = client.zpopmin(f"{settings.key_prefix}:scheduled", 100)
    finally:
        client.close()
    return [json.loads(base64.b64decode(json.loads(e)["body"]))[0][0] for e, _ in popped]


# -- end to end: a real worker process stopped by SIGSTOP ---------------------------------


@pytest.mark.parametrize("engine", ["asyncio", "threads"])
def test_a_worker_stopped_between_claim_and_call_never_adds_the_lead_again(
    engine: str,
    redis_url: str,
    simulator: Simulator,
    proxy: FaultProxy,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Worker A claims the job and is stopped (SIGSTOP) before its request leaves; past
    A's lease, worker B takes the job over, finds the lead absent and adds it; A is
    continued (SIGCONT). VICIdial must hold one lead.

    A reaches Redis through a proxy that hands it every reply half a second late, so
    that the test sees A's claim in Redis and stops A before A has read the grant.
    """
    settings = make_settings(
        redis_url, simulator, http_timeout_s=0.5, visibility_timeout_s=6.5, reconcile_after_s=0.3
    )
    # A wait for Redis's reply longer than the stop: continued, the stopped worker reads
    # the grant that waited in its socket (a shorter one would drop the connection and
    # claim again, finding the job done: safe too, but the fence would not be reached).
    settings = settings.replace(redis_timeout_s=120.0)
    env = {"DISPATCHER_ENGINE": engine}
    stalled = start_worker(settings.replace(redis_url=proxy.url), name="stalled", extra_env=env)
    assert stalled.process is not None
    pid = stalled.process.pid
    # Warm: its connections are open and its scripts loaded before replies slow down.
    warm = _enqueue(settings, "7275550100")
    wait_for(
        lambda: (job_status(warm["job_id"], settings=settings) or {}).get("state") == "added",
        message="the warm-up lead",
    )
    proxy.delay_replies(0.5)
    message = _enqueue(settings)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    exec_key = f"{settings.key_prefix}:exec:{message['job_id']}"

    def claimed_by_stalled() -> bool:
        worker = client.hget(exec_key, "worker") or ""
        return f":{pid}:" in worker

    wait_for(claimed_by_stalled, timeout=30, interval=0.002, message="the first worker's claim")
    os.kill(pid, signal.SIGSTOP)
    try:
        assert simulator.call_count == 1, "stopped too late: the request had left"
        start_worker(settings, name="copy", extra_env=env)
        wait_for(
            lambda: (
                (job_status(message["job_id"], settings=settings) or {}).get("state") == "added"
            ),
            timeout=60,
            message="the copy to add the lead",
        )
        assert simulator.count_by_phone()[PHONE] == 1
    finally:
        proxy.delay_replies(0.0)
        os.kill(pid, signal.SIGCONT)

    def story() -> list[str]:
        return [str(e.get("event")) for e in stalled.logs() if e.get("job_id") == message["job_id"]]

    # It logged the attempt (its request was about to leave), the fence refused it,
    # and its claim asked again found the job done.
    wait_for(
        lambda: "lead.duplicate_suppressed" in story(),
        timeout=30,
        message="the stopped worker to find its claim lapsed and the job done",
    )
    assert story() == ["lead.attempt", "lead.claim_lapsed", "lead.duplicate_suppressed"]
    assert simulator.count_by_phone() == {"7275550100": 1, PHONE: 1}
    status = job_status(message["job_id"], settings=settings)
    assert status is not None and status["state"] == "added" and not status["duplicate_lead_ids"]
    client.close()
