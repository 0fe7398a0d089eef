"""The naive alternative: a 20-line Celery task, written the way a user would write it.

One ``httpx.post`` per task (a new HTTP connection each time) and
``autoretry_for``; Celery defaults for everything else. No validation, no
idempotency, no dead letters. Started exactly as a user would::

    BENCH_BROKER_URL=redis://localhost:6379/1 BENCH_VICIDIAL_URL=http://host/agc/api.php \\
        celery -A bench.naive_app worker --pool prefork --concurrency 2

The bench (bench/throughput.py) compares the product's pipeline with this.
"""

from __future__ import annotations

import os

import httpx
from celery import Celery

app = Celery("naive_app", broker=os.environ.get("BENCH_BROKER_URL", "redis://localhost:6379/1"))
VICIDIAL_URL = os.environ.get("BENCH_VICIDIAL_URL", "http://127.0.0.1:8088/agc/api.php")


@app.task(autoretry_for=(httpx.HTTPError,), retry_backoff=True, max_retries=5)
def add_lead(agent_user: str, phone_number: str, **fields: str) -> str:
    data = {
        "source": "naive",
        "user": os.environ.get("BENCH_VICIDIAL_USER", "6666"),
        "pass": os.environ.get("BENCH_VICIDIAL_PASS", "1234"),
        "function": "external_add_lead",
        "agent_user": agent_user,
        "phone_number": phone_number,
        "value": phone_number,
        "phone_code": "1",
        **fields,
    }
    response = httpx.post(VICIDIAL_URL, data=data, timeout=10)
    response.raise_for_status()
    return response.text
