"""Benchmark 5: Redis commands and round trips per added lead, and worker memory.

* ``INFO commandstats`` before and after N leads through the product's worker
  (the pool and concurrency shipped in docker-compose.yml, zero-latency
  simulator). The enqueue's own commands are measured alone first (no worker)
  and subtracted, as is the idle background (scheduler ticks, heartbeats,
  kombu's polls) measured over a few idle seconds. Commands run by Lua scripts
  are counted in commandstats under their own names, next to the EVALSHA
  that ran them.
* ``MONITOR`` during a smaller run splits what the worker sends (round trips:
  a MULTI..EXEC block counts as one) from what the scripts run inside Redis,
  script by script.
* The worker's VmRSS (/proc/PID/status) after 1,000 and 10,000 leads.
* For scale: the commands per lead of the careful Celery task (bench/careful_app.py).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from importlib import resources
from typing import Any

import redis

from bench.common import AGENT, Env, Goal, Section, rss_kb
from bench.latency import compose_worker_settings
from bench.throughput import celery_enqueuer
from dispatcher.config.settings import Settings
from dispatcher.ops.producer import enqueue_leads

NAME = "cost"
IDLE_S = 3.0
CAREFUL_DB = 2

#: The product's scripts by SHA1; a call is named by script and command ("execution:claim").
SCRIPT_NAMES = {
    hashlib.sha1(
        resources.files("dispatcher.store").joinpath(f"{name}.lua").read_text("utf-8").encode()
    ).hexdigest(): name
    for name in ("execution", "fleet", "broker")
}


def script_call(words: list[str]) -> str:
    """'execution:claim' for ``EVALSHA <sha> <numkeys> <keys...> "claim" ...``."""
    script = SCRIPT_NAMES.get(words[1].strip('"'), "other")
    try:
        numkeys = int(words[2].strip('"'))
        command = words[3 + numkeys].strip('"')
    except (IndexError, ValueError):
        return script
    return f"{script}:{command}"


def commandstats(client: redis.Redis) -> Counter[str]:
    info: dict[str, Any] = client.info("commandstats")
    return Counter({k.removeprefix("cmdstat_").upper(): int(v["calls"]) for k, v in info.items()})


def _leads(env: Env, n: int) -> list[dict[str, str]]:
    return [
        {"agent_user": AGENT, "phone_number": p, "first_name": "Bench", "last_name": "Mark"}
        for p in env.phones(n)
    ]


def run_leads(env: Env, settings: Settings, n: int, timeout: float = 300.0) -> float:
    env.counter.arm(n)
    t0 = time.perf_counter()
    enqueue_leads(_leads(env, n), settings=settings)
    if not env.counter.wait(timeout):
        raise RuntimeError(f"only {env.counter.count}/{n} leads added in {timeout:.0f} s")
    return time.perf_counter() - t0


def per_lead(delta: Mapping[str, float], n: int) -> dict[str, float]:
    return {k: v / n for k, v in sorted(delta.items(), key=lambda kv: -kv[1]) if v}


class Monitor:
    """Records MONITOR output in a thread until stopped."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.entries: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.client.monitor() as monitor:
            self._ready.set()
            for entry in monitor.listen():
                self.entries.append(entry)
                if self._stop.is_set():
                    return

    def start(self) -> Monitor:
        self._thread.start()
        self._ready.wait(5)
        time.sleep(0.2)
        return self

    def stop(self, poke: redis.Redis) -> None:
        self._stop.set()
        poke.ping()
        self._thread.join(10)
        self.client.close()


def analyse_monitor(entries: list[dict[str, Any]], *, start: float, end: float) -> dict[str, Any]:
    """Split a MONITOR log between ``start`` and ``end`` into worker round trips and Lua."""
    producers: set[str] = set()
    client_cmds: Counter[str] = Counter()
    lua_cmds: dict[str, Counter[str]] = defaultdict(Counter)
    evalsha: Counter[str] = Counter()
    round_trips = 0
    in_multi: dict[str, bool] = {}
    current_script = ("", "")  # (connection, script name)
    for entry in entries:
        if not start <= float(entry["time"]) <= end:
            continue
        words = str(entry["command"]).split()
        if not words:
            continue
        name = words[0].upper()
        if entry.get("client_type") == "lua":
            owner, script = current_script
            if owner not in producers:
                lua_cmds[script][name] += 1
            continue
        conn = f"{entry.get('client_address')}:{entry.get('client_port')}"
        if name in ("EVALSHA", "EVAL"):
            script = script_call(words) if name == "EVALSHA" else "EVAL"
            if script == "execution:enqueue":
                producers.add(conn)
            current_script = (conn, script)
            if conn not in producers:
                evalsha[script] += 1
        if conn in producers or name in ("PING", "HELLO", "CLIENT"):
            continue
        client_cmds[name] += 1
        if in_multi.get(conn):
            if name == "EXEC":
                in_multi[conn] = False
            continue
        round_trips += 1
        if name == "MULTI":
            in_multi[conn] = True
    return {
        "round_trips": round_trips,
        "client_commands": client_cmds,
        "evalsha_by_script": evalsha,
        "lua_commands_by_script": {k: v for k, v in lua_cmds.items()},
    }


