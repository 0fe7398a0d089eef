"""Which Celery pool and concurrency a worker should run with: a measurement.

Run: ``python bench/worker_pool.py [--leads 2000] [--latency-ms 100] [--repeat 3]
[--configs prefork:2 threads:32 threads:32x2 ...] [--appendfsync always]``

The workload is I/O-bound: a worker spends almost all of a job waiting for
VICIdial's answer. For each pool/concurrency pair this starts a real
``celery -A workers worker`` (:class:`dispatcher.devtools.localfleet.WorkerProcess`, the
command docker-compose runs; ``xP`` starts P of them side by side) against a
real redis-server with the AOF on and fsync on every write (as docker-compose.yml
runs Redis) and the VICIdial simulator answering every call after
``--latency-ms``; enqueues ``--leads`` leads in one batch
(``dispatcher.enqueue_leads``) and times until every one of them is added. It
then checks that every job state says ``added`` and that the simulator stored
each phone number exactly once (exit status 1 otherwise).

Columns: leads/s (enqueue start to the last lead added; with ``--repeat``, the
median run and [min-max]), the ideal rate (slots / latency; one worker process's
HTTP pool holds at most 100 connections, see workers/vicidial.py), the workers'
CPU time per lead and their average CPU use (all their processes), resident
memory (all their processes), and the CPU Redis and the in-process simulator
used. Figures are printed, not asserted. Results and the choice made from them:
docs/DEPLOYING.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess, process_tree
from dispatcher.devtools.redis_server import RedisServer
from dispatcher.ops.producer import enqueue_leads
from dispatcher.simulator import Simulator, SimulatorState
from dispatcher.store.keys import Keys

DEFAULT_CONFIGS = (
    "prefork:2",
    "prefork:4",
    "prefork:8",
    "threads:16",
    "threads:32",
    "threads:64",
    "threads:128",
)
#: Connections one worker process's httpx.Client may open (workers/vicidial.py).
HTTP_POOL = 100
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class Row:
    pool: str
    concurrency: int
    processes: int
    leads: int
    added: int
    dead: int
    seconds: float
    cpu_s: float
    rss_mb: float
    sim_cpu_s: float
    redis_cpu_s: float
    duplicates: int
    not_added: int
    latency_ms: float

    @property
    def label(self) -> str:
        suffix = f" x{self.processes}" if self.processes > 1 else ""
        return f"{self.pool} {self.concurrency}{suffix}"

    @property
    def rate(self) -> float:
        return self.added / self.seconds if self.seconds else 0.0

    @property
    def ideal(self) -> float:
        slots = self.concurrency if self.pool == "prefork" else min(self.concurrency, HTTP_POOL)
        slots *= self.processes
        return slots / (self.latency_ms / 1000.0) if self.latency_ms else float("inf")

    def line(self) -> str:
        cpu_ms = 1000.0 * self.cpu_s / self.added if self.added else 0.0
        busy = 100.0 * self.cpu_s / self.seconds if self.seconds else 0.0
        problems = []
        if self.added < self.leads:
            problems.append(f"only {self.added} added in time")
        if self.dead:
            problems.append(f"{self.dead} dead")
        if self.duplicates:
            problems.append(f"{self.duplicates} DUPLICATES")
        if self.not_added:
            problems.append(f"{self.not_added} not 'added'")
        return (
            f"{self.label:<14}{self.rate:>8.1f}  {self.ideal:>7.0f}"
            f"  {self.seconds:>7.1f}  {cpu_ms:>9.2f}  {busy:>6.0f}%  {self.rss_mb:>7.0f}"
            f"  {self.redis_cpu_s:>9.1f}  {self.sim_cpu_s:>7.1f}  {', '.join(problems) or 'ok'}"
        )


HEADER = (
    f"{'pool':<14}{'leads/s':>8}  {'ideal':>7}  {'seconds':>7}"
    f"  {'cpu ms/lead':>9}  {'cpu':>7}  {'rss MB':>7}  {'redis cpu':>9}  {'sim cpu':>7}  check"
)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def _rss_mb(pid: int) -> float:
    total_kb = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024.0


def measure(
    pool: str,
    concurrency: int,
    processes: int,
    *,
    server: RedisServer,
    sim: Simulator,
    leads: int,
    latency_ms: float,
    max_seconds: float,
    workdir: Path,
) -> Row:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.flushall()
    sim.reset_leads()
    tag = f"bench-{pool}-{concurrency}x{processes}"
    settings = Settings(
        redis_url=server.url,
        vicidial_url=sim.url,
        vicidial_user="6666",
        vicidial_pass="1234",
        log_format="json",
        # A fresh key space per run, so that no state from another run is seen.
        key_prefix=tag,
        queue=tag,
    )
    stats_key = Keys.of(settings).stats
    workers = [
        WorkerProcess(
            settings,
            workdir / f"{tag}-{n}.log",
            pool=pool,
            concurrency=concurrency,
            name=f"{tag}-{n}",
        )
        for n in range(processes)
    ]
    for worker in workers:
        worker.start(wait=False)
    try:
        for worker in workers:
            worker.wait_ready(timeout=60)
        pids = [w.process.pid for w in workers if w.process is not None]
        redis_pid = server.process.pid if server.process is not None else 0
        batch = [
            {"agent_user": "1000", "phone_number": f"72755{n:05d}", "first_name": "Bench"}
            for n in range(leads)
        ]
        cpu0 = sum(_cpu_seconds(pid) for pid in pids)
        redis0 = _cpu_seconds(redis_pid)
        sim0, t0 = time.process_time(), time.perf_counter()
        job_ids = enqueue_leads(batch, settings=settings)
        deadline = t0 + max_seconds
        rss = 0.0
        while True:
            added = int(client.hget(stats_key, "added") or 0)
            dead = int(client.zcard(Keys.of(settings).dead_letters))
            if added:
                rss = max(rss, sum(_rss_mb(pid) for pid in pids))
            if added + dead >= leads or time.perf_counter() > deadline:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        cpu = sum(_cpu_seconds(pid) for pid in pids) - cpu0
        redis_cpu = _cpu_seconds(redis_pid) - redis0
        sim_cpu = time.process_time() - sim0
    finally:
        for worker in workers:
            worker.stop(timeout=60)
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(Keys.of(settings).job(job_id), "state")
    states = pipe.execute()
    dead_letters = client.zcard(Keys.of(settings).dead_letters)
    client.close()
    counts = sim.count_by_phone()
    return Row(
        pool=pool,
        concurrency=concurrency,
        processes=processes,
        leads=leads,
        added=added,
        dead=int(dead_letters),
        seconds=elapsed,
        cpu_s=cpu,
        rss_mb=rss,
        sim_cpu_s=sim_cpu,
        redis_cpu_s=redis_cpu,
        duplicates=sum(n - 1 for n in counts.values() if n > 1),
        not_added=sum(1 for s in states if s != "added"),
        latency_ms=latency_ms,
    )


def parse_config(spec: str) -> tuple[str, int, int]:
    """``threads:64`` or ``threads:32x2`` (two worker processes) -> (pool, concurrency, n)."""
    pool, _, rest = spec.partition(":")
    conc, _, procs = rest.partition("x")
    if pool not in ("prefork", "threads", "solo") or not conc.isdigit():
        raise ValueError(spec)
    if procs and not procs.isdigit():
        raise ValueError(spec)
    return pool, int(conc), int(procs or 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", type=int, default=2000, help="leads per run (default 2000)")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="VICIdial answer time")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=list(DEFAULT_CONFIGS),
        metavar="POOL:N[xP]",
        help="pool:concurrency, xP for P worker processes side by side "
        f"(default: {' '.join(DEFAULT_CONFIGS)})",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per config; the table shows the median run and the range (default 1)",
    )
    parser.add_argument(
        "--appendfsync",
        choices=("always", "everysec", "no"),
        default="always",
        help="Redis AOF fsync policy (default always, as docker-compose.yml runs Redis)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=120.0,
        help="stop a run after this long and report the rate so far (default 120)",
    )
    args = parser.parse_args()
    try:
        configs = [parse_config(spec) for spec in args.configs]
    except ValueError as exc:
        parser.error(f"bad config {exc}: use prefork:N, threads:N or threads:NxP")

    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()} on "
        f"{platform.system()} {platform.release()}; {args.leads} leads per run, "
        f"VICIdial latency {args.latency_ms:g} ms; Redis AOF on, appendfsync {args.appendfsync}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        (Path(tmp) / "redis").mkdir()
        with (
            RedisServer(Path(tmp) / "redis", appendonly=True) as server,
            Simulator(SimulatorState.demo()) as sim,
        ):
            admin = redis.Redis.from_url(server.url)
            admin.config_set("appendfsync", args.appendfsync)
            admin.close()
            sim.set_latency(args.latency_ms)
            print(HEADER, flush=True)
            rows: list[Row] = []
            failed: list[Row] = []
            for pool, concurrency, processes in configs:
                runs = [
                    measure(
                        pool,
                        concurrency,
                        processes,
                        server=server,
                        sim=sim,
                        leads=args.leads,
                        latency_ms=args.latency_ms,
                        max_seconds=args.max_seconds,
                        workdir=Path(tmp),
                    )
                    for _ in range(max(1, args.repeat))
                ]
                runs.sort(key=lambda r: r.rate)
                row = runs[len(runs) // 2]
                rows.append(row)
                failed += [r for r in runs if r.duplicates or r.not_added or r.dead]
                spread = f"  [{runs[0].rate:.0f}-{runs[-1].rate:.0f}]" if len(runs) > 1 else ""
                print(row.line() + spread, flush=True)
    best = max(rows, key=lambda r: r.rate)
    print(f"\nfastest: {best.label} at {best.rate:.0f} leads/s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
