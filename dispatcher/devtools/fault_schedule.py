"""A randomized fault schedule against a real local fleet (issue 23: exactly-once, end to end).

Jepsen's way: a seed draws a schedule of timed faults; a real fleet (two ``celery -A
workers worker`` processes, one on each engine), a real Redis with its AOF on and the
VICIdial simulator run a few hundred leads while the schedule is applied; then the
history that remains (every job's state in Redis, every dead letter, every lead the
simulator stored) goes to the checker (:mod:`dispatcher.devtools.history_check`).
Nothing in the product is asked how it went.

The faults, each drawn from the seed (how many, when, on what, for how long):

* ``kill``: SIGKILL a worker process (its calls in flight, its claims, its unacked
  messages), restarted at once as a supervisor would;
* ``stop``: SIGSTOP a worker for longer than the visibility timeout, which the
  settings require to exceed the claim's lease: its claims lapse and another worker
  takes its messages over while it is frozen; then SIGCONT;
* ``redis_restart``: Redis shut down (SIGTERM: the AOF, fsync'd on every write, is
  complete), down for a moment, started again on the same port and directory;
* ``redis_full``: a test key fills Redis past a ``maxmemory`` set under it
  (``noeviction``: every write refused, OOM), then the key is deleted and the limit
  lifted;
* ``outage``: every VICIdial request (calls and look-ups) fails for a moment, with
  HTTP 503 or a connection reset before processing;
* ``answer_lost``: one lead's first request has its answer lost: ``reset_after``
  (inserted, then the connection reset), ``http_504_after`` (inserted, then the proxy's
  504) or ``reset`` (reset before processing: not inserted).

The leads take both ways into VICIdial (drawn from the seed too): most go to an agent
(external_add_lead), a share to a list (add_lead, list 101), half of those with a
duplicate check (``DUPLIST``: after a lost answer such a job is called again, and the
duplicate answer that names its own lead must end it ``added``, never ``duplicate``).

Faults of one resource (a worker, Redis, VICIdial) never overlap, so each one's end
undoes its start; faults of different resources may (Redis restarting while a worker is
frozen). The seed fixes the schedule, not the interleaving: the same seed applies the
same faults at the same offsets, and what they hit depends on the machine's timing.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import redis

from dispatcher.config.settings import Settings
from dispatcher.devtools.history_check import (
    FINAL_STATES,
    History,
    JobRecord,
    Letter,
    StoredRecord,
    count_events,
)
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.devtools.redis_server import RedisServer
from dispatcher.model.errors import BrokerUnavailable
from dispatcher.ops.producer import enqueue_leads, job_status
from dispatcher.simulator import Simulator, SimulatorState
from dispatcher.store.deadletter import DeadLetterStore

__all__ = [
    "FAULT_ORDER",
    "FAULT_SEED_ENV",
    "LONG",
    "SUITE",
    "AppliedFault",
    "FaultEvent",
    "FaultKind",
    "FaultRun",
    "Schedule",
    "Sizes",
    "fault_seed",
    "make_schedule",
]

#: Replays one schedule: the seed a run printed.
FAULT_SEED_ENV = "DISPATCHER_FAULT_SEED"

FaultKind = Literal["kill", "stop", "redis_restart", "redis_full", "outage", "answer_lost"]
FAULT_ORDER: tuple[FaultKind, ...] = (
    "kill",
    "stop",
    "redis_restart",
    "redis_full",
    "outage",
    "answer_lost",
)
#: What an ``answer_lost`` does to the lead's first request, and how often (weights).
ANSWER_FAULTS: tuple[tuple[str, int], ...] = (
    ("reset_after", 2),
    ("http_504_after", 2),
    ("reset", 1),
)
OUTAGE_FAULTS: tuple[str, ...] = ("http_503", "reset")
#: The agent of the simulator's demo state logged in on TESTCAMP (manual dial list 101).
AGENT = "1000"
#: The list (and its campaign) of the demo state that leads for a list go to.
LIST_ID, LIST_CAMPAIGN = "101", "TESTCAMP"
#: The key that fills Redis (outside the dispatcher's prefix).
FILLER_KEY = "fault-schedule:filler"
_FILLER_BYTES = 1 << 20
#: How long after a kill (the restarted worker booting) the same worker is left alone.
_BOOT_S = 3.0
#: Least time between two faults of one resource.
_GAP_S = 0.5


@dataclass(frozen=True)
class Sizes:
    """How big a run is: leads, the fault window, and how many faults of each kind
    (a range, drawn from the seed)."""

    leads: int = 300
    #: faults and the flow of new leads happen within this many seconds
    window_s: float = 16.0
    kills: tuple[int, int] = (1, 3)
    stops: tuple[int, int] = (1, 1)
    redis_restarts: tuple[int, int] = (1, 1)
    redis_fills: tuple[int, int] = (1, 1)
    outages: tuple[int, int] = (0, 1)
    #: share of leads whose first request loses its answer
    answer_lost_share: float = 0.05
    #: share of leads for a list (add_lead), and of those, the share with a duplicate check
    list_share: float = 0.3
    duplicate_check_share: float = 0.5
    #: how long a frozen worker stays frozen: longer than the run's visibility timeout
    #: (8 s), itself longer than the claims' lease (7 s; the settings require it), so
    #: that another worker takes its messages over meanwhile
    stop_s: tuple[float, float] = (8.5, 10.5)
    #: calls in flight per worker
    concurrency: int = 8
    #: VICIdial's answer time, drawn per call: long enough that kills and stops find
    #: calls in flight, well inside the call's 1 s deadline
    latency_ms: tuple[float, float] = (50.0, 300.0)
    #: how long, after the window, every job has to become final
    drain_s: float = 120.0


#: The suite's size: under a minute on a shared 2-core machine.
SUITE = Sizes()
#: ``python -m bench --only faults --long``: longer, more leads, more faults.
LONG = Sizes(
    leads=1000,
    window_s=60.0,
    kills=(4, 8),
    stops=(2, 4),
    redis_restarts=(2, 3),
    redis_fills=(2, 3),
    outages=(1, 3),
)


@dataclass(frozen=True)
class FaultEvent:
    """One fault: ``at`` seconds into the window, on ``target`` (a worker's name, the
    simulator's fault kind), lasting ``seconds`` (0 for an instant one)."""

    at: float
    kind: FaultKind
    target: str = ""
    seconds: float = 0.0

    def describe(self) -> str:
        what = {
            "kill": f"SIGKILL {self.target}, restart it",
            "stop": f"SIGSTOP {self.target} for {self.seconds:.1f} s",
            "redis_restart": f"Redis down for {self.seconds:.1f} s, restarted (AOF)",
            "redis_full": f"Redis full (OOM) for {self.seconds:.1f} s",
            "outage": f"VICIdial {self.target} outage for {self.seconds:.1f} s",
            "answer_lost": f"answer lost ({self.target})",
        }[self.kind]
        return f"t={self.at:5.1f}s {what}"


@dataclass(frozen=True)
class Schedule:
    """The faults of one seed, which leads lose their first answer (index -> the
    simulator's fault kind), and which leads go to a list (index -> ``list`` or
    ``list_dup``, a list job with a duplicate check; the others: to an agent)."""

    seed: int
    sizes: Sizes
    workers: tuple[str, ...]
    events: tuple[FaultEvent, ...]
    answers_lost: Mapping[int, str]
    targets: Mapping[int, str] = field(default_factory=dict)

    def target(self, index: int) -> str:
        """``agent``, ``list`` or ``list_dup`` (a list job with a duplicate check)."""
        return self.targets.get(index, "agent")

    def counts(self) -> dict[str, int]:
        """Faults by kind (``answer_lost`` counts leads), every kind listed."""
        out: dict[str, int] = {kind: 0 for kind in FAULT_ORDER}
        for event in self.events:
            out[event.kind] += 1
        out["answer_lost"] = len(self.answers_lost)
        return out

    def describe(self) -> list[str]:
        lines = [event.describe() for event in self.events]
        by_kind: dict[str, int] = {}
        for kind in self.answers_lost.values():
            by_kind[kind] = by_kind.get(kind, 0) + 1
        lost = ", ".join(f"{n} {kind}" for kind, n in sorted(by_kind.items()))
        lines.append(f"answers lost on {len(self.answers_lost)} leads' first request ({lost})")
        listed = sum(1 for t in self.targets.values() if t.startswith("list"))
        checked = sum(1 for t in self.targets.values() if t == "list_dup")
        lost_listed = sum(1 for i in self.answers_lost if i in self.targets)
        lines.append(
            f"{listed} leads for a list ({checked} with a duplicate check; {lost_listed} of "
            f"them lose an answer), {self.sizes.leads - listed} for an agent"
        )
        return lines


def fault_seed(environ: Mapping[str, str] | None = None) -> int:
    """The seed to replay (``DISPATCHER_FAULT_SEED``), else a fresh one."""
    env = os.environ if environ is None else environ
    raw = env.get(FAULT_SEED_ENV, "").strip()
    if not raw:
        return secrets.randbelow(2**31 - 1) + 1
    try:
        seed = int(raw)
    except ValueError:
        raise ValueError(f"{FAULT_SEED_ENV} must be a whole number, got {raw!r}") from None
    if seed < 0:
        raise ValueError(f"{FAULT_SEED_ENV} must not be negative, got {seed}")
    return seed


def make_schedule(
    seed: int,
    sizes: Sizes = SUITE,
    *,
    workers: Sequence[str] = ("w1", "w2"),
) -> Schedule:
    """Draw the faults of ``seed`` for ``workers`` (their names)."""
    rng = random.Random(seed)
    window = sizes.window_s
    busy: dict[str, list[tuple[float, float]]] = {}
    events: list[FaultEvent] = []

    def place(kind: FaultKind, resource: str, seconds: float, hold: float, target: str) -> None:
        # A start such that the fault ends inside the window and overlaps no other
        # fault of the same resource; a few tries, else the fault is left out.
        latest = window - seconds - _GAP_S
        if latest < _GAP_S:
            return
        spans = busy.setdefault(resource, [])
        for _ in range(50):
            at = round(rng.uniform(_GAP_S, latest), 2)
            end = at + max(seconds, hold)
            if all(end + _GAP_S <= s or at >= e + _GAP_S for s, e in spans):
                spans.append((at, end))
                events.append(FaultEvent(at, kind, target, round(seconds, 2)))
                return

    def count(bounds: tuple[int, int]) -> int:
        return rng.randint(bounds[0], bounds[1])

    for _ in range(count(sizes.stops)):
        name = rng.choice(list(workers))
        place("stop", name, rng.uniform(*sizes.stop_s), 0.0, name)
    for _ in range(count(sizes.kills)):
        name = rng.choice(list(workers))
        place("kill", name, 0.0, _BOOT_S, name)
    for _ in range(count(sizes.redis_restarts)):
        place("redis_restart", "redis", rng.uniform(0.3, 2.0), 0.0, "")
    for _ in range(count(sizes.redis_fills)):
        place("redis_full", "redis", rng.uniform(0.5, 3.0), 0.0, "")
    for _ in range(count(sizes.outages)):
        place("outage", "vicidial", rng.uniform(0.3, 2.0), 0.0, rng.choice(OUTAGE_FAULTS))
    kinds = [kind for kind, _ in ANSWER_FAULTS]
    weights = [weight for _, weight in ANSWER_FAULTS]
    lost = sorted(rng.sample(range(sizes.leads), round(sizes.leads * sizes.answer_lost_share)))
    answers = {index: rng.choices(kinds, weights)[0] for index in lost}
    events.sort(key=lambda e: (e.at, e.kind))
    # Drawn last: a seed's faults are those it drew before leads went to lists.
    listed = sorted(rng.sample(range(sizes.leads), round(sizes.leads * sizes.list_share)))
    targets = {
        index: "list_dup" if rng.random() < sizes.duplicate_check_share else "list"
        for index in listed
    }
    return Schedule(seed, sizes, tuple(workers), tuple(events), answers, targets)


@dataclass(frozen=True)
class AppliedFault:
    """A step of the schedule as it was applied: when (seconds into the window, and the
    UTC time, as the workers' log lines carry it), what, and the error if it failed."""

    at: float
    what: str
    error: str = ""
    utc: str = field(default_factory=lambda: _utc_now())

    def line(self) -> str:
        failed = f" FAILED: {self.error}" if self.error else ""
        return f"t={self.at:5.1f}s ({self.utc}) {self.what}{failed}"


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3] + "Z"