def _scaled(counter: Mapping[str, float], factor: float) -> dict[str, float]:
    return {k: v * factor for k, v in counter.items()}


def run(env: Env, *, quick: bool) -> Section:
    compose = compose_worker_settings()
    n, monitor_n = (400, 150) if quick else (2000, 600)
    rss_points = (1000, 2000) if quick else (1000, 2500, 5000, 10_000)
    idle_s = 1.5 if quick else IDLE_S
    admin = env.client()

    # -- the enqueue alone (no worker on this queue) --------------------------------------
    producer_settings = env.settings("cost-p")
    enqueue_leads(_leads(env, 10), settings=producer_settings)  # scripts loaded
    before = commandstats(admin)
    enqueue_leads(_leads(env, n), settings=producer_settings)
    producer = commandstats(admin) - before
    producer.pop("INFO", None)
    admin.delete(producer_settings.queue)

    settings = env.settings("cost")
    worker = env.product_worker(
        settings, pool=compose.pool, concurrency=compose.concurrency, tag="cost"
    )
    careful = env.app_worker(
        "bench.careful_app", db=CAREFUL_DB, pool="threads", concurrency=8, tag="cost-careful"
    )
    careful_enqueue = celery_enqueuer("bench.careful_app", CAREFUL_DB, env)
    env.client(CAREFUL_DB).flushdb()
    rss: dict[int, int] = {}
    rss_at: dict[int, int] = {}
    try:
        env.start_all([worker, careful])
        assert worker.process is not None
        pid = worker.process.pid
        run_leads(env, settings, 200)  # warm-up: threads, connections
        env.counter.arm(50)
        careful_enqueue(env.phones(50))
        env.counter.wait(60)
        done = 200
        low = rss_points[0]
        run_leads(env, settings, low - done)
        done = low
        rss[low] = rss_kb(pid)
        rss_at[low] = done

        # -- commandstats: the idle background (both workers), then N leads each -----------
        before = commandstats(admin)
        time.sleep(idle_s)
        idle = commandstats(admin) - before
        idle.pop("INFO", None)
        before = commandstats(admin)
        seconds = run_leads(env, settings, n)
        done += n
        total = commandstats(admin) - before
        total.pop("INFO", None)
        background = _scaled(idle, seconds / idle_s)
        worker_side = {k: max(0.0, total[k] - producer[k] - background.get(k, 0.0)) for k in total}
        before = commandstats(admin)
        env.counter.arm(n)
        t0 = time.perf_counter()
        careful_enqueue(env.phones(n))
        if not env.counter.wait(120):
            raise RuntimeError(f"careful task: {env.counter.count}/{n} leads added")
        careful_seconds = time.perf_counter() - t0
        careful_total = commandstats(admin) - before
        careful_total.pop("INFO", None)
        careful_bg = _scaled(idle, careful_seconds / idle_s)
        careful_delta = {
            k: max(0.0, careful_total[k] - careful_bg.get(k, 0.0)) for k in careful_total
        }
        careful.stop()

        # -- MONITOR: round trips and Lua, script by script --------------------------------
        monitor = Monitor(env.url()).start()
        poke = env.client()
        idle_start = time.time()
        time.sleep(idle_s)
        run_start = time.time()
        run_leads(env, settings, monitor_n)
        run_end = time.time()
        done += monitor_n
        monitor.stop(poke)
        idle_part = analyse_monitor(monitor.entries, start=idle_start, end=run_start)
        busy_part = analyse_monitor(monitor.entries, start=run_start, end=run_end)
        scale = (run_end - run_start) / (run_start - idle_start)
        rt_per_lead = (busy_part["round_trips"] - idle_part["round_trips"] * scale) / monitor_n

        # -- memory: RSS at growing job counts ---------------------------------------------
        # Sampled when the worker has added at least each point's number of leads.
        for point in rss_points[1:]:
            while done < point:
                chunk = min(2000, point - done)
                run_leads(env, settings, chunk)
                done += chunk
            rss[point] = rss_kb(pid)
            rss_at[point] = done
    finally:
        env.stop_all([worker, careful])

    # -- report ---------------------------------------------------------------------------
    worker_per_lead = per_lead(worker_side, n)
    producer_per_lead = per_lead(producer, n)
    careful_per_lead = per_lead(careful_delta, n)
    evalsha_worker = worker_per_lead.get("EVALSHA", 0.0)
    lua_total = sum(sum(c.values()) for c in busy_part["lua_commands_by_script"].values())
    client_total = sum(busy_part["client_commands"].values())
    section = Section(
        NAME,
        f"5. Cost per added lead (worker: {compose.pool} {compose.concurrency})",
        ["measure", "per lead", "detail"],
    )

    def top(d: dict[str, float], k: int = 8) -> str:
        shown = [(name, v) for name, v in d.items() if v >= 0.005][:k]
        return ", ".join(f"{name} {v:.2f}" for name, v in shown)

    section.rows += [
        [
            "worker: Redis commands (commandstats)",
            f"{sum(worker_per_lead.values()):.1f}",
            top(worker_per_lead, 12),
        ],
        [
            "worker: EVALSHA",
            f"{evalsha_worker:.2f}",
            top({k: v / monitor_n for k, v in busy_part["evalsha_by_script"].most_common()}),
        ],
        [
            "worker: round trips (MONITOR)",
            f"{rt_per_lead:.2f}",
            "client commands "
            + top({k: v / monitor_n for k, v in busy_part["client_commands"].most_common()}, 10),
        ],
        [
            "worker: commands run inside Lua (MONITOR)",
            f"{lua_total / monitor_n:.1f}",
            "; ".join(
                f"{script}: " + top({c: v / monitor_n for c, v in cnt.most_common()}, 10)
                for script, cnt in busy_part["lua_commands_by_script"].items()
                if sum(cnt.values()) / monitor_n >= 0.005
            ),
        ],
        [
            "producer: enqueue_leads commands (commandstats)",
            f"{sum(producer_per_lead.values()):.2f}",
            top(producer_per_lead),
        ],
        [
            "careful Celery task: commands (commandstats)",
            f"{sum(careful_per_lead.values()):.1f}",
            top(careful_per_lead, 10),
        ],
    ]
    low, high = rss_points[0], rss_points[-1]
    section.rows.append(
        [
            "worker RSS MB after N leads",
            f"{rss[high] / 1024:.1f}",
            ", ".join(f"after {rss_at[p]:,}: {rss[p] / 1024:.1f} MB" for p in rss_points),
        ]
    )
    growth = rss[high] / rss[low]
    section.goals.append(
        Goal(f"worker RSS growth {low:,} -> {high:,} leads", growth, 1.10, False, "x")
    )
    section.notes.append(
        f"commandstats over {n:,} leads, minus the enqueue's own commands (measured alone) "
        f"and the idle background ({sum(idle.values()) / idle_s:.1f} commands/s, scaled to "
        f"the run's {seconds:.1f} s); MONITOR over {monitor_n:,} more leads"
    )
    section.notes.append(
        "commandstats counts each command a Lua script runs under its own name (HSET, "
        "EXPIRE, ...) as well as the EVALSHA itself: the total is work inside Redis; round "
        f"trips are what crosses the network: {client_total / monitor_n:.1f} client commands "
        "per lead, a MULTI..EXEC block counting once"
    )
    section.notes.append("RSS growth goal (ours): < 1.10x from the first to the last point")
    section.data = {
        "leads": n,
        "worker_commands_per_lead": worker_per_lead,
        "producer_commands_per_lead": producer_per_lead,
        "careful_celery_commands_per_lead": careful_per_lead,
        "idle_commands_per_s": {k: v / idle_s for k, v in idle.items()},
        "monitor": {
            "leads": monitor_n,
            "round_trips_per_lead": rt_per_lead,
            "client_commands_per_lead": {
                k: v / monitor_n for k, v in busy_part["client_commands"].most_common()
            },
            "evalsha_per_lead": {
                k: v / monitor_n for k, v in busy_part["evalsha_by_script"].items()
            },
            "lua_commands_per_lead": {
                s: {k: v / monitor_n for k, v in c.items()}
                for s, c in busy_part["lua_commands_by_script"].items()
            },
        },
        "worker_rss_kb": {str(rss_at[k]): v for k, v in rss.items()},
    }
    return section
