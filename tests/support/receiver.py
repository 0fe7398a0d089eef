"""A real HTTP receiver of outcome notifications, on loopback, and the receiver's check.

A small threaded ``http.server`` that records every POST (headers and body, as bytes)
and answers as told: ``ok`` (200), ``error`` (HTTP 500), ``redirect`` (302 elsewhere),
``hang`` (reads the request, never answers until :meth:`Receiver.release` or close),
``close`` (reads the request, closes the connection without a word), ``slow`` (answers
200 after ``delay_s``). :meth:`Receiver.stop` takes it down (nothing listens on its port
any more: connection refused) and :meth:`Receiver.start` brings it back on the same
port. Answers can be scripted per request (:meth:`Receiver.script`).

:func:`verify` checks a delivery's signature as a receiver would, written from the
README's contract with the standard library only (never the product's function), with
the tests' :data:`SECRET`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["SECRET", "Received", "Receiver", "free_port", "verify"]

#: The notification secret the tests sign with.
SECRET = "whsec-0123456789abcdef-notify"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    answered: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    port: int = field(default_factory=free_port)
    mode: str = "ok"
    delay_s: float = 1.0
    received: list[Received] = field(default_factory=list)
    _script: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _released: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/dispatcher"

    def script(self, *modes: str) -> None:
        """The next requests are answered so, one each (then ``mode`` again)."""
        with self._lock:
            self._script.extend(modes)

    def _next_mode(self) -> str:
        with self._lock:
            return self._script.pop(0) if self._script else self.mode

    def release(self) -> None:
        self._released.set()

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                mode = receiver._next_mode()
                with receiver._lock:
                    receiver.received.append(
                        Received(self.path, dict(self.headers.items()), body, time.time(), mode)
                    )
                if mode == "hang":
                    receiver._released.wait(60)
                    self.close_connection = True
                    return
                if mode == "close":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if mode == "slow":
                    time.sleep(receiver.delay_s)
                status = {"error": 500, "redirect": 302}.get(mode, 200)
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._released.clear()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Nothing listens on the port any more (connection refused)."""
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self, predicate: Callable[[Received], bool] | None = None) -> list[Any]:
        """The bodies received (answered 2xx or not), parsed."""
        with self._lock:
            items = list(self.received)
        return [r.json() for r in items if predicate is None or predicate(r)]

    def delivered(self) -> list[Any]:
        """Bodies of the requests answered 2xx."""
        return self.events(lambda r: r.answered in ("ok", "slow"))

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def verify(received: Received, secret: str = SECRET, *, tolerance_s: int = 300) -> bool:
    """The receiver's check, written from the README's contract with the stdlib only."""
    header = received.headers["Dispatcher-Signature"]
    parts = dict(item.split("=", 1) for item in header.split(","))
    t = int(parts["t"])
    if abs(time.time() - t) > tolerance_s:
        return False
    expected = hmac.new(
        secret.encode(), f"{t}.".encode() + received.body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])
