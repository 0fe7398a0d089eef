"""The lead engine's hand-written HTTP/1.1 client (asyncio streams): a bench variant.

Not part of the product. Until 2026-12-07 the engine spoke HTTP/1.1 itself (this
module, as it was in workers/async_vicidial.py); issue 24 asked for a maintained
client unless the library version missed a goal by more than 15 %, and in that
day's runs the httpcore client met every goal, so it replaced this one.
``python -m bench --only clients`` runs this checkout's worker with this module in
place of ``workers/async_vicidial.py`` (a copy of the tree in the bench's scratch
directory), side by side with the product, so the price of the library client
stays measured (docs/BENCHMARKS.md).

The engine no longer passes ``gate`` (the product's client writes the held log
lines right before a request leaves), so here a request is sent at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import select
import ssl
import time
from collections.abc import Callable

import httpx

from dispatcher.config.settings import Settings
from dispatcher.model.dialers import Dialer
from dispatcher.model.errors import AmbiguousFailure, ClaimLapsed, ConfigError, NetworkError
from dispatcher.model.lead import Lead
from dispatcher.store.execution import Fence
from workers.vicidial import (
    MAX_ANSWER_BYTES,
    USER_AGENT,
    AddLeadResult,
    add_lead_form,
    decode_answer,
    host_header,
    parse_add_lead,
)

__all__ = ["KEEPALIVE_S", "AsyncVicidialClient", "Gate"]

#: Takes the function that sends a request and runs it when the caller allows
#: (workers.engine: once the turn's log lines are written).
Gate = Callable[[Callable[[], None]], None]

#: Longest an idle connection is kept for reuse (Apache closes at 5 s by default).
KEEPALIVE_S = 4.0
#: A connection idle for less than this is trusted to the loop's own reading (one
#: system call less per call); longer, its socket is asked whether it closed.
_TRUST_LOOP_S = 1.0
#: The status line and headers of an answer may not be longer than this.
_MAX_HEAD = 64 * 1024


class _ProtocolError(Exception):
    """The answer is not HTTP/1.x as we read it (httpcore's RemoteProtocolError)."""


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float) -> bool:
        if now - self.idle_since >= KEEPALIVE_S or self.writer.is_closing():
            return False
        if self.reader.at_eof() or bool(getattr(self.reader, "_buffer", None)):
            return False  # closed, or bytes nobody asked for: the server is not in step
        if now - self.idle_since < _TRUST_LOOP_S:
            # The running loop reads every connection: a hang-up that came before
            # this turn shows as EOF above. (A keep-alive close comes after seconds.)
            return True
        # Idle a while: the server's keep-alive close may be on its way; ask the
        # socket itself (as httpcore does): an idle connection has nothing to read.
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class AsyncVicidialClient:
    """Calls external_add_lead on one dialer from one event loop, over kept-alive connections.

    Made and used on the loop's thread only (not thread-safe, like the loop).
    """

    def __init__(self, settings: Settings, *, dialer: Dialer) -> None:
        if dialer.missing():
            raise ConfigError(f"dialer {dialer.name}: needs {dialer.missing()}")
        self.settings = settings
        self.dialer = dialer
        self.server = dialer.name
        self._secrets = settings.secrets
        self.deadline_s = settings.http_timeout_s
        self._connect_s = min(settings.http_timeout_s, 5.0)
        url = httpx.URL(str(dialer.url))
        self._host = url.host
        self._tls = url.scheme == "https"
        self._port = url.port or (443 if self._tls else 80)
        self._ssl: ssl.SSLContext | None = httpx.create_ssl_context() if self._tls else None
        target = url.raw_path or b"/"
        self._head = (
            b"POST " + target + b" HTTP/1.1\r\n"
            b"Host: " + host_header(url) + b"\r\n"
            b"User-Agent: " + USER_AGENT + b"\r\n"
            b"Accept: */*\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: "
        )
        self._idle: collections.deque[_Connection] = collections.deque()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def aclose(self) -> None:
        """The engine's way out (the product client's interface)."""
        self.close()

    async def add_lead(
        self,
        lead: Lead,
        *,
        dnc_check: bool,
        campaign_dnc_check: bool,
        gate: Gate | None = None,
        fence: Fence | None = None,
    ) -> tuple[AddLeadResult, float]:
        """Add one lead; return the result and the call's latency in ms, or raise CallFailed.

        ``gate``: the request is sent when the gate runs it (else at once). ``fence``:
        the claim's fence, checked right before the request is written (ClaimLapsed,
        nothing sent, when the claim could lapse before the call ends).
        """
        body = add_lead_form(
            self.dialer, lead, dnc_check=dnc_check, campaign_dnc_check=campaign_dnc_check
        )
        started = time.perf_counter()
        status, text, truncated = await self.post(body, gate=gate, fence=fence)
        latency_ms = (time.perf_counter() - started) * 1000
        result = parse_add_lead(
            text, http_status=status, secrets=self._secrets, truncated=truncated
        )
        return result, latency_ms

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to be closing
            if conn.usable(now):
                return conn
            conn.close()
        return None

    async def post(
        self, body: bytes, *, gate: Gate | None = None, fence: Fence | None = None
    ) -> tuple[int, str, bool]:
        """POST the form; (status, text, truncated), within the call's deadline.

        ``gate``: runs the send when the caller allows (a request of a few hundred
        bytes: the socket takes it whole, there is nothing to drain). ``fence``:
        checked in the same step as the write; a refused request is not written, its
        connection is dropped and ClaimLapsed raised.

        Raises NetworkError when nothing was sent (no connection), AmbiguousFailure
        once the request may have reached VICIdial; the names in the texts are
        httpcore's, as the threaded client's are.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + self.deadline_s
        conn = self._take_idle()
        phase = "connect"
        try:
            async with asyncio.timeout_at(end):
                if conn is None:
                    conn = await self._connect(loop.time() + self._connect_s)
                phase = "write"
                request = self._head + b"%d\r\n\r\n" % len(body) + body
                if gate is None:
                    if fence is not None:
                        fence.check()
                    conn.writer.write(request)
                    await conn.writer.drain()
                else:
                    gate(functools.partial(_send, conn.writer, request, fence))
                phase = "read"
                status, head, content, truncated, reusable = await _read_answer(conn.reader)
        except ClaimLapsed:
            self._drop(conn)
            raise
        except TimeoutError:
            self._drop(conn)
            _refused(fence)
            if phase == "connect":
                raise NetworkError("ConnectTimeout: could not connect") from None
            name = "WriteTimeout" if phase == "write" else "ReadTimeout"
            raise AmbiguousFailure(f"{name}: no answer in time") from None
        except _ProtocolError:
            self._drop(conn)
            _refused(fence)
            raise AmbiguousFailure(
                "RemoteProtocolError: connection dropped after the request was sent"
            ) from None
        except (OSError, EOFError, ssl.SSLError) as exc:
            self._drop(conn)
            _refused(fence)
            if phase == "connect":
                raise NetworkError("ConnectError: could not connect") from None
            if isinstance(exc, asyncio.IncompleteReadError | EOFError):
                name = "RemoteProtocolError"
            else:
                name = "WriteError" if phase == "write" else "ReadError"
            raise AmbiguousFailure(
                f"{name}: connection dropped after the request was sent"
            ) from None
        if reusable:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        return status, decode_answer(content, head), truncated

    async def _connect(self, connect_end: float) -> _Connection:
        try:
            async with asyncio.timeout_at(connect_end):
                reader, writer = await asyncio.open_connection(
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                    limit=_MAX_HEAD,
                )
        except TimeoutError:
            raise NetworkError("ConnectTimeout: could not connect") from None
        return _Connection(reader, writer)

    @staticmethod
    def _drop(conn: _Connection | None) -> None:
        if conn is not None:
            conn.close()


def _send(writer: asyncio.StreamWriter, request: bytes, fence: Fence | None = None) -> None:
    """Write a gated request. One that cannot be written ends its connection: the
    read waiting on it fails at once, ambiguous as a failed write is (a transport
    that lost its connection drops the bytes; the read then fails as well). The
    claim fence is checked in the same step, right before the write: a refused
    request ends its connection unwritten (the read then raises ClaimLapsed)."""
    try:
        if fence is not None:
            fence.check()
        writer.write(request)
    except Exception:
        writer.transport.abort()


def _refused(fence: Fence | None) -> None:
    """Raise ClaimLapsed if the fence refused this call's request (never written)."""
    if fence is not None and fence.lapsed:
        raise ClaimLapsed(age_s=fence.age(), lease_s=fence.lease_s, call_s=fence.call_s) from None


