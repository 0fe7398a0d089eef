"""The dead letters: the list (filters, pages by cursor) and one letter's page.

The list reads one page after a cursor (:meth:`Selection.page`): the cost of a
page does not grow with the store, and a filter the indexes cannot answer reads
at most :data:`SCAN_BUDGET` records per page. Phones are masked in the list; a
letter's own page shows its whole job (redacted) for the operator to check in
VICIdial, and, for an ambiguous letter, whether its dialer's look-ups work.
Acting on letters is :mod:`.actions`; exporting them :mod:`.exports`.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from dispatcher.intake.console import filters
from dispatcher.intake.console.context import Console
from dispatcher.intake.console.forms import BadInput, Form
from dispatcher.intake.console.jobs import job_state
from dispatcher.intake.console.lookups import lookup_rows
from dispatcher.model.errors import all_reasons
from dispatcher.ops.selection import AMBIGUOUS_REASONS, Cursor, Page, Selection
from dispatcher.ops.status import fleet_status
from dispatcher.store.deadletter import DeadLetter

__all__ = ["PAGE_SIZE", "SCAN_BUDGET", "DeadLetters"]

PAGE_SIZE = 50
#: Records read at most per list page when agent/phone filters need reading them.
SCAN_BUDGET = 1000


class DeadLetters:
    """``GET /dead-letters`` and ``GET /dead-letters/ID``."""

    def __init__(self, console: Console) -> None:
        self.console = console

    async def list_page(self, request: Request) -> Response:
        console = self.console
        params: Form = list(request.query_params.multi_items())
        form = {k: request.query_params.get(k, "") for k in filters.FILTERS}
        common = {
            "nav": "dead-letters",
            "form": form,
            "reasons": sorted(all_reasons()),
            "within_choices": filters.WITHIN,
            "older_choices": filters.OLDER,
            "dialers": console.settings.dialers.names,
            "within_values": [v for v, _ in filters.WITHIN],
            "older_values": [v for v, _ in filters.OLDER],
            "can_act": request.state.session.can_act,
            "flash": await console.flash(request),
        }
        try:
            selection, items = filters.selection(
                [(k, v) for k, v in params if k != "scope"], dialers=console.settings.dialers.names
            )
            cursor_text = request.query_params.get("cursor", "")
            cursor = Cursor.decode(cursor_text) if cursor_text else None
        except BadInput as exc:
            return console.render(
                request,
                "dead_letters.html",
                status_code=400,
                error=f"{exc.field}: {exc.message}",
                page=Page([], None),
                counts={},
                total=0,
                filter_items=[],
                filter_query="",
                cursor="",
                next_url="",
                first_url="",
                **common,
            )
        except ValueError:
            return console.refuse(request, 400, "Bad page", "cursor: not a page of this list")
        page, counts, total = await console.thread(self._list_data, selection, cursor)
        filter_items = [(k, v) for k, v in items if k != "scope"]
        # Keep the relative form (within=1h) in links: a bookmark stays "the last hour".
        link_items = [(k, v) for k, v in params if k in form and v]
        ui = request.scope.get("root_path", "")
        base = f"{ui}/dead-letters"
        next_url = (
            f"{base}?{urlencode([*link_items, ('cursor', page.next.encode())])}"
            if page.next
            else ""
        )
        return console.render(
            request,
            "dead_letters.html",
            page=page,
            counts=counts,
            total=total,
            filter_items=filter_items,
            filter_query=urlencode(filter_items),
            cursor=cursor_text,
            next_url=next_url,
            first_url=f"{base}?{urlencode(link_items)}",
            error="",
            **common,
        )

    def _list_data(
        self, selection: Selection, cursor: Cursor | None
    ) -> tuple[Page, dict[str, int], int | None]:
        store = self.console.store
        page = selection.page(store, after=cursor, limit=PAGE_SIZE, scan_budget=SCAN_BUDGET)
        counts = store.counts()
        total = selection.count(store) if selection.indexed else None
        return page, counts, total

    async def letter_page(self, request: Request) -> Response:
        console = self.console
        dl_id = request.path_params["dl_id"]
        if len(dl_id) > 200 or not dl_id.isprintable():
            return console.refuse(request, 404, "Not found", "No such dead letter.")
        letter, job = await console.thread(self._letter_and_job, dl_id)
        if letter is None:
            return console.refuse(
                request, 404, "Not found", "No such dead letter (replayed or purged already?)."
            )
        job_json = console.redact(json.dumps(letter.job, indent=2, ensure_ascii=False))
        lookup = None
        if letter.reason in AMBIGUOUS_REASONS:
            # Whether a reconcile can work now: the look-ups of the letter's dialer.
            dialer = console.settings.dialers.resolve_or_default(letter.dialer)
            status = await console.thread(fleet_status, console.backend)
            rows = lookup_rows(console.settings, status, redact=console.redact)
            lookup = next((r for r in rows if dialer and r["server"] == dialer.name), None)
        return console.render(
            request,
            "dead_letter.html",
            nav="dead-letters",
            letter=letter,
            job=job,
            job_json=job_json,
            lookup=lookup,
            reconcile_mode=console.settings.ambiguous,
            can_act=request.state.session.can_act,
            flash=await console.flash(request),
        )

    def _letter_and_job(self, dl_id: str) -> tuple[DeadLetter | None, dict[str, Any] | None]:
        letter = self.console.store.get(dl_id)
        if letter is None:
            return None, None
        return letter, job_state(self.console, letter.job_id)
