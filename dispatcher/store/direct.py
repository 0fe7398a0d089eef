"""One Redis connection per thread, outside redis-py's pool: a worker's hot path.

A worker thread sends two script commands per lead (claim, succeed), and through
redis-py's pool half of each command's client CPU went to the pool itself (its lock,
its readiness ``select``, its counters). :class:`ThreadConnections` keeps one plain
connection per thread with the pool's own options, and :func:`pack_commands` writes
several commands' RESP bytes at once for a batch sent in one round trip.
:meth:`dispatcher.store.execution.Execution.direct` is the one user.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import redis

__all__ = ["ThreadConnections", "pack_commands"]


def _encode(value: Any) -> bytes:
    # As redis-py's Encoder (its default UTF-8), for the types the scripts are given.
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        raise redis.DataError("a bool is not a Redis argument")
    if isinstance(value, (int, float)):  # a tuple: ``int | float`` is built on each call
        return repr(value).encode()
    raise redis.DataError(f"a {type(value).__name__} is not a Redis argument")


def pack_commands(commands: list[tuple[Any, ...]]) -> bytes:
    """The RESP bytes of several commands, each one argument list.

    redis-py's packer splits a first argument holding spaces and chunks large
    values; a worker's script calls need neither, and this costs a third of it
    (the batched claim and success of every lead go through here).
    """
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = _encode(arg)
            out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


class ThreadConnections:
    """One Redis connection per thread, taken past redis-py's connection pool.

    A worker thread runs two commands per lead (claim, succeed). Through the pool,
    each pays for the pool's lock, its readiness check (a ``select`` on the socket)
    and its observability counters: half of the command's client CPU (measured:
    205 against 98 us an EVALSHA). Same connection class and options as the pool's
    (timeouts, TLS, health checks, RESP version); plain connections only.
    """

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        self._class = pool.connection_class
        self._kwargs = dict(pool.connection_kwargs)
        self._local = threading.local()

    @staticmethod
    def supports(client: redis.Redis) -> bool:
        """Sentinel-managed connections find their master through their pool: not here."""
        pool = client.connection_pool
        return type(pool) in (redis.ConnectionPool, redis.BlockingConnectionPool) and (
            pool.connection_class
            in (redis.Connection, redis.SSLConnection, redis.UnixDomainSocketConnection)
        )

    def connection(self) -> Any:
        """The calling thread's connection, made on its first use (and again in a forked
        child, which never touches its parent's socket)."""
        local = self._local
        connection = getattr(local, "connection", None)
        if connection is None or local.pid != os.getpid():
            connection = local.connection = self._class(**self._kwargs)
            local.pid = os.getpid()
        return connection

    def _twice(self, exchange: Callable[[Any, Any], Any], payload: Any) -> Any:
        connection = self.connection()
        try:
            return exchange(connection, payload)
        except redis.ConnectionError:
            # Closed while idle (Redis restarted, a timeout, CLIENT KILL): the pool would
            # have seen it before sending; here the first use tells. Once more, fresh.
            # (A reply lost after the command ran is the case every caller handles: the
            # commands are compare-and-set on the delivery's token.)
            return exchange(connection, payload)

    def execute(self, *args: Any) -> Any:
        return self._twice(self._exchange, args)

    def execute_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send every command, then read every reply: one round trip. An error reply
        is returned in its place as the exception; a lost connection raises (once
        retried on a fresh one, as :meth:`execute`)."""
        replies: list[Any] = self._twice(self._exchange_many, commands)
        return replies

    @staticmethod
    def _exchange_many(connection: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
        try:
            connection.send_packed_command([pack_commands(commands)])
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            connection.disconnect()
            raise

    @staticmethod
    def _exchange(connection: Any, args: tuple[Any, ...]) -> Any:
        try:
            connection.send_command(*args)
            return connection.read_response()
        except redis.ResponseError:
            raise  # an error reply: the connection is in step and stays
        except BaseException:
            # A reply half read (timeout, interrupt) must not be read by the next command.
            connection.disconnect()
            raise
