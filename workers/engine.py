"""The lead engine: a worker's jobs on one event loop instead of one thread per job.

A worker waits on VICIdial almost all of a job's time. With Celery's thread
pool, every job holds a thread and crosses Celery's per-message path (request
object, tracer, pool hand-off): at 100 ms VICIdial latency one process topped
out near 200 leads/s with a core busy, most of it spent on that path and on
threads taking turns at the GIL (docs/BENCHMARKS.md). Here the Celery consumer
hands each add-lead message straight to one event loop thread
(:func:`strategy`), which claims it, calls VICIdial over asyncio
(:class:`workers.async_vicidial.AsyncVicidialClient`), stores the success and
acknowledges the message: the same steps, the same Redis scripts and
the same log events as :class:`workers.runner.JobRunner`: the delivery and its
writes are the runner's (:class:`workers.delivery.Writes`), and every rule past the
common path is the runner's own method. The request leaves from one place,
:meth:`LeadEngine._call_vicidial`: external_add_lead for a lead for an agent, add_lead
(:class:`workers.list_client.AsyncListClient`) for a lead for a list, each client one per
dialer per process, with the same fence, deadline and answer cap.

Only the common path runs on the loop: a claim that goes straight to the call,
and a success stored in one write. Everything else (a bad message, a paused
dialer, a failed call and its retry or dead letter, a reconcile step, a
replica to wait for, Redis away) continues on a thread of a pool (threads made
when needed) with the runner's own code, exactly as the threaded worker runs it,
so there is one implementation of every rule. The loop's Redis commands go out in
one pipeline per turn of the loop (:mod:`workers.batching`); one that fails is
not retried on the loop: the job moves to a thread that retries it with the same
token (which the scripts recognise), so a slow Redis never stalls other calls.
The log lines of one turn of the loop are written in one call, before that
turn's Redis writes leave (:meth:`LeadEngine._commit`); a request's bytes leave
only after the held lines are written (the HTTP client writes them first).

Guarantees are the threaded worker's: a message is acknowledged only after its
outcome is stored, a Redis failure hands it back to the queue, and a warm
shutdown lets every accepted job finish (each call ends within its deadline).
At most ``--concurrency`` calls are in flight; the consumer holds half as many
messages again, so that a call slot that frees finds its next job already fetched
(with a quarter, slots stood empty: a message is held until its success is stored
and its ack reaches the consumer, and a poll waits for several free places).

Used with the threads pool (what ``celery -A workers worker`` runs by default,
workers/celery_app.py); with ``-P prefork`` the children run the task as before
(one event loop in the parent could use one core only).
``DISPATCHER_ENGINE=threads`` turns it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import structlog
from celery.worker import strategy as celery_strategy

from dispatcher.config import logs
from dispatcher.model.errors import AmbiguousFailure, CallFailed, ClaimLapsed
from dispatcher.model.jobs import Job
from dispatcher.store.connection import async_redis_client
from dispatcher.store.replies import Claim, Stored
from workers.async_vicidial import AsyncVicidialClient
from workers.batching import MAX_BATCHES, LoopPipeline
from workers.delivery import Added, Delivery
from workers.list_answer import DuplicateFound
from workers.list_client import AsyncListClient
from workers.runner import JobRunner, TransientInfrastructureError

__all__ = ["LeadEngine", "current_engine", "strategy"]

_log = logs.get_logger("workers.engine")
#: How long a job whose Redis failed waits before its message goes back (as the task does).
_REQUEUE_PAUSE_S = 1.0
#: The loop's acknowledgements go to the consumer together, at most this late: each
#: batch wakes the consumer's event loop once, instead of once per lead (a turn of
#: its loop and a system call on each side). The call slot is free already: only
#: the spare prefetched messages wait for these acks.
_ACK_BATCH_S = 0.005
#: The name of the loop's Redis connections (``CLIENT LIST``).
CLIENT_NAME = "dispatcher-engine"
#: Tries of a batch of Redis commands on the loop (the first included).
_REDIS_TRIES = 2
#: How often the loop asks Redis whether it has replicas: then a success is stored
#: by a thread that waits for one to confirm it (Writes.store_added).
REPLICA_CHECK_S = 30.0


class LeadEngine:
    """Runs add-lead messages of one worker process on an event loop thread."""

    def __init__(self, runner: JobRunner, *, capacity: int) -> None:
        # How long the loop waits for a reply from Redis (then the connection is dropped
        # and the batch tried once more on a new one): DISPATCHER_REDIS_TIMEOUT_S, as
        # every other Redis client of the worker. A Lua claim or success takes well
        # under a millisecond; a stalled Redis or a half-open connection must not hold
        # the calls past it.
        redis_timeout_s = runner.settings.redis_timeout_s
        self.runner = runner
        #: the runner's deliveries and their writes
        self.writes = runner.writes
        self.capacity = capacity
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="lead-engine", daemon=True)
        # Threads are made when first needed: a healthy flow never starts one.
        self._slow = ThreadPoolExecutor(max_workers=capacity, thread_name_prefix="lead-job")
        self._clients: dict[str, AsyncVicidialClient] = {}
        self._list_clients: dict[str, AsyncListClient] = {}
        # The loop's own Redis client (TCP, TLS or Sentinel alike), made from the same
        # settings as the runner's; its connections live on the loop.
        client = async_redis_client(
            runner.settings,
            socket_timeout=redis_timeout_s,
            retries=_REDIS_TRIES - 1,
            max_connections=MAX_BATCHES + 2,  # the batches, a script load, a replica check
            client_name=CLIENT_NAME,
        )
        # Every try waits for its reply, and may first connect (5 s at most).
        self._redis_deadline_s = _REDIS_TRIES * (redis_timeout_s + 5.0) + 1.0
        self._redis_client = client
        self._redis = LoopPipeline(
            client,
            runner.writes.execution,
            self._loop,
            deadline_s=self._redis_deadline_s,
            on_staged=self._turn_ends,
        )
        #: replicas Redis reported (None: not known yet), asked on the loop
        self._replicas: int | None = None
        #: when Redis last answered the loop's replica check (monotonic; for tests)
        self.replicas_checked_at = 0.0
        #: a turn of the loop ends with _commit (log lines written, Redis commands sent)
        self._committing = False
        #: requests to send once this turn's log lines are written
        #: jobs handed to a thread (a failure, a pause, Redis away, ...), for tests
        self.handoffs = 0
        self._held = 0
        self._held_lock = threading.Condition()
        #: messages taken by the consumer, not yet on the loop
        self._inbox: list[tuple[Settle, object, float]] = []
        self._inbox_waking = False
        self._tasks: set[asyncio.Task[None]] = set()
        #: acks of jobs finished on the loop, not yet handed to the consumer
        self._acks: list[Settle] = []
        #: calls in flight at most (the worker's --concurrency)
        self._slots = asyncio.Semaphore(capacity)

    # -- any thread ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        _log.info("worker.engine_started", capacity=self.capacity)

    def submit(self, message: Settle, payload: object) -> None:
        """Take a message (from the consumer's thread); it is settled when its job is."""
        with self._held_lock:
            self._held += 1
            self._inbox.append((message, payload, time.monotonic()))
            if self._inbox_waking:
                return  # the loop drains the inbox soon: one wake-up for a whole poll
            self._inbox_waking = True
        self._loop.call_soon_threadsafe(self._drain)

    @property
    def prefetch_extra(self) -> int:
        """Messages the consumer may hold beyond the call slots (workers.celery_app)."""
        return max(1, self.capacity // 2)

    @property
    def held(self) -> int:
        """Messages taken and not yet acknowledged or handed back."""
        return self._held

    def stop(self, timeout: float) -> bool:
        """Wait (up to ``timeout``) for every job taken to settle, then stop; True if all did."""
        end = time.monotonic() + timeout
        with self._held_lock:
            while self._held and time.monotonic() < end:
                self._held_lock.wait(min(0.1, max(0.0, end - time.monotonic())))
            settled = self._held == 0
        if not settled:
            _log.warning("worker.engine_stop_timeout", held=self._held)
        self._slow.shutdown(wait=settled, cancel_futures=not settled)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._flush_acks)  # what the timer still holds
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10.0)
        return settled

    # -- the loop's thread ---------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        logs.hold_lines(self._turn_ends)
        watcher = self._loop.create_task(self._watch_replicas())
        try:
            self._loop.run_forever()
        finally:
            logs.release_lines()
            watcher.cancel()
            with contextlib.suppress(BaseException):
                self._loop.run_until_complete(watcher)
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.wait_for(self._aclose(), 5.0))
            with contextlib.suppress(Exception):
                self._loop.close()

    async def _watch_replicas(self) -> None:
        """Keep the replica count current, asked on the loop (a blocking INFO there
        would stop every call in flight while Redis is slow)."""
        while True:
            try:
                async with asyncio.timeout(self._redis_deadline_s):
                    info = await self._redis_client.info("replication")
                self._replicas = int(info.get("connected_slaves", 0) or 0)
                self.replicas_checked_at = time.monotonic()
            except Exception:  # Redis away: keep the last answer; the jobs go to threads
                pass
            await asyncio.sleep(REPLICA_CHECK_S)

    def _stores_added_at_once(self, d: Delivery) -> bool:
        """Whether the loop stores this success itself, one quick write: not with a
        reconcile step (the runner schedules its verification), nor with a replica to
        wait for (or none known yet, as the loop last asked): a thread stores those."""
        return d.job.reconcile is None and self._replicas == 0

    async def _aclose(self) -> None:
        """Close the loop's connections (Redis, VICIdial) on the way out."""
        for client in self._clients.values():
            await client.aclose()
        for list_client in self._list_clients.values():
            await list_client.aclose()
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    # -- one turn of the loop -------------------------------------------------------------
    #
    # What the jobs of one turn log is written in one call, and only then do their
    # Redis commands leave: an outcome is on record before it is stored (as in the
    # threaded worker). No request is sent before its lead.attempt line either (a
    # call absent from the logs was never made): the HTTP client writes the held
    # lines right before a request's bytes leave (workers/async_vicidial.py).

    def _turn_ends(self) -> None:
        if not self._committing:
            self._committing = True
            self._loop.call_soon(self._commit)

    def _commit(self) -> None:
        self._committing = False
        logs.flush_lines()
        self._redis.send()

    def _client(self, d: Delivery) -> AsyncVicidialClient:
        """The dialer's client: one per dialer per worker process, made on first use."""
        client = self._clients.get(d.dialer.name)
        if client is None:
            client = AsyncVicidialClient(self.runner.settings, dialer=d.dialer)
            self._clients[d.dialer.name] = client
        return client

    def _list_client(self, d: Delivery) -> AsyncListClient:
        """The dialer's add_lead client: one per dialer per worker process."""
        client = self._list_clients.get(d.dialer.name)
        if client is None:
            client = AsyncListClient(self.runner.settings, dialer=d.dialer)
            self._list_clients[d.dialer.name] = client
        return client

    async def _call_vicidial(
        self, d: Delivery, claim: Claim
    ) -> tuple[Added | DuplicateFound, float]:
        """The one place a request to VICIdial leaves: the claimed job's lead (with its
        marker), once its lead.attempt line is written, within the call's deadline, and
        only while the claim cannot lapse before the call ends (ClaimLapsed, nothing sent).
        A lead for a list goes to add_lead, an agent's to external_add_lead."""
        job = d.job
        lead = self.writes.attempt(d)
        if job.list_options is not None:
            return await self._list_client(d).add_lead(
                lead,
                job.list_options,
                dnc_check=job.dnc_check,
                campaign_dnc_check=job.campaign_dnc_check,
                fence=d.fence,
            )
        return await self._client(d).add_lead(
            lead,
            dnc_check=job.dnc_check,
            campaign_dnc_check=job.campaign_dnc_check,
            fence=d.fence,  # checked right before the bytes leave (the claim fence)
        )

    def _drain(self) -> None:
        with self._held_lock:
            taken, self._inbox = self._inbox, []
            self._inbox_waking = False
        for message, payload, started in taken:
            task = self._loop.create_task(self._job(message, payload, started))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _job(self, message: Settle, payload: object, started: float) -> None:
        runner, writes = self.runner, self.writes
        try:
            job = Job.from_message(payload, dialers=runner.dialers)
        except Exception:
            # Invalid (or a bug in the check): the runner dead-letters it on a thread.
            self._thread_job(message, lambda: runner.run(payload))
            return
        d = writes.delivery(job, started)
        d.bind()  # this task's own copy of the context
        # A call slot is taken before the claim (a job claimed and left waiting would
        # look orphaned if the worker died) and given back when the call ends.
        await self._slots.acquire()
        holding = True
        try:
            if writes.needs_index_key(d):
                # The phone index's key is read from Redis once per process: on a thread.
                holding = self._thread_step(message, d, lambda: runner.claimed(d), slot=True)
                return
            try:
                claim = Claim.from_reply(await self._redis.call(*writes.claim_args(d)))
            except Exception:
                # Redis away (or refusing writes): claim again on a thread, with the
                # same token (a claim that did run is recognised as our own).
                holding = self._thread_step(message, d, lambda: runner.claimed(d), slot=True)
                return
            if not d.calls_after(claim):
                follow = functools.partial(runner.follow_claim, d, claim)
                holding = self._thread_step(message, d, follow, slot=True)
                return
            writes.granted(d, claim)  # the claim fence (checked right before the send)
            if claim.delay_s > 0:
                await asyncio.sleep(claim.delay_s)  # the rate-limit slot the claim reserved
            try:
                result, latency_ms = await self._call_vicidial(d, claim)
            except ClaimLapsed:
                # Frozen past the claim's lease before the send: nothing was sent; the
                # job goes on as a copy would, on a thread (issue 23, item 2).
                holding = self._thread_step(message, d, lambda: runner.claim_lapsed(d), slot=True)
                return
            except CallFailed as exc:
                d.answer = "ambiguous" if isinstance(exc, AmbiguousFailure) else "failed"
                # The slot stays taken until the failure is handled: a pause or the
                # breaker it trips must be stored before the next job claims.
                holding = self._thread_step(
                    message, d, functools.partial(runner.failed, d, exc), slot=True
                )
                return
            if isinstance(result, DuplicateFound):
                # add_lead's duplicate check: stored (and, after a lost answer, checked
                # against the marker) on a thread.
                dup = functools.partial(runner.duplicate_found, d, result)
                holding = self._thread_step(message, d, dup, slot=True)
                return
            d.answer = "added"
            holding = False
            self._slots.release()
            writes.log_added(d, result, latency_ms)
            if not self._stores_added_at_once(d):
                self._thread_step(message, d, lambda: runner.store_added(d, result, latency_ms))
                return
            try:
                reply = await self._redis.call(*writes.succeed_args(d, result, latency_ms))
            except Exception:
                # Once more on a thread, retried while the message is ours (the same
                # token: a write that did run answers "again"); logged once only.
                self._thread_step(message, d, lambda: runner.store_added(d, result, latency_ms))
                return
            writes.added(d, result, Stored.from_reply(reply))
            self._ack_soon(message)
        except Exception as exc:
            internal = functools.partial(writes.internal, d, exc)
            holding = self._thread_step(message, d, internal, slot=holding)
        finally:
            if holding:
                self._slots.release()
            structlog.contextvars.clear_contextvars()

    # -- settling ------------------------------------------------------------------------

    def _thread_step(
        self, message: Settle, d: Delivery, body: Callable[[], str], *, slot: bool = False
    ) -> bool:
        runner = self.runner
        return self._thread_job(message, lambda: runner.step(d, body), slot=slot)

    def _thread_job(self, message: Settle, body: Callable[[], str], *, slot: bool = False) -> bool:
        """Finish a job on a thread with the runner's code; settle its message as the
        Celery task would (workers.tasks.add_lead).

        ``slot``: the job holds a call slot, given back when the thread is done.
        Returns whether the caller still holds the slot (the hand-off failed).
        """

        self.handoffs += 1

        def run() -> None:
            try:
                body()
            except TransientInfrastructureError:
                time.sleep(_REQUEUE_PAUSE_S)  # do not spin on a dead Redis
                self._settle(message, ack=False)
            except Exception as exc:
                _log.error("worker.task_failed", error=f"{type(exc).__name__}: {exc}")
                time.sleep(_REQUEUE_PAUSE_S)
                self._settle(message, ack=False)
            else:
                self._settle(message, ack=True)
            finally:
                if slot:
                    with contextlib.suppress(RuntimeError):  # the loop is closed
                        self._loop.call_soon_threadsafe(self._slots.release)

        try:
            self._slow.submit(run)
        except RuntimeError:
            # Shutting down past the grace time: the message stays unacknowledged and
            # goes back to the queue (the visibility sweep), as with a killed worker.
            self._release()
            return slot
        return False

    def _ack_soon(self, message: Settle) -> None:
        if not self._acks:
            self._loop.call_later(_ACK_BATCH_S, self._flush_acks)
        self._acks.append(message)

    def _flush_acks(self) -> None:
        acks, self._acks = self._acks, []
        for message in acks:
            self._settle(message, ack=True)

    def _settle(self, message: Settle, *, ack: bool) -> None:
        try:
            message.settle(ack=ack)
        except Exception as exc:  # a dropped broker connection: the sweep redelivers it
            _log.warning("worker.ack_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._release()

    def _release(self) -> None:
        with self._held_lock:
            self._held -= 1
            if not self._held:
                self._held_lock.notify_all()


class Settle:
    """How a message taken from the consumer is acknowledged or handed back.

    Through the consumer's own callbacks (Celery's ``ack``/``reject`` promises),
    as its task requests do: they run on the consumer's thread and wake its
    event loop, which may then fetch the next message (a write to the channel
    from another thread would wait for the loop's next timer tick).
    """

    __slots__ = ("_ack", "_errors", "_reject")

    def __init__(self, ack: Any, reject: Any, errors: Any) -> None:
        self._ack = ack
        self._reject = reject
        self._errors = errors

    def settle(self, *, ack: bool) -> None:
        if ack:
            self._ack(_celery_log, self._errors)
        else:
            self._reject(_celery_log, self._errors, True)


_celery_log = logging.getLogger("workers.engine")
_engine: LeadEngine | None = None


def current_engine() -> LeadEngine | None:
    """The engine of this worker process, once its boot step started it."""
    return _engine


def set_engine(engine: LeadEngine | None) -> None:
    global _engine
    _engine = engine


def _decode(message: Any) -> Any:
    """The task message's body ``[args, kwargs, embed]``: orjson for plain JSON (a
    fifth of kombu's cost per message), kombu's own decoder for anything else."""
    if message.content_type == "application/json" and message.content_encoding in (
        "utf-8",
        "utf8",
    ):
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(message.body)
    return message.decode()


def strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """Celery's task strategy for add_lead: plain messages go to the engine.

    Anything unusual (an ETA or expiry set by hand, another body shape) takes
    Celery's own path, where the task handles it as before.
    """
    default = celery_strategy.default(task, app, consumer, **kwargs)
    errors = consumer.connection_errors

    def handler(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
        engine = _engine
        if engine is None or body is not None:
            return default(message, body, ack, reject, callbacks, **kw)
        headers = message.headers or {}
        if headers.get("eta") or headers.get("expires"):
            return default(message, body, ack, reject, callbacks, **kw)
        try:
            args, kwargs_, _embed = _decode(message)
        except Exception:
            return default(message, body, ack, reject, callbacks, **kw)
        if kwargs_ or not isinstance(args, (list, tuple)) or len(args) != 1:
            return default(message, body, ack, reject, callbacks, **kw)
        engine.submit(Settle(ack, reject, errors), args[0])
        return None

    return handler
