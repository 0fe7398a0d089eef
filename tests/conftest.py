"""Shared fixtures: a real Redis server, the VICIdial simulator, real worker processes.

Nothing here is mocked: Redis is a redis-server process on loopback, the
simulator answers real HTTP, and workers are ``celery -A workers worker``
subprocesses started exactly as an operator would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from dispatcher.redis_server import RedisServer
from dispatcher.settings import Settings

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
    "log_format": "json",
}


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


def settings_env(settings: Settings) -> dict[str, str]:
    """The DISPATCHER_* environment that reproduces ``settings`` in a subprocess."""
    env: dict[str, str] = {}
    for name in settings.__dataclass_fields__:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, tuple):
            text = ",".join(value)
        else:
            text = str(value)
        env[f"DISPATCHER_{name.upper()}"] = text
    return env


@dataclass
class WorkerProcess:
    """A real `celery -A workers worker` subprocess."""

    settings: Settings
    log_path: Path
    concurrency: int = 4
    pool: str = "threads"
    name: str = "w1"
    extra_env: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
        env.update(settings_env(self.settings))
        env.update(self.extra_env)
        env["DISPATCHER_ENV_FILE"] = "/nonexistent"
        cmd = [
            sys.executable, "-m", "celery", "-A", "workers", "worker",
            "--loglevel", "INFO",
            "--pool", self.pool,
            "--concurrency", str(self.concurrency),
            "--hostname", f"{self.name}@%h",
            "--without-gossip", "--without-mingle",
        ]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        client = redis.Redis.from_url(self.settings.redis_url, decode_responses=True)
        key = f"{self.settings.key_prefix}:workers"
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"worker exited:\n{self.log_path.read_text()[-3000:]}")
                beats = client.hgetall(key)
                if any(name.startswith(f"{self.name}@") and float(ts) > time.time() - 2
                       for name, ts in beats.items()):
                    return
                time.sleep(0.05)
        finally:
            client.close()
        raise TimeoutError(f"worker not ready:\n{self.log_path.read_text()[-3000:]}")

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def logs(self) -> list[dict[str, Any]]:
        import json

        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out


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
        worker.kill() if worker.process and worker.process.poll() is None else None


def wait_for(predicate: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.05,
             message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
