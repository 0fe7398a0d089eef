"""Benchmark 1: pipeline throughput against a zero-latency simulator.

Three systems on the same Redis server, the same pool and the same number of
worker processes, measured in rotated rounds within one run:

* ``product``: ``celery -A workers worker`` (validation, idempotency, claim and
  success scripts, dead letters, logging); leads enqueued with ``enqueue_leads``;
* ``naive``: bench/naive_app.py, ``httpx.post`` per task, ``autoretry_for``;
  leads enqueued with ``add_lead.delay(...)`` in a loop, as its user would;
* ``careful``: bench/careful_app.py, the same with one ``httpx.Client`` per process.

A round enqueues N leads and ends when the simulator has stored all N:
throughput = N / (first enqueue call -> last lead stored).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.common import AGENT, Env, Goal, Section, cpu_seconds, median, process_tree, rotations
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.ops.producer import enqueue_leads
from dispatcher.store.keys import Keys

NAME = "throughput"
SYSTEMS = ("product", "naive", "careful")
NAIVE_DB, CAREFUL_DB = 1, 2


@dataclass
class Round:
    system: str
    round: int
    leads: int
    seconds: float
    enqueue_seconds: float
    complete: bool
    worker_cpu_s: float
    redis_cpu_s: float
    bench_cpu_s: float

    @property
    def rate(self) -> float:
        return self.leads / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "rate": round(self.rate, 1)}


def lead_fields(phone: str) -> dict[str, str]:
    return {"agent_user": AGENT, "phone_number": phone, "first_name": "Bench", "last_name": "Mark"}


def celery_enqueuer(module: str, db: int, env: Env) -> Callable[[list[str]], None]:
    """``add_lead.delay(...)`` per lead, the way the naive app's user enqueues."""
    import importlib

    mod = importlib.import_module(module)
    mod.app.conf.broker_url = env.url(db)
    task = mod.add_lead

    def enqueue(phones: list[str]) -> None:
        for phone in phones:
            task.delay(**lead_fields(phone))

    return enqueue


#: The product's producer enqueues batches of this many leads, one after the other:
#: a producer app feeding leads as they come. (One batch of a whole round would make
#: the workers wait for all of it to be validated before the first lead, since
#: enqueue_leads checks every lead before it writes any; the Celery apps' loops hand
#: out their first message at once.)
PRODUCER_BATCH = 250


def product_enqueuer(settings: Any) -> Callable[[list[str]], None]:
    def enqueue(phones: list[str]) -> None:
        for start in range(0, len(phones), PRODUCER_BATCH):
            chunk = phones[start : start + PRODUCER_BATCH]
            enqueue_leads([lead_fields(p) for p in chunk], settings=settings)

    return enqueue


def measure_round(
    env: Env,
    system: str,
    r: int,
    worker: WorkerProcess,
    enqueue: Callable[[list[str]], None],
    n: int,
    timeout: float,
    *,
    sim: Any = None,
) -> Round:
    """One round; ``sim``: a :class:`bench.common.SimulatorProcess` to count with (its
    CPU is then added to the bench's), else the in-process simulator."""
    phones = env.phones(n)
    assert worker.process is not None
    counter = sim.counter if sim is not None else env.counter
    sim_pids = [sim.pid] if sim is not None else []
    pids = process_tree(worker.process.pid)
    cpu0, redis0 = cpu_seconds(pids), cpu_seconds([env.redis_pid])
    bench0 = time.process_time() + cpu_seconds(sim_pids)
    counter.arm(n)
    t0 = time.perf_counter()
    enqueue(phones)
    enqueued = time.perf_counter() - t0
    ok = counter.wait(timeout)
    seconds = time.perf_counter() - t0
    return Round(
        system=system,
        round=r,
        leads=n if ok else counter.count,
        seconds=seconds,
        enqueue_seconds=enqueued,
        complete=ok,
        worker_cpu_s=cpu_seconds(process_tree(worker.process.pid)) - cpu0,
        redis_cpu_s=cpu_seconds([env.redis_pid]) - redis0,
        bench_cpu_s=time.process_time() + cpu_seconds(sim_pids) - bench0,
    )


