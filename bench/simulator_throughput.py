"""How many external_add_lead calls per second the VICIdial simulator answers.

Run: ``python bench/simulator_throughput.py [--seconds 3] [--threads 8]``

Two clients, each for a few seconds: one keep-alive ``httpx.Client`` calling
sequentially, then ``--threads`` threads sharing one ``httpx.Client``. Both against
a simulator in this process (as the test suite uses it: client and server share
the GIL) and against ``python -m dispatcher.simulator`` in a separate process (as
``dispatcher simulate`` runs). Figures are printed, not asserted. For scale, the
spec measured a real VICIdial (PHP 8.2 built-in server, 4 workers, MariaDB) at
about 500 sequential calls/s and 900 calls/s with 8 concurrent clients on a
2-core machine.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from dispatcher.simulator import Simulator

BASE = {
    "source": "bench",
    "user": "6666",
    "pass": "1234",
    "function": "external_add_lead",
    "agent_user": "1000",
    "phone_code": "1",
}


@dataclass
class Result:
    calls: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    def line(self, label: str) -> str:
        lat = sorted(self.latencies_ms) or [0.0]
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (
            f"  {label:<34} {self.calls / self.seconds:>8.0f} calls/s   "
            f"median {statistics.median(lat):6.2f} ms   p99 {p99:6.2f} ms   "
            f"({self.calls} calls, {self.errors} errors)"
        )


def run(url: str, *, threads: int, seconds: float) -> Result:
    """Call ``url`` from ``threads`` threads sharing one keep-alive client (1 = sequential)."""
    numbers = itertools.count(1)
    lock = threading.Lock()
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    with httpx.Client(timeout=10, limits=httpx.Limits(max_connections=threads)) as client:

        def worker() -> None:
            nonlocal errors
            mine: list[float] = []
            failed = 0
            while time.perf_counter() < deadline:
                with lock:
                    n = next(numbers)
                params = {**BASE, "value": f"72{n:08d}"}
                started = time.perf_counter()
                try:
                    reply = client.get(url, params=params)
                    if not reply.text.startswith("SUCCESS: lead added"):
                        failed += 1
                except httpx.HTTPError:
                    failed += 1
                mine.append((time.perf_counter() - started) * 1000)
            with lock:
                latencies.extend(mine)
                errors += failed

        started = time.perf_counter()
        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        elapsed = time.perf_counter() - started
    return Result(len(latencies), errors, elapsed, latencies)


@contextmanager
def separate_process() -> Iterator[str]:
    """Run ``python -m dispatcher.simulator`` on a free port; yield its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher.simulator", "--port", "0", "--quiet"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if "listening on " in line:
                yield line.rsplit("listening on ", 1)[1].strip()
                break
        else:
            raise RuntimeError("the simulator process did not start")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each phase")
    parser.add_argument("--threads", type=int, default=8, help="threads for the shared client")
    args = parser.parse_args()

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    print(
        f"machine: {os.cpu_count()} cores ({usable} usable), Python {platform.python_version()}, "
        f"httpx {httpx.__version__}"
    )

    with Simulator() as sim:
        print(f"simulator in this process ({sim.url}):")
        print(run(sim.url, threads=1, seconds=args.seconds).line("sequential, 1 keep-alive client"))
        threaded = run(sim.url, threads=args.threads, seconds=args.seconds)
        print(threaded.line(f"{args.threads} threads, 1 shared client"))
        print(f"  leads stored: {len(sim.leads)}, calls answered: {sim.call_count}")

    with separate_process() as url:
        print(f"simulator in its own process ({url}):")
        print(run(url, threads=1, seconds=args.seconds).line("sequential, 1 keep-alive client"))
        threaded = run(url, threads=args.threads, seconds=args.seconds)
        print(threaded.line(f"{args.threads} threads, 1 shared client"))


if __name__ == "__main__":
    main()
