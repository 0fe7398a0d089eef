"""Benchmark 6: the console's dead-letter list page with up to 100,000 letters in the store.

The real app (``create_app``) answers in this process through Starlette's
TestClient (ASGI, no socket), logged in with a real session, against the
benchmark's Redis. Letters are written with ``DeadLetterStore.record``
(bench/replay.py's ``make_letters``). For each store size, the median and p95
time of a whole GET (routing, the session check, Redis, rendering 50 rows) for:

* the first page; a page in the middle of the store (its cursor from the index);
* the first page of one reason (the per-reason index);
* an agent filter and a dialer filter (read and checked per record; every letter
  matches here);
* a phone filter that matches nothing (the worst case: one bounded read of
  SCAN_BUDGET records per page, however big the store).

Goal: under 100 ms per page at 100,000 letters, and flat: 100,000 letters cost
about what 1,000 do.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.common import Env, Goal, Section, rotations
from bench.replay import REASON, make_letters
from dispatcher.intake import create_app
from dispatcher.intake.console.dead_letters import SCAN_BUDGET
from dispatcher.intake.console.sessions import SessionStore
from dispatcher.ops.selection import Cursor
from dispatcher.store.backend import get_backend
from dispatcher.store.users import UserStore

NAME = "console"
DB = 6
GOAL_MS = 100.0


def _time_get(client: Any, url: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        reply = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        if reply.status_code != 200:
            raise RuntimeError(f"GET {url} -> {reply.status_code}")
    return times


def run(env: Env, *, quick: bool) -> Section:
    from starlette.testclient import TestClient

    db = env.client(DB)
    db.flushdb()
    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    rounds, per_round = (3, 5) if quick else (4, 10)
    # One store per size (its own key prefix), all built first, then measured in
    # rotated rounds: drift in the machine's load touches every size alike.
    clients: dict[int, Any] = {}
    middles: dict[int, str] = {}
    for size in sizes:
        settings = env.settings(
            f"console-{size}", redis_url=env.url(DB), intake_tokens=("bench-token" * 3,)
        )
        built = make_letters(settings, size)
        print(f"    {size:>7,} letters written in {built:.1f} s", flush=True)
        backend = get_backend(settings)
        user = UserStore(backend).add("bench", role="operator", password="bench-password-1")
        token, _ = SessionStore(
            backend, idle_s=settings.console_idle_s, lifetime_s=settings.console_session_s
        ).create(user)
        [(member, score)] = db.zrevrange(
            backend.keys.dead_letters, size // 2, size // 2, withscores=True
        )
        middles[size] = Cursor(float(score), str(member)).encode()
        clients[size] = TestClient(create_app(settings), cookies={"dispatcher_console": token})
    pages = {
        "first page": "/ui/dead-letters",
        "middle page (cursor)": None,
        f"reason={REASON}": f"/ui/dead-letters?reason={REASON}",
        "agent filter": "/ui/dead-letters?agent=1000",
        "dialer filter": "/ui/dead-letters?dialer=default",
        f"phone filter, no match ({SCAN_BUDGET:,} read)": "/ui/dead-letters?phone4=0000",
    }
    samples: dict[str, dict[int, list[float]]] = {p: {s: [] for s in sizes} for p in pages}
    try:
        for size in sizes:  # warm: templates compiled, scripts loaded
            for url in pages.values():
                _time_get(clients[size], url or f"/ui/dead-letters?cursor={middles[size]}", 3)
        for _round, size in rotations(sizes, rounds):
            for label, url in pages.items():
                target = url or f"/ui/dead-letters?cursor={middles[size]}"
                samples[label][size] += _time_get(clients[size], target, per_round)
    finally:
        for client in clients.values():
            client.close()
    results: dict[str, dict[int, dict[str, float]]] = {}
    for label in pages:
        results[label] = {}
        for size in sizes:
            times = sorted(samples[label][size])
            results[label][size] = {
                "median_ms": statistics.median(times),
                "p95_ms": times[max(0, int(len(times) * 0.95) - 1)],
            }
            print(
                f"    {size:>7,} letters  {label:<34} median "
                f"{results[label][size]['median_ms']:6.1f} ms  p95 "
                f"{results[label][size]['p95_ms']:6.1f} ms",
                flush=True,
            )
    db.flushdb()
    requests = rounds * per_round
    section = Section(
        NAME,
        "6. Console: dead-letter list page, server time per page (median / p95 ms)",
        ["page", *[f"{s:,} letters" for s in sizes]],
    )
    for label in pages:
        section.rows.append(
            [label]
            + [
                f"{results[label][s]['median_ms']:.1f} / {results[label][s]['p95_ms']:.1f}"
                for s in sizes
            ]
        )
    big, small = sizes[-1], sizes[0]
    worst = max(results[label][big]["median_ms"] for label in pages)
    section.goals.append(
        Goal(f"slowest page at {big:,} letters (median)", worst, GOAL_MS, False, " ms")
    )

    # The no-match phone filter reads min(store, SCAN_BUDGET) records: below the budget
    # a small store is cheaper by construction, so its flatness is judged from the
    # first size that holds a whole budget.
    def base(label: str) -> int:
        if label.startswith("phone filter"):
            return min((s for s in sizes if s >= SCAN_BUDGET), default=small)
        return small

    growth = max(
        results[label][big]["median_ms"] / results[label][base(label)]["median_ms"]
        for label in pages
    )
    section.goals.append(
        Goal(f"flat: time at {big:,} / time at {small:,} (worst page)", growth, 1.5, False, "x")
    )
    section.notes.append(
        "whole GET through the ASGI app in process (no socket): session check, Redis, "
        "50 rows rendered; 50 letters a page"
    )
    section.data = {"sizes": list(sizes), "requests": requests, "pages": results}
    return section
