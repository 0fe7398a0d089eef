"""Liveness of workers and consumers, judged by Redis (``fleet.lua`` beside this file).

A worker writes a heartbeat key with a TTL every scheduler tick; its consumer
refreshes its own on every poll (the broker's pop: :mod:`dispatcher.store.broker`). A
key that expired means the process stopped (or stalled longer than the TTL): its
in-flight messages go back to the queue. No host ever compares its clock with
another's.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis

from dispatcher.model.dialers import DIALER_NAME, PRIORITIES
from dispatcher.store.keys import Keys
from dispatcher.store.replies import text

__all__ = ["Fleet", "dialer_of_lane"]

_SOURCE = resources.files("dispatcher.store").joinpath("fleet.lua").read_text(encoding="utf-8")


class Fleet:
    """The commands of fleet.lua, bound to one Redis client and key prefix."""

    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        self._script: Any = client.register_script(_SOURCE)
        self._keys = [prefix]

    def call(self, command: str, *args: Any, client: Any = None) -> Any:
        return self._script(keys=self._keys, args=[command, *args], client=client)

    def beat(self, worker: str, *, consumer: str, ttl: int, served: Sequence[str] = ()) -> None:
        """The worker and its consumer are alive; so is a worker for each ``served``
        dialer (``P:served:{dialer}``)."""
        self.call("beat", worker, consumer, ttl, *served)

    def adopt(
        self, lane: str, *, dialer: str, inflight: str, registry: str, limit: int
    ) -> list[str]:
        """Up to ``limit`` messages of ``lane``, whose ``dialer`` no live worker serves,
        taken into the caller's in-flight list (none while it is served); see fleet.lua."""
        return [text(x) for x in self.call("adopt", lane, dialer, inflight, registry, limit)]

    def settled(self, inflight: str, message: str, *, back_to: str = "") -> None:
        """A message :meth:`adopt` took is handled: it leaves the in-flight list (and
        goes back to the lane ``back_to``, if given: its handling failed)."""
        self.call("settled", inflight, message, back_to)

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


def dialer_of_lane(keys: Keys, lane: str) -> str | None:
    """The dialer whose lane ``lane`` is (:meth:`Keys.lane`, :meth:`Keys.list_lane`),
    or None for any other list."""
    for priority in PRIORITIES:
        for named in (keys.list_lane, keys.lane):
            start, _, end = named("\0", priority).partition("\0")
            if len(lane) > len(start) + len(end) and lane.startswith(start) and lane.endswith(end):
                name = lane[len(start) : len(lane) - len(end)]
                if DIALER_NAME.fullmatch(name):
                    return name
    return None
