"""Logging in and out of the console: the login page, the throttle, the session cookie.

A login is counted by the throttle *before* its password is checked (one atomic
Redis command: concurrent guesses cannot pass the limit, :mod:`.sessions`); the
check runs on the hashing pool (:mod:`.hashing`), never on the threads the intake
needs. A wrong password and an unknown user get the same answer. The login form
carries a token of its own cookie (there is no session yet to hold one), which the
gate checks like any other CSRF token.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from dispatcher.intake.console.context import Console, log
from dispatcher.intake.console.formatting import age
from dispatcher.intake.console.forms import Form, first
from dispatcher.intake.console.hashing import HashingBusy
from dispatcher.intake.console.sessions import Session
from dispatcher.store.users import MAX_PASSWORD_LENGTH

__all__ = ["LOGIN_COOKIE", "SESSION_COOKIE", "Auth"]

SESSION_COOKIE = "dispatcher_console"
#: The login form's own CSRF token (scoped to the login path, an hour at most).
LOGIN_COOKIE = "dispatcher_login"


class Auth:
    """``GET``/``POST /login`` and ``POST /logout``."""

    def __init__(self, console: Console) -> None:
        self.console = console

    async def login_page(self, request: Request) -> Response:
        return await self._form(request, next_url=request.query_params.get("next", ""))

    async def login(self, request: Request) -> Response:
        console = self.console
        form: Form = request.state.form
        username = first(form, "username").strip()
        password = first(form, "password")
        next_url = first(form, "next")
        client = (request.client.host if request.client else "") or "unknown"

        async def again(error: str, status_code: int) -> Response:
            return await self._form(
                request, next_url=next_url, username=username, error=error, status_code=status_code
            )

        if not username or not password or len(password) > MAX_PASSWORD_LENGTH:
            log.warning("console.login_refused", client=client, why="name or password missing")
            return await again("Wrong user name or password.", 401)
        # Counted before the check, in one atomic step: concurrent guesses cannot pass it.
        attempt = await console.thread(console.throttle.attempt, username, client)
        if not attempt.allowed:
            log.warning(
                "console.login_throttled",
                client=client,
                scope=attempt.scope,
                retry_after_s=round(attempt.retry_after_s),
            )
            whose = {
                "pair": "for this user from your address",
                "user": "for this user",
                "client": "from your address",
            }[attempt.scope]
            return await again(
                f"Too many failed logins {whose}. Try again in {age(attempt.retry_after_s)} "
                "(at most 15 minutes).",
                429,
            )
        try:
            user = await console.hashing.run(console.users.authenticate, username, password)
        except HashingBusy:
            await console.thread(console.throttle.uncount, username, client)
            log.warning("console.login_busy", client=client)
            return await again("Too many logins at once. Try again in a moment.", 503)
        if user is None:
            known = (await console.thread(console.users.get, username)) is not None
            log.warning("console.login_failed", user=username if known else None, client=client)
            return await again("Wrong user name or password.", 401)
        await console.thread(console.throttle.succeeded, username, client)
        token, _session = await console.thread(console.sessions.create, user)
        log.info("console.login", user=user.name, role=user.role, client=client)
        response = RedirectResponse(self._safe_next(request, next_url), status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=int(console.settings.console_session_s),
            path=request.scope.get("root_path", "") or "/",
            httponly=True,
            samesite="lax",
            secure=self._secure(request),
        )
        response.delete_cookie(LOGIN_COOKIE, path=request.scope.get("root_path", "") + "/login")
        return response

    async def logout(self, request: Request) -> Response:
        session: Session = request.state.session
        await self.console.thread(self.console.sessions.destroy, session.token_digest, session.user)
        log.info("console.logout", user=session.user)
        ui = request.scope.get("root_path", "")
        response = RedirectResponse(ui + "/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=ui or "/")
        return response

    async def _form(
        self,
        request: Request,
        *,
        next_url: str = "",
        error: str = "",
        username: str = "",
        status_code: int = 200,
    ) -> Response:
        token = secrets.token_urlsafe(24)
        no_users = (await self.console.thread(self.console.users.count)) == 0
        response = self.console.render(
            request,
            "login.html",
            status_code=status_code,
            login_csrf=token,
            next=self._safe_next(request, next_url),
            error=error,
            username=username,
            no_users=no_users,
        )
        response.set_cookie(
            LOGIN_COOKIE,
            token,
            max_age=3600,
            path=request.scope.get("root_path", "") + "/login",
            httponly=True,
            samesite="strict",
            secure=self._secure(request),
        )
        return response

    @staticmethod
    def _safe_next(request: Request, next_url: str) -> str:
        """Only a path of this console: never another site after logging in."""
        ui = str(request.scope.get("root_path", ""))
        if (
            next_url.startswith(ui + "/")
            and not next_url.startswith("//")
            and "\\" not in next_url
            and not urlsplit(next_url).netloc
            and next_url.isprintable()
        ):
            return next_url
        return ui + "/"

    def _secure(self, request: Request) -> bool:
        """Whether cookies get ``Secure`` (DISPATCHER_CONSOLE_SECURE_COOKIE; auto: https)."""
        mode = self.console.settings.console_secure_cookie
        return mode == "true" or (mode == "auto" and request.url.scheme == "https")
