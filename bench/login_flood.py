"""Benchmark: the intake's ``POST /v1/leads`` latency during a flood of console logins.

Issue 25: "a flood of logins never slows the intake's 202s". Two real ``dispatcher
serve`` processes (uvicorn, loopback HTTP), side by side in rotated rounds against
the same Redis:

* ``before``: the code of commit 1c0038d (the release before issue 25), extracted with
  ``git archive`` into a scratch directory and imported from there: the Argon2 check
  ran on the event loop's shared thread pool (40 threads) at normal priority;
* ``after``: this checkout: the check runs on :class:`HashingPool` (one thread, nice 10,
  16 waiting).

In each round and for each server: ``CLIENTS`` producers post ``LEADS`` leads each
(closed loop) with no login traffic ("quiet"), then again while ``FLOODERS`` threads
log in as fast as they can with the right password ("flood": every login is a full
Argon2 check; no throttle stops a right password). Printed: p50 and p99 of the
202s, the logins served per second, and the ratio of the flood p99 before/after.
The load generator shares the two cores with the server: the same for both.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, Env, Goal, Section, median, rotations, tree_env
from dispatcher.config.settings import Settings
from dispatcher.devtools.redis_server import free_port
from dispatcher.store.backend import get_backend
from dispatcher.store.users import UserStore

NAME = "login_flood"
#: The release before issue 25.
BEFORE = "1c0038d"
TOKEN = "bench-login-flood-token-0123456789"
USER, PASSWORD = "flood", "flood-password-1"
CLIENTS = 4
FLOODERS = 16
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _extract(commit: str, into: Path) -> Path:
    """The tree of ``commit`` (dispatcher/ and workers/ only) under ``into``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "dispatcher", "workers"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


class Server:
    """One ``python -m dispatcher.intake`` importing the dispatcher package from ``root``."""

    def __init__(self, name: str, root: Path, settings: Settings, log: Path) -> None:
        self.name = name
        self.root = root
        self.settings = settings
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
        env.update(tree_env(settings))
        env.update(
            DISPATCHER_ENV_FILE="/nonexistent",
            DISPATCHER_LOG_LEVEL="WARNING",
            PYTHONPATH=str(root),
        )
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dispatcher.cli", "serve", "--port", str(self.port)],
                cwd=root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name}: dispatcher serve exited")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: dispatcher serve did not answer")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def _post_leads(base: str, n: int, phones: list[str]) -> list[float]:
    """Latencies (ms) of ``n`` POST /v1/leads from one producer, in a closed loop."""
    out = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        for i in range(n):
            body = {"agent_user": "1000", "phone_number": phones[i]}
            started = time.perf_counter()
            reply = client.post("/v1/leads", json=body)
            out.append((time.perf_counter() - started) * 1000)
            if reply.status_code != 202:
                raise RuntimeError(f"POST /v1/leads -> {reply.status_code}: {reply.text[:200]}")
    return out


def _flood(base: str, stop: threading.Event, served: list[int]) -> None:
    """Log in with the right password until ``stop`` (each login one Argon2 check)."""
    with httpx.Client(base_url=base, timeout=60) as client:
        while not stop.is_set():
            client.cookies.clear()
            page = client.get("/ui/login")
            found = _CSRF.search(page.text)
            if found is None:
                raise RuntimeError("no CSRF token on the login page")
            reply = client.post(
                "/ui/login",
                data={"csrf": found.group(1), "username": USER, "password": PASSWORD},
                follow_redirects=False,
            )
            served.append(reply.status_code)


