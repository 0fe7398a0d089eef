"""Which worker is alive is judged by Redis (keys with a TTL), not by each host's clock.

Real worker processes; a second "host" is a scheduler run in this process, its
clock shifted by a minute through ``time.time`` (the test seam).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest
import redis

from dispatcher.localfleet import WorkerProcess
from dispatcher.settings import Settings
from tests.conftest import wait_for
from workers import transport
from workers.scheduler import RetryScheduler

pytestmark = pytest.mark.slow


def _registered(settings: Settings, pid: int) -> bool:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        members = client.smembers(transport.inflight_registry(settings.queue))
    finally:
        client.close()
    return any(f".{pid}." in m or m.endswith(f".{pid}") for m in members)


def test_a_host_whose_clock_runs_a_minute_ahead_never_reaps_a_live_consumer(
    settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = start_worker(settings)
    assert worker.process is not None
    pid = worker.process.pid
    wait_for(lambda: _registered(settings, pid), message="the worker's in-flight list")
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 60.0)
    skewed = RetryScheduler(settings, name="skewed@other-host")
    for _ in range(3):
        skewed.tick()
        skewed._last_reap = 0.0  # reap on every tick
    monkeypatch.undo()
    assert _registered(settings, pid), "a live consumer's in-flight list was reaped"


def test_a_consumer_stalled_past_its_ttl_registers_again_when_it_resumes(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    stalled = start_worker(settings, name="stalled")
    start_worker(settings, name="reaper")
    assert stalled.process is not None
    pid = stalled.process.pid
    wait_for(lambda: _registered(settings, pid), message="the stalled worker's list")
    os.kill(pid, signal.SIGSTOP)  # a stall longer than the liveness TTL (GC, VM pause...)
    try:
        wait_for(
            lambda: not _registered(settings, pid),
            timeout=30,
            message="the live reaper to give the stalled consumer up",
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    # Back to life: its next poll must register its in-flight list again, or a
    # crash after that would lose the message it holds.
    wait_for(lambda: _registered(settings, pid), timeout=10, message="registration again")
    assert stalled.alive()


def test_each_boot_gets_its_own_consumer_id() -> None:
    """Containers with `init: true` all run as pid 1, and may share a hostname."""
    first = transport.consumer_id()
    transport._consumer_id = None  # what a new process with the same pid would see
    second = transport.consumer_id()
    assert first != second
    assert str(os.getpid()) in second


def test_workers_gone_for_good_leave_no_heartbeat_behind(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    gone = start_worker(settings, name="gone")
    gone.kill()
    start_worker(settings, name="stays")
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)

    def traces() -> list[str]:
        found = []
        for key in client.scan_iter(match=f"{settings.key_prefix}:*"):
            kind = client.type(key)
            if kind == "hash":
                text = str(client.hgetall(key))
            elif kind == "set":
                text = str(client.smembers(key))
            elif kind == "string":
                text = str(client.get(key))
            else:
                continue
            if "gone@" in key or "gone@" in text:
                found.append(key)
        return found

    wait_for(lambda: not traces(), timeout=30, message="the dead worker's heartbeat pruned")
    client.close()
