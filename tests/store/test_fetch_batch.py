"""The consumer's fetch takes several messages in one round trip (dispatcher/store/broker.lua).

Run against a real Redis, the script exactly as the transport calls it: every
message taken is recorded in kombu's unacked hash and index in the same step,
at most as many as the consumer has free slots, one at a time from a dialer
with a rate limit, and a poison item stops the batch and waits in the in-flight
list for the next poll.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from dispatcher.config.settings import Settings
from dispatcher.model.jobs import broker_envelope
from dispatcher.ops.producer import prepare_job
from dispatcher.store.backend import get_backend
from tests.support.settings import make_settings

UNACKED, INDEX = "unacked", "unacked_index"


def _fetch(settings: Settings, most: int) -> list[Any]:
    backend = get_backend(settings)
    keys = backend.keys
    lanes = [("default", [keys.lane("default", "realtime"), keys.lane("default", "bulk")])]
    # The command exactly as the transport sends it (EVAL: loads the script as it runs).
    command = backend.broker.fetch_command(
        "c1",
        ttl=30,
        queue=keys.queue,
        unacked=UNACKED,
        unacked_index=INDEX,
        acks=[],
        lanes=lanes,
        most=most,
        load=True,
    )
    reply: list[Any] = backend.redis.execute_command(*command)
    return reply


def _push(settings: Settings, count: int, lane: str = "bulk") -> list[str]:
    keys = get_backend(settings).keys
    client = redis.Redis.from_url(settings.redis_url)
    tags = []
    for i in range(count):
        job = prepare_job(
            {"agent_user": "1000", "phone_number": f"72755{i:05d}"}, settings=settings
        )
        envelope = broker_envelope(job.to_message(), queue=keys.lane("default", lane))
        tags.append(json.loads(envelope)["properties"]["delivery_tag"])
        client.lpush(keys.lane("default", lane), envelope)
    return tags


def test_one_poll_takes_up_to_the_free_slots_each_recorded_as_unacked(redis_url: str) -> None:
    settings = make_settings(redis_url)
    tags = _push(settings, 5)
    reply = _fetch(settings, most=3)
    assert len(reply) == 9 and reply[2::3] == ["recorded"] * 3
    taken = [json.loads(item)["properties"]["delivery_tag"] for item in reply[0::3]]
    assert taken == tags[:3]  # in queue order
    client = redis.Redis.from_url(redis_url)
    assert sorted(client.hkeys(UNACKED)) == sorted(t.encode() for t in taken)
    assert client.zcard(INDEX) == 3
    rest = _fetch(settings, most=10)
    assert len(rest) == 6 and client.hlen(UNACKED) == 5
    assert _fetch(settings, most=10) == [None, "empty"]


def test_a_poison_item_ends_the_batch_and_is_handed_out_alone_next(redis_url: str) -> None:
    settings = make_settings(redis_url)
    keys = get_backend(settings).keys
    client = redis.Redis.from_url(redis_url)
    _push(settings, 2)
    client.lpush(keys.lane("default", "bulk"), b"not json")
    _push(settings, 1)
    reply = _fetch(settings, most=10)
    assert len(reply) == 6  # the two envelopes before it
    assert client.lrange(keys.inflight("c1"), 0, -1) == [b"not json"]
    assert _fetch(settings, most=10) == ["not json", "held"]
    client.delete(keys.inflight("c1"))  # as its dead letter would
    assert len(_fetch(settings, most=10)) == 3


def test_a_dialer_with_a_rate_limit_gives_one_message_a_poll(redis_url: str) -> None:
    settings = make_settings(redis_url)
    keys = get_backend(settings).keys
    _push(settings, 3)
    redis.Redis.from_url(redis_url).set(f"{keys.prefix}:rate:default", "1")  # a slot taken
    assert len(_fetch(settings, most=10)) == 3