def phone_of(index: int) -> str:
    """Lead ``index``'s phone number (one per lead; not on the demo state's DNC lists)."""
    return f"727{800000 + index:07d}"


@dataclass
class FaultRun:
    """One run of a :class:`Schedule`: starts Redis (AOF on), the simulator and two
    workers (``w1`` on the default engine, ``w2`` with ``DISPATCHER_ENGINE=threads``),
    feeds the leads, applies the faults, waits until every job is final (or the
    deadline), stops the workers and returns the :class:`History`.

    ``workdir`` receives Redis's directory and the workers' logs. ``overrides`` are
    settings on top of the run's short timings.
    """

    schedule: Schedule
    workdir: Path
    overrides: Mapping[str, Any] = field(default_factory=dict)
    #: called with each progress line (the bench prints them; the test keeps quiet)
    progress: Callable[[str], None] = lambda line: None
    workers: dict[str, WorkerProcess] = field(default_factory=dict, init=False)
    applied: list[AppliedFault] = field(default_factory=list, init=False)
    exited: list[str] = field(default_factory=list, init=False)

    def settings(self, redis_url: str, sim: Simulator) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "vicidial_url": sim.url,
            "vicidial_user": "6666",
            "vicidial_pass": "1234",
            # Short, so that every fault's consequence ends within the run: a call
            # ends in 1 s, the lease is 7 s (2 x the call + 5), a message a dead or
            # frozen worker held comes back after 8 s, a lost answer is looked up
            # after 0.5 s, retries wait at most 0.5 s.
            "http_timeout_s": 1.0,
            "visibility_timeout_s": 8.0,
            "reconcile_after_s": 0.5,
            "retry_base_s": 0.05,
            "retry_cap_s": 0.5,
            "agent_wait_s": 30.0,
            "scheduler_interval_s": 0.1,
            "breaker_pause_s": 0.3,
            "pause_s": 1.0,
            "redis_timeout_s": 5.0,
            "log_format": "json",
        }
        values.update(self.overrides)
        return Settings(**values)

    def run(self) -> History:
        schedule = self.schedule
        started = time.monotonic()
        (self.workdir / "redis").mkdir(parents=True, exist_ok=True)
        server = RedisServer(self.workdir / "redis", appendonly=True)
        sim = Simulator(SimulatorState.demo(), seed=schedule.seed)
        try:
            server.start()
            sim.start()
            sim.set_latency(schedule.sizes.latency_ms[0], max_ms=schedule.sizes.latency_ms[1])
            for index, kind in schedule.answers_lost.items():
                sim.script_phone(phone_of(index), [kind])
            settings = self.settings(server.url, sim)
            for event in schedule.events:
                if event.kind == "stop" and event.seconds <= settings.visibility_timeout_s:
                    raise ValueError(
                        f"a stop of {event.seconds} s does not outlast the visibility timeout "
                        f"({settings.visibility_timeout_s} s): raise Sizes.stop_s"
                    )
            engines = {"w1": {}, "w2": {"DISPATCHER_ENGINE": "threads"}}
            for name in schedule.workers:
                self.workers[name] = WorkerProcess(
                    settings,
                    self.workdir / f"{name}.log",
                    concurrency=schedule.sizes.concurrency,
                    name=name,
                    extra_env=engines.get(name, {}),
                )
            for worker in self.workers.values():
                worker.start(wait=False)
            for worker in self.workers.values():
                worker.wait_ready(90.0)
            self.progress(
                f"seed {schedule.seed}: fleet up after {time.monotonic() - started:.1f} s"
            )
            producer = _Producer(schedule, settings)
            t0 = time.monotonic()
            feeder = threading.Thread(target=producer.run, args=(t0,), daemon=True)
            feeder.start()
            self._apply(server, sim, t0)
            self._heal(server, sim, t0)
            feeder.join(schedule.sizes.drain_s)
            unfinished = self._drain(producer, settings, t0 + schedule.sizes.window_s)
            self.progress(
                f"seed {schedule.seed}: window over, "
                f"{'all final' if not unfinished else f'{unfinished} not final'} "
                f"at t={time.monotonic() - t0:.1f} s"
            )
            time.sleep(1.0)  # anything still on its way lands before the workers stop
            exits = self._stop_workers()
            history = self._read(producer, settings, sim, exits)
        finally:
            for worker in self.workers.values():
                with contextlib.suppress(Exception):
                    if worker.process is not None:
                        os.kill(worker.process.pid, signal.SIGCONT)
                    worker.kill()
            with contextlib.suppress(Exception):
                sim.stop()
            with contextlib.suppress(Exception):
                server.close()
        return replace(history, wall_s=time.monotonic() - started)

    # -- the faults -----------------------------------------------------------------------

    def _apply(self, server: RedisServer, sim: Simulator, t0: float) -> None:
        steps: list[tuple[float, int, Callable[[], str]]] = []
        stopped: dict[str, int] = {}
        for n, event in enumerate(self.schedule.events):
            start, end = self._steps(event, server, sim, stopped)
            steps.append((event.at, n, start))
            if end is not None:
                steps.append((event.at + event.seconds, n, end))
        steps.sort(key=lambda s: (s[0], s[1]))
        for at, n, step in steps:
            delay = t0 + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            when = time.monotonic() - t0
            try:
                what = step()
            except Exception as exc:  # recorded; the run goes on and the report says it
                what = f"{step.__name__} of: {self.schedule.events[n].describe()}"
                self.applied.append(AppliedFault(when, what, f"{exc!r}"))
            else:
                self.applied.append(AppliedFault(when, what))
        rest = t0 + self.schedule.sizes.window_s - time.monotonic()
        if rest > 0:
            time.sleep(rest)

    def _steps(
        self,
        event: FaultEvent,
        server: RedisServer,
        sim: Simulator,
        stopped: dict[str, int],
    ) -> tuple[Callable[[], str], Callable[[], str] | None]:
        kind = event.kind
        if kind == "kill":
            worker = self.workers[event.target]

            def kill() -> str:
                pid = worker.process.pid if worker.process is not None else 0
                worker.kill()
                worker.start(wait=False)
                new = worker.process.pid if worker.process is not None else 0
                return f"SIGKILL {event.target} (pid {pid}), restarted (pid {new})"

            return kill, None
        if kind == "stop":
            worker = self.workers[event.target]

            def stop() -> str:
                assert worker.process is not None, "worker not running"
                stopped[event.target] = worker.process.pid
                os.kill(worker.process.pid, signal.SIGSTOP)
                return f"SIGSTOP {event.target} (pid {worker.process.pid})"

            def cont() -> str:
                pid = stopped.pop(event.target)
                os.kill(pid, signal.SIGCONT)
                return f"SIGCONT {event.target} (pid {pid})"

            return stop, cont
        if kind == "redis_restart":

            def down() -> str:
                server.stop()
                return "Redis stopped (SIGTERM)"

            def up() -> str:
                server.start()
                return "Redis started again (AOF)"

            return down, up
        if kind == "redis_full":

            def fill() -> str:
                used = _fill(server.url)
                return f"Redis full: {used} bytes used, maxmemory under it"

            def free() -> str:
                _free(server.url)
                return "Redis freed: test key deleted, maxmemory lifted"

            return fill, free
        if kind == "outage":

            def outage() -> str:
                sim.set_outage(event.target)
                return f"VICIdial outage ({event.target})"

            def over() -> str:
                sim.set_outage(None)
                return "VICIdial outage over"

            return outage, over
        raise ValueError(f"not a timed fault: {kind}")

    def _heal(self, server: RedisServer, sim: Simulator, t0: float) -> None:
        """Whatever a failed step left broken is mended (recorded), so that the drain
        measures the product, not the harness."""
        mended: list[str] = []
        if server.process is None or server.process.poll() is not None:
            server.start()
            mended.append("Redis started")
        with contextlib.suppress(redis.RedisError):
            _free(server.url)
        sim.set_outage(None)
        for name, worker in self.workers.items():
            if worker.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGCONT)
            if not worker.alive():
                self.exited.append(f"{name} (exit code {_exit_code(worker)}, by the window's end)")
                worker.start(wait=False)
                mended.append(f"{name} had exited: started again")
        if mended:
            self.applied.append(AppliedFault(time.monotonic() - t0, "heal: " + "; ".join(mended)))

    # -- the end --------------------------------------------------------------------------

    def _drain(self, producer: _Producer, settings: Settings, start: float) -> int:
        """Wait until every job is final or the deadline; returns how many are not."""
        deadline = start + self.schedule.sizes.drain_s
        pending = 0
        while True:
            ids = producer.job_ids()
            try:
                states = [job_status(job_id, settings=settings) for job_id in ids]
            except BrokerUnavailable:
                states = [None] * len(ids)
            pending = sum(1 for s in states if s is None or s["state"] not in FINAL_STATES)
            pending += producer.unfinished()
            if not pending or time.monotonic() > deadline:
                return pending
            time.sleep(0.5)

    def _stop_workers(self) -> list[str]:
        """Warm shutdown (finish calls in flight); lists the workers that exited on
        their own (none should: a worker waits for Redis, whatever its fault)."""
        for name, worker in self.workers.items():
            if not worker.alive():
                self.exited.append(f"{name} (exit code {_exit_code(worker)}, by the end)")
            worker.stop(timeout=15)
        return list(self.exited)

    def _read(
        self, producer: _Producer, settings: Settings, sim: Simulator, exits: list[str]
    ) -> History:
        jobs = []
        for index, phone in enumerate(producer.phones):
            ids = producer.ids[index]
            states = {job_id: job_status(job_id, settings=settings) for job_id in ids}
            jobs.append(
                JobRecord(
                    index=index,
                    phone=phone,
                    job_ids=tuple(ids),
                    states=states,
                    enqueue_errors=producer.errors[index],
                    answer_lost=self.schedule.answers_lost.get(index, ""),
                    target=self.schedule.target(index),
                )
            )
        letters = [
            Letter(job_id=x.job_id, reason=x.reason, error=x.error or "", letter_id=x.id)
            for x in DeadLetterStore(settings=settings).iter()
        ]
        stored = [
            StoredRecord(
                lead_id=str(lead.lead_id),
                phone=lead.phone_number,
                marker=lead.fields.get("source_id", ""),
            )
            for lead in sim.leads
        ]
        logs = {name: worker.log_path for name, worker in self.workers.items()}
        return History(
            seed=self.schedule.seed,
            faults=self.schedule.counts(),
            jobs=jobs,
            letters=letters,
            stored=stored,
            applied=[a.line() for a in self.applied],
            schedule=self.schedule.describe(),
            logs=logs,
            worker_exits=exits,
            wall_s=0.0,
            events=count_events(logs),
        )


