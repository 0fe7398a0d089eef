"""The console's routes, and the gate in front of them.

:class:`_Gate` (pure ASGI, in front of the console's router) is where the rules
of DESIGN.md's "Operator console" are enforced once for every route, present or
added later:

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

Roles are checked by the handlers that act (:meth:`Console.operator`). Blocking
Redis work runs in worker threads, as in the intake.
"""

from __future__ import annotations

import csv
import hmac
import io
import json
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import jinja2
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatcher.config import logs
from dispatcher.config.redaction import redactor_for
from dispatcher.config.settings import Settings
from dispatcher.intake.console.chart import activity_svg
from dispatcher.intake.console.hashing import HashingBusy, HashingPool
from dispatcher.intake.console.sessions import LoginThrottle, Session, SessionStore
from dispatcher.model.dialers import Dialer
from dispatcher.model.errors import BrokerUnavailable, InvalidLead, all_reasons
from dispatcher.ops.erasure import KINDS as ERASED_KINDS
from dispatcher.ops.erasure import VICIDIAL_NOTE, Erasure, forget_phone, normalise_phone
from dispatcher.ops.producer import job_status
from dispatcher.ops.selection import (
    AMBIGUOUS_REASONS,
    DNC_REASONS,
    Cursor,
    Page,
    Selection,
    held_reasons,
    parse_duration,
    replay_letters,
)
from dispatcher.ops.status import fleet_status
from dispatcher.store.activity import read_activity
from dispatcher.store.backend import Backend
from dispatcher.store.deadletter import DeadLetter, DeadLetterStore
from dispatcher.store.users import MAX_PASSWORD_LENGTH, UserStore

__all__ = ["SESSION_COOKIE", "console_app"]

SESSION_COOKIE = "dispatcher_console"
LOGIN_COOKIE = "dispatcher_login"
PAGE_SIZE = 50
#: Records read at most per list page when agent/phone filters need reading them.
SCAN_BUDGET = 1000
#: Most letter ids one form may name.
MAX_IDS = 1000
#: The list's filter fields, in the order they are shown and kept in links.
_FILTERS = ("reason", "dialer", "agent", "phone4", "within", "older")
_AGENT_RE = re.compile(r"^[-_0-9a-zA-Z]{1,20}$")
_PHONE4_RE = re.compile(r"^[0-9]{1,4}$")
_FORM_TYPE = "application/x-www-form-urlencoded"
_WITHIN: tuple[tuple[str, str], ...] = (
    ("", "any time"),
    ("15m", "15 minutes"),
    ("1h", "1 hour"),
    ("6h", "6 hours"),
    ("24h", "24 hours"),
    ("7d", "7 days"),
    ("30d", "30 days"),
)
_OLDER: tuple[tuple[str, str], ...] = (
    ("", "any age"),
    ("1h", "1 hour"),
    ("24h", "24 hours"),
    ("7d", "7 days"),
    ("30d", "30 days"),
)
_log = logs.get_logger("dispatcher.console")

Form = list[tuple[str, str]]


class _BadInput(Exception):
    """A filter or form field that cannot be used: (field, why)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _first(form: Form, name: str, default: str = "") -> str:
    return next((v for k, v in form if k == name), default)


def _all(form: Form, name: str) -> list[str]:
    return [v for k, v in form if k == name]


def _route_path(scope: Scope) -> str:
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


def _cookies(scope: Scope) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed cookie header: ignore it, as browsers do
                continue
    return {k: m.value for k, m in jar.items()}


def _when(value: object) -> str:
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: object) -> str:
    if seconds is None or seconds == "":
        return ""
    s = float(str(seconds))
    if 0 < s < 1:
        return f"{s:.1f} s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 36 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _phone(letter: DeadLetter) -> str:
    lead = letter.job.get("lead")
    return str(lead.get("phone_number", "")) if isinstance(lead, dict) else ""


def _verb(request: Request) -> str:
    """replay, purge or reconcile: the last part of the action's path."""
    return request.url.path.rsplit("/", 1)[-1]


