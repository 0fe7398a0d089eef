"""The operator console (/ui/), server side: every route, both roles, the CSRF gate.

The real app (``create_app``) answers through Starlette's TestClient, against a
real Redis; dead letters are written with ``DeadLetterStore.record``, as workers
write them. The browser tests (tests/test_console_browser.py) drive the same
pages in Chromium with a real worker and the simulator.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
import structlog
from starlette.testclient import TestClient
from structlog.testing import capture_logs as _capture_logs

from dispatcher.config.settings import Settings
from dispatcher.intake import create_app
from dispatcher.intake.console.sessions import CLIENT_LIMIT, PAIR_LIMIT, LoginThrottle, SessionStore
from dispatcher.ops.producer import job_status, prepare_job
from dispatcher.ops.selection import Cursor, Selection
from dispatcher.store.activity import read_activity, record_minute
from dispatcher.store.backend import get_backend
from dispatcher.store.deadletter import DeadLetter, DeadLetterStore
from dispatcher.store.users import UserStore
from tests.conftest import make_settings, queue_length

TOKEN = "tok-console-3f9c2d8e61b04a7f9e2c"
SECRET = "pa55-Sekr1t-xyz"
OPERATOR = ("olivia", "olivia-password-1")
VIEWER = ("victor", "victor-password-1")
AUTH_ERROR = f"ERROR: Invalid Username/Password: |6666|{SECRET}|auth|api|message|"


@pytest.fixture
def cs(redis_url: str) -> Settings:
    """Console settings: a real Redis, a VICIdial password that must never show."""
    return make_settings(
        redis_url,
        intake_tokens=(TOKEN,),
        vicidial_url="http://127.0.0.1:9/agc/api.php",
        vicidial_user="6666",
        vicidial_pass=SECRET,
    )


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


@pytest.fixture
def app(cs: Settings) -> Any:
    seed_users(cs)
    return create_app(cs)


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
    """A client with a session made as a login makes it (the login itself is tested above)."""
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


@pytest.fixture
def operator(app: Any) -> Iterator[TestClient]:
    with session_client(app, OPERATOR[0]) as client:
        yield client


@pytest.fixture
def viewer(app: Any) -> Iterator[TestClient]:
    with session_client(app, VIEWER[0]) as client:
        yield client


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


# -- no page without login -------------------------------------------------------------------

GET_ROUTES = [
    "/ui/",
    "/ui/dead-letters",
    "/ui/dead-letters/export?format=jsonl",
    "/ui/dead-letters/replay?scope=matching",
    "/ui/dead-letters/purge?scope=matching",
    "/ui/dead-letters/reconcile?scope=matching",
    "/ui/dead-letters/0123456789abcdef0123456789abcdef",
    "/ui/jobs",
    "/ui/jobs/0123456789abcdef0123456789abcdef",
    "/ui/no-such-page",
]
POST_ROUTES = [
    "/ui/logout",
    "/ui/dead-letters/replay",
    "/ui/dead-letters/purge",
    "/ui/dead-letters/reconcile",
    "/ui/",
]


@pytest.mark.parametrize("path", GET_ROUTES)
def test_every_page_sends_an_anonymous_visitor_to_the_login_page(app: Any, path: str) -> None:
    add_letters(app.state.settings, 1)
    with TestClient(app) as client:
        reply = client.get(path, follow_redirects=False)
    assert reply.status_code == 303
    assert reply.headers["location"].startswith("/ui/login")
    assert "olivia" not in reply.text and "7275550000" not in reply.text


@pytest.mark.parametrize("path", POST_ROUTES)
def test_every_post_without_a_session_is_refused_and_changes_nothing(
    app: Any, cs: Settings, path: str
) -> None:
    [letter] = add_letters(cs, 1)
    with TestClient(app) as client:
        reply = client.post(
            path, data={"scope": "matching", "confirm": "yes", "csrf": "x"}, follow_redirects=False
        )
    assert reply.status_code == 403
    assert store_of(cs).get(letter.id) is not None


def test_a_bearer_token_does_not_open_the_console_and_v1_still_needs_one(app: Any) -> None:
    with TestClient(app) as client:
        reply = client.get(
            "/ui/", headers={"Authorization": f"Bearer {TOKEN}"}, follow_redirects=False
        )
        assert reply.status_code == 303 and reply.headers["location"] == "/ui/login"
        assert client.get("/v1/jobs/abc").status_code == 401
        assert (
            client.get("/v1/jobs/abc", headers={"Authorization": f"Bearer {TOKEN}"}).status_code
            == 404
        )
        assert client.get("/ui", follow_redirects=False).status_code in (301, 302, 303, 307, 308)


def test_the_login_page_keeps_where_the_visitor_was_going(app: Any, cs: Settings) -> None:
    with TestClient(app) as client:
        reply = client.get("/ui/dead-letters?reason=dnc", follow_redirects=False)
        assert reply.headers["location"] == "/ui/login?next=%2Fui%2Fdead-letters%3Freason%3Ddnc"
        page = client.get(reply.headers["location"])
        assert 'value="/ui/dead-letters?reason=dnc"' in page.text
        done = client.post(
            "/ui/login",
            data={
                "csrf": csrf_of(page.text),
                "username": OPERATOR[0],
                "password": OPERATOR[1],
                "next": "/ui/dead-letters?reason=dnc",
            },
            follow_redirects=False,
        )
        assert done.headers["location"] == "/ui/dead-letters?reason=dnc"


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/ui/",
        "/v1/leads",
        "/ui\\..\\x",
        "javascript:alert(1)",
    ],
)
def test_login_never_redirects_off_the_console(app: Any, target: str) -> None:
    with TestClient(app) as client:
        page = client.get("/ui/login")
        done = client.post(
            "/ui/login",
            data={
                "csrf": csrf_of(page.text),
                "username": OPERATOR[0],
                "password": OPERATOR[1],
                "next": target,
            },
            follow_redirects=False,
        )
    assert done.status_code == 303 and done.headers["location"] == "/ui/"


# -- login, cookies, sessions ------------------------------------------------------------------


def test_session_cookie_is_httponly_lax_scoped_and_secure_over_https(
    app: Any, cs: Settings
) -> None:
    with TestClient(app) as client:
        page = client.get("/ui/login")
        reply = client.post(
            "/ui/login",
            data={"csrf": csrf_of(page.text), "username": OPERATOR[0], "password": OPERATOR[1]},
            follow_redirects=False,
        )
    cookie = next(
        c for c in reply.headers.get_list("set-cookie") if c.startswith("dispatcher_console=")
    )
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/ui" in cookie
    assert "Max-Age=43200" in cookie and "Secure" not in cookie
    https = login(app, OPERATOR, base_url="https://testserver")
    # httpx keeps Secure cookies for https only; check the header the server sent.
    with https:
        page = https.get("/ui/login")
        reply = https.post(
            "/ui/login",
            data={"csrf": csrf_of(page.text), "username": OPERATOR[0], "password": OPERATOR[1]},
            follow_redirects=False,
        )
    cookie = next(
        c for c in reply.headers.get_list("set-cookie") if c.startswith("dispatcher_console=")
    )
    assert "Secure" in cookie
    # DISPATCHER_CONSOLE_SECURE_COOKIE=true (TLS ends at a proxy that does not say so):
    # Secure even over plain http, so this client (http) cannot even send the login form back.
    forced = create_app(cs.replace(console_secure_cookie="true"))
    with TestClient(forced) as client:
        page = client.get("/ui/login")
        cookie = page.headers["set-cookie"]
        assert cookie.startswith("dispatcher_login=") and "Secure" in cookie
        reply = client.post(
            "/ui/login",
            data={"csrf": csrf_of(page.text), "username": OPERATOR[0], "password": OPERATOR[1]},
            follow_redirects=False,
        )
        assert "dispatcher_console" not in client.cookies


def test_sessions_live_in_redis_hashed_with_an_idle_ttl(app: Any, cs: Settings) -> None:
    with login(app, OPERATOR) as client:
        token = client.cookies["dispatcher_console"]
    r = redis.Redis.from_url(cs.redis_url, decode_responses=True)
    keys = list(r.scan_iter(match=f"{cs.key_prefix}:session:*"))
    assert len(keys) == 1 and token not in keys[0]
    ttl = r.ttl(keys[0])
    assert 0 < ttl <= cs.console_idle_s
    data = r.hgetall(keys[0])
    assert data["user"] == OPERATOR[0] and data["role"] == "operator"
    assert token not in json.dumps(data)


def test_a_session_ends_at_its_lifetime_even_when_used(operator: TestClient, cs: Settings) -> None:
    assert operator.get("/ui/", follow_redirects=False).status_code == 200
    r = redis.Redis.from_url(cs.redis_url, decode_responses=True)
    [key] = r.scan_iter(match=f"{cs.key_prefix}:session:*")
    r.hset(key, "created_at", f"{time.time() - cs.console_session_s - 1:.3f}")
    reply = operator.get("/ui/", follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"] == "/ui/login"
    assert not r.exists(key)


def test_an_idle_session_expires(operator: TestClient, cs: Settings) -> None:
    r = redis.Redis.from_url(cs.redis_url, decode_responses=True)
    [key] = r.scan_iter(match=f"{cs.key_prefix}:session:*")
    r.pexpire(key, 1)  # what the idle TTL does after CONSOLE_IDLE_S without a request
    time.sleep(0.05)
    assert operator.get("/ui/", follow_redirects=False).status_code == 303


def test_logout_ends_the_session_on_the_server(operator: TestClient, app: Any) -> None:
    token = operator.cookies["dispatcher_console"]
    page = operator.get("/ui/")
    reply = operator.post("/ui/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"] == "/ui/login"
    # The old cookie, replayed by someone who kept it, opens nothing.
    with TestClient(app, cookies={"dispatcher_console": token}) as stolen:
        assert stolen.get("/ui/", follow_redirects=False).status_code == 303


def test_wrong_password_and_unknown_user_get_the_same_answer(app: Any) -> None:
    with TestClient(app) as client:
        answers = []
        for name, password in ((OPERATOR[0], "wrong-password-1"), ("nobody", "wrong-password-1")):
            page = client.get("/ui/login")
            reply = client.post(
                "/ui/login",
                data={"csrf": csrf_of(page.text), "username": name, "password": password},
                follow_redirects=False,
            )
            answers.append((reply.status_code, "Wrong user name or password." in reply.text))
            assert "dispatcher_console" not in client.cookies
    assert answers == [(401, True), (401, True)]


def test_logins_are_throttled_per_user_and_address_and_per_client(app: Any, cs: Settings) -> None:
    """The limits' edges (tests/test_login_throttle.py has the attacks)."""
    throttle = LoginThrottle(get_backend(cs))

    def attempt(client: TestClient, name: str, password: str) -> Any:
        page = client.get("/ui/login")
        return client.post(
            "/ui/login",
            data={"csrf": csrf_of(page.text), "username": name, "password": password},
            follow_redirects=False,
        )

    with TestClient(app) as client:
        # All but the last allowed failure counted directly (each real one costs an Argon2 check).
        for _ in range(PAIR_LIMIT - 1):
            assert throttle.attempt(OPERATOR[0], "testclient").allowed
        assert attempt(client, OPERATOR[0], "guess-guess-1").status_code == 401
        reply = attempt(client, OPERATOR[0], OPERATOR[1])  # the right password, too late
        assert reply.status_code == 429 and "Too many failed logins" in reply.text
        assert "dispatcher_console" not in client.cookies
        # Another user from the same client is not locked out by olivia's failures...
        assert attempt(client, VIEWER[0], VIEWER[1]).status_code == 303
    # ...but a client that tries many names is.
    get_backend(cs).redis.flushdb()
    seed_users(cs)
    with TestClient(app) as client:
        for i in range(CLIENT_LIMIT - 1):
            assert throttle.attempt(f"user{i}", "testclient").allowed
        assert attempt(client, "someone", "guess-guess-1").status_code == 401
        assert attempt(client, OPERATOR[0], OPERATOR[1]).status_code == 429


