"""What every benchmark shares: Redis, the simulator, worker processes, rounds and results.

One :class:`Env` per run owns one ``redis-server`` (:class:`RedisServer`), one
VICIdial :class:`Simulator` in this process (answering real HTTP on loopback),
and every process started; :meth:`Env.close` kills whatever is still running,
also after Ctrl-C. Benchmarks never assert: they return a :class:`Section`
(table rows, goals, notes and the raw figures for the JSON file).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess, process_tree, settings_env
from dispatcher.devtools.redis_server import RedisServer
from dispatcher.simulator import RequestRecord, Simulator, SimulatorState

__all__ = [
    "AGENT",
    "ROOT",
    "AppWorker",
    "Env",
    "Goal",
    "LeadCounter",
    "Measured",
    "Section",
    "child_env",
    "cpu_seconds",
    "machine_info",
    "median",
    "process_tree",
    "rotations",
    "rss_kb",
    "run_measured",
    "tree_env",
]

ROOT = Path(__file__).resolve().parents[1]
#: Logged in on TESTCAMP (manual dial list 101) in the simulator's demo state.
AGENT = "1000"
API_USER, API_PASS = "6666", "1234"
_TICKS = os.sysconf("SC_CLK_TCK")


# -- results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """One goal of issue 7: ``value`` compared with ``target``."""

    name: str
    value: float
    target: float
    higher_is_better: bool = True
    unit: str = "x"

    @property
    def met(self) -> bool:
        if self.higher_is_better:
            return self.value >= self.target
        return self.value < self.target

    @property
    def margin(self) -> float:
        """value / target: above 1 is better for higher-is-better goals, below 1 otherwise."""
        return self.value / self.target if self.target else float("inf")

    def text(self) -> str:
        op = ">=" if self.higher_is_better else "<"
        verdict = "MET" if self.met else "MISSED"
        return (
            f"{verdict:<6} {self.name}: {_fmt(self.value)}{self.unit} "
            f"(goal {op} {_fmt(self.target)}{self.unit}; {self.margin:.2f} of goal)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "target": self.target,
            "comparison": ">=" if self.higher_is_better else "<",
            "unit": self.unit.strip(),
            "met": self.met,
            "value_over_target": self.margin,
        }


@dataclass
class Section:
    """What one benchmark reports: a table, goals, notes and raw data."""

    name: str
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def render(self) -> str:
        table = [self.header, *self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(self.header))]
        lines = [f"== {self.title} ({self.seconds:.0f} s)"]
        for n, row in enumerate(table):
            cells = [
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  " + "  ".join(cells))
            if n == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
        lines.extend(f"  {goal.text()}" for goal in self.goals)
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)

    def markdown(self) -> str:
        out = [f"### {self.title}", ""]
        out.append("| " + " | ".join(self.header) + " |")
        out.append("|" + "|".join("---" for _ in self.header) + "|")
        out.extend("| " + " | ".join(row) + " |" for row in self.rows)
        out.append("")
        out.extend(f"- {goal.text()}" for goal in self.goals)
        out.extend(f"- {note}" for note in self.notes)
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "seconds": round(self.seconds, 1),
            "table": {"header": self.header, "rows": self.rows},
            "goals": [g.to_dict() for g in self.goals],
            "notes": self.notes,
            "data": self.data,
        }


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def rotations(systems: Sequence[Any], rounds: int) -> Iterator[tuple[int, Any]]:
    """(round, system) with the order rotated every round: A B C, B C A, C A B, ...

    Side by side in the same run: a slow minute on the shared machine hits
    every system of that round, not one of them.
    """
    for r in range(rounds):
        k = r % len(systems)
        for system in [*systems[k:], *systems[:k]]:
            yield r, system


# -- the machine and processes ----------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = int(line.split()[1]) / 1024 / 1024
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    import celery
    import httpx
    import kombu

    return {
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "cpu_model": model or platform.processor() or "unknown",
        "memory_gb": round(mem_gb, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "httpx": httpx.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes (each counted alone)."""
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def rss_kb(pid: int) -> int:
    """VmRSS of one process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_env(settings: Settings) -> dict[str, str]:
    """``settings_env`` without the values that are the defaults: what a process of an
    older source tree (bench.compare_trees, bench.login_flood) reads the same way
    although it may not know every setting of this one."""
    defaults = settings_env(Settings())
    return {k: v for k, v in settings_env(settings).items() if defaults.get(k) != v}


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `dispatcher` or worker subprocess for ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.update(settings_env(settings))
    env["DISPATCHER_ENV_FILE"] = "/nonexistent"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


@dataclass
class Measured:
    """A finished subprocess: exit code, wall time and its own peak RSS."""

    returncode: int
    seconds: float
    max_rss_kb: int


_TIME = Path("/usr/bin/time")


def _vm_hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(
    command: Sequence[str],
    *,
    env: dict[str, str],
    stdout: Any = subprocess.DEVNULL,
    stderr: Any = subprocess.DEVNULL,
    timeout: float = 600.0,
    registry: list[subprocess.Popen[bytes]] | None = None,
) -> Measured:
    """Run ``command``; return its exit code, wall time and peak RSS.

    The peak RSS comes from ``/usr/bin/time -f %M``. Not from this process's
    wait4/RUSAGE_CHILDREN: on Linux a child's ru_maxrss starts from the
    high-water mark of the image it was forked from, here this whole bench
    process. Without /usr/bin/time, VmHWM is polled from /proc until exit.
    """
    rss_file = None
    argv = list(command)
    if _TIME.exists():
        fd, name = tempfile.mkstemp(prefix="bench-rss-")
        os.close(fd)
        rss_file = Path(name)
        argv = [str(_TIME), "-f", "%M", "-o", str(rss_file), *argv]
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )
    if registry is not None:
        registry.append(proc)
    peak = 0
    try:
        while proc.poll() is None:
            if rss_file is None:
                peak = max(peak, _vm_hwm_kb(proc.pid))
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"{' '.join(command)} ran over {timeout:.0f} s")
            time.sleep(0.005)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        seconds = time.perf_counter() - started
        if rss_file is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                peak = int(rss_file.read_text().split()[-1])
            rss_file.unlink(missing_ok=True)
    return Measured(int(proc.returncode), seconds, peak)


# -- workers ----------------------------------------------------------------------------


@dataclass
class AppWorker(WorkerProcess):
    """`celery -A bench.naive_app worker` (or careful_app): ready when Celery says so."""

    app: str = "bench.naive_app"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.tail()}")
            if " ready." in self.tail(20_000):
                return
            time.sleep(0.05)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.tail()}")


# -- the simulator's lead counter -------------------------------------------------------


class LeadCounter:
    """Counts leads the simulator inserted; an event fires when a target is reached.

    Passed to the simulator as ``on_request``, so the end of a run is the moment
    the last lead is stored, without polling.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._target: int | None = None
        self._done = threading.Event()

    def __call__(self, record: RequestRecord) -> None:
        if record.lead_id is None:
            return
        with self._lock:
            self._count += 1
            if self._target is not None and self._count >= self._target:
                self._done.set()

    def arm(self, target: int) -> None:
        with self._lock:
            self._count = 0
            self._target = target
            self._done.clear()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    @property
    def count(self) -> int:
        with self._lock:
            return self._count


