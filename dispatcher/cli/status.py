"""`dispatcher job` and `dispatcher status`."""

from __future__ import annotations

import socket

import click
from rich.console import Console
from rich.table import Table

from dispatcher.cli.common import CliContext, echo_json, fail, guarded
from dispatcher.cli.reconcile import live_check, lookup_lines
from dispatcher.ops.producer import job_status
from dispatcher.ops.status import fleet_status
from dispatcher.store.connection import broker_errors, broker_transport_options
from dispatcher.store.layout import LAYOUT_VERSION, read_layout

__all__ = ["health", "job", "status"]


@click.command(
    help="""Show one job: where its lead goes (target: an agent, or a list), and its
state: queued, running, retrying (next attempt time), added (lead_id, list_id,
campaign), duplicate (a list's lead VICIdial's duplicate check found:
existing_lead_id) or dead (reason). Exit 1 if the id is unknown (or its state
expired, after DISPATCHER_JOB_TTL_S)."""
)
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON (stable keys).")
@click.pass_obj
@guarded
def job(obj: CliContext, job_id: str, as_json: bool) -> None:
    data = job_status(job_id, settings=obj.backend.settings)  # obj.backend: layout checked
    if data is None:
        fail(f"no job {job_id!r} (unknown id, or its state expired)", code=1)
    if as_json:
        echo_json(data)
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    for key, value in data.items():
        if value is not None:
            table.add_row(f"[bold]{key}[/]", str(value))
    Console().print(table)


