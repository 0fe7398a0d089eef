"""Redis script calls of an event loop, sent in batches.

The lead engine (workers/engine.py) runs two script commands per lead (claim,
succeed). Run one by one on the loop's thread, each would stop every call in
flight for a Redis round trip (measured: 60 % of the loop's time at 400
leads/s). Here the loop stages the command and awaits a future; once per turn of
the loop the staged commands leave as one pipeline, and each reply resolves its
command's future. Commands staged while a batch is on the wire go in the next
one, so the batches grow with the load. Each command is still a script of its
own (not a transaction): batching changes when a command is sent, never what it
does.

Two senders with one interface: :class:`LoopPipeline`, the loop itself over a
plain TCP connection (no thread hand-off: the claim's reply is read by the
loop's own selector), and :class:`ScriptBatcher`, a thread of its own with
redis-py's connection (TLS, a Unix socket, Sentinel).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import redis
from redis._parsers.base import BaseParser

from dispatcher.execution import Execution, pack_commands

__all__ = ["LoopPipeline", "ScriptBatcher"]

_RESP_ERRORS = BaseParser

#: The most commands sent in one round trip.
MAX_BATCH = 256


class _Stager:
    """What both senders share: commands staged on the loop's thread, sent by :meth:`send`."""

    def __init__(
        self,
        execution: Execution,
        loop: asyncio.AbstractEventLoop,
        *,
        on_staged: Callable[[], None] | None = None,
    ) -> None:
        self._execution = execution
        self._loop = loop
        #: called when a first command is staged (to schedule :meth:`send`)
        self._on_staged = on_staged or (lambda: loop.call_soon(self.send))
        self._staged: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []

    def call(self, *command: Any) -> asyncio.Future[Any]:
        """Stage one command (``(name, *args)``) from the loop's thread; its reply's future.

        Staged commands leave with :meth:`send` (the engine sends once per turn of
        its loop, after that turn's log lines are written). The future fails with
        the error reply's exception, or with the connection error that lost the
        whole batch (the command may or may not have run).
        """
        future: asyncio.Future[Any] = self._loop.create_future()
        if not self._staged:
            self._on_staged()
        self._staged.append((command, future))
        return future

    def send(self) -> None:
        raise NotImplementedError


class ScriptBatcher(_Stager):
    """Sends the execution script's commands queued by one event loop, in batches."""

    def __init__(
        self,
        execution: Execution,
        loop: asyncio.AbstractEventLoop,
        *,
        on_staged: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(execution, loop, on_staged=on_staged)
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="lead-redis", daemon=True)
        self._thread.start()

    def send(self) -> None:
        """Hand the staged commands to the sending thread (from the loop's thread)."""
        if not self._staged:
            return
        staged, self._staged = self._staged, []
        with self._cond:
            self._pending.extend(staged)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
            replies: list[Any]
            try:
                replies = self._execution.call_many([command for command, _ in batch])
            except Exception as exc:
                replies = [exc] * len(batch)
            try:
                self._loop.call_soon_threadsafe(_resolve, batch, replies)
            except RuntimeError:
                return  # the loop is closed: nobody waits for these


def _resolve(batch: list[tuple[Any, asyncio.Future[Any]]], replies: list[Any]) -> None:
    for (_, future), reply in zip(batch, replies, strict=True):
        if future.done():
            continue
        if isinstance(reply, BaseException):
            future.set_exception(reply)
        else:
            future.set_result(reply)


