"""Liveness of workers and consumers, judged by Redis (``fleet.lua`` beside this file).

A worker writes a heartbeat key with a TTL every scheduler tick; its consumer
refreshes its own on every poll. A key that expired means the process stopped
(or stalled longer than the TTL): its in-flight messages go back to the queue.
No host ever compares its clock with another's.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import redis

from dispatcher.store.keys import Keys

__all__ = ["Fleet", "inflight_key", "inflight_registry"]

_SOURCE = resources.files("dispatcher.store").joinpath("fleet.lua").read_text(encoding="utf-8")


def inflight_registry(queue: str) -> str:
    """Set of the in-flight list keys of every consumer of ``queue``."""
    return Keys(queue=queue).inflight_registry


def inflight_key(queue: str, consumer: str) -> str:
    """The in-flight list of one consumer of ``queue``."""
    return Keys(queue=queue).inflight(consumer)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Fleet:
    """The commands of fleet.lua, bound to one Redis client and key prefix."""

    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        self._script: Any = client.register_script(_SOURCE)
        self._keys = [prefix]

    def call(self, command: str, *args: Any, client: Any = None) -> Any:
        return self._script(keys=self._keys, args=[command, *args], client=client)

    def beat(self, worker: str, *, consumer: str, ttl: int) -> None:
        self.call("beat", worker, consumer, ttl)

    def fetch_args(
        self,
        consumer: str,
        *,
        ttl: int,
        queue: str,
        unacked: str,
        unacked_index: str,
        acks: list[Any],
        lanes: list[tuple[str, list[str]]],
        most: int = 1,
    ) -> list[Any]:
        """The ``fetch`` command's arguments: kombu's unacked hash and index, the delivery
        tags of the acks deferred since the last poll, ``lanes``: (dialer, its lane
        lists) each, in the order to serve them, and the most messages to take."""
        args: list[Any] = [
            "fetch",
            consumer,
            ttl,
            inflight_registry(queue),
            inflight_key(queue, consumer),
            unacked,
            unacked_index,
            max(1, most),
            len(acks),
            *acks,
        ]
        for dialer, lists in lanes:
            args += [dialer, len(lists), *lists]
        return args

    def record(
        self,
        *,
        unacked: str,
        unacked_index: str,
        tag: str,
        entry: str,
        inflight: str = "",
        raw: Any = "",
        client: Any = None,
    ) -> None:
        """Record a message delivered outside ``fetch`` in kombu's unacked hash and index
        (stamped with Redis's clock), clearing ``raw`` from the in-flight list if any."""
        self.call("record", unacked, unacked_index, tag, entry, inflight, raw, client=client)

    def reap(self, client: redis.Redis, *, queue: str) -> dict[str, int]:
        """Return the in-flight messages of consumers whose heartbeat is gone; per consumer."""
        registry = inflight_registry(queue)
        prefix = inflight_key(queue, "")
        returned: dict[str, int] = {}
        for member in client.smembers(registry):
            name = _text(member)
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
