"""The careful user's Celery task for a lead for a list: bench/careful_app.py, with add_lead.

One reused ``httpx.Client`` per process, POSTing VICIdial's Non-Agent API ``add_lead``
(the list, its campaign, the DNC checks), retried on transport errors: what a careful
hand-written task does, the baseline of the ``targets`` benchmark's leads for a list::

    BENCH_BROKER_URL=redis://localhost:6379/3 \\
        BENCH_VICIDIAL_URL=http://host/vicidial/non_agent_api.php \\
        celery -A bench.careful_list_app worker --pool threads --concurrency 8
"""

from __future__ import annotations

import os
import threading

import httpx
from celery import Celery

app = Celery(
    "careful_list_app", broker=os.environ.get("BENCH_BROKER_URL", "redis://localhost:6379/3")
)
VICIDIAL_URL = os.environ.get(
    "BENCH_VICIDIAL_URL", "http://127.0.0.1:8088/vicidial/non_agent_api.php"
).replace("agc/api.php", "vicidial/non_agent_api.php")

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
def add_lead(list_id: str, campaign_id: str, phone_number: str, **fields: str) -> str:
    data = {
        "source": "careful",
        "user": os.environ.get("BENCH_VICIDIAL_USER", "6666"),
        "pass": os.environ.get("BENCH_VICIDIAL_PASS", "1234"),
        "list_id": list_id,
        "campaign_id": campaign_id,
        "phone_number": phone_number,
        "phone_code": "1",
        "dnc_check": "Y",
        "campaign_dnc_check": "Y",
        "list_exists_check": "Y",
        **fields,
        "function": "add_lead",  # last: VICIdial logs the last field's raw value
    }
    response = client().post(VICIDIAL_URL, data=data)
    response.raise_for_status()
    return response.text
