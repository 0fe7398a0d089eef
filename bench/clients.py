"""Benchmark 9: the worker's network clients and default command, before and after issue 24.

Against the simulator answering every call after 100 ms in a process of its own
(as VICIdial would be), side by side in rotated rounds of one run:

* ``raw client``: no queue at all, N concurrent keep-alive POSTs of the same form
  straight at the same server (bench/raw_client.py, a process of its own): the
  ceiling;
* ``plain``: ``celery -A workers worker --loglevel INFO``, no ``-P``, no ``-c``;
* ``README``: the README's ``... --pool threads --concurrency 64``;
* ``before``: the README's command and the plain one of the release before issue
  24 (commit :data:`BEFORE_COMMIT`: the engine's own RESP2 protocol and HTTP/1.1
  client; its plain command ran prefork), from a ``git archive`` of that commit in
  the scratch directory, with this checkout's venv;
* ``own HTTP``: this checkout's worker with the engine's HTTP client (httpcore)
  replaced by the hand-written HTTP/1.1 client it had until 2026-12-07
  (bench/variants/own_http_client.py): what the library client costs;
* ``careful``: bench/careful_app.py (one ``httpx.Client`` per process) with the
  README's pool and concurrency.

In the full run, the same trees with 100 calls in flight (the 2-core host's
row of the latency benchmark, where the CPU per lead decides). Goals (issue 24):
the plain command and the README's each >= 1.5x the careful task and >= 0.9 of
the raw client.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    Env,
    Goal,
    Section,
    SimulatorProcess,
    cpu_seconds,
    median,
    process_tree,
    rotations,
    tree_env,
)
from bench.throughput import celery_enqueuer, product_enqueuer
from dispatcher.devtools.localfleet import WorkerProcess

NAME = "clients"
LATENCY_MS = 100.0
CONCURRENCY = 64
#: 100 calls in flight: the latency benchmark's one-process row of a 2-core host.
HOST_CONCURRENCY = 100
#: The release before issue 24 (the engine's own Redis and HTTP clients).
BEFORE_COMMIT = "1c0038d"
CAREFUL_DB = 2
VARIANT = ROOT / "bench" / "variants" / "own_http_client.py"


@dataclass
class TreeWorker(WorkerProcess):
    """`celery -A workers worker` importing ``workers``/``dispatcher`` from ``root``, with
    only the settings every release knows (an older one refuses unknown variables)."""

    root: Path = ROOT
    env_vars: dict[str, str] = field(default_factory=dict)

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> TreeWorker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
        env.update(self.env_vars, DISPATCHER_ENV_FILE="/nonexistent", PYTHONPATH=str(self.root))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if wait:
            self.wait_ready(timeout)
        return self


def before_tree(dest: Path, commit: str = BEFORE_COMMIT) -> Path | None:
    """``dispatcher/`` and ``workers/`` of ``commit`` under ``dest`` (None without git)."""
    try:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", commit, "dispatcher", "workers"],
            cwd=ROOT,
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def own_http_tree(dest: Path) -> Path:
    """This checkout with the engine's hand-written HTTP client (bench/variants)."""
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("dispatcher", "workers"):
        shutil.copytree(ROOT / package, dest / package, ignore=ignore)
    shutil.copyfile(VARIANT, dest / "workers" / "async_vicidial.py")
    return dest


