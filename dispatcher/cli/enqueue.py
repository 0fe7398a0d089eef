"""`dispatcher enqueue`: one lead from flags, or many from a CSV / JSON-lines file."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dispatcher.cli.common import CliContext, fail, guarded
from dispatcher.model.errors import FieldError, IdempotencyConflict, InvalidLead
from dispatcher.model.jobs import Job
from dispatcher.model.lead import LEAD_FIELDS
from dispatcher.model.leadfile import LeadFileError, detect_format, read_rows
from dispatcher.ops.producer import BATCH_SIZE, enqueue_lead, prepare_job, push_jobs

__all__ = ["enqueue"]

_MAX_SHOWN = 50

_HELP = """Put leads on the queue for the workers to add to VICIdial.

\b
One lead (prints its job id alone on stdout):
  dispatcher enqueue --agent-user 1000 --phone 7275551212 --field first_name=Bob

\b
A file (CSV with a header row of field names, or JSON lines; .jsonl/.ndjson
are read as JSON lines):
  dispatcher enqueue --file leads.csv --idempotency-column vendor_lead_code

Every row is checked first. If any row is bad, all bad rows are listed (line,
field, why) and nothing is enqueued (exit 2), unless --skip-invalid is given
(good rows enqueued, bad ones listed, exit 0). Columns dnc_check,
campaign_dnc_check, idempotency_key, dialer, priority and notify_url are
understood per row (a file's leads are bulk unless a priority column or
--priority says otherwise).

Importing the same file again enqueues nothing twice: a row without a key of
its own gets one made of the file's content and its line number, so re-running
an import that was interrupted (a crash, Ctrl-C, a lost connection) enqueues
only the rows the first run did not. --allow-reimport turns that off (to
import the same file again on purpose).