def test_login_form_without_its_own_token_logs_nobody_in(app: Any) -> None:
    with TestClient(app) as client:
        reply = client.post(
            "/ui/login",
            data={"csrf": "forged", "username": OPERATOR[0], "password": OPERATOR[1]},
            follow_redirects=False,
        )
        assert reply.status_code == 303 and reply.headers["location"] == "/ui/login"
        assert "dispatcher_console" not in client.cookies


def test_login_page_tells_how_to_create_the_first_user(cs: Settings) -> None:
    with TestClient(create_app(cs)) as client:
        page = client.get("/ui/login")
    assert "dispatcher users add NAME --role operator --password-stdin" in page.text


# -- CSRF and headers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/ui/dead-letters/replay", "/ui/dead-letters/purge", "/ui/dead-letters/reconcile"]
)
def test_a_forged_post_fails_and_changes_nothing(
    operator: TestClient, cs: Settings, path: str
) -> None:
    reason = "ambiguous" if path.endswith("reconcile") else "manual_list_undefined"
    [letter] = add_letters(cs, 1, reason=reason)
    form = {"scope": "selected", "id": letter.id, "confirm": "yes"}
    assert operator.post(path, data=form).status_code == 403  # no token
    assert operator.post(path, data={**form, "csrf": "x" * 43}).status_code == 403  # wrong
    token = csrf_of(operator.get("/ui/").text)
    # The right token from another site's page (its Origin) is refused too.
    reply = operator.post(
        path, data={**form, "csrf": token}, headers={"Origin": "https://evil.example"}
    )
    assert reply.status_code == 403
    # A reverse proxy that rewrites Host says which name the browser used.
    behind = operator.post(
        path,
        data={**form, "csrf": token, "confirm": "no"},
        headers={"Origin": "https://console.example", "X-Forwarded-Host": "evil.example"},
    )
    assert behind.status_code == 403
    behind = operator.post(
        path,
        data={**form, "csrf": token, "confirm": "no"},  # a preview: changes nothing
        headers={"Origin": "https://console.example", "X-Forwarded-Host": "console.example"},
    )
    assert behind.status_code == 200
    # And so is anything but the page's own form encoding.
    assert operator.post(path, json={**form, "csrf": token}).status_code == 415
    assert store_of(cs).get(letter.id) is not None
    # The same form from the console itself works.
    reply = operator.post(
        path,
        data={**form, "csrf": token},
        headers={"Origin": "http://testserver"},
        follow_redirects=False,
    )
    assert reply.status_code == 303
    assert store_of(cs).get(letter.id) is None