class LoopPipeline(_Stager):
    """The same interface as :class:`ScriptBatcher`, spoken by the event loop itself.

    Over a plain TCP connection the loop writes each turn's commands to Redis and
    reads the replies with its own selector: no thread in between, so a claim's
    reply does not wait for two threads to take the interpreter lock in turn
    (measured: the claim was 10 ms of a 122 ms job at 100 calls in flight). The
    connection is made with redis-py (its AUTH and SELECT, in a thread) and then
    handed to asyncio. A lost connection fails the commands in flight (the engine
    moves those jobs to a thread, which writes again with the same token) and the
    next turn connects again.
    """

    def __init__(
        self,
        execution: Execution,
        loop: asyncio.AbstractEventLoop,
        *,
        on_staged: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(execution, loop, on_staged=on_staged)
        self._protocol: _RespProtocol | None = None
        self._connecting: asyncio.Task[_RespProtocol] | None = None

    @staticmethod
    def supported(execution: Execution) -> bool:
        return execution.new_connection() is not None

    def send(self) -> None:
        if not self._staged:
            return
        staged, self._staged = self._staged, []
        protocol = self._protocol
        if protocol is not None and protocol.open:
            protocol.send(self._pack(staged), [future for _, future in staged])
        else:
            self._loop.create_task(self._send_when_connected(staged))

    def close(self) -> None:
        if self._protocol is not None:
            with contextlib.suppress(Exception):  # the loop may be closed already
                self._protocol.close()

    def _pack(self, staged: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> bytes:
        script = self._execution.script_command
        return pack_commands([script(command) for command, _ in staged])

    async def _send_when_connected(
        self, staged: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]
    ) -> None:
        try:
            if self._connecting is None or self._connecting.done():
                self._connecting = self._loop.create_task(self._open())
            protocol = await asyncio.shield(self._connecting)
        except Exception as exc:
            error = exc if isinstance(exc, redis.RedisError) else redis.ConnectionError(str(exc))
            for _, future in staged:
                if not future.done():
                    future.set_exception(error)
            return
        protocol.send(self._pack(staged), [future for _, future in staged])

    async def _open(self) -> _RespProtocol:
        current = self._protocol
        if current is not None and current.open:
            return current
        connection = self._execution.new_connection()
        # redis-py connects and authenticates (blocking: in a thread, not on the loop).
        await self._loop.run_in_executor(None, connection.connect)
        sock = connection._sock
        connection._parser.on_disconnect()
        connection._sock = None  # the socket is asyncio's now
        _, protocol = await self._loop.create_connection(_RespProtocol, sock=sock)
        self._protocol = protocol
        return protocol


class _Incomplete(Exception):
    """The buffer ends inside a reply."""


def _parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One RESP2 reply at ``pos``: (value, next position); raises _Incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    line = bytes(buf[pos + 1 : end])
    nxt = end + 2
    if kind == 0x24:  # $ bulk string
        size = int(line)
        if size < 0:
            return None, nxt
        if len(buf) < nxt + size + 2:
            raise _Incomplete
        return bytes(buf[nxt : nxt + size]), nxt + size + 2
    if kind == 0x2A:  # * array
        count = int(line)
        if count < 0:
            return None, nxt
        items = []
        for _ in range(count):
            item, nxt = _parse(buf, nxt)
            items.append(item)
        return items, nxt
    if kind == 0x3A:  # : integer
        return int(line), nxt
    if kind == 0x2B:  # + status
        return line, nxt
    if kind == 0x2D:  # - error: the exception redis-py would raise (NoScriptError, ...)
        return _RESP_ERRORS.parse_error(line.decode("utf-8", "replace")), nxt
    raise redis.ConnectionError(f"unexpected RESP type byte {kind!r} from Redis")


class _RespProtocol(asyncio.Protocol):
    """Replies come back in the order the commands were written: one future each."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.open = True

    def send(self, data: bytes, futures: list[asyncio.Future[Any]]) -> None:
        assert self._transport is not None
        self._waiting.extend(futures)
        self._transport.write(data)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        try:
            while self._waiting:
                try:
                    value, pos = _parse(buf, pos)
                except _Incomplete:
                    break
                future = self._waiting.popleft()
                if future.done():
                    continue
                if isinstance(value, BaseException):
                    future.set_exception(value)
                else:
                    future.set_result(value)
        except Exception as exc:  # not RESP: the connection cannot be trusted
            self._fail(redis.ConnectionError(f"unreadable reply from Redis: {exc}"))
            self.close()
            return
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(redis.ConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def _fail(self, error: Exception) -> None:
        self.open = False
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        self.open = False
        if self._transport is not None:
            self._transport.close()