DNC checks are on unless turned off explicitly (--no-dnc-check).
"""


def _parse_fields(values: tuple[str, ...]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--field")
        fields[name.strip()] = value
    return fields


@click.command(help=_HELP)
@click.option("--agent-user", help="VICIdial user of the logged-in agent who gets the lead.")
@click.option(
    "--phone", "phone_number", help="Phone number; formatting like (727) 555-1212 is fine."
)
@click.option("--phone-code", help="Country code (default: DISPATCHER_PHONE_CODE, 1).")
@click.option(
    "--field",
    "fields",
    multiple=True,
    metavar="NAME=VALUE",
    help="Any lead field of external_add_lead, e.g. first_name=Bob. Repeatable.",
)
@click.option(
    "--dnc-check/--no-dnc-check",
    default=None,
    help="Check the system DNC list (default: DISPATCHER_DNC_CHECK, on).",
)
@click.option(
    "--campaign-dnc-check/--no-campaign-dnc-check",
    default=None,
    help="Check the campaign DNC list (default: DISPATCHER_CAMPAIGN_DNC_CHECK, on).",
)
@click.option("--idempotency-key", help="Same key again returns the first job id, adds nothing.")
@click.option(
    "--dialer",
    help="The VICIdial server (a name from DISPATCHER_DIALERS_FILE); default: the default one. "
    "With --file: for rows without a dialer column.",
)
@click.option(
    "--priority",
    type=click.Choice(["realtime", "bulk"]),
    help="Lane: realtime jobs of a dialer go before its bulk ones. Default: realtime for "
    "one lead, bulk with --file (a priority column wins).",
)
@click.option(
    "--notify-url",
    metavar="URL",
    help="Receiver of this job's outcome notification (a POST, signed), under a prefix of "
    "DISPATCHER_NOTIFY_ALLOWED; default: DISPATCHER_NOTIFY_URL. With --file: for rows "
    "without a notify_url column.",
)
@click.option(
    "--file",
    "file_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Enqueue every row of a CSV or JSON-lines file.",
)
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["csv", "jsonl"]),
    help="File format (default: from the file name).",
)
@click.option("--skip-invalid", is_flag=True, help="With --file: enqueue the good rows anyway.")
@click.option(
    "--idempotency-column",
    metavar="COLUMN",
    help="With --file: use this column as each row's idempotency key, so that "
    "importing the same file twice adds nothing twice.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, BATCH_SIZE),
    default=BATCH_SIZE,
    show_default=True,
    help="With --file: leads per Redis round trip.",
)
@click.option("--print-ids", is_flag=True, help="With --file: print each job id on stdout.")
@click.option(
    "--allow-reimport",
    is_flag=True,
    help="With --file: no file-and-line keys; importing the same file twice enqueues twice.",
)
@click.pass_obj
@guarded
def enqueue(
    obj: CliContext,
    agent_user: str | None,
    phone_number: str | None,
    phone_code: str | None,
    fields: tuple[str, ...],
    dnc_check: bool | None,
    campaign_dnc_check: bool | None,
    idempotency_key: str | None,
    file_path: Path | None,
    file_format: str | None,
    skip_invalid: bool,
    idempotency_column: str | None,
    batch_size: int,
    print_ids: bool,
    allow_reimport: bool,
    dialer: str | None,
    priority: str | None,
    notify_url: str | None,
) -> None:
    if file_path is not None:
        single = [
            n
            for n, v in (
                ("--agent-user", agent_user),
                ("--phone", phone_number),
                ("--phone-code", phone_code),
                ("--idempotency-key", idempotency_key),
            )
            if v
        ]
        if single or fields:
            raise click.UsageError(
                f"--file cannot be combined with {', '.join(single) or '--field'}"
            )
        try:
            _enqueue_file(
                obj,
                file_path,
                fmt=detect_format(file_path, file_format),
                skip_invalid=skip_invalid,
                idempotency_column=idempotency_column,
                dnc_check=dnc_check,
                campaign_dnc_check=campaign_dnc_check,
                batch_size=batch_size,
                print_ids=print_ids,
                file_key=None if allow_reimport else _file_digest(file_path),
                dialer=dialer,
                priority=priority or "bulk",
                notify_url=notify_url,
            )
        except LeadFileError as exc:
            fail(f"{exc}; nothing enqueued", code=2)
        except IdempotencyConflict as exc:
            fail(f"{exc} (rows before it may have been enqueued)", code=2)
        return
    if skip_invalid or idempotency_column or print_ids or allow_reimport:
        raise click.UsageError(
            "--skip-invalid, --idempotency-column, --print-ids and --allow-reimport need --file"
        )
    lead: dict[str, Any] = _parse_fields(fields)
    for name, value in (
        ("agent_user", agent_user),
        ("phone_number", phone_number),
        ("phone_code", phone_code),
    ):
        if value is not None:
            lead[name] = value
    if dnc_check is not None:
        lead["dnc_check"] = dnc_check
    if campaign_dnc_check is not None:
        lead["campaign_dnc_check"] = campaign_dnc_check
    if idempotency_key is not None:
        lead["idempotency_key"] = idempotency_key
    if dialer is not None:
        lead["dialer"] = dialer
    if priority is not None:
        lead["priority"] = priority
    if notify_url is not None:
        lead["notify_url"] = notify_url
    try:
        job_id = enqueue_lead(settings=obj.settings, **lead)
    except InvalidLead as exc:
        for error in exc.errors:
            click.echo(f"invalid lead: {error}", err=True)
        sys.exit(2)
    except IdempotencyConflict as exc:
        fail(str(exc), code=2)
    click.echo(job_id)


def _file_digest(path: Path) -> str:
    """What names this file's content in its rows' default idempotency keys."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:24]


