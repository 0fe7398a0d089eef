"""Redis connections: one pooled client per process and URL, with timeouts.

Producers must never hang on a dead Redis, so every client has connect and read
timeouts, and Redis errors are turned into :class:`BrokerUnavailable` (or one of
its subtypes) whose message carries the URL without its password.

redis-py retries a command on its own after a connection error; that would run
a non-idempotent command twice (an enqueue whose reply was lost would enqueue
the lead again). Our clients never retry behind the caller's back: the callers
that can retry safely (a worker's claim and outcome writes, made idempotent by
their token; an enqueue, after checking what happened) do it themselves.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from dispatcher.config.settings import Settings, redact_url
from dispatcher.model.errors import (
    BrokerOutOfMemory,
    BrokerReadOnly,
    BrokerUnavailable,
    BrokerWriteRefused,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis as AsyncRedis

__all__ = [
    "async_redis_client",
    "broker_error",
    "broker_errors",
    "broker_transport_options",
    "client_timeouts",
    "parse_sentinel_url",
    "redis_client",
    "unavailable_kind",
    "write_refusal",
]

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def redis_client(settings: Settings) -> redis.Redis:
    """The process-wide client for ``settings.redis_url`` (created on first use)."""
    url = settings.redis_url
    client = _clients.get(url)
    if client is None:
        with _lock:
            client = _clients.get(url)
            if client is None:
                client = _new_client(settings)
                _clients[url] = client
    return client


_CLIENT_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "health_check_interval": 30,
    "retry": Retry(NoBackoff(), 0),
}
_SENTINEL_OPTIONS: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 5}


def client_timeouts(settings: Settings) -> dict[str, float]:
    """``socket_timeout`` and ``socket_connect_timeout`` for a Redis client (redis-py's
    and kombu's option names): no command waits longer than DISPATCHER_REDIS_TIMEOUT_S."""
    timeout = float(settings.redis_timeout_s)
    return {"socket_timeout": timeout, "socket_connect_timeout": min(5.0, timeout)}


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """``sentinel://[:pw@]h1:26379;sentinel://h2:26379/0`` -> nodes, master credentials + db.

    Credentials and db come from the first node, as kombu's Sentinel transport reads them.
    """
    parts = [urlsplit(p.strip()) for p in url.split(";") if p.strip()]
    nodes = [(p.hostname or "localhost", p.port or 26379) for p in parts]
    first = parts[0]
    kwargs: dict[str, Any] = {"db": int(first.path.strip("/") or 0)}
    if first.username:
        kwargs["username"] = unquote(first.username)
    if first.password:
        kwargs["password"] = unquote(first.password)
    return nodes, kwargs


def _new_client(settings: Settings) -> redis.Redis:
    options = {**_CLIENT_OPTIONS, **client_timeouts(settings)}
    if not settings.redis_url.startswith("sentinel://"):
        return redis.Redis.from_url(settings.redis_url, **options)
    nodes, credentials = parse_sentinel_url(settings.redis_url)
    # Typed as Any: redis-py annotates Sentinel in some releases (8.x) and not in
    # others (5.x), and a type: ignore is an error wherever it is not needed.
    factory: Any = Sentinel
    sentinel = factory(nodes, sentinel_kwargs=_SENTINEL_OPTIONS, **credentials, **options)
    # A master_for client asks the Sentinels for the current primary on every
    # (re)connection, so it follows a failover.
    client: redis.Redis = sentinel.master_for(str(settings.redis_sentinel_master))
    return client


def async_redis_client(
    settings: Settings,
    *,
    socket_timeout: float,
    retries: int,
    max_connections: int,
    client_name: str | None = None,
) -> AsyncRedis:
    """A new ``redis.asyncio`` client for ``settings.redis_url`` (for one event loop).

    The same URL forms (``redis://``, ``rediss://`` with its TLS options,
    ``sentinel://`` with the master's name), credentials, connect timeout and
    health checks as :func:`redis_client`; ``socket_timeout`` bounds every
    command's wait for its reply. Unlike :func:`redis_client` it retries a
    command whose connection dropped or timed out (``retries`` times, on a new
    connection, with backoff): only for callers whose commands are safe to run
    twice (the worker's claim and outcome writes, recognised by their token).
    ``client_name``: what Redis's ``CLIENT LIST`` shows for its connections.
    """
    # Imported here: a producer or the CLI never loads the asyncio client.
    from redis.asyncio import Redis as AsyncRedis
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.asyncio.sentinel import Sentinel as AsyncSentinel

    options: dict[str, Any] = {
        **_CLIENT_OPTIONS,
        "socket_timeout": socket_timeout,
        "retry": AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05), retries),
        "max_connections": max_connections,
        "client_name": client_name,
    }
    if not settings.redis_url.startswith("sentinel://"):
        return AsyncRedis.from_url(settings.redis_url, **options)
    nodes, credentials = parse_sentinel_url(settings.redis_url)
    sentinel = AsyncSentinel(nodes, sentinel_kwargs=_SENTINEL_OPTIONS, **credentials, **options)
    # As the sync client: the current primary is asked for on every (re)connection.
    client: AsyncRedis = sentinel.master_for(str(settings.redis_sentinel_master))
    return client


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """What kombu's Redis transport needs beyond the URL (the Sentinel master's name)."""
    if settings.redis_url.startswith("sentinel://"):
        return {
            "master_name": settings.redis_sentinel_master,
            "sentinel_kwargs": dict(_SENTINEL_OPTIONS),
        }
    return {}