def _phase(env: Env, server: Server, leads: int, *, flood: bool) -> tuple[list[float], float]:
    """Every producer's latencies, and the logins per second served meanwhile."""
    stop = threading.Event()
    served: list[int] = []
    flooders = [
        threading.Thread(target=_flood, args=(server.base, stop, served), daemon=True)
        for _ in range(FLOODERS if flood else 0)
    ]
    for thread in flooders:
        thread.start()
    if flood:
        time.sleep(1.0)  # the flood at full strength before measuring
    results: list[list[float]] = [[] for _ in range(CLIENTS)]
    producers = [
        threading.Thread(
            target=lambda i=i: results[i].extend(_post_leads(server.base, leads, env.phones(leads)))
        )
        for i in range(CLIENTS)
    ]
    started = time.perf_counter()
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join()
    elapsed = time.perf_counter() - started
    logins = sum(1 for code in served if code == 303)
    stop.set()
    for thread in flooders:
        thread.join(60)
    return [x for r in results for x in r], logins / elapsed


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(env: Env, *, quick: bool) -> Section:
    rounds, leads = (2, 150) if quick else (3, 400)
    scratch = Path(tempfile.mkdtemp(prefix="login-flood-", dir=env.workdir))
    trees = {"before": _extract(BEFORE, scratch / "before"), "after": ROOT}
    servers: dict[str, Server] = {}
    try:
        for name, root in trees.items():
            settings = env.settings(f"flood-{name}", intake_tokens=(TOKEN,))
            UserStore(get_backend(settings)).add(USER, role="viewer", password=PASSWORD)
            servers[name] = Server(name, root, settings, env.logdir / f"serve-{name}.log")
        for server in servers.values():
            server.wait_ready()
        figures: dict[str, dict[str, list[Any]]] = {
            name: {"quiet": [], "flood": [], "logins": []} for name in servers
        }
        for n, name in rotations(list(servers), rounds):
            server = servers[name]
            quiet, _ = _phase(env, server, leads, flood=False)
            flooded, rate = _phase(env, server, leads, flood=True)
            figures[name]["quiet"].append(quiet)
            figures[name]["flood"].append(flooded)
            figures[name]["logins"].append(rate)
            print(
                f"    round {n + 1} {name:<6} quiet p99 {_p(quiet, 0.99):6.1f} ms   "
                f"flood p99 {_p(flooded, 0.99):7.1f} ms   logins {rate:5.1f}/s",
                flush=True,
            )
    finally:
        for server in servers.values():
            server.stop()
    rows = []
    data: dict[str, Any] = {"clients": CLIENTS, "flooders": FLOODERS, "leads_per_phase": leads}
    p99s: dict[str, float] = {}
    for name in servers:
        quiet = [x for r in figures[name]["quiet"] for x in r]
        flooded = [x for r in figures[name]["flood"] for x in r]
        p99s[name] = median([_p(r, 0.99) for r in figures[name]["flood"]])
        row = {
            "quiet_p50_ms": statistics.median(quiet),
            "quiet_p99_ms": median([_p(r, 0.99) for r in figures[name]["quiet"]]),
            "flood_p50_ms": statistics.median(flooded),
            "flood_p99_ms": p99s[name],
            "logins_per_s": median(figures[name]["logins"]),
        }
        data[name] = row
        rows.append(
            [
                name,
                f"{row['quiet_p50_ms']:.1f}",
                f"{row['quiet_p99_ms']:.1f}",
                f"{row['flood_p50_ms']:.1f}",
                f"{row['flood_p99_ms']:.1f}",
                f"{row['logins_per_s']:.1f}",
            ]
        )
    ratio = p99s["before"] / p99s["after"] if p99s["after"] else float("inf")
    data["flood_p99_before_over_after"] = ratio
    return Section(
        name=NAME,
        title=f"intake POST /v1/leads during a login flood ({FLOODERS} login loops, "
        f"{CLIENTS} producers)",
        header=[
            "server",
            "quiet p50 ms",
            "quiet p99 ms",
            "flood p50 ms",
            "flood p99 ms",
            "logins/s",
        ],
        rows=rows,
        goals=[
            Goal("flood p99, before / after", ratio, 1.0, unit="x"),
        ],
        notes=[
            f"before = commit {BEFORE} (Argon2 on the shared thread pool); after = this "
            "checkout (HashingPool: 1 thread at nice 10)",
            "p99 per round, median over rounds; every login a full Argon2 check",
        ],
        data=data,
    )
