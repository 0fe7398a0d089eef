"""`dispatcher dlq`: list, show, replay, purge and export dead letters."""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections import Counter

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from dispatcher.cli.common import CliContext, Duration, SinceType, echo_json, fail, guarded
from dispatcher.model.errors import all_reasons
from dispatcher.ops.dlq import ReplaySummary, purge_letters, replay_letters
from dispatcher.ops.selection import DNC_REASONS, Selection, held_reasons
from dispatcher.store.deadletter import DeadLetterStore

__all__ = ["dlq"]

_DNC_WHY = (
    "VICIdial refused these numbers because they are on a DNC list, and a replay re-runs "
    "the same DNC checks. Remove the number from the list in VICIdial first, then replay "
    "with --include-dnc."
)
_AMBIGUOUS_WHY = (
    "VICIdial may have added these leads (the answer never came back): replaying one that "
    "was added calls the customer twice. `dispatcher dlq reconcile` looks each one up in "
    "VICIdial first; or check by hand, then replay by ID, or with --include-ambiguous."
)
_REASONS = click.Choice(sorted(all_reasons()))


@click.group(
    help="""The dead-letter store: every lead that could not be added, with why.

\b
Typical repair:
  dispatcher dlq list                         # what died, counts per reason
  dispatcher dlq show JOB_ID                  # one letter: the job, VICIdial's answer
  (fix the cause in VICIdial, e.g. give the campaign a manual dial list)
  dispatcher dlq replay --reason manual_list_undefined --dry-run
  dispatcher dlq replay --reason manual_list_undefined --rate 20

Replay puts the same job (same id, idempotency key, DNC flags) back on the queue
with a fresh attempt count. A job whose lead was added after all is never sent
again, so replaying twice, or after a crash, adds nothing twice."""
)
def dlq() -> None:
    pass


def _store(obj: CliContext) -> DeadLetterStore:
    return DeadLetterStore(obj.backend)