def test_another_sessions_token_does_not_work(app: Any, cs: Settings) -> None:
    [letter] = add_letters(cs, 1)
    with session_client(app, OPERATOR[0]) as first, session_client(app, OPERATOR[0]) as second:
        other = csrf_of(second.get("/ui/").text)
        reply = first.post(
            "/ui/dead-letters/purge",
            data={"scope": "selected", "id": letter.id, "confirm": "yes", "csrf": other},
        )
        assert reply.status_code == 403
    assert store_of(cs).get(letter.id) is not None


def test_every_page_has_a_nonce_csp_and_no_caching(operator: TestClient) -> None:
    for path in ("/ui/", "/ui/dead-letters", "/ui/jobs", "/ui/login", "/ui/nothing-here"):
        reply = operator.get(path)
        csp = reply.headers["content-security-policy"]
        nonce = re.search(r"'nonce-([^']+)'", csp)
        assert nonce and f'nonce="{nonce.group(1)}"' in reply.text
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert reply.headers["x-frame-options"] == "DENY"
        assert reply.headers["cache-control"] == "no-store"
        # The page's own script and style are inline as written (not HTML-escaped)...
        assert (
            'getElementById("select-all")' in reply.text and "&#34;Segoe UI&#34;" not in reply.text
        )
        # ...and nothing is fetched from anywhere: no external script, style or font.
        assert not re.search(r"<(script|link)[^>]+(src|href)=\"(?!data:)", reply.text)


# -- roles ---------------------------------------------------------------------------------


def operator_view(viewer: TestClient, dl_id: str) -> str:
    """The same page as an operator sees it (the check above must be able to fail)."""
    with session_client(viewer.app, OPERATOR[0]) as client:
        return client.get(f"/ui/dead-letters/{dl_id}").text


def test_a_viewer_sees_no_action_and_a_direct_post_is_refused(
    viewer: TestClient, cs: Settings
) -> None:
    [letter] = add_letters(cs, 1)
    [amb] = add_letters(cs, 1, reason="ambiguous", phone_base=7275559000)
    page = viewer.get("/ui/dead-letters")
    assert page.status_code == 200 and letter.id in page.text and amb.id in page.text
    action = re.compile(r"<button[^>]*>\s*(Replay|Purge|Reconcile)")
    assert 'type="checkbox" name="id"' not in page.text and not action.search(page.text)
    for one in (letter, amb):
        detail = viewer.get(f"/ui/dead-letters/{one.id}")
        assert detail.status_code == 200 and not action.search(detail.text)
    assert action.search(operator_view(viewer, letter.id))
    reconcile = re.compile(r"<button[^>]*>\s*Reconcile</button>")
    assert reconcile.search(operator_view(viewer, amb.id))
    assert not reconcile.search(operator_view(viewer, letter.id))  # not ambiguous: no button
    overview = viewer.get("/ui/").text
    assert "see them</a>" in overview and "Reconcile them" not in overview
    for verb in ("replay", "purge", "reconcile"):
        assert viewer.get(f"/ui/dead-letters/{verb}?scope=matching").status_code == 403
    token = csrf_of(page.text)
    with capture_logs() as events:
        for verb, one in (("replay", letter), ("purge", letter), ("reconcile", amb)):
            reply = viewer.post(
                f"/ui/dead-letters/{verb}",
                data={"scope": "selected", "id": one.id, "confirm": "yes", "csrf": token},
            )
            assert reply.status_code == 403
    assert [e["user"] for e in events if e["event"] == "console.forbidden"] == [VIEWER[0]] * 3
    assert store_of(cs).get(letter.id) is not None and store_of(cs).get(amb.id) is not None
    assert (
        queue_length(cs) == 0 and get_backend(cs).redis.zcard(get_backend(cs).keys.scheduled) == 0
    )
    # Reading is the viewer's right: export too.
    assert viewer.get("/ui/dead-letters/export?format=jsonl").status_code == 200


def test_removing_a_user_or_changing_the_role_ends_their_sessions(app: Any, cs: Settings) -> None:
    users = UserStore(get_backend(cs))
    with login(app, OPERATOR) as client:
        users.add(OPERATOR[0], role="viewer", password=OPERATOR[1], replace=True)
        assert client.get("/ui/", follow_redirects=False).status_code == 303
    with session_client(app, OPERATOR[0]) as client:
        assert client.get("/ui/dead-letters").status_code == 200
        assert "Replay all matching" not in client.get("/ui/dead-letters").text  # now a viewer
        users.remove(OPERATOR[0])
        assert client.get("/ui/", follow_redirects=False).status_code == 303


# -- overview --------------------------------------------------------------------------------


def test_overview_shows_queue_retries_workers_pauses_and_dead_letters(
    operator: TestClient, cs: Settings
) -> None:
    add_letters(cs, 3, reason="manual_list_undefined")
    add_letters(cs, 2, reason="dnc", phone_base=7275560000)
    backend = get_backend(cs)
    r = backend.redis
    now = time.time()
    job = prepare_job(
        {"agent_user": "1000", "phone_number": "7275551212"}, settings=cs, now=now - 125
    )
    from dispatcher.ops.producer import push_jobs

    push_jobs([job], settings=cs)
    r.zadd(backend.keys.scheduled, {"retry-1": now + 30, "retry-2": now + 60})
    r.set(backend.keys.worker("w1@host"), "host.1.nonce", ex=30)
    r.sadd(backend.keys.workers, "w1@host")
    r.sadd(backend.keys.pauses, "dialer.example:443")
    r.hset(
        backend.keys.pause("dialer.example:443"),
        mapping={
            "until": f"{now + 240:.3f}",
            "reason": "auth",
            "kind": "refused",
            "since": f"{now:.3f}",
        },
    )
    page = operator.get("/ui/")
    text = page.text
    assert page.status_code == 200
    assert re.search(r"<dt>Queued</dt><dd>1<small>the oldest waiting for [^<]+</small>", text)
    assert "<dt>Retries waiting</dt><dd>2</dd>" in text
    assert "w1@host" in text
    assert "PAUSED dialer.example:443" in text and "<td>auth</td>" in text
    assert re.search(r"<td class=\"num\">(4 min|3 min)</td>", text)
    assert (
        '<a href="/ui/dead-letters?reason=manual_list_undefined">manual_list_undefined</a>' in text
    )
    assert '<a href="/ui/dead-letters?reason=dnc">dnc</a>' in text
    assert "<svg" in text and 'role="img"' in text


