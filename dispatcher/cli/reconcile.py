"""`dispatcher dlq reconcile`, and what `health`/`status` say about look-ups.

The dispatcher package never imports the workers, and the workers hold the job's
claim, the server's pause, breaker and rate limit: so a real run *hands the letters
to the workers* (one state-machine command per letter, ``reconcile`` in
execution.lua, which removes the letter and schedules the job's look-up). A dry run
looks each lead up itself, read-only (the Non-Agent API's ``lead_all_info``),
through the same pause, rate limit and look-up holds, and prints what each letter
would become; the real run looks again when the workers get to it, so the outcome
can differ if VICIdial changed in between.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

import click

from dispatcher.cli.common import CliContext, echo_json, fail, guarded
from dispatcher.config import logs
from dispatcher.config.settings import Settings
from dispatcher.model.errors import ConfigError, InvalidPayload, LookupFailed
from dispatcher.model.jobs import Job, iso
from dispatcher.ops.dlq import reconcile_letters
from dispatcher.store.deadletter import DeadLetter, DeadLetterStore
from dispatcher.vicidial.lookup import LookupCheck, check_lookups, preview
from dispatcher.vicidial.nonagent import NonAgentClient

__all__ = ["lookup_lines", "reconcile"]

_WOULD = {
    "added": "would be marked added",
    "called_again": "would be called again (not in VICIdial)",
    "dead_letter": "would stay a dead letter",
    "already_added": "was added after all: the letter would be removed, nothing sent",
    "not_looked_up": "could not be looked up now",
}


@click.command(
    help="""Resolve ambiguous dead letters by looking each lead up in VICIdial.