@dlq.command(
    "list",
    help="""List dead letters, newest first, with counts per reason in the footer.
Filters combine. --json prints a JSON array of records (the `dlq show --json` shape).""",
)
@click.option("--reason", type=_REASONS, help="Only this reason.")
@click.option("--agent-user", help="Only leads for this agent.")
@click.option("--dialer", help="Only jobs of this dialer.")
@click.option(
    "--since", type=SinceType(), help="Only those that failed since: 2h, 30d or an ISO time."
)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@guarded
def list_(
    obj: CliContext,
    reason: str | None,
    agent_user: str | None,
    dialer: str | None,
    since: float | None,
    limit: int,
    as_json: bool,
) -> None:
    store = _store(obj)
    letters = _selection((), reason, agent_user, dialer=dialer, since=since).iter(store)
    if as_json:
        # Streamed: one record in memory at a time, whatever --limit says.
        out = sys.stdout
        out.write("[")
        for n, letter in enumerate(itertools.islice(letters, limit)):
            out.write((", " if n else "") + json.dumps(letter.to_dict(), ensure_ascii=False))
        out.write("]\n")
        out.flush()
        return
    # One more than shown tells whether there are more.
    shown = list(itertools.islice(letters, limit + 1))
    more = len(shown) > limit
    console = Console()
    table = Table(show_lines=False)
    for column in (
        "id",
        "reason",
        "dialer",
        "target",
        "phone",
        "attempts",
        "replays",
        "last failed",
        "error",
    ):
        table.add_column(column, overflow="fold")
    for letter in shown[:limit]:
        table.add_row(
            letter.id,
            letter.reason,
            letter.dialer,
            f"list {letter.list_id}" if letter.list_id else f"agent {letter.agent_user or ''}",
            letter.phone,
            str(letter.attempts),
            str(letter.replays),
            letter.last_failed_at or "",
            (letter.error or "")[:80],
        )
    counts = store.counts()
    table.caption = (
        "in store: "
        + ", ".join(f"{r} {n}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        if counts
        else "the dead-letter store is empty"
    )
    console.print(table)
    if more:
        console.print(f"(first {limit}; use --limit or filters to see more)", style="dim")


@dlq.command(
    help="Show one dead letter whole: the job, VICIdial's answer, attempts, timestamps, replays."
)
@click.argument("dl_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@guarded
def show(obj: CliContext, dl_id: str, as_json: bool) -> None:
    letter = _store(obj).get(dl_id)
    if letter is None:
        fail(f"no dead letter {dl_id!r}", code=1)
    if as_json:
        echo_json(letter.to_dict())
        return
    console = Console()
    table = Table(show_header=False, box=None)
    for key, value in letter.to_dict().items():
        if key != "job":
            table.add_row(f"[bold]{key}[/]", "" if value is None else str(value))
    console.print(table)
    console.print("[bold]job[/]")
    console.print_json(json.dumps(letter.job))


def _selection(
    ids: tuple[str, ...],
    reason: str | None,
    agent_user: str | None,
    older_than: float | None = None,
    *,
    dialer: str | None = None,
    since: float | None = None,
) -> Selection:
    until = None if older_than is None else time.time() - older_than
    # Named letters still honour the other filters (e.g. purge ID --older-than 30d).
    return Selection(
        ids=ids, reason=reason, agent_user=agent_user, until=until, dialer=dialer, since=since
    )


def _check_selection(
    ids: tuple[str, ...], reason: str | None, all_: bool, extra: bool = False
) -> None:
    if not ids and not reason and not all_ and not extra:
        raise click.UsageError("say which dead letters: IDs, --reason R, or --all")
    if all_ and (ids or reason):
        raise click.UsageError("--all cannot be combined with IDs or --reason")


def _explain_skipped(skipped: Counter[str], what: str) -> None:
    """``skipped``: letters held back, per reason."""
    dnc = sum(n for r, n in skipped.items() if r in DNC_REASONS)
    ambiguous = sum(n for r, n in skipped.items() if r not in DNC_REASONS)
    if dnc:
        click.echo(f"{dnc} DNC letter(s) {what}: {_DNC_WHY}", err=True)
    if ambiguous:
        click.echo(f"{ambiguous} ambiguous letter(s) {what}: {_AMBIGUOUS_WHY}", err=True)


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not click.confirm(question, default=False, err=True):
        click.echo("nothing changed", err=True)
        sys.exit(1)


def _progress(console: Console, label: str, total: int) -> Progress:
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal or total < 50,
    )


@dlq.command(
    help="""Put dead letters back on the queue, then remove them from the store.

\b
Select with IDs, --reason R (optionally --agent-user A) or --all.
--dry-run lists what would be replayed and changes nothing. --rate N limits
re-enqueues per second, so a big replay does not flood VICIdial. Asks for
confirmation unless --yes.

Leads that died on a DNC list (reasons dnc, campaign_dnc) are skipped unless
--include-dnc is given: VICIdial refused them for compliance, and replaying them
with the same DNC checks only fails again; do it only after the number was
removed from the list in VICIdial.

Ambiguous letters (the answer never came back: the lead may be in VICIdial)
are skipped by --all and --reason unless --include-ambiguous is given; by ID
they are replayed (naming one is explicit)."""
)
@click.argument("ids", nargs=-1)
@click.option("--reason", type=_REASONS)
@click.option("--agent-user")
@click.option("--all", "all_", is_flag=True, help="Every dead letter.")
@click.option("--dry-run", is_flag=True, help="List what would be replayed; change nothing.")
@click.option(
    "--rate", type=click.FloatRange(min=0, min_open=True), help="At most N re-enqueues per second."
)
@click.option(
    "--include-dnc",
    is_flag=True,
    help="Also replay dnc/campaign_dnc letters (after fixing the DNC list).",
)
@click.option(
    "--include-ambiguous",
    is_flag=True,
    help="Also replay ambiguous letters with --all/--reason (after checking VICIdial).",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
@guarded
def replay(
    obj: CliContext,
    ids: tuple[str, ...],
    reason: str | None,
    agent_user: str | None,
    all_: bool,
    dry_run: bool,
    rate: float | None,
    include_dnc: bool,
    include_ambiguous: bool,
    yes: bool,
    as_json: bool,
) -> None:
    _check_selection(ids, reason, all_, extra=agent_user is not None)
    if reason in DNC_REASONS and not include_dnc:
        raise click.UsageError(
            f"--reason {reason}: these leads were refused because the number is on a DNC "
            "list; replaying them re-runs the same DNC checks. Remove the number from the "
            "list in VICIdial first, then add --include-dnc."
        )
    if reason == "ambiguous" and not include_ambiguous:
        raise click.UsageError(f"--reason ambiguous: {_AMBIGUOUS_WHY}")
    store = _store(obj)
    err = Console(stderr=True)
    # Named by ID, an ambiguous letter is meant: only bulk selections hold them back.
    skip = held_reasons(include_dnc=include_dnc, include_ambiguous=include_ambiguous or bool(ids))
    selection = _selection(ids, reason, agent_user)
    if dry_run:
        shown = 0
        skipped: Counter[str] = Counter()
        for letter in selection.iter(store):
            if letter.reason in skip:
                skipped[letter.reason] += 1
                continue
            click.echo(
                f"would replay {letter.id}  {letter.reason}  agent={letter.agent_user}  "
                f"phone={letter.phone}"
            )
            shown += 1
        click.echo(f"dry run: {shown} would be replayed; nothing changed", err=True)
        _explain_skipped(skipped, "would be left alone")
        return
    total, held_counts = selection.tally(store, skip)
    _explain_skipped(held_counts, "left alone")
    if total == 0:
        click.echo("no dead letters match", err=True)
        return
    _confirm(f"Replay {total} dead letter(s)?", yes)
    with _progress(err, "replaying", total) as progress:
        task = progress.add_task("replay", total=total)
        outcomes = replay_letters(
            store,
            selection.iter(store),
            held=skip,
            rate=rate,
            on_each=lambda _letter, result: (
                None if result.startswith("skipped") else progress.advance(task)
            ),
        )
    summary = ReplaySummary.of(outcomes)
    if as_json:
        echo_json(summary.as_dict())
    else:
        click.echo(summary.sentence(), err=True)


@dlq.command(
    help="""Delete dead letters for good (export them first to keep a record).

Select with IDs, --reason R, --older-than 30d, or --all. Asks for confirmation
unless --yes."""
)
@click.argument("ids", nargs=-1)
@click.option("--reason", type=_REASONS)
@click.option("--older-than", type=Duration(), help="Only letters whose last failure is older.")
@click.option("--all", "all_", is_flag=True)
@click.option("--yes", "-y", is_flag=True)
@click.pass_obj
@guarded
def purge(
    obj: CliContext,
    ids: tuple[str, ...],
    reason: str | None,
    older_than: float | None,
    all_: bool,
    yes: bool,
) -> None:
    _check_selection(ids, reason, all_, extra=older_than is not None)
    store = _store(obj)
    selection = _selection(ids, reason, None, older_than)
    total = selection.count(store)
    if total == 0:
        click.echo("no dead letters match", err=True)
        return
    _confirm(f"Delete {total} dead letter(s) for good?", yes)
    err = Console(stderr=True)
    with _progress(err, "purging", total) as progress:
        task = progress.add_task("purge", total=total)
        deleted = purge_letters(
            store, selection.iter(store), on_each=lambda _letter, _gone: progress.advance(task)
        )
    click.echo(f"purged {deleted} dead letter(s)", err=True)


@dlq.command(
    help="""Write dead letters as JSON lines on stdout (one record a line, the
`dlq show --json` shape), streaming: for archiving before a purge."""
)
@click.option("--reason", type=_REASONS)
@click.option("--agent-user")
@click.option("--dialer", help="Only jobs of this dialer.")
@click.option("--since", type=SinceType())
@click.pass_obj
@guarded
def export(
    obj: CliContext,
    reason: str | None,
    agent_user: str | None,
    dialer: str | None,
    since: float | None,
) -> None:
    out = sys.stdout
    count = 0
    selection = _selection((), reason, agent_user, dialer=dialer, since=since)
    for letter in selection.iter(_store(obj)):
        out.write(json.dumps(letter.to_dict(), ensure_ascii=False) + "\n")
        count += 1
    out.flush()
    click.echo(f"exported {count} dead letter(s)", err=True)
