"""Benchmark 7: speed to lead (priority lanes) and dialer isolation.

* **Speed to lead.** The simulator answers after 100 ms. A bulk backlog (50,000
  leads; 5,000 with --quick) waits on one dialer; realtime leads then arrive at a
  steady 4 per second. Each one's time from ``enqueue_lead`` to ``added`` (the job
  state's ``updated_at``, Redis's clock, minus its ``enqueued_at``) gives p50/p99.
  The careful Celery task (one FIFO queue) meets the same arrivals behind a
  backlog of 20 s of its own work: each realtime lead waits for the whole backlog.
* **Isolation.** Zero-latency simulator as dialer A; dialer B is down (nothing
  listens on its port) and holds 10,000 jobs (2,000 with --quick). A's throughput
  with B's backlog waiting / A's throughput alone, in rotated rounds.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import AGENT, Env, Goal, Section, median, rotations
from bench.latency import compose_worker_settings
from bench.throughput import celery_enqueuer, lead_fields
from dispatcher.config.settings import Settings
from dispatcher.devtools.redis_server import free_port
from dispatcher.ops.producer import enqueue_lead, enqueue_leads
from dispatcher.store.keys import Keys

NAME = "dialers"
LATENCY_MS = 100.0
ARRIVALS_PER_S = 4.0
CAREFUL_DB = 2
_PASSWORDS = {"BENCH_A_PASS": "1234", "BENCH_B_PASS": "1234"}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _arrivals(count: int, send: Any) -> list[float]:
    """Call ``send(i)`` ``count`` times at a steady rate; the wall time of each."""
    times = []
    start = time.time()
    for i in range(count):
        wait = start + i / ARRIVALS_PER_S - time.time()
        if wait > 0:
            time.sleep(wait)
        times.append(time.time())
        send(i)
    return times


def _product_speed(env: Env, *, backlog: int, arrivals: int) -> dict[str, Any]:
    compose = compose_worker_settings()
    settings = env.settings("dl-speed")
    worker = env.product_worker(
        settings, pool=compose.pool, concurrency=compose.concurrency, tag="dl-speed"
    )
    phones = env.phones(backlog)
    for start in range(0, backlog, 5000):
        enqueue_leads([lead_fields(p) for p in phones[start : start + 5000]], settings=settings)
    env.sim.set_latency(LATENCY_MS)
    ids: list[str] = []
    try:
        env.start_all([worker])
        time.sleep(2.0)  # the backlog draining at full speed
        realtime = env.phones(arrivals)
        _arrivals(
            arrivals,
            lambda i: ids.append(enqueue_lead(**lead_fields(realtime[i]), settings=settings)),
        )
        client = env.client()
        latencies: list[float] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pipe = client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(Keys.of(settings).job(job_id), "state", "enqueued_at", "updated_at")
            rows = pipe.execute()
            if all(r[0] == "added" for r in rows):
                latencies = [float(r[2]) - float(r[1]) for r in rows]
                break
            time.sleep(0.2)
        bulk_left = int(client.llen(Keys.of(settings).lane("default", "bulk")))
    finally:
        env.sim.set_latency(0)
        env.stop_all([worker])
        _drop_keys(env, settings)
    return {
        "backlog": backlog,
        "bulk_left_at_end": bulk_left,
        "latencies_s": latencies,
        "complete": len(latencies) == arrivals,
    }


def _careful_speed(env: Env, *, arrivals: int) -> dict[str, Any]:
    """One FIFO: realtime leads behind about 20 s of the careful task's own work."""
    env.client(CAREFUL_DB).flushdb()
    worker = env.app_worker(
        "bench.careful_app", db=CAREFUL_DB, pool="threads", concurrency=8, tag="dl-careful"
    )
    enqueue = celery_enqueuer("bench.careful_app", CAREFUL_DB, env)
    backlog = int(8 / (LATENCY_MS / 1000) * 20)  # 8 slots x 10 calls/s x 20 s
    env.sim.set_latency(LATENCY_MS)
    seen: dict[str, float] = {}
    realtime = env.phones(arrivals)
    wanted = set(realtime)
    lock = threading.Lock()

    def watch() -> None:
        # The simulator keeps the last 1,000 requests: read them as they come.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(seen) < arrivals:
            for record in env.sim.requests:
                phone = record.fields.get("phone_number", "")
                if phone in wanted:
                    with lock:
                        seen.setdefault(phone, record.at)
            time.sleep(0.05)

    try:
        env.start_all([worker])
        enqueue(env.phones(backlog))
        time.sleep(2.0)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        sent = _arrivals(arrivals, lambda i: enqueue([realtime[i]]))
        watcher.join(130)
    finally:
        env.sim.set_latency(0)
        env.stop_all([worker])
        env.client(CAREFUL_DB).flushdb()
    latencies = [seen[p] - t for p, t in zip(realtime, sent, strict=True) if p in seen]
    return {"backlog": backlog, "latencies_s": latencies, "complete": len(latencies) == arrivals}


def _drop_keys(env: Env, settings: Settings) -> None:
    client = env.client()
    for pattern in (Keys.of(settings).pattern, f"{settings.queue}*"):
        keys = list(client.scan_iter(match=pattern, count=10_000))
        for start in range(0, len(keys), 10_000):
            client.delete(*keys[start : start + 10_000])


