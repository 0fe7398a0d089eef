"""external_add_lead over asyncio: the call of :mod:`workers.engine`, many in flight on one thread.

The same call as :class:`workers.vicidial.VicidialClient` (same request, headers,
answer parser, cap, overall deadline, and the same error for each way a call can
fail, texts included), on httpcore's asyncio connections (anyio), the library
httpx is built on: a worker waiting on 64 calls holds 64 sockets in one event
loop instead of 64 threads taking turns at the GIL. HTTP/1.1, TLS (httpx's
default SSL context: certificates verified), chunked and read-until-close bodies,
interim answers and ``Connection: close`` are httpcore's.

What is added around it, and why:

* **An overall deadline per call** (``DISPATCHER_HTTP_TIMEOUT_S``): httpcore's
  timeouts are per socket operation, so a dripping answer could last for ever. A
  network backend wraps httpcore's anyio one and bounds every connect, read and
  write by what is left of the call's deadline (the asyncio twin of
  :mod:`workers.http_deadline`); a dripping answer is cut there. Whether a byte of
  the request left decides the error: nothing sent is a NetworkError (retried),
  sent and unanswered an AmbiguousFailure.
* **The claim fence and the log line in the same step as the write**: right before
  a request's bytes leave, the call's fence is checked (ClaimLapsed, nothing sent,
  when the claim could lapse before the call ends: issue 23's item 2), and the
  held log lines are written, so a call absent from the logs was never made.
* **Kept-alive connections in a list**, not httpcore's ``AsyncConnectionPool``,
  which walks every connection (and every idle one once per connection) on each
  request and release: with 64 connections in flight it spent 12 ms of CPU a
  request (encode/httpcore#1035). An idle connection is reused only while
  httpcore says it is available and not expired (:data:`KEEPALIVE_S`, below
  Apache's default ``KeepAliveTimeout`` of 5 s).
* **The 64 KiB answer cap**: the body is read up to it; a larger answer's
  connection is dropped.

Measured against the hand-written HTTP/1.1 client this module replaced (``python
-m bench --only clients``, 2026-12-07, three runs): at 64 calls in flight 0.95-0.98
of a raw client's rate (the goal: 0.9); at 100 in flight, the load of a 2-core
host, 772-834 leads/s against 891-910 (the goal: 800), at about 1.5x the worker
CPU per lead. Behaviour is tested over real sockets with the fault proxy
(tests/workers/test_vicidial_client.py: dropped and half-open connections, the
cap, the deadline, a connection the server closed).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import ssl
import time
import typing
from collections.abc import Callable, Iterable, Iterator

import httpcore
import httpx

from dispatcher.config import logs
from dispatcher.config.settings import Settings
from dispatcher.model.dialers import Dialer
from dispatcher.model.errors import AmbiguousFailure, ConfigError, NetworkError
from dispatcher.model.lead import Lead
from dispatcher.store.execution import Fence
from workers.vicidial import (
    HTTPCORE_ERRORS,
    MAX_ANSWER_BYTES,
    AddLeadResult,
    add_lead_form,
    call_failed,
    call_timeouts,
    decode_answer,
    host_header,
    parse_add_lead,
    post_request,
)

__all__ = ["KEEPALIVE_S", "AsyncVicidialClient"]

KEEPALIVE_S = 4.0
_BACKSTOP_S = 1.0


class CallState:
    """One call's deadline (``time.monotonic()``), its claim's fence (if any), and
    whether any byte of it was sent."""

    __slots__ = ("end", "fence", "sent")

    def __init__(self, end: float, fence: Fence | None = None) -> None:
        self.end = end
        self.fence = fence
        self.sent = False


_call: contextvars.ContextVar[CallState | None] = contextvars.ContextVar(
    "vicidial_http_call", default=None
)


@contextlib.contextmanager
def deadline(seconds: float, *, fence: Fence | None = None) -> Iterator[CallState]:
    """Every socket operation of this asyncio task ends within ``seconds`` from now;
    ``fence`` is checked right before the request's bytes leave."""
    state = CallState(time.monotonic() + seconds, fence)
    token = _call.set(state)
    try:
        yield state
    finally:
        _call.reset(token)


def _before_write() -> None:
    """The request's bytes leave now: the claim's fence may still refuse them
    (ClaimLapsed: nothing was sent); else the call counts as sent."""
    state = _call.get()
    if state is not None:
        if state.fence is not None:
            state.fence.check()
        state.sent = True


def _bounded(timeout: float | None, error: type[Exception]) -> float | None:
    state = _call.get()
    if state is None:
        return timeout
    left = state.end - time.monotonic()
    if left <= 0:
        raise error("the call's overall deadline passed")
    return left if timeout is None else min(timeout, left)