def _exit_code(worker: WorkerProcess) -> int | None:
    return worker.process.poll() if worker.process is not None else None


def _fill(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        client.set(FILLER_KEY, b"\0" * _FILLER_BYTES)
        used = int(client.info("memory")["used_memory"])
        # Below what is used: every write is refused (noeviction) until the key goes.
        client.config_set("maxmemory", str(max(1, used - _FILLER_BYTES // 2)))
        return used
    finally:
        client.close()


def _free(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.delete(FILLER_KEY)
        client.config_set("maxmemory", "0")
    finally:
        client.close()


class _Producer:
    """Hands the leads over through the Python API in batches spread over the window,
    as a producer app would: a batch refused (Redis away, full) is sent again with the
    same idempotency keys until it is taken."""

    def __init__(self, schedule: Schedule, settings: Settings) -> None:
        self.schedule = schedule
        self.settings = settings
        n = schedule.sizes.leads
        self.phones = [phone_of(i) for i in range(n)]
        self.ids: list[list[str]] = [[] for _ in range(n)]
        self.errors = [0] * n
        self._lock = threading.Lock()
        self._done = 0
        self.finished = threading.Event()

    def run(self, t0: float) -> None:
        sizes = self.schedule.sizes
        batch = 10
        starts = list(range(0, sizes.leads, batch))
        # The flow covers most of the window, so that late faults still meet new leads.
        spacing = sizes.window_s * 0.85 / max(1, len(starts))
        deadline = t0 + sizes.window_s + sizes.drain_s
        try:
            for b, first in enumerate(starts):
                delay = t0 + b * spacing - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                indices = list(range(first, min(first + batch, sizes.leads)))
                self._send(indices, realtime=b % 3 == 0, deadline=deadline)
        finally:
            self.finished.set()

    def _send(self, indices: list[int], *, realtime: bool, deadline: float) -> None:
        leads = [self._lead(i) for i in indices]
        while True:
            try:
                ids = enqueue_leads(
                    leads, priority="realtime" if realtime else "bulk", settings=self.settings
                )
            except BrokerUnavailable:
                with self._lock:
                    for i in indices:
                        self.errors[i] += 1
                if time.monotonic() > deadline:
                    return
                time.sleep(0.2)
                continue
            with self._lock:
                for i, job_id in zip(indices, ids, strict=True):
                    if job_id not in self.ids[i]:
                        self.ids[i].append(job_id)
                self._done += len(indices)
            return

    def _lead(self, i: int) -> dict[str, Any]:
        lead: dict[str, Any] = {
            "phone_number": self.phones[i],
            "first_name": f"Lead{i}",
            "idempotency_key": f"fault-{self.schedule.seed}-{i}",
        }
        target = self.schedule.target(i)
        if target == "agent":
            return {"agent_user": AGENT, **lead}
        lead.update(list_id=LIST_ID, campaign_id=LIST_CAMPAIGN)
        if target == "list_dup":
            lead["duplicate_check"] = "DUPLIST"
        return lead

    def job_ids(self) -> list[str]:
        with self._lock:
            return [job_id for ids in self.ids for job_id in ids]

    def unfinished(self) -> int:
        """Leads not handed over yet."""
        with self._lock:
            return self.schedule.sizes.leads - self._done
