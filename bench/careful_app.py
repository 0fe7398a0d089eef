"""The careful user's version of bench/naive_app.py: one reused ``httpx.Client`` per process.

Identical task, except that every task of a worker process shares one keep-alive
connection pool instead of opening a connection per call. Created lazily and
again after a fork (prefork children must not share the parent's sockets)::

    BENCH_BROKER_URL=redis://localhost:6379/2 BENCH_VICIDIAL_URL=http://host/agc/api.php \\
        celery -A bench.careful_app worker --pool threads --concurrency 8
"""

from __future__ import annotations

import os
import threading

import httpx
from celery import Celery

app = Celery("careful_app", broker=os.environ.get("BENCH_BROKER_URL", "redis://localhost:6379/2"))
VICIDIAL_URL = os.environ.get("BENCH_VICIDIAL_URL", "http://127.0.0.1:8088/agc/api.php")

_client: httpx.Client | None = None
_client_pid = 0
_lock = threading.Lock()


def client() -> httpx.Client:
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        with _lock:
            if _client is None or _client_pid != os.getpid():
                _client = httpx.Client(timeout=10)
                _client_pid = os.getpid()
    return _client


@app.task(autoretry_for=(httpx.HTTPError,), retry_backoff=True, max_retries=5)
def add_lead(agent_user: str, phone_number: str, **fields: str) -> str:
    data = {
        "source": "careful",
        "user": os.environ.get("BENCH_VICIDIAL_USER", "6666"),
        "pass": os.environ.get("BENCH_VICIDIAL_PASS", "1234"),
        "function": "external_add_lead",
        "agent_user": agent_user,
        "phone_number": phone_number,
        "value": phone_number,
        "phone_code": "1",
        **fields,
    }
    response = client().post(VICIDIAL_URL, data=data)
    response.raise_for_status()
    return response.text
