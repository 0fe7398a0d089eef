"""Several dialers, priority lanes: isolation, order, rate limits, faults.

Two simulators are two VICIdial servers named in a real dialers file; real
worker processes serve both; everything is checked in the simulators' request
logs and the job states in Redis.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from dispatcher import InvalidLead, enqueue_lead, enqueue_leads, job_status
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess, settings_env
from dispatcher.devtools.redis_server import RedisServer
from dispatcher.model.dialers import read_dialers_file
from dispatcher.model.errors import ConfigError
from dispatcher.simulator import Simulator, SimulatorState
from tests.support.rates import steady_rate
from tests.support.settings import FAST
from tests.support.waiting import wait_for

PASSWORDS = {"EAST_PASS": "1234", "WEST_PASS": "1234"}


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def dialers_toml(east: str, west: str, *, east_rate: float = 0, west_rate: float = 0) -> str:
    return f"""
default = "east"

[dialers.east]
url = "{east}"
user = "6666"
pass_env = "EAST_PASS"
rate_limit = {east_rate}

[dialers.west]
url = "{west}"
user = "6666"
pass_env = "WEST_PASS"
rate_limit = {west_rate}
"""


@pytest.fixture
def two_sims() -> Iterator[tuple[Simulator, Simulator]]:
    with Simulator(SimulatorState.demo()) as east, Simulator(SimulatorState.demo()) as west:
        yield east, west


@pytest.fixture(autouse=True)
def passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PASSWORDS.items():
        monkeypatch.setenv(name, value)


def two_dialer_settings(
    redis_url: str, tmp_path: Path, sims: tuple[Simulator, Simulator], **overrides: Any
) -> Settings:
    rates = {k: overrides.pop(k) for k in ("east_rate", "west_rate") if k in overrides}
    path = _write(tmp_path / "dialers.toml", dialers_toml(sims[0].url, sims[1].url, **rates))
    values: dict[str, Any] = {**FAST, "redis_url": redis_url, "dialers_file": str(path)}
    values.update(overrides)
    return Settings(**values)


def _states(settings: Settings, ids: list[str]) -> list[str | None]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(f"{settings.key_prefix}:job:{job_id}", "state")
        return list(pipe.execute())
    finally:
        client.close()


def _all_added(settings: Settings, ids: list[str], timeout: float, what: str) -> None:
    wait_for(
        lambda: all(s == "added" for s in _states(settings, ids)),
        timeout=timeout,
        interval=0.2,
        message=what,
    )


def _start(start_worker: Callable[..., WorkerProcess], settings: Settings, **kw: Any) -> Any:
    return start_worker(settings, extra_env=PASSWORDS, **kw)


# -- configuration --------------------------------------------------------------------------


def test_bad_dialers_files_name_the_file_the_dialer_and_the_key(tmp_path: Path) -> None:
    env = {"EAST_PASS": "x"}
    defaults = Settings()

    def problem(text: str, mode: int = 0o644) -> str:
        path = _write(tmp_path / "d.toml", text, mode)
        with pytest.raises(ConfigError) as caught:
            read_dialers_file(path, environ=env, defaults=defaults)
        message = str(caught.value)
        assert str(path) in message
        return message

    good = '[dialers.east]\nurl = "http://e/agc/api.php"\nuser = "6666"\npass_env = "EAST_PASS"\n'
    assert "not valid TOML" in problem("[dialers.east\n")
    assert "dialers.east.url: required" in problem('[dialers.east]\nuser = "6666"\n')
    assert "dialers.east.url: must be the full http(s) URL" in problem(
        good.replace("http://e", "ftp://e")
    )
    assert "the variable NOPE is not set" in problem(good.replace("EAST_PASS", "NOPE"))
    assert "dialers.east.colour: unknown key" in problem(good + 'colour = "blue"\n')
    assert "dialers.east.rate_limit: must be a number >= 0" in problem(good + "rate_limit = -1\n")
    assert "a dialer name is 1-32" in problem(good.replace("dialers.east", 'dialers."e st"'))
    assert "default: 'west' is not one of the dialers" in problem('default = "west"\n' + good)
    in_file = good.replace('pass_env = "EAST_PASS"', 'pass = "secret"')
    assert "other users can read" in problem(in_file, 0o644)
    path = _write(tmp_path / "private.toml", in_file, 0o600)
    [east] = read_dialers_file(path, environ=env, defaults=defaults)
    assert east.password == "secret" and "secret" not in repr(east)


def test_unknown_dialers_and_priorities_are_invalid_leads_and_nothing_is_enqueued(
    redis_url: str, tmp_path: Path, two_sims: tuple[Simulator, Simulator]
) -> None:
    settings = two_dialer_settings(redis_url, tmp_path, two_sims)
    with pytest.raises(InvalidLead) as caught:
        enqueue_leads(
            [
                {"agent_user": "1000", "phone_number": "7275551212", "dialer": "west"},
                {"agent_user": "1000", "phone_number": "7275551213", "dialer": "north"},
                {"agent_user": "1000", "phone_number": "7275551214", "priority": "urgent"},
            ],
            settings=settings,
        )
    fields = {(e.index, e.field) for e in caught.value.errors}
    assert fields == {(1, "dialer"), (2, "priority")}
    assert "north" in str(caught.value) and "east, west" in str(caught.value)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")},
        **settings_env(settings),
        "DISPATCHER_ENV_FILE": "/nonexistent",
    }
    command = [sys.executable, "-m", "dispatcher.cli", "enqueue", "--agent-user", "1000"]
    cli = subprocess.run(
        [*command, "--phone", "7275551212", "--dialer", "north"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 2 and "dialer: unknown dialer 'north'" in cli.stderr
    bad_file = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "status"],
        env={**env, "DISPATCHER_DIALERS_FILE": str(tmp_path / "missing.toml")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_file.returncode == 2 and "missing.toml" in bad_file.stderr
    assert "Traceback" not in bad_file.stderr + cli.stderr
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "dispatcher.cli", "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    )
    assert status["queued"] == 0
    assert set(status["dialers"]) == {"east", "west"}


# -- isolation, order, rate -----------------------------------------------------------------


@pytest.mark.slow
def test_a_dialer_down_never_delays_the_other(
    redis_url: str,
    tmp_path: Path,
    two_sims: tuple[Simulator, Simulator],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    east, west = two_sims
    settings = two_dialer_settings(redis_url, tmp_path, two_sims, retry_cap_s=1.0)
    west.stop()  # the west dialer is down: connections refused
    _start(start_worker, settings, concurrency=8)
    leads = []
    for i in range(300):
        leads.append({"agent_user": "1000", "phone_number": f"72755{i:05d}", "dialer": "east"})
        leads.append({"agent_user": "1000", "phone_number": f"72756{i:05d}", "dialer": "west"})
    ids = enqueue_leads(leads, settings=settings)
    east_ids, west_ids = ids[0::2], ids[1::2]
    started = time.monotonic()
    _all_added(settings, east_ids, 60, "every east lead while west is down")
    east_s = time.monotonic() - started
    west_states = _states(settings, west_ids)
    assert "added" not in west_states
    assert all(s in ("queued", "retrying", "running") for s in west_states), set(west_states)
    west.start()
    _all_added(settings, west_ids, 60, "every west lead once west is back")
    assert east.count_by_phone() == {f"72755{i:05d}": 1 for i in range(300)}
    assert west.count_by_phone() == {f"72756{i:05d}": 1 for i in range(300)}
    print(f"300 east leads in {east_s:.1f} s with west down")


@pytest.mark.slow
def test_realtime_leads_overtake_a_bulk_backlog(
    redis_url: str,
    tmp_path: Path,
    two_sims: tuple[Simulator, Simulator],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    east, _ = two_sims
    settings = two_dialer_settings(redis_url, tmp_path, two_sims)
    east.set_latency(2)
    bulk = [
        {"agent_user": "1000", "phone_number": f"72770{i:05d}", "dialer": "east"}
        for i in range(3000)
    ]
    enqueue_leads(bulk, settings=settings)  # bulk by default
    concurrency = 4
    _start(start_worker, settings, concurrency=concurrency)
    wait_for(lambda: east.call_count >= 200, message="the backlog under way")
    positions = []
    for i in range(10):
        ahead = east.call_count
        enqueue_lead(
            agent_user="1000", phone_number=f"72780{i:05d}", dialer="east", settings=settings
        )  # realtime by default
        positions.append(ahead)
        time.sleep(0.1)
    wait_for(lambda: east.call_count >= 3010, timeout=60, message="everything added")
    order = [r.fields.get("phone_number") for r in east.requests]
    for i, ahead in enumerate(positions):
        at = order.index(f"72780{i:05d}")
        # Taken at once: only the calls already in flight (and popped) come before it.
        assert at <= ahead + 2 * concurrency + 5, (i, at, ahead)
    assert max(east.count_by_phone().values()) == 1


@pytest.mark.slow
def test_each_dialers_rate_limit_holds_while_both_run(
    redis_url: str,
    tmp_path: Path,
    two_sims: tuple[Simulator, Simulator],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    east, west = two_sims
    settings = two_dialer_settings(redis_url, tmp_path, two_sims, east_rate=20, west_rate=10)
    _start(start_worker, settings, concurrency=4, name="r1")
    _start(start_worker, settings, concurrency=4, name="r2")
    leads = [
        {"agent_user": "1000", "phone_number": f"72790{i:05d}", "dialer": "east"} for i in range(80)
    ] + [
        {"agent_user": "1000", "phone_number": f"72791{i:05d}", "dialer": "west"} for i in range(40)
    ]
    ids = enqueue_leads(leads, settings=settings)
    _all_added(settings, ids, 60, "both dialers' leads")
    for sim, limit in ((east, 20), (west, 10)):
        times = sorted(r.at for r in sim.requests)
        rate = steady_rate(times)
        print(f"measured {rate:.2f} calls/s for a limit of {limit}/s")
        assert 0.9 * limit <= rate <= 1.1 * limit, (limit, rate)


@pytest.mark.slow
def test_sigkill_during_a_mixed_run_loses_nothing_and_adds_nothing_twice(
    redis_url: str,
    tmp_path: Path,
    two_sims: tuple[Simulator, Simulator],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    east, west = two_sims
    settings = two_dialer_settings(redis_url, tmp_path, two_sims)
    east.set_latency(15, max_ms=40)
    west.set_latency(15, max_ms=40)
    workers = [
        _start(start_worker, settings, name="m1", concurrency=3),
        _start(start_worker, settings, name="m2", concurrency=3),
    ]
    rng = random.Random(11)
    leads = []
    for i in range(240):
        dialer = "east" if i % 2 else "west"
        priority = "realtime" if i % 3 == 0 else "bulk"
        leads.append(
            {
                "agent_user": "1000",
                "phone_number": f"7279{i:06d}",
                "dialer": dialer,
                "priority": priority,
            }
        )
    ids = enqueue_leads(leads, settings=settings)
    for kill in range(4):
        time.sleep(rng.uniform(0.2, 0.5))
        victim = workers[kill % 2]
        victim.kill()
        victim.start()
    wait_for(
        lambda: all(s in ("added", "dead") for s in _states(settings, ids)),
        timeout=90,
        interval=0.2,
        message="every job final",
    )
    counts = {**east.count_by_phone(), **west.count_by_phone()}
    assert max(counts.values()) == 1
    states = dict(zip(ids, _states(settings, ids), strict=True))
    dead = [job_id for job_id, s in states.items() if s == "dead"]
    for job_id in dead:
        assert (job_status(job_id, settings=settings) or {})["reason"] == "ambiguous"
    # Every lead is in VICIdial once, or (if its worker died mid-call) held as ambiguous.
    assert len(counts) + sum(
        1 for job_id in dead if leads[ids.index(job_id)]["phone_number"] not in counts
    ) == len(leads)
    print(f"mixed run: 4 kills, {len(dead)} ambiguous")


@pytest.mark.slow
def test_redis_restart_during_a_mixed_run_loses_nothing(
    tmp_path: Path,
    two_sims: tuple[Simulator, Simulator],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    east, west = two_sims
    (tmp_path / "aof").mkdir()
    server = RedisServer(tmp_path / "aof", appendonly=True).start()
    try:
        settings = two_dialer_settings(server.url, tmp_path, two_sims)
        east.set_latency(10, max_ms=20)
        west.set_latency(10, max_ms=20)
        _start(start_worker, settings, concurrency=4)
        leads = [
            {
                "agent_user": "1000",
                "phone_number": f"7281{i:06d}",
                "dialer": "east" if i % 2 else "west",
                "priority": "realtime" if i % 4 == 0 else "bulk",
            }
            for i in range(200)
        ]
        ids = enqueue_leads(leads, settings=settings)
        wait_for(lambda: east.call_count + west.call_count >= 40, message="the run under way")
        server.stop()  # SIGTERM; AOF fsync'd on every write
        time.sleep(1.0)
        server.start()
        _all_added(settings, ids, 60, "every lead added after the restart")
        counts = {**east.count_by_phone(), **west.count_by_phone()}
        assert len(counts) == 200 and max(counts.values()) == 1
    finally:
        server.close()


def test_the_job_state_names_its_dialer_and_lane(
    redis_url: str, tmp_path: Path, two_sims: tuple[Simulator, Simulator]
) -> None:
    settings = two_dialer_settings(redis_url, tmp_path, two_sims)
    one = enqueue_lead(agent_user="1000", phone_number="7275551212", settings=settings)
    [two] = enqueue_leads(
        [{"agent_user": "1000", "phone_number": "7275551213", "dialer": "west"}],
        settings=settings,
    )
    first, second = job_status(one, settings=settings), job_status(two, settings=settings)
    assert first is not None and (first["dialer"], first["priority"]) == ("east", "realtime")
    assert second is not None and (second["dialer"], second["priority"]) == ("west", "bulk")


@pytest.mark.slow
def test_a_worker_serves_only_the_dialers_it_is_given(
    redis_url: str,
    tmp_path: Path,
    two_sims: tuple[Simulator, Simulator],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    east, west = two_sims
    settings = two_dialer_settings(redis_url, tmp_path, two_sims)
    _start(start_worker, settings.replace(worker_dialers=("east",)), name="east-only")
    ids = enqueue_leads(
        [
            {"agent_user": "1000", "phone_number": "7275551212", "dialer": "east"},
            {"agent_user": "1000", "phone_number": "7275551213", "dialer": "west"},
        ],
        settings=settings,
    )
    _all_added(settings, ids[:1], 20, "the east lead")
    time.sleep(1.0)
    assert _states(settings, ids[1:]) == ["queued"] and west.call_count == 0
    _start(start_worker, settings.replace(worker_dialers=("west",)), name="west-only")
    _all_added(settings, ids[1:], 20, "the west lead, by a worker serving west")
    assert east.count_by_phone() == {"7275551212": 1}
