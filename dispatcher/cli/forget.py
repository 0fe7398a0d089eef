"""`dispatcher forget`: erase a phone number from everything the dispatcher keeps."""

from __future__ import annotations

import sys

import click

from dispatcher.cli.common import CliContext, echo_json, fail, guarded
from dispatcher.model.errors import InvalidLead
from dispatcher.ops.erasure import KINDS, VICIDIAL_NOTE, Erasure, forget_phone, normalise_phone

__all__ = ["forget"]


@click.command(
    help="""Erase a phone number from everything the dispatcher keeps (an erasure
request): job states, dead letters, idempotency records (and every other store that
registers, such as a notification backlog). Jobs not yet final are stopped: never
called. Prints what it erased, counts by kind; logs data.forgotten with the phone
masked.

\b
It finds the number through the phone index (a keyed hash of it, kept by every
enqueue): no scan of Redis. Jobs enqueued by the release before the index are
not in it: --scan also reads every dead letter, queued message and job state
(slow: once, after the upgrade).

\b
VICIdial's own copy of the lead is VICIdial's to erase (Non-Agent API
update_lead with delete_lead=Y, or its admin screens).

\b
  dispatcher forget --phone '(727) 555-1212' --dry-run    # what would go
  dispatcher forget --phone 7275551212 --yes"""
)
@click.option(
    "--phone", required=True, help="The number, as the leads had it (formatting ignored)."
)
@click.option("--dry-run", is_flag=True, help="Count what would be erased; change nothing.")
@click.option("--scan", is_flag=True, help="Also find jobs of the previous release (slow).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_obj
@guarded
def forget(
    obj: CliContext, phone: str, dry_run: bool, scan: bool, yes: bool, as_json: bool
) -> None:
    settings = obj.settings
    try:
        normalise_phone(phone, default_phone_code=settings.phone_code)
    except InvalidLead as exc:
        fail("--phone: " + "; ".join(e.message for e in exc.errors), code=2)
    backend = obj.backend
    if not dry_run and not yes:
        preview = forget_phone(backend, phone, dry_run=True, scan=scan)
        _print(preview, err=True)
        if preview.total == 0:
            click.echo("nothing to erase", err=True)
            click.echo(VICIDIAL_NOTE, err=True)
            return
        try:
            sure = click.confirm("Erase all of it for good?", default=False, err=True)
        except click.Abort:  # no terminal and nothing on stdin: not a yes
            sure = False
        if not sure:
            click.echo("nothing changed (without a terminal, add --yes)", err=True)
            sys.exit(1)
    erasure = forget_phone(backend, phone, dry_run=dry_run, scan=scan)
    if as_json:
        echo_json(erasure.to_dict())
    else:
        _print(erasure, err=False)
    click.echo(VICIDIAL_NOTE, err=True)
    if not scan and not erasure.index_complete:
        click.echo(
            "warning: the workers are still putting the previous release's dead letters "
            "into the phone index (a few minutes after an upgrade); until they are done, "
            "add --scan to be sure nothing of this phone is left",
            err=True,
        )
    elif not scan and erasure.total == 0:
        click.echo(
            "nothing found in the phone index; jobs enqueued before the index existed "
            "(the previous release) are found with --scan",
            err=True,
        )


def _print(erasure: Erasure, *, err: bool) -> None:
    verb = "would erase" if erasure.dry_run else "erased"
    click.echo(f"phone {erasure.masked_phone}: {verb}", err=err)
    for kind, n in erasure.counts.items():
        click.echo(f"  {n:>6}  {kind}: {KINDS.get(kind, kind)}", err=err)