class SimulatorProcess:
    """The VICIdial simulator in a process of its own, as a real VICIdial would be.

    The in-process simulator shares this process's interpreter lock with the
    bench's own work (the enqueue loops, the Celery apps' ``delay()`` calls): at
    several hundred leads/s that work delays its answers, and the workers wait
    for the bench rather than for VICIdial. Same counter interface as
    :class:`LeadCounter` (``counter``), run in the child and read here.
    """

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._count = ctx.Value("q", 0)
        self._target = ctx.Value("q", 0)
        self._done = ctx.Event()
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_serve_simulator,
            args=(child, self._count, self._target, self._done),
            daemon=True,
            name="bench-simulator",
        )
        self.url = ""
        self.counter = self

    def start(self) -> SimulatorProcess:
        self._process.start()
        if not self._conn.poll(60):
            raise RuntimeError("the simulator process did not start")
        self.url = self._conn.recv()
        return self

    @property
    def pid(self) -> int:
        return self._process.pid or 0

    def _ask(self, *command: Any) -> Any:
        self._conn.send(command)
        return self._conn.recv()

    def set_latency(self, ms: float) -> None:
        self._ask("latency", ms)

    def count_by_phone(self) -> dict[str, int]:
        result: dict[str, int] = self._ask("count_by_phone")
        return result

    def stop(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(Exception):
                self._ask("stop")
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()

    # the counter
    def arm(self, target: int) -> None:
        with self._count.get_lock():
            self._count.value = 0
            self._target.value = target
            self._done.clear()

    def wait(self, timeout: float) -> bool:
        return bool(self._done.wait(timeout))

    @property
    def count(self) -> int:
        return int(self._count.value)


def _serve_simulator(conn: Any, count: Any, target: Any, done: Any) -> None:
    def counted(record: RequestRecord) -> None:
        if record.lead_id is None:
            return
        with count.get_lock():
            count.value += 1
            if target.value and count.value >= target.value:
                done.set()

    sim = Simulator(SimulatorState.demo(), on_request=counted, max_records=1000)
    sim.start()
    conn.send(sim.url)
    while True:
        command = conn.recv()
        if command[0] == "latency":
            sim.set_latency(command[1])
            conn.send(None)
        elif command[0] == "count_by_phone":
            conn.send(dict(sim.count_by_phone()))
        else:
            sim.stop()
            conn.send(None)
            return


# -- the environment --------------------------------------------------------------------


class Env:
    """One run's Redis server, simulator, scratch directory and child processes."""

    def __init__(self, workdir: Path, *, appendfsync: str | None = None) -> None:
        self.workdir = workdir
        self.logdir = workdir / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        (workdir / "redis").mkdir(parents=True, exist_ok=True)
        self.appendfsync = appendfsync
        self.redis = RedisServer(workdir / "redis", appendonly=appendfsync is not None)
        self.counter = LeadCounter()
        self.sim = Simulator(SimulatorState.demo(), on_request=self.counter, max_records=1000)
        self.workers: list[WorkerProcess] = []
        self.children: list[subprocess.Popen[bytes]] = []
        self._phones = 0
        self._tags: set[str] = set()

    def start(self) -> Env:
        self.redis.start()
        if self.appendfsync is not None:
            admin = self.client()
            admin.config_set("appendfsync", self.appendfsync)
            admin.close()
        self.sim.start()
        return self

    def close(self) -> None:
        """Kill every worker and child still running, then Redis and the simulator."""
        for worker in self.workers:
            with contextlib.suppress(Exception):
                worker.kill()
        for proc in self.children:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    proc.wait(5)
        with contextlib.suppress(Exception):
            self.sim.stop()
        with contextlib.suppress(Exception):
            self.redis.close()

    def __enter__(self) -> Env:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Redis --------------------------------------------------------------------------

    def url(self, db: int = 0) -> str:
        return f"redis://{self.redis.host}:{self.redis.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), decode_responses=True)

    @property
    def redis_pid(self) -> int:
        return self.redis.process.pid if self.redis.process is not None else 0

    def settings(self, tag: str, **overrides: Any) -> Settings:
        """Product settings with their own key space (prefix and queue) on db 0."""
        values: dict[str, Any] = {
            "redis_url": self.url(0),
            "vicidial_url": self.sim.url,
            "vicidial_user": API_USER,
            "vicidial_pass": API_PASS,
            "log_format": "json",
            "key_prefix": f"bench-{tag}",
            "queue": f"bench-{tag}",
        }
        values.update(overrides)
        return Settings(**values)

    # -- phones -------------------------------------------------------------------------

    def phones(self, n: int) -> list[str]:
        """Fresh phone numbers, never used before in this run (so duplicates show)."""
        start = self._phones
        self._phones += n
        return [f"81{i:08d}" for i in range(start, start + n)]

    def duplicates(self) -> int:
        return sum(n - 1 for n in self.sim.count_by_phone().values() if n > 1)

    # -- workers ------------------------------------------------------------------------

    def _name(self, tag: str) -> str:
        name = tag
        n = 1
        while name in self._tags:
            n += 1
            name = f"{tag}-{n}"
        self._tags.add(name)
        return name

    def product_worker(
        self, settings: Settings, *, pool: str, concurrency: int, tag: str
    ) -> WorkerProcess:
        """`celery -A workers worker` (not yet started)."""
        name = self._name(tag)
        worker = WorkerProcess(
            settings, self.logdir / f"{name}.log", concurrency=concurrency, pool=pool, name=name
        )
        self.workers.append(worker)
        return worker

    def app_worker(
        self,
        app: str,
        *,
        db: int,
        pool: str,
        concurrency: int,
        tag: str,
        vicidial_url: str | None = None,
    ) -> AppWorker:
        """`celery -A bench.naive_app worker` (or careful_app) on Redis db ``db``."""
        name = self._name(tag)
        worker = AppWorker(
            self.settings(tag),
            self.logdir / f"{name}.log",
            concurrency=concurrency,
            pool=pool,
            name=name,
            app=app,
            extra_env={
                "BENCH_BROKER_URL": self.url(db),
                "BENCH_VICIDIAL_URL": vicidial_url or self.sim.url,
                "BENCH_VICIDIAL_USER": API_USER,
                "BENCH_VICIDIAL_PASS": API_PASS,
            },
        )
        self.workers.append(worker)
        return worker

    def start_all(self, workers: Sequence[WorkerProcess], timeout: float = 90.0) -> None:
        """Start side by side (the imports overlap), then wait for each to be ready."""
        for worker in workers:
            worker.start(wait=False)
        for worker in workers:
            worker.wait_ready(timeout)

    @staticmethod
    def stop_all(workers: Sequence[WorkerProcess]) -> None:
        for worker in workers:
            worker.stop(timeout=30)
