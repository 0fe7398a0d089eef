"""The gate in front of every console route (pure ASGI, before the router).

The rules of DESIGN.md's "Operator console" are enforced here once for every
route, present or added later:

* no route but ``/ui/login`` answers without a live session: a GET is sent to
  the login page, anything else gets 403;
* every request that is not GET/HEAD must be a form post
  (``application/x-www-form-urlencoded``) carrying the session's CSRF token (the
  login form: the token of its own cookie), and an ``Origin`` header, when the
  browser sends one, must be this host. The gate parses the form and hands it to
  the handler (``request.state.form``), so no handler can forget the check;
* every answer carries a Content-Security-Policy with a per-request nonce (the
  page's own style and script are inline with that nonce: nothing is fetched,
  not even from this server), ``X-Frame-Options: DENY`` and ``Cache-Control:
  no-store``.

Roles are checked by the handlers that act (:meth:`.context.Console.forbidden_for_viewer`).
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatcher.intake.console.auth import LOGIN_COOKIE, SESSION_COOKIE
from dispatcher.intake.console.context import Console, log
from dispatcher.intake.console.forms import FORM_TYPE, MAX_IDS, cookies_of, first, route_path
from dispatcher.model.errors import BrokerUnavailable

__all__ = ["SECURITY_HEADERS", "Gate"]

SECURITY_HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
_REPLACED = {h for h, _ in SECURITY_HEADERS}


class Gate:
    """Session, CSRF, Origin and headers for every console route (see the module doc)."""

    def __init__(self, app: ASGIApp, console: Console) -> None:
        self.app = app
        self.console = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        nonce = secrets.token_urlsafe(16)
        state = scope.setdefault("state", {})
        state["nonce"] = nonce
        csp = (
            f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
            "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        ).encode()

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() not in _REPLACED
                ]
                headers += [*SECURITY_HEADERS, (b"content-security-policy", csp)]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self._gated(scope, receive, send_secured)
        except BrokerUnavailable as exc:
            log.error("console.redis_unavailable", error=str(exc))
            await HTMLResponse(
                "<!doctype html><title>Unavailable</title><p>Redis is unreachable; "
                "retry in a moment.</p>",
                status_code=503,
                headers={"Retry-After": "5"},
            )(scope, receive, send_secured)

    async def _gated(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope)
        method = str(scope.get("method", "GET"))
        cookies = cookies_of(scope)
        ui = str(scope.get("root_path", ""))
        state = scope["state"]
        safe = method in ("GET", "HEAD")
        if path != "/login":
            session = await run_in_threadpool(
                self.console.sessions.load, cookies.get(SESSION_COOKIE)
            )
            if session is None:
                if safe:
                    target = f"{ui}/login"
                    if path not in ("", "/"):
                        query = scope.get("query_string", b"").decode("latin-1")
                        here = ui + path + (f"?{query}" if query else "")
                        target += "?" + urlencode({"next": here})
                    await RedirectResponse(target, status_code=303)(scope, receive, send)
                else:
                    await self._refuse(scope, receive, send, 403, "Log in first.")
                return
            state["session"] = session
        if safe:
            await self.app(scope, receive, send)
            return
        # Everything else changes state: a same-origin form post with the right token.
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        origin = headers.get(b"origin")
        if origin is not None and not self._same_origin(origin, headers):
            await self._refuse(scope, receive, send, 403, "Cross-site request refused.")
            return
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().decode("latin-1")
        if ctype != FORM_TYPE:
            await self._refuse(scope, receive, send, 415, "Send the page's form.")
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            form = parse_qsl(
                body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_IDS + 50
            )
        except (UnicodeDecodeError, ValueError):
            await self._refuse(scope, receive, send, 400, "Unreadable form.")
            return
        expected = cookies.get(LOGIN_COOKIE, "") if path == "/login" else state["session"].csrf
        given = first(form, "csrf")
        if not expected or not given or not hmac.compare_digest(given.encode(), expected.encode()):
            session = state.get("session")
            log.warning("console.csrf_refused", user=session.user if session else None, path=path)
            if path == "/login":
                # An old login page (its cookie expired): show a fresh one.
                await RedirectResponse(f"{ui}/login", status_code=303)(scope, receive, send)
                return
            await self._refuse(
                scope, receive, send, 403, "The form expired or did not come from this console."
            )
            return
        state["form"] = form

        async def replay_body() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        await self.app(scope, replay_body, send)

    @staticmethod
    def _same_origin(origin: bytes, headers: dict[bytes, bytes]) -> bool:
        """The browser's Origin names this host (as the client or a reverse proxy saw it).

        The CSRF token is the defence; this is a second one. Behind a proxy that
        rewrites Host, the proxy's X-Forwarded-Host (nginx: ``proxy_set_header Host
        $host`` or ``X-Forwarded-Host $host``) carries the name the browser used.
        """
        if origin == b"null":
            return False
        netloc = urlsplit(origin.decode("latin-1")).netloc.encode()
        hosts = {headers.get(b"host", b"")}
        hosts.update(h.strip() for h in headers.get(b"x-forwarded-host", b"").split(b","))
        return bool(netloc) and netloc in hosts

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, message: str
    ) -> None:
        request = Request(scope, receive)
        response = self.console.refuse(request, status, "Refused", message)
        await response(scope, receive, send)
