"""Redis connections: one pooled client per process and URL, with timeouts.

Producers must never hang on a dead Redis, so every client has connect and read
timeouts, and Redis errors are turned into :class:`BrokerUnavailable` whose
message carries the URL without its password.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

from dispatcher.errors import BrokerUnavailable
from dispatcher.settings import Settings, redact_url

__all__ = ["broker_errors", "broker_transport_options", "parse_sentinel_url", "redis_client"]

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
    "socket_connect_timeout": 5,
    "socket_timeout": 15,
    "health_check_interval": 30,
}
_SENTINEL_OPTIONS: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 5}


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
    if not settings.redis_url.startswith("sentinel://"):
        return redis.Redis.from_url(settings.redis_url, **_CLIENT_OPTIONS)
    nodes, credentials = parse_sentinel_url(settings.redis_url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        nodes, sentinel_kwargs=_SENTINEL_OPTIONS, **credentials, **_CLIENT_OPTIONS
    )
    # A master_for client asks the Sentinels for the current primary on every
    # (re)connection, so it follows a failover.
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        str(settings.redis_sentinel_master)
    )
    return client


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """What kombu's Redis transport needs beyond the URL (the Sentinel master's name)."""
    if settings.redis_url.startswith("sentinel://"):
        return {
            "master_name": settings.redis_sentinel_master,
            "sentinel_kwargs": dict(_SENTINEL_OPTIONS),
        }
    return {}


@contextmanager
def broker_errors(settings: Settings) -> Iterator[None]:
    """Translate redis-py's connection failures into BrokerUnavailable."""
    try:
        yield
    except redis.AuthenticationError:
        raise BrokerUnavailable(
            f"Redis at {redact_url(settings.redis_url)} refused the credentials"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerUnavailable(
            f"Redis at {redact_url(settings.redis_url)} is unreachable: {type(exc).__name__}"
        ) from None
