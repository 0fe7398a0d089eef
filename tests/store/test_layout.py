"""The Redis layout's version (dispatcher/store/layout.py): fresh installs, the previous
release's unversioned Redis, newer layouts refused by every process, and migrations
run once however many workers start together.

Real Redis throughout; the refusals are checked on real processes (a worker, the
intake, the CLI) as an operator would meet them: exit 1, both versions named, no
traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from structlog.testing import capture_logs

import dispatcher.store.layout as layout_module
from dispatcher import enqueue_lead
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.devtools.redis_server import RedisServer, free_port
from dispatcher.model.errors import (
    BrokerUnavailable,
    LayoutMismatch,
    LayoutNotMigrated,
    LayoutTooNew,
)
from dispatcher.simulator import Simulator
from dispatcher.store.backend import Backend
from dispatcher.store.layout import (
    LAYOUT_VERSION,
    MIGRATIONS,
    Migration,
    check_layout,
    ensure_layout,
    read_layout,
)
from tests.support.cli import check, cli_env, run_cli
from tests.support.layout import counting_step
from tests.support.settings import ROOT, make_settings
from tests.support.waiting import wait_for

NEWER = LAYOUT_VERSION + 1


def _backend(settings: Settings) -> Backend:
    # A Backend of its own (not get_backend's cached one): each test checks afresh.
    return Backend(settings)


def test_every_version_below_the_current_one_has_its_migration() -> None:
    assert sorted(MIGRATIONS) == list(range(1, LAYOUT_VERSION))
    for start, step in MIGRATIONS.items():
        assert step.from_version == start and step.summary


def test_a_fresh_redis_gets_the_current_version_from_the_first_process(redis_url: str) -> None:
    settings = make_settings(redis_url)
    backend = _backend(settings)
    assert read_layout(backend) is None
    with capture_logs() as logs:
        state = check_layout(backend, role="worker", migrate=True)
    assert (state.version, state.found, state.migrated) == (LAYOUT_VERSION, None, ())
    assert backend.redis.get(backend.keys.layout) == str(LAYOUT_VERSION)
    assert [e["event"] for e in logs] == ["layout.initialised"]
    # The next process finds it set, and changes nothing.
    again = check_layout(_backend(settings), role="CLI")
    assert (again.version, again.found, again.recorded) == (LAYOUT_VERSION, LAYOUT_VERSION, False)


def test_the_previous_release_s_unversioned_redis_is_version_1(redis_url: str) -> None:
    """Release 1c0038d wrote no version key: a Redis with its data and no key is version 1.
    Each kind of data it leaves is enough to tell (one EXISTS, no SCAN)."""
    settings = make_settings(redis_url)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = _backend(settings).keys
    for write in (
        lambda: client.hset(keys.stats, "enqueued", 1),
        lambda: client.sadd(keys.users, "alice"),
        lambda: client.sadd(keys.workers, "w1@host"),
        lambda: client.zadd(keys.scheduled, {"envelope": 1.0}),
        lambda: client.lpush(keys.queue, "a message of an older version"),
        lambda: client.lpush(keys.lane("default", "bulk"), "a message"),
    ):
        client.flushall()
        write()
        backend = _backend(settings)
        assert read_layout(backend) == 1
        with capture_logs() as logs:
            state = check_layout(backend, role="worker", migrate=True)
        assert (state.found, state.version, state.recorded) == (1, LAYOUT_VERSION, True)
        assert client.get(keys.layout) == str(LAYOUT_VERSION)
        assert [e["event"] for e in logs] == ["layout.recorded"]
        assert logs[0]["found"] == "absent"


def test_a_newer_layout_is_refused_naming_both_versions(redis_url: str) -> None:
    settings = make_settings(redis_url)
    client = redis.Redis.from_url(redis_url)
    client.set("dispatcher:layout", NEWER)
    for role, migrate in (("worker", True), ("intake", False), ("producer", False)):
        with pytest.raises(LayoutTooNew) as info:
            check_layout(_backend(settings), role=role, migrate=migrate)
        text = str(info.value)
        assert f"version {NEWER}" in text and f"version {LAYOUT_VERSION}" in text, text
        assert role in text and "Upgrading" in text
        assert (info.value.found, info.value.supported) == (NEWER, LAYOUT_VERSION)
        # The producers' and CLI's callers already handle this kind of error.
        assert isinstance(info.value, BrokerUnavailable)
    assert client.get("dispatcher:layout") == str(NEWER).encode()
    with pytest.raises(LayoutTooNew):
        enqueue_lead(agent_user="1000", phone_number="7275551212", settings=settings)
    assert client.llen("dispatcher.default.realtime") == 0


def test_a_value_that_is_no_version_is_refused(redis_url: str) -> None:
    redis.Redis.from_url(redis_url).set("dispatcher:layout", "two")
    with pytest.raises(LayoutMismatch, match="not a layout version"):
        check_layout(_backend(make_settings(redis_url)), role="worker", migrate=True)


def _refusal(text: str) -> None:
    assert f"version {NEWER}" in text and f"version {LAYOUT_VERSION}" in text, text
    assert "Traceback" not in text


def test_a_worker_refuses_to_start_on_a_newer_layout(
    redis_url: str, simulator: Simulator, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("dispatcher:layout", NEWER)
    worker = WorkerProcess(make_settings(redis_url, simulator), tmp_path / "w.log")
    worker.start(wait=False)
    assert worker.process is not None
    try:
        code = worker.process.wait(30)
    except subprocess.TimeoutExpired:
        worker.kill()
        pytest.fail("the worker ran on a layout newer than it knows")
    assert code == 1
    _refusal(worker.tail())
    assert "dispatcher worker: the Redis layout" in worker.tail()
    # It consumed nothing and registered no consumer.
    assert not client.exists("_dispatcher.inflight.dispatcher")


def test_the_intake_refuses_to_start_on_a_newer_layout(redis_url: str) -> None:
    redis.Redis.from_url(redis_url).set("dispatcher:layout", NEWER)
    settings = make_settings(redis_url, intake_tokens=("t" * 32,))
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "serve", "--port", str(free_port())],
        env={**cli_env(settings), "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    _refusal(done.stderr)
    assert "intake" in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("status", "--json"),
        ("job", "0123456789abcdef0123456789abcdef"),
        ("dlq", "list", "--json"),
        ("dlq", "replay", "--all", "--yes"),
        ("enqueue", "--agent-user", "1000", "--phone", "7275551212"),
        ("users", "list"),
    ],
)
def test_the_cli_refuses_a_newer_layout(redis_url: str, args: tuple[str, ...]) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("dispatcher:layout", NEWER)
    result = run_cli(make_settings(redis_url), *args)
    check(result, code=1)
    _refusal(result.stderr)
    assert result.stdout == ""
    assert client.keys("*") == [b"dispatcher:layout"]


def test_readers_change_nothing_and_status_shows_the_version(redis_url: str) -> None:
    """The CLI and the intake only look (a dry run changes nothing in Redis); producers
    and workers record the version where it is missing."""
    settings = make_settings(redis_url)
    client = redis.Redis.from_url(redis_url)
    result = run_cli(settings, "status", "--json")
    check(result)
    assert json.loads(result.stdout)["layout"] == {"version": None, "release": LAYOUT_VERSION}
    assert client.keys("*") == []
    client.hset("dispatcher:stats", "enqueued", 1)  # the previous release's Redis
    for role in ("CLI", "intake"):
        state = check_layout(_backend(settings), role=role)
        assert (state.found, state.recorded) == (1, False)
    result = run_cli(settings, "status")
    check(result)
    assert f"Redis layout: version 1 (this release: {LAYOUT_VERSION})" in result.stdout
    assert client.get("dispatcher:layout") is None
    enqueue_lead(agent_user="1000", phone_number="7275551212", settings=settings)
    assert client.get("dispatcher:layout") == b"%d" % LAYOUT_VERSION


def test_a_worker_waits_for_redis_before_its_layout_check(
    simulator: Simulator, tmp_path: Path
) -> None:
    """The check must not turn "Redis not up yet" (compose starting everything at once)
    into a worker that exits: it waits, as Celery's own connection does."""
    port = free_port()
    settings = make_settings(f"redis://127.0.0.1:{port}/0", simulator)
    worker = WorkerProcess(settings, tmp_path / "w.log")
    (tmp_path / "redis").mkdir()
    worker.start(wait=False)
    try:
        time.sleep(2.0)
        assert worker.alive(), worker.tail()
        with RedisServer(tmp_path / "redis", port=port):
            worker.wait_ready(30)
            client = redis.Redis(port=port)
            assert client.get("dispatcher:layout") == b"%d" % LAYOUT_VERSION
    finally:
        worker.kill()


