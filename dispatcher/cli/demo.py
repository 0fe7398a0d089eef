"""`dispatcher demo`: the whole pipeline on this machine, nothing else to install.

Starts an embedded Redis and the VICIdial simulator in a temporary directory,
a real Celery worker process, enqueues leads that take every path, shows what
happened, "fixes" VICIdial, replays the fixable dead letters, and cleans up
everything it started (also on Ctrl-C).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from dispatcher.config.logs import mask_phone
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.devtools.redis_server import RedisServer
from dispatcher.ops.producer import enqueue_lead, enqueue_leads, job_status
from dispatcher.ops.status import fleet_status
from dispatcher.simulator import Simulator, SimulatorState
from dispatcher.store.backend import get_backend
from dispatcher.store.deadletter import DeadLetterStore

__all__ = ["demo"]

#: The simulator's state for the demo: one API user, agents, campaigns, DNC lists.
DEMO_STATE: dict[str, Any] = {
    "users": {
        "6666": {
            "pass": "1234",
            "api_access": True,
            "functions": ["ALL_FUNCTIONS"],
            "user_group": "ADMIN",
        }
    },
    "agents": {"1000": "TESTCAMP", "1003": "GHOST"},
    "campaigns": {"TESTCAMP": {"manual_dial_list_id": "101"}},
    # The list web-form leads go to (add_lead), in campaign TESTCAMP, dialable all day.
    "lists": {"104": {"campaign_id": "TESTCAMP", "local_call_time": "24hours"}},
    "dnc": ["7275550000"],
    "campaign_dnc": {"TESTCAMP": ["7275550001"]},
    "api_active": True,
}

#: (what it shows, agent_user, phone, extra fields)
DEMO_LEADS: list[tuple[str, str, str, dict[str, str]]] = [
    ("added", "1000", "(727) 555-1212", {"first_name": "Bob", "last_name": "Smith"}),
    ("system DNC", "1000", "7275550000", {"first_name": "Dana"}),
    ("campaign DNC", "1000", "7275550001", {"first_name": "Carl"}),
    ("manual list undefined", "1003", "7275551300", {"first_name": "Gus"}),
    ("503 twice, then added", "1000", "7275551301", {"first_name": "Tess"}),
    ("agent logs in late", "1005", "7275551302", {"first_name": "Lou"}),
]


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so that cleanup runs either way."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@click.command(
    help="""Run the whole pipeline on this machine and show every path a lead can take.

