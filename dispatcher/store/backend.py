"""The Redis side of the dispatcher for one set of settings: client, keys, scripts.

Producers, the dead-letter store, the CLI and the workers all reach Redis
through a :class:`Backend`, so a key name or a script exists in one place:
:attr:`Backend.execution` (every transition of a job, ``execution.lua``),
:attr:`Backend.fleet` (liveness of workers and consumers, ``fleet.lua``),
:attr:`Backend.broker` (the workers' reliable pop, ``broker.lua``) and
:attr:`Backend.outbox` (outcome notifications waiting to be sent, ``outbox.lua``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import redis

from dispatcher.config.settings import Settings, get_settings
from dispatcher.store.broker import Broker
from dispatcher.store.connection import redis_client
from dispatcher.store.execution import Execution
from dispatcher.store.fleet import Fleet
from dispatcher.store.keys import Keys
from dispatcher.store.outbox import Outbox

__all__ = ["Backend", "get_backend"]


@dataclass
class Backend:
    settings: Settings
    redis: redis.Redis = field(init=False)
    keys: Keys = field(init=False)
    execution: Execution = field(init=False)
    fleet: Fleet = field(init=False)
    broker: Broker = field(init=False)
    outbox: Outbox = field(init=False)

    def __post_init__(self) -> None:
        self.redis = redis_client(self.settings)
        self.keys = Keys.of(self.settings)
        self.execution = Execution(self.redis, prefix=self.keys.prefix, queue=self.keys.queue)
        self.fleet = Fleet(self.redis, prefix=self.keys.prefix)
        self.broker = Broker(self.redis, prefix=self.keys.prefix)
        self.outbox = Outbox(self.redis, keys=self.keys)


_backends: dict[int, Backend] = {}
_lock = threading.Lock()


def get_backend(settings: Settings | None = None) -> Backend:
    """The cached backend for ``settings`` (default: the process settings)."""
    settings = settings or get_settings()
    key = id(settings)
    backend = _backends.get(key)
    if backend is None or backend.settings is not settings:
        with _lock:
            backend = Backend(settings)
            _backends[key] = backend
    return backend