class RawClient:
    """bench/raw_client.py in a process of its own, driven over its stdin."""

    def __init__(self, url: str, concurrency: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DISPATCHER_ENV_FILE": "/nonexistent"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.raw_client", url, "--concurrency", str(concurrency)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the raw client did not start")

    def run(self, first: int, count: int) -> int:
        """Add those leads; the number that failed."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"run {first} {count}\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().split()
        if not answer or answer[0] != "done":
            raise RuntimeError(f"the raw client answered {answer!r}")
        return int(answer[2])

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
                self.process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


@dataclass
class System:
    label: str
    command: str
    kind: str  # raw | product | careful
    leads: int
    worker: WorkerProcess | None = None
    enqueue: Callable[[list[str]], None] | None = None
    rates: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)


def run(env: Env, *, quick: bool) -> Section:
    rounds = 1 if quick else 3
    n = 600 if quick else 2000
    slow_n = 40 if quick else 150  # the previous plain command: prefork, a child per CPU
    sim = SimulatorProcess().start()
    raw: RawClient | None = None
    systems: list[System] = []
    notes: list[str] = []
    try:
        sim.set_latency(LATENCY_MS)
        scratch = env.workdir / "trees"
        before = before_tree(scratch / "before")
        own = own_http_tree(scratch / "own-http")

        def current(label: str, tag: str, pool: str | None, conc: int | None) -> System:
            settings = env.settings(tag, vicidial_url=sim.url)
            worker = WorkerProcess(
                settings,
                env.logdir / f"{tag}.log",
                pool=pool,
                concurrency=conc,
                name=tag,
                mingle=True,  # the commands as written: Celery's defaults
            )
            env.workers.append(worker)
            flags = f" --pool {pool} --concurrency {conc}" if pool else ""
            return System(
                label,
                f"celery -A workers worker --loglevel INFO{flags}",
                "product",
                n,
                worker,
                product_enqueuer(settings),
            )

        def tree(label: str, tag: str, root: Path, pool: str | None, conc: int | None) -> System:
            settings = env.settings(tag, vicidial_url=sim.url)
            worker = TreeWorker(
                settings,
                env.logdir / f"{tag}.log",
                pool=pool,
                concurrency=conc,
                name=tag,
                mingle=True,
                root=root,
                env_vars=tree_env(settings),
            )
            env.workers.append(worker)
            flags = f" --pool {pool} --concurrency {conc}" if pool else ""
            return System(
                label,
                f"celery -A workers worker{flags} ({root.name})",
                "product",
                n if pool else slow_n,
                worker,
                product_enqueuer(settings),
            )

        systems.append(System("raw client", f"{CONCURRENCY} keep-alive POSTs, no queue", "raw", n))
        systems.append(current("plain", "cl-plain", None, None))
        systems.append(current("README", "cl-readme", "threads", CONCURRENCY))
        if before is not None:
            systems.append(tree("before README", "cl-before", before, "threads", CONCURRENCY))
            systems.append(tree("before plain", "cl-before-plain", before, None, None))
        else:
            notes.append(f"git archive of {BEFORE_COMMIT} failed: no 'before' rows")
        systems.append(tree("own HTTP", "cl-ownhttp", own, "threads", CONCURRENCY))
        env.client(CAREFUL_DB).flushdb()
        careful = env.app_worker(
            "bench.careful_app",
            db=CAREFUL_DB,
            pool="threads",
            concurrency=CONCURRENCY,
            tag="cl-careful",
            vicidial_url=sim.url,
        )
        systems.append(
            System(
                "careful",
                f"celery -A bench.careful_app worker --pool threads --concurrency {CONCURRENCY}",
                "careful",
                n,
                careful,
                celery_enqueuer("bench.careful_app", CAREFUL_DB, env),
            )
        )
        if not quick:
            host = HOST_CONCURRENCY
            systems.append(current(f"README {host}", "cl-readme-host", "threads", host))
            if before is not None:
                systems.append(tree(f"before {host}", "cl-before-host", before, "threads", host))
            systems.append(tree(f"own HTTP {host}", "cl-ownhttp-host", own, "threads", host))

        env.start_all([s.worker for s in systems if s.worker is not None], timeout=120)
        raw = RawClient(sim.url, CONCURRENCY)

        def one_round(system: System, size: int) -> tuple[float, float]:
            phones = env.phones(size)
            sim.arm(size)
            pids = (
                process_tree(system.worker.process.pid)
                if system.worker and system.worker.process
                else []
            )
            if raw is not None and system.kind == "raw":
                pids = [raw.process.pid]
            cpu0 = cpu_seconds(pids)
            t0 = time.perf_counter()
            if system.kind == "raw":
                assert raw is not None
                failed = raw.run(int(phones[0][2:]), size)
                if failed:
                    raise RuntimeError(f"raw client: {failed} calls failed")
            else:
                assert system.enqueue is not None
                system.enqueue(phones)
            if not sim.wait(60 + size / 5):
                raise RuntimeError(f"{system.label}: {sim.count}/{size} leads added in time")
            seconds = time.perf_counter() - t0
            return size / seconds, 1000 * (cpu_seconds(pids) - cpu0) / size

        for system in systems:  # warm-up: imports, connections, pool slots
            one_round(system, 2 * CONCURRENCY if system.kind == "raw" else 20)
        for r, system in rotations(systems, rounds):
            rate, cpu_ms = one_round(system, system.leads)
            system.rates.append(rate)
            system.cpu_ms.append(cpu_ms)
            print(f"    round {r + 1}/{rounds} {system.label:<20} {rate:7.1f} leads/s", flush=True)
        duplicates = sum(c - 1 for c in sim.count_by_phone().values() if c > 1)
    finally:
        if raw is not None:
            raw.close()
        env.stop_all([s.worker for s in systems if s.worker is not None])
        sim.stop()

    return _section(systems, rounds=rounds, n=n, slow_n=slow_n, duplicates=duplicates, notes=notes)


def _section(
    systems: list[System], *, rounds: int, n: int, slow_n: int, duplicates: int, notes: list[str]
) -> Section:
    section = Section(
        NAME,
        f"9. The worker's clients and default command (simulator {LATENCY_MS:.0f} ms, "
        "its own process)",
        [
            "system",
            "leads/s",
            "rounds",
            "of raw client",
            "vs careful",
            "vs before README",
            "worker CPU ms/lead",
        ],
    )
    rate = {s.label: median(s.rates) for s in systems}
    raw, careful = rate["raw client"], rate["careful"]
    before = rate.get("before README")
    for s in systems:
        section.rows.append(
            [
                s.label,
                f"{rate[s.label]:.0f}",
                f"{min(s.rates):.0f}-{max(s.rates):.0f}",
                f"{rate[s.label] / raw:.2f}",
                f"{rate[s.label] / careful:.2f}",
                f"{rate[s.label] / before:.2f}" if before else "-",
                f"{median(s.cpu_ms):.2f}",
            ]
        )
    for label in ("plain", "README"):
        section.goals.append(Goal(f"{label} / careful task", rate[label] / careful, 1.5))
        section.goals.append(Goal(f"{label} / raw client", rate[label] / raw, 0.9))
    section.notes.extend(notes)
    section.notes.append(
        f"{n} leads per round ({slow_n} for the previous plain command: prefork, a child "
        f"per CPU), {rounds} rotated round(s) after a warm-up; the raw client, the careful "
        f"task and the product rows hold {CONCURRENCY} calls in flight; duplicate leads "
        f"stored: {duplicates}"
    )
    section.notes.append(
        f"before = commit {BEFORE_COMMIT} (own RESP2 and HTTP/1.1 clients); own HTTP = "
        "this worker with bench/variants/own_http_client.py (the hand-written HTTP/1.1 "
        "client it had until 2026-12-07) as its HTTP client"
    )
    data: dict[str, Any] = {
        "latency_ms": LATENCY_MS,
        "before_commit": BEFORE_COMMIT,
        "systems": {
            s.label: {
                "command": s.command,
                "median_rate": rate[s.label],
                "rates": s.rates,
                "worker_cpu_ms_per_lead": s.cpu_ms,
                "of_raw_client": rate[s.label] / raw,
                "vs_careful": rate[s.label] / careful,
            }
            for s in systems
        },
        "duplicate_leads_stored": duplicates,
    }
    section.data = data
    return section