\b
Select with IDs, --reason ambiguous, or --all (every ambiguous letter).
The letters are handed to the workers, which look each phone up (the
Non-Agent API's lead_all_info) and decide through the job's state machine:
  the lead carries the job's marker   -> added with that lead_id
  it is not there                     -> called again (DNC checks unchanged)
  it is there more than once          -> added with the oldest; the others
                                         reported as duplicates
  VICIdial cannot tell (not permitted,
  leads the API user may not see)     -> the dead letter again, saying why
A letter younger than DISPATCHER_RECONCILE_AFTER_S waits for the rest of it.
Workers must be running. Letters of other reasons are left alone: VICIdial
answered them, nothing is unknown (use `dispatcher dlq replay`).

--dry-run looks each lead up now, read-only, and prints what each letter would
become; nothing changes. It needs the VICIdial settings the workers use.
Asks for confirmation unless --yes."""
)
@click.argument("ids", nargs=-1)
@click.option(
    "--reason", type=click.Choice(["ambiguous"]), help="Only ambiguous letters can be reconciled."
)
@click.option("--all", "all_", is_flag=True, help="Every ambiguous dead letter.")
@click.option("--dry-run", is_flag=True, help="Look up and print what each would become.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--json", "as_json", is_flag=True, help="JSON: one object per letter (dry run) or a summary."
)
@click.pass_obj
@guarded
def reconcile(
    obj: CliContext,
    ids: tuple[str, ...],
    reason: str | None,
    all_: bool,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    if not ids and not reason and not all_:
        raise click.UsageError("say which dead letters: IDs, --reason ambiguous, or --all")
    if all_ and (ids or reason):
        raise click.UsageError("--all cannot be combined with IDs or --reason")
    store = DeadLetterStore(obj.backend)
    if ids:
        letters = list(store.iter(ids=dict.fromkeys(ids)))
        missing = [i for i in ids if i not in {x.id for x in letters}]
    else:
        letters = list(store.iter(reason="ambiguous"))
        missing = []
    for dl_id in missing:
        click.echo(f"no dead letter {dl_id!r}", err=True)
    chosen = [x for x in letters if x.reason == "ambiguous"]
    others = [x for x in letters if x.reason != "ambiguous"]
    for letter in others:
        click.echo(
            f"left alone {letter.id}: reason {letter.reason}, not ambiguous (VICIdial "
            "answered it); use `dispatcher dlq replay`",
            err=True,
        )
    if dry_run:
        _dry_run(obj.settings, obj, chosen, as_json=as_json)
        return
    if not chosen:
        click.echo("no ambiguous dead letters match", err=True)
        sys.exit(1 if ids else 0)
    if not yes and not click.confirm(
        f"Hand {len(chosen)} ambiguous letter(s) to the workers to be looked up in VICIdial?",
        default=False,
        err=True,
    ):
        click.echo("nothing changed", err=True)
        sys.exit(1)
    summary = reconcile_letters(store, chosen, left_alone=len(others))
    if as_json:
        echo_json(summary.as_dict())
        return
    when = iso(summary.first_due) or ""
    click.echo(f"{summary.sentence(when)} (follow each with `dispatcher job ID`)", err=True)


def _dry_run(
    settings: Settings, obj: CliContext, letters: list[DeadLetter], *, as_json: bool
) -> None:
    clients: dict[str, NonAgentClient] = {}

    def client_for(name: str) -> NonAgentClient:
        dialer = settings.dialers.resolve_or_default(name)
        try:
            if not settings.dialers_file:
                settings.require_vicidial()
        except ConfigError as exc:
            fail(f"the dry run looks each lead up in VICIdial: {exc}", code=2)
        if dialer is None or dialer.missing():
            missing = ", ".join(dialer.missing()) if dialer else "a default dialer"
            fail(f"the dry run looks each lead up in VICIdial: dialer {name}: {missing}", code=2)
        if dialer.name not in clients:
            try:
                clients[dialer.name] = NonAgentClient(settings, dialer=dialer)
            except LookupFailed as exc:
                fail(f"the dry run looks each lead up in VICIdial: {exc.line} ({exc.fix})", code=2)
        return clients[dialer.name]

    tally: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    try:
        for letter in letters:
            row: dict[str, Any]
            try:
                job = Job.from_message(letter.job)
            except InvalidPayload as exc:
                row = {"id": letter.id, "would": "dead_letter", "why": f"unreadable job: {exc}"}
            else:
                client = client_for(job.dialer)
                p = preview(obj.backend, client, job, server=client.dialer.name)
                row = {
                    "id": letter.id,
                    "would": p.would,
                    "lead_id": p.lead_id or None,
                    "duplicate_lead_ids": list(p.duplicates) or None,
                    "found": p.found,
                    "why": p.why or None,
                }
            tally[row["would"]] += 1
            rows.append(row)
            if not as_json:
                click.echo(_line(letter, row))
    finally:
        for client in clients.values():
            client.close()
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
    click.echo(
        "dry run: "
        + (", ".join(f"{n} {k}" for k, n in sorted(tally.items())) or "no ambiguous letters")
        + "; nothing changed",
        err=True,
    )


def _line(letter: DeadLetter, row: dict[str, Any]) -> str:
    text = f"{letter.id}  phone={logs.mask_phone(letter.phone)}  {_WOULD[row['would']]}"
    if row["would"] in ("added", "already_added") and row.get("lead_id"):
        text += f": lead {row['lead_id']}"
    if row.get("duplicate_lead_ids"):
        text += f" (found {row['found']}: duplicates {', '.join(row['duplicate_lead_ids'])})"
    if row.get("why"):
        text += f": {row['why']}"
    return text


# -- health and status ------------------------------------------------------------------


def lookup_lines(
    settings: Settings, lookups: dict[str, dict[str, Any]], *, now: float | None = None
) -> list[tuple[bool, str]]:
    """(ok, line) per server for people: whether reconciliation's look-ups work."""
    if settings.ambiguous != "reconcile":
        return [(True, f"reconcile: off (DISPATCHER_AMBIGUOUS={settings.ambiguous})")]
    if not lookups:
        return [(True, "reconcile: look-ups not checked yet (each worker checks at start)")]
    out = []
    for server, data in sorted(lookups.items()):
        state = data.get("state")
        when = data.get("checked_at") or "?"
        if state == "ok" and not data.get("missing"):
            out.append((True, f"reconcile: look-ups permitted on {server} (checked {when})"))
            continue
        if state == "ok":
            line = (
                f"reconcile: look-ups permitted on {server} (checked {when}), but lead_search "
                f"is not; missing: {data['missing']}"
            )
            if data.get("error"):
                line += f"; VICIdial said: {data['error']}"
            if data.get("fix"):
                line += f"; fix: {data['fix']}"
            line += "; until then a lead that is not found stays an ambiguous dead letter"
            out.append((False, line))
            continue
        what = {
            "denied": "NOT permitted",
            "refused": "REFUSED (login)",
            "unavailable": "unavailable",
        }.get(str(state), str(state))
        line = f"reconcile: look-ups {what} on {server} (checked {when})"
        if data.get("missing"):
            line += f"; missing: {data['missing']}"
        if data.get("error"):
            line += f"; VICIdial said: {data['error']}"
        if data.get("fix"):
            line += f"; fix: {data['fix']}"
        line += "; until then ambiguous jobs become dead letters"
        out.append((False, line))
    return out


def live_check(obj: CliContext, *, force: bool) -> list[LookupCheck]:
    """Check each dialer's look-up permissions if its record is missing or stale (or
    ``force``). Nothing when reconciliation is off or a dialer has no credentials here."""
    settings = obj.settings
    if settings.ambiguous != "reconcile":
        return []
    out = []
    for dialer in settings.dialers:
        if dialer.missing():
            continue
        server = dialer.name
        pause = obj.backend.keys.pause(server)
        if not force and obj.backend.redis.hget(pause, "kind") == "refused":
            continue  # a login now would count toward VICIdial's lock
        try:
            client = NonAgentClient(settings, dialer=dialer)
        except LookupFailed as exc:
            out.append(LookupCheck("unavailable", exc.line, exc.missing, exc.fix))
            continue
        try:
            out.append(
                check_lookups(
                    obj.backend, client, server=server, mode="force" if force else "check"
                )
            )
        finally:
            client.close()
    return out
