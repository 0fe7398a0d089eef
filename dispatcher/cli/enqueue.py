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
from dispatcher.model.leadfile import CUSTOM_PREFIX, LeadFileError, detect_format, read_rows
from dispatcher.model.list_lead import LIST_LEAD_FIELDS
from dispatcher.ops.producer import BATCH_SIZE, enqueue_lead, prepare_job, push_jobs

__all__ = ["enqueue"]

_MAX_SHOWN = 50
#: Every lead field of either target: an --idempotency-column among them stays in the lead.
_LEAD_FIELDS = frozenset(LEAD_FIELDS) | frozenset(LIST_LEAD_FIELDS)

_HELP = """Put leads on the queue for the workers to add to VICIdial.

A lead goes either to a logged-in agent (--agent-user: VICIdial's Agent API
external_add_lead puts it in the manual dial list of the agent's campaign) or
to a list (--list-id: the Non-Agent API's add_lead, with its duplicate checks,
hopper, callbacks and custom fields). Give one of the two (with neither, a
dialer's default list_id from the dialers file, if it has one).

\b
One lead (prints its job id alone on stdout):
  dispatcher enqueue --agent-user 1000 --phone 7275551212 --field first_name=Bob
  dispatcher enqueue --list-id 101 --campaign-id TESTCAMP --phone 7275551212 \\
      --duplicate-check DUPLIST --add-to-hopper --custom favorite_color=red \\
      --callback-datetime 3DAYS --callback-comments "call after 5"

A list's lead needs --campaign-id while campaign DNC checks are on (the
default; VICIdial's check otherwise passes silently) or with a callback; a
dialer may give defaults (list_id, campaign_id, duplicate_check).

\b
A file (CSV with a header row of field names, or JSON lines; .jsonl/.ndjson
are read as JSON lines):
  dispatcher enqueue --file leads.csv --idempotency-column vendor_lead_code

Every row is checked first. If any row is bad, all bad rows are listed (line,
field, why) and nothing is enqueued (exit 2), unless --skip-invalid is given
(good rows enqueued, bad ones listed, exit 0). Columns dnc_check,
campaign_dnc_check, idempotency_key, dialer, priority and notify_url are
understood per row (a file's leads are bulk unless a priority column or
--priority says otherwise), and so are a list's: list_id, campaign_id, duplicate_check,
add_to_hopper, hopper_priority, lookup_state, tz_method, usacan_prefix_check,
usacan_areacode_check, list_exists_check, callback_datetime, callback_type,
callback_user, callback_status, callback_comments, and a custom field per
custom.<name> column (JSON lines: callback and custom_fields objects). With
--file, --list-id is the list of rows that name no agent_user or list_id, and
the other list options apply to the rows for a list that do not set them.

Importing the same file again enqueues nothing twice: a row without a key of
its own gets one made of the file's content and its line number, so re-running
an import that was interrupted (a crash, Ctrl-C, a lost connection) enqueues
only the rows the first run did not. --allow-reimport turns that off (to
import the same file again on purpose).

DNC checks are on unless turned off explicitly (--no-dnc-check).
"""


def _parse_fields(values: tuple[str, ...], *, option: str = "--field") -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint=option)
        fields[name.strip()] = value
    return fields


def _list_options(
    *,
    list_id: str | None,
    campaign_id: str | None,
    duplicate_check: str | None,
    add_to_hopper: bool | None,
    hopper_priority: str | None,
    callback: dict[str, str | None],
    custom: tuple[str, ...],
    lookup_state: bool | None,
    tz_method: str | None,
    usacan_prefix_check: bool | None,
    usacan_areacode_check: bool | None,
    list_exists_check: bool | None,
) -> dict[str, Any]:
    """The list target's flags as the keys of enqueue_lead (only those given)."""
    out: dict[str, Any] = {
        k: v
        for k, v in (
            ("list_id", list_id),
            ("campaign_id", campaign_id),
            ("duplicate_check", duplicate_check),
            ("add_to_hopper", add_to_hopper),
            ("hopper_priority", hopper_priority),
            ("lookup_state", lookup_state),
            ("tz_method", tz_method),
            ("usacan_prefix_check", usacan_prefix_check),
            ("usacan_areacode_check", usacan_areacode_check),
            ("list_exists_check", list_exists_check),
        )
        if v is not None
    }
    given = {k: v for k, v in callback.items() if v is not None}
    if given:
        out["callback"] = given
    if custom:
        out["custom_fields"] = _parse_fields(custom, option="--custom")
    return out


