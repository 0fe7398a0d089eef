"""The operator's command line end to end: real dead letters, real replays, real crashes.

A real ``celery -A workers worker`` process calls the VICIdial simulator; dead
letters are made for real (agent 1003's campaign GHOST has no campaign row, so
VICIdial answers "manual dial list undefined"; numbers on the DNC lists are
refused). Then the operator "fixes VICIdial" in the simulator and replays with
the installed ``dispatcher`` command as a subprocess -- also SIGKILLed half-way
-- and the simulator's own table proves every lead was added exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dispatcher import job_status
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.ops.producer import prepare_job
from dispatcher.simulator import Simulator
from dispatcher.store.deadletter import DeadLetterStore
from tests.support.cli import (
    LETTER_KEYS,
    STATUS_KEYS,
    check,
    cli_env,
    json_lines,
    run_cli,
    run_many,
    snapshot,
    start_cli,
)
from tests.support.queues import queue_length
from tests.support.settings import make_settings
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

GHOST_AGENT = "1003"


def _states(job_ids: list[str], settings: Settings) -> list[str | None]:
    return [(job_status(j, settings=settings) or {}).get("state") for j in job_ids]


def _wait_states(job_ids: list[str], settings: Settings, state: str, timeout: float = 20) -> None:
    wait_for(
        lambda: all(s == state for s in _states(job_ids, settings)),
        timeout=timeout,
        message=f"{len(job_ids)} jobs to be {state}",
    )


def _calls_for(sim: Simulator, phone: str) -> int:
    return sum(1 for r in sim.requests if r.fields.get("phone_number") == phone)


def _ghost_file(path: Path, phones: list[str]) -> Path:
    """A CSV of leads for agent 1003, with a vendor id column for idempotent imports."""
    path.write_text(
        "agent_user,phone_number,first_name,ext_id\n"
        + "".join(f"{GHOST_AGENT},{p},Lead{n},X{p}\n" for n, p in enumerate(phones))
    )
    return path


def _import(settings: Settings, path: Path) -> list[str]:
    result = run_cli(
        settings, "enqueue", "--file", str(path), "--idempotency-column", "ext_id", "--print-ids"
    )
    check(result)
    return result.stdout.split()


@pytest.fixture
def worker(settings: Settings, start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start_worker(settings)


def test_replay_after_the_fix_adds_each_lead_exactly_once(
    settings: Settings, simulator: Simulator, worker: WorkerProcess, tmp_path: Path
) -> None:
    phones = [f"72755530{n:02d}" for n in range(6)]
    leads = _ghost_file(tmp_path / "ghost.csv", phones)
    ids = _import(settings, leads)
    assert len(ids) == 6
    _wait_states(ids, settings, "dead")
    assert simulator.leads == []

    listed = run_cli(settings, "dlq", "list", "--json", "--reason", "manual_list_undefined")
    check(listed)
    records = json.loads(listed.stdout)
    assert sorted(r["id"] for r in records) == sorted(ids)
    for record in records:
        assert set(record) == LETTER_KEYS
        assert record["reason"] == "manual_list_undefined" and record["attempts"] == 1
        assert record["error"].startswith("ERROR: campaign manual dial list undefined")
        assert (
            record["job"]["idempotency_key"] == f"ext_id:X{record['job']['lead']['phone_number']}"
        )
    status = json.loads(run_cli(settings, "status", "--json").stdout)
    assert set(status) >= STATUS_KEYS
    assert status["dead_letters"] == {"manual_list_undefined": 6}
    assert status["oldest_dead_letter_age_s"] is not None
    assert any(w.startswith("w1@") for w in status["workers"])

    # Dry run and a refused confirmation: nothing changes, nothing is sent.
    before = snapshot(settings)
    calls = simulator.call_count
    dry = run_cli(settings, "dlq", "replay", "--reason", "manual_list_undefined", "--dry-run")
    check(dry)
    assert sorted(line.split()[2] for line in dry.stdout.splitlines()) == sorted(ids)
    refused = run_cli(settings, "dlq", "replay", "--all", input="n\n")
    check(refused, 1)
    assert "Replay 6 dead letter(s)?" in refused.stderr
    time.sleep(0.3)  # a worker would have picked up anything enqueued by now
    assert snapshot(settings) == before and simulator.call_count == calls

    simulator.set_manual_dial_list("GHOST", "102")
    replay = run_cli(
        settings, "dlq", "replay", "--reason", "manual_list_undefined", "--yes", "--json"
    )
    check(replay)
    assert json.loads(replay.stdout)["replayed"] == 6
    _wait_states(ids, settings, "added")
    assert simulator.count_by_phone() == {p: 1 for p in phones}
    lead_ids = {str(lead.lead_id) for lead in simulator.leads}
    for result in run_many(settings, [["job", job_id, "--json"] for job_id in ids]):
        job = json.loads(result.stdout)
        assert job["state"] == "added" and job["attempts"] == 1  # the count was reset
        assert job["lead_id"] in lead_ids and job["list_id"] == "102"
        assert job["campaign"] == "GHOST" and job["reason"] is None
    assert json.loads(run_cli(settings, "dlq", "list", "--json").stdout) == []

    # Replaying again (everything, or by id) and importing the file again add nothing.
    again = run_cli(settings, "dlq", "replay", "--all", "--yes")
    check(again)
    assert "no dead letters match" in again.stderr
    check(run_cli(settings, "dlq", "replay", *ids[:3], "--yes"))
    assert _import(settings, leads) == ids
    time.sleep(0.5)
    assert simulator.count_by_phone() == {p: 1 for p in phones}
    assert all(_calls_for(simulator, p) == 2 for p in phones)  # the failure, the success
    assert queue_length(settings) == 0


def test_replay_keeps_key_and_dnc_flags_resets_attempts_and_counts_replays(
    settings: Settings, simulator: Simulator, worker: WorkerProcess
) -> None:
    enqueue = [
        "enqueue",
        "--agent-user",
        GHOST_AGENT,
        "--phone",
        "727-555-3100",
        "--field",
        "first_name=Ann",
        "--no-campaign-dnc-check",
        "--idempotency-key",
        "crm-77",
    ]
    first = run_cli(settings, *enqueue)
    check(first)
    job_id = first.stdout.strip()
    _wait_states([job_id], settings, "dead")
    shown = json.loads(run_cli(settings, "dlq", "show", job_id, "--json").stdout)
    assert shown["replays"] == 0 and shown["attempts"] == 1

    # Replayed before the fix: it fails again, and the letter says it was replayed once.
    check(run_cli(settings, "dlq", "replay", job_id, "--yes"))
    store = DeadLetterStore(settings=settings)
    wait_for(lambda: (store.get(job_id) or shown).replays == 1, message="second dead letter")
    letter = json.loads(run_cli(settings, "dlq", "show", job_id, "--json").stdout)
    assert letter["id"] == job_id and letter["replays"] == 1
    assert letter["attempts"] == 1  # a fresh attempt count, not 2
    job = letter["job"]
    assert job["job_id"] == job_id and job["idempotency_key"] == "crm-77"
    assert job["dnc_check"] is True and job["campaign_dnc_check"] is False
    assert job["lead"] == {
        "agent_user": GHOST_AGENT,
        "phone_number": "7275553100",
        "phone_code": "1",
        "first_name": "Ann",
    }
    calls = [r for r in simulator.requests if r.fields.get("phone_number") == "7275553100"]
    assert len(calls) == 2
    for call in calls:  # the flags travelled with the replayed job
        assert call.fields.get("dnc_check") == "YES" and "campaign_dnc_check" not in call.fields

    simulator.set_manual_dial_list("GHOST", "102")
    check(run_cli(settings, "dlq", "replay", "--all", "--yes"))
    _wait_states([job_id], settings, "added")
    assert simulator.count_by_phone() == {"7275553100": 1}
    # The same idempotency key again: the first job's id, nothing added.
    assert run_cli(settings, *enqueue).stdout.strip() == job_id
    time.sleep(0.3)
    assert simulator.count_by_phone() == {"7275553100": 1}


def test_dnc_letters_are_replayed_only_with_include_dnc(
    settings: Settings, simulator: Simulator, worker: WorkerProcess
) -> None:
    def enqueue(agent: str, phone: str) -> str:
        result = run_cli(settings, "enqueue", "--agent-user", agent, "--phone", phone)
        check(result)
        return result.stdout.strip()

    dnc = enqueue("1000", "7275550000")
    campaign_dnc = enqueue("1000", "7275550001")
    ghost = enqueue(GHOST_AGENT, "7275553200")
    _wait_states([dnc, campaign_dnc, ghost], settings, "dead")
    store = DeadLetterStore(settings=settings)
    assert store.counts() == {"dnc": 1, "campaign_dnc": 1, "manual_list_undefined": 1}

    by_reason = run_cli(settings, "dlq", "replay", "--reason", "dnc", "--yes")
    check(by_reason, 2)
    assert "DNC list" in by_reason.stderr and "--include-dnc" in by_reason.stderr
    by_id = run_cli(settings, "dlq", "replay", dnc, campaign_dnc, "--yes")
    check(by_id, 0)
    assert "2 DNC letter(s) left alone" in by_id.stderr and "--include-dnc" in by_id.stderr
    assert "no dead letters match" in by_id.stderr
    assert store.get(dnc) is not None and store.get(campaign_dnc) is not None

    simulator.set_manual_dial_list("GHOST", "102")
    everything = run_cli(settings, "dlq", "replay", "--all", "--yes", "--json")
    check(everything)
    summary = json.loads(everything.stdout)
    assert summary["replayed"] == 1 and summary["skipped_dnc"] == 2
    assert "Remove the number from the list in VICIdial first" in everything.stderr
    _wait_states([ghost], settings, "added")
    assert store.counts() == {"dnc": 1, "campaign_dnc": 1}

    # Once the number is off the list, the operator replays it on purpose.
    simulator.remove_dnc("7275550000")
    allowed = run_cli(settings, "dlq", "replay", "--reason", "dnc", "--include-dnc", "--yes")
    check(allowed)
    _wait_states([dnc], settings, "added")
    assert simulator.count_by_phone() == {"7275553200": 1, "7275550000": 1}
    last = [r for r in simulator.requests if r.fields.get("phone_number") == "7275550000"][-1]
    assert last.fields.get("dnc_check") == "YES"  # the check was not dropped by the replay
    assert store.counts() == {"campaign_dnc": 1}


def test_replay_killed_half_way_loses_nothing_and_adds_nothing_twice(
    settings: Settings, simulator: Simulator, worker: WorkerProcess, tmp_path: Path
) -> None:
    phones = [f"72755540{n:02d}" for n in range(40)]
    ids = _import(settings, _ghost_file(tmp_path / "ghost.csv", phones))
    store = DeadLetterStore(settings=settings)
    wait_for(lambda: len(store) == 40, message="40 dead letters")
    simulator.set_manual_dial_list("GHOST", "102")

    started = time.monotonic()
    replay = start_cli(settings, "dlq", "replay", "--all", "--yes", "--rate", "10")
    try:
        wait_for(lambda: len(store) <= 27, timeout=15, interval=0.01, message="a third replayed")
        # --rate 10: the 13th re-enqueue cannot come before 1.2 s.
        assert time.monotonic() - started >= 1.2
        replay.send_signal(signal.SIGKILL)
        replay.wait(timeout=10)
    finally:
        replay.kill()
        replay.communicate(timeout=10)
    assert replay.returncode == -signal.SIGKILL
    left = len(store)
    assert 0 < left < 40, "killed half-way"
    # Every job is either still a dead letter or back in the pipeline -- never both, never none.
    for job_id in ids:
        state = (job_status(job_id, settings=settings) or {}).get("state")
        assert (store.get(job_id) is not None) == (state == "dead"), (job_id, state)
        assert state in ("dead", "queued", "running", "added")

    second = run_cli(settings, "dlq", "replay", "--all", "--yes", "--json")
    check(second)
    assert json.loads(second.stdout)["replayed"] == left
    _wait_states(ids, settings, "added")
    third = run_cli(settings, "dlq", "replay", "--all", "--yes")
    check(third)
    assert "no dead letters match" in third.stderr
    time.sleep(0.3)
    assert simulator.count_by_phone() == {p: 1 for p in phones}
    assert len(simulator.leads) == 40
    assert all(_calls_for(simulator, p) == 2 for p in phones)
    assert len(store) == 0 and queue_length(settings) == 0


def test_export_of_real_dead_letters_then_purge(
    settings: Settings, simulator: Simulator, worker: WorkerProcess, tmp_path: Path
) -> None:
    phones = [f"72755550{n:02d}" for n in range(5)]
    ids = _import(settings, _ghost_file(tmp_path / "ghost.csv", phones))
    _wait_states(ids, settings, "dead")
    exported = run_cli(settings, "dlq", "export")
    check(exported)
    records = json_lines(exported.stdout)
    assert sorted(r["id"] for r in records) == sorted(ids)
    assert all(set(r) == LETTER_KEYS for r in records)
    assert sorted(r["job"]["lead"]["phone_number"] for r in records) == phones
    # Nothing is that old yet; everything goes with --all.
    young = run_cli(settings, "dlq", "purge", "--older-than", "1h", "--yes")
    check(young)
    assert "no dead letters match" in young.stderr
    check(run_cli(settings, "dlq", "purge", "--all", "--yes"))
    assert json.loads(run_cli(settings, "status", "--json").stdout)["dead_letters"] == {}


# ------------------------------------------------------------------------- memory


def _peak_rss_kib(settings: Settings, *args: str) -> int:
    """Run the command in a fresh interpreter; its peak RSS (VmHWM) at exit."""
    code = (
        "import atexit, sys\n"
        "def peak():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM'):\n"
        "            sys.stderr.write('VMHWM ' + line.split()[1] + '\\n')\n"
        "atexit.register(peak)\n"
        "from dispatcher.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=cli_env(settings),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    [line] = [x for x in result.stderr.splitlines() if x.startswith("VMHWM ")]
    return int(line.split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_list_export_and_replay_stream_in_flat_memory(redis_url: str) -> None:
    settings = make_settings(redis_url)
    store = DeadLetterStore(settings=settings)
    now = time.time()
    big = {  # about 1.5 kB of JSON a record, fields at VICIdial's column sizes
        "comments": "x" * 255,
        "address1": "a" * 100,
        "address2": "b" * 100,
        "address3": "c" * 100,
        "security_phrase": "d" * 100,
        "city": "e" * 50,
        "province": "f" * 50,
    }
    template = prepare_job(
        {"agent_user": GHOST_AGENT, "phone_number": "7275551000", **big}, settings=settings
    ).to_message()
    count = 3000
    for n in range(count):
        job: dict[str, Any] = dict(template, job_id=f"{n:032x}")
        job["lead"] = dict(template["lead"], phone_number=f"72756{n:05d}")
        store.record(
            job=job,
            reason="manual_list_undefined",
            error="ERROR: campaign manual dial list undefined - " + "y" * 100,
            http_status=200,
            attempts=1,
            first_failed_at=now - n,
            now=now - n,
        )
    # One page (500 letters) is read whatever the command: the baseline.
    baseline = _peak_rss_kib(settings, "dlq", "list", "--json", "--limit", "1")
    allowance = 8 * 1024  # KiB; holding 3000 such records costs several times this
    for args in (
        ("dlq", "export"),
        ("dlq", "list", "--json", "--limit", str(count)),
        ("dlq", "replay", "--all", "--yes"),
    ):
        assert _peak_rss_kib(settings, *args) - baseline < allowance, args
    assert len(store) == 0 and queue_length(settings) == count


# ------------------------------------------------------------------------- demo


def _processes_with(marker: str) -> list[str]:
    """Live processes whose environment carries ``marker`` (the demo's descendants)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker.encode() in environ:
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_demo_exits_0_and_leaves_nothing_behind(tmp_path: Path) -> None:
    marker = f"DISPATCHER_DEMO_TEST_{os.getpid()}_{time.monotonic_ns()}"
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = cli_env(None, TMPDIR=str(temp), DEMO_TEST_MARKER=marker)
    result = run_cli(None, "demo", env=env, timeout=120)
    check(result, 0)
    assert "duplicates: none" in result.stdout
    assert "replayed: 1" in result.stdout
    # Leads for a list: a web-form lead added, its duplicate refused, a callback.
    assert "the duplicate was never added" in " ".join(result.stdout.split())
    assert "1 scheduled callback" in " ".join(result.stdout.split())
    assert list(temp.iterdir()) == []  # the demo's temporary directory is gone
    deadline = time.monotonic() + 3
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(marker) == []  # no redis-server, no celery worker left