def _value(value: object) -> str:
    """A job-state value for people: lists joined, nothing for null."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _rate(limit: object) -> str:
    value = float(str(limit or 0))
    if value <= 0:
        return "none"
    return f"{value:g}/s"


#: What the ``reconcile`` field of a job's state means (execution.lua).
RECONCILE_STATES = {
    "pending": "a look-up in VICIdial is due (the call's answer never came)",
    "found": "found in VICIdial: added with that lead",
    "duplicates": "found in VICIdial more than once: added with the oldest lead",
    "verifying": "called again after a look-up found nothing; a verification look-up is due",
    "verified": "the verification look-up found no other copy",
    "unverified": "VICIdial holds leads of this phone the API user cannot read "
    "(unverified_lead_ids): they may be copies; check them by hand",
}
#: What a look-up state means (fleet_status()["reconcile"]["lookups"]).
LOOKUP_STATES = {
    "ok": "permitted",
    "denied": "NOT permitted",
    "refused": "REFUSED (login)",
    "unavailable": "unavailable",
    None: "not checked yet",
}


class Console:
    """The handlers, bound to one Settings and its Redis backend."""

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
        self.secrets = tuple(s for s in settings.secrets if s)
        self.redactor = redactor_for(self.secrets)
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
            when=_when,
            age=_age,
            minute=lambda epoch: datetime.fromtimestamp(float(epoch), UTC).strftime("%H:%M"),
            masked_phone=lambda letter: logs.mask_phone(_phone(letter)) if _phone(letter) else "",
            redact=self.redact,
            maskdigits=logs.mask_digits,
            rate=_rate,
            value=_value,
        )
        self.env.globals.update(reconcile_states=RECONCILE_STATES)

    # -- helpers ------------------------------------------------------------------------

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

    async def thread(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(func, *args, **kwargs)

    def secure(self, request: Request) -> bool:
        mode = self.settings.console_secure_cookie
        return mode == "true" or (mode == "auto" and request.url.scheme == "https")

    def forbidden_for_viewer(self, request: Request) -> Response | None:
        session: Session = request.state.session
        if session.can_act:
            return None
        _log.warning("console.forbidden", user=session.user, path=_route_path(request.scope))
        return self.refuse(
            request, 403, "Not allowed", "Your role (viewer) can read, not act; ask an operator."
        )

    async def flash(self, request: Request) -> str:
        session: Session = request.state.session
        return str(await self.thread(self.sessions.pop_flash, session))

    # -- login / logout -----------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        return await self._login_form(request, next_url=request.query_params.get("next", ""))

    async def _login_form(
        self,
        request: Request,
        *,
        next_url: str = "",
        error: str = "",
        username: str = "",
        status_code: int = 200,
    ) -> Response:
        token = secrets.token_urlsafe(24)
        no_users = (await self.thread(self.users.count)) == 0
        response = self.render(
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
            secure=self.secure(request),
        )
        return response

    def _safe_next(self, request: Request, next_url: str) -> str:
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

    async def login(self, request: Request) -> Response:
        form: Form = request.state.form
        username = _first(form, "username").strip()
        password = _first(form, "password")
        next_url = _first(form, "next")
        client = (request.client.host if request.client else "") or "unknown"

        async def again(error: str, status_code: int) -> Response:
            return await self._login_form(
                request, next_url=next_url, username=username, error=error, status_code=status_code
            )

        if not username or not password or len(password) > MAX_PASSWORD_LENGTH:
            _log.warning("console.login_refused", client=client, why="name or password missing")
            return await again("Wrong user name or password.", 401)
        # Counted before the check, in one atomic step: concurrent guesses cannot pass it.
        attempt = await self.thread(self.throttle.attempt, username, client)
        if not attempt.allowed:
            _log.warning(
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
                f"Too many failed logins {whose}. Try again in {_age(attempt.retry_after_s)} "
                "(at most 15 minutes).",
                429,
            )
        try:
            user = await self.hashing.run(self.users.authenticate, username, password)
        except HashingBusy:
            await self.thread(self.throttle.uncount, username, client)
            _log.warning("console.login_busy", client=client)
            return await again("Too many logins at once. Try again in a moment.", 503)
        if user is None:
            known = (await self.thread(self.users.get, username)) is not None
            _log.warning("console.login_failed", user=username if known else None, client=client)
            return await again("Wrong user name or password.", 401)
        await self.thread(self.throttle.succeeded, username, client)
        token, _session = await self.thread(self.sessions.create, user)
        _log.info("console.login", user=user.name, role=user.role, client=client)
        response = RedirectResponse(self._safe_next(request, next_url), status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=int(self.settings.console_session_s),
            path=request.scope.get("root_path", "") or "/",
            httponly=True,
            samesite="lax",
            secure=self.secure(request),
        )
        response.delete_cookie(LOGIN_COOKIE, path=request.scope.get("root_path", "") + "/login")
        return response

    async def logout(self, request: Request) -> Response:
        session: Session = request.state.session
        await self.thread(self.sessions.destroy, session.token_digest, session.user)
        _log.info("console.logout", user=session.user)
        ui = request.scope.get("root_path", "")
        response = RedirectResponse(ui + "/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=ui or "/")
        return response

    # -- overview -----------------------------------------------------------------------

    def _overview_data(self) -> dict[str, Any]:
        now = time.time()
        status = fleet_status(self.backend, now=now)
        minutes = read_activity(self.backend, now=now)
        return {
            "status": status,
            "minutes": minutes,
            "oldest_queued_age": self._oldest_queued_age(status),
        }

    @staticmethod
    def _oldest_queued_age(status: dict[str, Any]) -> float | None:
        """How long the next job of the most lagging dialer's lane has waited."""
        ages = [
            d["oldest_queued_age_s"]
            for d in status.get("dialers", {}).values()
            if d.get("oldest_queued_age_s") is not None
        ]
        return max(ages) if ages else None

    def _lookup_rows(self, status: dict[str, Any]) -> list[dict[str, Any]]:
        """Whether each dialer's look-ups work (reconciliation), and what to fix if not."""
        lookups: dict[str, dict[str, Any]] = status["reconcile"]["lookups"]
        names = [*self.settings.dialers.names]
        names += sorted(s for s in lookups if s not in self.settings.dialers.by_name)
        rows = []
        for name in names:
            data = lookups.get(name, {})
            state = data.get("state")
            rows.append(
                {
                    "server": name,
                    "state": state,
                    "label": LOOKUP_STATES.get(state, str(state))
                    # lead_search missing: found leads are found, absent ones never proven
                    + (", but not lead_search" if state == "ok" and data.get("missing") else ""),
                    "checked_at": data.get("checked_at"),
                    "missing": data.get("missing") or "",
                    "error": self.redact(data.get("error") or ""),
                    "fix": data.get("fix") or "",
                }
            )
        return rows

    async def overview(self, request: Request) -> Response:
        data = await self.thread(self._overview_data)
        minutes = data["minutes"]
        hour = {
            "added": sum(m.added or 0 for m in minutes),
            "dead": sum(m.dead or 0 for m in minutes),
        }
        return self.render(
            request,
            "overview.html",
            nav="overview",
            flash=await self.flash(request),
            chart=activity_svg(minutes),
            hour=hour,
            dead_total=sum(data["status"]["dead_letters"].values()),
            lookup_rows=self._lookup_rows(data["status"]),
            can_act=request.state.session.can_act,
            **data,
        )

    # -- selection from a query or a form -----------------------------------------------

    def selection(self, params: Form, *, now: float | None = None) -> tuple[Selection, Form]:
        """The Selection a filter form or an action form means, and its canonical fields.

        Relative ages (``within``, ``older``) become absolute times (``since_ts``,
        ``until_ts``) in the canonical fields, so that a confirmation acts on the
        same window it previewed.
        """
        now = time.time() if now is None else now
        items: Form = []
        scope = _first(params, "scope", "matching")
        if scope not in ("matching", "selected"):
            raise _BadInput("scope", "must be matching or selected")
        items.append(("scope", scope))
        ids: tuple[str, ...] = ()
        if scope == "selected":
            ids = tuple(dict.fromkeys(i.strip() for i in _all(params, "id") if i.strip()))
            if not ids:
                raise _BadInput("id", "select at least one dead letter")
            if len(ids) > MAX_IDS:
                raise _BadInput("id", f"at most {MAX_IDS} letters at once; use a filter")
            if any(len(i) > 200 or not i.isprintable() for i in ids):
                raise _BadInput("id", "not a dead-letter id")
            items += [("id", i) for i in ids]
        reason = _first(params, "reason").strip() or None
        if reason is not None and reason not in all_reasons():
            raise _BadInput("reason", f"unknown reason {reason!r}")
        agent = _first(params, "agent").strip() or None
        if agent is not None and not _AGENT_RE.match(agent):
            raise _BadInput("agent", "2-20 of letters, digits, '-' and '_'")
        phone4 = _first(params, "phone4").strip() or None
        if phone4 is not None and not _PHONE4_RE.match(phone4):
            raise _BadInput("phone4", "the last 1-4 digits of the phone number")
        dialer = _first(params, "dialer").strip() or None
        names = self.settings.dialers.names
        if dialer is not None and dialer not in names:
            raise _BadInput("dialer", f"unknown dialer {dialer!r} (known: {', '.join(names)})")
        since = self._time(params, "since_ts", "within", now)
        until = self._time(params, "until_ts", "older", now)
        for key, value in (
            ("reason", reason),
            ("dialer", dialer),
            ("agent", agent),
            ("phone4", phone4),
        ):
            if value is not None:
                items.append((key, value))
        if since is not None:
            items.append(("since_ts", repr(since)))
        if until is not None:
            items.append(("until_ts", repr(until)))
        selection = Selection(
            ids=ids,
            reason=reason,
            agent_user=agent,
            since=since,
            until=until,
            phone_last4=phone4,
            dialer=dialer,
        )
        return selection, items

    @staticmethod
    def _time(params: Form, absolute: str, relative: str, now: float) -> float | None:
        text = _first(params, absolute).strip()
        if text:
            try:
                value = float(text)
            except ValueError:
                raise _BadInput(absolute, "not a time") from None
            if not 0 <= value < 1e11:
                raise _BadInput(absolute, "not a time")
            return value
        text = _first(params, relative).strip()
        if not text:
            return None
        try:
            return now - parse_duration(text)
        except ValueError as exc:
            raise _BadInput(relative, str(exc)) from None

    @staticmethod
    def describe(selection: Selection) -> str:
        parts = []
        if selection.ids:
            parts.append(f"{len(selection.ids)} selected letter(s)")
        else:
            parts.append("every dead letter")
        if selection.reason:
            parts.append(f"with reason {selection.reason}")
        if selection.dialer:
            parts.append(f"of dialer {selection.dialer}")
        if selection.agent_user:
            parts.append(f"for agent {selection.agent_user}")
        if selection.phone_last4:
            parts.append(f"whose phone ends with {selection.phone_last4}")
        if selection.since is not None:
            parts.append(f"failed since {_utc(selection.since)}")
        if selection.until is not None:
            parts.append(f"failed before {_utc(selection.until)}")
        text = " ".join(parts)
        return text[:1].upper() + text[1:] + "."

    # -- dead letters -------------------------------------------------------------------

    async def dead_letters(self, request: Request) -> Response:
        params: Form = list(request.query_params.multi_items())
        form = {k: request.query_params.get(k, "") for k in _FILTERS}
        common = {
            "nav": "dead-letters",
            "form": form,
            "reasons": sorted(all_reasons()),
            "within_choices": _WITHIN,
            "older_choices": _OLDER,
            "dialers": self.settings.dialers.names,
            "within_values": [v for v, _ in _WITHIN],
            "older_values": [v for v, _ in _OLDER],
            "can_act": request.state.session.can_act,
            "flash": await self.flash(request),
        }
        try:
            selection, items = self.selection([(k, v) for k, v in params if k != "scope"])
            cursor_text = request.query_params.get("cursor", "")
            cursor = Cursor.decode(cursor_text) if cursor_text else None
        except _BadInput as exc:
            return self.render(
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
            return self.refuse(request, 400, "Bad page", "cursor: not a page of this list")
        page, counts, total = await self.thread(self._list_data, selection, cursor)
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
        return self.render(
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
        page = selection.page(self.store, after=cursor, limit=PAGE_SIZE, scan_budget=SCAN_BUDGET)
        counts = self.store.counts()
        total = selection.count(self.store) if selection.indexed else None
        return page, counts, total

    async def dead_letter(self, request: Request) -> Response:
        dl_id = request.path_params["dl_id"]
        if len(dl_id) > 200 or not dl_id.isprintable():
            return self.refuse(request, 404, "Not found", "No such dead letter.")
        letter, job = await self.thread(self._letter_and_job, dl_id)
        if letter is None:
            return self.refuse(
                request, 404, "Not found", "No such dead letter (replayed or purged already?)."
            )
        job_json = self.redact(json.dumps(letter.job, indent=2, ensure_ascii=False))
        lookup = None
        if letter.reason in AMBIGUOUS_REASONS:
            # Whether a reconcile can work now: the look-ups of the letter's dialer.
            dialer = self._dialer_of(letter)
            status = await self.thread(fleet_status, self.backend)
            lookup = next(
                (r for r in self._lookup_rows(status) if dialer and r["server"] == dialer.name),
                None,
            )
        return self.render(
            request,
            "dead_letter.html",
            nav="dead-letters",
            letter=letter,
            job=job,
            job_json=job_json,
            lookup=lookup,
            reconcile_mode=self.settings.ambiguous,
            can_act=request.state.session.can_act,
            flash=await self.flash(request),
        )

    def _dialer_of(self, letter: DeadLetter) -> Dialer | None:
        """The dialer a letter's job goes to (the default one for an unknown or no name)."""
        dialers = self.settings.dialers
        return dialers.resolve(letter.dialer) or dialers.resolve(None)

    def _letter_and_job(self, dl_id: str) -> tuple[DeadLetter | None, dict[str, Any] | None]:
        letter = self.store.get(dl_id)
        if letter is None:
            return None, None
        return letter, self._job(letter.job_id)

    def _job(self, job_id: str) -> dict[str, Any] | None:
        """The job's state, its error line redacted (workers store it redacted already)."""
        job = job_status(job_id, settings=self.settings)
        if job is not None and job.get("error"):
            job["error"] = self.redact(job["error"])
        return job

    # -- actions ------------------------------------------------------------------------

    async def preview(self, request: Request) -> Response:
        verb = _verb(request)
        denied = self.forbidden_for_viewer(request)
        if denied is not None:
            return denied
        params: Form = list(request.query_params.multi_items())
        return await self._confirm_page(request, verb, params)

    async def _confirm_page(
        self, request: Request, verb: str, params: Form, *, error: str = "", status_code: int = 200
    ) -> Response:
        try:
            selection, items = self.selection(params)
        except _BadInput as exc:
            return self.refuse(request, 400, "Nothing selected", f"{exc.field}: {exc.message}")
        by_reason = await self.thread(selection.by_reason, self.store)
        total = sum(by_reason.values())
        held_dnc = sum(by_reason.get(r, 0) for r in DNC_REASONS) if verb == "replay" else 0
        held_amb = sum(by_reason.get(r, 0) for r in AMBIGUOUS_REASONS) if verb == "replay" else 0
        kept = total - held_dnc - held_amb
        lookups: list[dict[str, Any]] = []
        workers: list[str] = []
        if verb == "reconcile":
            kept = sum(by_reason.get(r, 0) for r in AMBIGUOUS_REASONS)
            status = await self.thread(fleet_status, self.backend)
            lookups = [row for row in self._lookup_rows(status) if row["state"] not in ("ok", None)]
            workers = status["workers"]
        ui = request.scope.get("root_path", "")
        back_items = [(k, v) for k, v in params if k in _FILTERS]
        if selection.ids and len(selection.ids) == 1:
            back_url = f"{ui}/dead-letters/{quote(selection.ids[0], safe='')}"
        else:
            back_url = f"{ui}/dead-letters?{urlencode(back_items)}"
        return self.render(
            request,
            "confirm.html",
            status_code=status_code,
            nav="dead-letters",
            verb=verb,
            describe=self.describe(selection),
            by_reason=sorted(by_reason.items(), key=lambda kv: -kv[1]),
            total=total,
            kept=kept,
            held_dnc=held_dnc,
            held_ambiguous=held_amb,
            include_dnc=_first(params, "include_dnc") == "yes",
            include_ambiguous=_first(params, "include_ambiguous") == "yes",
            note=_first(params, "note"),
            selection_items=items,
            back_url=back_url,
            error=error,
            lookups=lookups,
            workers=workers,
            settings=self.settings,
        )

    async def act(self, request: Request) -> Response:
        verb = _verb(request)
        denied = self.forbidden_for_viewer(request)
        if denied is not None:
            return denied
        form: Form = request.state.form
        session: Session = request.state.session
        try:
            selection, items = self.selection(form)
        except _BadInput as exc:
            return self.refuse(request, 400, "Nothing selected", f"{exc.field}: {exc.message}")
        if _first(form, "confirm") != "yes":
            return await self._confirm_page(request, verb, form)
        note = _first(form, "note").strip()[:500]
        include_dnc = verb == "replay" and _first(form, "include_dnc") == "yes"
        include_amb = verb == "replay" and _first(form, "include_ambiguous") == "yes"
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
            letters = await self.thread(lambda: list(selection.iter(self.store)))
            if any(letter.reason in held for letter in letters):
                return await self._confirm_page(request, verb, form)
        log_fields: dict[str, Any] = {
            "user": session.user,
            "selection": self.describe(selection),
            "reason": selection.reason,
            "dialer": selection.dialer,
            "agent_user": selection.agent_user,
            "ids": len(selection.ids) or None,
            "note": logs.mask_digits(note) or None,
        }
        if verb == "replay":
            outcomes = await self.thread(
                replay_letters, self.store, selection.iter(self.store), held=held, user=session.user
            )
            summary = {
                "replayed": outcomes["replayed"],
                "already_added": outcomes["done"],
                "gone": outcomes["missing"],
                "unreplayable": outcomes["unreplayable"],
                "skipped_dnc": outcomes["skipped_dnc"],
                "skipped_ambiguous": outcomes["skipped_ambiguous"],
            }
            _log.info(
                "console.replay",
                include_dnc=include_dnc,
                include_ambiguous=include_amb,
                **summary,
                **log_fields,
            )
            message = (
                f"Replayed {summary['replayed']}; {summary['already_added']} were added after all "
                f"(removed, not sent); {summary['gone']} already gone; {summary['unreplayable']} "
                f"not replayable; {summary['skipped_dnc']} DNC and "
                f"{summary['skipped_ambiguous']} ambiguous left alone."
            )
        elif verb == "reconcile":
            summary, first_due = await self.thread(self._reconcile, selection, session.user)
            _log.info("console.reconcile", **summary, **log_fields)
            when = f" from {_utc(first_due)}" if first_due is not None else ""
            message = (
                f"Handed {summary['reconciling']} letter(s) to the workers: each lead is looked "
                f"up in VICIdial{when}, then marked added, called again, or written back as a "
                f"dead letter saying why. {summary['already_added']} were added after all "
                f"(removed, nothing sent); {summary['gone']} already gone; {summary['busy']} "
                f"held by a worker right now (try again); {summary['left_alone']} not "
                "ambiguous, left alone."
            )
        else:
            deleted = await self.thread(self._purge, selection, session.user)
            _log.info("console.purge", purged=deleted, **log_fields)
            message = f"Purged {deleted} dead letter(s) for good."
        await self.thread(self.sessions.set_flash, session, message)
        ui = request.scope.get("root_path", "")
        if verb != "purge" and len(selection.ids) == 1:
            target = f"{ui}/jobs/{quote(selection.ids[0], safe='')}"
        else:
            back = [(k, v) for k, v in items if k in _FILTERS]
            target = f"{ui}/dead-letters?{urlencode(back)}"
        return RedirectResponse(target, status_code=303)

    def _reconcile(self, selection: Selection, user: str) -> tuple[dict[str, int], float | None]:
        """Hand the selected ambiguous letters to the workers (as `dlq reconcile`)."""
        outcomes: Counter[str] = Counter()
        if selection.ids or selection.reason in AMBIGUOUS_REASONS:
            letters = selection.iter(self.store)
        else:
            # Only the ambiguous letters are read; the others are counted.
            by_reason = selection.by_reason(self.store)
            outcomes["left_alone"] = sum(
                n for r, n in by_reason.items() if r not in AMBIGUOUS_REASONS
            )
            letters = (
                replace(selection, reason=AMBIGUOUS_REASONS[0]).iter(self.store)
                if selection.reason is None
                else iter(())
            )
        released: set[str] = set()
        first_due: float | None = None
        after_s = self.settings.reconcile_after_s
        for letter in letters:
            if letter.reason not in AMBIGUOUS_REASONS:
                outcomes["left_alone"] += 1
                continue
            dialer = self._dialer_of(letter)
            if dialer is not None and dialer.name not in released:
                # The operator says the cause is fixed: the next look-up tries again at once.
                self.backend.execution.lookup_release(dialer.name)
                released.add(dialer.name)
            result = self.store.reconcile(letter)
            outcomes[result] += 1
            if result == "reconciling":
                due = max(time.time(), letter.score + after_s)
                first_due = due if first_due is None else min(first_due, due)
                _log.info(
                    "dlq.reconcile_requested", job_id=letter.job_id, reason=letter.reason, user=user
                )
        summary = {
            "reconciling": outcomes["reconciling"],
            "already_added": outcomes["done"],
            "gone": outcomes["missing"],
            "busy": outcomes["busy"],
            "unreplayable": outcomes["unreplayable"],
            "left_alone": outcomes["left_alone"],
        }
        return summary, first_due

    def _purge(self, selection: Selection, user: str) -> int:
        deleted = 0
        for letter in selection.iter(self.store):
            if self.store.purge(letter):
                deleted += 1
                _log.info("dlq.purged", job_id=letter.job_id, reason=letter.reason, user=user)
        return deleted

    async def export(self, request: Request) -> Response:
        fmt = request.query_params.get("format", "jsonl")
        if fmt not in ("jsonl", "csv"):
            return self.refuse(request, 400, "Bad export", "format: jsonl or csv")
        try:
            selection, _items = self.selection(list(request.query_params.multi_items()))
        except _BadInput as exc:
            return self.refuse(request, 400, "Bad export", f"{exc.field}: {exc.message}")
        session: Session = request.state.session
        _log.info(
            "console.export", user=session.user, format=fmt, selection=self.describe(selection)
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
        for letter in selection.iter(self.store):
            record = letter.to_dict()
            record["error"] = self.redact(record["error"])
            yield json.dumps(record, ensure_ascii=False) + "\n"

    _CSV_COLUMNS = (
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
        "phone_code",
        "phone_number",
        "dnc_check",
        "campaign_dnc_check",
        "idempotency_key",
        "job",
    )

    def _csv(self, selection: Selection) -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)

        def flush() -> str:
            text = buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            return text

        writer.writerow(self._CSV_COLUMNS)
        yield flush()
        for letter in selection.iter(self.store):
            lead = letter.job.get("lead") if isinstance(letter.job.get("lead"), dict) else {}
            assert isinstance(lead, dict)
            row: Sequence[Any] = (
                letter.id,
                letter.job_id,
                letter.reason,
                self.redact(letter.error),
                letter.http_status,
                letter.attempts,
                letter.first_failed_at,
                letter.last_failed_at,
                letter.enqueued_at,
                letter.replays,
                letter.dialer,
                letter.job.get("priority"),
                letter.agent_user,
                lead.get("phone_code"),
                lead.get("phone_number"),
                letter.job.get("dnc_check"),
                letter.job.get("campaign_dnc_check"),
                letter.job.get("idempotency_key"),
                json.dumps(letter.job, ensure_ascii=False),
            )
            writer.writerow([_cell(v) for v in row])
            yield flush()

    # -- erasure requests ---------------------------------------------------------------

    async def forget_page(self, request: Request) -> Response:
        denied = self.forbidden_for_viewer(request)
        if denied is not None:
            return denied
        return self._forget_form(request, flash=await self.flash(request))

    def _forget_form(
        self,
        request: Request,
        *,
        status_code: int = 200,
        preview: Erasure | None = None,
        phone: str = "",
        error: str = "",
        flash: str = "",
    ) -> Response:
        return self.render(
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

    async def forget(self, request: Request) -> Response:
        """Erase a phone number: a preview with the counts first, then (confirmed) for good."""
        denied = self.forbidden_for_viewer(request)
        if denied is not None:
            return denied
        form: Form = request.state.form
        session: Session = request.state.session
        phone = _first(form, "phone").strip()
        try:
            if len(phone) > 40:
                raise _BadInput("phone", "at most 40 characters")
            digits = normalise_phone(phone, default_phone_code=self.settings.phone_code)
        except (InvalidLead, _BadInput) as exc:
            why = (
                "; ".join(e.message for e in exc.errors)
                if isinstance(exc, InvalidLead)
                else exc.message
            )
            return self._forget_form(
                request, status_code=400, phone=phone[:40], error=f"phone: {why}"
            )
        if _first(form, "confirm") != "yes":
            preview = await self.thread(
                forget_phone, self.backend, phone, dry_run=True, operator=session.user
            )
            return self._forget_form(request, preview=preview, phone=phone)
        erasure = await self.thread(forget_phone, self.backend, phone, operator=session.user)
        _log.info("console.forget", user=session.user, phone=digits, **erasure.counts)
        done = ", ".join(f"{n} {ERASED_KINDS.get(k, k)}" for k, n in erasure.counts.items() if n)
        await self.thread(
            self.sessions.set_flash,
            session,
            f"Forgot {erasure.masked_phone}: {done or 'nothing was kept'}. {VICIDIAL_NOTE}",
        )
        ui = request.scope.get("root_path", "")
        return RedirectResponse(f"{ui}/forget", status_code=303)

    # -- jobs ---------------------------------------------------------------------------

    async def jobs(self, request: Request) -> Response:
        job_id = (
            request.path_params.get("job_id") or request.query_params.get("job_id", "")
        ).strip()
        context: dict[str, Any] = {
            "nav": "jobs",
            "job_id": job_id,
            "job": None,
            "letter": None,
            "error": "",
            "flash": await self.flash(request),
        }
        if not job_id:
            return self.render(request, "job.html", **context)
        if len(job_id) > 128 or not job_id.isprintable():
            context["error"] = "job id: at most 128 printable characters"
            return self.render(request, "job.html", status_code=400, **context)
        job, letter = await self.thread(self._job_and_letter, job_id)
        if job is None:
            context["error"] = f"No job {job_id!r} (unknown id, or its state expired)."
            return self.render(request, "job.html", status_code=404, **context)
        context.update(job=job, letter=letter)
        return self.render(request, "job.html", **context)

    def _job_and_letter(self, job_id: str) -> tuple[dict[str, Any] | None, DeadLetter | None]:
        job = self._job(job_id)
        letter = self.store.get(job_id) if job is not None and job.get("state") == "dead" else None
        return job, letter

    async def not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = self.refuse(request, 404, "Not found", "There is no such page.")
        await response(scope, receive, send)


def _cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run as a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


_SECURITY_HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class _Gate:
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
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in {h for h, _ in _SECURITY_HEADERS}
                ]
                headers += [*_SECURITY_HEADERS, (b"content-security-policy", csp)]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self._gated(scope, receive, send_secured)
        except BrokerUnavailable as exc:
            _log.error("console.redis_unavailable", error=str(exc))
            await HTMLResponse(
                "<!doctype html><title>Unavailable</title><p>Redis is unreachable; "
                "retry in a moment.</p>",
                status_code=503,
                headers={"Retry-After": "5"},
            )(scope, receive, send_secured)

    async def _gated(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _route_path(scope)
        method = str(scope.get("method", "GET"))
        cookies = _cookies(scope)
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
        if ctype != _FORM_TYPE:
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
        given = _first(form, "csrf")
        if not expected or not given or not hmac.compare_digest(given.encode(), expected.encode()):
            session = state.get("session")
            _log.warning("console.csrf_refused", user=session.user if session else None, path=path)
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


def console_app(settings: Settings, backend: Backend) -> ASGIApp:
    """The console's ASGI app, to be mounted at ``/ui``."""
    console = Console(settings, backend)
    routes = [
        Route("/", console.overview, methods=["GET"]),
        Route("/login", console.login_page, methods=["GET"]),
        Route("/login", console.login, methods=["POST"]),
        Route("/logout", console.logout, methods=["POST"]),
        Route("/dead-letters", console.dead_letters, methods=["GET"]),
        Route("/dead-letters/export", console.export, methods=["GET"]),
        Route("/dead-letters/replay", console.preview, methods=["GET"]),
        Route("/dead-letters/replay", console.act, methods=["POST"]),
        Route("/dead-letters/purge", console.preview, methods=["GET"]),
        Route("/dead-letters/purge", console.act, methods=["POST"]),
        Route("/dead-letters/reconcile", console.preview, methods=["GET"]),
        Route("/dead-letters/reconcile", console.act, methods=["POST"]),
        Route("/dead-letters/{dl_id:path}", console.dead_letter, methods=["GET"]),
        Route("/forget", console.forget_page, methods=["GET"]),
        Route("/forget", console.forget, methods=["POST"]),
        Route("/jobs", console.jobs, methods=["GET"]),
        Route("/jobs/{job_id:path}", console.jobs, methods=["GET"]),
    ]
    router = Router(routes=routes, default=console.not_found)
    return _Gate(router, console)
