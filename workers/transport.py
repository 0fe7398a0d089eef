"""kombu's Redis transport, made safe against lost pops and poison queue items.

Three gaps in stock kombu matter for "no lead is lost":

1. **The pop window.** kombu takes a message with ``BRPOP`` and only then, in a
   second round trip, records it as unacknowledged. A worker killed between the
   two loses the message for good (seen here: about one message per six
   SIGKILLs under load). We pop with ``BRPOPLPUSH`` instead, which atomically
   moves the message into this process's *in-flight list*; the unacknowledged
   record and the removal from the in-flight list are then written in one
   MULTI/EXEC. A message is therefore always in the queue, in an in-flight list,
   or in kombu's unacked hash. :func:`reap_inflight` (run by every worker's
   scheduler thread) returns the in-flight items of processes whose heartbeat
   stopped.
2. **Poison items.** An item pushed straight into the list that is not JSON
   kills the worker ("Unrecoverable error: JSONDecodeError"); JSON that is not a
   kombu envelope makes the consumer drop its connection and lose it. Every
   popped item is checked first; a bad one becomes an ``invalid_payload`` dead
   letter (raw text kept) and kombu sees an empty poll.
3. **Acks on a dead connection.** After Redis restarts, kombu may ack, reject
   or restore through a detached connection and crash the worker;
   :class:`ReliableQoS` leaves those messages to the visibility sweep instead.

Selected in workers/celery_app.py through ``broker_transport``; the queue is
consumed with a single priority step, so there is one list to pop from.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from dispatcher import logs

__all__ = [
    "SentinelTransport",
    "Transport",
    "consumer_id",
    "inflight_key",
    "inflight_registry",
    "is_envelope",
    "reap_inflight",
]

_log = logs.get_logger("workers.transport")


_consumer_id: tuple[int, str] | None = None


def consumer_id() -> str:
    """This process, as named in in-flight list keys and consumer heartbeats."""
    global _consumer_id
    pid = os.getpid()
    if _consumer_id is None or _consumer_id[0] != pid:  # computed once per process
        _consumer_id = (pid, f"{socket.gethostname()}.{pid}")
    return _consumer_id[1]


def inflight_registry(queue: str) -> str:
    """Set of the in-flight list keys of every consumer of ``queue``."""
    return f"_dispatcher.inflight.{queue}"


def inflight_key(queue: str, consumer: str) -> str:
    return f"_dispatcher.inflight.{queue}.{consumer}"


def is_envelope(item: Any) -> bool:
    """True if ``item`` (bytes or str) parses as a kombu message envelope."""
    try:
        data = json.loads(item)
    except (ValueError, TypeError):
        return False
    if not isinstance(data, dict):
        return False
    props = data.get("properties")
    return (
        isinstance(props, dict)
        and isinstance(props.get("delivery_info"), dict)
        and "body" in data
        and isinstance(data.get("headers", {}), dict)
    )


def _dead_letter_item(queue: Any, item: Any) -> None:
    from workers.tasks import get_runner

    raw = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
    try:
        letter = get_runner().dead_letters.record(
            job={"raw": raw[:10_000], "queue": str(queue)},
            reason="invalid_payload",
            error="queue item is not a Celery message",
            http_status=None,
            attempts=0,
            first_failed_at=None,
        )
        _log.warning(
            "lead.dead_lettered",
            job_id=letter.job_id,
            reason="invalid_payload",
            error="queue item is not a Celery message",
        )
    except Exception as exc:  # the worker must survive even if this write fails
        _log.error("consumer.dead_letter_failed", error=f"{type(exc).__name__}: {exc}")


class ReliableQoS(kombu_redis.QoS):
    """Records the unacknowledged message and clears the in-flight copy atomically.

    Acknowledgements are deferred: an ack's Redis write (removing the message from
    kombu's unacked hash and index) rides along in the next ``append`` pipeline, a
    round trip the consumer makes anyway, or is flushed when the consumer finds
    the queue empty or the channel closes. That takes one blocking round trip per
    message off the consumer thread, which serves every pool slot. A worker that
    dies with acks pending leaves those messages in the unacked hash: the
    visibility sweep redelivers them and their execution record (``done``) stops
    a second call, as for a worker killed before its ack.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending_acks: collections.deque[Any] = collections.deque()

    def _add_pending_acks(self, pipe: Any) -> None:
        while self._pending_acks:
            self._remove_from_indices(self._pending_acks.popleft(), pipe)

    def flush_acks(self) -> None:
        """Write the deferred acks now (one round trip), if there are any."""
        if not self._pending_acks or self._detached():
            return
        with self.pipe_or_acquire() as pipe:
            self._add_pending_acks(pipe)
            pipe.execute()

    # kombu's pipe_or_acquire builds a new redis.Redis for every pipeline, and
    # redis-py's constructor (its response-callback table) cost about 6% of a
    # worker's CPU, on the consumer thread that every pool slot waits for. One
    # client per connection pool instead (a client is thread-safe; each
    # pipeline is its own object).
    _client: Any = None
    _client_pool: Any = None

    @contextlib.contextmanager
    def pipe_or_acquire(self, pipe: Any = None, client: Any = None) -> Iterator[Any]:
        if pipe is not None:
            yield pipe
            return
        if client is None:
            pool = self.channel.pool
            if self._client is None or self._client_pool is not pool:
                self._client = self.channel._create_client()
                self._client_pool = pool
            client = self._client
        yield client.pipeline()

    def append(self, message: Any, delivery_tag: Any) -> None:
        delivery = message.delivery_info
        exchange, routing_key = delivery["exchange"], delivery["routing_key"]
        raw, inflight = self.channel._take_inflight()
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(
                self.unacked_key,
                delivery_tag,
                json.dumps([message._raw, exchange, routing_key]),
            )
            if raw is not None:
                pipe.lrem(inflight, 1, raw)
            self._add_pending_acks(pipe)
            pipe.execute()
        virtual.QoS.append(self, message, delivery_tag)

    # After a lost connection, kombu closes the channel, and a task finishing
    # later acknowledges its message on it: kombu then builds a pool from the
    # detached connection, raises AttributeError, and Celery exits with
    # "Unrecoverable error" (kombu 5.7). On a detached channel the message is
    # still in the unacked hash, where the visibility-timeout sweep of any worker
    # finds it; redelivered, the job's execution record stops a second call.
    def _detached(self) -> bool:
        connection = getattr(self.channel, "connection", None)
        return connection is None or getattr(connection, "client", None) is None

    def ack(self, delivery_tag: Any) -> None:
        if not self._detached():
            self._pending_acks.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if self._detached():
            virtual.QoS.ack(self, delivery_tag)
            return
        super().reject(delivery_tag, requeue=requeue)

    def restore_unacked(self, client: Any = None) -> Any:
        if client is None and self._detached():
            self._delivered.clear()
            return None
        with contextlib.suppress(redis.RedisError):
            self.flush_acks()
        return super().restore_unacked(client)

    def restore_unacked_once(self, stderr: Any = None) -> Any:
        # The channel is closing (a warm shutdown): write the deferred acks first.
        with contextlib.suppress(redis.RedisError):
            self.flush_acks()
        return super().restore_unacked_once(stderr)


class _ReliableChannel:
    """Mixin for a kombu Redis channel: BRPOPLPUSH into an in-flight list, vet items."""

    client: Any
    QoS = ReliableQoS

    def _inflight_setup(self) -> None:
        if not hasattr(self, "_inflight_raw"):
            self._inflight_raw: Any = None
            self._inflight_list: str | None = None
            self._poll_idle = False
            self._inflight_registered: set[str] = set()

    def _take_inflight(self) -> tuple[Any, str | None]:
        self._inflight_setup()
        raw, key = self._inflight_raw, self._inflight_list
        self._inflight_raw = None
        return raw, key

    def _brpop_start(self, timeout: Any = None) -> Any:
        self._inflight_setup()
        if timeout is None:
            timeout = self.brpop_timeout  # type: ignore[attr-defined]
        queues = self._queue_cycle.consume(len(self.active_queues))  # type: ignore[attr-defined]
        keys = [
            self._q_for_pri(queue, pri)  # type: ignore[attr-defined]
            for pri in self.priority_steps  # type: ignore[attr-defined]
            for queue in queues
        ]
        if len(keys) != 1 or self.global_keyprefix:  # type: ignore[attr-defined]
            self._inflight_list = None
            # Stock BRPOP path: no idle signal, so deferred acks go before each poll.
            self.qos.flush_acks()  # type: ignore[attr-defined]
            return super()._brpop_start(timeout)  # type: ignore[misc]
        if self._poll_idle:
            # The last poll found the queue empty: acks deferred since then go now.
            self._poll_idle = False
            self.qos.flush_acks()  # type: ignore[attr-defined]
        source = keys[0]
        target = inflight_key(source, consumer_id())
        if target not in self._inflight_registered:
            # A new channel of this process: whatever our list still holds was
            # popped by a channel that died with its connection (Redis restart),
            # so it goes back to the queue before we pop again.
            registry = inflight_registry(source)
            returned = int(self.client.eval(_REAP, 3, registry, target, source))
            if returned:
                _log.warning("worker.inflight_returned", consumer=consumer_id(), messages=returned)
            self.client.sadd(registry, target)
            self._inflight_registered.add(target)
        self._inflight_list = target
        # The attributes kombu's own _brpop_start sets (its health checks read them).
        vars(self).update(_in_poll=self.client.connection, _brpop_sent_at=time.monotonic())
        self._inflight_source = source
        self.client.connection.send_command("BRPOPLPUSH", source, target, timeout or 0)
        return None

    def _brpop_read(self, **options: Any) -> Any:
        self._inflight_setup()
        original = self.client.parse_response
        moving = self._inflight_list is not None
        poison: list[tuple[Any, Any]] = []

        def vetted(connection: Any, command: str, **kwargs: Any) -> Any:
            # One reply only: whatever kombu runs next must reach Redis unwrapped.
            del self.client.parse_response
            if moving:
                item = original(connection, "BRPOPLPUSH", **kwargs)
                result = (self._inflight_source, item) if item is not None else None
                self._poll_idle = item is None
            else:
                result = original(connection, command, **kwargs)
            if result and not is_envelope(result[1]):
                poison.append(result)
                return None  # kombu: an empty poll
            if result and moving:
                self._inflight_raw = result[1]
            return result

        self.client.parse_response = vetted
        try:
            return super()._brpop_read(**options)  # type: ignore[misc]
        finally:
            vars(self.client).pop("parse_response", None)
            self._inflight_raw = None
            for queue, item in poison:
                _dead_letter_item(queue, item)
                if moving:
                    self.client.lrem(self._inflight_list, 1, item)


