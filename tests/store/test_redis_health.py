"""What a worker asks of its Redis (noeviction: issue 23, item 3) and how it counts
episodes of Redis unavailable (dispatcher/store/redis_health.py): the logic with an injected
clock; the start-up check, ``status`` and ``health`` against real redis-servers; and
the Redis-clock stamp of a message recorded outside the fetch (item 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.transport import redis as kombu_redis
from structlog.testing import capture_logs

from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess, settings_env
from dispatcher.devtools.redis_server import RedisServer
from dispatcher.model.errors import BrokerOutOfMemory, BrokerUnavailable, ConfigError
from dispatcher.model.jobs import broker_envelope
from dispatcher.ops.producer import prepare_job
from dispatcher.ops.status import fleet_status
from dispatcher.simulator import Simulator
from dispatcher.store.backend import get_backend
from dispatcher.store.connection import unavailable_kind
from dispatcher.store.redis_health import (
    RedisAvailability,
    policy_warnings,
    require_noeviction,
)
from tests.support.settings import make_settings
from workers import transport
from workers.celery_app import make_app


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_an_episode_is_logged_once_however_many_commands_fail() -> None:
    clock = _Clock()
    tracker = RedisAvailability(quiet_s=3.0, clock=clock)
    oom = redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    with capture_logs() as logs:
        for path in ("acks", "fetch", "job", "scheduler") * 25:
            assert tracker.failed(oom, during=path)
            clock.now += 0.1
        assert tracker.unavailable
        clock.now += 1.0
        tracker.ok()  # a command that got through while others still fail (1 s ago)
        assert tracker.unavailable
        clock.now += 2.5
        tracker.ok()  # quiet for 3.5 s: over
        assert not tracker.unavailable
        tracker.ok()
        assert tracker.failed(redis.TimeoutError("Timeout reading"), during="scheduler")
        clock.now += 5
        tracker.ok()
    down = _events(logs, "redis.unavailable")
    up = _events(logs, "redis.available")
    assert [(e["kind"], e["during"]) for e in down] == [
        ("out_of_memory", "acks"),
        ("timeout", "scheduler"),
    ]
    assert up[0]["failures"] == 100
    assert up[0]["paths"] == ["acks", "fetch", "job", "scheduler"]
    assert up[0]["after_s"] == pytest.approx(13.5, abs=0.01)
    assert len(up) == 2 and up[1]["paths"] == ["scheduler"]


def test_errors_that_waiting_cannot_mend_are_not_an_episode() -> None:
    tracker = RedisAvailability()
    with capture_logs() as logs:
        assert not tracker.failed(redis.ResponseError("WRONGTYPE Operation"), during="acks")
        assert not tracker.failed(ValueError("a bug"), during="job")
    assert not tracker.unavailable and not logs


def test_threads_failing_at_once_log_one_line() -> None:
    tracker = RedisAvailability()
    start = threading.Barrier(8)

    def fail() -> None:
        start.wait()
        for _ in range(200):
            tracker.failed(redis.ConnectionError("Connection refused"), during="job")

    with capture_logs() as logs:
        threads = [threading.Thread(target=fail) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(_events(logs, "redis.unavailable")) == 1


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (redis.exceptions.OutOfMemoryError("command not allowed"), "out_of_memory"),
        (
            redis.ResponseError("Error running script: @user_script:1: -OOM command not allowed"),
            "out_of_memory",
        ),
        (
            redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
            "read_only",
        ),
        (redis.ResponseError("READONLY You can't write against a read only replica."), "read_only"),
        (
            redis.ResponseError("UNBLOCKED force unblock from blocking operation, instance state"),
            "read_only",
        ),
        (redis.ResponseError("MISCONF Redis is configured to save RDB snapshots"), "misconf"),
        (
            redis.ResponseError(
                "Error running script (call to f_1): @user_script:34: -MISCONF Redis"
            ),
            "misconf",
        ),
        (redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"), "loading"),
        (redis.ResponseError("BUSY Redis is busy running a script."), "busy"),
        (redis.TimeoutError("Timeout reading from 127.0.0.1:6379"), "timeout"),
        (redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379."), "connection"),
        (redis.AuthenticationError("invalid password"), "auth"),
        (BrokerOutOfMemory("Redis at redis://h:6379/0 is out of memory"), "out_of_memory"),
        (BrokerUnavailable("Redis at redis://h:6379/0 is unreachable"), "connection"),
        (redis.ResponseError("WRONGTYPE Operation against a key"), None),
        (redis.ResponseError("ERR Error running script: attempt to compare nil"), None),
    ],
)
def test_which_errors_mean_redis_cannot_serve_now(error: Exception, kind: str | None) -> None:
    assert unavailable_kind(error) == kind


def test_policy_warnings_name_the_setting() -> None:
    assert policy_warnings("noeviction") == []
    (warning,) = policy_warnings("volatile-lru")
    assert "maxmemory-policy" in warning and "volatile-lru" in warning and "noeviction" in warning
    (refused,) = policy_warnings(None, error="NoPermissionError: no permissions to run 'info'")
    assert "cannot check" in refused and "noeviction" in refused


# -- the worker's start-up check against real servers ----------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (not started: each test starts it)."""
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    yield server
    server.close()


