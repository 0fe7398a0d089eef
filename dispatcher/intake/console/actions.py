"""Acting on dead letters: replay, reconcile and purge, each previewed, then confirmed.

A GET of an action (or a POST without ``confirm=yes``) shows what it would do:
how many letters of each reason, which are held back (DNC and ambiguous letters
from a replay, unless included with a reason typed in), and for a reconcile
whether the look-ups work and a worker is alive. The confirmation carries the
canonical selection the preview showed (:mod:`.filters`), so it acts on the
same letters. The work itself is :mod:`dispatcher.ops.dlq`'s, shared with
``dispatcher dlq``; each action is logged ``console.<verb>`` with the operator.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from dispatcher.config import logs
from dispatcher.intake.console import filters
from dispatcher.intake.console.context import Console, log
from dispatcher.intake.console.formatting import utc
from dispatcher.intake.console.forms import BadInput, Form, first
from dispatcher.intake.console.lookups import lookup_rows
from dispatcher.intake.console.sessions import Session
from dispatcher.ops.dlq import (
    ReconcileSummary,
    ReplaySummary,
    purge_letters,
    reconcile_letters,
    replay_letters,
)
from dispatcher.ops.selection import AMBIGUOUS_REASONS, DNC_REASONS, Selection, held_reasons
from dispatcher.ops.status import fleet_status

__all__ = ["Actions"]


def _verb(request: Request) -> str:
    """replay, purge or reconcile: the last part of the action's path."""
    return request.url.path.rsplit("/", 1)[-1]


def _sentence(text: str) -> str:
    """A summary's sentence as a flash: capitalised, with its full stop."""
    return text[:1].upper() + text[1:] + "."


