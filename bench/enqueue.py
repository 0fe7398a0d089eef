"""Benchmark 3: producer-side enqueue rate against a real Redis (no workers).

Side by side, in rotated rounds of N leads each:

* ``enqueue_lead`` in a loop (validation, job state, one Lua script per lead);
  with and without an ``idempotency_key`` (one more SET per lead);
* raw Celery in a loop: ``add_lead.apply_async(kwargs=...)`` of bench/naive_app.py,
  and ``app.send_task(name, kwargs=...)``, the producer of the naive alternative;
* ``enqueue_leads`` in batches of 1000 (one Lua script per batch).

Each round starts from an empty database, so queue length does not drift.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bench.common import AGENT, Env, Goal, Section, cpu_seconds, median, rotations
from dispatcher.ops.producer import enqueue_lead, enqueue_leads

NAME = "enqueue"
PRODUCT_DB = 3
#: bench/naive_app.py's broker database (no naive worker runs during this benchmark).
CELERY_DB = 1
BATCH = 1000


def fields(phone: str) -> dict[str, str]:
    return {"agent_user": AGENT, "phone_number": phone, "first_name": "Bench", "last_name": "Mark"}


def run(env: Env, *, quick: bool) -> Section:
    import bench.naive_app as naive

    naive.app.conf.broker_url = env.url(CELERY_DB)
    settings = env.settings("enq", redis_url=env.url(PRODUCT_DB))
    celery_app = naive.app
    task = naive.add_lead
    task_name = task.name
    counter = [0]

    def product_loop(phones: list[str]) -> None:
        for phone in phones:
            enqueue_lead(settings=settings, **fields(phone))

    def product_loop_idem(phones: list[str]) -> None:
        for phone in phones:
            counter[0] += 1
            enqueue_lead(
                settings=settings, idempotency_key=f"webform-{counter[0]}", **fields(phone)
            )

    def product_batches(phones: list[str]) -> None:
        for start in range(0, len(phones), BATCH):
            enqueue_leads([fields(p) for p in phones[start : start + BATCH]], settings=settings)

    def celery_apply_async(phones: list[str]) -> None:
        for phone in phones:
            task.apply_async(kwargs=fields(phone))

    def celery_send_task(phones: list[str]) -> None:
        for phone in phones:
            celery_app.send_task(task_name, kwargs=fields(phone))

    systems: dict[str, Callable[[list[str]], None]] = {
        "enqueue_lead loop": product_loop,
        "enqueue_lead loop + idempotency_key": product_loop_idem,
        "celery apply_async loop": celery_apply_async,
        "celery send_task loop": celery_send_task,
        "enqueue_leads, batches of 1000": product_batches,
    }
    n, rounds = (1000, 2) if quick else (3000, 5)
    product_db, celery_db = env.client(PRODUCT_DB), env.client(CELERY_DB)
    rates: dict[str, list[float]] = {s: [] for s in systems}
    cpu: dict[str, list[float]] = {s: [] for s in systems}
    redis_cpu: dict[str, list[float]] = {s: [] for s in systems}
    try:
        for fn in systems.values():  # warm-up: connections, scripts, imports
            fn(env.phones(50))
        for r, name in rotations(list(systems), rounds):
            product_db.flushdb()
            celery_db.flushdb()
            phones = env.phones(n)
            c0, r0, t0 = time.process_time(), cpu_seconds([env.redis_pid]), time.perf_counter()
            systems[name](phones)
            seconds = time.perf_counter() - t0
            cpu[name].append((time.process_time() - c0) / n)
            redis_cpu[name].append((cpu_seconds([env.redis_pid]) - r0) / n)
            rates[name].append(n / seconds)
            print(f"    round {r + 1}/{rounds} {name:<36} {n / seconds:8.0f} leads/s", flush=True)
            # Every lead of the round is on its queue, once.
            queued = (
                celery_db.llen("celery")
                if name.startswith("celery")
                else sum(  # every lane: {queue}.{dialer}.{realtime|bulk}
                    int(product_db.llen(k))
                    for k in product_db.scan_iter(match=f"{settings.queue}*", _type="list")
                    if not str(k).endswith(".wake")
                )
            )
            if queued != n:
                raise RuntimeError(f"{name}: {queued} messages queued, expected {n}")
    finally:
        product_db.flushdb()
        celery_db.flushdb()

    med = {name: median(values) for name, values in rates.items()}
    loop = med["enqueue_lead loop"]
    raw = max(med["celery apply_async loop"], med["celery send_task loop"])
    section = Section(
        NAME,
        "3. Enqueue, producer side (leads/s, no workers)",
        [
            "producer",
            "leads/s",
            "rounds",
            "vs fastest raw Celery",
            "producer CPU us/lead",
            "redis CPU us/lead",
        ],
    )
    for name in systems:
        section.rows.append(
            [
                name,
                f"{med[name]:,.0f}",
                f"{min(rates[name]):,.0f}-{max(rates[name]):,.0f}",
                f"{med[name] / raw:.2f}",
                f"{1e6 * median(cpu[name]):.0f}",
                f"{1e6 * median(redis_cpu[name]):.0f}",
            ]
        )
    section.goals.append(Goal("enqueue_lead loop / raw Celery loop", loop / raw, 0.8))
    section.goals.append(
        Goal(
            "enqueue_lead loop + idempotency_key / raw Celery loop",
            med["enqueue_lead loop + idempotency_key"] / raw,
            0.8,
        )
    )
    section.goals.append(
        Goal(
            "enqueue_leads batches / enqueue_lead loop",
            med["enqueue_leads, batches of 1000"] / loop,
            5.0,
        )
    )
    section.notes.append(
        f"{n} leads per round, {rounds} rotated rounds; 'raw Celery' is the faster of "
        "apply_async and send_task; each enqueue_lead validates the lead and writes job "
        "state + message in one Lua script; logging is not configured in this process"
    )
    section.data = {
        "leads_per_round": n,
        "rounds": rounds,
        "median_rate": med,
        "rates": rates,
        "producer_cpu_s_per_lead": {k: median(v) for k, v in cpu.items()},
        "redis_cpu_s_per_lead": {k: median(v) for k, v in redis_cpu.items()},
    }
    return section
