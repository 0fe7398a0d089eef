"""What waits in the broker's lists, read straight from Redis."""

from __future__ import annotations

import redis

from dispatcher.config.settings import Settings
from dispatcher.store.keys import Keys

__all__ = ["queue_length", "queue_lists", "queued_envelopes"]


def queue_lists(settings: Settings) -> list[str]:
    """Every list jobs wait in: each dialer's lanes (leads for an agent, then for a list),
    and the queue's own (older versions)."""
    keys = Keys.of(settings)
    lanes = [
        named(name, lane)
        for named in (keys.lane, keys.list_lane)
        for name in settings.dialers.names
        for lane in ("realtime", "bulk")
    ]
    return [*lanes, settings.queue]


def queued_envelopes(settings: Settings) -> list[bytes]:
    """Every waiting broker message, lane by lane (each list newest first)."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for name in queue_lists(settings):
            pipe.lrange(name, 0, -1)
        return [item for items in pipe.execute() for item in items]
    finally:
        client.close()


def queue_length(settings: Settings) -> int:
    return len(queued_envelopes(settings))
