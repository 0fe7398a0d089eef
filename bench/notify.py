"""Benchmark 11: outcome notifications must not slow the lead path (issue 28, item 6).

The same worker (``celery -A workers worker``) in three configurations, side by side in
rotated rounds of one run, each with its own key space:

* ``off``: no receiver (``DISPATCHER_NOTIFY_URL`` unset): what the lead path costs today;
* ``on, receiver up``: every job notifies a receiver that answers 200 at once (a small
  HTTP server in a process of its own, as the producer's app would be; it counts the
  events and how long after their outcome each arrived);
* ``on, up, no CPU share``: the same with ``DISPATCHER_NOTIFY_CPU_SHARE=0`` (the sender
  never yields to the leads): what the share buys (no goal);
* ``on, receiver slow``: the receiver takes 2 s to answer each POST (its slots stay full,
  the backlog grows);
* ``on, receiver down``: every job notifies a URL nothing listens on (connection
  refused): every POST fails, the breaker opens, the backlog waits in Redis.

Two rows, as the product's own benchmarks: **throughput** (zero-latency VICIdial, threads
8: CPU-bound, where the sender's cost shows most) and **100 ms latency** (the shipped
worker, threads 64). A round enqueues N leads and ends when the simulator stored all N
(leads/s end to end, as bench/throughput.py); the ratios to ``off`` are the goal (within
10%: >= 0.9). After a round of the receiver-up system the bench waits until its outbox is
empty (the notification lag after the last lead is reported), so that no round pays for
another's notifications; the receiver-down system's backlog stays (a dead receiver's
steady state: its events wait out their backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import socket
import time
from datetime import datetime
from typing import Any

from bench.common import Env, Goal, Section, SimulatorProcess, median, rotations
from bench.throughput import Round, measure_round, product_enqueuer
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.store.backend import get_backend

NAME = "notify"
UP, NO_SHARE, SLOW, DOWN = (
    "on, receiver up",
    "on, up, no CPU share",
    "on, receiver slow",
    "on, receiver down",
)
SYSTEMS = ("off", UP, NO_SHARE, SLOW, DOWN)
#: Systems whose ratio to ``off`` is a goal (the no-share one shows what the share buys).
GOAL_SYSTEMS = (UP, SLOW, DOWN)
#: How long the slow receiver takes to answer each POST.
SLOW_S = 2.0
SECRET = "bench-notify-secret-0123456789"
#: (row, VICIdial latency ms, pool, concurrency)
ROWS = (("throughput", 0.0, "threads", 8), ("100 ms latency", 100.0, "threads", 64))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ReceiverProcess:
    """A receiver in a process of its own: answers 200 to every POST, keeps how long after
    its ``created_at`` each event arrived."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.port = free_port()
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_serve_receiver, args=(child, self.port), daemon=True, name="bench-receiver"
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/dispatcher"

    @property
    def slow_url(self) -> str:
        """Answered after :data:`SLOW_S` (a slow receiver)."""
        return f"http://127.0.0.1:{self.port}/slow/dispatcher"

    @property
    def pid(self) -> int:
        return self._process.pid or 0

    def start(self) -> ReceiverProcess:
        self._process.start()
        if not self._conn.poll(60):
            raise RuntimeError("the receiver process did not start")
        self._conn.recv()
        return self

    def take(self) -> list[float]:
        """The lags (seconds) of the events received since the last call."""
        self._conn.send("take")
        lags: list[float] = self._conn.recv()
        return lags

    def stop(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(Exception):
                self._conn.send("stop")
            self._process.join(5)
        if self._process.is_alive():
            self._process.kill()


def _serve_receiver(conn: Any, port: int) -> None:
    lags: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                slow = head.startswith(b"POST /slow/")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                if slow:
                    await asyncio.sleep(SLOW_S)
                created = json.loads(body).get("created_at")
                if created and not slow:
                    lags.append(time.time() - datetime.fromisoformat(created).timestamp())
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        conn.send("ready")
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "take":
                taken = list(lags)
                lags.clear()
                conn.send(taken)
            else:
                server.close()
                return

    asyncio.run(main())


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _settings(
    env: Env, tag: str, system: str, receiver: ReceiverProcess, down: str, vicidial_url: str
) -> Settings:
    notify: dict[str, Any] = {}
    if system != "off":
        url = {SLOW: receiver.slow_url, DOWN: down}.get(system, receiver.url)
        notify = {"notify_url": url, "notify_secret": SECRET}
        if system == NO_SHARE:
            notify["notify_cpu_share"] = 0.0
    return env.settings(tag, vicidial_url=vicidial_url, **notify)


def _drain(settings: Settings, timeout: float) -> float | None:
    """Seconds until the outbox is empty (None: not within ``timeout``)."""
    outbox = get_backend(settings).outbox
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if outbox.counts().pending == 0:
            return time.perf_counter() - t0
        time.sleep(0.02)
    return None


def run(env: Env, *, quick: bool) -> Section:
    rounds = 1 if quick else 3
    sizes = {"throughput": 300 if quick else 2000, "100 ms latency": 400 if quick else 2000}
    receiver = ReceiverProcess().start()
    down = f"http://127.0.0.1:{free_port()}/hooks/dispatcher"  # nothing listens there
    sim = SimulatorProcess().start()
    results: dict[str, list[Round]] = {}
    drains: dict[str, list[float | None]] = {}
    lags: dict[str, list[float]] = {}
    backlog_down: dict[str, int] = {}
    try:
        for row, latency_ms, pool, concurrency in ROWS:
            sim.set_latency(latency_ms)
            workers: dict[str, WorkerProcess] = {}
            enqueuers = {}
            settings: dict[str, Settings] = {}
            for i, system in enumerate(SYSTEMS):
                tag = f"nt-{concurrency}-{i}"
                settings[system] = _settings(env, tag, system, receiver, down, sim.url)
                workers[system] = env.product_worker(
                    settings[system], pool=pool, concurrency=concurrency, tag=tag
                )
                enqueuers[system] = product_enqueuer(settings[system])
            env.start_all(list(workers.values()))
            try:
                for system in SYSTEMS:  # warm-up: connections, the dead receiver's breaker
                    measure_round(
                        env, system, -1, workers[system], enqueuers[system], 50, 60, sim=sim
                    )
                    _drain(settings[system], 30) if system in (UP, NO_SHARE) else None
                receiver.take()
                n = sizes[row]
                for r, system in rotations(SYSTEMS, rounds):
                    one = measure_round(
                        env,
                        system,
                        r,
                        workers[system],
                        enqueuers[system],
                        n,
                        timeout=60 + n / 5,
                        sim=sim,
                    )
                    results.setdefault(row, []).append(one)
                    if system in (UP, NO_SHARE):
                        drains.setdefault(f"{row}/{system}", []).append(
                            _drain(settings[system], 120)
                        )
                        lags.setdefault(f"{row}/{system}", []).extend(receiver.take())
                    print(
                        f"    {row} round {r + 1}/{rounds} {system:<18} {one.rate:7.1f} leads/s",
                        flush=True,
                    )
                for system in (SLOW, DOWN):
                    backlog_down[f"{row}/{system}"] = (
                        get_backend(settings[system]).outbox.counts().pending
                    )
            finally:
                env.stop_all(list(workers.values()))
        duplicates = sum(n - 1 for n in sim.count_by_phone().values() if n > 1)
    finally:
        sim.stop()
        receiver.stop()

    section = Section(
        NAME,
        "11. Outcome notifications and the lead path (leads/s end to end)",
        ["row", "notifications", "leads/s", "rounds", "vs off", "worker CPU ms/lead"],
    )
    data: dict[str, Any] = {"rounds": rounds, "sizes": sizes, "rows": {}}
    for row, latency_ms, pool, concurrency in ROWS:
        runs = results[row]
        rate = {s: median([r.rate for r in runs if r.system == s]) for s in SYSTEMS}
        per_round = {
            s: [
                on.rate / off.rate
                for on, off in zip(
                    [r for r in runs if r.system == s],
                    [r for r in runs if r.system == "off"],
                    strict=True,
                )
            ]
            for s in SYSTEMS[1:]
        }
        for system in SYSTEMS:
            mine = [r for r in runs if r.system == system]
            leads = sum(r.leads for r in mine)
            section.rows.append(
                [
                    f"{row} ({pool} {concurrency})",
                    system,
                    f"{rate[system]:.0f}",
                    f"{min(r.rate for r in mine):.0f}-{max(r.rate for r in mine):.0f}",
                    f"{rate[system] / rate['off']:.2f}",
                    f"{1000 * sum(r.worker_cpu_s for r in mine) / max(1, leads):.2f}",
                ]
            )
        for system in GOAL_SYSTEMS:
            section.goals.append(
                Goal(f"{row}: {system} / off", rate[system] / rate["off"], 0.9, unit="x")
            )
        receivers: dict[str, Any] = {}
        for system in (UP, NO_SHARE):
            key = f"{row}/{system}"
            row_lags = lags.get(key, [])
            row_drains = [d for d in drains.get(key, []) if d is not None]
            p50, p99 = _percentile(row_lags, 0.5), _percentile(row_lags, 0.99)
            receivers[system] = {
                "events_received": len(row_lags),
                "lag_p50_s": p50,
                "lag_p99_s": p99,
                "drain_after_round_s": drains.get(key, []),
            }
            section.notes.append(
                f"{row}, {system}: {len(row_lags)} events received; outcome -> receiver "
                f"p50 {p50 or 0:.2f} s, p99 {p99 or 0:.2f} s; outbox empty "
                f"{max(row_drains or [0.0]):.1f} s after a round's last lead at most"
            )
        section.notes.append(
            f"{row}: events waiting at the end (none lost): receiver slow "
            f"{backlog_down.get(f'{row}/{SLOW}')}, receiver down "
            f"{backlog_down.get(f'{row}/{DOWN}')}"
        )
        data["rows"][row] = {
            "latency_ms": latency_ms,
            "pool": pool,
            "concurrency": concurrency,
            "median_rate": rate,
            "ratio_to_off": {s: rate[s] / rate["off"] for s in SYSTEMS},
            "per_round_ratios": per_round,
            "rounds": [r.to_dict() for r in runs],
            "receivers": receivers,
            "backlog_at_end": {
                system: backlog_down.get(f"{row}/{system}") for system in (SLOW, DOWN)
            },
        }
    section.notes.append(
        f"{sizes} leads per round, {rounds} rotated round(s) per system after a warm-up; "
        "ratios are of the median rates (per-round ratios in the JSON); worker CPU is the "
        f"worker process's (the sender runs in it); duplicate leads stored: {duplicates}"
    )
    section.data = data
    return section
