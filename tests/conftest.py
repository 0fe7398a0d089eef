"""Shared fixtures: a real Redis server, the VICIdial simulator, real worker processes.

Nothing here is mocked: Redis is a redis-server process on loopback, the
simulator answers real HTTP, and workers are ``celery -A workers worker``
subprocesses started exactly as an operator would. Only fixtures live here; the
helpers they use, and that tests import, are in ``tests/support/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.devtools.redis_server import RedisServer
from dispatcher.simulator import Simulator, SimulatorState
from dispatcher.store.redis_health import reset_redis_availability
from tests.support.faultproxy import FaultProxy
from tests.support.settings import make_settings


@pytest.fixture(autouse=True)
def fresh_redis_availability() -> Iterator[None]:
    """Each test starts outside any episode of Redis unavailable: the tracker is
    process-wide (dispatcher/store/redis_health.py), and one test's fault must not end,
    with a ``redis.available`` line, in the next test's logs."""
    reset_redis_availability()
    yield
    reset_redis_availability()


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
    with Simulator(SimulatorState.demo()) as sim:
        yield sim


@pytest.fixture
def proxy(redis_url: str) -> Iterator[FaultProxy]:
    """A real TCP proxy in front of the test Redis, for lost and late replies."""
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    fault_proxy = FaultProxy(host, int(port)).start()
    yield fault_proxy
    fault_proxy.close()


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
