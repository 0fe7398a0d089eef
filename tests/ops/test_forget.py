"""`dispatcher forget --phone`: an erasure request, end to end.

Real Redis, a real `celery worker` process calling the simulator, the installed
`dispatcher` command. The phone is found through the phone index (a keyed hash of
it), never by reading the keyspace; jobs not yet final are stopped and never called
again; everything else the dispatcher keeps about the number goes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from starlette.testclient import TestClient

from dispatcher import enqueue_lead, job_status
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.intake.app import create_app
from dispatcher.ops.erasure import forget_phone
from dispatcher.ops.producer import prepare_job, push_jobs
from dispatcher.simulator import Simulator
from dispatcher.store.backend import get_backend
from dispatcher.store.deadletter import DeadLetterStore
from tests.support.cli import run_cli
from tests.support.console import OPERATOR, VIEWER, csrf_of, login, seed_users
from tests.support.settings import make_settings
from tests.support.waiting import wait_for
from workers.runner import JobRunner

PHONE = "7275550000"  # on the simulator's DNC list
OTHER = "7275551213"
pytestmark = pytest.mark.slow


@pytest.fixture
def fs(redis_url: str, simulator: Simulator) -> Settings:
    # Agents that are not logged in wait (and retry) for a minute: a job not yet final.
    return make_settings(redis_url, simulator, agent_wait_s=60.0, retry_cap_s=0.5)


def _values(settings: Settings) -> Iterator[tuple[str, str]]:
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        value: object = ""
        if kind == "string":
            value = r.get(key)
        elif kind == "hash":
            value = r.hgetall(key)
        elif kind == "list":
            value = r.lrange(key, 0, -1)
        elif kind == "zset":
            value = r.zrange(key, 0, -1)
        elif kind == "set":
            value = sorted(r.smembers(key))
        yield key, key + " " + json.dumps(value)


def _holding(settings: Settings, phone: str) -> list[str]:
    """Every key whose name or value holds the phone (a test may read everything)."""
    return [key for key, text in _values(settings) if phone in text]


def _calls_for(simulator: Simulator, phone: str) -> int:
    return sum(1 for r in simulator.requests if phone in json.dumps(r.fields))


def test_forget_erases_a_phone_from_everything_and_stops_its_pending_jobs(
    fs: Settings, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker(fs)
    added = enqueue_lead(
        agent_user="1000",
        phone_number=PHONE,
        dnc_check=False,
        idempotency_key="webform-1",
        settings=fs,
    )
    dead = enqueue_lead(agent_user="1000", phone_number=PHONE, settings=fs)
    waiting = enqueue_lead(agent_user="1099", phone_number="(727) 555-0000", settings=fs)
    kept = enqueue_lead(agent_user="1000", phone_number=OTHER, settings=fs)
    wait_for(
        lambda: (
            [(job_status(j, settings=fs) or {}).get("state") for j in (added, dead, kept)]
            == ["added", "dead", "added"]
        ),
        timeout=30,
        message="the jobs to finish",
    )
    wait_for(lambda: _calls_for(simulator, PHONE) >= 3, message="the waiting job to be called")
    assert (job_status(waiting, settings=fs) or {}).get("state") in ("retrying", "running")
    assert _holding(fs, PHONE)

    # Bad input: exit 2, nothing touched.
    bad = run_cli(fs, "forget", "--phone", "call me maybe")
    assert bad.returncode == 2 and "--phone" in bad.stderr and "Traceback" not in bad.stderr
    # A dry run counts and changes nothing.
    r = redis.Redis.from_url(fs.redis_url, decode_responses=True)
    preview = run_cli(fs, "forget", "--phone", PHONE, "--dry-run", "--json")
    assert preview.returncode == 0, preview.stderr
    counts = json.loads(preview.stdout)["erased"]
    assert counts == {
        "fleet_messages": 0,
        "notifications": 0,  # no receiver configured: no backlog
        "job_states": 3,
        "dead_letters": 1,
        "idempotency_records": 1,
        "stopped": 1,
        "in_flight": counts["in_flight"],  # 0 or 1: the waiting job may be mid-call
    }, counts
    assert DeadLetterStore(settings=fs).get(dead) is not None
    # Without a terminal, no --yes: asks, reads no "y", changes nothing.
    refused = run_cli(fs, "forget", "--phone", PHONE)
    assert refused.returncode == 1 and "nothing changed" in refused.stderr
    assert job_status(added, settings=fs) is not None

    r.config_resetstat()
    done = run_cli(fs, "forget", "--phone", "+1 727-555-0000", "--yes")
    assert done.returncode == 0, done.stderr
    commands = r.info("commandstats")
    assert not any(name in commands for name in ("cmdstat_scan", "cmdstat_keys"))
    assert "3  job_states" in done.stdout and "1  dead_letters" in done.stdout
    assert "VICIdial's to erase" in done.stderr and "delete_lead=Y" in done.stderr
    events = [json.loads(x) for x in done.stderr.splitlines() if x.startswith("{")]
    (logged,) = [e for e in events if e["event"] == "data.forgotten"]
    assert logged["phone"] == "******0000" and logged["job_states"] == 3
    assert PHONE not in done.stdout + done.stderr

    # Gone: its jobs, letter, idempotency record; the other phone's job is untouched.
    for job_id in (added, dead, waiting):
        assert job_status(job_id, settings=fs) is None
    assert DeadLetterStore(settings=fs).get(dead) is None
    assert (job_status(kept, settings=fs) or {}).get("state") == "added"
    # The waiting job is never called again: its scheduled copy is dropped unread.
    calls = _calls_for(simulator, PHONE)
    wait_for(lambda: not _holding(fs, PHONE), timeout=20, message="the last copy to be dropped")
    time.sleep(1.0)
    assert _calls_for(simulator, PHONE) <= calls + 1  # at most the call that was in flight
    assert not _holding(fs, PHONE)
    assert job_status(waiting, settings=fs) is None
    # The same key enqueues anew (the idempotency record went with the job).
    again = enqueue_lead(
        agent_user="1000", phone_number=OTHER, idempotency_key="webform-1", settings=fs
    )
    assert again != added


def test_the_index_lives_as_long_as_what_it_lists(redis_url: str) -> None:
    settings = make_settings(redis_url, job_ttl_s=600)
    backend = get_backend(settings)
    r = backend.redis
    job_id = enqueue_lead(agent_user="1000", phone_number=PHONE, settings=settings)
    (index,) = r.scan_iter(f"{settings.key_prefix}:phone:*")
    phone_key = index.rsplit(":", 1)[1]
    assert r.hget(backend.keys.job(job_id), "phone_key") == phone_key
    assert PHONE not in index and r.hkeys(index) == [job_id]
    assert r.ttl(index) > r.ttl(backend.keys.job(job_id)) >= 590
    # A dead letter: the index lives while the letter does (no TTL at all).
    store = DeadLetterStore(backend)
    letter = store.record(
        job={"job_id": job_id, "lead": {"agent_user": "1000", "phone_number": PHONE}},
        reason="dnc",
        error="ERROR: add_lead PHONE NUMBER IN DNC - 7275550000|1000",
        http_status=200,
        attempts=1,
        first_failed_at=None,
    )
    assert r.ttl(index) == -1 and r.hget(index, "#letters") == "1"
    assert r.hget(f"{settings.key_prefix}:dlq:phone_keys", job_id) == phone_key
    # The job's state expires (as after DISPATCHER_JOB_TTL_S); the letter stays findable.
    r.delete(backend.keys.job(job_id))
    erasure = forget_phone(backend, PHONE, dry_run=True)
    assert erasure.counts["dead_letters"] == 1
    # Purged: the index follows what is left (nothing), and goes.
    assert store.purge(letter)
    assert not r.exists(index)
    assert not r.hexists(f"{settings.key_prefix}:dlq:phone_keys", job_id)


def test_jobs_of_the_previous_release_are_found_with_scan(redis_url: str) -> None:
    settings = make_settings(redis_url)
    backend = get_backend(settings)
    # A letter as the previous release wrote it (record and indexes, no phone index).
    letter = DeadLetterStore(backend).letter(
        job={
            "job_id": "a" * 32,
            "lead": {"agent_user": "1000", "phone_number": PHONE},
            "idempotency_key": "legacy-1",
        },
        reason="dnc",
        error="ERROR: add_lead PHONE NUMBER IN DNC - 7275550000|1000",
        http_status=200,
        attempts=1,
        first_failed_at=None,
    )
    backend.redis.set(backend.keys.dead_letter(letter.id), json.dumps(letter.to_dict(shown=False)))
    backend.redis.zadd(backend.keys.dead_letters, {letter.id: letter.score})
    backend.redis.zadd(backend.keys.dead_letters_by_reason("dnc"), {letter.id: letter.score})
    backend.redis.set(backend.keys.idempotency("legacy-1"), "a" * 32 + " fp")
    assert forget_phone(backend, PHONE).counts["dead_letters"] == 0
    erasure = forget_phone(backend, PHONE, scan=True)
    assert erasure.counts["dead_letters"] == 1 and erasure.counts["idempotency_records"] == 1
    assert DeadLetterStore(backend).get("a" * 32) is None
    assert not backend.redis.exists(backend.keys.idempotency("legacy-1"))


def test_the_consoles_forget_needs_an_operator_a_csrf_token_and_a_confirmation(
    redis_url: str,
) -> None:
    settings = make_settings(redis_url, intake_tokens=("intake-token-0123456789abcdef",))
    seed_users(settings)
    job_id = enqueue_lead(agent_user="1000", phone_number=PHONE, settings=settings)
    app = create_app(settings)
    viewer = login(app, VIEWER)
    assert viewer.get("/ui/forget").status_code == 403
    page = viewer.get("/ui/")
    refused = viewer.post("/ui/forget", data={"csrf": csrf_of(page.text), "phone": PHONE})
    assert refused.status_code == 403
    operator: TestClient = login(app, OPERATOR)
    page = operator.get("/ui/forget")
    assert page.status_code == 200 and 'id="forget-form"' in page.text
    forged = operator.post("/ui/forget", data={"csrf": "nope", "phone": PHONE, "confirm": "yes"})
    assert forged.status_code == 403
    bad = operator.post("/ui/forget", data={"csrf": csrf_of(page.text), "phone": "x" * 41})
    assert bad.status_code == 400 and "at most 40" in bad.text
    preview = operator.post("/ui/forget", data={"csrf": csrf_of(page.text), "phone": PHONE})
    assert preview.status_code == 200 and 'id="forget-confirm"' in preview.text
    assert job_status(job_id, settings=settings) is not None  # a preview erases nothing
    done = operator.post(
        "/ui/forget",
        data={"csrf": csrf_of(page.text), "phone": PHONE, "confirm": "yes"},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"] == "/ui/forget"
    assert job_status(job_id, settings=settings) is None
    assert "Forgot ******0000" in operator.get("/ui/forget").text


@pytest.mark.parametrize(("phone", "outcome"), [(PHONE, "superseded"), (OTHER, "added")])
def test_forgetting_a_job_in_flight_never_crashes_its_worker(
    redis_url: str, simulator: Simulator, phone: str, outcome: str
) -> None:
    """The call is under way when the phone is forgotten: a refusal can no longer be
    written (no dead letter, no state), a success is recorded without the phone."""

    settings = make_settings(redis_url, simulator)
    backend = get_backend(settings)
    job = prepare_job({"agent_user": "1000", "phone_number": phone}, settings=settings)
    push_jobs([job], settings=settings)
    simulator.set_latency(800)
    runner = JobRunner(settings, backend)
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(runner.run(job.to_message())))
    try:
        thread.start()
        wait_for(
            lambda: backend.redis.hget(backend.keys.execution(job.job_id), "state") == "claimed",
            message="the call to start",
        )
        erasure = forget_phone(backend, phone)
        assert erasure.counts["stopped"] == 1 and erasure.counts["in_flight"] == 1
        thread.join(30)
    finally:
        simulator.set_latency(0)
        runner.close()
    assert result == [outcome]
    assert DeadLetterStore(backend).get(job.job_id) is None
    state = job_status(job.job_id, settings=settings)
    if outcome == "added":
        assert state is not None and state["state"] == "added"
    else:
        assert state is None
    assert not _holding(settings, phone)