async def _read_answer(
    reader: asyncio.StreamReader,
) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool, bool]:
    """(status, headers, body of at most MAX_ANSWER_BYTES, truncated, reusable)."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _ProtocolError("answer head too long") from None
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise  # closed before answering: httpcore's "Server disconnected"
            raise _ProtocolError("answer cut inside its head") from None
        status, version, headers = _parse_head(head)
        if 100 <= status < 200 and status != 101:
            continue  # an interim answer (100 Continue): the real one follows
        break
    fields = {name.lower(): value for name, value in headers}
    keep = version == b"HTTP/1.1" and b"close" not in fields.get(b"connection", b"").lower()
    if status in (204, 304):
        return status, headers, b"", False, keep
    if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
        body, truncated = await _read_chunked(reader)
        return status, headers, body, truncated, keep and not truncated
    length = fields.get(b"content-length")
    if length is not None:
        try:
            size = int(length)
        except ValueError:
            raise _ProtocolError("bad Content-Length") from None
        if size < 0:
            raise _ProtocolError("bad Content-Length")
        if size > MAX_ANSWER_BYTES:
            return status, headers, await reader.readexactly(MAX_ANSWER_BYTES), True, False
        return status, headers, await reader.readexactly(size), False, keep
    # No length: the body runs to the end of the connection.
    body = await reader.read(MAX_ANSWER_BYTES + 1)
    chunks = [body]
    size = len(body)
    while body and size <= MAX_ANSWER_BYTES:
        body = await reader.read(MAX_ANSWER_BYTES + 1 - size)
        chunks.append(body)
        size += len(body)
    data = b"".join(chunks)
    return status, headers, data[:MAX_ANSWER_BYTES], size > MAX_ANSWER_BYTES, False


def _parse_head(head: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise _ProtocolError("not an HTTP/1.x status line")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise _ProtocolError("malformed header line")
        headers.append((name, value.strip()))
    return int(parts[1]), parts[0], headers


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError:
            raise _ProtocolError("chunk size line too long") from None
        try:
            length = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _ProtocolError("bad chunk size") from None
        if length == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers: nothing we use
            return b"".join(chunks), False
        if size + length > MAX_ANSWER_BYTES:
            chunks.append(await reader.readexactly(MAX_ANSWER_BYTES - size))
            return b"".join(chunks), True
        data = await reader.readexactly(length + 2)
        if data[-2:] != b"\r\n":
            raise _ProtocolError("chunk not followed by CRLF")
        chunks.append(data[:-2])
        size += length
