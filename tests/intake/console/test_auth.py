"""Logging in and out (dispatcher/intake/console/auth.py): where a login leads, the
cookies, sessions in Redis (idle timeout, lifetime, logout, a user removed), the same
answer for a wrong password and an unknown user, and the throttle's edges
(tests/intake/console/test_login_throttle.py has the attacks).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from dispatcher.config.settings import Settings
from dispatcher.intake import create_app
from dispatcher.intake.console.sessions import CLIENT_LIMIT, PAIR_LIMIT, LoginThrottle
from dispatcher.store.backend import get_backend
from dispatcher.store.users import UserStore
from tests.support.console import OPERATOR, VIEWER, csrf_of, login, seed_users, session_client


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
    """The limits' edges (tests/intake/console/test_login_throttle.py has the attacks)."""
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
