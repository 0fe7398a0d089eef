"""kombu's Redis transport, made safe against lost pops, poison queue items, a Redis
that cannot serve, and hosts' clocks.

Six gaps in stock kombu matter for "no lead is lost" and "none added twice". The
channel here closes those of taking a message (1, 2, 4); its QoS,
:class:`workers.acks.ReliableQoS`, those of acknowledging it (3, 4, 5, 6):

1. **The pop window.** kombu takes a message with ``BRPOP`` and only then, in a
   second round trip, records it as unacknowledged. A worker killed between the
   two loses the message for good (seen here: about one message per six
   SIGKILLs under load). Here a poll is one script (``fetch`` in
   ``dispatcher/store/broker.lua``) that refreshes this consumer's heartbeat, registers
   its *in-flight list*, and atomically moves the next message into that list;
   only when the queue is empty does it block, with ``BRPOPLPUSH`` into the same
   list. The unacknowledged record and the removal from the in-flight list are
   then written in one MULTI/EXEC. A message is therefore always in the queue,
   in an in-flight list, or in kombu's unacked hash. In-flight lists of
   consumers whose heartbeat key expired go back to the queue
   (:meth:`dispatcher.store.fleet.Fleet.reap`, run by every worker's scheduler).
   Liveness is a key with a TTL in Redis: no host's clock is compared with
   another's, and a consumer that stalled past the TTL registers again on its
   next poll.
2. **Poison items.** An item pushed straight into the list that is not JSON
   kills the worker ("Unrecoverable error: JSONDecodeError"); JSON that is not a
   kombu envelope makes the consumer drop its connection and lose it. Every
   popped item is checked first; a bad one becomes an ``invalid_payload`` dead
   letter (raw text kept), written together with its removal from the in-flight
   list (if the letter cannot be written, the item stays and is tried again).
3. **Acks on a dead connection.** After Redis restarts, kombu may ack, reject
   or restore through a detached connection and crash the worker;
   :class:`~workers.acks.ReliableQoS` leaves those messages to the visibility sweep
   instead.
4. **A Redis that cannot serve** (full under ``noeviction``, a read-only replica,
   MISCONF, loading, stalled past DISPATCHER_REDIS_TIMEOUT_S, unreachable) refused
   or failed a write that kombu sends from Celery's event loop, and the error ended
   the worker ("Unrecoverable error"): the deferred acks' MULTI (Redis refuses to
   queue commands in a MULTI under OOM), a hand-back (``reject`` with requeue), the
   visibility sweep's lock, a PING on the control channel's pub/sub connection
   (answered MISCONF). Each now waits: the acks and hand-backs stay pending for the
   next poll, the sweep for the next sweep, the consumer backs off and polls again,
   and the episode is logged once (``redis.unavailable``,
   :mod:`dispatcher.store.redis_health`). Connection errors still go to Celery, which
   reconnects. Every command has a socket timeout; a poll (whose reply is read by
   the event loop) is dropped as stale by kombu once overdue by
   DISPATCHER_REDIS_TIMEOUT_S, and sent again.
5. **The sweep's clock.** kombu's visibility sweep compares the unacked index's
   scores with ``time.time()`` of whichever host sweeps: a host whose clock runs
   ahead put live in-flight messages back (a second copy ran), one behind delayed
   recovery. Scores are Redis TIME (the fetch script, and ``record`` for a message
   delivered outside it) and the sweep's ceiling is Redis TIME too
   (:meth:`~workers.acks.ReliableQoS.restore_visible`), as liveness is.
6. **Acks deferred** off the consumer thread (:class:`~workers.acks.ReliableQoS`):
   they ride along with the next poll.

This overrides private methods of kombu's Redis channel and QoS (``_brpop_start``,
``_brpop_read``, ``_receive``, ``_size``, ``_queue_bind``, ``QoS.append``,
``QoS.restore_visible``, ``QoS.reject``, ``QoS.pipe_or_acquire``...), tested with
kombu 5.7 (the range the package pins; tests/workers/test_workers_package.py proves the
reliable pop is the one running and that kombu still has each method overridden).
It needs one queue and no ``global_keyprefix``: a worker configured otherwise
refuses to start rather than fall back to stock ``BRPOP``.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from queue import Empty
from typing import Any

import orjson
import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from dispatcher.config import logs
from dispatcher.config.settings import get_settings
from dispatcher.store.backend import get_backend
from dispatcher.store.broker import Broker, Lane
from dispatcher.store.connection import write_refusal
from dispatcher.store.deadletter import DeadLetterStore
from dispatcher.store.redis_health import redis_availability
from workers.acks import ReliableQoS

__all__ = [
    "SentinelTransport",
    "Transport",
    "UnsupportedLayout",
    "consumer_id",
    "consumer_ttl_s",
    "is_envelope",
    "make_consumer_id",
]

_log = logs.get_logger("workers.transport")

_consumer_id: tuple[int, str] | None = None
#: How long the consumer waits after Redis refused a poll (full, read-only).
_REFUSED_BACKOFF_S = 0.5
#: The most messages one poll takes (each into a free prefetch slot).
_MOST_PER_FETCH = 64


class UnsupportedLayout(RuntimeError):
    """The worker was configured so that the reliable pop cannot run."""


def make_consumer_id() -> str:
    """A new name for this process, as in in-flight list keys and consumer heartbeats.

    Host and pid name it for people; a random nonce makes it unique per boot
    (with ``init: true`` every container's main process is pid 1, and two
    containers may share a hostname).
    """
    pid = os.getpid()
    return f"{socket.gethostname()}.{pid}.{uuid.uuid4().hex[:8]}"


def consumer_id() -> str:
    """This process's name (:func:`make_consumer_id`, made once per process)."""
    global _consumer_id
    pid = os.getpid()
    if _consumer_id is None or _consumer_id[0] != pid:  # once per process
        _consumer_id = (pid, make_consumer_id())
    return _consumer_id[1]