def _row_job(
    row: dict[str, Any],
    *,
    line: int,
    file_key: str | None,
    idempotency_column: str | None,
    obj: CliContext,
    dnc_check: bool | None,
    campaign_dnc_check: bool | None,
    now: float,
    dialer: str | None,
    priority: str,
    notify_url: str | None = None,
) -> Job:
    if dialer is not None and not row.get("dialer"):
        row["dialer"] = dialer
    if notify_url is not None and not row.get("notify_url"):
        row["notify_url"] = notify_url
    if idempotency_column is None and file_key is not None and not row.get("idempotency_key"):
        row["idempotency_key"] = f"file:{file_key}:{line}"
    if idempotency_column is not None:
        key = row.get(idempotency_column)
        if key in (None, ""):
            raise InvalidLead(
                [FieldError(idempotency_column, "empty, but it is the --idempotency-column")]
            )
        if idempotency_column not in LEAD_FIELDS:
            row = {k: v for k, v in row.items() if k != idempotency_column}
        row["idempotency_key"] = f"{idempotency_column}:{key}"
    return prepare_job(
        row,
        dnc_check=dnc_check,
        campaign_dnc_check=campaign_dnc_check,
        priority=priority,
        settings=obj.settings,
        now=now,
    )


def _enqueue_file(
    obj: CliContext,
    path: Path,
    *,
    fmt: str,
    skip_invalid: bool,
    idempotency_column: str | None,
    dnc_check: bool | None,
    campaign_dnc_check: bool | None,
    batch_size: int,
    print_ids: bool,
    file_key: str | None,
    dialer: str | None,
    priority: str,
    notify_url: str | None = None,
) -> None:
    err = Console(stderr=True)
    now = time.time()
    # Pass 1: check every row, keep only the errors (constant memory).
    bad: list[str] = []
    bad_rows = good = 0
    for row in read_rows(path, fmt=fmt):
        problems: list[str] = []
        if row.data is None:
            problems.append(f"line {row.line}: {row.problem}")
        else:
            try:
                _row_job(
                    dict(row.data),
                    line=row.line,
                    file_key=file_key,
                    idempotency_column=idempotency_column,
                    obj=obj,
                    dnc_check=dnc_check,
                    campaign_dnc_check=campaign_dnc_check,
                    now=now,
                    dialer=dialer,
                    priority=priority,
                    notify_url=notify_url,
                )
            except InvalidLead as exc:
                problems.extend(f"line {row.line}: {e.field}: {e.message}" for e in exc.errors)
        if problems:
            bad_rows += 1
            if len(bad) < _MAX_SHOWN:
                bad.extend(problems)
        else:
            good += 1
    for line in bad[:_MAX_SHOWN]:
        click.echo(f"invalid: {line}", err=True)
    if len(bad) > _MAX_SHOWN or (bad_rows and len(bad) >= _MAX_SHOWN):
        click.echo(f"... ({bad_rows} bad rows in all)", err=True)
    if bad_rows and not skip_invalid:
        click.echo(
            f"{bad_rows} bad row(s), {good} good: nothing enqueued "
            "(fix the file, or use --skip-invalid to enqueue the good rows)",
            err=True,
        )
        sys.exit(2)
    if good == 0:
        fail("no valid rows to enqueue" if bad_rows else f"{path}: no rows to enqueue", code=2)
    # Pass 2: enqueue the good rows in batches.
    new = 0
    batch: list[Job] = []
    progress = Progress(
        TextColumn("enqueueing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not err.is_terminal,
    )

    def flush() -> None:
        nonlocal new
        ids = push_jobs(batch, settings=obj.settings)
        new += sum(1 for job, job_id in zip(batch, ids, strict=True) if job.job_id == job_id)
        if print_ids:
            for job_id in ids:
                click.echo(job_id)
        progress.advance(task, len(batch))
        batch.clear()

    with progress:
        task = progress.add_task("enqueue", total=good)
        for row in read_rows(path, fmt=fmt):
            if row.data is None:
                continue
            try:
                batch.append(
                    _row_job(
                        dict(row.data),
                        line=row.line,
                        file_key=file_key,
                        idempotency_column=idempotency_column,
                        obj=obj,
                        dnc_check=dnc_check,
                        campaign_dnc_check=campaign_dnc_check,
                        now=now,
                        dialer=dialer,
                        priority=priority,
                        notify_url=notify_url,
                    )
                )
            except InvalidLead:
                continue
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
    click.echo(
        f"enqueued {new} lead(s); {good - new} already enqueued before (same idempotency key); "
        f"{bad_rows} bad row(s) skipped",
        err=True,
    )
