"""Benchmark 12: the two ways into VICIdial side by side (issue 27): leads for a list
(add_lead) at the efficiency of leads for an agent (external_add_lead).

Four systems on the same Redis server and the same zero-latency simulator, the same
pool and concurrency, measured in rotated rounds within one run:

* ``product agent`` and ``product list``: one ``celery -A workers worker`` (the
  threads pool, the lead engine), fed by ``enqueue_leads`` with leads for agent 1000,
  or for list 101 (campaign TESTCAMP: the add_lead lock of each phone, the list lanes,
  the list client);
* ``careful agent``: bench/careful_app.py (external_add_lead, one ``httpx.Client`` per
  process); ``careful list``: bench/careful_list_app.py, the same task doing add_lead.

A round enqueues N leads and ends when the simulator has stored all N: throughput =
N / (first enqueue call -> last lead stored). Then ``MONITOR`` counts the Redis round
trips per added lead the worker makes for each target (bench/cost.py's reading: the
idle background measured alone and subtracted). Both targets' DNC checks are on (a list
lead's campaign DNC check with its campaign); no duplicate check (the simulator's is a
scan of every lead: it would measure the simulator), while the product still takes the
phone's add_lead lock for every list lead, in its claim.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.common import AGENT, Env, Goal, Section, median, rotations
from bench.cost import Monitor, analyse_monitor
from bench.throughput import Round, celery_enqueuer, measure_round
from dispatcher.config.settings import Settings
from dispatcher.ops.producer import enqueue_leads
from dispatcher.store.keys import Keys

NAME = "targets"
SYSTEMS = ("product agent", "product list", "careful agent", "careful list")
CAREFUL_DB, CAREFUL_LIST_DB = 2, 3
LIST_ID, CAMPAIGN = "101", "TESTCAMP"
#: The producer's batches, as in bench/throughput.py.
PRODUCER_BATCH = 250


def agent_lead(phone: str) -> dict[str, str]:
    return {"agent_user": AGENT, "phone_number": phone, "first_name": "Bench", "last_name": "Mark"}


def list_lead(phone: str) -> dict[str, str]:
    return {
        "list_id": LIST_ID,
        "campaign_id": CAMPAIGN,
        "phone_number": phone,
        "first_name": "Bench",
        "last_name": "Mark",
    }


def product_enqueuer(
    settings: Settings, lead: Callable[[str], dict[str, str]]
) -> Callable[[list[str]], None]:
    def enqueue(phones: list[str]) -> None:
        for start in range(0, len(phones), PRODUCER_BATCH):
            chunk = phones[start : start + PRODUCER_BATCH]
            enqueue_leads([lead(p) for p in chunk], settings=settings)

    return enqueue


def careful_list_enqueuer(env: Env) -> Callable[[list[str]], None]:
    import bench.careful_list_app as app

    app.app.conf.broker_url = env.url(CAREFUL_LIST_DB)
    task = app.add_lead

    def enqueue(phones: list[str]) -> None:
        for phone in phones:
            task.delay(**list_lead(phone))

    return enqueue


def round_trips(
    env: Env, enqueue: Callable[[list[str]], None], n: int, idle_s: float
) -> dict[str, Any]:
    """The worker's Redis round trips per added lead over ``n`` leads (MONITOR)."""
    monitor = Monitor(env.url()).start()
    poke = env.client()
    idle_start = time.time()
    time.sleep(idle_s)
    run_start = time.time()
    env.counter.arm(n)
    enqueue(env.phones(n))
    if not env.counter.wait(120):
        raise RuntimeError(f"only {env.counter.count}/{n} leads added")
    run_end = time.time()
    monitor.stop(poke)
    idle = analyse_monitor(monitor.entries, start=idle_start, end=run_start)
    busy = analyse_monitor(monitor.entries, start=run_start, end=run_end)
    scale = (run_end - run_start) / (run_start - idle_start)
    lua = sum(sum(c.values()) for c in busy["lua_commands_by_script"].values())
    return {
        "leads": n,
        "round_trips_per_lead": (busy["round_trips"] - idle["round_trips"] * scale) / n,
        "evalsha_per_lead": {k: v / n for k, v in busy["evalsha_by_script"].most_common()},
        "lua_commands_per_lead": lua / n,
    }