def _list_flags(func: Any) -> Any:
    """The options of a lead for a list (add_lead), for `dispatcher enqueue`."""
    flags = [
        click.option(
            "--list-id",
            help="A lead for this list (VICIdial's Non-Agent add_lead), instead of an agent. "
            "With --file: for rows that name no agent_user or list_id.",
        ),
        click.option(
            "--campaign-id",
            help="With a list: the campaign whose DNC list campaign DNC checks search and "
            "where a callback goes (default: the dialer's, per list).",
        ),
        click.option(
            "--duplicate-check",
            metavar="CHECKS",
            help="With a list: VICIdial's duplicate checks, e.g. DUPLIST, DUPCAMP, DUPSYS, "
            "DUPNAMEPHONELIST, joined by '-', one window at most (DUPLIST-DUPSYS30DAY); NONE "
            "for no check over the dialer's default. A duplicate ends the job as 'duplicate'.",
        ),
        click.option(
            "--add-to-hopper/--no-add-to-hopper",
            default=None,
            help="With a list: put the lead in the hopper (dialed next).",
        ),
        click.option("--hopper-priority", metavar="N", help="With --add-to-hopper: -99 to 99."),
        click.option(
            "--callback-datetime",
            metavar="WHEN",
            help="With a list: schedule a callback: NOW, {n}DAYS or 'YYYY-MM-DD HH:MM:SS' "
            "(VICIdial's local time). The lead is stored CBHOLD.",
        ),
        click.option(
            "--callback-type",
            type=click.Choice(["ANYONE", "USERONLY"]),
            help="The callback's recipient (default ANYONE; USERONLY needs --callback-user).",
        ),
        click.option("--callback-user", help="With --callback-type USERONLY: the VICIdial user."),
        click.option("--callback-status", help="The callback's status (default CALLBK)."),
        click.option("--callback-comments", help="The callback's comments."),
        click.option(
            "--custom",
            multiple=True,
            metavar="NAME=VALUE",
            help="With a list: one of the list's custom fields. Repeatable.",
        ),
        click.option(
            "--lookup-state/--no-lookup-state",
            default=None,
            help="With a list: an empty state takes the area code's.",
        ),
        click.option(
            "--tz-method",
            type=click.Choice(["POSTAL", "TZCODE", "NANPA"]),
            help="With a list: how VICIdial finds the lead's time zone.",
        ),
        click.option(
            "--usacan-prefix-check/--no-usacan-prefix-check",
            default=None,
            help="With a list: VICIdial refuses a US/Canada phone whose prefix starts 0 or 1.",
        ),
        click.option(
            "--usacan-areacode-check/--no-usacan-areacode-check",
            default=None,
            help="With a list: VICIdial refuses a phone whose area code it does not know.",
        ),
        click.option(
            "--list-exists-check/--no-list-exists-check",
            default=None,
            help="With a list: VICIdial refuses a list that does not exist (default: on).",
        ),
    ]
    for flag in reversed(flags):
        func = flag(func)
    return func