def write_refusal(exc: redis.ResponseError) -> type[BrokerWriteRefused] | None:
    """The BrokerWriteRefused type for a Redis error that refuses writes, else None."""
    text = str(exc)
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or text.startswith("OOM "):
        return BrokerOutOfMemory
    if isinstance(exc, redis.exceptions.ReadOnlyError) or text.startswith("READONLY "):
        return BrokerReadOnly
    if text.startswith("MISCONF "):
        return BrokerWriteRefused
    # A script aborted by one of these carries the original error in its message.
    for marker, kind in (
        ("OOM ", BrokerOutOfMemory),
        ("READONLY ", BrokerReadOnly),
        ("MISCONF ", BrokerWriteRefused),
    ):
        if f"-{marker}" in text or f": {marker}" in text:
            return kind
    return None


#: Error replies of a Redis that cannot serve for now (the first word of the reply).
_PASSING_REPLIES = {
    "LOADING": "loading",  # reading its data set after a restart
    "BUSY": "busy",  # a script runs past lua-time-limit
    "MASTERDOWN": "read_only",  # a replica that lost its master
    "UNBLOCKED": "read_only",  # a blocked command cut by a role change (master -> replica)
    "TRYAGAIN": "busy",
    "NOREPLICAS": "read_only",  # min-replicas-to-write not met
}


def unavailable_kind(exc: BaseException) -> str | None:
    """Why Redis cannot serve now, if ``exc`` says so: a condition to wait out (full,
    read-only, refusing writes, loading, busy, slow, unreachable), named for logs
    (``out_of_memory``, ``read_only``, ``misconf``, ``loading``, ``busy``, ``timeout``,
    ``connection``, ``auth``). None for anything else (a wrong key type, a script bug):
    waiting would not mend those."""
    if isinstance(exc, BrokerUnavailable):
        return exc.kind
    if isinstance(exc, redis.AuthenticationError):
        return "auth"
    if isinstance(exc, redis.BusyLoadingError):
        return "loading"
    if isinstance(exc, redis.TimeoutError | TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, redis.ConnectionError | ConnectionError):
        return "connection"
    if isinstance(exc, redis.ResponseError):
        refusal = write_refusal(exc)
        if refusal is not None:
            return refusal.kind
        text = str(exc)
        # A script aborted by one carries it after "-" (see write_refusal).
        for word, kind in _PASSING_REPLIES.items():
            if text.startswith(f"{word} ") or f"-{word} " in text:
                return kind
    return None


_WHY = {
    BrokerOutOfMemory: "is out of memory (maxmemory reached, writes refused): free memory or "
    "raise maxmemory",
    BrokerReadOnly: "is a read-only replica (writes refused): point DISPATCHER_REDIS_URL at "
    "the primary, or use Sentinel",
    BrokerWriteRefused: "refuses writes because it cannot persist to disk (MISCONF): check "
    "its disk and logs",
}


def broker_error(exc: Exception, settings: Settings) -> Exception:
    """The error to raise for ``exc`` from redis-py: a connection failure or a write
    refusal as BrokerUnavailable (or one of its kinds), anything else as it is."""
    if isinstance(exc, redis.AuthenticationError):
        error = BrokerUnavailable(
            f"Redis at {redact_url(settings.redis_url)} refused the credentials"
        )
        error.kind = "auth"
        return error
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        # redis-py says "... connecting to host:port" when no connection was made:
        # then no command reached Redis, which an enqueue needs to know.
        error = BrokerUnavailable(
            f"Redis at {redact_url(settings.redis_url)} is unreachable: {type(exc).__name__}"
        )
        error.connecting = "connecting to" in str(exc)
        error.kind = unavailable_kind(exc) or "connection"
        return error
    if isinstance(exc, redis.ResponseError):
        refusal = write_refusal(exc)
        if refusal is not None:
            return refusal(f"Redis at {redact_url(settings.redis_url)} {_WHY[refusal]}")
    return exc


@contextmanager
def broker_errors(settings: Settings) -> Iterator[None]:
    """Translate redis-py's connection failures and write refusals into BrokerUnavailable."""
    try:
        yield
    except redis.RedisError as exc:
        error = broker_error(exc, settings)
        if error is exc:
            raise
        raise error from None