def run(env: Env, *, quick: bool) -> Section:
    n, rounds, warmup, monitor_n = (200, 1, 20, 150) if quick else (1500, 3, 50, 600)
    idle_s = 1.5 if quick else 3.0
    pool, concurrency = "threads", 8
    settings = env.settings("tg")
    for db in (CAREFUL_DB, CAREFUL_LIST_DB):
        env.client(db).flushdb()
    product = env.product_worker(settings, pool=pool, concurrency=concurrency, tag="tg")
    careful = env.app_worker(
        "bench.careful_app", db=CAREFUL_DB, pool=pool, concurrency=concurrency, tag="tg-careful"
    )
    careful_list = env.app_worker(
        "bench.careful_list_app",
        db=CAREFUL_LIST_DB,
        pool=pool,
        concurrency=concurrency,
        tag="tg-careful-list",
    )
    workers = {
        "product agent": product,
        "product list": product,
        "careful agent": careful,
        "careful list": careful_list,
    }
    enqueuers = {
        "product agent": product_enqueuer(settings, agent_lead),
        "product list": product_enqueuer(settings, list_lead),
        "careful agent": celery_enqueuer("bench.careful_app", CAREFUL_DB, env),
        "careful list": careful_list_enqueuer(env),
    }
    rows: list[Round] = []
    trips: dict[str, dict[str, Any]] = {}
    env.start_all([product, careful, careful_list])
    try:
        for system in SYSTEMS:  # warm-up: imports, connections, the index key
            measure_round(env, system, -1, workers[system], enqueuers[system], warmup, 60)
        for r, system in rotations(SYSTEMS, rounds):
            row = measure_round(
                env, system, r, workers[system], enqueuers[system], n, timeout=60 + n / 10
            )
            rows.append(row)
            print(f"    round {r + 1}/{rounds} {system:<14} {row.rate:7.1f} leads/s", flush=True)
        careful.stop()
        careful_list.stop()
        for target in ("agent", "list"):
            trips[target] = round_trips(
                env, enqueuers[f"product {target}"], monitor_n, idle_s=idle_s
            )
    finally:
        env.stop_all([product, careful, careful_list])
    dead = env.client().zcard(Keys.of(settings).dead_letters)
    if dead:
        raise RuntimeError(f"the product left {dead} dead letters: see {env.logdir}")

    by_system = {s: [r for r in rows if r.system == s] for s in SYSTEMS}
    rate = {s: median([r.rate for r in by_system[s]]) for s in SYSTEMS}
    cpu = {
        s: 1000
        * sum(r.worker_cpu_s for r in by_system[s])
        / max(1, sum(r.leads for r in by_system[s]))
        for s in SYSTEMS
    }
    section = Section(
        NAME,
        f"12. Two ways into VICIdial: leads for a list vs for an agent ({pool} {concurrency}, "
        "zero-latency simulator)",
        [
            "system",
            "leads/s",
            "rounds",
            "vs careful (same target)",
            "worker CPU ms/lead",
            "Redis round trips/lead",
        ],
    )
    for system in SYSTEMS:
        runs = by_system[system]
        target = system.split()[-1]
        careful_rate = rate[f"careful {target}"]
        section.rows.append(
            [
                system,
                f"{rate[system]:.0f}",
                f"{min(r.rate for r in runs):.0f}-{max(r.rate for r in runs):.0f}",
                f"{rate[system] / careful_rate:.2f}" if careful_rate else "",
                f"{cpu[system]:.2f}",
                f"{trips[target]['round_trips_per_lead']:.2f}"
                if system.startswith("product")
                else "",
            ]
        )
    ratio_list = rate["product list"] / rate["careful list"]
    ratio_agent = rate["product agent"] / rate["careful agent"]
    section.goals += [
        Goal("product list / careful list (add_lead)", ratio_list, 1.2, unit="x"),
        Goal("product agent / careful agent (external_add_lead)", ratio_agent, 1.2, unit="x"),
        Goal(
            "list efficiency: (list / careful list) / (agent / careful agent)",
            ratio_list / ratio_agent,
            0.9,
            unit="x",
        ),
        Goal(
            "Redis round trips per list lead",
            trips["list"]["round_trips_per_lead"],
            3.0,
            higher_is_better=False,
            unit="",
        ),
    ]
    section.notes.append(
        f"{n} leads per round, {rounds} rotated round(s) per system after a warm-up; ratios "
        "of the median rates; round trips by MONITOR over "
        f"{monitor_n} more leads of each target (agent: "
        f"{trips['agent']['round_trips_per_lead']:.2f}, list: "
        f"{trips['list']['round_trips_per_lead']:.2f}); duplicate leads stored: "
        f"{env.duplicates()}"
    )
    section.data = {
        "leads_per_round": n,
        "rounds": [r.to_dict() for r in rows],
        "median_rate": rate,
        "worker_cpu_ms_per_lead": cpu,
        "ratios": {
            "product_list_vs_careful_list": ratio_list,
            "product_agent_vs_careful_agent": ratio_agent,
            "product_list_vs_product_agent": rate["product list"] / rate["product agent"],
        },
        "monitor": trips,
    }
    return section
