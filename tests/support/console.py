"""What the console's tests share: the users, a login, dead letters as workers write
them, and readers of the pages' HTML.

Imported by tests/intake/console/ and by the security and erasure tests that drive
the console; the fixtures built on these are tests/intake/console/conftest.py.
"""

from __future__ import annotations

import re
import time
from typing import Any

import structlog
from starlette.testclient import TestClient
from structlog.testing import capture_logs as _capture_logs

from dispatcher.config.settings import Settings
from dispatcher.intake.console.sessions import SessionStore
from dispatcher.ops.producer import prepare_job
from dispatcher.store.backend import get_backend
from dispatcher.store.deadletter import DeadLetter, DeadLetterStore
from dispatcher.store.users import UserStore

TOKEN = "tok-console-3f9c2d8e61b04a7f9e2c"
#: The VICIdial password, which must never show on a page, in a log or an export.
SECRET = "pa55-Sekr1t-xyz"
OPERATOR = ("olivia", "olivia-password-1")
VIEWER = ("victor", "victor-password-1")
AUTH_ERROR = f"ERROR: Invalid Username/Password: |6666|{SECRET}|auth|api|message|"
#: Each user's stored record, hashed once per test session (see seed_users).
_HASHED: dict[str, dict[str, str]] = {}


def seed_users(settings: Settings) -> None:
    """The two users, as `dispatcher users add` stores them.

    Argon2 is slow on purpose (about 0.3 s a hash here), so each user is hashed
    once per test session and its stored record copied into each test's Redis.
    """
    backend = get_backend(settings)
    r = backend.redis
    for (name, password), role in ((OPERATOR, "operator"), (VIEWER, "viewer")):
        if name not in _HASHED:
            UserStore(backend).add(name, role=role, password=password)
            _HASHED[name] = r.hgetall(backend.keys.user(name))
        r.hset(backend.keys.user(name), mapping=_HASHED[name])
        r.sadd(backend.keys.users, name)


def capture_logs() -> Any:
    return _capture_logs(processors=[structlog.contextvars.merge_contextvars])


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def login(app: Any, who: tuple[str, str], *, base_url: str = "http://testserver") -> TestClient:
    client = TestClient(app, base_url=base_url)
    page = client.get("/ui/login")
    assert page.status_code == 200
    reply = client.post(
        "/ui/login",
        data={"csrf": csrf_of(page.text), "username": who[0], "password": who[1], "next": ""},
        follow_redirects=False,
    )
    assert reply.status_code == 303, reply.text
    return client


def session_client(app: Any, name: str) -> TestClient:
    """A client with a session made as a login makes it (tests/intake/console/test_auth.py
    logs in)."""
    settings: Settings = app.state.settings
    user = UserStore(get_backend(settings)).get(name)
    assert user is not None
    sessions = SessionStore(
        get_backend(settings),
        idle_s=settings.console_idle_s,
        lifetime_s=settings.console_session_s,
    )
    token, _ = sessions.create(user)
    return TestClient(app, cookies={"dispatcher_console": token})


def add_letters(
    settings: Settings,
    n: int,
    *,
    reason: str = "manual_list_undefined",
    agent: str = "1000",
    phone_base: int = 7275550000,
    error: str = "ERROR: campaign manual dial list undefined - 1003|GHOST",
    now: float | None = None,
    step: float = 0.001,
    dialer: str | None = None,
    priority: str | None = None,
) -> list[DeadLetter]:
    store = DeadLetterStore(get_backend(settings))
    start = time.time() if now is None else now
    out = []
    route = {k: v for k, v in (("dialer", dialer), ("priority", priority)) if v}
    for i in range(n):
        job = prepare_job(
            {
                "agent_user": agent,
                "phone_number": str(phone_base + i),
                "first_name": "Ann",
                **route,
            },
            settings=settings,
        )
        out.append(
            store.record(
                job=job.to_message(),
                reason=reason,
                error=error,
                http_status=200,
                attempts=1,
                first_failed_at=None,
                job_id=job.job_id,
                now=start - i * step,
            )
        )
    return out


def ids_on(html: str) -> list[str]:
    return re.findall(r'href="/ui/dead-letters/([0-9a-f]{32})"', html)


def store_of(settings: Settings) -> DeadLetterStore:
    return DeadLetterStore(get_backend(settings))


def table_row(html: str, table_id: str, name: str) -> str:
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S)
    assert table, f"no table {table_id}"
    row = re.search(rf'<tr>\s*<th scope="row">{name}</th>(.*?)</tr>', table.group(1), re.S)
    assert row, f"no row {name} in {table_id}"
    return re.sub(r"\s+", " ", row.group(1))


def cells(row: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]


def deny_lookups(settings: Settings, server: str) -> None:
    """What a worker records when the Non-Agent API says the user may not look leads up."""
    get_backend(settings).execution.lookup_record(
        server,
        state="denied",
        error="ERROR: auth USER DOES NOT HAVE PERMISSION TO GET LEAD INFO - 6666",
        missing="View Reports",
        fix='Admin > Users > 6666: set "View Reports" to 1',
        hold_s=300,
    )


def lookups_held(settings: Settings, server: str) -> bool:
    gate = get_backend(settings).execution.lookup_gate(
        server, mode="lookup", lease_s=5, fresh_s=600
    )
    return gate.verdict == "held"
