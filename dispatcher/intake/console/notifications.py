"""Outcome notifications (``/ui/notifications``): the backlog, and failed ones resent.

What ``dispatcher notify list|retry|purge`` does, in the browser: the counts (pending,
failed, the oldest pending's age), the pending events (due, waiting for a retry, or
waiting behind an earlier event of their job) and the failed ones with their last
error. Operators send failed ones again (ticked, or all) or purge them; each action is
logged ``console.notify_retry`` / ``console.notify_purge`` with the operator's name. A
receiver is shown by its origin only (a URL's path or query may hold a token).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from dispatcher.intake.console.context import Console, log
from dispatcher.intake.console.forms import MAX_IDS, Form, every, first
from dispatcher.intake.console.sessions import Session
from dispatcher.model.notifications import origin
from dispatcher.ops.notifications import (
    NotificationPage,
    list_notifications,
    purge_failed,
    retry_failed,
)

__all__ = ["Notifications"]

#: Events shown per list (the CLI's --limit shows more).
SHOWN = 100


class Notifications:
    """``GET /notifications``, ``POST /notifications/retry`` and ``/notifications/purge``."""

    def __init__(self, console: Console) -> None:
        self.console = console

    async def page(self, request: Request) -> Response:
        console = self.console
        pending: NotificationPage = await console.thread(
            list_notifications, console.backend, limit=SHOWN
        )
        failed: NotificationPage = await console.thread(
            list_notifications, console.backend, failed=True, limit=SHOWN
        )
        return console.render(
            request,
            "notifications.html",
            nav="notifications",
            flash=await console.flash(request),
            counts=failed.counts,
            pending=pending.events,
            failed=failed.events,
            receiver=_receiver,
            can_act=request.state.session.can_act,
            configured=bool(console.settings.notify_url or console.settings.notify_allowed),
        )

    async def retry(self, request: Request) -> Response:
        return await self._act(request, "retry")

    async def purge(self, request: Request) -> Response:
        return await self._act(request, "purge")

    async def _act(self, request: Request, verb: str) -> Response:
        console = self.console
        denied = console.forbidden_for_viewer(request)
        if denied is not None:
            return denied
        form: Form = request.state.form
        session: Session = request.state.session
        everything = first(form, "scope") == "all"
        ids = [] if everything else every(form, "id")[:MAX_IDS]
        if not everything and not ids:
            await console.set_flash(request, "No notification was ticked: nothing changed.")
        else:
            act = retry_failed if verb == "retry" else purge_failed
            n = await console.thread(act, console.backend, None if everything else ids)
            log.info(f"console.notify_{verb}", user=session.user, count=n, all=everything)
            done = "will be sent again" if verb == "retry" else "deleted for good"
            await console.set_flash(request, f"{n} failed notification(s) {done}.")
        ui = request.scope.get("root_path", "")
        return RedirectResponse(f"{ui}/notifications", status_code=303)


def _receiver(url: str) -> str:
    try:
        return origin(url)
    except ValueError:
        return "(not a URL)"
