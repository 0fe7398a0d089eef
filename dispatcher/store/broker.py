"""The broker's reliable pop: a message taken and recorded in one step (``broker.lua``
beside this file).

kombu pops a message with ``BRPOP`` and records it as unacknowledged in a second round
trip; a worker killed between the two lost the message. Here one script does both
(``fetch``), and another records a message handed out some other way (``record``). The
consumer (``workers/transport.py``) sends the fetch on its own connection, whose reply
kombu's event loop reads: :meth:`Broker.fetch_command` builds it as sent on the wire.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import redis

from dispatcher.store.keys import Keys

__all__ = ["Broker", "Lane"]

#: A lane to fetch from: its list, or (its list, the second pause that gates it: a
#: dialer's leads for a list obey their own pause beside the dialer's).
Lane = str | tuple[str, str]

_SOURCE = resources.files("dispatcher.store").joinpath("broker.lua").read_text(encoding="utf-8")


class Broker:
    """The commands of broker.lua, bound to one Redis client and key prefix."""

    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        self._script: Any = client.register_script(_SOURCE)
        self._keys = [prefix]

    def fetch_command(
        self,
        consumer: str,
        *,
        ttl: int,
        queue: str,
        unacked: str,
        unacked_index: str,
        acks: list[Any],
        lanes: list[tuple[str, list[Lane]]],
        most: int = 1,
        load: bool = False,
    ) -> tuple[Any, ...]:
        """The ``fetch`` command as sent on the wire: ``EVALSHA``, or with ``load``
        ``EVAL`` (which loads the script again into a Redis that lost it: NOSCRIPT).

        kombu's unacked hash and index, the delivery tags of the acks deferred since
        the last poll, ``lanes``: (dialer, its lanes) each, in the order to serve
        them, and the most messages to take."""
        keys = Keys(queue=queue)
        args: list[Any] = [
            "fetch",
            consumer,
            ttl,
            keys.inflight_registry,
            keys.inflight(consumer),
            unacked,
            unacked_index,
            max(1, most),
            len(acks),
            *acks,
        ]
        for dialer, lists in lanes:
            args += [dialer, len(lists)]
            for lane in lists:
                name, gate = (lane, "") if isinstance(lane, str) else lane
                args += [name, gate]
        script = self._script
        head = ("EVAL", script.script) if load else ("EVALSHA", script.sha)
        return (*head, len(self._keys), *self._keys, *args)

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
        self._script(
            keys=self._keys,
            args=["record", unacked, unacked_index, tag, entry, inflight, raw],
            client=client,
        )
