"""Redis at its limits: millions of keys, a full memory, a read-only server.

Each test runs its own redis-server (it changes the server's configuration).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from dispatcher import BrokerUnavailable, enqueue_lead, job_status
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess, settings_env
from dispatcher.devtools.redis_server import RedisServer
from dispatcher.intake.metrics import read_snapshot, render_metrics
from dispatcher.model.errors import BrokerOutOfMemory, BrokerReadOnly, BrokerWriteRefused
from dispatcher.ops.dlq import replay_letters
from dispatcher.ops.status import fleet_status
from dispatcher.simulator import Simulator
from dispatcher.store.backend import get_backend
from dispatcher.store.connection import broker_errors
from dispatcher.store.deadletter import DeadLetterStore
from tests.support.cli import record_letter
from tests.support.intake import start_intake
from tests.support.settings import make_settings
from tests.support.waiting import wait_for


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    server.start()
    yield server
    server.close()


def _commandstats(client: redis.Redis) -> dict[str, int]:
    info = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}


_FILL = """
for i = 1, tonumber(ARGV[2]) do
  redis.call('SET', ARGV[1] .. i, 'x')
end
return 1
"""


def test_status_and_metrics_cost_a_fixed_number_of_commands_at_a_million_keys(
    own_redis: RedisServer,
) -> None:
    settings = Settings(redis_url=own_redis.url)
    client = redis.Redis.from_url(own_redis.url)
    fill = client.register_script(_FILL)
    for batch in range(10):  # 1M job-like keys under the prefix: a week of traffic
        fill(args=[f"dispatcher:job:old{batch}-", 100_000])
    assert client.dbsize() >= 1_000_000
    backend = get_backend(settings)
    fleet_status(backend)
    read_snapshot(backend)  # warm: scripts loaded, connections made
    client.config_resetstat()
    fleet_status(backend)
    status_calls = _commandstats(client)
    client.config_resetstat()
    read_snapshot(backend)
    metrics_calls = _commandstats(client)
    for calls in (status_calls, metrics_calls):
        assert "scan" not in calls and "keys" not in calls, calls
        # A fixed number whatever the keyspace holds: 45 (and the CONFIG RESETSTAT) in
        # this release with one dialer: lanes (LLEN and LINDEX of its two lanes of agent
        # jobs, two of list jobs, and the queue's own list), retries, stats, one ZCARD per
        # dead-letter reason (23), workers, pauses, look-ups, the notifications' backlog
        # (3), INFO memory.
        assert sum(calls.values()) <= 48, calls
    print(f"commands per status call at 1M keys: {sum(status_calls.values())} {status_calls}")
    print(f"commands per /metrics scrape at 1M keys: {sum(metrics_calls.values())}")


def test_a_full_redis_is_a_clear_error_for_producers_and_workers_survive_it(
    own_redis: RedisServer,
    simulator: Simulator,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    settings = make_settings(own_redis.url, simulator)
    worker = start_worker(settings)
    client = redis.Redis.from_url(own_redis.url)
    client.config_set("maxmemory", "1")  # full: every write refused (noeviction)
    try:
        with pytest.raises(BrokerOutOfMemory) as caught:
            enqueue_lead(agent_user="1000", phone_number="7275551212", settings=settings)
        assert isinstance(caught.value, BrokerUnavailable)
        assert "memory" in str(caught.value)
        env = {**_base_env(), **settings_env(settings), "DISPATCHER_ENV_FILE": "/nonexistent"}
        command = [sys.executable, "-m", "dispatcher.cli", "enqueue", "--agent-user", "1000"]
        result = subprocess.run(
            [*command, "--phone", "7275551212"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1, result.stderr
        assert "memory" in result.stderr and "Traceback" not in result.stderr
        snapshot = read_snapshot(get_backend(settings))
        text = render_metrics(snapshot).decode()
        assert "dispatcher_redis_memory_used_bytes" in text
        assert "dispatcher_redis_memory_max_bytes" in text
        time.sleep(3.0)  # several polls of the consumer under OOM
        assert worker.alive(), worker.tail()
    finally:
        client.config_set("maxmemory", "0")
    job_id = enqueue_lead(agent_user="1000", phone_number="7275551212", settings=settings)
    wait_for(
        lambda: (job_status(job_id, settings=settings) or {}).get("state") == "added",
        timeout=20,
        message="the worker to resume once memory is free",
    )
    assert worker.alive()


def test_intake_answers_503_naming_a_full_redis(own_redis: RedisServer) -> None:
    settings = Settings(redis_url=own_redis.url, intake_tokens=("t0k3n-abcdef",))
    client = redis.Redis.from_url(own_redis.url)
    client.config_set("maxmemory", "1")
    intake = start_intake(settings)
    try:
        reply = httpx.post(
            f"{intake.url}/v1/leads",
            json={"agent_user": "1000", "phone_number": "7275551212"},
            headers={"Authorization": "Bearer t0k3n-abcdef"},
            timeout=10,
        )
    finally:
        intake.stop()
    assert reply.status_code == 503
    assert "memory" in reply.json()["error"]


def test_a_read_only_redis_is_a_clear_error(own_redis: RedisServer) -> None:
    settings = Settings(redis_url=own_redis.url)
    client = redis.Redis.from_url(own_redis.url)
    client.execute_command("REPLICAOF", "127.0.0.1", "1")  # a replica now: writes refused
    try:
        with pytest.raises(BrokerReadOnly) as caught:
            enqueue_lead(agent_user="1000", phone_number="7275551212", settings=settings)
        assert "read-only" in str(caught.value)
    finally:
        client.execute_command("REPLICAOF", "NO", "ONE")


def test_redis_write_refusals_map_to_broker_errors() -> None:
    settings = Settings()
    cases = {
        "OOM command not allowed when used memory > 'maxmemory'.": BrokerOutOfMemory,
        "READONLY You can't write against a read only replica.": BrokerReadOnly,
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to "
        "persist to disk.": BrokerWriteRefused,
    }
    for text, kind in cases.items():
        with pytest.raises(kind), broker_errors(settings):
            raise redis.ResponseError(text)
    with pytest.raises(redis.ResponseError), broker_errors(settings):
        raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}


def test_a_replay_batch_refused_by_a_read_only_redis_is_a_clear_error_and_changes_nothing(
    own_redis: RedisServer,
) -> None:
    settings = Settings(redis_url=own_redis.url)
    store = DeadLetterStore(settings=settings)
    made = [record_letter(store, settings, phone=f"72755530{i:02d}") for i in range(3)]
    client = redis.Redis.from_url(own_redis.url)
    client.execute_command("REPLICAOF", "127.0.0.1", "1")  # a replica now: writes refused
    try:
        with pytest.raises(BrokerReadOnly):
            replay_letters(store, made)
    finally:
        client.execute_command("REPLICAOF", "NO", "ONE")
    assert all(store.get(letter.id) is not None for letter in made)
    assert replay_letters(store, made)["replayed"] == 3
    assert len(store) == 0
