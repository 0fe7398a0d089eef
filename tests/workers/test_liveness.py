"""Which worker is alive, and which message is overdue, is judged by Redis's clock
(keys with a TTL, Redis TIME), not by each host's clock.

Real worker processes; a second "host" is a scheduler or a visibility sweep run in
this process, its clock shifted through ``time.time`` (the test seam).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable

import pytest
import redis
from kombu.transport import redis as kombu_redis

from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.model.jobs import broker_envelope
from dispatcher.ops.producer import prepare_job
from dispatcher.store.backend import get_backend
from dispatcher.store.keys import Keys
from tests.support.waiting import wait_for
from workers import transport
from workers.celery_app import make_app
from workers.scheduler import RetryScheduler

pytestmark = pytest.mark.slow


def _registered(settings: Settings, pid: int) -> bool:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        members = client.smembers(Keys.of(settings).inflight_registry)
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
    skewed.reap_every_s = 0.0  # reap on every tick
    for _ in range(3):
        skewed.tick()
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
    assert transport.consumer_id() == first  # one name per process
    # What a new process with the same pid (and hostname) would be named: another name.
    second = transport.make_consumer_id()
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


# -- the visibility sweep --------------------------------------------------------------


def _taken(settings: Settings, *, ago_s: float) -> str:
    """A message taken by a consumer ``ago_s`` seconds ago by Redis's clock, recorded in
    kombu's unacked hash and index by the fetch script (as a worker takes it)."""
    backend = get_backend(settings)
    keys = backend.keys
    lane = keys.lane("default", "realtime")
    job = prepare_job({"agent_user": "1000", "phone_number": "7275551212"}, settings=settings)
    envelope = broker_envelope(job.to_message(), queue=lane)
    tag = str(json.loads(envelope)["properties"]["delivery_tag"])
    client = backend.redis
    client.lpush(lane, envelope)
    command = backend.broker.fetch_command(
        "someone-else",
        ttl=30,
        queue=keys.queue,
        unacked="unacked",
        unacked_index="unacked_index",
        acks=[],
        lanes=[("default", [lane])],
        load=True,
    )
    backend.redis.execute_command(*command)
    taken_at = client.zscore("unacked_index", tag)
    assert taken_at is not None
    seconds, micros = client.time()
    # The fetch wrote Redis's clock; move it back to when this message was "taken".
    assert abs(taken_at - (seconds + micros / 1e6)) < 5
    client.zadd("unacked_index", {tag: taken_at - ago_s})
    return tag


def _sweep(settings: Settings, monkeypatch: pytest.MonkeyPatch, *, skew_s: float) -> None:
    """One visibility sweep by a worker (this process) whose clock is ``skew_s`` off."""
    app = make_app(settings)
    real_time = time.time
    with app.connection_for_write() as connection:
        qos = connection.default_channel.qos
        # The sweeper's clock: every way kombu and this project read the wall clock.
        monkeypatch.setattr(time, "time", lambda: real_time() + skew_s)
        monkeypatch.setattr(kombu_redis, "time", lambda: real_time() + skew_s)
        try:
            qos.restore_visible(num=100, interval=1)
        finally:
            monkeypatch.undo()


def _restored(settings: Settings, tag: str) -> bool:
    client = get_backend(settings).redis
    lane = get_backend(settings).keys.lane("default", "realtime")
    back = any(tag in item for item in client.lrange(lane, 0, -1))
    return back and not client.hexists("unacked", tag)


def test_a_sweeper_whose_clock_runs_ahead_leaves_messages_in_flight_alone(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Taken 2 s ago by Redis's clock, with an 8 s visibility timeout: still in flight.
    tag = _taken(settings, ago_s=2.0)
    _sweep(settings, monkeypatch, skew_s=3600.0)
    assert not _restored(settings, tag), "a live message was put back (a second copy runs)"
    assert get_backend(settings).redis.hexists("unacked", tag)


def test_a_sweeper_whose_clock_runs_behind_still_restores_an_expired_message(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Taken 20 s ago by Redis's clock: past the 8 s visibility timeout, its worker lost.
    tag = _taken(settings, ago_s=20.0)
    _sweep(settings, monkeypatch, skew_s=-3600.0)
    assert _restored(settings, tag), "an expired message waits for the sweeper's clock"