# -- migrations (this release has none yet: the mechanism, with steps of the tests' own) ----


def test_an_older_layout_is_migrated_once_by_several_workers_starting_together(
    redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.hset("dispatcher:stats", "enqueued", 5)  # the previous release's data, no key
    go = tmp_path / "go"
    code = f"from tests.support.layout import race; race({redis_url!r}, {str(go)!r})"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert client.get("dispatcher:test:runs:1") == "1"
    assert client.get("dispatcher:test:runs:2") == "1"
    assert client.get("dispatcher:layout") == "3"
    assert client.get("dispatcher:layout:lock") is None
    # Each found version 1, or 2 if it looked after the first step (a slow start).
    assert all(r["found"] in (1, 2) and r["version"] == 3 for r in results), results
    migrators = [r for r in results if r["migrated"]]
    assert len(migrators) == 1 and migrators[0]["migrated"] == [1, 2], results
    assert [e for e in migrators[0]["events"] if e[0] == "layout.migrated"] == [
        ["layout.migrated", 1, 2],
        ["layout.migrated", 2, 3],
    ]
    waiters = [r for r in results if not r["migrated"]]
    assert all(not any(e[0] == "layout.migrated" for e in r["events"]) for r in waiters), results


def test_a_migration_that_fails_half_way_is_run_again_by_the_next_start(redis_url: str) -> None:
    settings = make_settings(redis_url)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.sadd("dispatcher:users", "alice")
    calls: list[int] = []

    def flaky(backend: Backend) -> None:
        calls.append(2)
        if len(calls) == 1:
            raise ConnectionError("the migrator's host went away")

    steps = {1: counting_step(1, pause_s=0), 2: Migration(2, "flaky", flaky)}
    with pytest.raises(ConnectionError):
        check_layout(_backend(settings), role="worker", migrate=True, current=3, migrations=steps)
    # Step 1 is recorded; step 2 is not, and the lock is free for the next start.
    assert client.get("dispatcher:layout") == "2"
    assert client.get("dispatcher:layout:lock") is None
    state = check_layout(
        _backend(settings), role="worker", migrate=True, current=3, migrations=steps
    )
    assert (state.found, state.version, state.migrated) == (2, 3, (2,))
    assert client.get("dispatcher:test:runs:1") == "1" and calls == [2, 2]


def test_only_the_lock_holder_advances_the_version(redis_url: str) -> None:
    """A migrator whose lock lapsed (a long pause) cannot move the version afterwards."""
    settings = make_settings(redis_url)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.hset("dispatcher:stats", "enqueued", 1)
    taken: list[str] = []

    def slow(backend: Backend) -> None:
        time.sleep(0.3)  # longer than the lock's 100 ms: another process takes it
        taken.append(str(client.set("dispatcher:layout:lock", "another", nx=True, px=5000)))

    with pytest.raises(LayoutMismatch, match="took longer than its lock"):
        check_layout(
            _backend(settings),
            role="worker",
            migrate=True,
            current=2,
            migrations={1: Migration(1, "slow", slow)},
            lock_ms=100,
        )
    assert taken == ["True"]
    assert client.get("dispatcher:layout") is None  # still version 1 (absent)
    assert client.get("dispatcher:layout:lock") == "another"  # not removed by the loser


def test_producers_the_intake_and_the_cli_leave_an_older_layout_to_the_workers(
    redis_url: str,
) -> None:
    settings = make_settings(redis_url)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.hset("dispatcher:stats", "enqueued", 1)
    steps = {1: counting_step(1, pause_s=0)}
    for role in ("producer", "intake", "CLI"):
        with pytest.raises(LayoutNotMigrated) as info:
            check_layout(_backend(settings), role=role, current=2, migrations=steps)
        assert "version 1" in str(info.value) and "version 2" in str(info.value)
        assert "workers first" in str(info.value)
    assert client.get("dispatcher:layout") is None
    assert client.get("dispatcher:test:runs:1") is None


def test_a_producer_checks_once_per_process(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(redis_url)
    client = redis.Redis.from_url(redis_url)
    enqueue_lead(agent_user="1000", phone_number="7275551212", settings=settings)
    assert client.get("dispatcher:layout") == b"%d" % LAYOUT_VERSION
    client.set("dispatcher:layout", NEWER)
    # Checked already: a producer process notices at its next start, not per lead (a
    # round trip per lead would cost the enqueue benchmark's goal).
    enqueue_lead(agent_user="1000", phone_number="7275551213", settings=settings)
    with pytest.raises(LayoutTooNew):
        enqueue_lead(agent_user="1000", phone_number="7275551214", settings=settings.replace())
    seen: list[str] = []

    real: Callable[..., object] = layout_module.check_layout
    monkeypatch.setattr(
        layout_module, "check_layout", lambda *a, **k: seen.append(k["role"]) or real(*a, **k)
    )
    backend = _backend(settings)
    client.set("dispatcher:layout", LAYOUT_VERSION)
    ensure_layout(backend, role="CLI")
    ensure_layout(backend, role="CLI")
    # A read check does not stand for a writer's (which records a missing version).
    ensure_layout(backend, role="producer", write=True)
    ensure_layout(backend, role="producer", write=True)
    ensure_layout(backend, role="CLI")
    assert seen == ["CLI", "producer"]


def test_a_worker_on_a_redis_of_the_previous_release_records_version_1_and_serves(
    redis_url: str, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    """The smallest upgrade: a job queued without a version key is served; the worker
    logs what it found. (tests/upgrade does this with the previous release's whole
    Redis, recorded by that release itself.)"""
    settings = make_settings(redis_url, simulator)
    job_id = enqueue_lead(agent_user="1000", phone_number="7275551212", settings=settings)
    client = redis.Redis.from_url(redis_url)
    client.delete("dispatcher:layout")  # as release 1c0038d left it
    worker = start_worker(settings)
    wait_for(
        lambda: client.hget(f"dispatcher:job:{job_id}", "state") == b"added",
        message="the job added",
    )
    assert client.get("dispatcher:layout") == b"%d" % LAYOUT_VERSION
    recorded = [e for e in worker.logs() if e.get("event") == "layout.recorded"]
    assert recorded and recorded[0]["version"] == LAYOUT_VERSION and recorded[0]["role"] == "worker"


def test_a_running_worker_stops_when_a_newer_release_migrates_the_layout(
    redis_url: str, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    """Old workers should be stopped before a layout-changing release starts (README
    "Upgrading"); one left running notices within seconds and leaves, finishing its
    calls (warm shutdown), rather than misread what the newer release writes."""
    settings = make_settings(redis_url, simulator)
    worker = start_worker(settings)
    client = redis.Redis.from_url(redis_url)
    job_id = enqueue_lead(agent_user="1000", phone_number="7275551212", settings=settings)
    wait_for(lambda: client.hget(f"dispatcher:job:{job_id}", "state") == b"added")
    client.set("dispatcher:layout", NEWER)  # what a newer release's migration leaves
    assert worker.process is not None
    assert worker.process.wait(30) == 0, worker.tail()  # a warm shutdown
    [event] = [e for e in worker.logs() if e.get("event") == "layout.newer"]
    assert (event["found"], event["supported"]) == (NEWER, LAYOUT_VERSION)
    assert "Traceback" not in worker.tail()
