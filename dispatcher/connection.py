"""Redis connections: one pooled client per process and URL, with timeouts.

Producers must never hang on a dead Redis, so every client has connect and read
timeouts, and Redis errors are turned into :class:`BrokerUnavailable` whose
message carries the URL without its password.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from dispatcher.errors import BrokerUnavailable
from dispatcher.settings import Settings, redact_url

__all__ = ["broker_errors", "redis_client"]

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
                client = redis.Redis.from_url(
                    url,
                    decode_responses=True,
                    socket_connect_timeout=5,
                    socket_timeout=15,
                    health_check_interval=30,
                )
                _clients[url] = client
    return client


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