class Actions:
    """``GET`` (preview) and ``POST`` (act) of ``/dead-letters/{replay,purge,reconcile}``."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def _selection(self, params: Form) -> tuple[Selection, Form]:
        return filters.selection(params, dialers=self.console.settings.dialers.names)

    async def preview(self, request: Request) -> Response:
        verb = _verb(request)
        denied = self.console.forbidden_for_viewer(request)
        if denied is not None:
            return denied
        params: Form = list(request.query_params.multi_items())
        return await self._confirm_page(request, verb, params)

    async def _confirm_page(
        self, request: Request, verb: str, params: Form, *, error: str = "", status_code: int = 200
    ) -> Response:
        console = self.console
        try:
            selection, items = self._selection(params)
        except BadInput as exc:
            return console.refuse(request, 400, "Nothing selected", f"{exc.field}: {exc.message}")
        by_reason = await console.thread(selection.by_reason, console.store)
        total = sum(by_reason.values())
        held_dnc = sum(by_reason.get(r, 0) for r in DNC_REASONS) if verb == "replay" else 0
        held_amb = sum(by_reason.get(r, 0) for r in AMBIGUOUS_REASONS) if verb == "replay" else 0
        kept = total - held_dnc - held_amb
        lookups: list[dict[str, Any]] = []
        workers: list[str] = []
        if verb == "reconcile":
            kept = sum(by_reason.get(r, 0) for r in AMBIGUOUS_REASONS)
            status = await console.thread(fleet_status, console.backend)
            rows = lookup_rows(console.settings, status, redact=console.redact)
            lookups = [row for row in rows if row["state"] not in ("ok", None)]
            workers = status["workers"]
        ui = request.scope.get("root_path", "")
        back_items = [(k, v) for k, v in params if k in filters.FILTERS]
        if selection.ids and len(selection.ids) == 1:
            back_url = f"{ui}/dead-letters/{quote(selection.ids[0], safe='')}"
        else:
            back_url = f"{ui}/dead-letters?{urlencode(back_items)}"
        return console.render(
            request,
            "confirm.html",
            status_code=status_code,
            nav="dead-letters",
            verb=verb,
            describe=filters.describe(selection),
            by_reason=sorted(by_reason.items(), key=lambda kv: -kv[1]),
            total=total,
            kept=kept,
            held_dnc=held_dnc,
            held_ambiguous=held_amb,
            include_dnc=first(params, "include_dnc") == "yes",
            include_ambiguous=first(params, "include_ambiguous") == "yes",
            note=first(params, "note"),
            selection_items=items,
            back_url=back_url,
            error=error,
            lookups=lookups,
            workers=workers,
            settings=console.settings,
        )

    async def act(self, request: Request) -> Response:
        console = self.console
        verb = _verb(request)
        denied = console.forbidden_for_viewer(request)
        if denied is not None:
            return denied
        form: Form = request.state.form
        session: Session = request.state.session
        try:
            selection, items = self._selection(form)
        except BadInput as exc:
            return console.refuse(request, 400, "Nothing selected", f"{exc.field}: {exc.message}")
        if first(form, "confirm") != "yes":
            return await self._confirm_page(request, verb, form)
        note = first(form, "note").strip()[:500]
        include_dnc = verb == "replay" and first(form, "include_dnc") == "yes"
        include_amb = verb == "replay" and first(form, "include_ambiguous") == "yes"
        if (include_dnc or include_amb) and not note:
            return await self._confirm_page(
                request,
                verb,
                form,
                error="Type the reason for including DNC or ambiguous letters.",
                status_code=400,
            )
        held = held_reasons(include_dnc=include_dnc, include_ambiguous=include_amb)
        if verb == "replay" and selection.ids and not (include_dnc and include_amb):
            # Named letters that need confirmation are never skipped silently: ask.
            letters = await console.thread(lambda: list(selection.iter(console.store)))
            if any(letter.reason in held for letter in letters):
                return await self._confirm_page(request, verb, form)
        log_fields: dict[str, Any] = {
            "user": session.user,
            "selection": filters.describe(selection),
            "reason": selection.reason,
            "dialer": selection.dialer,
            "agent_user": selection.agent_user,
            "ids": len(selection.ids) or None,
            "note": logs.mask_digits(note) or None,
        }
        if verb == "replay":
            outcomes = await console.thread(
                replay_letters,
                console.store,
                selection.iter(console.store),
                held=held,
                user=session.user,
            )
            replayed = ReplaySummary.of(outcomes)
            log.info(
                "console.replay",
                include_dnc=include_dnc,
                include_ambiguous=include_amb,
                **replayed.as_dict(),
                **log_fields,
            )
            message = _sentence(replayed.sentence())
        elif verb == "reconcile":
            reconciled = await console.thread(self._reconcile, selection, session.user)
            log.info("console.reconcile", **reconciled.as_dict(), **log_fields)
            first_due = reconciled.first_due
            message = _sentence(reconciled.sentence("" if first_due is None else utc(first_due)))
        else:
            deleted = await console.thread(
                purge_letters, console.store, selection.iter(console.store), user=session.user
            )
            log.info("console.purge", purged=deleted, **log_fields)
            message = f"Purged {deleted} dead letter(s) for good."
        await console.set_flash(request, message)
        ui = request.scope.get("root_path", "")
        if verb != "purge" and len(selection.ids) == 1:
            target = f"{ui}/jobs/{quote(selection.ids[0], safe='')}"
        else:
            back = [(k, v) for k, v in items if k in filters.FILTERS]
            target = f"{ui}/dead-letters?{urlencode(back)}"
        return RedirectResponse(target, status_code=303)

    def _reconcile(self, selection: Selection, user: str) -> ReconcileSummary:
        """Hand the selected ambiguous letters to the workers (as `dlq reconcile`)."""
        store = self.console.store
        if selection.ids or selection.reason in AMBIGUOUS_REASONS:
            return reconcile_letters(store, selection.iter(store), user=user)
        # Only the ambiguous letters are read; the others are counted.
        by_reason = selection.by_reason(store)
        others = sum(n for r, n in by_reason.items() if r not in AMBIGUOUS_REASONS)
        if selection.reason is not None:
            return reconcile_letters(store, (), left_alone=others, user=user)
        ambiguous = replace(selection, reason=AMBIGUOUS_REASONS[0]).iter(store)
        return reconcile_letters(store, ambiguous, left_alone=others, user=user)