def run_config(
    env: Env, pool: str, concurrency: int, *, n: int, naive_n: int, rounds: int, warmup: int
) -> list[Round]:
    tag = f"tp-{pool}{concurrency}"
    settings = env.settings(tag)
    for db in (NAIVE_DB, CAREFUL_DB):
        env.client(db).flushdb()
    workers = {
        "product": env.product_worker(settings, pool=pool, concurrency=concurrency, tag=tag),
        "naive": env.app_worker(
            "bench.naive_app", db=NAIVE_DB, pool=pool, concurrency=concurrency, tag=f"{tag}-naive"
        ),
        "careful": env.app_worker(
            "bench.careful_app",
            db=CAREFUL_DB,
            pool=pool,
            concurrency=concurrency,
            tag=f"{tag}-careful",
        ),
    }
    enqueuers = {
        "product": product_enqueuer(settings),
        "naive": celery_enqueuer("bench.naive_app", NAIVE_DB, env),
        "careful": celery_enqueuer("bench.careful_app", CAREFUL_DB, env),
    }
    out: list[Round] = []
    env.start_all(list(workers.values()))
    try:
        for system in SYSTEMS:  # warm-up: imports, pool children, connections
            measure_round(env, system, -1, workers[system], enqueuers[system], warmup, 60)
        for r, system in rotations(SYSTEMS, rounds):
            size = naive_n if system == "naive" else n
            row = measure_round(
                env, system, r, workers[system], enqueuers[system], size, timeout=30 + size / 10
            )
            out.append(row)
            print(
                f"    {pool} {concurrency} round {r + 1}/{rounds} {system:<8}"
                f" {row.rate:7.1f} leads/s",
                flush=True,
            )
    finally:
        env.stop_all(list(workers.values()))
    dead = env.client().zcard(Keys.of(settings).dead_letters)
    if dead:
        raise RuntimeError(f"product run left {dead} dead letters: see {env.logdir}")
    return out


def run(env: Env, *, quick: bool) -> Section:
    configs = [("prefork", 2), ("threads", 8)]
    # The naive task runs at a few dozen leads/s: its rounds are smaller, or they
    # would take most of the run (a rate is a rate; the round size is in the JSON).
    n, naive_n, rounds, warmup = (200, 60, 1, 20) if quick else (2000, 300, 3, 50)
    section = Section(
        NAME,
        "1. Throughput, zero-latency simulator (leads/s end to end)",
        [
            "pool",
            "system",
            "leads/s",
            "rounds",
            "vs naive",
            "vs careful",
            "worker CPU ms/lead",
            "redis CPU ms/lead",
            "sim CPU ms/lead",
        ],
    )
    section.data = {
        "leads_per_round": n,
        "naive_leads_per_round": naive_n,
        "rounds": rounds,
        "configs": {},
    }
    for pool, concurrency in configs:
        rows = run_config(
            env, pool, concurrency, n=n, naive_n=naive_n, rounds=rounds, warmup=warmup
        )
        by_system = {s: [r for r in rows if r.system == s] for s in SYSTEMS}
        rate = {s: median([r.rate for r in by_system[s]]) for s in SYSTEMS}
        per_round = {
            other: [
                p.rate / o.rate
                for p, o in zip(by_system["product"], by_system[other], strict=True)
                if o.rate
            ]
            for other in ("naive", "careful")
        }
        ratio = {other: rate["product"] / rate[other] for other in ("naive", "careful")}
        for system in SYSTEMS:
            runs = by_system[system]
            leads = sum(r.leads for r in runs)
            span = f"{min(r.rate for r in runs):.0f}-{max(r.rate for r in runs):.0f}"
            section.rows.append(
                [
                    f"{pool} {concurrency}",
                    system,
                    f"{rate[system]:.0f}",
                    span,
                    f"{rate[system] / rate['naive']:.2f}",
                    f"{rate[system] / rate['careful']:.2f}",
                    f"{1000 * sum(r.worker_cpu_s for r in runs) / leads:.2f}",
                    f"{1000 * sum(r.redis_cpu_s for r in runs) / leads:.2f}",
                    f"{1000 * sum(r.bench_cpu_s for r in runs) / leads:.2f}",
                ]
            )
        section.goals.append(
            Goal(f"{pool} {concurrency}: product / naive", ratio["naive"], 1.0, unit="x")
        )
        # Issue 15: cheaper per lead than the careful hand-written task, same pool.
        section.goals.append(
            Goal(f"{pool} {concurrency}: product / careful", ratio["careful"], 1.2, unit="x")
        )
        cpu = {
            s: sum(r.worker_cpu_s for r in by_system[s])
            / max(1, sum(r.leads for r in by_system[s]))
            for s in ("product", "careful")
        }
        cpu_ratio = cpu["product"] / cpu["careful"] if cpu["careful"] else float("inf")
        section.goals.append(
            Goal(
                f"{pool} {concurrency}: worker CPU per lead, product / careful",
                cpu_ratio,
                0.8,
                higher_is_better=False,
                unit="x",
            )
        )
        section.data["configs"][f"{pool}:{concurrency}"] = {
            "median_rate": rate,
            "ratio_of_medians": ratio,
            "per_round_ratios": per_round,
            "worker_cpu_ms_per_lead": {k: 1000 * v for k, v in cpu.items()},
            "rounds": [r.to_dict() for r in rows],
        }
    duplicates = env.duplicates()
    section.data["duplicate_leads_in_simulator"] = duplicates
    section.notes.append(
        f"{n} leads per round ({naive_n} for the naive task), {rounds} rotated round(s) "
        "per system after a warm-up; "
        "ratios are of the median rates (per-round ratios in the JSON); "
        f"duplicate leads stored: {duplicates}"
    )
    section.notes.append(
        "CPU columns are per lead: the worker's processes, redis-server, and this bench "
        "process (the simulator runs in it; the Celery enqueue loops too)"
    )
    return section
