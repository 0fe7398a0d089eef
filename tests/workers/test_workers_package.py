"""The workers package: no import circle, a lazily built app, the reliable pop really
running (and refusing to fall back silently), poison items never lost."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from kombu.transport import redis as kombu_redis

from dispatcher import DeadLetterStore, enqueue_lead, enqueue_leads, job_status
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.simulator import Simulator
from dispatcher.store.keys import Keys
from tests.support.settings import ROOT, make_settings
from tests.support.waiting import wait_for
from workers import acks, transport
from workers.celery_app import (
    check_worker_settings,
    make_app,
    pool_on_command_line,
    worker_defaults,
)


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    base.update(env, DISPATCHER_ENV_FILE="/nonexistent", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", code], env=base, capture_output=True, text=True, timeout=60
    )


def test_importing_worker_modules_builds_no_app_and_needs_no_settings() -> None:
    result = _python(
        "import sys\n"
        "import workers.classify, workers.retry, workers.vicidial, workers.transport\n"
        "import workers.acks, workers.scheduler, workers.lookup_check, workers.consumer\n"
        "import workers.delivery, workers.reconciler, workers.runner, workers.engine\n"
        "assert 'workers.tasks' not in sys.modules, 'transport/consumer import the tasks'\n"
        "print('ok')\n",
        DISPATCHER_MAX_ATTEMPTS="many",  # a bad setting: only building the app reads it
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_celery_finds_the_app_in_the_package() -> None:
    result = _python("import workers; print(workers.app.main)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "dispatcher"
    bad = _python("import workers; workers.app", DISPATCHER_MAX_ATTEMPTS="many")
    assert bad.returncode == 2 and "DISPATCHER_MAX_ATTEMPTS" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_reliable_pop_is_the_one_running(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker(settings)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    commands: list[str] = []
    in_scripts: list[str] = []
    done = threading.Event()

    def watch() -> None:
        with client.monitor() as monitor:
            for entry in monitor.listen():
                kind = in_scripts if entry.get("client_type") == "lua" else commands
                kind.append(str(entry["command"]))
                if done.is_set():
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(0.3)
    job_id = enqueue_lead(agent_user="1000", phone_number="7275551212", settings=settings)
    wait_for(lambda: (job_status(job_id, settings=settings) or {}).get("state") == "added")
    time.sleep(1.5)  # an idle poll or two
    done.set()
    redis.Redis.from_url(settings.redis_url).ping()
    watcher.join(10)
    pops = [c for c in commands if c.split()[0].upper() in ("BRPOP", "BLPOP", "RPOP", "LPOP")]
    # Messages are popped only inside the fetch script (atomically into kombu's unacked
    # record); a blocking BRPOP only ever waits on the wake-up list, which holds none.
    assert pops and all(c.split()[1] == f"{settings.queue}.wake" for c in pops), pops
    assert any(" fetch " in c or '"fetch"' in c for c in commands if c.startswith("EVALSHA"))
    assert any(c.startswith("RPOP") for c in in_scripts)
    assert any(c.startswith("HSET") and "unacked" in c for c in in_scripts)


def test_after_redis_lost_its_scripts_the_poll_goes_by_sha_again(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    """A Redis that restarted (or flushed its scripts) answers the poll's EVALSHA with
    NOSCRIPT: the next poll sends the script itself (EVAL, which loads it), and the polls
    after it go by its SHA again, not with the whole script every time."""
    start_worker(settings)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    first = enqueue_lead(agent_user="1000", phone_number="7275551212", settings=settings)
    wait_for(lambda: (job_status(first, settings=settings) or {}).get("state") == "added")
    client.script_flush()
    second = enqueue_lead(agent_user="1000", phone_number="7275551213", settings=settings)
    wait_for(lambda: (job_status(second, settings=settings) or {}).get("state") == "added")
    polls: list[str] = []
    done = threading.Event()

    def watch() -> None:
        with client.monitor() as monitor:
            for entry in monitor.listen():
                command = str(entry["command"])
                if entry.get("client_type") != "lua" and " fetch " in command:
                    polls.append(command.split()[0])
                if done.is_set():
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(2.5)  # idle: a poll a second
    done.set()
    redis.Redis.from_url(settings.redis_url).ping()
    watcher.join(10)
    assert polls and set(polls) == {"EVALSHA"}, polls


def test_a_worker_with_free_slots_takes_several_messages_a_poll(
    settings: Settings, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    simulator.set_latency(500)  # the eight calls of a round end together
    leads = [{"agent_user": "1000", "phone_number": f"72755{i:05d}"} for i in range(24)]
    job_ids = enqueue_leads(leads, settings=settings)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    fetches: list[str] = []
    done = threading.Event()

    def watch() -> None:
        with client.monitor() as monitor:
            for entry in monitor.listen():
                command = str(entry["command"])
                if entry.get("client_type") != "lua" and " fetch " in command:
                    fetches.append(command)
                if done.is_set():
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(0.3)
    start_worker(settings, concurrency=8)
    wait_for(
        lambda: all(
            (job_status(j, settings=settings) or {}).get("state") == "added" for j in job_ids
        ),
        timeout=30,
    )
    done.set()
    redis.Redis.from_url(settings.redis_url).ping()
    watcher.join(10)
    # 8 call slots, and the consumer holds 4 more messages (workers/engine.py): the
    # first poll asks for all 12 (the script takes that many, tests/store/test_fetch_batch.py).
    most = [int(c.split()[11]) for c in fetches]  # EVALSHA sha 1 prefix fetch ... most
    assert most[0] == 12 and max(most[1:]) <= 12, most


def test_a_worker_refuses_to_start_where_the_reliable_pop_cannot_run(
    settings: Settings, tmp_path: Path
) -> None:
    worker = WorkerProcess(
        settings, tmp_path / "w.log", name="several", extra_args=("-Q", "dispatcher,other")
    )
    worker.start(wait=False)
    assert worker.process is not None
    try:
        code = worker.process.wait(30)
    except subprocess.TimeoutExpired:
        worker.kill()
        pytest.fail("the worker ran with several queues (stock BRPOP: no crash protection)")
    assert code != 0
    assert "one queue" in worker.tail()


def test_a_poison_item_whose_letter_cannot_be_written_is_kept(
    redis_url: str, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    admin = redis.Redis.from_url(redis_url)
    # A worker account that may touch every key but the dead-letter store's
    # (dispatcher:dl...): ACLs only allow, so the patterns spell out "everything else".
    word = "dispatcher"
    allowed = ["~[^d]*", f"~{word}", f"~{word}:[^d]*", f"~{word}:d[^l]*"]
    allowed += [f"~{word[:i]}[^{word[i]}]*" for i in range(1, len(word))]
    allowed.append(f"~{word}[^:]*")
    admin.execute_command("ACL", "SETUSER", "limited", "on", ">limited-pw", "+@all", "&*", *allowed)
    host_port = redis_url.split("//")[1]
    limited = make_settings(f"redis://limited:limited-pw@{host_port}", simulator)
    worker = start_worker(limited)
    admin.lpush(limited.queue, "definitely not a celery message")
    time.sleep(3.0)  # several polls
    queued = admin.lrange(limited.queue, 0, -1)
    held = [
        item
        for key in admin.smembers(Keys.of(limited).inflight_registry)
        for item in admin.lrange(key, 0, -1)
    ]
    assert b"definitely not a celery message" in queued + held, "the poison item was lost"
    admin.execute_command("ACL", "SETUSER", "limited", "allkeys")
    store = DeadLetterStore(settings=make_settings(redis_url))
    letters = wait_for(
        lambda: [x for x in store.iter() if x.reason == "invalid_payload"],
        timeout=15,
        message="the letter, once it can be written",
    )
    assert "definitely not a celery message" in json.dumps(letters[0].job)
    assert worker.alive()


def test_a_sweeper_killed_mid_sweep_cannot_stop_the_fleets_sweeps_for_long() -> None:
    """kombu locks each sweep of expired unacknowledged messages with a Redis key that
    expires after 300 s by default: a worker SIGKILLed during a sweep once left the
    messages it held unswept that long (the SIGKILL test timed out waiting)."""

    settings = Settings(vicidial_url="http://127.0.0.1:1/agc/api.php", visibility_timeout_s=600)
    options = make_app(settings).conf.broker_transport_options
    assert options["unacked_mutex_expire"] <= 5 * options["unacked_restore_interval"]
    assert options["unacked_mutex_expire"] < settings.visibility_timeout_s / 4


def test_a_worker_started_with_mingle_and_gossip_takes_queued_jobs(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    """The README's plain `celery -A workers worker` keeps Celery's start-up handshake:
    its reply queue is read by kombu's own pop, never by the fetch script (which
    would hand a lead to the handshake and crash the worker)."""
    ids = [
        enqueue_lead(agent_user="1000", phone_number=f"72755{i:05d}", settings=settings)
        for i in range(30)
    ]
    worker = start_worker(settings, mingle=True)
    wait_for(
        lambda: all((job_status(j, settings=settings) or {}).get("state") == "added" for j in ids),
        timeout=30,
    )
    assert worker.process is not None and worker.process.poll() is None
    assert "Unrecoverable error" not in worker.log_path.read_text()


@pytest.mark.parametrize("pool", ["gevent", "eventlet", "celery.concurrency.gevent"])
def test_a_worker_refuses_the_gevent_and_eventlet_pools(
    pool: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        check_worker_settings(sender=SimpleNamespace(pool_cls=pool))
    assert exit_info.value.code == 2
    assert "is not supported: use the default (threads" in capsys.readouterr().err


def test_kombu_still_has_every_method_the_transport_overrides_or_calls() -> None:
    """workers/transport.py and workers/acks.py override and call private parts of kombu's
    Redis transport (pinned to kombu 5.7): a kombu that renamed one would silently bypass
    an override (the reliable pop, the Redis-clock sweep, a guard that keeps Celery's
    loop alive)."""

    expected = {
        kombu_redis.QoS: {
            "append": ["message", "delivery_tag"],
            "ack": ["delivery_tag"],
            "reject": ["delivery_tag", "requeue"],
            "restore_unacked": ["client"],
            "restore_unacked_once": ["stderr"],
            "restore_visible": ["start", "num", "interval"],
            "restore_by_tag": ["tag", "client", "leftmost"],
            "pipe_or_acquire": ["pipe", "client"],
            "_remove_from_indices": ["delivery_tag", "pipe"],
            "can_consume": [],
        },
        kombu_redis.Channel: {
            "_brpop_start": ["timeout"],
            "_brpop_read": ["options"],
            "_receive": [],
            "_size": ["queue"],
            "_queue_bind": ["exchange", "routing_key", "pattern", "queue"],
            "maybe_refresh_binding_expiry": [],
            "basic_consume": ["queue", "args", "kwargs"],
            "_create_client": ["asynchronous"],
            "conn_or_acquire": ["client"],
        },
    }
    for cls, methods in expected.items():
        for name, params in methods.items():
            method = getattr(cls, name, None)
            assert method is not None, f"kombu {cls.__name__}.{name} is gone"
            found = [p for p in inspect.signature(method).parameters if p != "self"]
            assert found == params, (cls.__name__, name, found)
    # The sweep's lock: kombu's own, reused.
    assert callable(kombu_redis.Mutex) and issubclass(kombu_redis.MutexHeld, Exception)
    # And ours are the ones the transport's classes resolve to.
    for name in ("append", "reject", "restore_visible", "restore_unacked"):
        assert getattr(acks.ReliableQoS, name) is not getattr(kombu_redis.QoS, name), name
    assert transport.Channel.QoS is acks.ReliableQoS
    for name in ("_brpop_start", "_brpop_read", "_receive", "maybe_refresh_binding_expiry"):
        ours = getattr(transport.Channel, name)
        assert ours is not getattr(kombu_redis.Channel, name), name
        assert getattr(transport.SentinelChannel, name) is ours, name


# -- what the plain command runs (issue 24 item 3) ----------------------------------------


def test_the_command_line_pool_is_read_as_celery_reads_it() -> None:
    base = ["/venv/bin/celery", "-A", "workers", "worker", "--loglevel", "INFO"]
    assert pool_on_command_line(base) is None
    assert pool_on_command_line([*base, "-P", "prefork", "-c", "2"]) == "prefork"
    assert pool_on_command_line([*base, "--pool=solo"]) == "solo"
    assert pool_on_command_line([*base, "--pool", "threads"]) == "threads"
    assert pool_on_command_line([*base, "-Pprefork"]) == "prefork"
    assert pool_on_command_line(["celery", "-A", "workers", "inspect", "ping"]) is None
    settings = Settings(worker_concurrency=80)
    assert worker_defaults(settings, base) == {"worker_pool": "threads", "worker_concurrency": 80}
    assert worker_defaults(settings, [*base, "-P", "threads"]) == {"worker_concurrency": 80}
    # -P prefork alone: Celery's own default (a child per CPU), never 80 processes.
    assert worker_defaults(settings, [*base, "-P", "prefork"]) == {}


def _banner_concurrency(worker: WorkerProcess) -> str:
    for line in worker.log_path.read_text(errors="replace").splitlines():
        if ".> concurrency:" in line:
            return line.split(".> concurrency:", 1)[1].strip()
    raise AssertionError(f"no banner in the worker's log:\n{worker.tail()}")


def test_the_plain_worker_command_runs_the_lead_engine_with_64_calls_in_flight(
    settings: Settings, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    """`celery -A workers worker --loglevel INFO`, no -P, no -c: threads, 64 slots."""
    plain = settings.replace(worker_concurrency=64)
    worker = start_worker(plain, pool=None, concurrency=None, mingle=True)
    job_id = enqueue_lead(agent_user="1000", phone_number="7275551212", settings=plain)
    wait_for(lambda: (job_status(job_id, settings=plain) or {}).get("state") == "added")
    command = worker.command()
    assert not {"-P", "--pool", "-c", "--concurrency"} & set(command)
    assert _banner_concurrency(worker) == "64 (thread)"
    started = [e for e in worker.logs() if e.get("event") == "worker.engine_started"]
    assert [e["capacity"] for e in started] == [64]
    added = [e for e in worker.logs() if e.get("event") == "lead.added"]
    assert [e["job_id"] for e in added] == [job_id]


def test_prefork_asked_for_on_the_command_line_still_adds_leads(
    settings: Settings, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker(settings, pool="prefork", concurrency=2)
    ids = enqueue_leads(
        [{"agent_user": "1000", "phone_number": f"72755{i:05d}"} for i in range(6)],
        settings=settings,
    )
    wait_for(
        lambda: all(
            (job_status(job_id, settings=settings) or {}).get("state") == "added" for job_id in ids
        ),
        timeout=60,
    )
    assert _banner_concurrency(worker) == "2 (prefork)"
    assert not any(e.get("event") == "worker.engine_started" for e in worker.logs())
    assert sorted(simulator.count_by_phone().values()) == [1] * 6
