"""Run worker processes on this machine: for the demo, the tests and the benchmarks.

A :class:`WorkerProcess` is a real ``celery -A workers worker`` subprocess with
the ``DISPATCHER_*`` environment that reproduces a :class:`Settings`, started
exactly as an operator (or docker-compose) would start it. Readiness is the
worker's consumer registering its in-flight list in Redis, at its first poll.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatcher.config.settings import Settings
from dispatcher.store.connection import redis_client
from dispatcher.store.keys import Keys

__all__ = ["WorkerProcess", "process_tree", "settings_env"]

#: The checkout (this file is dispatcher/devtools/localfleet.py): where `workers` and
#: `bench` are imported from.
_ROOT = Path(__file__).resolve().parents[2]


def settings_env(settings: Settings) -> dict[str, str]:
    """The DISPATCHER_* environment that reproduces ``settings`` in a subprocess."""
    env: dict[str, str] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, tuple):
            text = ",".join(value)
        else:
            text = str(value)
        env[f"DISPATCHER_{f.name.upper()}"] = text
    return env


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (Linux /proc): a worker and its pool children."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


@dataclass
class WorkerProcess:
    """A real `celery -A workers worker` subprocess."""

    settings: Settings
    log_path: Path
    #: ``--concurrency``; None: none given (Celery's worker_concurrency decides)
    concurrency: int | None = 4
    #: ``--pool``; None: none given (the app's default pool, threads)
    pool: str | None = "threads"
    name: str = "w1"
    extra_env: Mapping[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    #: Celery's start-up handshake and gossip between workers (off by default, as in
    #: the Dockerfile: a fleet does not need them; the README's plain command has them).
    mingle: bool = False
    process: subprocess.Popen[bytes] | None = None
    #: The Celery app module (`celery -A APP worker`); benchmarks run other apps.
    app: str = "workers"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            self.app,
            "worker",
            "--loglevel",
            "INFO",
            *(("--pool", self.pool) if self.pool is not None else ()),
            *(("--concurrency", str(self.concurrency)) if self.concurrency is not None else ()),
            "--hostname",
            f"{self.name}@%h",
            *(() if self.mingle else ("--without-gossip", "--without-mingle")),
            *self.extra_args,
        ]

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
        env.update(settings_env(self.settings))
        env.update(self.extra_env)
        env.setdefault("DISPATCHER_ENV_FILE", "/nonexistent")
        # The worker must import this checkout's `workers` package.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH")) if p)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(),
            cwd=_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until this process's consumer has polled the queue once (it registers its
        in-flight list then: queues declared, consuming)."""
        client = redis_client(self.settings)
        registry = Keys(queue=self.settings.queue).inflight_registry
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.tail()}")
            # Consumer ids are host.pid.nonce: this process's, not a predecessor's.
            members: set[str] = client.smembers(registry)  # type: ignore[assignment]
            if any(f".{self.process.pid}." in member for member in members):
                return
            time.sleep(0.05)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (Celery's warm shutdown: finish calls in flight), then wait."""
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
        """SIGKILL the whole worker (main process and any pool children), as a crash."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def logs(self) -> list[dict[str, Any]]:
        """The worker's structured log events (JSON lines) so far."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out