\b
Starts, in a temporary directory: an embedded Redis, the VICIdial simulator,
and a real worker (celery -A workers worker). Enqueues six leads: one added,
one on the system DNC list, one on the campaign DNC list, one for an agent
whose campaign has no manual dial list, one that meets two HTTP 503s and
recovers, one whose agent logs in late. Prints what happened and the dead
letters, fixes the campaign in the simulator, replays that dead letter and
shows it added once. Then leads for a list (add_lead): a web-form lead with a
duplicate check (DUPLIST) and the hopper, the same lead again (refused by
VICIdial's duplicate check: duplicate, naming the first), and one with a
scheduled callback. Then two dialers (a second simulator, down): a bulk import
on the first, a web-form lead that overtakes it, the second's jobs waiting
until it comes back. Everything it started is stopped on exit, also on Ctrl-C."""
)
@click.option(
    "--keep-logs",
    type=click.Path(file_okay=False, path_type=Path),
    help="Copy the worker's JSON log to this directory before cleaning up.",
)
def demo(keep_logs: Path | None) -> None:
    console = Console()
    err = Console(stderr=True)
    workdir = tempfile.TemporaryDirectory(prefix="dispatcher-demo-")
    redis_server = RedisServer(Path(workdir.name) / "redis", appendonly=True)
    (Path(workdir.name) / "redis").mkdir()
    simulator = Simulator(SimulatorState.from_dict(DEMO_STATE))
    worker: WorkerProcess | None = None
    code = 0
    try:
        with _interruptible():
            err.print("[dim]starting Redis, the VICIdial simulator and a worker...[/]")
            redis_server.start()
            simulator.start()
            settings = Settings(
                redis_url=redis_server.url,
                vicidial_url=simulator.url,
                vicidial_user="6666",
                vicidial_pass="1234",
                retry_base_s=0.2,
                retry_cap_s=1.0,
                agent_wait_s=20.0,
                http_timeout_s=2.0,
                visibility_timeout_s=30.0,
                scheduler_interval_s=0.1,
                log_format="json",
            )
            worker = WorkerProcess(settings, Path(workdir.name) / "worker.log", name="demo")
            worker.start()
            simulator.script_phone("7275551301", ["http_503", "http_503"])
            jobs: list[tuple[str, str, str, str]] = []
            for what, agent, phone, fields in DEMO_LEADS:
                job_id = enqueue_lead(
                    agent_user=agent, phone_number=phone, settings=settings, **fields
                )
                jobs.append((what, agent, phone, job_id))
            err.print(f"[dim]enqueued {len(jobs)} leads; agent 1005 logs in in 2 s...[/]")
            time.sleep(2.0)
            simulator.login("1005", "TESTCAMP")

            def finished() -> bool:
                states = [job_status(j, settings=settings) for *_, j in jobs]
                return all(s and s["state"] in ("added", "dead") for s in states)

            if not _wait(finished, 60):
                err.print("[red]some leads did not finish within 60 s[/]")
                code = 1
            _show_jobs(console, jobs, settings, "What happened")
            store = DeadLetterStore(settings=settings)
            _show_dead_letters(console, store)

            console.print(
                "\n[bold]Fixing VICIdial:[/] campaign GHOST gets manual dial list 102, "
                "then `dispatcher dlq replay --reason manual_list_undefined`"
            )
            simulator.set_manual_dial_list("GHOST", "102")
            replayed = [
                store.replay(letter) for letter in store.iter(reason="manual_list_undefined")
            ]
            console.print(f"replayed: {replayed.count('replayed')}")
            ghost = [j for j in jobs if j[1] == "1003"]
            if not _wait(
                lambda: all(
                    (job_status(j[3], settings=settings) or {}).get("state") == "added"
                    for j in ghost
                ),
                30,
            ):
                code = 1
            _show_jobs(console, ghost, settings, "After the fix and replay")
            counts = simulator.count_by_phone()
            console.print(
                "leads in VICIdial (simulator), count per phone: "
                + ", ".join(f"{mask_phone(p)}={n}" for p, n in sorted(counts.items()))
            )
            duplicates = {p: n for p, n in counts.items() if n > 1}
            console.print("duplicates: " + (str(duplicates) if duplicates else "none"))
            console.print("\n[bold]A few of the worker's structured log events:[/]")
            for event in worker.logs():
                if event.get("event", "").startswith(("lead.retry", "lead.dead", "lead.added")):
                    console.print(_short_event(event), highlight=False, soft_wrap=True)
                    if event.get("event") == "lead.added" and event.get("attempt", 1) > 1:
                        break
            code = _lists(console, err, settings, simulator) or code
            if keep_logs is not None:
                keep_logs.mkdir(parents=True, exist_ok=True)
                (keep_logs / "worker.log").write_bytes(worker.log_path.read_bytes())
            worker.stop(timeout=15)
            worker = None
            worker, code2 = _two_dialers(console, err, settings, simulator, Path(workdir.name))
            code = code or code2
    except KeyboardInterrupt:
        err.print("\n[yellow]interrupted: cleaning up[/]")
        code = 130
    finally:
        if worker is not None:
            worker.stop(timeout=15)
        if _WEST:
            _WEST.pop().stop()
        simulator.stop()
        redis_server.close()
        workdir.cleanup()
        err.print(f"[dim]stopped the worker, the simulator and Redis; removed {workdir.name}[/]")
    sys.exit(code)


#: (what it shows, phone, fields of the lead for list 104)
LIST_LEADS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "web form, DUPLIST, hopper",
        "(727) 555-1400",
        {"first_name": "Ann", "duplicate_check": "DUPLIST", "add_to_hopper": True},
    ),
    (
        "the same lead again",
        "727-555-1400",
        {"first_name": "Ann", "duplicate_check": "DUPLIST", "add_to_hopper": True},
    ),
    (
        "a callback in 1 day",
        "7275551401",
        {
            "first_name": "Joe",
            "callback": {"datetime": "1DAYS", "type": "USERONLY", "user": "6666"},
        },
    ),
]


def _lists(console: Console, err: Console, settings: Settings, simulator: Simulator) -> int:
    """Leads for a list: added, a duplicate VICIdial's duplicate check refused, a callback."""
    console.print(
        "\n[bold]Leads for a list[/] (VICIdial's add_lead: list 104, campaign TESTCAMP), "
        "one after the other, as a web form sends them:"
    )
    jobs: list[tuple[str, str, str]] = []
    for what, phone, fields in LIST_LEADS:
        job_id = enqueue_lead(
            list_id="104", campaign_id="TESTCAMP", phone_number=phone, settings=settings, **fields
        )
        jobs.append((what, phone, job_id))
        if not _wait(
            lambda job_id=job_id: (
                (job_status(job_id, settings=settings) or {}).get("state")
                in ("added", "duplicate", "dead")
            ),
            30,
        ):
            err.print(f"[red]{what}: not finished within 30 s[/]")
            return 1
    table = Table(title="Leads for list 104")
    for column in ("path", "phone", "state", "lead_id", "hopper / callback"):
        table.add_column(column)
    for what, phone, job_id in jobs:
        status = job_status(job_id, settings=settings) or {}
        state = status.get("state", "?")
        if state == "duplicate":
            lead = f"existing {status.get('existing_lead_id')} ({status.get('duplicate_check')})"
        else:
            lead = str(status.get("lead_id") or status.get("reason") or "")
        done = ", ".join(f"{k}: {status[k]}" for k in ("hopper", "callback") if status.get(k))
        style = {"added": "green", "duplicate": "yellow"}.get(state, "red")
        table.add_row(what, phone, f"[{style}]{state}[/]", lead, done)
    console.print(table)
    rows = simulator.leads_in_list(104)
    callbacks = [c for c in simulator.callbacks if c.list_id == "104"]
    console.print(
        f"list 104 in VICIdial (simulator): {len(rows)} leads, "
        f"{len({r.phone_number for r in rows})} phones, "
        f"{len(callbacks)} scheduled callback (lead status "
        f"{', '.join(sorted({r.status for r in rows}))}); the duplicate was never added."
    )
    states = [(job_status(j, settings=settings) or {}).get("state") for *_, j in jobs]
    return 0 if states == ["added", "duplicate", "added"] and len(rows) == 2 else 1


#: The demo's second simulator, while it exists (stopped in demo's cleanup).
_WEST: list[Any] = []
_BACKLOG = 400


def _two_dialers(
    console: Console, err: Console, base: Settings, east: Any, workdir: Path
) -> tuple[WorkerProcess, int]:
    """Part two: two dialers (west is down), and a realtime lead overtaking a bulk backlog."""
    console.print(
        "\n[bold]Two dialers.[/] A dialers file names two VICIdial servers, east and west; "
        "west is down. East gets a bulk import of "
        f"{_BACKLOG} leads, then one web-form lead (realtime)."
    )
    west = Simulator(SimulatorState.from_dict(DEMO_STATE))
    _WEST.append(west)
    west.start()
    west_url = west.url
    west.stop()  # down: connections refused
    path = workdir / "dialers.toml"
    path.write_text(
        'default = "east"\n\n'
        f'[dialers.east]\nurl = "{east.url}"\nuser = "6666"\npass_env = "EAST_PASS"\n\n'
        f'[dialers.west]\nurl = "{west_url}"\nuser = "6666"\npass_env = "WEST_PASS"\n'
    )
    passwords = {"EAST_PASS": "1234", "WEST_PASS": "1234"}
    os.environ.update(passwords)
    settings = base.replace(
        dialers_file=str(path), vicidial_url=None, vicidial_user=None, vicidial_pass=None
    )
    east.reset_leads()
    east.set_latency(10)
    code = 0
    backlog = enqueue_leads(
        [
            {"agent_user": "1000", "phone_number": f"82000{i:05d}", "dialer": "east"}
            for i in range(_BACKLOG)
        ],
        settings=settings,
    )
    west_ids = enqueue_leads(
        [
            {"agent_user": "1000", "phone_number": f"83000{i:05d}", "dialer": "west"}
            for i in range(20)
        ],
        settings=settings,
    )
    worker = WorkerProcess(
        settings, workdir / "worker2.log", name="demo2", concurrency=4, extra_env=passwords
    )
    worker.start()
    _wait(lambda: east.call_count >= 50, 30)
    ahead = east.call_count
    realtime = enqueue_lead(
        agent_user="1000", phone_number="8100000001", dialer="east", settings=settings
    )
    _wait(lambda: (job_status(realtime, settings=settings) or {}).get("state") == "added", 30)
    order = [r.fields.get("phone_number") for r in east.requests]
    at = order.index("8100000001") if "8100000001" in order else -1
    console.print(
        f"the web-form lead was enqueued after {ahead} calls of the import and sent as call "
        f"#{at + 1}: it overtook the {_BACKLOG - at} bulk leads still waiting."
    )
    status = fleet_status(get_backend(settings))
    table = Table(title="dispatcher status: dialers")
    for column in ("dialer", "realtime", "bulk", "paused"):
        table.add_column(column)
    for name, d in status["dialers"].items():
        table.add_row(
            name,
            str(d["queued"]["realtime"]),
            str(d["queued"]["bulk"]),
            "PAUSED" if d["paused"] else "no",
        )
    console.print(table)
    if not _wait(
        lambda: all(
            (job_status(j, settings=settings) or {}).get("state") == "added" for j in backlog
        ),
        60,
    ):
        err.print("[red]east's import did not finish within 60 s[/]")
        code = 1
    console.print(
        f"east added all {_BACKLOG} while west was down: west's jobs waited in Redis "
        "without holding a worker thread."
    )
    console.print("[bold]West comes back.[/]")
    west.start()
    if not _wait(
        lambda: all(
            (job_status(j, settings=settings) or {}).get("state") == "added" for j in west_ids
        ),
        60,
    ):
        err.print("[red]west's leads did not finish within 60 s[/]")
        code = 1
    counts = west.count_by_phone()
    console.print(
        f"west added {len(counts)} of 20; duplicates: "
        + ("none" if all(n == 1 for n in counts.values()) else str(counts))
    )
    return worker, code


def _short_event(event: dict[str, Any]) -> str:
    keep = (
        "timestamp",
        "level",
        "event",
        "job_id",
        "agent_user",
        "phone",
        "attempt",
        "reason",
        "lead_id",
        "delay_s",
        "http_status",
    )
    return json.dumps({k: event[k] for k in keep if k in event})


def _show_jobs(
    console: Console, jobs: list[tuple[str, str, str, str]], settings: Settings, title: str
) -> None:
    table = Table(title=title)
    for column in ("path", "agent", "phone", "state", "attempts", "lead_id / reason"):
        table.add_column(column)
    for what, agent, phone, job_id in jobs:
        status = job_status(job_id, settings=settings) or {}
        state = status.get("state", "?")
        detail = status.get("lead_id") if state == "added" else status.get("reason")
        style = "green" if state == "added" else "red" if state == "dead" else "yellow"
        table.add_row(
            what,
            agent,
            phone,
            f"[{style}]{state}[/]",
            str(status.get("attempts")),
            str(detail or ""),
        )
    console.print(table)


def _show_dead_letters(console: Console, store: DeadLetterStore) -> None:
    table = Table(title="Dead letters")
    for column in ("job id", "reason", "attempts", "VICIdial's answer"):
        table.add_column(column, overflow="fold")
    for letter in store.iter():
        table.add_row(letter.id[:12] + "…", letter.reason, str(letter.attempts), letter.error)
    console.print(table)