def test_activity_counts_added_and_dead_lettered_per_minute(cs: Settings) -> None:
    backend = get_backend(cs)
    r = backend.redis
    base = (int(time.time()) // 60) * 60 - 10 * 60
    # Minute samples as worker schedulers write them, with the counters moving in between.
    r.hset(backend.keys.stats, mapping={"added": 100, "dead_lettered:dnc": 4})
    assert record_minute(backend, now=base + 1) is True
    assert record_minute(backend, now=base + 30) is False  # the first writer of a minute wins
    r.hincrby(backend.keys.stats, "added", 7)
    r.hincrby(backend.keys.stats, "dead_lettered:auth", 2)
    record_minute(backend, now=base + 61)
    r.hincrby(backend.keys.stats, "added", 3)
    record_minute(backend, now=base + 125)
    minutes = read_activity(backend, now=base + 10 * 60 + 5)
    assert len(minutes) == 60
    by_start = {int(m.start): m for m in minutes}
    assert (by_start[base].added, by_start[base].dead) == (7, 2)
    assert (by_start[base + 60].added, by_start[base + 60].dead) == (3, 0)
    # After the last sample nothing moved: the rest of the hour is known to be quiet.
    assert by_start[base + 180].added == 0
    # Before the first sample: unknown.
    assert by_start[base - 60].added is None
    # Bounded: samples older than KEEP_S are trimmed by the next write.
    record_minute(backend, now=base + 5 * 3600)
    assert r.zcard(backend.keys.activity) == 1


def test_a_worker_records_the_minute_samples(cs: Settings) -> None:
    from workers.scheduler import RetryScheduler

    scheduler = RetryScheduler(cs, name="w-test@host")
    scheduler.tick()
    scheduler.tick()
    r = get_backend(cs).redis
    assert r.zcard(get_backend(cs).keys.activity) == 1


# -- dead letters: list, filters, pages --------------------------------------------------------


def test_list_masks_phones_and_filters_by_reason_agent_phone_and_age(
    operator: TestClient, cs: Settings
) -> None:
    now = time.time()
    old = add_letters(cs, 2, reason="dnc", agent="2000", phone_base=7275551000, now=now - 3 * 86400)
    new = add_letters(cs, 3, agent="1000", phone_base=7275552000, now=now)
    page = operator.get("/ui/dead-letters").text
    assert set(ids_on(page)) == {x.id for x in old + new}
    assert "7275552000" not in page and "******2000" in page
    assert "1003|GHOST" in page  # the answer is shown...
    new_error = add_letters(cs, 1, error="ERROR: add_lead PHONE NUMBER IN DNC - 7275559999|1000")
    page = operator.get("/ui/dead-letters").text
    assert "7275559999" not in page and "******9999|1000" in page  # ...its phone masked
    store_of(cs).purge(new_error[0])
    assert set(ids_on(operator.get("/ui/dead-letters?reason=dnc").text)) == {x.id for x in old}
    assert set(ids_on(operator.get("/ui/dead-letters?agent=1000").text)) == {x.id for x in new}
    assert ids_on(operator.get("/ui/dead-letters?phone4=2001").text) == [new[1].id]
    assert set(ids_on(operator.get("/ui/dead-letters?within=1h").text)) == {x.id for x in new}
    assert set(ids_on(operator.get("/ui/dead-letters?older=1d").text)) == {x.id for x in old}
    assert ids_on(operator.get("/ui/dead-letters?agent=1000&phone4=9999").text) == []
    indexed = operator.get("/ui/dead-letters?reason=dnc").text
    assert "2 matching letters" in indexed


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("reason=nope", "reason"),
        ("agent=a%20b", "agent"),
        ("phone4=12345", "phone4"),
        ("within=2x", "within"),
        ("older=-1h", "older"),
    ],
)
def test_a_bad_filter_names_the_field(operator: TestClient, query: str, field: str) -> None:
    reply = operator.get(f"/ui/dead-letters?{query}")
    assert reply.status_code == 400
    assert f"{field}:" in reply.text


def test_pages_follow_a_cursor_without_gaps_or_repeats(operator: TestClient, cs: Settings) -> None:
    letters = add_letters(cs, 120)
    seen: list[str] = []
    url = "/ui/dead-letters"
    pages = 0
    while url:
        page = operator.get(url).text
        seen += ids_on(page)
        pages += 1
        match = re.search(r'href="([^"]+)" rel="next"', page)
        url = match.group(1).replace("&amp;", "&") if match else ""
    assert pages == 3
    assert seen == [x.id for x in letters]  # newest first, each once


def test_a_cursor_survives_replays_before_it(operator: TestClient, cs: Settings) -> None:
    letters = add_letters(cs, 60)
    first = operator.get("/ui/dead-letters").text
    next_url = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    store = store_of(cs)
    for letter in letters[:50]:  # the whole first page is replayed meanwhile
        store.replay(letter)
    assert ids_on(operator.get(next_url).text) == [x.id for x in letters[50:]]


def test_selection_pages_equal_scores_by_id(cs: Settings) -> None:
    """Letters written in the same microsecond: the (score, id) cursor still pages them all."""
    now = time.time()
    letters = add_letters(cs, 25, now=now, step=0.0)
    store = store_of(cs)
    seen: list[str] = []
    cursor: Cursor | None = None
    while True:
        page = Selection().page(store, after=cursor, limit=7)
        seen += [x.id for x in page.letters]
        if page.next is None:
            break
        # Delete the cursor's letter: the next page is found by score and id instead.
        if len(seen) == 14:
            store.purge(page.letters[-1])
        cursor = Cursor.decode(page.next.encode())
    assert sorted(seen) == sorted(x.id for x in letters) and len(seen) == len(set(seen))


def test_a_rare_agent_costs_bounded_pages_not_a_full_read(cs: Settings) -> None:
    add_letters(cs, 1, agent="4242", now=time.time() - 100)
    add_letters(cs, 3000, agent="1000")
    page = Selection(agent_user="4242").page(store_of(cs), limit=50, scan_budget=2000)
    assert page.letters == [] and page.scanned == 2000 and page.next is not None
    page = Selection(agent_user="4242").page(
        store_of(cs), after=page.next, limit=50, scan_budget=2000
    )
    assert [x.agent_user for x in page.letters] == ["4242"] and page.next is None


def test_a_garbled_cursor_is_a_clear_400(operator: TestClient) -> None:
    reply = operator.get("/ui/dead-letters?cursor=nonsense")
    assert reply.status_code == 400 and "cursor" in reply.text


# -- detail ----------------------------------------------------------------------------------


