"""A worker survives its Redis refusing or failing commands (issue 23, item 4).

Five faults, each on a real redis-server of the test's own: full (``maxmemory``
reached under ``noeviction``: OOM), read-only (``REPLICAOF`` a dead master), MISCONF
(a snapshot that cannot be written), stalled (``SIGSTOP``: nothing answers) and
dropped (every connection cut and refused, ``tests/support/faultproxy.py``).

* End to end: a real ``celery -A workers worker`` (both engines for OOM) and the
  simulator; Redis breaks in the middle of a run (calls in flight, acks deferred, a
  lead in the retry schedule), is mended, and the worker must have stayed up, said
  ``redis.unavailable`` once and ``redis.available`` once for the episode, written
  its heartbeat again, and added every lead exactly once.
* In-process: each of the consumer's own writes (deferred acks, a hand-back, the
  visibility sweep) called as Celery's loop calls it, under each fault: it must not
  raise (that ended the worker), and must be written once Redis serves again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
import redis
from structlog.testing import capture_logs

from dispatcher import enqueue_leads
from dispatcher.config.settings import Settings, get_settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.devtools.redis_server import RedisServer
from dispatcher.model.jobs import broker_envelope
from dispatcher.ops.producer import prepare_job
from dispatcher.simulator import Simulator
from dispatcher.store.backend import get_backend
from dispatcher.store.redis_health import RedisAvailability, reset_redis_availability
from tests.support.faultproxy import FaultProxy
from tests.support.settings import make_settings
from tests.support.waiting import wait_for
from workers.celery_app import make_app

pytestmark = pytest.mark.slow


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.close()


def _states(ids: list[str], settings: Settings) -> dict[str, str]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(f"{settings.key_prefix}:job:{job_id}", "state")
        return dict(zip(ids, pipe.execute(), strict=True))
    finally:
        client.close()


def _wait_added(ids: list[str], settings: Settings, *, timeout: float) -> None:
    def done() -> bool:
        return all(s == "added" for s in _states(ids, settings).values())

    try:
        wait_for(done, timeout=timeout, interval=0.1, message="every lead added")
    except AssertionError:
        left = {k: v for k, v in _states(ids, settings).items() if v != "added"}
        raise AssertionError(f"{len(left)} not added: {list(left.items())[:5]}") from None


def _events(worker: WorkerProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in worker.logs() if e.get("event") == name]


def _leads(n: int, base: int) -> list[dict[str, Any]]:
    return [{"agent_user": "1000", "phone_number": f"727{base + i:07d}"} for i in range(n)]


class Fault:
    """One way a real redis-server stops serving a worker, started and ended by the test."""

    #: the ``kind`` of ``redis.unavailable`` it causes
    kind = ""
    #: the URL clients use (a fault proxy's, for a dropped connection)
    url = ""

    def __init__(self, server: RedisServer, tmp: Path) -> None:
        self.server = server
        self.url = server.url
        self.client = redis.Redis.from_url(server.url)
        self.tmp = tmp

    def start(self) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.client.close()


class Full(Fault):
    kind = "out_of_memory"

    def start(self) -> None:
        self.client.config_set("maxmemory", "1")  # noeviction: writes refused (OOM)

    def end(self) -> None:
        self.client.config_set("maxmemory", "0")


class ReadOnly(Fault):
    """The server becomes a replica (of nothing that answers): writes refused."""

    kind = "read_only"

    def start(self) -> None:
        self.client.execute_command("REPLICAOF", "127.0.0.1", "1")

    def end(self) -> None:
        self.client.execute_command("REPLICAOF", "NO", "ONE")


class Misconf(Fault):
    """A snapshot that cannot be written (its directory is gone): writes refused."""

    kind = "misconf"

    def start(self) -> None:
        gone = self.tmp / "gone"
        gone.mkdir(exist_ok=True)
        self.client.config_set("dir", str(gone))
        self.client.config_set("save", "3600 1")
        self.client.config_set("stop-writes-on-bgsave-error", "yes")
        gone.rmdir()
        self.client.bgsave()

        def refused() -> bool:
            try:
                self.client.set("misconf-probe", "1")
            except redis.ResponseError as exc:
                return str(exc).startswith("MISCONF")
            return False

        wait_for(refused, timeout=10, message="MISCONF")

    def end(self) -> None:
        self.client.config_set("stop-writes-on-bgsave-error", "no")
        self.client.config_set("save", "")
        self.client.config_set("dir", str(self.server.directory))


class Stalled(Fault):
    """The redis-server process stopped (SIGSTOP): connections open, nothing answers.
    Clients need a short DISPATCHER_REDIS_TIMEOUT_S to see it within the test."""

    kind = "timeout"

    def start(self) -> None:
        assert self.server.process is not None
        os.kill(self.server.process.pid, signal.SIGSTOP)

    def end(self) -> None:
        assert self.server.process is not None
        os.kill(self.server.process.pid, signal.SIGCONT)

    def close(self) -> None:
        self.end()
        super().close()


class Dropped(Fault):
    """Every connection cut, and new ones refused while it lasts
    (tests/support/faultproxy.py)."""

    kind = "connection"

    def __init__(self, server: RedisServer, tmp: Path) -> None:
        super().__init__(server, tmp)
        host, port = server.url.split("//")[1].split("/")[0].split(":")
        self.proxy = FaultProxy(host, int(port)).start()
        self.url = self.proxy.url

    def start(self) -> None:
        self.proxy.refuse(3600)

    def end(self) -> None:
        self.proxy.refuse(0)

    def close(self) -> None:
        self.proxy.close()
        super().close()


FAULTS: dict[str, type[Fault]] = {
    "full": Full,
    "read_only": ReadOnly,
    "misconf": Misconf,
    "stalled": Stalled,
    "dropped": Dropped,
}


@pytest.fixture
def fault_of(own_redis: RedisServer, tmp_path: Path) -> Iterator[Callable[[str], Fault]]:
    made: list[Fault] = []

    def make(name: str) -> Fault:
        fault = FAULTS[name](own_redis, tmp_path)
        made.append(fault)
        return fault

    yield make
    for fault in made:
        fault.close()


def _through_a_fault(
    fault: Fault,
    simulator: Simulator,
    start_worker: Callable[..., WorkerProcess],
    *,
    engine: str,
    fault_s: float = 3.0,
    **overrides: Any,
) -> WorkerProcess:
    """Leads in flight, one waiting in the retry schedule, and acks deferred when Redis
    stops serving; then Redis serves again and more leads come. Returns the worker
    (checked alive, its heartbeat back, every lead added exactly once)."""
    settings = make_settings(
        fault.url,
        simulator,
        engine=engine,
        http_timeout_s=3.0,
        visibility_timeout_s=15.0,
        agent_wait_s=120.0,
        **overrides,
    )
    worker = start_worker(settings, concurrency=8)
    simulator.set_latency(200, max_ms=1500)
    # One lead's agent is not logged in: it retries (waits in the retry schedule)
    # across the fault, and is added once the agent logs in after it.
    retrying = [{"agent_user": "2000", "phone_number": "7270001500"}]
    first = enqueue_leads(_leads(8, 1000) + retrying, settings=settings)
    # Some calls end before the fault (acks deferred, the consumer idle), the others
    # while Redis is away: their outcomes and acks wait.
    wait_for(
        lambda: sum(s == "added" for s in _states(first, settings).values()) >= 2,
        timeout=30,
        message="the first leads added",
    )
    fault.start()
    try:
        time.sleep(fault_s)
        _assert_up(worker)
    finally:
        fault.end()
    simulator.login("2000", "TESTCAMP")
    second = enqueue_leads(_leads(12, 1100), settings=settings)
    _wait_added(first + second, settings, timeout=60)
    _assert_up(worker)
    # Liveness carries on: the heartbeat is written again (it may have expired).
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    beats = client.keys(f"{settings.key_prefix}:worker:w1@*")
    client.close()
    assert beats, "no heartbeat after the fault"
    counts = simulator.count_by_phone()
    assert len(counts) == 21 and max(counts.values()) == 1, counts
    return worker


def _assert_up(worker: WorkerProcess) -> None:
    # A consumer that died says so before the process ends (the engine's warm
    # shutdown waits for the jobs it holds).
    assert worker.alive(), worker.tail(6000)
    assert "Unrecoverable error" not in worker.log_path.read_text(), worker.tail(6000)


def _one_episode(worker: WorkerProcess, fault: Fault) -> list[str]:
    """Said once for the whole episode, by whichever path met it first, and its end
    once; returns the paths that met it."""
    wait_for(lambda: _events(worker, "redis.available"), timeout=15, message="redis.available")
    down = _events(worker, "redis.unavailable")
    up = _events(worker, "redis.available")
    assert len(down) == 1, down
    assert len(up) == 1, up
    assert down[0]["kind"] == fault.kind, down
    paths: list[str] = up[0]["paths"]
    print(f"{fault.kind}: {up[0]['failures']} failed commands on {paths}")
    return paths


@pytest.mark.parametrize("engine", ["asyncio", "threads"])
def test_a_full_redis_mid_run_kills_nothing_and_every_lead_is_added_once(
    engine: str,
    fault_of: Callable[[str], Fault],
    simulator: Simulator,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    fault = fault_of("full")
    worker = _through_a_fault(fault, simulator, start_worker, engine=engine)
    paths = _one_episode(worker, fault)
    # The heartbeat (the scheduler's first command) and the jobs whose calls ended
    # during the fault meet it every time; the consumer's polls and acks when it had
    # free slots or acks pending (timing; the in-process test above covers those).
    assert {"scheduler", "job"} <= set(paths), paths
    assert "Traceback" not in worker.log_path.read_text()


@pytest.mark.parametrize(
    ("name", "engine"),
    [
        ("read_only", "asyncio"),
        ("misconf", "threads"),
        ("stalled", "threads"),
        ("dropped", "asyncio"),
    ],
)
def test_a_read_only_refusing_stalled_or_dropped_redis_kills_nothing(
    name: str,
    engine: str,
    fault_of: Callable[[str], Fault],
    simulator: Simulator,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    fault = fault_of(name)
    # A stall shows as timeouts only past DISPATCHER_REDIS_TIMEOUT_S: short here (and
    # a poll is dropped as stale once its reply is that late past its own 1 s).
    worker = _through_a_fault(
        fault,
        simulator,
        start_worker,
        engine=engine,
        redis_timeout_s=1.0,
        fault_s=5.0 if name == "stalled" else 3.0,
    )
    paths = _one_episode(worker, fault)
    # The heartbeat (the scheduler's first command) and the jobs whose calls ended
    # during the fault meet it every time; the consumer's polls and acks when it
    # had free slots or acks pending (timing: the in-process test above covers
    # those for each fault). A stalled poll is no error: kombu drops it as stale once
    # overdue (1 s + DISPATCHER_REDIS_TIMEOUT_S) and polls again; a dropped one makes
    # Celery reconnect.
    assert {"scheduler", "job"} <= set(paths), paths


# -- the consumer's own writes, in-process -------------------------------------------


def _taken(settings: Settings, n: int) -> list[str]:
    """``n`` messages taken by a consumer (the fetch script records them as unacked)."""
    backend = get_backend(settings)
    keys = backend.keys
    lane = keys.lane("default", "realtime")
    tags = []
    for i in range(n):
        job = prepare_job(
            {"agent_user": "1000", "phone_number": f"72755512{i:02d}"}, settings=settings
        )
        envelope = broker_envelope(job.to_message(), queue=lane)
        tags.append(str(json.loads(envelope)["properties"]["delivery_tag"]))
        backend.redis.lpush(lane, envelope)
    command = backend.broker.fetch_command(
        "c1",
        ttl=30,
        queue=keys.queue,
        unacked="unacked",
        unacked_index="unacked_index",
        acks=[],
        lanes=[("default", [lane])],
        most=n,
        load=True,
    )
    backend.redis.execute_command(*command)
    assert all(backend.redis.hexists("unacked", tag) for tag in tags)
    return tags


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_acks_hand_backs_and_sweeps_wait_for_redis_instead_of_raising(
    name: str, fault_of: Callable[[str], Fault]
) -> None:
    """The consumer's own Redis writes, each called as Celery's loop calls it: a
    refused or failed write must never raise into that loop (it ended the worker
    with "Unrecoverable error"), and must be written once Redis serves again."""
    fault = fault_of(name)
    settings = make_settings(fault.url, redis_timeout_s=0.5)
    reset_redis_availability(RedisAvailability(quiet_s=0.0))
    acked, handed_back = _taken(settings, 2)
    app = make_app(settings)
    with app.connection_for_write() as connection, capture_logs() as logs:
        qos = connection.default_channel.qos
        fault.start()
        try:
            qos.ack(acked)  # a job's outcome stored: its ack is deferred
            qos.reject(handed_back, requeue=True)  # a job whose Redis failed goes back
            assert qos.flush_acks() is False  # refused: kept for the next poll
            qos.restore_visible(num=10, interval=1)  # the sweep's timer
        finally:
            fault.end()
        assert qos.flush_acks() is True
    client = redis.Redis.from_url(fault.server.url, decode_responses=True)
    lane = get_backend(settings).keys.lane("default", "realtime")
    assert not client.hexists("unacked", acked) and client.zscore("unacked_index", acked) is None
    assert not client.hexists("unacked", handed_back)
    assert [handed_back] == [
        json.loads(m)["properties"]["delivery_tag"] for m in client.lrange(lane, 0, -1)
    ]
    down = [e for e in logs if e["event"] == "redis.unavailable"]
    assert len(down) == 1 and down[0]["kind"] == fault.kind, down
    client.close()


def test_a_poll_refused_before_it_leaves_waits_instead_of_raising(
    own_redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py pings a connection idle past its health-check interval before the next
    command, and Redis answers that PING with MISCONF while it cannot persist: the
    consumer's poll then failed as it was sent, inside Celery's loop ("Unrecoverable
    error: ResponseError", seen in the MISCONF run above). Driven here through kombu's
    own polling loop (``drain_events``), with the interval passed."""
    settings = make_settings(own_redis.url, redis_timeout_s=1.0)
    # The channel reads the process settings (its lanes, its scripts).
    monkeypatch.setenv("DISPATCHER_REDIS_URL", own_redis.url)
    monkeypatch.setenv("DISPATCHER_ENV_FILE", "/nonexistent")
    get_settings.cache_clear()
    reset_redis_availability(RedisAvailability(quiet_s=0.0))
    fault = Misconf(own_redis, tmp_path)
    app = make_app(settings)
    try:
        with app.connection_for_write() as connection, capture_logs() as logs:
            channel = connection.default_channel
            channel.basic_consume(
                settings.queue, no_ack=False, callback=lambda *_: None, consumer_tag="t"
            )

            def drain(times: int) -> None:
                for _ in range(times):
                    with contextlib.suppress(TimeoutError, Empty):
                        connection.drain_events(timeout=0.3)

            drain(4)  # polls and waits, Redis healthy
            fault.start()
            try:
                # A poll refused (MISCONF): the consumer backs off, its connection
                # idle past the health-check interval; the next poll pings first.
                drain(4)
                time.sleep(1.2)
                drain(4)  # must not raise MISCONF
            finally:
                fault.end()
            drain(4)
        down = [e for e in logs if e["event"] == "redis.unavailable"]
        assert len(down) == 1 and down[0]["kind"] == "misconf", down
        up = [e for e in logs if e["event"] == "redis.available"]
        assert len(up) == 1 and "fetch" in up[0]["paths"], up
    finally:
        fault.close()
        get_settings.cache_clear()
