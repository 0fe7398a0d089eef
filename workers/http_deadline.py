"""An httpx transport whose calls have an overall deadline, not only per-read timeouts.

httpx's timeouts bound each socket operation: an answer that trickles in one byte
at a time (a slow proxy, a stuck PHP script flushing) never trips the read
timeout and can last for minutes, longer than the worker's claim on the job, so
that another worker takes the job over while the first is still talking to
VICIdial. Here every socket operation of a call is bounded by what is left of
the call's deadline (set with :func:`deadline` around the request), so the whole
call ends within it: connect, send, headers and body alike. Past the deadline,
the operation raises httpcore's own timeout (ConnectTimeout before anything was
sent, WriteTimeout or ReadTimeout after), which httpx maps as usual.

The same place holds the claim fence's check (:func:`deadline`'s ``before_send``):
httpcore writes a request in pieces that :class:`_Stream` holds and sends as one
write at the first read, so that write is the one moment the request leaves, and
the check runs right before it (after a wait for a pooled connection or a connect,
which a stopped worker may have spent frozen). A check that raises sends nothing.

httpx has no public hook for httpcore's network backend, so
:class:`DeadlineTransport` builds its own connection pool with one (httpcore's
public ``network_backend`` argument) in place of the one ``HTTPTransport`` made;
everything else (request mapping, exception mapping) is HTTPTransport's own.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
import typing
from collections.abc import Callable, Iterable, Iterator

import httpcore
import httpx

__all__ = ["DeadlineTransport", "deadline", "deadline_pool"]

_local = threading.local()


@contextlib.contextmanager
def deadline(seconds: float, *, before_send: Callable[[], None] | None = None) -> Iterator[None]:
    """Every socket operation in this thread ends within ``seconds`` from now.

    ``before_send``: called right before the request's bytes are written (once); if
    it raises, nothing is written and the exception propagates.
    """
    previous = getattr(_local, "end", None), getattr(_local, "before_send", None)
    _local.end = time.monotonic() + seconds
    _local.before_send = before_send
    try:
        yield
    finally:
        _local.end, _local.before_send = previous


def _bounded(timeout: float | None, error: type[Exception]) -> float | None:
    end: float | None = getattr(_local, "end", None)
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise error("the call's overall deadline passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    """A connection whose operations obey the deadline, and whose writes are coalesced.

    httpcore writes a request as three pieces (head, body, end): held here and sent
    as one at the first read, one system call and one packet instead of three.
    HTTP/1.1 reads only after the whole request is written, so nothing waits.
    """

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        self._pending: list[bytes] = []
        self._write_timeout: float | None = None

    def _flush(self) -> None:
        if self._pending:
            check = getattr(_local, "before_send", None)
            if check is not None:
                _local.before_send = None  # the request leaves once
                check()
            data = b"".join(self._pending)
            self._pending.clear()
            self._inner.write(data, _bounded(self._write_timeout, httpcore.WriteTimeout))

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._flush()
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            self._pending.append(buffer)
            self._write_timeout = timeout

    def close(self) -> None:
        self._pending.clear()
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_tcp(host, port, bounded, local_address, socket_options))

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:  # pragma: no cover - VICIdial is reached over TCP
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_unix_socket(path, bounded, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def deadline_pool(
    *, limits: httpx.Limits, verify: bool | ssl.SSLContext = True
) -> httpcore.ConnectionPool:
    """httpcore's keep-alive pool (HTTP/1.1, no proxy) whose connections obey :func:`deadline`."""
    return httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(verify=verify),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_Backend(),
    )


class DeadlineTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` (HTTP/1.1, no proxy) whose connections obey :func:`deadline`."""

    def __init__(self, *, limits: httpx.Limits, verify: bool | ssl.SSLContext = True) -> None:
        super().__init__(limits=limits, verify=verify)
        self._pool = deadline_pool(limits=limits, verify=verify)
