"""The Celery application and its reliability settings.

Why each setting (see README "Guarantees"):

* ``task_acks_late``: a message is acknowledged only after the job reached an
  outcome (added, retry stored, dead letter), so a worker killed mid-job does
  not lose it: kombu puts it back after the visibility timeout.
* ``task_reject_on_worker_lost``: with the prefork pool, a child killed mid-job
  requeues its message instead of acknowledging it.
* ``worker_prefetch_multiplier = 1``: each pool slot reserves one message, so a
  slow or dying worker holds (and delays) as few jobs as possible, and a fleet
  shares the queue fairly.
* ``visibility_timeout``: how long an unacknowledged message waits before it is
  redelivered. Retries do not use Celery countdowns (which sit in worker memory
  as unacknowledged ETA messages and run twice when they outlive the visibility
  timeout): they wait in our Redis ``scheduled`` set, so a message is held only
  for one call, and the timeout only has to exceed the longest call (the
  settings check it exceeds twice the HTTP timeout plus margin).
* ``unacked_restore_interval`` / ``unacked_restore_throttle``: kombu looks for
  expired unacknowledged messages every interval x throttle seconds; we make the
  interval the sole control and scale it with the visibility timeout.
* ``unacked_mutex_expire``: kombu takes a Redis lock for each of those sweeps and
  lets it expire after 5 minutes by default: a worker killed during a sweep
  stopped every sweep of the fleet for 5 minutes, and the messages it held waited
  that long (seen in the SIGKILL test). A sweep takes milliseconds; the lock now
  expires after five sweep intervals.
* ``task_acks_on_failure_or_timeout`` stays on: our task never raises for a job
  (every outcome, an unexpected error's ``internal`` dead letter included, is
  stored first); it raises ``Reject(requeue=True)`` when Redis itself fails, or
  when anything else escapes, which puts the message back.
* ``socket_timeout`` / ``socket_connect_timeout``: DISPATCHER_REDIS_TIMEOUT_S (and at
  most 5 s to connect), as every other Redis client of the dispatcher.
* At start-up the worker refuses a Redis whose ``maxmemory-policy`` is not
  ``noeviction`` (:func:`dispatcher.store.redis_health.require_noeviction`), waiting for
  Redis first if it is not up yet.
* ``worker_cancel_long_running_tasks_on_connection_loss`` is off: a job running
  when the broker connection drops finishes its call and stores its outcome
  (retrying the write until Redis is back); when the message is redelivered the
  execution record says ``done`` and nothing is called twice. Cancelling it
  instead would turn a finished call into an ambiguous one.
* Outcome notifications (webhooks): :class:`NotifierStep` runs the sender
  (:mod:`workers.notifier`) on threads of its own in each worker process; a worker
  configured to notify without ``DISPATCHER_NOTIFY_SECRET`` refuses to start (exit 2).
* ``worker_pool = "threads"`` and ``worker_concurrency`` (``DISPATCHER_WORKER_CONCURRENCY``,
  64): the plain ``celery -A workers worker`` runs the lead engine with 64 calls in
  flight, as the README's command does (Celery's own default is prefork with one
  child per CPU, a few leads a second against a 100 ms VICIdial). ``-P`` and ``-c``
  still win: see :func:`pool_on_command_line` for why ``-P prefork`` needs help.
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Any

from celery import Celery, bootsteps, signals

from dispatcher.config import logs
from dispatcher.config.logs import configure_logging
from dispatcher.config.settings import Settings, get_settings
from dispatcher.model.errors import BrokerUnavailable, ConfigError, LayoutMismatch
from dispatcher.model.jobs import TASK_NAME
from dispatcher.store.backend import get_backend
from dispatcher.store.connection import broker_transport_options, client_timeouts
from dispatcher.store.layout import check_layout
from dispatcher.store.redis_health import redis_availability, require_noeviction
from workers import tasks
from workers.acks import ReliableQoS
from workers.engine import LeadEngine, current_engine, set_engine
from workers.notifier import Notifier
from workers.runner import get_runner
from workers.scheduler import RetryScheduler

__all__ = ["check_worker_settings", "get_app", "make_app", "pool_on_command_line"]

_log = logs.get_logger("workers.celery_app")
#: Allocations between runs of the collector's youngest generation (Python's: 700).
_GC_YOUNG_THRESHOLD = 10_000


def _settings_or_exit() -> Settings:
    try:
        return get_settings()
    except ConfigError as exc:
        # Celery would print a traceback; an operator needs the variable's name.
        print(f"dispatcher worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def pool_on_command_line(argv: list[str]) -> str | None:
    """The pool named by ``-P``/``--pool`` of a ``celery ... worker`` command line, if any.

    Celery lets a ``worker_pool`` setting win over ``-P prefork``: its option's
    default is ``prefork``, and it cannot tell that default from the same value
    typed (celery/bin/worker.py, ``WorkersPool.convert``, since celery#6711). So
    the app sets ``worker_pool`` only when the command line names no pool.
    """
    try:
        args = argv[argv.index("worker") + 1 :]
    except ValueError:
        return None
    for i, arg in enumerate(args):
        if arg in ("-P", "--pool"):
            return args[i + 1] if i + 1 < len(args) else None
        if arg.startswith("--pool="):
            return arg.partition("=")[2]
        if arg.startswith("-P") and len(arg) > 2:
            return arg[2:]
    return None


def worker_defaults(settings: Settings, argv: list[str]) -> dict[str, Any]:
    """``worker_pool``/``worker_concurrency`` for this command line: the lead engine
    on the threads pool, ``DISPATCHER_WORKER_CONCURRENCY`` calls in flight, unless
    the command line names another pool (then Celery's defaults, and ``-c``)."""
    pool = pool_on_command_line(argv)
    defaults: dict[str, Any] = {}
    if pool is None:
        defaults["worker_pool"] = "threads"
    if pool in (None, "threads"):
        defaults["worker_concurrency"] = settings.worker_concurrency
    return defaults


def make_app(settings: Settings, *, argv: list[str] | None = None) -> Celery:
    """The worker's Celery app; ``argv``: the command line (default ``sys.argv``)."""
    celery = Celery("dispatcher", broker=settings.redis_url)
    celery.task(
        name=TASK_NAME,
        bind=True,
        acks_late=True,
        ignore_result=True,
        # Plain add-lead messages go to the lead engine when it runs (workers/engine.py).
        Strategy="workers.engine:strategy",
    )(tasks.add_lead)
    # Our subclass of kombu's Redis transport dead-letters poison queue items.
    sentinel = settings.redis_url.startswith("sentinel://")
    celery.conf.broker_transport = (
        "workers.transport:SentinelTransport" if sentinel else "workers.transport:Transport"
    )
    restore_every = max(1.0, min(10.0, settings.visibility_timeout_s / 4))
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": restore_every,
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": int(5 * restore_every),
            # No broker command waits longer than DISPATCHER_REDIS_TIMEOUT_S: one that
            # times out is Redis unavailable, waited out (workers/transport.py).
            **client_timeouts(settings),
            # kombu drops a poll whose reply is overdue by this long (a stalled Redis
            # never makes the socket readable): a fetch waits at most its own timeout
            # (1 s) plus DISPATCHER_REDIS_TIMEOUT_S, then the consumer reconnects.
            "health_check_interval": settings.redis_timeout_s,
            # One list per queue: our transport pops it with BRPOPLPUSH (one source).
            "priority_steps": [0],
            **broker_transport_options(settings),
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_default_queue=settings.queue,
        task_routes={TASK_NAME: {"queue": settings.queue}},
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        worker_redirect_stdouts=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_enable_remote_control=True,
        worker_consumer="workers.consumer:DeadLetteringConsumer",
        # Each job logs its own outcome; Celery's per-task INFO lines add nothing.
        worker_log_color=False,
        **worker_defaults(settings, sys.argv if argv is None else argv),
    )
    celery.steps["worker"].add(SchedulerStep)
    celery.steps["worker"].add(NotifierStep)
    celery.steps["worker"].add(EngineStep)
    celery.steps["consumer"].add(EnginePrefetch)
    return celery


class EnginePrefetch(bootsteps.StartStopStep):
    """With the lead engine, the consumer holds half as many messages again as calls
    in flight: a call slot that frees finds its next job already fetched (its claim and
    call start at once), instead of waiting for an ack, a poll and a delivery.
    Messages held beyond the slots are not claimed yet: on a crash they go back to
    the queue as any unacknowledged message does."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, c: Any) -> None:
        engine = current_engine()
        if engine is not None and getattr(c, "qos", None) is not None:
            c.qos.increment_eventually(engine.prefetch_extra)
            ReliableQoS.refill_at = max(1, engine.prefetch_extra // 2)


class EngineStep(bootsteps.StartStopStep):
    """Starts the lead engine of a ``--pool threads`` worker; a warm shutdown waits
    for every job it took (each call ends within its deadline)."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.engine: Any = None

    def include_if(self, worker: Any) -> bool:
        pool = getattr(worker, "pool_cls", None)
        name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
        return "thread" in str(name) and get_settings().engine == "asyncio"

    def start(self, worker: Any) -> None:
        # Everything loaded by now (Celery, kombu, this package) lives as long as the
        # process: out of the collector's sight, a full collection no longer walks
        # it (one took 90 ms, and every call in flight stalled with it). A lead
        # leaves few objects in cycles: the youngest generation is collected every
        # 10,000 allocations instead of 700.
        gc.freeze()
        gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        self.engine = LeadEngine(get_runner(), capacity=max(1, int(worker.concurrency)))
        self.engine.start()
        set_engine(self.engine)

    def stop(self, worker: Any) -> None:
        if self.engine is not None:
            set_engine(None)
            settings = get_settings()
            self.engine.stop(timeout=2 * settings.http_timeout_s + 10)
            self.engine = None

    shutdown = stop


class SchedulerStep(bootsteps.StartStopStep):
    """Runs the retry scheduler and the worker heartbeat in a thread of each worker."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.thread: Any = None

    def start(self, worker: Any) -> None:
        self.thread = RetryScheduler(get_settings(), name=str(worker.hostname))
        self.thread.start()

    def stop(self, worker: Any) -> None:
        if self.thread is not None:
            self.thread.stop()

    shutdown = stop


class NotifierStep(bootsteps.StartStopStep):
    """Runs the sender of outcome notifications (workers/notifier.py) on threads of its
    own in each worker process: never on the lead engine's loop or in a lead's slot."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.notifier: Any = None

    def start(self, worker: Any) -> None:
        self.notifier = Notifier(get_settings(), name=str(worker.hostname)).start()

    def stop(self, worker: Any) -> None:
        if self.notifier is not None:
            self.notifier.stop()
            self.notifier = None

    shutdown = stop


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    # Connecting to this signal stops Celery from installing its own handlers:
    # its records go through our processors instead (one format, no duplicates).
    settings = _settings_or_exit()
    configure_logging(level=settings.log_level, fmt=settings.log_format, secrets=settings.secrets)


#: Pools measured and refused (docs/DEPLOYING.md): under gevent the worker added
#: 17 leads/s against about 230 with threads (its Redis pop and HTTP deadline are
#: written for threads), and the careful task itself spent 1.7x the CPU per lead.
_UNSUPPORTED_POOLS = ("gevent", "eventlet")


@signals.worker_init.connect
def check_worker_settings(sender: Any = None, **_: Any) -> None:
    """Before the worker takes a job (Celery's ``worker_init``): refuse an unsupported
    pool, missing VICIdial settings, an evicting Redis or a newer layout (exit 2 or 1)."""
    pool = getattr(sender, "pool_cls", None)
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    if any(bad in str(name) for bad in _UNSUPPORTED_POOLS):
        print(
            f"dispatcher worker: --pool {str(name).rsplit('.', 1)[-1]} is not supported: "
            "use the default (threads: the lead engine) or -P prefork; see docs/DEPLOYING.md",
            file=sys.stderr,
        )
        raise SystemExit(2)
    settings = _settings_or_exit()
    try:
        settings.require_vicidial()
        settings.require_notify()
    except ConfigError as exc:
        print(f"dispatcher worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # Before Celery's own start-up: what this check logs (waiting for Redis) in our format.
    _setup_logging()
    try:
        require_noeviction(settings)
    except ConfigError as exc:
        # An evicting Redis would forget that a lead was added: refuse to serve it.
        print(f"dispatcher worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    _check_layout(settings)


def _check_layout(settings: Settings) -> None:
    """Before the worker takes a job: migrate an older Redis layout, refuse a newer one
    (exit 1, the error naming both versions; dispatcher/store/layout.py). While Redis cannot
    be reached, wait for it, as Celery's own connection does at start."""
    while True:
        try:
            check_layout(get_backend(settings), role="worker", migrate=True)
            return
        except LayoutMismatch as exc:
            print(f"dispatcher worker: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        except BrokerUnavailable as exc:
            # Down, or refusing writes (a replica, out of memory): logged once an episode.
            redis_availability().failed(exc, during="layout check")
            time.sleep(1.0)


_app: Celery | None = None


def get_app() -> Celery:
    """The worker's app, built once from the process settings (exit 2 if they are bad)."""
    global _app
    if _app is None:
        _app = make_app(_settings_or_exit())
    return _app
