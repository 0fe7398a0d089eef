"""The console's gate (dispatcher/intake/console/gate.py): no page without a login, no
change without the session's CSRF token from this origin, the same security headers
on every answer; and the roles: a viewer reads, an operator acts.

The real app (``create_app``) answers through Starlette's TestClient, against a
real Redis (tests/intake/console/conftest.py); the helpers are tests/support/console.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from starlette.testclient import TestClient

from dispatcher.config.settings import Settings
from dispatcher.store.backend import get_backend
from tests.support.console import (
    OPERATOR,
    TOKEN,
    VIEWER,
    add_letters,
    capture_logs,
    csrf_of,
    session_client,
    store_of,
)
from tests.support.queues import queue_length

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