@click.command(help=_HELP)
@click.option(
    "--agent-user", help="VICIdial user of the logged-in agent who gets the lead (or --list-id)."
)
@click.option(
    "--phone", "phone_number", help="Phone number; formatting like (727) 555-1212 is fine."
)
@click.option("--phone-code", help="Country code (default: DISPATCHER_PHONE_CODE, 1).")
@click.option(
    "--field",
    "fields",
    multiple=True,
    metavar="NAME=VALUE",
    help="Any lead field (external_add_lead's, or add_lead's with --list-id), e.g. "
    "first_name=Bob. Repeatable.",
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
    "--notify-url",
    metavar="URL",
    help="Receiver of this job's outcome notification (a POST, signed), under a prefix of "
    "DISPATCHER_NOTIFY_ALLOWED; default: DISPATCHER_NOTIFY_URL. With --file: for rows "
    "without a notify_url column.",
)
@click.option(
    "--priority",
    type=click.Choice(["realtime", "bulk"]),
    help="Lane: realtime jobs of a dialer go before its bulk ones. Default: realtime for "
    "one lead, bulk with --file (a priority column wins).",
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
@_list_flags
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
    list_id: str | None,
    campaign_id: str | None,
    duplicate_check: str | None,
    add_to_hopper: bool | None,
    hopper_priority: str | None,
    callback_datetime: str | None,
    callback_type: str | None,
    callback_user: str | None,
    callback_status: str | None,
    callback_comments: str | None,
    custom: tuple[str, ...],
    lookup_state: bool | None,
    tz_method: str | None,
    usacan_prefix_check: bool | None,
    usacan_areacode_check: bool | None,
    list_exists_check: bool | None,
) -> None:
    list_options = _list_options(
        list_id=list_id,
        campaign_id=campaign_id,
        duplicate_check=duplicate_check,
        add_to_hopper=add_to_hopper,
        hopper_priority=hopper_priority,
        callback={
            "datetime": callback_datetime,
            "type": callback_type,
            "user": callback_user,
            "status": callback_status,
            "comments": callback_comments,
        },
        custom=custom,
        lookup_state=lookup_state,
        tz_method=tz_method,
        usacan_prefix_check=usacan_prefix_check,
        usacan_areacode_check=usacan_areacode_check,
        list_exists_check=list_exists_check,
    )
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
                list_defaults=list_options,
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
    lead.update(list_options)
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
    list_defaults: dict[str, Any],
    notify_url: str | None = None,
) -> Job:
    if dialer is not None and not row.get("dialer"):
        row["dialer"] = dialer
    if notify_url is not None and not row.get("notify_url"):
        row["notify_url"] = notify_url
    _apply_list_defaults(row, list_defaults)
    if idempotency_column is None and file_key is not None and not row.get("idempotency_key"):
        row["idempotency_key"] = f"file:{file_key}:{line}"
    if idempotency_column is not None:
        key = _column(row, idempotency_column)
        if key in (None, ""):
            raise InvalidLead(
                [FieldError(idempotency_column, "empty, but it is the --idempotency-column")]
            )
        if idempotency_column not in _LEAD_FIELDS:
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


def _column(row: dict[str, Any], name: str) -> Any:
    """A row's cell by its column name (``custom.<name>`` columns are in custom_fields)."""
    if name.startswith(CUSTOM_PREFIX) and isinstance(row.get("custom_fields"), dict):
        return row["custom_fields"].get(name[len(CUSTOM_PREFIX) :])
    return row.get(name)


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _apply_list_defaults(row: dict[str, Any], defaults: dict[str, Any]) -> None:
    """The list flags of `enqueue --file` as defaults: --list-id for a row that names no
    target, the options for a row not for an agent (for a list, or the dialer's default
    list) that does not set them."""
    if not defaults:
        return
    untargeted = not _given(row.get("agent_user")) and not _given(row.get("list_id"))
    if untargeted and "list_id" in defaults:
        row["list_id"] = defaults["list_id"]
    if _given(row.get("agent_user")):
        return  # a lead for an agent: the list's options are not for it
    for key, value in defaults.items():
        if key == "callback" and isinstance(row.get("callback"), dict):
            row["callback"] = {**value, **row["callback"]}
        elif key == "custom_fields" and isinstance(row.get("custom_fields"), dict):
            row["custom_fields"] = {**value, **row["custom_fields"]}
        elif not _given(row.get(key)):
            row[key] = value


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
    list_defaults: dict[str, Any],
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
                    list_defaults=list_defaults,
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
                        list_defaults=list_defaults,
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
