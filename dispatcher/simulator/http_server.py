"""A small asyncio HTTP/1.1 server: keep-alive, pipelining, and deliberate hang-ups.

Why not the standard library's ThreadingHTTPServer: untuned, it answered 23
keep-alive calls/s on the development machine (its separate header and body
writes meet Nagle's algorithm and delayed ACKs), it parses headers with the email
package and holds a thread per connection. This reader answers over 2,000 calls/s
from one httpx client, and asyncio lets a "stall" hold a connection open without
holding a thread. It implements what clients of the simulator need and no more:
Content-Length and chunked request bodies, ``Expect: 100-continue``, HEAD,
``Connection: close`` and HTTP/1.0 semantics.

A handler returns an :class:`HttpResponse` or a :class:`Hangup` (close without
answering, either at once with a TCP reset or after holding the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from email.utils import formatdate

__all__ = ["Hangup", "HttpRequest", "HttpResponse", "HttpServer", "Reply"]

_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    413: "Payload Too Large",
    418: "I'm a teapot",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Time-out",
}


@dataclass(frozen=True)
class HttpRequest:
    method: str
    target: str
    version: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0  # wait this long before sending (simulated server latency)
    drip_s: float = 0.0  # send the body one byte at a time, this long apart (a slow proxy)


@dataclass(frozen=True)
class Hangup:
    """Close the connection without an answer.

    ``hold_s`` seconds of silence first (a stall); then a TCP reset if ``reset``,
    else an orderly close.
    """

    hold_s: float = 0.0
    reset: bool = True


Reply = HttpResponse | Hangup
Handler = Callable[[HttpRequest], Awaitable[Reply]]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _DateCache:
    """The Date header changes once a second; formatting it per request is wasted work."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def get(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True)
        return self._value


class HttpServer:
    """Serve ``handler`` on a listening socket, inside the running event loop."""

    def __init__(
        self,
        handler: Handler,
        *,
        server_name: str = "vicidial-simulator",
        max_header_bytes: int = 64 * 1024,
        max_body_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self._handler = handler
        self._server_name = server_name
        self._max_header = max_header_bytes
        self._max_body = max_body_bytes
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._dates = _DateCache()

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(
            self._serve_connection, sock=sock, limit=self._max_header
        )

    async def close(self) -> None:
        """Stop listening and drop every open connection (stalled ones included)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:  # answers are small: do not let Nagle hold them back
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reset = False
        try:
            while True:
                try:
                    request = await self._read_request(reader, writer)
                except _BadRequest as exc:
                    self._write(writer, "GET", HttpResponse(exc.status, str(exc).encode()), False)
                    await writer.drain()
                    return
                if request is None:
                    return
                try:
                    reply = await self._handler(request)
                except Exception as exc:  # a simulator bug must not look like a hang-up
                    reply = HttpResponse(500, f"simulator error: {exc!r}\n".encode())
                    self._write(writer, request.method, reply, False)
                    await writer.drain()
                    return
                if isinstance(reply, Hangup):
                    if reply.hold_s > 0:
                        await asyncio.sleep(reply.hold_s)
                    reset = reply.reset
                    return
                if reply.delay_s > 0:
                    await asyncio.sleep(reply.delay_s)
                keep_alive = _keep_alive(request)
                if reply.drip_s > 0:
                    await self._drip(writer, request.method, reply, keep_alive)
                else:
                    self._write(writer, request.method, reply, keep_alive)
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            # Only close() cancels these top-level tasks. Ending quietly matters: on 3.11
            # asyncio.streams calls task.exception() on them and would log a traceback.
            pass
        finally:
            self._connections.discard(task)
            if reset and sock is not None:
                # SO_LINGER with a zero timeout turns close() into a TCP RST.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> HttpRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise _BadRequest(400, "incomplete request") from None
            return None  # clean close between requests
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "request headers too large") from None
        lines = head[:-4].decode("latin-1").split("\r\n")
        while lines and not lines[0]:  # tolerate stray CRLFs between pipelined requests
            lines.pop(0)
        if not lines:
            raise _BadRequest(400, "empty request")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "malformed request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, val = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(400, "malformed header line")
            key = name.lower()
            val = val.strip()
            headers[key] = f"{headers[key]}, {val}" if key in headers else val
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked(reader, writer, headers)
        else:
            length_text = headers.get("content-length", "0")
            if not length_text.isdigit():
                raise _BadRequest(400, "bad Content-Length")
            length = int(length_text)
            if length > self._max_body:
                raise _BadRequest(413, "request body too large")
            if length:
                self._continue(writer, headers)
            body = await reader.readexactly(length) if length else b""
        return HttpRequest(method, target, version, headers, body)

    async def _read_chunked(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str]
    ) -> bytes:
        self._continue(writer, headers)
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest(400, "bad chunk size") from None
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return b"".join(chunks)
            total += size
            if total > self._max_body:
                raise _BadRequest(413, "request body too large")
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)

    @staticmethod
    def _continue(writer: asyncio.StreamWriter, headers: dict[str, str]) -> None:
        # curl waits for this before sending a body over 1 KiB.
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def _drip(
        self, writer: asyncio.StreamWriter, method: str, reply: HttpResponse, keep_alive: bool
    ) -> None:
        self._write(writer, method, replace(reply, body=b""), keep_alive, length=len(reply.body))
        for i in range(len(reply.body)):
            await writer.drain()
            await asyncio.sleep(reply.drip_s)
            writer.write(reply.body[i : i + 1])

    def _write(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        reply: HttpResponse,
        keep_alive: bool,
        *,
        length: int | None = None,
    ) -> None:
        reason = _REASONS.get(reply.status, "Unknown")
        head = [
            f"HTTP/1.1 {reply.status} {reason}",
            f"Date: {self._dates.get()}",
            f"Server: {self._server_name}",
        ]
        head.extend(f"{name}: {val}" for name, val in reply.headers)
        head.append(f"Content-Length: {len(reply.body) if length is None else length}")
        head.append("Connection: " + ("keep-alive" if keep_alive else "close"))
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        writer.write(data if method == "HEAD" else data + reply.body)


def _keep_alive(request: HttpRequest) -> bool:
    tokens = {t.strip().lower() for t in request.headers.get("connection", "").split(",")}
    if request.version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens
