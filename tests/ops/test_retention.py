"""DISPATCHER_DEAD_LETTER_RETENTION_DAYS: the workers' maintenance removes older letters.

Real Redis, a real `celery worker` process (its scheduler thread does the
maintenance), letters written through the store's own API with chosen ages.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from dispatcher import enqueue_lead
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.model.errors import ConfigError
from dispatcher.ops.retention import expire_dead_letters
from dispatcher.store.backend import get_backend
from dispatcher.store.deadletter import DeadLetterStore
from dispatcher.store.phone_index import index_key, phone_key
from tests.support.settings import make_settings
from tests.support.waiting import wait_for

DAY = 86400.0


def _letter(store: DeadLetterStore, job_id: str, *, age_days: float, phone: str) -> None:
    store.record(
        job={"job_id": job_id, "lead": {"agent_user": "1000", "phone_number": phone}},
        reason="dnc",
        error=f"ERROR: add_lead PHONE NUMBER IN DNC - {phone}|1000",
        http_status=200,
        attempts=1,
        first_failed_at=None,
        now=time.time() - age_days * DAY,
    )


def test_the_setting_defaults_to_keeping_letters_forever() -> None:
    assert Settings().dead_letter_retention_days == 0
    assert (
        Settings.from_mapping(
            {"DISPATCHER_DEAD_LETTER_RETENTION_DAYS": "30"}
        ).dead_letter_retention_days
        == 30
    )

    with pytest.raises(ConfigError, match="DEAD_LETTER_RETENTION_DAYS"):
        Settings(dead_letter_retention_days=-1)


def test_forever_keeps_everything(redis_url: str) -> None:
    settings = make_settings(redis_url)
    store = DeadLetterStore(settings=settings)
    _letter(store, "a" * 32, age_days=3650, phone="7275550001")
    assert expire_dead_letters(get_backend(settings)) == 0
    assert store.get("a" * 32) is not None


def test_older_letters_go_in_bounded_batches_with_their_index(redis_url: str) -> None:
    settings = make_settings(redis_url, dead_letter_retention_days=30)
    backend = get_backend(settings)
    store = DeadLetterStore(backend)
    # An indexed job (enqueued by this release) whose letter is old.
    job_id = enqueue_lead(agent_user="1000", phone_number="7275550002", settings=settings)
    _letter(store, job_id, age_days=31, phone="7275550002")
    for i in range(1100):
        _letter(store, f"{i:032x}", age_days=40, phone="7275550003")
    _letter(store, "b" * 32, age_days=29, phone="7275550004")
    removed = expire_dead_letters(backend, batch=500)
    assert removed == 1101
    assert len(store) == 1 and store.get("b" * 32) is not None
    assert not backend.redis.hexists(f"{settings.key_prefix}:dlq:phone_keys", job_id)
    index = backend.keys.phone(phone_key(index_key(backend), "7275550002"))
    assert backend.redis.ttl(index) > 0  # back to its job state's lifetime
    # The expired letters' index lives on only as long as their jobs' states.
    expired = backend.keys.phone(phone_key(index_key(backend), "7275550003"))
    assert backend.redis.ttl(expired) > 0


@pytest.mark.slow
def test_the_workers_maintenance_expires_letters_and_logs_each(
    redis_url: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = make_settings(
        redis_url,
        vicidial_url="http://127.0.0.1:9/agc/api.php",
        vicidial_user="6666",
        vicidial_pass="1234",
        dead_letter_retention_days=7,
    )
    store = DeadLetterStore(settings=settings)
    _letter(store, "c" * 32, age_days=8, phone="7275550005")
    _letter(store, "d" * 32, age_days=1, phone="7275550006")
    worker = start_worker(settings)
    wait_for(lambda: store.get("c" * 32) is None, timeout=30, message="the old letter to go")
    assert store.get("d" * 32) is not None
    events = [json.loads(x) for x in worker.log_path.read_text().splitlines() if x.startswith("{")]
    (expired,) = [e for e in events if e["event"] == "dlq.expired"]
    assert expired["job_id"] == "c" * 32 and expired["reason"] == "dnc"
    assert set(expired) <= {"event", "job_id", "reason", "level", "timestamp", "logger"}
    assert "7275550005" not in worker.log_path.read_text()
