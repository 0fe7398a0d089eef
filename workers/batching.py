"""Redis script calls of an event loop, sent in batches over ``redis.asyncio``.

The lead engine (workers/engine.py) runs two script commands per lead (claim,
succeed). Run one by one, each would cost the loop a Redis round trip of its
own (measured: 60 % of the loop's time at 400 leads/s). Here the loop stages
the command and awaits a future; once per turn of the loop the staged commands
leave as one pipeline (``transaction=False``: each command is still a script of
its own, batching changes when a command is sent, never what it does), and each
reply resolves its command's future. Commands staged while the batches are on
the wire go in the next one, so the batches grow with the load.

Everything below the pipeline is redis-py's: connections from ``redis.asyncio``
(plain TCP, TLS, a Unix socket or Sentinel, as the URL says:
:func:`dispatcher.store.connection.async_redis_client`), hiredis as the parser,
a socket timeout on every command, health checks of idle connections, and one
retry on a new connection when a connection drops or times out (claims and
outcome writes are recognised by their token when they run twice). What still
fails resolves the futures with the error; the engine then moves those jobs to
a thread, which retries with the same token.

One round trip per batch: the commands are bare EVALSHAs (redis-py's ``Script``
objects would add a ``SCRIPT EXISTS`` round trip to every pipeline); a NOSCRIPT
reply (a restarted or flushed Redis) loads the script and runs those again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

from dispatcher.store.execution import Execution

__all__ = ["MAX_BATCH", "LoopPipeline"]

#: The most commands sent in one round trip.
MAX_BATCH = 256
#: Batches on the wire at once: commands staged meanwhile wait for the next (fewer,
#: larger batches: the cost of a pipeline is mostly per batch, not per command).
MAX_BATCHES = 1

_Staged = list[tuple[tuple[Any, ...], "asyncio.Future[Any]"]]


class LoopPipeline:
    """Stages the execution script's commands of one event loop and sends them in batches.

    Made and used on the loop's thread only. ``client``: a ``redis.asyncio`` client
    of its own (its connections live on this loop); ``deadline_s``: the longest a
    batch may take, retries included, before its commands fail.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        execution: Execution,
        loop: asyncio.AbstractEventLoop,
        *,
        deadline_s: float,
        on_staged: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._execution = execution
        self._loop = loop
        self._deadline_s = deadline_s
        #: called when commands wait to be sent (the engine then sends them with
        #: its turn's log lines written first; by default: send soon)
        self._on_staged = on_staged or (lambda: loop.call_soon(self.send))
        self._staged: _Staged = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def call(self, *command: Any) -> asyncio.Future[Any]:
        """Stage one command (``(name, *args)``); its reply's future.

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
        """Send what is staged, as far as the batches on the wire allow."""
        while self._staged and self._in_flight < MAX_BATCHES:
            batch = self._staged[:MAX_BATCH]
            del self._staged[:MAX_BATCH]
            self._in_flight += 1
            task = self._loop.create_task(self._execute(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Close the client's connections (on the loop, once nothing is sent any more)."""
        await self._client.aclose()

    async def _execute(self, batch: _Staged) -> None:
        replies: list[Any]
        try:
            async with asyncio.timeout(self._deadline_s):
                replies = await self._run([command for command, _ in batch])
        except TimeoutError:
            error = redis.TimeoutError(f"no answer from Redis within {self._deadline_s:g} s")
            replies = [error] * len(batch)
        except Exception as exc:
            replies = [exc] * len(batch)
        finally:
            self._in_flight -= 1
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)
        if self._staged:
            self._on_staged()

    async def _run(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        script_command = self._execution.script_command
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            pipe.execute_command(*script_command(call))
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        noscript = redis.exceptions.NoScriptError
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, noscript)]
        if missing:
            # A restarted or flushed Redis: load the script, run those again.
            await self._client.script_load(self._execution.source)
            again = await self._run([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies
