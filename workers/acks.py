"""kombu's record of delivered messages, kept safe: acks, hand-backs and the sweep.

The acknowledgement side of the worker's broker transport (the taking side, and the
six gaps of stock kombu that both close: :mod:`workers.transport`). kombu records each
message it delivers in an *unacked* hash and index until the task acknowledges it; a
message that stays there longer than the visibility timeout goes back to the queue
(the sweep). :class:`ReliableQoS` keeps that record through what stock kombu does not
survive:

* **acks deferred** off the consumer thread: an ack's write rides along with the next
  poll (the fetch script writes it), a round trip the consumer makes anyway;
* **a dead connection**: after Redis restarts, kombu may ack, reject or restore through
  a detached connection and crash the worker; those messages are left to the sweep;
* **a Redis that cannot serve** (full, read-only, stalled, away): the acks' write, a
  hand-back and the sweep's lock wait for the next poll or sweep instead of raising
  into Celery's loop, and the episode is logged once;
* **the sweep's clock**: the unacked index is scored with Redis TIME (the fetch script,
  and ``record`` for a message delivered outside it) and the sweep's ceiling is Redis
  TIME too, never the sweeping host's clock.

It overrides methods of kombu's ``QoS`` (``append``, ``ack``, ``reject``,
``restore_unacked``, ``restore_visible``, ``pipe_or_acquire``, ``can_consume``...),
pinned to kombu 5.7 (tests/workers/test_workers_package.py checks each one still exists), and
uses the channel of :mod:`workers.transport` through its public methods
(``take_inflight``, ``redis_failed``, ``dispatcher_broker``).
"""

from __future__ import annotations

import collections
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from dispatcher.store.redis_health import redis_availability

__all__ = ["ReliableQoS"]


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
        #: messages handed back (a job whose Redis failed) while Redis refused the
        #: write: put back on the queue by the next flush
        self._pending_restores: collections.deque[Any] = collections.deque()

    def _add_pending_acks(self, pipe: Any) -> None:
        while self._pending_acks:
            self._remove_from_indices(self._pending_acks.popleft(), pipe)

    def flush_acks(self) -> bool:
        """Write the deferred acks (one round trip) and hand-backs now, if there are any.

        False when Redis refused or failed (full, read-only, away): everything stays
        pending for the next poll, the consumer backs off, and the failure is logged
        once per episode. Nothing here raises into Celery's loop: a refused MULTI
        (``OutOfMemoryError``) used to end the worker with "Unrecoverable error".
        """
        if self._detached() or not (self._pending_acks or self._pending_restores):
            return True
        acks = list(self._pending_acks)
        self._pending_acks.clear()
        try:
            if acks:
                with self.pipe_or_acquire() as pipe:
                    for tag in acks:
                        self._remove_from_indices(tag, pipe)
                    pipe.execute()
                acks = []
            while self._pending_restores:
                self.restore_by_tag(self._pending_restores[0], leftmost=True)
                self._pending_restores.popleft()
        except redis.RedisError as exc:
            self._pending_acks.extendleft(reversed(acks))
            self.channel.redis_failed(exc, during="acks")
            return False
        redis_availability().ok()
        return True

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

    #: With the lead engine, poll only once this many prefetch slots are free (it
    #: holds messages beyond its call slots, workers/engine.py): each poll then takes
    #: several messages, and its system calls (send, register, wait, read) are shared.
    refill_at = 1

    def can_consume(self) -> bool:
        pcount = self.prefetch_count
        if not pcount:
            return True
        held = len(self._delivered) - len(self._dirty)
        if held >= pcount:
            return False
        # Nothing held: poll at once (new work, or an idle worker).
        return held == 0 or pcount - held >= min(self.refill_at, pcount)

    def take_acks(self) -> list[Any]:
        """The deferred acks, for the next fetch to write (put back if it fails)."""
        acks = list(self._pending_acks)
        self._pending_acks.clear()
        return acks

    def return_acks(self, acks: list[Any]) -> None:
        self._pending_acks.extendleft(reversed(acks))

    def append(self, message: Any, delivery_tag: Any) -> None:
        raw, inflight, recorded = self.channel.take_inflight()
        if recorded:
            # The fetch script wrote kombu's unacked entry in the same step as the pop.
            virtual.QoS.append(self, message, delivery_tag)
            return
        delivery = message.delivery_info
        exchange, routing_key = delivery["exchange"], delivery["routing_key"]
        with self.pipe_or_acquire() as pipe:
            # Stamped with Redis's clock (kombu stamps this host's), as fetch stamps it.
            self.channel.dispatcher_broker().record(
                unacked=self.unacked_key,
                unacked_index=self.unacked_index_key,
                tag=delivery_tag,
                entry=json.dumps([message._raw, exchange, routing_key]),
                inflight=inflight if raw is not None and inflight else "",
                raw=raw if raw is not None else "",
                client=pipe,
            )
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
        if not requeue:
            self.ack(delivery_tag)  # dropped: the same Redis write as an ack, deferred
            return
        try:
            super().reject(delivery_tag, requeue=True)
        except redis.RedisError as exc:
            # A job handed back because Redis failed, and Redis refuses the hand-back
            # too: it stays in kombu's unacked record and goes back with the next flush
            # (or the visibility sweep), never raised into Celery's loop.
            self._pending_restores.append(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)
            self.channel.redis_failed(exc, during="hand-back")

    def restore_unacked(self, client: Any = None) -> Any:
        if client is None and self._detached():
            self._delivered.clear()
            return None
        self.flush_acks()
        try:
            return super().restore_unacked(client)
        except redis.RedisError as exc:
            # What could not go back now stays in the unacked record: the visibility
            # sweep of any worker returns it.
            self._delivered.clear()
            redis_availability().failed(exc, during="hand-back")
            return None

    def restore_unacked_once(self, stderr: Any = None) -> Any:
        # The channel is closing (a warm shutdown): write the deferred acks first.
        self.flush_acks()
        return super().restore_unacked_once(stderr)

    # kombu's sweep compares the index's scores (Redis TIME, written by the fetch
    # script and by `record`) with this host's time.time(): a host whose clock ran
    # ahead put live in-flight messages back (a second copy ran), one behind delayed
    # recovery. Here the ceiling comes from Redis's clock, read under the sweep's
    # lock, just before the index is read; and a sweep that Redis refuses (full,
    # read-only, away) waits for the next one instead of raising into Celery's loop
    # (on a reconnection kombu sweeps once outside its timer's guard).
    _sweeps = 0

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        self._sweeps += 1
        if (self._sweeps - 1) % (interval or 1):
            return
        try:
            with (
                self.channel.conn_or_acquire() as client,
                kombu_redis.Mutex(client, self.unacked_mutex_key, self.unacked_mutex_expire),
            ):
                seconds, micros = client.time()
                ceiling = int(seconds) + int(micros) / 1e6 - float(self.visibility_timeout)
                visible = client.zrange(
                    self.unacked_index_key,
                    ceiling,
                    0,
                    desc=True,
                    byscore=True,
                    offset=num and start,
                    num=num,
                    withscores=True,
                )
                for tag, _score in visible or []:
                    self.restore_by_tag(tag, client)
        except kombu_redis.MutexHeld:
            return
        except redis.RedisError as exc:
            self.channel.redis_failed(exc, during="visibility sweep", backoff=False)
            return
        redis_availability().ok()
