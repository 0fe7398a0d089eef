"""Exporting dead letters (``/ui/dead-letters/export``): JSON lines or CSV, streamed.

The records are ``dispatcher dlq export``'s (the ``dlq show --json`` shape), their
error lines redacted again; a CSV cell never starts a formula. Reading is a
viewer's right too: an export needs no operator. Each export is logged
``console.export`` with the user and the selection.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dispatcher.intake.console import filters
from dispatcher.intake.console.context import Console, log
from dispatcher.intake.console.forms import BadInput
from dispatcher.intake.console.sessions import Session
from dispatcher.ops.selection import Selection

__all__ = ["CSV_COLUMNS", "Exports", "cell"]

CSV_COLUMNS = (
    "id",
    "job_id",
    "reason",
    "error",
    "http_status",
    "attempts",
    "first_failed_at",
    "last_failed_at",
    "enqueued_at",
    "replays",
    "dialer",
    "priority",
    "agent_user",
    "target",
    "target_list_id",
    "phone_code",
    "phone_number",
    "dnc_check",
    "campaign_dnc_check",
    "idempotency_key",
    "job",
)


def cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run as a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


class Exports:
    """``GET /dead-letters/export?format=jsonl|csv`` with the list's filters."""

    def __init__(self, console: Console) -> None:
        self.console = console

    async def export(self, request: Request) -> Response:
        console = self.console
        fmt = request.query_params.get("format", "jsonl")
        if fmt not in ("jsonl", "csv"):
            return console.refuse(request, 400, "Bad export", "format: jsonl or csv")
        try:
            selection, _items = filters.selection(
                list(request.query_params.multi_items()), dialers=console.settings.dialers.names
            )
        except BadInput as exc:
            return console.refuse(request, 400, "Bad export", f"{exc.field}: {exc.message}")
        session: Session = request.state.session
        log.info(
            "console.export", user=session.user, format=fmt, selection=filters.describe(selection)
        )
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        rows = self._jsonl(selection) if fmt == "jsonl" else self._csv(selection)
        return StreamingResponse(
            rows,
            media_type="application/x-ndjson" if fmt == "jsonl" else "text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="dead-letters-{stamp}.{fmt}"'},
        )

    def _jsonl(self, selection: Selection) -> Iterator[str]:
        # A sync generator: Starlette runs it in a worker thread, one page at a time.
        for letter in selection.iter(self.console.store):
            record = letter.to_dict()
            record["error"] = self.console.redact(record["error"])
            yield json.dumps(record, ensure_ascii=False) + "\n"

    def _csv(self, selection: Selection) -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)

        def flush() -> str:
            text = buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            return text

        writer.writerow(CSV_COLUMNS)
        yield flush()
        for letter in selection.iter(self.console.store):
            lead = letter.job.get("lead") if isinstance(letter.job.get("lead"), dict) else {}
            assert isinstance(lead, dict)
            row: Sequence[Any] = (
                letter.id,
                letter.job_id,
                letter.reason,
                self.console.redact(letter.error),
                letter.http_status,
                letter.attempts,
                letter.first_failed_at,
                letter.last_failed_at,
                letter.enqueued_at,
                letter.replays,
                letter.dialer,
                letter.job.get("priority"),
                letter.agent_user,
                letter.target,
                letter.list_id,
                lead.get("phone_code"),
                lead.get("phone_number"),
                letter.job.get("dnc_check"),
                letter.job.get("campaign_dnc_check"),
                letter.job.get("idempotency_key"),
                json.dumps(letter.job, ensure_ascii=False),
            )
            writer.writerow([cell(v) for v in row])
            yield flush()