class Channel(_ReliableChannel, kombu_redis.Channel):
    pass


class SentinelChannel(_ReliableChannel, kombu_redis.SentinelChannel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


# Moves every item of a dead consumer's in-flight list back onto the queue,
# then forgets the list.
# KEYS: registry, in-flight list, queue.
_REAP = """
local n = 0
while true do
  local item = redis.call('RPOPLPUSH', KEYS[2], KEYS[3])
  if not item then break end
  n = n + 1
end
redis.call('SREM', KEYS[1], KEYS[2])
return n
"""


def reap_inflight(client: redis.Redis, *, queue: str, alive: set[str]) -> int:
    """Return the in-flight items of consumers that are not ``alive`` to the queue.

    ``alive`` are the consumer ids with a fresh heartbeat (the caller decides
    what fresh means); a worker heartbeats before its consumer starts.
    """
    registry = inflight_registry(queue)
    moved = 0
    for key in client.smembers(registry):
        name = key.decode() if isinstance(key, bytes) else str(key)
        owner = name[len(inflight_key(queue, "")) :]
        if owner in alive:
            continue
        n = int(client.eval(_REAP, 3, registry, name, queue))
        if n:
            _log.warning("worker.inflight_returned", consumer=owner, messages=n)
        moved += n
    return moved