def _dialers_file(env: Env, path: Path, b_url: str) -> Path:
    path.write_text(
        'default = "a"\n\n'
        f'[dialers.a]\nurl = "{env.sim.url}"\nuser = "6666"\npass_env = "BENCH_A_PASS"\n\n'
        f'[dialers.b]\nurl = "{b_url}"\nuser = "6666"\npass_env = "BENCH_B_PASS"\n'
    )
    return path


def _isolation(env: Env, *, n: int, b_backlog: int, rounds: int) -> dict[str, Any]:
    compose = compose_worker_settings()
    os.environ.update(_PASSWORDS)  # the dialers file names them (pass_env)
    b_url = f"http://127.0.0.1:{free_port()}/agc/api.php"  # nothing listens: B is down
    path = _dialers_file(env, env.workdir / "bench-dialers.toml", b_url)
    settings = env.settings(
        "dl-iso",
        dialers_file=str(path),
        vicidial_url=None,
        vicidial_user=None,
        vicidial_pass=None,
        breaker_pause_s=5.0,
    )
    worker = env.product_worker(
        settings, pool=compose.pool, concurrency=compose.concurrency, tag="dl-iso"
    )
    worker.extra_env = dict(_PASSWORDS)
    rates: dict[str, list[float]] = {"alone": [], "b down, 10k waiting": []}
    client = env.client()
    b_lane = Keys.of(settings).lane("b", "bulk")
    try:
        env.start_all([worker])
        _a_round(env, settings, 200, 60)  # warm-up
        for r, system in rotations(list(rates), rounds):
            client.delete(b_lane)
            if system != "alone":
                leads = [
                    {"agent_user": AGENT, "phone_number": p, "dialer": "b"}
                    for p in env.phones(b_backlog)
                ]
                for start in range(0, len(leads), 5000):
                    enqueue_leads(leads[start : start + 5000], settings=settings)
            rate = _a_round(env, settings, n, 120)
            rates[system].append(rate)
            print(
                f"    round {r + 1}/{rounds} dialer A, {system:<20} {rate:7.1f} leads/s", flush=True
            )
    finally:
        env.stop_all([worker])
        _drop_keys(env, settings)
    return {"rates": rates, "b_backlog": b_backlog}


def _a_round(env: Env, settings: Settings, n: int, timeout: float) -> float:
    env.counter.arm(n)
    t0 = time.perf_counter()
    enqueue_leads([{**lead_fields(p), "dialer": "a"} for p in env.phones(n)], settings=settings)
    if not env.counter.wait(timeout):
        raise RuntimeError(f"dialer A: {env.counter.count}/{n} leads added in {timeout:.0f} s")
    return n / (time.perf_counter() - t0)


def run(env: Env, *, quick: bool) -> Section:
    backlog, arrivals = (5_000, 20) if quick else (50_000, 60)
    product = _product_speed(env, backlog=backlog, arrivals=arrivals)
    careful = _careful_speed(env, arrivals=arrivals)
    iso = _isolation(
        env,
        n=1000 if quick else 3000,
        b_backlog=2_000 if quick else 10_000,
        rounds=1 if quick else 2,
    )
    section = Section(
        NAME,
        f"7. Speed to lead (simulator {LATENCY_MS:.0f} ms) and dialer isolation",
        ["measure", "product", "careful Celery task (one FIFO)"],
    )

    def pcts(data: dict[str, Any]) -> tuple[float, float]:
        values = data["latencies_s"] or [float("nan")]
        return _percentile(values, 0.5), _percentile(values, 0.99)

    p50, p99 = pcts(product)
    c50, c99 = pcts(careful)
    section.rows.append(
        [
            "realtime lead, enqueue -> added: p50 / p99 (s)",
            f"{p50:.2f} / {p99:.2f}",
            f"{c50:.1f} / {c99:.1f}",
        ]
    )
    section.rows.append(
        [
            "bulk backlog when the realtime leads arrived",
            f"{product['backlog']:,} leads "
            f"({product['bulk_left_at_end']:,} still waiting at the end)",
            f"{careful['backlog']:,} leads (20 s of its work)",
        ]
    )
    alone = median(iso["rates"]["alone"])
    blocked = median(iso["rates"]["b down, 10k waiting"])
    section.rows.append(
        [
            "dialer A throughput: alone / B down with its backlog (leads/s)",
            f"{alone:.0f} / {blocked:.0f} ({blocked / alone:.2f}x)",
            "-",
        ]
    )
    section.goals.append(
        Goal("realtime lead p99 behind a bulk backlog", p99, 1.0, unit=" s", higher_is_better=False)
    )
    section.goals.append(
        Goal("dialer A with B down and holding a backlog / A alone", blocked / alone, 0.9)
    )
    section.notes.append(
        f"{arrivals} realtime leads at {ARRIVALS_PER_S:g}/s; product: the worker as shipped "
        f"({compose_worker_settings().pool} {compose_worker_settings().concurrency}); careful: "
        "threads 8; latency from the job state (product) or the simulator's request log (careful)"
    )
    section.notes.append(
        f"isolation: B's {iso['b_backlog']:,} jobs wait while B is down (its URL's port has no "
        "listener); A's leads at zero latency"
    )
    section.data = {
        "product": {
            **product,
            "p50_s": p50,
            "p99_s": p99,
            "mean_s": statistics.fmean(product["latencies_s"] or [0]),
        },
        "careful": {**careful, "p50_s": c50, "p99_s": c99},
        "isolation": iso,
    }
    return section