def test_detail_shows_the_whole_job_redacted_with_its_state(
    operator: TestClient, cs: Settings
) -> None:
    [letter] = add_letters(cs, 1, reason="auth", error=AUTH_ERROR, phone_base=7275553333)
    page = operator.get(f"/ui/dead-letters/{letter.id}").text
    assert SECRET not in page and "[REDACTED]" in page
    assert "7275553333" in page  # the whole job, for the operator to check in VICIdial
    assert letter.job_id in page and "&#34;dnc_check&#34;: true" in page
    assert "<dt>state</dt><dd>dead</dd>" in page
    assert "<dt>Attempts</dt><dd>1</dd>" in page
    assert operator.get("/ui/dead-letters/feedfeedfeedfeedfeedfeedfeedfeed").status_code == 404


def test_no_secret_in_list_detail_export_or_job_pages(operator: TestClient, cs: Settings) -> None:
    [letter] = add_letters(cs, 1, reason="auth", error=AUTH_ERROR)
    for path in (
        "/ui/",
        "/ui/dead-letters",
        f"/ui/dead-letters/{letter.id}",
        f"/ui/jobs/{letter.job_id}",
        "/ui/dead-letters/export?format=jsonl",
        "/ui/dead-letters/export?format=csv",
    ):
        body = operator.get(path).text
        assert SECRET not in body and TOKEN not in body, path


# -- actions ---------------------------------------------------------------------------------


def test_replay_one_from_its_page_puts_the_job_back(operator: TestClient, cs: Settings) -> None:
    [letter] = add_letters(cs, 1)
    page = operator.get(f"/ui/dead-letters/{letter.id}")
    reply = operator.post(
        "/ui/dead-letters/replay",
        data={"scope": "selected", "id": letter.id, "confirm": "yes", "csrf": csrf_of(page.text)},
        follow_redirects=False,
    )
    assert reply.status_code == 303 and reply.headers["location"] == f"/ui/jobs/{letter.job_id}"
    landing = operator.get(reply.headers["location"]).text
    assert "Replayed 1" in landing and '<span id="job-state">queued</span>' in landing
    assert store_of(cs).get(letter.id) is None
    assert job_status(letter.job_id, settings=cs)["state"] == "queued"
    assert queue_length(cs) == 1


