"""Liveness of workers and consumers, judged by Redis (``fleet.lua`` beside this file).

A worker writes a heartbeat key with a TTL every scheduler tick; its consumer
refreshes its own on every poll (the broker's pop: :mod:`dispatcher.store.broker`). A
key that expired means the process stopped (or stalled longer than the TTL): its
in-flight messages go back to the queue. No host ever compares its clock with
another's.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import redis

from dispatcher.store.keys import Keys
from dispatcher.store.replies import text

__all__ = ["Fleet"]

_SOURCE = resources.files("dispatcher.store").joinpath("fleet.lua").read_text(encoding="utf-8")


class Fleet:
    """The commands of fleet.lua, bound to one Redis client and key prefix."""

    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        self._script: Any = client.register_script(_SOURCE)
        self._keys = [prefix]

    def call(self, command: str, *args: Any, client: Any = None) -> Any:
        return self._script(keys=self._keys, args=[command, *args], client=client)

    def beat(self, worker: str, *, consumer: str, ttl: int) -> None:
        self.call("beat", worker, consumer, ttl)

    def reap(self, client: redis.Redis, *, queue: str) -> dict[str, int]:
        """Return the in-flight messages of consumers whose heartbeat is gone; per consumer."""
        keys = Keys(queue=queue)
        registry = keys.inflight_registry
        prefix = keys.inflight("")
        returned: dict[str, int] = {}
        for member in client.smembers(registry):
            name = text(member)
            consumer = name[len(prefix) :]
            n = int(self.call("reap", consumer, registry, name, queue))
            if n >= 0:
                returned[consumer] = n
        return returned

    def alive(self) -> Any:
        """The live worker names (``queue(pipe, "alive")`` in a pipeline)."""
        return self.call("alive")

    def queue(self, pipe: Any, command: str, *args: Any) -> None:
        """Queue one command on ``pipe`` as a bare EVALSHA (see Execution.queue)."""
        pipe.evalsha(self._script.sha, len(self._keys), *self._keys, command, *args)

    def load(self) -> None:
        self._script.registered_client.script_load(self._script.script)

    def prune(self) -> int:
        return int(self.call("prune"))