def test_the_start_up_check_waits_for_redis_then_refuses_an_evicting_one(
    own_redis: RedisServer,
) -> None:
    settings = Settings(redis_url=own_redis.url, redis_timeout_s=1.0)
    client = redis.Redis.from_url(own_redis.url, socket_timeout=1.0, socket_connect_timeout=1.0)
    naps: list[float] = []

    def nap(seconds: float) -> None:
        # Redis comes up while the worker waits for it, with an evicting policy.
        naps.append(seconds)
        if len(naps) == 2:
            own_redis.start()
            client.config_set("maxmemory-policy", "allkeys-lru")

    with capture_logs() as logs, pytest.raises(ConfigError) as refused:
        require_noeviction(settings, client=client, sleep=nap)
    assert len(naps) == 2
    assert "maxmemory-policy is allkeys-lru" in str(refused.value)
    assert len(_events(logs, "redis.unavailable")) <= 1  # once (the tracker is per process)
    client.config_set("maxmemory-policy", "noeviction")
    assert require_noeviction(settings, client=client, sleep=nap) == "noeviction"
    client.close()


def test_a_redis_that_refuses_info_is_a_warning_not_a_refusal(own_redis: RedisServer) -> None:
    own_redis.start()
    admin = redis.Redis.from_url(own_redis.url)
    # A managed Redis's restricted user: everything but INFO.
    admin.execute_command("ACL", "SETUSER", "app", "on", ">s3cret-pw", "~*", "&*", "+@all", "-info")
    url = own_redis.url.replace("redis://", "redis://app:s3cret-pw@")
    settings = Settings(redis_url=url)
    client = redis.Redis.from_url(url)
    with capture_logs() as logs:
        assert require_noeviction(settings, client=client, sleep=lambda _: None) is None
    (warning,) = _events(logs, "redis.policy_unchecked")
    assert "noeviction" in warning["why"]

    status = fleet_status(get_backend(settings))
    assert status["redis"]["maxmemory_policy"] is None
    assert "cannot check" in status["redis"]["warnings"][0]
    client.close()
    admin.close()


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
    own_redis.start()
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
    own_redis.start()
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


# -- a message recorded outside the fetch ---------------------------------------------


def test_a_message_recorded_outside_the_fetch_is_stamped_with_redis_clock(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu's QoS.append stamps the unacked index with this host's time.time(); the
    transport's records Redis TIME, which the visibility sweep compares with."""
    settings = make_settings(redis_url)
    monkeypatch.setenv("DISPATCHER_REDIS_URL", redis_url)
    monkeypatch.setenv("DISPATCHER_ENV_FILE", "/nonexistent")
    lane = get_backend(settings).keys.lane("default", "realtime")
    job = prepare_job({"agent_user": "1000", "phone_number": "7275551212"}, settings=settings)
    payload = json.loads(broker_envelope(job.to_message(), queue=lane))
    tag = payload["properties"]["delivery_tag"]
    app = make_app(settings)
    real_time = time.time
    client = get_backend(settings).redis
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        assert isinstance(channel, transport.Channel)
        message = channel.Message(payload, channel=channel)
        monkeypatch.setattr(time, "time", lambda: real_time() + 3600.0)
        monkeypatch.setattr(kombu_redis, "time", lambda: real_time() + 3600.0)
        try:
            channel.qos.append(message, tag)
        finally:
            monkeypatch.setattr(time, "time", real_time)
            monkeypatch.setattr(kombu_redis, "time", real_time)
        # (Read before the channel closes: closing hands held messages back.)
        seconds, micros = client.time()
        score = client.zscore("unacked_index", tag)
        assert score is not None and abs(score - (seconds + micros / 1e6)) < 5
        assert client.hexists("unacked", tag)