def test_a_replay_that_meets_a_live_claim_says_busy_and_keeps_the_letter(
    operator: TestClient, cs: Settings
) -> None:
    from dispatcher.store.execution import new_token

    [letter] = add_letters(cs, 1)
    backend = get_backend(cs)
    # The job's execution record expired (DISPATCHER_JOB_TTL_S) while its letter lives
    # on, and a late copy of the job is being called right now: a worker holds its claim.
    backend.redis.delete(backend.keys.execution(letter.job_id))
    dialer = cs.dialers.resolve(None)
    assert dialer is not None
    claim = backend.execution.claim(
        letter.job_id,
        seq=1,
        token=new_token(),
        lease_s=60,
        ttl=600,
        rate_interval_s=0.0,
        worker="w1@host",
        max_rate_wait_s=1.0,
        server=dialer.name,
    )
    assert claim.verdict == "ok"
    page = operator.get(f"/ui/dead-letters/{letter.id}")
    form = {"scope": "selected", "id": letter.id, "confirm": "yes", "csrf": csrf_of(page.text)}
    with capture_logs() as events:
        reply = operator.post("/ui/dead-letters/replay", data=form, follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"] == f"/ui/jobs/{letter.job_id}"
    landing = operator.get(reply.headers["location"]).text
    assert "Replayed 0" in landing
    assert "1 held by a worker right now (try again)" in landing
    [event] = [e for e in events if e["event"] == "console.replay"]
    assert event["busy"] == 1 and event["replayed"] == 0 and event["user"] == OPERATOR[0]
    assert store_of(cs).get(letter.id) is not None  # nothing lost: replay it later
    assert queue_length(cs) == 0


def test_replay_several_previews_then_replays_only_those(
    operator: TestClient, cs: Settings
) -> None:
    letters = add_letters(cs, 5)
    chosen = [letters[0].id, letters[3].id]
    preview = operator.get(
        "/ui/dead-letters/replay", params=[("scope", "selected"), *(("id", i) for i in chosen)]
    )
    assert preview.status_code == 200 and "Replay 2 letters" in preview.text
    assert len(store_of(cs)) == 5  # a preview changes nothing
    form = [("csrf", csrf_of(preview.text)), ("confirm", "yes"), ("scope", "selected")]
    form += [("id", i) for i in chosen]
    reply = operator.post(
        "/ui/dead-letters/replay",
        content=urlencode(form),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert reply.status_code == 303
    left = {x.id for x in store_of(cs).iter()}
    assert left == {x.id for x in letters} - set(chosen)


def test_replay_all_matching_holds_dnc_and_ambiguous_until_confirmed_with_a_reason(
    operator: TestClient, cs: Settings
) -> None:
    plain = add_letters(cs, 3)
    dnc = add_letters(cs, 2, reason="dnc", phone_base=7275561000)
    amb = add_letters(cs, 1, reason="ambiguous", phone_base=7275562000)
    preview = operator.get("/ui/dead-letters/replay?scope=matching")
    text = preview.text
    assert "2 DNC letters" in text and "1 ambiguous letter" in text and "Replay 3 letters" in text
    token = csrf_of(text)
    base = {"csrf": token, "confirm": "yes", "scope": "matching"}
    # Including DNC letters without typing why: refused, nothing replayed.
    reply = operator.post("/ui/dead-letters/replay", data={**base, "include_dnc": "yes"})
    assert reply.status_code == 400 and "Type the reason" in reply.text
    assert len(store_of(cs)) == 6
    # Without including them: the plain letters only.
    reply = operator.post("/ui/dead-letters/replay", data=base)
    assert reply.status_code == 200 and "2 DNC and 1 ambiguous left alone" in reply.text
    assert {x.id for x in store_of(cs).iter()} == {x.id for x in dnc + amb}
    # With the DNC confirmation and a reason: DNC replayed, ambiguous still held.
    reply = operator.post(
        "/ui/dead-letters/replay",
        data={**base, "include_dnc": "yes", "note": "removed 7275561000 from the DNC list"},
    )
    assert "Replayed 2" in reply.text
    assert {x.id for x in store_of(cs).iter()} == {amb[0].id}
    assert plain  # replayed first


def test_an_ambiguous_letter_is_never_replayed_by_one_click(
    operator: TestClient, cs: Settings
) -> None:
    [letter] = add_letters(cs, 1, reason="ambiguous")
    page = operator.get(f"/ui/dead-letters/{letter.id}")
    form = {"scope": "selected", "id": letter.id, "confirm": "yes", "csrf": csrf_of(page.text)}
    reply = operator.post("/ui/dead-letters/replay", data=form)
    assert reply.status_code == 200 and "1 ambiguous letter" in reply.text  # asked, not done
    link = re.search(
        r'<a href="(/ui/dead-letters/reconcile\?[^"]+)">reconcile them</a>', reply.text
    )
    assert link and "Reconcile 1 letter" in operator.get(link.group(1).replace("&amp;", "&")).text
    assert store_of(cs).get(letter.id) is not None
    reply = operator.post(
        "/ui/dead-letters/replay",
        data={**form, "include_ambiguous": "yes", "note": "checked: lead not in VICIdial"},
        follow_redirects=False,
    )
    assert reply.status_code == 303
    assert store_of(cs).get(letter.id) is None


def test_purge_previews_then_deletes_what_matches(operator: TestClient, cs: Settings) -> None:
    keep = add_letters(cs, 2, reason="dnc", phone_base=7275571000)
    gone = add_letters(cs, 3)
    preview = operator.get("/ui/dead-letters/purge?scope=matching&reason=manual_list_undefined")
    assert "Delete 3 letters for good" in preview.text
    form = {
        "csrf": csrf_of(preview.text),
        "confirm": "yes",
        "scope": "matching",
        "reason": "manual_list_undefined",
    }
    reply = operator.post("/ui/dead-letters/purge", data=form, follow_redirects=False)
    assert (
        reply.status_code == 303
        and reply.headers["location"] == "/ui/dead-letters?reason=manual_list_undefined"
    )
    assert {x.id for x in store_of(cs).iter()} == {x.id for x in keep}
    assert "Purged 3" in operator.get(reply.headers["location"]).text
    assert gone


def test_a_confirmation_acts_on_the_window_it_previewed(operator: TestClient, cs: Settings) -> None:
    now = time.time()
    inside = add_letters(cs, 2, now=now - 600)
    preview = operator.get("/ui/dead-letters/purge?scope=matching&within=1h")
    since = re.search(r'name="since_ts" value="([^"]+)"', preview.text)
    assert since and abs(float(since.group(1)) - (now - 3600)) < 5
    add_letters(cs, 1, now=now - 4000)  # outside the previewed window
    form = {
        "csrf": csrf_of(preview.text),
        "confirm": "yes",
        "scope": "matching",
        "since_ts": since.group(1),
    }
    operator.post("/ui/dead-letters/purge", data=form)
    assert len(store_of(cs)) == 1 and inside


def test_export_streams_json_lines_and_csv_of_what_matches(
    operator: TestClient, cs: Settings
) -> None:
    add_letters(cs, 3)
    add_letters(cs, 2, reason="dnc", phone_base=7275581000)
    reply = operator.get("/ui/dead-letters/export?format=jsonl&reason=dnc")
    assert reply.status_code == 200
    assert reply.headers["content-disposition"].startswith('attachment; filename="dead-letters-')
    records = [json.loads(line) for line in reply.text.splitlines()]
    assert [r["reason"] for r in records] == ["dnc", "dnc"]
    assert set(records[0]) >= {"id", "job_id", "reason", "error", "attempts", "job", "replays"}
    reply = operator.get("/ui/dead-letters/export?format=csv")
    rows = list(csv.DictReader(io.StringIO(reply.text)))
    assert len(rows) == 5 and rows[0]["phone_number"].startswith("72755")
    assert json.loads(rows[0]["job"])["lead"]["phone_number"] == rows[0]["phone_number"]
    assert operator.get("/ui/dead-letters/export?format=xml").status_code == 400


def test_csv_cells_never_start_a_formula(operator: TestClient, cs: Settings) -> None:
    add_letters(cs, 1, error='=HYPERLINK("http://evil")')
    rows = list(
        csv.DictReader(io.StringIO(operator.get("/ui/dead-letters/export?format=csv").text))
    )
    assert rows[0]["error"].startswith("'=")


# -- dialers and lanes -----------------------------------------------------------------------

DIALERS_TOML = """
default = "east"

[dialers.east]
url = "http://127.0.0.1:9/agc/api.php"
user = "6666"
pass_env = "CONSOLE_EAST_PASS"
rate_limit = 50

[dialers.west]
url = "http://127.0.0.1:9/west/agc/api.php"
user = "6666"
pass_env = "CONSOLE_WEST_PASS"
"""


@pytest.fixture
def two(redis_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Console settings with two dialers (east, the default, at 50 calls/s; west)."""
    monkeypatch.setenv("CONSOLE_EAST_PASS", SECRET)
    monkeypatch.setenv("CONSOLE_WEST_PASS", "west-Sekr1t-abc")
    path = tmp_path / "dialers.toml"
    path.write_text(DIALERS_TOML)
    settings = make_settings(redis_url, intake_tokens=(TOKEN,), dialers_file=str(path))
    seed_users(settings)
    return settings


@pytest.fixture
def two_operator(two: Settings) -> Iterator[TestClient]:
    with session_client(create_app(two), OPERATOR[0]) as client:
        yield client


def _row(html: str, table_id: str, name: str) -> str:
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S)
    assert table, f"no table {table_id}"
    row = re.search(rf'<tr>\s*<th scope="row">{name}</th>(.*?)</tr>', table.group(1), re.S)
    assert row, f"no row {name} in {table_id}"
    return re.sub(r"\s+", " ", row.group(1))


def _cells(row: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]


def test_overview_shows_each_dialers_lanes_pause_and_rate_limit(
    two_operator: TestClient, two: Settings
) -> None:
    from dispatcher.ops.producer import push_jobs

    now = time.time()
    jobs = [
        prepare_job(
            {"agent_user": "1000", "phone_number": f"72755510{i:02d}", **route},
            settings=two,
            now=now - 125,
        )
        for i, route in enumerate(
            [
                {"dialer": "east"},
                {"dialer": "east", "priority": "bulk"},
                {"dialer": "east", "priority": "bulk"},
                {"dialer": "west", "priority": "bulk"},
            ]
        )
    ]
    push_jobs(jobs, settings=two)
    backend = get_backend(two)
    backend.redis.sadd(backend.keys.pauses, "west")
    backend.redis.hset(
        backend.keys.pause("west"),
        mapping={
            "until": f"{now + 240:.3f}",
            "reason": "network",
            "kind": "outage",
            "since": f"{now:.3f}",
        },
    )
    text = two_operator.get("/ui/").text
    east = _cells(_row(text, "dialers", "east"))
    west = _cells(_row(text, "dialers", "west"))
    # waiting realtime, bulk, oldest waiting, calls, rate limit, link
    assert east[:2] == ["1", "2"] and east[3:5] == ["running", "50/s"]
    assert west[:2] == ["0", "1"] and west[4] == "none"
    assert re.fullmatch(r"PAUSED \(network\), (4|3) min left", west[3]), west
    for age in (east[2], west[2]):
        assert re.fullmatch(r"\d(\.\d)? s", age), age  # published just now
    assert 'href="/ui/dead-letters?dialer=west"' in text
    assert "True" not in text and "False" not in text
    # Nothing queued: a dash, not an empty cell or "None".
    backend.redis.delete(
        *(backend.keys.lane(d, lane) for d in ("east", "west") for lane in ("realtime", "bulk"))
    )
    idle = _cells(_row(two_operator.get("/ui/").text, "dialers", "east"))
    assert idle[:3] == ["0", "0", "\u2013"]


def test_the_dead_letter_list_filters_by_dialer_and_shows_dialer_and_lane(
    two_operator: TestClient, two: Settings
) -> None:
    east = add_letters(two, 3, dialer="east")
    west = add_letters(two, 2, dialer="west", priority="bulk", phone_base=7275560000)
    west_dnc = add_letters(two, 1, dialer="west", reason="dnc", phone_base=7275570000)
    page = two_operator.get("/ui/dead-letters").text
    assert '<option value="east" >east</option><option value="west" >west</option>' in page
    assert set(ids_on(page)) == {x.id for x in east + west + west_dnc}
    row = re.search(rf'href="/ui/dead-letters/{west[0].id}">.*?</tr>', page, re.S)
    assert row and "<td>west</td>" in row.group(0) and "<td>bulk</td>" in row.group(0)
    row = re.search(rf'href="/ui/dead-letters/{east[0].id}">.*?</tr>', page, re.S)
    assert row and "<td>east</td>" in row.group(0) and "<td>realtime</td>" in row.group(0)
    listed = two_operator.get("/ui/dead-letters?dialer=west").text
    assert set(ids_on(listed)) == {x.id for x in west + west_dnc}
    assert '<option value="west" selected>west</option>' in listed
    both = two_operator.get("/ui/dead-letters?dialer=west&reason=dnc").text
    assert ids_on(both) == [west_dnc[0].id]
    assert ids_on(two_operator.get("/ui/dead-letters?dialer=east&reason=dnc").text) == []
    bad = two_operator.get("/ui/dead-letters?dialer=north")
    assert bad.status_code == 400 and "dialer: unknown dialer &#39;north&#39;" in bad.text
    assert "(known: east, west)" in bad.text
    # The filter follows into the actions and the export.
    preview = two_operator.get("/ui/dead-letters/purge?scope=matching&dialer=west").text
    assert "of dialer west" in preview and "Delete 3 letters for good" in preview
    assert 'name="dialer" value="west"' in preview
    rows = list(
        csv.DictReader(
            io.StringIO(two_operator.get("/ui/dead-letters/export?format=csv&dialer=east").text)
        )
    )
    assert [(r["dialer"], r["priority"]) for r in rows] == [("east", "realtime")] * 3
    reply = two_operator.post(
        "/ui/dead-letters/purge",
        data={"csrf": csrf_of(preview), "confirm": "yes", "scope": "matching", "dialer": "west"},
        follow_redirects=False,
    )
    assert reply.headers["location"] == "/ui/dead-letters?dialer=west"
    assert {x.id for x in store_of(two).iter()} == {x.id for x in east}


def test_detail_and_job_pages_show_dialer_lane_and_reconciliation(
    two_operator: TestClient, two: Settings
) -> None:
    [letter] = add_letters(two, 1, dialer="west", priority="bulk")
    page = two_operator.get(f"/ui/dead-letters/{letter.id}").text
    assert "<dt>Dialer</dt><dd>west</dd>" in page and "<dt>Lane</dt><dd>bulk</dd>" in page
    # A job reconciled with VICIdial: found twice, one copy deleted (dialer and lane as
    # the enqueue recorded them).
    backend = get_backend(two)
    backend.redis.hset(
        backend.keys.job(letter.job_id),
        mapping={
            "dialer": "west",
            "priority": "bulk",
            "state": "added",
            "lead_id": "7",
            "reconcile": "duplicates",
            "duplicate_lead_ids": "9,12",
            "deleted_lead_ids": "12",
        },
    )
    job = two_operator.get(f"/ui/jobs/{letter.job_id}").text
    assert "<dt>dialer</dt><dd>west</dd>" in job and "<dt>priority</dt><dd>bulk</dd>" in job
    assert "<dt>duplicate_lead_ids</dt><dd>9, 12</dd>" in job
    assert "found in VICIdial more than once" in job
    assert re.search(r"added as lead 7;\s+the other copies are leads 9, 12", job)
    assert "deleted as duplicates: 12" in job


# -- reconcile -------------------------------------------------------------------------------


def _deny_lookups(settings: Settings, server: str) -> None:
    """What a worker records when the Non-Agent API says the user may not look leads up."""
    get_backend(settings).execution.lookup_record(
        server,
        state="denied",
        error="ERROR: auth USER DOES NOT HAVE PERMISSION TO GET LEAD INFO - 6666",
        missing="View Reports",
        fix='Admin > Users > 6666: set "View Reports" to 1',
        hold_s=300,
    )


def _held(settings: Settings, server: str) -> bool:
    gate = get_backend(settings).execution.lookup_gate(
        server, mode="lookup", lease_s=5, fresh_s=600
    )
    return gate.verdict == "held"


def test_overview_shows_the_reconcile_mode_and_what_to_fix(
    two_operator: TestClient, two: Settings
) -> None:
    add_letters(two, 2, reason="ambiguous", dialer="west")
    get_backend(two).execution.lookup_record(
        "east", state="ok", error="", missing="", fix="", hold_s=0
    )
    _deny_lookups(two, "west")
    text = two_operator.get("/ui/").text
    assert "On: a call whose answer never came is looked up in VICIdial" in text
    assert "<code>source_id</code>" in text
    assert _cells(_row(text, "lookups", "east"))[0] == "permitted"
    west = _cells(_row(text, "lookups", "west"))
    assert west[0] == "NOT permitted" and west[2] == "View Reports"
    assert 'set "View Reports" to 1' in west[3].replace("&#34;", '"')
    assert "USER DOES NOT HAVE PERMISSION" in west[3]
    assert "ambiguous calls of west become dead letters" in text
    assert '2 ambiguous dead letters:\n<a href="/ui/dead-letters?reason=ambiguous">' in text
    assert 'href="/ui/dead-letters/reconcile?scope=matching&amp;reason=ambiguous"' in text
    # Reconciliation off: the overview says so, and what happens instead.
    off = create_app(two.replace(ambiguous="dead_letter"))
    with session_client(off, OPERATOR[0]) as client:
        text = client.get("/ui/").text
    assert "Off (<code>DISPATCHER_AMBIGUOUS=dead_letter</code>)" in text
    # Not checked yet (a fresh fleet): said, not shown as a failure.
    prefix = two.key_prefix
    get_backend(two).redis.delete(
        f"{prefix}:lookup:east", f"{prefix}:lookup:west", f"{prefix}:lookups"
    )
    text = two_operator.get("/ui/").text
    assert _cells(_row(text, "lookups", "west"))[0].startswith("not checked yet")
    assert "become dead letters" not in text


def test_reconcile_one_from_its_page_hands_it_to_the_workers(
    two_operator: TestClient, two: Settings
) -> None:
    [letter] = add_letters(two, 1, reason="ambiguous", dialer="west", now=time.time() - 3600)
    _deny_lookups(two, "west")
    assert _held(two, "west")
    page = two_operator.get(f"/ui/dead-letters/{letter.id}").text
    assert "Look-ups on west" in page and "NOT permitted" in page and "View Reports" in page
    form = re.search(
        r'<form method="post" action="/ui/dead-letters/reconcile">(.*?)</form>', page, re.S
    )
    assert form and f'name="id" value="{letter.id}"' in form.group(1)
    with capture_logs() as events:
        reply = two_operator.post(
            "/ui/dead-letters/reconcile",
            data={"scope": "selected", "id": letter.id, "confirm": "yes", "csrf": csrf_of(page)},
            follow_redirects=False,
        )
    assert reply.status_code == 303 and reply.headers["location"] == f"/ui/jobs/{letter.job_id}"
    landing = two_operator.get(reply.headers["location"]).text
    assert "Handed 1 letter(s) to the workers" in landing
    assert '<span id="job-state">retrying</span>' in landing
    assert "<dt>reconcile</dt><dd>pending" in landing
    assert store_of(two).get(letter.id) is None
    backend = get_backend(two)
    [envelope] = backend.redis.zrange(backend.keys.scheduled, 0, -1)
    [[message], _, _] = json.loads(base64.b64decode(json.loads(envelope)["body"]))
    assert message["job_id"] == letter.job_id and message["reconcile"]["step"] == "lookup"
    assert message["dialer"] == "west"
    assert not _held(two, "west")  # the operator fixed the cause: the look-up is tried again
    [event] = [e for e in events if e["event"] == "console.reconcile"]
    assert event["user"] == OPERATOR[0] and event["reconciling"] == 1 and event["ids"] == 1
    assert [e["user"] for e in events if e["event"] == "dlq.reconcile_requested"] == [OPERATOR[0]]


def test_reconcile_matching_previews_how_many_and_leaves_other_reasons_alone(
    two_operator: TestClient, two: Settings
) -> None:
    east = add_letters(two, 2, reason="ambiguous", dialer="east")
    west = add_letters(two, 1, reason="ambiguous", dialer="west", phone_base=7275560000)
    dnc = add_letters(two, 2, reason="dnc", dialer="east", phone_base=7275570000)
    listing = two_operator.get("/ui/dead-letters").text
    assert "Reconcile all matching…" in listing and "Reconcile selected…" in listing
    assert "Reconcile all matching" not in two_operator.get("/ui/dead-letters?reason=dnc").text
    preview = two_operator.get("/ui/dead-letters/reconcile?scope=matching").text
    assert "3 ambiguous letters will be handed to the workers" in preview
    assert "2 letters of other reasons will be left alone" in preview
    assert "Reconcile 3 letters" in preview
    assert "No worker is alive" in preview
    assert len(store_of(two)) == 5  # a preview changes nothing
    token = csrf_of(preview)
    # Not confirmed: the preview again, nothing handed over.
    again = two_operator.post(
        "/ui/dead-letters/reconcile", data={"csrf": token, "scope": "matching"}
    )
    assert again.status_code == 200 and "Reconcile 3 letters" in again.text
    assert len(store_of(two)) == 5
    # One dialer's letters.
    reply = two_operator.post(
        "/ui/dead-letters/reconcile",
        data={"csrf": token, "confirm": "yes", "scope": "matching", "dialer": "east"},
        follow_redirects=False,
    )
    assert reply.headers["location"] == "/ui/dead-letters?dialer=east"
    flash = two_operator.get(reply.headers["location"]).text
    assert "Handed 2 letter(s)" in flash and "2 not ambiguous, left alone" in flash
    assert {x.id for x in store_of(two).iter()} == {x.id for x in west + dnc}
    # Selected letters: the ambiguous one is handed over, the DNC one left alone.
    reply = two_operator.post(
        "/ui/dead-letters/reconcile",
        content=urlencode(
            [
                ("csrf", token),
                ("confirm", "yes"),
                ("scope", "selected"),
                ("id", west[0].id),
                ("id", dnc[0].id),
            ]
        ),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert "Handed 1 letter(s)" in reply.text and "1 not ambiguous, left alone" in reply.text
    assert {x.id for x in store_of(two).iter()} == {x.id for x in dnc}
    backend = get_backend(two)
    assert backend.redis.zcard(backend.keys.scheduled) == 3
    # Nothing ambiguous left: the preview says so and offers no button.
    none_left = two_operator.get("/ui/dead-letters/reconcile?scope=matching").text
    assert "No ambiguous dead letters match" in none_left and "Reconcile 0" not in none_left
    assert east


# -- job lookup ------------------------------------------------------------------------------


def test_job_lookup(operator: TestClient, cs: Settings) -> None:
    [letter] = add_letters(cs, 1)
    page = operator.get(f"/ui/jobs?job_id={letter.job_id}").text
    assert '<span id="job-state">dead</span>' in page
    assert f'href="/ui/dead-letters/{letter.id}"' in page
    assert operator.get("/ui/jobs?job_id=feedfeed").status_code == 404
    assert operator.get("/ui/jobs?job_id=" + "x" * 200).status_code == 400
    assert operator.get("/ui/jobs").status_code == 200


# -- serve without the intake ----------------------------------------------------------------


def test_console_only_app_needs_no_token_and_has_no_v1_routes(cs: Settings) -> None:
    settings = cs.replace(intake_tokens=())
    seed_users(settings)
    app = create_app(settings, intake=False)
    with session_client(app, OPERATOR[0]) as client:
        assert client.get("/ui/").status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.post("/v1/leads", json={}).status_code == 401
    from dispatcher.model.errors import ConfigError

    with pytest.raises(ConfigError):
        create_app(settings)


def test_serve_no_intake_runs_the_console_alone_without_a_token(
    redis_url: str, tmp_path: Any
) -> None:
    """`dispatcher serve` still refuses to start without a token; --no-intake is the way."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from dispatcher.devtools.localfleet import settings_env
    from dispatcher.devtools.redis_server import free_port
    from tests.conftest import ROOT, wait_for

    settings = make_settings(redis_url)
    env = {**os.environ, **settings_env(settings)}
    env.pop("DISPATCHER_INTAKE_TOKENS", None)
    refused = subprocess.run(
        [sys.executable, "-m", "dispatcher.intake", "--port", str(free_port())],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "--no-intake" in refused.stderr
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher.intake", "--no-intake", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                return False

        wait_for(up, timeout=30, message="serve --no-intake to answer")
        assert httpx.get(f"{base}/ui/login").status_code == 200
        assert httpx.get(f"{base}/ui/", follow_redirects=False).status_code == 303
        assert httpx.post(f"{base}/v1/leads", json={}).status_code == 401
        assert httpx.get(f"{base}/openapi.json").status_code == 404  # no intake, no document
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        log.close()
