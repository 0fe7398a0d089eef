"""Redis script calls of an event loop, sent in batches by a thread of their own.

The lead engine (workers/engine.py) runs two script commands per lead (claim,
succeed). Run on the loop's thread, each would stop every call in flight for a
Redis round trip (measured: 60 % of the loop's time at 400 leads/s). Here the
loop queues the command and awaits a future; one thread sends whatever is
queued as one pipeline (:meth:`dispatcher.execution.Execution.call_many`),
reads the replies and resolves the futures. Commands queued while a batch is on
the wire go in the next one, so the batches grow with the load and a lead costs
a fraction of a round trip. Each command is still a script of its own (not a
transaction): batching changes when a command is sent, never what it does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from dispatcher.execution import Execution

__all__ = ["ScriptBatcher"]

#: The most commands sent in one round trip.
MAX_BATCH = 256


class ScriptBatcher:
    """Sends the execution script's commands queued by one event loop, in batches."""

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
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="lead-redis", daemon=True)
        self._thread.start()

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