@click.command(
    help="""The fleet at a glance: jobs queued (per dialer and lane, with the oldest
one's wait; those of leads for a list apart), retries waiting, dead letters by
reason, the oldest dead letter's age, live workers, outcome notifications
waiting and failed, whether calls to a dialer are paused (wrong password,
outage; or its leads for a list alone) and until when, and whether
reconciliation's look-ups work there (as the workers or `dispatcher health` last
found; if not, what to change in VICIdial), and a warning when Redis's
maxmemory-policy is not noeviction. Reads Redis only."""
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (stable keys).")
@click.pass_obj
@guarded
def status(obj: CliContext, as_json: bool) -> None:
    data = fleet_status(obj.backend)
    data["layout"] = {"version": read_layout(obj.backend), "release": LAYOUT_VERSION}
    if as_json:
        echo_json(data)
        return
    console = Console()
    console.print(
        f"queued: [bold]{data['queued']}[/]   retries waiting: "
        f"[bold]{data['retrying']}[/]   workers: [bold]{len(data['workers'])}[/]"
    )
    if data["workers"]:
        console.print("  " + ", ".join(data["workers"]))
    dead = data["dead_letters"]
    if dead:
        table = Table(title="dead letters by reason")
        table.add_column("reason")
        table.add_column("count", justify="right")
        for reason, count in sorted(dead.items(), key=lambda kv: -kv[1]):
            table.add_row(reason, str(count))
        console.print(table)
        console.print(f"oldest dead letter: {data['oldest_dead_letter_age_s']} s old")
    else:
        console.print("dead letters: none")
    dialers = Table(title="dialers")
    columns = ("dialer", "realtime", "bulk", "for a list", "oldest waiting", "paused", "rate limit")
    for column in columns:
        dialers.add_column(column, justify="left" if column in ("dialer", "paused") else "right")
    scopes = {}
    for name, d in data["dialers"].items():
        age = d["oldest_queued_age_s"]
        listed = d["queued_by_target"]["list"]
        scopes[f"{name}:list"] = name
        dialers.add_row(
            name,
            str(d["queued"]["realtime"]),
            str(d["queued"]["bulk"]),
            f"{listed['realtime']} + {listed['bulk']}",
            "" if age is None else f"{age} s",
            "[bold red]yes[/]"
            if d["paused"]
            else "[bold red]list jobs[/]"
            if d["list_paused"]
            else "no",
            f"{d['rate_limit']:g}/s" if d["rate_limit"] else "none",
        )
    console.print(dialers)
    for server, pause in data["paused"].items():
        what = f"leads for a list of {scopes[server]}" if server in scopes else f"calls to {server}"
        console.print(
            f"[bold red]PAUSED[/] {what}: {pause['reason']} "
            f"until {pause['until']} ({pause['remaining_s']} s)"
        )
    if not data["paused"]:
        console.print("VICIdial calls: not paused")
    notes = data["notifications"]
    age = notes["oldest_pending_age_s"]
    console.print(
        f"notifications: {notes['pending']} pending"
        + (f" (oldest {age} s)" if age is not None else "")
        + f", {notes['failed']} failed; {notes['delivered_total']} delivered in all"
        + ("  (see `dispatcher notify list --failed`)" if notes["failed"] else ""),
        highlight=False,
    )
    layout = data["layout"]
    found = "none yet (nothing written)" if layout["version"] is None else layout["version"]
    console.print(f"Redis layout: version {found} (this release: {layout['release']})")
    for ok, line in lookup_lines(obj.settings, data["reconcile"]["lookups"]):
        console.print(line if ok else f"[bold red]{line}[/]", highlight=False, soft_wrap=True)
    redis_state = data["redis"]
    for warning in redis_state["warnings"]:
        console.print(f"[bold red]WARNING[/] {warning}", highlight=False, soft_wrap=True)
    if not redis_state["warnings"]:
        console.print(f"redis: maxmemory-policy {redis_state['maxmemory_policy']}")


@click.command(
    help="""Health check for orchestrators (the Dockerfile's HEALTHCHECK): exit 0 when
Redis answers and, with --worker, when the worker on this host is alive and its
consumer loop answers a ping through the broker; exit 1 otherwise, with the
reason on stderr.

With DISPATCHER_AMBIGUOUS=reconcile it also says whether reconciliation's look-ups
(VICIdial's Non-Agent API) are permitted, and if not exactly what to change in
VICIdial's admin screens. It warns when Redis's maxmemory-policy is not
noeviction (workers refuse to start then: an evicting Redis forgets that a lead
was added). It asks VICIdial only when the fleet's last check is
older than 10 minutes (never while a refused login is held: each refusal counts
toward VICIdial's lock), or with --recheck. A look-up problem is a warning, not
an unhealthy process (exit 0): ambiguous jobs then become dead letters, as with
DISPATCHER_AMBIGUOUS=dead_letter.

\b
  dispatcher health                 # Redis reachable? look-ups permitted?
  dispatcher health --recheck       # ask VICIdial now (after fixing a permission)
  dispatcher health --worker        # + the worker(s) of this host answer
  dispatcher health --worker NAME   # + that worker (e.g. worker@host) answers"""
)
@click.option(
    "--worker",
    "worker",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[NAME]",
    help="Also check a worker (default: those of this host).",
)
@click.option("--timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True)
@click.option("--recheck", is_flag=True, help="Check the look-up's permissions in VICIdial now.")
@click.pass_obj
@guarded
def health(obj: CliContext, worker: str | None, timeout: float, recheck: bool) -> None:
    backend = obj.backend
    with broker_errors(obj.settings):
        backend.redis.ping()
        _lookup_health(obj, recheck=recheck)
        for warning in fleet_status(backend)["redis"]["warnings"]:
            click.echo(f"warning: {warning}", err=True)
    if worker is None:
        click.echo("ok: redis")
        return
    data = fleet_status(backend)
    names = (
        [worker]
        if worker
        else [n for n in data["workers"] if n.endswith("@" + socket.gethostname())]
    )
    if not names:
        fail(
            "no live worker heartbeat from this host (not started, or its scheduler "
            "thread stopped)",
            code=1,
        )
    missing = [n for n in names if n not in data["workers"]]
    if missing:
        fail(f"no recent heartbeat from {', '.join(missing)}", code=1)
    # Imported here: Celery is the workers' dependency, heavy to load, and only this
    # check of a live worker needs it (the rest of the command line never does).
    from celery import Celery

    probe = Celery("dispatcher-health", broker=obj.settings.redis_url)
    probe.conf.broker_transport_options = broker_transport_options(obj.settings)
    try:
        replies = probe.control.ping(destination=names, timeout=timeout)
    finally:
        probe.close()
    answered = {name for reply in replies for name in reply}
    silent = [n for n in names if n not in answered]
    if silent:
        fail(
            f"worker(s) {', '.join(silent)} did not answer a ping within {timeout} s "
            "(consumer loop stuck or broker unreachable from the worker)",
            code=1,
        )
    click.echo(f"ok: redis, {', '.join(names)}")


def _lookup_health(obj: CliContext, *, recheck: bool) -> None:
    """Say whether reconciliation's look-ups work (a warning on stderr when not)."""
    live_check(obj, force=recheck)
    lookups = fleet_status(obj.backend)["reconcile"]["lookups"]
    for ok, line in lookup_lines(obj.settings, lookups):
        click.echo(line if ok else f"warning: {line}", err=not ok)
