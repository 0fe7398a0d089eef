"""A worker survives its Redis refusing or failing commands, and judges time by Redis.

Each fault test runs a real ``celery -A workers worker`` against its own redis-server
(it changes the server's configuration) and the simulator, breaks Redis in the middle
of a run, mends it, and checks that the worker stayed up, said ``redis.unavailable``
once for the episode, and finished every lead exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from dispatcher import enqueue_leads
from dispatcher.localfleet import WorkerProcess, settings_env
from dispatcher.redis_server import RedisServer
from dispatcher.settings import Settings
from dispatcher.simulator import Simulator
from tests.conftest import make_settings, wait_for

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


def _through_a_fault(
    settings: Settings,
    simulator: Simulator,
    start_worker: Callable[..., WorkerProcess],
    *,
    engine: str,
    break_redis: Callable[[], None],
    mend_redis: Callable[[], None],
    fault_s: float = 3.0,
    base: int = 1000,
) -> WorkerProcess:
    """Leads in flight, one retrying, and the consumer idle with acks to write when
    Redis breaks; then Redis is mended and more leads come. Returns the worker."""
    settings = make_settings(
        settings.redis_url, simulator, engine=engine, http_timeout_s=3.0, visibility_timeout_s=15.0
    )
    worker = start_worker(settings, concurrency=8)
    simulator.set_latency(200, max_ms=1500)
    # One lead fails its first calls: it waits in the retry schedule across the fault.
    retrying = _leads(1, base + 500)
    simulator.script_phone(retrying[0]["phone_number"], ["http_503"] * 3)
    first = enqueue_leads(_leads(8, base) + retrying, settings=settings)
    # Some calls end before the fault (acks deferred, the consumer idle), the others
    # while Redis refuses: their outcomes and acks wait.
    wait_for(
        lambda: sum(s == "added" for s in _states(first, settings).values()) >= 2,
        timeout=30,
        message="the first leads added",
    )
    break_redis()
    try:
        time.sleep(fault_s)
        _assert_up(worker)
    finally:
        mend_redis()
    second = enqueue_leads(_leads(12, base + 100), settings=settings)
    _wait_added(first + second, settings, timeout=60)
    _assert_up(worker)
    counts = simulator.count_by_phone()
    assert len(counts) == 21 and max(counts.values()) == 1, counts
    return worker


def _assert_up(worker: WorkerProcess) -> None:
    # A consumer that died says so before the process ends (the engine's warm
    # shutdown waits for the jobs it holds).
    assert worker.alive(), worker.tail(6000)
    assert "Unrecoverable error" not in worker.log_path.read_text(), worker.tail(6000)


def _one_episode(worker: WorkerProcess) -> None:
    # Said once for the whole episode, by whichever path met it first; and its end.
    wait_for(
        lambda: _events(worker, "redis.available"),
        timeout=15,
        message="redis.available",
    )
    down = _events(worker, "redis.unavailable")
    up = _events(worker, "redis.available")
    assert len(down) == 1, down
    assert len(up) == 1, up
    assert "Traceback" not in worker.log_path.read_text()


@pytest.mark.parametrize("engine", ["asyncio", "threads"])
def test_a_full_redis_mid_run_kills_nothing_and_every_lead_is_added_once(
    engine: str,
    own_redis: RedisServer,
    simulator: Simulator,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    client = redis.Redis.from_url(own_redis.url)
    settings = make_settings(own_redis.url, simulator)

    def full() -> None:
        client.config_set("maxmemory", "1")  # noeviction: every write that grows refused

    def freed() -> None:
        client.config_set("maxmemory", "0")

    worker = _through_a_fault(
        settings, simulator, start_worker, engine=engine, break_redis=full, mend_redis=freed
    )
    _one_episode(worker)
    assert _events(worker, "redis.unavailable")[0]["kind"] == "out_of_memory"


# -- an evicting Redis ------------------------------------------------------------------


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.update(settings_env(settings), DISPATCHER_ENV_FILE="/nonexistent")
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_worker_refuses_to_start_on_a_redis_that_evicts(
    own_redis: RedisServer, simulator: Simulator, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(own_redis.url)
    client.config_set("maxmemory-policy", "volatile-lru")  # a managed-Redis default
    settings = make_settings(own_redis.url, simulator)
    worker = WorkerProcess(settings, tmp_path / "refused.log")
    worker.start(wait=False)
    assert worker.process is not None
    try:
        code = worker.process.wait(60)
    finally:
        worker.kill()
    text = worker.tail(20_000)
    assert code != 0, text
    assert "maxmemory-policy" in text and "volatile-lru" in text and "noeviction" in text, text
    assert "Traceback" not in text, text
    # Nothing was consumed or registered.
    assert not client.smembers(f"_dispatcher.inflight.{settings.queue}")


def test_status_and_health_warn_about_a_redis_that_evicts(own_redis: RedisServer) -> None:
    settings = Settings(redis_url=own_redis.url, ambiguous="dead_letter")
    ok = _cli(settings, "status", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["redis"] == {"maxmemory_policy": "noeviction", "warnings": []}
    client = redis.Redis.from_url(own_redis.url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    status = _cli(settings, "status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)["redis"]
    assert data["maxmemory_policy"] == "allkeys-lru"
    assert len(data["warnings"]) == 1 and "noeviction" in data["warnings"][0], data
    plain = _cli(settings, "status")
    assert plain.returncode == 0, plain.stderr
    assert "maxmemory-policy" in plain.stdout and "allkeys-lru" in plain.stdout, plain.stdout
    health = _cli(settings, "health")
    # A warning, not an unhealthy process: the workers already refuse to start.
    assert health.returncode == 0, health.stderr
    assert "warning" in health.stderr and "allkeys-lru" in health.stderr, health.stderr
