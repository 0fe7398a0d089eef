"""Shared fixtures: a real Redis server, the VICIdial simulator, real worker processes.

Nothing here is mocked: Redis is a redis-server process on loopback, the
simulator answers real HTTP, and workers are ``celery -A workers worker``
subprocesses started exactly as an operator would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.devtools.redis_server import RedisServer
from dispatcher.store import redis_health
from dispatcher.store.keys import Keys
from tests.faultproxy import FaultProxy

if TYPE_CHECKING:
    from dispatcher.simulator import Simulator

ROOT = Path(__file__).resolve().parents[1]

#: Short timings so that retries, agent waits and pauses fit in a test.
FAST = {
    "retry_base_s": 0.05,
    "retry_cap_s": 0.3,
    "agent_wait_s": 3.0,
    "http_timeout_s": 1.0,
    "visibility_timeout_s": 8.0,
    "scheduler_interval_s": 0.05,
    "breaker_pause_s": 0.3,
    "pause_s": 1.0,
    "reconcile_after_s": 0.3,
    "log_format": "json",
}


@pytest.fixture(autouse=True)
def fresh_redis_availability(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts outside any episode of Redis unavailable: the tracker is
    process-wide (dispatcher/store/redis_health.py), and one test's fault must not end,
    with a ``redis.available`` line, in the next test's logs."""
    monkeypatch.setattr(redis_health, "_availability", redis_health.RedisAvailability())


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    from dispatcher.simulator import Simulator, SimulatorState

    with Simulator(SimulatorState.demo()) as sim:
        yield sim


@pytest.fixture
def proxy(redis_url: str) -> Iterator[FaultProxy]:
    """A real TCP proxy in front of the test Redis, for lost and late replies."""
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    fault_proxy = FaultProxy(host, int(port)).start()
    yield fault_proxy
    fault_proxy.close()


def make_settings(redis_url: str, sim: Simulator | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(FAST)
    values.update(redis_url=redis_url)
    if sim is not None:
        values.update(vicidial_url=sim.url, vicidial_user="6666", vicidial_pass="1234")
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(redis_url: str, simulator: Simulator) -> Settings:
    return make_settings(redis_url, simulator)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(settings: Settings, **kwargs: Any) -> WorkerProcess:
        name = kwargs.pop("name", f"w{len(started) + 1}")
        worker = WorkerProcess(settings, tmp_path / f"{name}.log", name=name, **kwargs)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.kill()


def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def queue_lists(settings: Settings) -> list[str]:
    """Every list jobs wait in: each dialer's lanes (leads for an agent, then for a list),
    and the queue's own (older versions)."""
    keys = Keys.of(settings)
    lanes = [
        named(name, lane)
        for named in (keys.lane, keys.list_lane)
        for name in settings.dialers.names
        for lane in ("realtime", "bulk")
    ]
    return [*lanes, settings.queue]


def queued_envelopes(settings: Settings) -> list[bytes]:
    """Every waiting broker message, lane by lane (each list newest first)."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for name in queue_lists(settings):
            pipe.lrange(name, 0, -1)
        return [item for items in pipe.execute() for item in items]
    finally:
        client.close()


def queue_length(settings: Settings) -> int:
    return len(queued_envelopes(settings))


def steady_rate(times: list[float]) -> float:
    """Calls per second over the middle 80% of ``times`` (sorted).

    The ends are left out: the first calls wait for workers to start, and a call
    delayed on a loaded machine makes the next ones (whose slots were already
    reserved) come at once; both are noise, not the limit's doing.
    """
    cut = len(times) // 10
    middle = times[cut : len(times) - cut]
    return (len(middle) - 1) / (middle[-1] - middle[0])
