"""`dispatcher notify`: the outcome notifications not yet delivered, and resending failed ones."""

from __future__ import annotations

import sys
from collections.abc import Callable

import click
from rich.console import Console
from rich.table import Table

from dispatcher.cli.common import CliContext, echo_json, fail, guarded
from dispatcher.config import logs
from dispatcher.model.notifications import origin
from dispatcher.ops.notifications import (
    list_notifications,
    notification_counts,
    purge_failed,
    retry_failed,
)
from dispatcher.store.backend import Backend

__all__ = ["notify"]

_log = logs.get_logger("dispatcher.notify")


@click.group(
    help="""Outcome notifications (webhooks) not yet delivered, and failed ones.

Each job's final outcome (lead.added, lead.duplicate, lead.dead_lettered,
lead.replayed_added) is POSTed to its receiver (DISPATCHER_NOTIFY_URL, or the job's
notify_url) by the workers, retried with backoff for DISPATCHER_NOTIFY_RETRY_S, then
kept as failed. A job's events arrive in order: one waits while an earlier event of
its job is undelivered (or failed).

\b
  dispatcher notify list                  # the backlog: pending and waiting events
  dispatcher notify list --failed         # failed ones, with the last error
  dispatcher notify retry --all-failed    # fix the receiver, then send them again
  dispatcher notify retry EVENT_ID ...
  dispatcher notify purge --all-failed    # give them up (the next events of their jobs go)"""
)
def notify() -> None:
    pass


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not click.confirm(question, default=False, err=True):
        click.echo("nothing changed", err=True)
        sys.exit(1)


@notify.command(
    "list",
    help="""List undelivered notifications, oldest first: pending (due, or waiting for
their retry), waiting (behind an earlier event of their job), or with --failed the
failed ones. --json prints {"counts", "events"} (each event: the body the receiver
gets, plus status, receiver, attempts, next_attempt_at, failed_at, last_error,
last_status).""",
)
@click.option("--failed", is_flag=True, help="Only failed notifications.")
@click.option("--limit", type=click.IntRange(min=1, max=10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (stable keys).")
@click.pass_obj
@guarded
def list_command(obj: CliContext, failed: bool, limit: int, as_json: bool) -> None:
    page = list_notifications(obj.backend, failed=failed, limit=limit)
    if as_json:
        echo_json(page.to_dict())
        return
    counts = page.counts
    console = Console()
    age = counts.oldest_pending_age_s
    console.print(
        f"pending: [bold]{counts.pending}[/] (due now: {counts.due}"
        + (f", oldest {age} s old" if age is not None else "")
        + f")   failed: [bold]{counts.failed}[/]"
    )
    if not page.events:
        console.print("no failed notifications" if failed else "no notification waiting")
        return
    table = Table()
    for column in ("event", "type", "job", "receiver", "status", "attempts", "when", "last error"):
        table.add_column(column, overflow="fold")
    for e in page.events:
        when = e.failed_at if e.status == "failed" else (e.next_at or e.event.created_at)
        table.add_row(
            e.event.id,
            e.event.type,
            e.event.job_id,
            origin(e.url) if e.url else "",
            e.status,
            str(e.attempts),
            when or "",
            e.last_error or "",
        )
    console.print(table)
    shown = len(page.events)
    total = counts.failed if failed else counts.pending
    if total > shown:
        click.echo(f"({shown} of {total} shown: --limit N for more)", err=True)


def _select(event_ids: tuple[str, ...], all_failed: bool) -> list[str] | None:
    if bool(event_ids) == all_failed:
        raise click.UsageError("give event IDs, or --all-failed (not both)")
    return None if all_failed else list(event_ids)


@notify.command(
    "retry",
    help="""Send failed notifications again: each gets a new retry window of
DISPATCHER_NOTIFY_RETRY_S and is due at once (the events of its job behind it follow
once it is delivered). Fix the receiver first. Only failed events are touched; an ID
that is not a failed event is reported. Asks for confirmation unless --yes.""",
)
@click.argument("event_ids", nargs=-1)
@click.option("--all-failed", is_flag=True, help="Every failed notification.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
@guarded
def retry(obj: CliContext, event_ids: tuple[str, ...], all_failed: bool, yes: bool) -> None:
    _on_failed(
        obj,
        event_ids,
        all_failed=all_failed,
        yes=yes,
        question="Send {total} failed notification(s) again?",
        act=retry_failed,
        event="notify.retried",
        done="{n} notification(s) will be sent again",
    )


@notify.command(
    "purge",
    help="""Delete failed notifications for good (their receivers never get them; the
events of their jobs behind them are sent next). Only failed events are touched. Asks
for confirmation unless --yes.""",
)
@click.argument("event_ids", nargs=-1)
@click.option("--all-failed", is_flag=True, help="Every failed notification.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
@guarded
def purge(obj: CliContext, event_ids: tuple[str, ...], all_failed: bool, yes: bool) -> None:
    _on_failed(
        obj,
        event_ids,
        all_failed=all_failed,
        yes=yes,
        question="Delete {total} failed notification(s) for good?",
        act=purge_failed,
        event="notify.purged",
        done="{n} notification(s) deleted",
    )


def _on_failed(
    obj: CliContext,
    event_ids: tuple[str, ...],
    *,
    all_failed: bool,
    yes: bool,
    question: str,
    act: Callable[[Backend, list[str] | None], int],
    event: str,
    done: str,
) -> None:
    """retry and purge: choose failed events, confirm, act, log, report the IDs that
    were not failed events (exit 1)."""
    ids = _select(event_ids, all_failed)
    backend = obj.backend
    total = notification_counts(backend).failed if ids is None else len(ids)
    if total == 0:
        click.echo("no failed notification", err=True)
        return
    _confirm(question.format(total=total), yes)
    n = act(backend, ids)
    _log.info(event, count=n, all_failed=all_failed)
    click.echo(done.format(n=n), err=True)
    if ids is not None and n < len(ids):
        fail(f"{len(ids) - n} of the IDs given are not failed notifications", code=1)
