"""What every room of the console shares: its settings and stores, and the page frame.

:class:`Console` is built once per app (:func:`.app.console_app`) and handed to
each room (:mod:`.auth`, :mod:`.overview`, :mod:`.dead_letters`, ...). It renders
pages (Jinja2, autoescaped, with the page's own style and script inline under the
request's CSP nonce), refuses with an error page, checks the role of a handler
that acts, and runs blocking Redis work in worker threads, as in the intake.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import Receive, Scope, Send

from dispatcher.config import logs
from dispatcher.config.redaction import redactor_for
from dispatcher.config.settings import Settings
from dispatcher.intake.console import formatting
from dispatcher.intake.console.forms import route_path
from dispatcher.intake.console.hashing import HashingPool
from dispatcher.intake.console.sessions import LoginThrottle, Session, SessionStore
from dispatcher.store.backend import Backend
from dispatcher.store.deadletter import DeadLetterStore
from dispatcher.store.users import UserStore

__all__ = ["Console", "log"]

#: The console's one logger: every event is ``console.<what>``.
log = logs.get_logger("dispatcher.console")


class Console:
    """The settings, the stores and the page frame, shared by every room."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend
        self.store = DeadLetterStore(backend)
        self.users = UserStore(backend)
        self.sessions = SessionStore(
            backend, idle_s=settings.console_idle_s, lifetime_s=settings.console_session_s
        )
        self.throttle = LoginThrottle(backend)
        # Argon2 on a small pool of its own: a flood of logins never takes the threads
        # and cores the intake's 202s need (hashing.py).
        self.hashing = HashingPool()
        self.redactor = redactor_for(tuple(s for s in settings.secrets if s))
        package = resources.files("dispatcher.intake.console")
        # Our own files, inlined under the page's CSP nonce: not to be HTML-escaped.
        self.css = Markup((package / "static" / "console.css").read_text(encoding="utf-8"))
        self.js = Markup((package / "static" / "console.js").read_text(encoding="utf-8"))
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("dispatcher.intake.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            when=formatting.when,
            age=formatting.age,
            minute=formatting.minute,
            masked_phone=lambda letter: logs.mask_phone(letter.phone),
            redact=self.redact,
            maskdigits=logs.mask_digits,
            rate=formatting.rate,
            value=formatting.value,
        )
        self.env.globals.update(reconcile_states=formatting.RECONCILE_STATES)

    def redact(self, text: object) -> str:
        """VICIdial's echo of the password, and every form of any configured secret,
        removed (the one redactor, :mod:`dispatcher.config.redaction`)."""
        return self.redactor(str(text or ""))

    def render(
        self, request: Request, template: str, *, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        session: Session | None = getattr(request.state, "session", None)
        flash = context.pop("flash", "")
        context.setdefault("nav", "")
        html = self.env.get_template(template).render(
            ui=request.scope.get("root_path", ""),
            session=session,
            nonce=request.state.nonce,
            css=self.css,
            js=self.js,
            flash=flash,
            **context,
        )
        return HTMLResponse(html, status_code=status_code)

    def refuse(self, request: Request, status_code: int, title: str, message: str) -> Response:
        return self.render(
            request, "error.html", status_code=status_code, title=title, message=message
        )

    async def not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The router's answer for a path no route has."""
        request = Request(scope, receive)
        response = self.refuse(request, 404, "Not found", "There is no such page.")
        await response(scope, receive, send)

    async def thread(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(func, *args, **kwargs)

    def forbidden_for_viewer(self, request: Request) -> Response | None:
        """None for an operator; for a viewer, the 403 page (and a log line)."""
        session: Session = request.state.session
        if session.can_act:
            return None
        log.warning("console.forbidden", user=session.user, path=route_path(request.scope))
        return self.refuse(
            request, 403, "Not allowed", "Your role (viewer) can read, not act; ask an operator."
        )

    async def flash(self, request: Request) -> str:
        """The session's one-time message (set before a redirect), taken."""
        session: Session = request.state.session
        return str(await self.thread(self.sessions.pop_flash, session))

    async def set_flash(self, request: Request, message: str) -> None:
        await self.thread(self.sessions.set_flash, request.state.session, message)
