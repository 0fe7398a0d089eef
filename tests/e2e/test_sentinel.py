"""Redis Sentinel: producers, the CLI and a real worker find the primary through Sentinel."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from dispatcher import enqueue_lead, job_status
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess, settings_env
from dispatcher.devtools.redis_server import RedisServer, find_redis_server, free_port
from dispatcher.model.errors import ConfigError
from dispatcher.simulator import Simulator
from tests.support.engine import Harness, engine_connections, enqueue_message, job_state
from tests.support.settings import make_settings
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def sentinel_url(tmp_path: Path) -> Iterator[str]:
    primary = RedisServer(tmp_path / "primary")
    (tmp_path / "primary").mkdir()
    primary.start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor leads 127.0.0.1 {primary.port} 1\n"
        "sentinel down-after-milliseconds leads 2000\n"
    )
    process = subprocess.Popen(
        [find_redis_server(), str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        probe = redis.Redis(port=port, socket_connect_timeout=0.5)
        wait_for(lambda: _answers(probe), timeout=10, message="sentinel up")
        yield f"sentinel://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)
        primary.close()


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.execute_command("SENTINEL", "get-master-addr-by-name", "leads"))
    except redis.RedisError:
        return False


def test_a_worker_adds_a_lead_through_sentinel(
    sentinel_url: str, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = make_settings(sentinel_url, simulator, redis_sentinel_master="leads")
    start_worker(settings)
    job_id = enqueue_lead(agent_user="1000", phone_number="7275551212", settings=settings)
    wait_for(
        lambda: (job_status(job_id, settings=settings) or {}).get("state") == "added",
        message="the lead added through Sentinel",
    )
    assert simulator.count_by_phone() == {"7275551212": 1}
    env = {**settings_env(settings), "DISPATCHER_ENV_FILE": "/nonexistent", "PATH": "/usr/bin"}
    started = time.monotonic()
    health = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "health", "--worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert health.returncode == 0, health.stderr
    assert time.monotonic() - started < 30


def test_sentinel_url_needs_the_master_name() -> None:
    with pytest.raises(ConfigError) as info:
        Settings(redis_url="sentinel://127.0.0.1:26379/0")
    assert "DISPATCHER_REDIS_SENTINEL_MASTER" in str(info.value)
    s = Settings(
        redis_url="sentinel://:pw1@h1:26379;sentinel://:pw2@h2:26379/0",
        redis_sentinel_master="leads",
    )
    assert "pw1" not in repr(s) and "pw2" not in repr(s)
    assert {"pw1", "pw2"} <= set(s.secrets)


def test_a_done_record_waits_for_a_replica_before_the_message_is_acknowledged(
    tmp_path: Path, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    """After a failover only what reached a replica survives: `done` must be there."""
    primary = RedisServer(tmp_path / "primary")
    replica = RedisServer(tmp_path / "replica")
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    primary.start()
    replica.start()
    try:
        admin = redis.Redis.from_url(primary.url)
        redis.Redis.from_url(replica.url).execute_command(
            "REPLICAOF", "127.0.0.1", str(primary.port)
        )
        wait_for(
            lambda: admin.info("replication")["connected_slaves"] == 1,
            message="the replica attached",
        )
        settings = make_settings(primary.url, simulator)
        start_worker(settings)
        admin.config_resetstat()
        job_id = enqueue_lead(agent_user="1000", phone_number="7275551212", settings=settings)
        wait_for(lambda: (job_status(job_id, settings=settings) or {}).get("state") == "added")
        assert int(admin.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)) >= 1
        exec_key = f"{settings.key_prefix}:exec:{job_id}"
        assert redis.Redis.from_url(replica.url).hget(exec_key, "state") == b"done"
    finally:
        replica.close()
        primary.close()


def test_the_lead_engine_finds_the_primary_through_sentinel_on_its_loop(
    sentinel_url: str, simulator: Simulator
) -> None:
    """The engine's claims and success writes go through Sentinel on the loop's own
    redis.asyncio connections (no thread in between)."""
    settings = make_settings(sentinel_url, simulator, redis_sentinel_master="leads")
    h = Harness(settings, capacity=8)
    try:
        h.submit(enqueue_message(settings, "7275550100"))
        h.wait(1)
        handoffs = h.engine.handoffs
        messages = [enqueue_message(settings, f"72755{i:05d}") for i in range(1, 4)]
        for message in messages:
            h.submit(message)
        h.wait(4)
        assert h.kinds() == ["ack"] * 4
        assert all(job_state(settings, m) == "added" for m in messages)
        assert h.engine.handoffs == handoffs
        sentinel = redis.Redis(port=int(sentinel_url.rsplit(":", 1)[1].split("/")[0]))
        host, port = sentinel.execute_command("SENTINEL", "get-master-addr-by-name", "leads")
        assert engine_connections(f"redis://{host.decode()}:{int(port)}/0")
    finally:
        h.close()
