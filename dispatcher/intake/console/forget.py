"""Erasure requests (``/ui/forget``): forget a phone number, as ``dispatcher forget``.

An operator types the number; the page first shows what would be erased (counts
by kind, nothing changed), then, confirmed, erases it for good
(:func:`dispatcher.ops.erasure.forget_phone`), logged ``console.forget``.
VICIdial's own copy is VICIdial's to erase: the page says so.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from dispatcher.intake.console.context import Console, log
from dispatcher.intake.console.forms import BadInput, Form, first
from dispatcher.intake.console.sessions import Session
from dispatcher.model.errors import InvalidLead
from dispatcher.ops.erasure import KINDS as ERASED_KINDS
from dispatcher.ops.erasure import VICIDIAL_NOTE, Erasure, forget_phone, normalise_phone

__all__ = ["Forget"]


class Forget:
    """``GET /forget`` (the form) and ``POST /forget`` (preview, then erase)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    async def page(self, request: Request) -> Response:
        denied = self.console.forbidden_for_viewer(request)
        if denied is not None:
            return denied
        return self._form(request, flash=await self.console.flash(request))

    async def forget(self, request: Request) -> Response:
        """Erase a phone number: a preview with the counts first, then (confirmed) for good."""
        console = self.console
        denied = console.forbidden_for_viewer(request)
        if denied is not None:
            return denied
        form: Form = request.state.form
        session: Session = request.state.session
        phone = first(form, "phone").strip()
        try:
            if len(phone) > 40:
                raise BadInput("phone", "at most 40 characters")
            digits = normalise_phone(phone, default_phone_code=console.settings.phone_code)
        except (InvalidLead, BadInput) as exc:
            why = (
                "; ".join(e.message for e in exc.errors)
                if isinstance(exc, InvalidLead)
                else exc.message
            )
            return self._form(request, status_code=400, phone=phone[:40], error=f"phone: {why}")
        if first(form, "confirm") != "yes":
            preview = await console.thread(
                forget_phone, console.backend, phone, dry_run=True, operator=session.user
            )
            return self._form(request, preview=preview, phone=phone)
        erasure = await console.thread(forget_phone, console.backend, phone, operator=session.user)
        log.info("console.forget", user=session.user, phone=digits, **erasure.counts)
        done = ", ".join(f"{n} {ERASED_KINDS.get(k, k)}" for k, n in erasure.counts.items() if n)
        await console.set_flash(
            request,
            f"Forgot {erasure.masked_phone}: {done or 'nothing was kept'}. {VICIDIAL_NOTE}",
        )
        ui = request.scope.get("root_path", "")
        return RedirectResponse(f"{ui}/forget", status_code=303)

    def _form(
        self,
        request: Request,
        *,
        status_code: int = 200,
        preview: Erasure | None = None,
        phone: str = "",
        error: str = "",
        flash: str = "",
    ) -> Response:
        return self.console.render(
            request,
            "forget.html",
            status_code=status_code,
            nav="forget",
            preview=preview,
            phone=phone,
            error=error,
            kinds=ERASED_KINDS,
            vicidial_note=VICIDIAL_NOTE,
            flash=flash,
        )