class _AsyncStream(httpcore.AsyncNetworkStream):
    """A connection whose operations obey the deadline, with its writes coalesced;
    ``before_send`` runs right before a request's bytes leave."""

    def __init__(
        self, inner: httpcore.AsyncNetworkStream, before_send: Callable[[], None] | None
    ) -> None:
        self._inner = inner
        self._before_send = before_send
        self._pending: list[bytes] = []
        self._write_timeout: float | None = None

    async def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            timeout = _bounded(self._write_timeout, httpcore.WriteTimeout)
            _before_write()
            if self._before_send is not None:
                self._before_send()
            await self._inner.write(data, timeout)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        await self._flush()
        return await self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            self._pending.append(buffer)
            self._write_timeout = timeout

    async def aclose(self) -> None:
        self._pending.clear()
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        inner = await self._inner.start_tls(ssl_context, server_hostname, bounded)
        return _AsyncStream(inner, self._before_send)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class AsyncDeadlineBackend(httpcore.AsyncNetworkBackend):
    """httpcore's asyncio (anyio) backend whose connections obey :func:`deadline`.

    ``before_send``: called right before each request is written (on the loop).
    """

    def __init__(self, *, before_send: Callable[[], None] | None = None) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._before_send = before_send

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        inner = await self._inner.connect_tcp(host, port, bounded, local_address, socket_options)
        return _AsyncStream(inner, self._before_send)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:  # pragma: no cover - VICIdial is reached over TCP
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        inner = await self._inner.connect_unix_socket(path, bounded, socket_options)
        return _AsyncStream(inner, self._before_send)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class AsyncVicidialClient:
    """Calls external_add_lead on one dialer from one event loop, over kept-alive connections.

    Made and used on the loop's thread only (not thread-safe, like the loop).
    ``max_connections``: the most idle connections kept (the worker's calls in
    flight). ``before_send``: run right before each request's bytes are written.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        dialer: Dialer,
        max_connections: int = 100,
        before_send: Callable[[], None] | None = logs.flush_lines,
    ) -> None:
        if dialer.missing():
            raise ConfigError(f"dialer {dialer.name}: needs {dialer.missing()}")
        self.settings = settings
        self.dialer = dialer
        self.server = dialer.name
        self._secrets = settings.secrets
        self.deadline_s = settings.http_timeout_s
        self._timeouts = call_timeouts(settings.http_timeout_s)
        self._target = httpcore.URL(str(dialer.url))
        self._origin = self._target.origin
        self._host = host_header(self._target)
        self._ssl = httpx.create_ssl_context() if self._origin.scheme == b"https" else None
        self._backend = AsyncDeadlineBackend(before_send=before_send)
        self._max_idle = max(1, max_connections)
        self._idle: collections.deque[httpcore.AsyncHTTPConnection] = collections.deque()

    async def aclose(self) -> None:
        """Close the kept-alive connections (on the loop, before it stops)."""
        while self._idle:
            conn = self._idle.pop()
            with contextlib.suppress(Exception):
                await conn.aclose()

    async def add_lead(
        self,
        lead: Lead,
        *,
        dnc_check: bool,
        campaign_dnc_check: bool,
        fence: Fence | None = None,
    ) -> tuple[AddLeadResult, float]:
        """Add one lead; return the result and the call's latency in ms, or raise CallFailed.

        ``fence``: the claim's fence, checked right before the request's bytes leave
        (ClaimLapsed, nothing sent, when the claim could lapse before the call ends).
        """
        body = add_lead_form(
            self.dialer, lead, dnc_check=dnc_check, campaign_dnc_check=campaign_dnc_check
        )
        started = time.perf_counter()
        status, text, truncated = await self.post(body, fence=fence)
        latency_ms = (time.perf_counter() - started) * 1000
        result = parse_add_lead(
            text, http_status=status, secrets=self._secrets, truncated=truncated
        )
        return result, latency_ms

    def _connection(self) -> httpcore.AsyncHTTPConnection:
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to be closing
            if conn.is_available() and not conn.has_expired():
                return conn
            # Closed by the server, or idle too long: its socket is simply dropped.
            self._discard(conn)
        return httpcore.AsyncHTTPConnection(
            self._origin,
            ssl_context=self._ssl,
            keepalive_expiry=KEEPALIVE_S,
            network_backend=self._backend,
        )

    @staticmethod
    def _discard(conn: httpcore.AsyncHTTPConnection) -> None:
        """Close a connection that is not kept (httpcore has closed a failed one already)."""
        if not conn.is_closed():
            task = asyncio.get_running_loop().create_task(conn.aclose())
            task.add_done_callback(_ignore_result)

    async def post(self, body: bytes, *, fence: Fence | None = None) -> tuple[int, str, bool]:
        """POST the form; (status, text, truncated), within the call's deadline.

        Raises NetworkError when nothing was sent (no connection), AmbiguousFailure
        once the request may have reached VICIdial (workers.vicidial.call_failed),
        ClaimLapsed (nothing sent) when the fence refuses the request's bytes.
        """
        request = post_request(self._target, self._host, body, self._timeouts)
        conn = self._connection()
        with deadline(self.deadline_s, fence=fence) as call:
            try:
                async with asyncio.timeout_at(call.end + _BACKSTOP_S):
                    reply = await conn.handle_async_request(request)
                    try:
                        chunks: list[bytes] = []
                        size = 0
                        async for chunk in reply.stream:  # type: ignore[union-attr]
                            chunks.append(chunk)
                            size += len(chunk)
                            if size > MAX_ANSWER_BYTES:
                                break  # closing the reply unread drops the connection
                    finally:
                        await reply.aclose()
            except HTTPCORE_ERRORS as exc:
                self._discard(conn)
                raise call_failed(exc) from None
            except TimeoutError:
                self._discard(conn)
                if call.sent:
                    raise AmbiguousFailure("ReadTimeout: no answer in time") from None
                raise NetworkError("ConnectTimeout: could not connect") from None
            except BaseException:
                self._discard(conn)
                raise
        if conn.is_idle() and len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            self._discard(conn)
        text = decode_answer(b"".join(chunks)[:MAX_ANSWER_BYTES], reply.headers)
        return reply.status, text, size > MAX_ANSWER_BYTES


def _ignore_result(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a failed close of a dead socket is nothing to report