def consumer_ttl_s(scheduler_interval_s: float) -> int:
    """A consumer silent this long is dead: its in-flight pops go back to the queue."""
    return int(max(5.0, 20 * scheduler_interval_s))


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


def _envelope(item: Any) -> Any:
    # An envelope is plain JSON (the script checked its shape): orjson reads it in a
    # fifth of the time; kombu's decoder for anything it does not take.
    try:
        return orjson.loads(item)
    except orjson.JSONDecodeError:
        return loads(bytes_to_str(item))


class _ReliableChannel:
    """Mixin for a kombu Redis channel: the fetch script, then BRPOPLPUSH; vet items."""

    QoS = ReliableQoS
    # What the mixin uses of kombu's Redis channel (untyped there).
    client: Any
    connection: Any
    qos: Any
    active_queues: Any
    priority_steps: Any
    global_keyprefix: Any
    brpop_timeout: Any
    connection_errors: Any
    _queue_cycle: Any
    _q_for_pri: Any
    conn_or_acquire: Any
    #: monotonic time before which the consumer does not poll (Redis refused or failed)
    _backoff_until = 0.0
    _last_refusal_log = -1e9

    def _reliable_setup(self) -> None:
        if hasattr(self, "_phase"):
            return
        settings = get_settings()
        backend = get_backend(settings)
        if self.global_keyprefix:
            raise UnsupportedLayout(
                "the dispatcher's worker needs no global_keyprefix in the broker "
                "transport options (its reliable pop names the queue's keys itself)"
            )
        self._broker = backend.broker
        self._keys = backend.keys
        self._letters = DeadLetterStore(backend)
        self._ttl = consumer_ttl_s(settings.scheduler_interval_s)
        keys = backend.keys
        default = settings.dialers.resolve(None)
        default_name = default.name if default is not None else None
        # The lanes of every dialer this worker serves: realtime (leads for an agent,
        # then for a list), (for the default dialer, the queue's own list: messages of
        # older versions), bulk (agent, list). A dialer's list lanes also obey the pause
        # of its list jobs alone (add_lead's permissions).
        self._lanes: list[tuple[str, list[Lane]]] = [
            (d.name, self._dialer_lanes(d.name, d.list_scope, default_queue=d.name == default_name))
            for d in settings.served_dialers()
        ]
        self._turn = 0
        self._wake = keys.wake
        self._registry_queue = keys.queue
        #: "fetch": the fetch script's reply is pending; "block": the wait for a wake token
        self._phase: str | None = None
        self._use_eval = False
        self._inflight_raw: Any = None
        self._inflight_list: str | None = None
        self._recorded = False
        self._acks_sent: list[Any] = []
        self._poll_idle = False

    def _dialer_lanes(self, name: str, scope: str, *, default_queue: bool) -> list[Lane]:
        keys = self._keys
        lanes: list[Lane] = [keys.lane(name, "realtime"), (keys.list_lane(name, "realtime"), scope)]
        if default_queue:
            lanes.append(keys.queue)
        lanes += [keys.lane(name, "bulk"), (keys.list_lane(name, "bulk"), scope)]
        return lanes

    def basic_consume(self, queue: Any, *args: Any, **kwargs: Any) -> Any:
        ret = super().basic_consume(queue, *args, **kwargs)  # type: ignore[misc]
        steps = self.priority_steps
        if len(self.active_queues) > 1 or len(steps) != 1:
            raise UnsupportedLayout(
                "a dispatcher worker consumes exactly one queue with one priority step "
                f"(DISPATCHER_QUEUE); asked for {sorted(self.active_queues)} "
                f"with priority steps {list(steps)}: run one worker per queue instead"
            )
        return ret

    # Declaring queues at consumer start-up must not crash a worker while Redis is
    # full: kombu counts a queue inside MULTI/EXEC, which Redis refuses under OOM even
    # for reads, and records bindings with a write. Our producers push straight onto
    # the queue list, so a binding that cannot be written now costs nothing.
    def _size(self, queue: Any) -> int:
        with self.conn_or_acquire() as client:
            steps = self.priority_steps
            return sum(int(client.llen(self._q_for_pri(queue, p))) for p in steps)

    def _queue_bind(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._queue_bind(*args, **kwargs)  # type: ignore[misc]
        except redis.ResponseError as exc:
            if write_refusal(exc) is None:
                raise
            redis_availability().failed(exc, during="queue binding")
            return None

    def maybe_refresh_binding_expiry(self) -> Any:
        # Celery's control queues expire: kombu refreshes their bindings every second
        # with a script, and logs a traceback each time Redis refuses it. Said once
        # per episode instead; anything else as kombu does.
        try:
            return super().maybe_refresh_binding_expiry()  # type: ignore[misc]
        except redis.RedisError as exc:
            if not redis_availability().failed(exc, during="control bindings"):
                raise
            return None

    def _receive(self) -> Any:
        # Celery's remote control listens on a pub/sub connection, which redis-py
        # pings now and then: Redis answers a PING with MISCONF while it cannot
        # persist, and kombu raised that into Celery's loop ("Unrecoverable error").
        # The subscription stays; the episode is said once.
        try:
            return super()._receive()  # type: ignore[misc]
        except redis.ResponseError as exc:
            if not redis_availability().failed(exc, during="control"):
                raise
            return False

    def dispatcher_broker(self) -> Broker:
        """The broker's commands (dispatcher/store/broker.lua) this consumer runs."""
        self._reliable_setup()
        return self._broker

    def redis_failed(self, exc: BaseException, *, during: str, backoff: bool = True) -> None:
        """A command of this consumer failed. Redis unavailable (full, read-only, slow,
        away): logged once per episode; anything else once per 10 s. Either way the
        consumer waits a moment before it polls again (``backoff``)."""
        if backoff:
            self._backoff_until = time.monotonic() + _REFUSED_BACKOFF_S
        if redis_availability().failed(exc, during=during):
            return
        now = time.monotonic()
        if now - self._last_refusal_log >= 10.0:  # one line per 10 s, not per poll
            self._last_refusal_log = now
            _log.error(
                "consumer.redis_error", during=during, error=f"{type(exc).__name__}: {exc}"[:300]
            )

    def take_inflight(self) -> tuple[Any, str | None, bool]:
        """(the raw item to clear from the in-flight list or None, that list, whether the
        fetch already recorded the message as unacked)."""
        raw, key = getattr(self, "_inflight_raw", None), getattr(self, "_inflight_list", None)
        recorded = getattr(self, "_recorded", False)
        self._inflight_raw = None
        self._recorded = False
        return raw, key, recorded

    def _brpop_start(self, timeout: Any = None) -> Any:
        self._reliable_setup()
        queues = self._queue_cycle.consume(len(self.active_queues))
        if queues and queues[0] != self._registry_queue:
            # Not the dispatcher's queue: a reply queue of Celery's start-up handshake
            # (mingle) or of a control command, read by another channel of the same
            # connection. kombu's own pop serves it; the fetch script would hand it a lead.
            self._phase = "kombu"
            try:
                return super()._brpop_start(timeout)  # type: ignore[misc]
            except redis.ResponseError as exc:
                # Refused before anything was sent (see _send): poll again later.
                self._phase = None
                vars(self).update(_in_poll=None)
                self.redis_failed(exc, during="fetch")
                return None
        if not queues or time.monotonic() < self._backoff_until:
            return None  # nothing sent: the poller waits its timeout, then asks again
        if self._poll_idle:
            # The last poll found the queue empty: acks deferred since then go now.
            self._poll_idle = False
            if not self.qos.flush_acks():
                return None  # refused (logged): poll again after the back-off
        self._queue = queues[0]
        consumer = consumer_id()
        self._inflight_list = self._keys.inflight(consumer)
        # Each poll starts with the next dialer: none starves another.
        self._turn = (self._turn + 1) % len(self._lanes)
        order = self._lanes[self._turn :] + self._lanes[: self._turn]
        # The acks deferred since the last poll ride along (kept until the reply says
        # the script ran). Those of a fetch whose reply never came (its connection was
        # dropped as stale) go again: removing an ack twice is harmless.
        if self._acks_sent:
            self.qos.return_acks(self._acks_sent)
        self._acks_sent = self.qos.take_acks()
        command = self._broker.fetch_command(
            consumer,
            ttl=self._ttl,
            queue=self._registry_queue,
            unacked=self.qos.unacked_key,
            unacked_index=self.qos.unacked_index_key,
            acks=self._acks_sent,
            lanes=order,
            most=self._free_slots(),
            load=self._use_eval,
        )
        self._phase = "fetch"
        # The attributes kombu's own _brpop_start sets (its poller and health checks).
        vars(self).update(_in_poll=self.client.connection, _brpop_sent_at=time.monotonic())
        self._send(*command)
        return None

    def _send(self, *command: Any) -> None:
        """Send a poll. Unreachable or stalled (its connection's handshake timed out):
        raised, kombu reconnects. Refused before it left (redis-py pings a connection
        idle past its health-check interval, and Redis answers that PING with MISCONF
        while it cannot persist): nothing is sent, the consumer polls again after its
        back-off. Either way the episode is said once."""
        try:
            self.client.connection.send_command(*command)
        except (*self.connection_errors, redis.ResponseError) as exc:
            if self._phase == "fetch":
                self.qos.return_acks(self._acks_sent)
                self._acks_sent = []
            self._phase = None
            vars(self).update(_in_poll=None)
            if not isinstance(exc, redis.ResponseError):
                redis_availability().failed(exc, during="fetch")
                raise
            self.redis_failed(exc, during="fetch")

    def _free_slots(self) -> int:
        """How many messages this poll may take: the consumer's free prefetch slots (a
        worker whose slots all freed at once refills them in one round trip)."""
        try:
            free = self.qos.can_consume_max_estimate()
        except Exception:
            return 1
        if free is None:
            return 1
        return max(1, min(int(free), _MOST_PER_FETCH))

    def _block(self, timeout: Any) -> None:
        """Nothing to take: wait for a wake token (pushed with every enqueue, retry and
        replay) or the timeout, then fetch again. The token carries nothing: a
        consumer killed while waiting loses no message."""
        self.qos.flush_acks()
        self._phase = "block"
        vars(self).update(_brpop_sent_at=time.monotonic())
        self._send("BRPOP", self._wake, f"{timeout:.3f}")

    def _brpop_read(self, **options: Any) -> Any:
        self._reliable_setup()
        connection = self.client.connection
        phase, self._phase = self._phase, None
        if phase == "kombu":
            return super()._brpop_read(**options)  # type: ignore[misc]
        try:
            try:
                name = "EVALSHA" if phase == "fetch" else "BRPOP"
                reply = self.client.parse_response(connection, name, **options)
            except self.connection_errors as exc:
                # Disconnect so the next iteration reconnects (as kombu does).
                if phase == "fetch":
                    self.qos.return_acks(self._acks_sent)
                self._acks_sent = []
                redis_availability().failed(exc, during="fetch")
                connection.disconnect()
                raise
            except redis.ResponseError as exc:
                if phase == "fetch":
                    self.qos.return_acks(self._acks_sent)
                self._acks_sent = []
                self._refused(exc)
                raise Empty() from None
            self._acks_sent = []
            if phase == "fetch":
                # The fetch script always writes (this consumer's heartbeat).
                redis_availability().ok()
                # It ran, so Redis holds it (an EVAL loads it): by its SHA from now on.
                self._use_eval = False
            if phase != "fetch":
                # Woken (or timed out): fetch at once.
                self._poll_idle = reply is None
                raise Empty()
            item = reply[0] if reply else None
            if item is None:
                timeout = float(self.brpop_timeout or 1)
                if len(reply) > 2:
                    # Jobs wait for a paused or rate-limited dialer: look again when it
                    # opens, not only when something new is pushed.
                    timeout = min(timeout, max(0.01, float(reply[2])))
                self._block(timeout)
                raise Empty()
            recorded = len(reply) > 2 and reply[2] in (b"recorded", "recorded")
            if not recorded and not is_envelope(item):
                self._poison(item)
                raise Empty()
            self._queue_cycle.rotate(self._queue)
            if recorded:
                # One or more envelopes, each already in kombu's unacked record.
                for at in range(0, len(reply) - 2, 3):
                    self._recorded = True
                    self.connection._deliver(_envelope(reply[at]), self._queue)
                return True
            self._inflight_raw = item
            try:
                self.connection._deliver(loads(bytes_to_str(item)), self._queue)
            except redis.ResponseError as exc:
                # The unacked record was refused (Redis full): the item stays in our
                # in-flight list and the next fetch hands it out again.
                self._refused(exc)
                raise Empty() from None
            return True
        finally:
            self._inflight_raw = None
            self._recorded = False
            if self._phase is None:
                vars(self).update(_in_poll=None)
                # kombu >= 5.7: the connection is idle, a pending re-auth may go now.
                flush = getattr(self, "_flush_brpop_reauth", None)
                if flush is not None:
                    flush()

    def _refused(self, exc: redis.ResponseError) -> None:
        if isinstance(exc, redis.exceptions.NoScriptError) or str(exc).startswith("NOSCRIPT"):
            self._use_eval = True  # EVAL loads it (Redis restarted or flushed its scripts)
            return
        self._use_eval = False
        self.redis_failed(exc, during="fetch")

    def _poison(self, item: Any) -> None:
        raw = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
        why = "queue item is not a Celery message"
        try:
            letter = self._letters.poison(
                raw={"raw": raw[:10_000], "queue": str(self._queue)},
                error=why,
                inflight=self._inflight_list or "",
                item=item,
            )
        except Exception as exc:  # the worker must survive; the item stays and is retried
            self._backoff_until = time.monotonic() + _REFUSED_BACKOFF_S
            if redis_availability().failed(exc, during="dead letter"):
                return
            now = time.monotonic()
            if now - self._last_refusal_log >= 10.0:
                self._last_refusal_log = now
                _log.error("consumer.dead_letter_failed", error=f"{type(exc).__name__}: {exc}")
            return
        _log.warning(
            "lead.dead_lettered", job_id=letter.job_id, reason="invalid_payload", error=why
        )


class Channel(_ReliableChannel, kombu_redis.Channel):
    pass


class SentinelChannel(_ReliableChannel, kombu_redis.SentinelChannel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
