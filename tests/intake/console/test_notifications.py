"""The console's notifications room (dispatcher/intake/console/notifications.py): the
backlog and failed notifications, resent or purged by an operator (logged with the
operator's name), read-only for a viewer; receivers shown by origin only.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from dispatcher.config.settings import Settings
from dispatcher.intake import create_app
from dispatcher.store.backend import get_backend
from dispatcher.store.deadletter import DeadLetterStore
from dispatcher.store.outbox import notify_for
from tests.support.console import (
    OPERATOR,
    SECRET,
    TOKEN,
    VIEWER,
    capture_logs,
    csrf_of,
    seed_users,
    session_client,
)
from tests.support.settings import make_settings

RECEIVER = "https://crm.example.com/hooks/dispatcher?token=receiver-token-xyz"


@pytest.fixture
def ns(redis_url: str) -> Settings:
    settings = make_settings(
        redis_url,
        intake_tokens=(TOKEN,),
        vicidial_url="http://127.0.0.1:9/agc/api.php",
        vicidial_user="6666",
        vicidial_pass=SECRET,
        notify_url=RECEIVER,
        notify_secret="console-notify-secret-0123",
    )
    seed_users(settings)
    return settings


def _letters(settings: Settings, n: int) -> list[str]:
    """Dead letters whose events are written (and then failed, for the first n - 1)."""
    backend = get_backend(settings)
    store = DeadLetterStore(backend)
    ids = []
    for i in range(n):
        job_id = f"{i:032x}"
        job = {
            "job_id": job_id,
            "lead": {"agent_user": "1000", "phone_number": f"72755512{i:02d}"},
        }
        store.record(
            job=job,
            reason="dnc",
            error=f"ERROR: add_lead PHONE NUMBER IN DNC - 72755512{i:02d}|1000|{SECRET}",
            http_status=200,
            attempts=1,
            first_failed_at=None,
        )
        ids.append(job_id)
    assert notify_for({"job_id": "x"}, settings) is not None
    claimed = backend.outbox.claim(limit=n - 1, lease_s=30, token="t")
    backend.outbox.settle(
        [
            backend.outbox.attempt_failed_args(
                c.event.id, token="t", delay_s=1, window_s=0, error="HTTP 503", status=503
            )
            for c in claimed
        ]
    )
    return [c.event.id for c in claimed]


def _client(settings: Settings, who: tuple[str, str]) -> Any:
    return session_client(create_app(settings), who[0])


def test_the_page_shows_the_backlog_and_failed_ones_without_secrets(ns: Settings) -> None:
    failed = _letters(ns, 3)
    with _client(ns, VIEWER) as viewer:
        page = viewer.get("/ui/notifications")
    assert page.status_code == 200
    html = page.text
    assert re.search(r"<dt>Pending</dt><dd>1\b", html)
    assert re.search(r"<dt>Failed</dt><dd>2\b", html)
    for event_id in failed:
        assert event_id not in html  # a viewer gets no tick boxes
    assert "HTTP 503" in html and "https://crm.example.com:443" in html
    assert "receiver-token-xyz" not in html and SECRET not in html
    assert "7275551200" not in html  # no phone, not even in an error line
    assert "Send all 2 again" not in html  # viewers read
    assert 'aria-current="page">Notifications' in html


def test_an_operator_resends_ticked_failed_ones_and_purges_the_rest(ns: Settings) -> None:
    failed = _letters(ns, 3)
    backend = get_backend(ns)
    with _client(ns, OPERATOR) as operator, capture_logs() as logged:
        page = operator.get("/ui/notifications")
        assert all(f'value="{e}"' in page.text for e in failed)
        reply = operator.post(
            "/ui/notifications/retry",
            data={"csrf": csrf_of(page.text), "id": failed[0]},
            follow_redirects=False,
        )
        assert reply.status_code == 303
        landing = operator.get("/ui/notifications").text
        assert "1 failed notification(s) will be sent again" in landing
        assert backend.outbox.counts().failed == 1
        reply = operator.post(
            "/ui/notifications/purge",
            data={"csrf": csrf_of(landing), "scope": "all"},
            follow_redirects=False,
        )
        assert reply.status_code == 303
        assert "1 failed notification(s) deleted for good" in operator.get("/ui/notifications").text
    counts = backend.outbox.counts()
    assert (counts.failed, counts.pending) == (0, 2)
    events = [(e["event"], e.get("user"), e.get("count")) for e in logged]
    assert ("console.notify_retry", OPERATOR[0], 1) in events
    assert ("console.notify_purge", OPERATOR[0], 1) in events


def test_a_viewer_may_not_resend_and_a_form_needs_its_csrf_token(ns: Settings) -> None:
    _letters(ns, 2)
    backend = get_backend(ns)
    with _client(ns, VIEWER) as viewer:
        page = viewer.get("/ui/notifications")
        refused = viewer.post(
            "/ui/notifications/retry",
            data={"csrf": csrf_of(page.text), "scope": "all"},
            follow_redirects=False,
        )
        assert refused.status_code == 403
    with _client(ns, OPERATOR) as operator:
        forged = operator.post(
            "/ui/notifications/retry", data={"scope": "all"}, follow_redirects=False
        )
        assert forged.status_code in (400, 403)
    assert backend.outbox.counts().failed == 1


def test_the_overview_shows_the_backlog(redis_url: str) -> None:
    settings = make_settings(
        redis_url,
        intake_tokens=(TOKEN,),
        notify_url=RECEIVER,
        notify_secret="console-notify-secret-0123",
    )
    seed_users(settings)
    _letters(settings, 3)
    with _client(settings, OPERATOR) as operator:
        html = operator.get("/ui/").text
    card = re.search(r'<div class="card" id="notify-card">(.*?)</div>', html, re.S)
    assert card and ">1<" in card.group(1) and "2 failed" in card.group(1)
