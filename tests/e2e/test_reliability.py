"""Nothing lost, nothing added twice: fault injection with real processes.

Real Redis (restarted with AOF), real `celery worker` processes (SIGKILLed and
restarted), the simulator (outages, wrong passwords, latency). Sized for two
cores: a few hundred jobs, short backoffs set through the settings.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from dispatcher import DeadLetterStore, enqueue_lead, enqueue_leads, job_status
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess, settings_env
from dispatcher.devtools.redis_server import RedisServer
from dispatcher.model.jobs import TASK_NAME, broker_envelope
from dispatcher.simulator import Simulator
from tests.support.rates import steady_rate
from tests.support.settings import make_settings
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def _states(ids: list[str], settings: Settings) -> dict[str, dict[str, Any]]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(f"{settings.key_prefix}:job:{job_id}")
        return dict(zip(ids, pipe.execute(), strict=True))
    finally:
        client.close()


def _wait_all_final(ids: list[str], settings: Settings, timeout: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        states = _states(ids, settings)
        if all(s.get("state") in ("added", "dead") for s in states.values()):
            return states
        return None

    try:
        result: dict[str, Any] = wait_for(
            done, timeout=timeout, interval=0.2, message="every job to finish"
        )
    except AssertionError:
        states = _states(ids, settings)
        pending = {k: v for k, v in states.items() if v.get("state") not in ("added", "dead")}
        raise AssertionError(f"{len(pending)} unfinished: {list(pending.items())[:5]}") from None
    return result


def _phones(n: int, base: int) -> list[str]:
    return [f"727{base + i:07d}" for i in range(n)]


def _raw_queue_push(settings: Settings, payload: str) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    client.lpush(settings.queue, payload)
    client.close()


def _celery_message(job: object, *, task: str = TASK_NAME, body: str | None = None) -> str:
    envelope = json.loads(broker_envelope({"job_id": uuid.uuid4().hex}, queue="dispatcher"))
    envelope["headers"]["task"] = task
    raw = body if body is not None else json.dumps([[job], {}, {}])
    envelope["body"] = base64.b64encode(raw.encode()).decode()
    return json.dumps(envelope)


# --------------------------------------------------------------------------------------


def test_poison_messages_are_dead_lettered_and_the_worker_keeps_going(
    settings: Settings, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker(settings)
    good_job = {"v": 1, "job_id": "poison-wrong-version"}
    poisons = [
        _celery_message({"v": 99, "job_id": "poison-v99", "lead": {}}),
        _celery_message({"v": 1, "job_id": "poison-missing", "dnc_check": True}),
        _celery_message("just a string"),
        _celery_message(None, body="{not json"),
        _celery_message(good_job, task="someone.elses_task"),
        json.dumps({"hello": "no headers"}),
        "definitely not json",
    ]
    for poison in poisons:
        _raw_queue_push(settings, poison)
    job_id = enqueue_lead(agent_user="1000", phone_number="7275559999", settings=settings)
    wait_for(
        lambda: (job_status(job_id, settings=settings) or {}).get("state") == "added",
        message="the good job after the poison",
    )
    store = DeadLetterStore(settings=settings)
    letters = wait_for(
        lambda: (
            [x for x in store.iter() if x.reason == "invalid_payload"]
            if len(store) >= len(poisons)
            else None
        ),
        message="a dead letter per poison message",
    )
    assert len(letters) == len(poisons)
    assert {"poison-v99", "poison-missing"} <= {x.job_id for x in letters}
    assert any("definitely not json" in json.dumps(x.job) for x in letters)
    assert worker.alive()
    assert simulator.count_by_phone() == {"7275559999": 1}


@pytest.mark.parametrize("ambiguous", ["dead_letter", "reconcile"])
def test_workers_sigkilled_repeatedly_lose_nothing_and_add_nothing_twice(
    ambiguous: str,
    redis_url: str,
    simulator: Simulator,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    settings = make_settings(redis_url, simulator, ambiguous=ambiguous)
    simulator.set_latency(15, max_ms=40)
    workers = [
        start_worker(settings, name="k1", concurrency=3),
        start_worker(settings, name="k2", concurrency=3),
    ]
    phones = _phones(300, 1000)
    ids = enqueue_leads(
        [{"agent_user": "1000", "phone_number": p} for p in phones], settings=settings
    )
    rng = random.Random(5)
    kills = 0
    deadline = time.monotonic() + 60  # worker start-up is slow on a loaded machine
    while kills < 6 and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.15, 0.4))
        victim = workers[kills % 2]
        victim.kill()
        kills += 1
        victim.start()
    assert kills == 6
    states = _wait_all_final(ids, settings, timeout=60)
    counts = simulator.count_by_phone()
    # Nothing added twice, ever.
    assert max(counts.values()) == 1
    store = DeadLetterStore(settings=settings)
    dead = {job_id: s for job_id, s in states.items() if s["state"] == "dead"}
    if ambiguous == "reconcile":
        # Every job a kill left ambiguous was looked up in VICIdial and decided: no
        # letter is left for a person to check, every lead is there exactly once.
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        stats = client.hgetall(f"{settings.key_prefix}:stats")
        client.close()
        scheduled = int(stats.get("reconcile:scheduled", 0))
        found = int(stats.get("reconcile:found", 0))
        absent = int(stats.get("reconcile:absent", 0))
        print(
            f"kills={kills} ambiguous outcomes={scheduled} (found {found}, absent {absent}) "
            f"ambiguous dead letters left={len(dead)} look-ups={simulator.lookup_count} "
            f"calls={simulator.call_count}"
        )
        assert not dead, list(dead.values())[:3]
        assert all(counts.get(p) == 1 for p in phones), "every lead added exactly once"
        assert len(counts) == 300
        # A kill may strike a look-up too: that job is scheduled again, counted twice.
        assert found + absent <= scheduled <= kills * 3 + absent, (scheduled, found, absent)
        return
    # A job can only die here as `ambiguous`: a worker was killed between sending the
    # request and storing the answer. The operator checks VICIdial and replays those
    # that are not there; we play the operator with the simulator's table.
    assert all(s["reason"] == "ambiguous" for s in dead.values())
    phone_of = dict(zip(ids, phones, strict=True))
    for job_id in dead:
        letter = store.get(job_id)
        assert letter is not None and letter.job["lead"]["phone_number"] == phone_of[job_id]
        if counts.get(phone_of[job_id], 0) == 0:
            assert store.replay(letter) == "replayed"
        else:
            store.purge(letter)
    _wait_all_final(ids, settings, timeout=30)
    counts = simulator.count_by_phone()
    assert all(counts.get(p) == 1 for p in phones), "every lead added exactly once"
    assert len(counts) == 300
    print(f"kills={kills} ambiguous={len(dead)} calls={simulator.call_count}")
    # A kill can only leave ambiguous the jobs its worker held: at most its concurrency.
    assert len(dead) <= kills * 3, len(dead)


def test_redis_restart_mid_run_loses_nothing(
    tmp_path: Path,
    simulator: Simulator,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    server = RedisServer(tmp_path / "aof", appendonly=True)
    (tmp_path / "aof").mkdir()
    server.start()
    try:
        settings = make_settings(server.url, simulator)
        simulator.set_latency(10, max_ms=20)
        start_worker(settings, concurrency=4)
        phones = _phones(200, 3000)
        ids = enqueue_leads(
            [{"agent_user": "1000", "phone_number": p} for p in phones], settings=settings
        )
        wait_for(lambda: len(simulator.leads) >= 40, message="the run to be under way")
        server.stop()  # SIGTERM; AOF fsync'd on every write
        time.sleep(1.0)
        server.start()
        states = _wait_all_final(ids, settings, timeout=60)
        counts = simulator.count_by_phone()
        # A Redis restart is the fleet's own hiccup, not a lost answer from VICIdial:
        # every worker holds on to its claim and its outcome until Redis is back, so
        # nothing is left ambiguous and every lead is added exactly once.
        dead = {k: s for k, s in states.items() if s["state"] == "dead"}
        assert not dead, list(dead.values())[:3]
        assert len(counts) == 200 and max(counts.values()) == 1
    finally:
        server.close()


def test_outage_then_recovery_adds_everything_with_few_calls(
    redis_url: str,
    simulator: Simulator,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    settings = make_settings(
        redis_url, simulator, retry_cap_s=2.0, breaker_pause_s=0.3, breaker_threshold=5
    )
    start_worker(settings, concurrency=4)
    simulator.set_outage("http_503")
    phones = _phones(60, 5000)
    ids = enqueue_leads(
        [{"agent_user": "1000", "phone_number": p} for p in phones], settings=settings
    )
    time.sleep(4.0)
    outage_calls = simulator.call_count
    simulator.set_outage(None)
    states = _wait_all_final(ids, settings, timeout=40)
    assert all(s["state"] == "added" for s in states.values())
    assert all(n == 1 for n in simulator.count_by_phone().values())
    # jobs x attempts would be 60 x 8 = 480 calls; the breaker holds the fleet back.
    assert outage_calls < 40, outage_calls
    print(f"calls during a 4 s outage: {outage_calls}")


def test_wrong_password_costs_few_logins_and_nothing_is_lost(
    redis_url: str,
    simulator: Simulator,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    bad = make_settings(redis_url, simulator, vicidial_pass="wrong", pause_s=2.0)
    simulator.set_latency(20)
    worker = start_worker(bad, concurrency=4)
    phones = _phones(50, 7000)
    ids = enqueue_leads([{"agent_user": "1000", "phone_number": p} for p in phones], settings=bad)
    wait_for(lambda: simulator.failed_logins("6666") > 0, message="the first refusal")
    time.sleep(1.0)
    failed = simulator.failed_logins("6666")
    assert failed <= 4 + 1, failed  # the calls in flight when it went wrong, plus one
    assert not simulator.is_locked("6666")
    status = _status_json(bad)
    assert any(p["reason"] == "auth" for p in status["paused"].values())
    # The operator fixes the password (rolling restart with the right one).
    worker.stop()
    good = make_settings(redis_url, simulator, pause_s=2.0)
    fixed = start_worker(good, concurrency=4, name="fixed")
    # Held jobs resume after the cool-down's credential probe; the refused ones
    # were dead-lettered as `auth` and are replayed.
    store = DeadLetterStore(settings=good)
    wait_for(
        lambda: (
            sum(1 for s in _states(ids, good).values() if s.get("state") in ("added", "dead")) == 50
        ),
        timeout=40,
        message="all jobs added or dead",
    )
    auth_letters = list(store.iter(reason="auth"))
    assert 1 <= len(auth_letters) <= 4
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "dlq", "replay", "--reason", "auth", "--yes"],
        env={**_base_env(), **settings_env(good), "DISPATCHER_ENV_FILE": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    states = _wait_all_final(ids, good, timeout=30)
    assert all(s["state"] == "added" for s in states.values())
    assert all(simulator.count_by_phone().get(p) == 1 for p in phones)
    assert simulator.failed_logins("6666") <= 5
    assert not simulator.is_locked("6666")
    everything = worker.log_path.read_text()
    assert "wrong" not in everything.replace("Wrong", "")  # the password never in a log
    assert any(e.get("event") == "vicidial.paused" for e in worker.logs())
    fixed_events = [e.get("event") for e in fixed.logs()]
    assert "vicidial.resumed" in fixed_events


def test_fleet_rate_limit_holds_within_ten_percent(
    redis_url: str,
    simulator: Simulator,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    settings = make_settings(redis_url, simulator, rate_limit=20.0)
    threads = [
        threading.Thread(
            target=start_worker, args=(settings,), kwargs={"name": f"r{i}", "concurrency": 3}
        )
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    phones = _phones(100, 8000)
    ids = enqueue_leads(
        [{"agent_user": "1000", "phone_number": p} for p in phones], settings=settings
    )
    _wait_all_final(ids, settings, timeout=30)
    times = sorted(r.at for r in simulator.requests)
    assert len(times) == 100
    rate = steady_rate(times)
    print(f"measured {rate:.2f} calls/s for a limit of 20/s")
    assert 18.0 <= rate <= 22.0, rate


def test_sigterm_finishes_calls_in_flight_and_returns_the_rest(
    redis_url: str,
    simulator: Simulator,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    settings = make_settings(redis_url, simulator, http_timeout_s=3.0, visibility_timeout_s=60.0)
    simulator.set_latency(600)
    worker = start_worker(settings, concurrency=4, name="rolling1")
    phones = _phones(30, 9000)
    ids = enqueue_leads(
        [{"agent_user": "1000", "phone_number": p} for p in phones], settings=settings
    )
    wait_for(lambda: simulator.call_count >= 4, message="calls in flight")
    assert worker.stop(timeout=20) == 0
    # Everything acknowledged or handed back: nothing waits for the visibility timeout.
    client = redis.Redis.from_url(settings.redis_url)
    assert client.hlen("unacked") == 0
    client.close()
    after_stop = _states(ids, settings)
    added = sum(1 for s in after_stop.values() if s.get("state") == "added")
    assert added >= 4  # the calls in flight finished
    assert not any(s.get("state") == "dead" for s in after_stop.values())
    simulator.set_latency(0)
    start_worker(settings, concurrency=4, name="rolling2")
    # Nothing waits for a visibility timeout (60 s): unstarted messages went back.
    states = _wait_all_final(ids, settings, timeout=20)
    assert all(s["state"] == "added" for s in states.values())
    assert all(simulator.count_by_phone().get(p) == 1 for p in phones)


def _status_json(settings: Settings) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "status", "--json"],
        env={**_base_env(), **settings_env(settings), "DISPATCHER_ENV_FILE": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
