"""Outcome notifications: the contract's pieces, the outbox, and the sender, over real parts.

Real Redis (the suite's redis-server), the real Lua scripts, a real HTTP receiver on
loopback (tests/support/receiver.py) that answers 2xx, 500, hangs past the timeout, closes
the connection without an answer, redirects, or is down; the signature is checked by an
independent implementation (stdlib ``hmac``, in the same module, not the product's
function). The worker processes' side (a real `celery worker`, SIGKILL between the outcome
and the POST) is tests/e2e/test_notify_e2e.py.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from dispatcher import InvalidLead, enqueue_lead
from dispatcher.config.settings import Settings
from dispatcher.intake.app import create_app
from dispatcher.intake.metrics import read_snapshot, render_metrics
from dispatcher.model.errors import ConfigError
from dispatcher.model.jobs import Job
from dispatcher.model.notifications import BODY_KEYS, Event, allowed, notify_url_problem
from dispatcher.ops.erasure import forget_phone
from dispatcher.ops.notifications import list_notifications, purge_failed, retry_failed
from dispatcher.ops.producer import enqueue_leads
from dispatcher.ops.status import fleet_status
from dispatcher.store.backend import Backend, get_backend
from dispatcher.store.deadletter import DeadLetterStore
from dispatcher.store.outbox import event_error, notify_for
from tests.support.cli import check, run_cli
from tests.support.receiver import SECRET, Receiver, verify
from tests.support.settings import make_settings
from tests.support.waiting import wait_for
from workers.notifier import Breaker, CpuShare, Notifier, SendPolicy

PHONE = "7275551212"
TOKEN = "intake-token-0123456789abcdef"


# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as rec:
        yield rec


def nsettings(redis_url: str, receiver: Receiver | None = None, **over: Any) -> Settings:
    values: dict[str, Any] = {
        "notify_secret": SECRET,
        "notify_timeout_s": 1.0,
        "notify_retry_base_s": 0.05,
        "notify_retry_cap_s": 0.2,
    }
    if receiver is not None:
        values["notify_url"] = receiver.url
    values.update(over)
    return make_settings(redis_url, **values)


def fast_policy(settings: Settings, **over: Any) -> SendPolicy:
    values: dict[str, Any] = {
        "base_s": 0.05,
        "cap_s": 0.2,
        "window_s": settings.notify_retry_s,
        "breaker_threshold": 50,
        "breaker_base_s": 0.2,
        "breaker_cap_s": 0.5,
        "busy_delay_s": 0.05,
        "poll_min_s": 0.01,
        "poll_max_s": 0.05,
    }
    values.update(over)
    return SendPolicy(**values)


def job_message(job_id: str, **over: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "v": 1,
        "job_id": job_id,
        "lead": {
            "agent_user": "1000",
            "phone_number": PHONE,
            "phone_code": "1",
            "first_name": "Bobby",
            "email": "bobby@example.com",
        },
        "dnc_check": True,
        "campaign_dnc_check": True,
        "idempotency_key": f"form-{job_id}",
        "dialer": "default",
    }
    message.update(over)
    return message


def succeed(
    backend: Backend,
    settings: Settings,
    job: dict[str, Any],
    *,
    token: str = "t1",
    lead_id: str = "7",
) -> list[str]:
    reply = backend.execution.call(
        *backend.execution.succeed_args(
            job["job_id"],
            token=token,
            lead_id=lead_id,
            list_id="101",
            campaign="TESTCAMP",
            done_ttl=600,
            ttl=600,
            attempts=1,
            latency_field="latency_bucket:0.1",
            latency_ms=12.0,
            server="default",
            notify=notify_for(job, settings),
        )
    )
    return [x.decode() if isinstance(x, bytes) else str(x) for x in reply]


def dead(
    backend: Backend,
    job: dict[str, Any],
    *,
    reason: str = "dnc",
    error: str = f"ERROR: add_lead PHONE NUMBER IN DNC - {PHONE}|1000",
) -> None:
    DeadLetterStore(backend).record(
        job=job, reason=reason, error=error, http_status=200, attempts=1, first_failed_at=None
    )


def run_sender(settings: Settings, until: Any, *, timeout: float = 15.0, **policy: Any) -> Notifier:
    notifier = Notifier(settings, policy=fast_policy(settings, **policy), rng=random.Random(7))
    notifier.start()
    try:
        wait_for(until, timeout=timeout, message="the notifications")
    finally:
        notifier.stop(timeout=3.0)
    return notifier


# ----------------------------------------------------------------- receivers allowed


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://crm.example.com/hooks/dispatcher", True),
        ("https://crm.example.com/hooks/", True),
        ("https://crm.example.com/hooks", True),
        ("https://CRM.example.com:443/hooks/x?tenant=4", True),
        ("https://crm.example.com/hooksmith", False),
        ("https://crm.example.com.evil.net/hooks/x", False),
        ("https://crm.example.com@evil.net/hooks/x", False),
        ("https://user:pw@crm.example.com/hooks/x", False),
        ("http://crm.example.com/hooks/x", False),
        ("https://crm.example.com:8443/hooks/x", False),
        ("https://crm.example.com/hooks/../admin", False),
        ("https://crm.example.com/hooks/%2e%2e/admin", False),
        ("https://crm.example.com/hooks/x#frag", False),
        ("https://crm.example.com/hooks/\\..\\admin", False),
        ("https://crm.example.com/hooks/x y", False),
        ("javascript://crm.example.com/hooks/", False),
        ("ftp://crm.example.com/hooks/x", False),
    ],
)
def test_the_allow_list_matches_scheme_host_port_and_a_path_boundary(url: str, ok: bool) -> None:
    assert allowed(url, ["https://crm.example.com/hooks/"]) is ok


def test_a_prefix_without_a_path_allows_the_whole_origin() -> None:
    assert allowed("https://crm.example.com/any/thing", ["https://crm.example.com"])
    assert not allowed("https://crm.example.com.evil/any", ["https://crm.example.com"])
    assert notify_url_problem("https://crm.example.com/x?a=1", prefix=True) is not None


def test_a_job_naming_a_receiver_outside_the_allow_list_is_an_invalid_lead(
    redis_url: str,
) -> None:
    s = nsettings(redis_url, notify_allowed=("https://crm.example.com/hooks/",))
    lead = {"agent_user": "1000", "phone_number": PHONE}
    for url in ("https://evil.example.net/hooks/x", "https://crm.example.com.evil/hooks/x", 42):
        with pytest.raises(InvalidLead) as caught:
            enqueue_lead(settings=s, notify_url=url, **lead)
        assert [e.field for e in caught.value.errors] == ["notify_url"]
    # Bulk: every bad item named, nothing enqueued.
    with pytest.raises(InvalidLead) as caught:
        enqueue_leads(
            [
                {**lead, "notify_url": "https://crm.example.com/hooks/ok"},
                {**lead, "notify_url": "http://crm.example.com/hooks/x", "gender": "Q"},
            ],
            settings=s,
        )
    assert sorted((e.index, e.field) for e in caught.value.errors) == [
        (1, "gender"),
        (1, "notify_url"),
    ]
    assert redis.Redis.from_url(redis_url).llen(f"{s.queue}.default.bulk") == 0
    # Allowed: the URL travels in the job's message.
    job_id = enqueue_lead(settings=s, notify_url="https://crm.example.com/hooks/ok", **lead)
    raw = redis.Redis.from_url(redis_url).lrange(f"{s.queue}.default.realtime", 0, -1)
    assert job_id.encode() in raw[0]
    # No allow-list: a job cannot name its own receiver at all (no open redirect).
    with pytest.raises(InvalidLead, match="notify_url: not allowed"):
        enqueue_lead(settings=nsettings(redis_url), notify_url="https://x.example/h", **lead)


def test_the_intake_refuses_a_receiver_outside_the_allow_list_with_422(redis_url: str) -> None:
    s = nsettings(
        redis_url, notify_allowed=("https://crm.example.com/hooks/",), intake_tokens=(TOKEN,)
    )
    with TestClient(create_app(s)) as client:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        lead = {"agent_user": "1000", "phone_number": PHONE}
        bad = client.post(
            "/v1/leads", json={**lead, "notify_url": "https://evil.example/x"}, headers=headers
        )
        assert bad.status_code == 422
        assert [e["field"] for e in bad.json()["errors"]] == ["notify_url"]
        good = client.post(
            "/v1/leads",
            json={**lead, "notify_url": "https://crm.example.com/hooks/a"},
            headers=headers,
        )
        assert good.status_code == 202
        batch = client.post(
            "/v1/leads:batch",
            json={"leads": [{**lead, "notify_url": "https://evil.example/x"}, lead]},
            headers=headers,
        )
        results = batch.json()["results"]
        assert results[0]["errors"][0]["field"] == "notify_url" and "job_id" in results[1]


def test_settings_check_notify_values_and_keep_the_secret_out_of_repr(redis_url: str) -> None:
    with pytest.raises(ConfigError, match="DISPATCHER_NOTIFY_URL"):
        Settings(redis_url=redis_url, notify_url="ftp://x.example/h")
    with pytest.raises(ConfigError, match="DISPATCHER_NOTIFY_ALLOWED"):
        Settings(redis_url=redis_url, notify_allowed=("https://x.example/h?q=1",))
    with pytest.raises(ConfigError, match="DISPATCHER_NOTIFY_SECRET is required"):
        Settings(redis_url=redis_url, notify_url="https://x.example/h").require_notify()
    s = Settings(redis_url=redis_url, notify_url="https://x.example/h", notify_secret=SECRET)
    s.require_notify()
    assert SECRET not in repr(s) and SECRET in s.secrets
    parsed = Settings.from_mapping(
        {"DISPATCHER_NOTIFY_ALLOWED": "https://a.example/h/, https://b.example"}
    )
    assert parsed.notify_allowed == ("https://a.example/h/", "https://b.example")


def test_a_message_with_a_spoiled_notify_url_keeps_its_lead() -> None:
    job = Job.from_message(job_message("j", notify_url="not a url"))
    assert job.notify_url == "not a url" and job.lead.phone_number == PHONE
    assert "notify_url" not in Job.from_message(job_message("j")).to_message()


def test_the_event_error_holds_no_phone_no_lead_field_and_no_password() -> None:
    lead = job_message("j")["lead"]
    line = (
        f"ERROR: add_lead PHONE NUMBER IN DNC - {PHONE}|1000 Bobby bobby@example.com "
        "pass=hunter2secret 7275559999"
    )
    text = event_error(line, lead, ("hunter2secret",))
    for value in (PHONE, "Bobby", "bobby@example.com", "hunter2secret", "7275559999", "|1000"):
        assert value not in text
    assert text.startswith("ERROR: add_lead PHONE NUMBER IN DNC")


# ---------------------------------------------------------------- the outbox (Redis)


def test_an_outcome_writes_its_event_in_the_same_step_once(redis_url: str) -> None:
    s = nsettings(redis_url, notify_url="https://crm.example.com/hooks/x")
    backend = get_backend(s)
    job = job_message("a" * 32)
    assert succeed(backend, s, job)[0] == "ok"
    # The same command again (a reply lost, resent): no second event.
    assert succeed(backend, s, job)[0] == "again"
    # Another copy's late success with another lead: a duplicate, no event.
    assert succeed(backend, s, job, token="t2", lead_id="8")[0] == "duplicate"
    page = list_notifications(backend)
    assert page.counts.pending == 1 and page.counts.due == 1
    (stored,) = page.events
    body = stored.event.to_dict()
    assert list(body) == list(BODY_KEYS)
    assert body["type"] == "lead.added" and body["state"] == "added"
    assert (body["lead_id"], body["list_id"], body["campaign"]) == ("7", "101", "TESTCAMP")
    assert body["idempotency_key"] == f"form-{'a' * 32}" and body["dialer"] == "default"
    assert PHONE not in json.dumps(stored.to_dict())
    # A job without a receiver writes nothing.
    quiet = nsettings(redis_url)
    assert succeed(get_backend(quiet), quiet, job_message("b" * 32))[0] == "ok"
    assert backend.outbox.counts().pending == 1


def test_a_dead_letter_then_its_replay_added_are_two_events_in_order(redis_url: str) -> None:
    s = nsettings(redis_url, notify_url="https://crm.example.com/hooks/x")
    backend = get_backend(s)
    job = job_message("c" * 32)
    dead(backend, job)
    dead(backend, job)  # written again (a resent command, a tool): no second event
    replayed = backend.execution.call(
        *backend.execution.replay_args(job["job_id"], envelope="{}", seq=1, ttl=600, lane="q")
    )
    assert replayed[0] in (b"replayed", "replayed")
    assert succeed(backend, s, job)[0] == "ok"
    page = list_notifications(backend)
    assert [(e.event.type, e.status) for e in page.events] == [
        ("lead.dead_lettered", "pending"),
        ("lead.replayed_added", "waiting"),  # behind the first: in order per job
    ]
    first = page.events[0].event
    assert (first.state, first.reason, first.lead_id) == ("dead", "dnc", None)
    assert first.error is not None and PHONE not in first.error and "|1000" not in first.error
    # Only the first is due; once it is delivered, the second is.
    (claimed,) = backend.outbox.claim(limit=10, lease_s=30, token="x")
    assert claimed.event.type == "lead.dead_lettered"
    assert backend.outbox.claim(limit=10, lease_s=30, token="y") == []
    assert backend.outbox.settle([("delivered", claimed.event.id, 200)]) == [1]
    (second,) = backend.outbox.claim(limit=10, lease_s=30, token="z")
    assert second.event.type == "lead.replayed_added" and second.event.lead_id == "7"


def test_a_claim_whose_sender_vanished_comes_due_after_its_lease(redis_url: str) -> None:
    s = nsettings(redis_url, notify_url="https://crm.example.com/hooks/x")
    backend = get_backend(s)
    succeed(backend, s, job_message("d" * 32))
    (first,) = backend.outbox.claim(limit=5, lease_s=0.3, token="gone")
    assert backend.outbox.claim(limit=5, lease_s=0.3, token="other") == []
    time.sleep(0.4)
    (again,) = backend.outbox.claim(limit=5, lease_s=30, token="other")
    assert again.event == first.event and again.attempts == 2
    # The vanished sender's late verdict no longer decides; a delivery always does.
    late = backend.outbox.settle(
        [
            backend.outbox.attempt_failed_args(
                first.event.id, token="gone", delay_s=1, window_s=60, error="x", status=500
            )
        ]
    )
    assert late[0][0] in (b"superseded", "superseded")


def test_failed_after_the_window_then_retried_or_purged(redis_url: str) -> None:
    s = nsettings(redis_url, notify_url="https://crm.example.com/hooks/x")
    backend = get_backend(s)
    outbox = backend.outbox
    jobs = [job_message(c * 32) for c in "ef"]
    for job in jobs:
        dead(backend, job)
    succeed(backend, s, jobs[0])  # a second event of job e, behind its first
    claimed = outbox.claim(limit=10, lease_s=30, token="t")
    assert len(claimed) == 2
    replies = outbox.settle(
        [
            outbox.attempt_failed_args(
                c.event.id, token="t", delay_s=5, window_s=0, error="HTTP 500", status=500
            )
            for c in claimed
        ]
    )
    assert all(r[0] in (b"failed", "failed") for r in replies)
    page = list_notifications(backend, failed=True)
    assert page.counts.failed == 2 and page.counts.pending == 1  # e's second waits
    assert {e.last_error for e in page.events} == {"HTTP 500"}
    assert all(e.status == "failed" and e.last_status == 500 for e in page.events)
    assert outbox.claim(limit=10, lease_s=30, token="u") == []  # the waiting one too
    e_first = next(c for c in claimed if c.event.job_id == "e" * 32).event.id
    assert retry_failed(backend, [e_first, "no-such-event"]) == 1
    (again,) = outbox.claim(limit=10, lease_s=30, token="v")
    assert again.event.id == e_first and again.attempts == 1
    assert purge_failed(backend) == 1  # job f's
    outbox.settle([("delivered", e_first, 204)])
    (last,) = outbox.claim(limit=10, lease_s=30, token="w")
    assert last.event.type == "lead.replayed_added"
    counts = outbox.counts()
    assert (counts.pending, counts.failed) == (1, 0)


def test_expired_failed_events_are_removed_and_the_next_of_their_job_goes(redis_url: str) -> None:
    s = nsettings(redis_url, notify_url="https://crm.example.com/hooks/x")
    backend = get_backend(s)
    job = job_message("9" * 32)
    dead(backend, job)
    succeed(backend, s, job)
    (c,) = backend.outbox.claim(limit=5, lease_s=30, token="t")
    backend.outbox.settle(
        [
            backend.outbox.attempt_failed_args(
                c.event.id, token="t", delay_s=1, window_s=0, error="x", status=None
            )
        ]
    )
    assert backend.outbox.expire_failed(before=time.time() - 60, limit=10) == []
    gone = backend.outbox.expire_failed(before=time.time() + 60, limit=10)
    assert gone == [(c.event.id, job["job_id"], "lead.dead_lettered")]
    (nxt,) = backend.outbox.claim(limit=5, lease_s=30, token="u")
    assert nxt.event.type == "lead.replayed_added"


def test_forget_erases_the_backlog_of_the_phones_jobs(redis_url: str, receiver: Receiver) -> None:
    s = nsettings(redis_url, receiver)
    backend = get_backend(s)
    keep = enqueue_lead(settings=s, agent_user="1000", phone_number="7275559876")
    ids = [enqueue_lead(settings=s, agent_user="1000", phone_number=PHONE) for _ in range(2)]
    for job_id in [*ids, keep]:
        dead(backend, job_message(job_id, lead={"agent_user": "1000", "phone_number": PHONE}))
    assert backend.outbox.counts().pending == 3
    preview = forget_phone(backend, PHONE, dry_run=True)
    assert preview.counts["notifications"] == 2 and backend.outbox.counts().pending == 3
    done = forget_phone(backend, PHONE)
    assert done.counts["notifications"] == 2
    page = list_notifications(backend)
    assert [e.event.job_id for e in page.events] == [keep]
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    assert not [k for k in r.scan_iter(f"{s.key_prefix}:notify:job:*") if k.endswith(ids[0])]


def test_status_and_metrics_show_the_backlog(redis_url: str) -> None:
    s = nsettings(redis_url, notify_url="https://crm.example.com/hooks/x")
    backend = get_backend(s)
    for c in "12":
        dead(backend, job_message(c * 32))
    status = fleet_status(backend)["notifications"]
    assert (status["pending"], status["failed"]) == (2, 0)
    assert status["oldest_pending_age_s"] is not None
    text = render_metrics(read_snapshot(backend)).decode()
    assert "dispatcher_notifications_backlog 2.0" in text
    assert "dispatcher_notifications_created_total 2.0" in text
    assert "dispatcher_notifications_delivered_total 0.0" in text
    assert "dispatcher_notifications_oldest_age_seconds" in text


# ----------------------------------------------------------- the sender (real HTTP)


def test_delivered_signed_with_the_contract_body_and_no_phone(
    redis_url: str, receiver: Receiver
) -> None:
    s = nsettings(redis_url, receiver)
    backend = get_backend(s)
    job = job_message("a1" * 16)
    succeed(backend, s, job)
    run_sender(s, lambda: receiver.delivered())
    (got,) = receiver.received
    assert verify(got)  # stdlib hmac, not the product's function
    assert not verify(got, secret="another-secret")
    body = got.json()
    assert list(body) == list(BODY_KEYS)
    assert got.headers["Dispatcher-Event-Id"] == body["id"]
    assert got.headers["Content-Type"] == "application/json"
    assert (body["type"], body["job_id"], body["lead_id"]) == ("lead.added", job["job_id"], "7")
    assert PHONE not in got.body.decode() and "Bobby" not in got.body.decode()
    wait_for(lambda: backend.outbox.counts().pending == 0, message="the event settled")
    assert fleet_status(backend)["notifications"]["delivered_total"] == 1


@pytest.mark.parametrize("failure", ["error", "hang", "close", "redirect"])
def test_a_failed_post_is_retried_with_the_same_id_and_body(
    redis_url: str, receiver: Receiver, failure: str
) -> None:
    s = nsettings(redis_url, receiver)
    backend = get_backend(s)
    succeed(backend, s, job_message("b2" * 16))
    receiver.script(failure, failure)
    run_sender(s, lambda: receiver.delivered(), timeout=20)
    attempts = receiver.received
    assert [r.answered for r in attempts] == [failure, failure, "ok"]
    assert len({r.body for r in attempts}) == 1
    assert len({r.headers["Dispatcher-Event-Id"] for r in attempts}) == 1
    assert all(verify(r) for r in attempts)
    wait_for(lambda: backend.outbox.counts().pending == 0, message="the event settled")


def test_a_receiver_that_is_down_gets_it_once_it_is_up(redis_url: str) -> None:
    receiver = Receiver()  # not started: nothing listens on its port
    s = nsettings(redis_url, receiver)
    backend = get_backend(s)
    succeed(backend, s, job_message("c3" * 16))
    notifier = Notifier(s, policy=fast_policy(s), rng=random.Random(1)).start()
    try:
        wait_for(lambda: notifier.counts.attempts_failed >= 2, message="failed attempts")
        assert backend.outbox.counts().pending == 1
        receiver.start()
        wait_for(lambda: receiver.delivered(), message="the delivery")
    finally:
        notifier.stop(timeout=3.0)
        receiver.stop()
    event = list_notifications(backend)
    assert event.counts.pending == 0


def test_after_the_window_it_is_failed_then_retry_resends_it(
    redis_url: str, receiver: Receiver
) -> None:
    s = nsettings(redis_url, receiver, notify_retry_s=60.0)
    backend = get_backend(s)
    succeed(backend, s, job_message("d4" * 16))
    receiver.mode = "error"
    run_sender(s, lambda: backend.outbox.counts().failed == 1, window_s=0.5, base_s=0.05, cap_s=0.1)
    (failed,) = list_notifications(backend, failed=True).events
    assert failed.last_error == "HTTP 500" and failed.attempts >= 2
    receiver.mode = "ok"
    assert retry_failed(backend) == 1
    run_sender(s, lambda: receiver.delivered())
    assert receiver.delivered()[0]["id"] == failed.event.id


def test_a_receiver_this_worker_may_not_send_to_fails_at_once(
    redis_url: str, receiver: Receiver
) -> None:
    producer = nsettings(redis_url, notify_allowed=(receiver.url,))
    backend = get_backend(producer)
    job = job_message("e5" * 16, notify_url=receiver.url)
    dead(backend, job)
    # This worker allows no per-job receiver: it never POSTs there.
    worker = nsettings(redis_url, notify_url="http://127.0.0.1:9/other")
    run_sender(worker, lambda: backend.outbox.counts().failed == 1)
    assert receiver.received == []
    (failed,) = list_notifications(backend, failed=True).events
    assert failed.last_error is not None and "DISPATCHER_NOTIFY_ALLOWED" in failed.last_error


def test_a_jobs_events_arrive_in_order(redis_url: str, receiver: Receiver) -> None:
    s = nsettings(redis_url, receiver)
    backend = get_backend(s)
    jobs = [job_message(f"{i:02d}" * 16) for i in range(6)]
    for job in jobs:
        dead(backend, job)
    for job in jobs:
        succeed(backend, s, job)
    # The first attempt of each job's first event fails: the second must still wait.
    receiver.script(*["error"] * 6)
    run_sender(s, lambda: len(receiver.delivered()) == 12, timeout=20)
    by_job: dict[str, list[str]] = {}
    for body in receiver.delivered():
        by_job.setdefault(body["job_id"], []).append(body["type"])
    assert all(t == ["lead.dead_lettered", "lead.replayed_added"] for t in by_job.values())


def test_a_hanging_receiver_does_not_hold_up_another(redis_url: str, receiver: Receiver) -> None:
    """Per-receiver slots: the hanging one takes at most its share; the other
    receiver's events all go meanwhile."""
    slow = Receiver(mode="hang").start()
    try:
        producer = nsettings(redis_url, notify_allowed=(receiver.url, slow.url))
        backend = get_backend(producer)
        for i in range(20):
            dead(backend, job_message(f"s{i:031d}", notify_url=slow.url))
        for i in range(20):
            dead(backend, job_message(f"f{i:031d}", notify_url=receiver.url))
        s = nsettings(
            redis_url,
            notify_allowed=(receiver.url, slow.url),
            notify_concurrency=4,
            notify_per_receiver=2,
            notify_timeout_s=5.0,
        )
        started = time.monotonic()
        run_sender(s, lambda: len(receiver.delivered()) == 20, timeout=20)
        # All 20 of the healthy receiver's went while the other one held 2 slots
        # (each POST hangs for 5 s): they did not queue behind it.
        assert time.monotonic() - started < 5.0 + 4.0
        assert len(slow.received) <= 2 + 2  # at most its slots (and their retries)
    finally:
        slow.stop()


def test_the_breaker_opens_and_a_probe_closes_it() -> None:
    breaker = Breaker(threshold=3, base_s=1.0, cap_s=4.0)
    for _ in range(2):
        assert breaker.allow(0.0) and not breaker.failed(0.0, "HTTP 500")
    assert breaker.allow(0.0) and breaker.failed(0.0, "HTTP 500")  # opened
    assert not breaker.allow(0.5)
    assert breaker.allow(1.1) and not breaker.allow(1.1)  # one probe
    assert not breaker.failed(1.2, "HTTP 500") and breaker.remaining(1.2) == pytest.approx(2.0)
    assert breaker.allow(3.3) and breaker.succeeded() and breaker.allow(3.3)


def test_the_event_round_trips_through_its_json() -> None:
    event = Event(
        id="e",
        type="lead.duplicate",
        created_at=None,
        job_id="j",
        idempotency_key=None,
        dialer="east",
        state="duplicate",
        existing_lead_id="41",
        list_id="101",
    )
    assert json.loads(event.body()) == event.to_dict()
    assert list(json.loads(event.body())) == list(BODY_KEYS)


def test_the_sender_waits_out_a_full_redis_and_delivers_after(
    redis_url: str, receiver: Receiver
) -> None:
    """Redis refusing writes (OOM under noeviction) while events wait: the sender's
    claims fail, it logs the episode once and carries on when Redis takes writes."""

    s = nsettings(redis_url, receiver)
    backend = get_backend(s)
    succeed(backend, s, job_message("f6" * 16))
    admin = redis.Redis.from_url(redis_url)
    with capture_logs() as logged:
        admin.config_set("maxmemory", "1")
        try:
            notifier = Notifier(s, policy=fast_policy(s), rng=random.Random(3)).start()
            wait_for(
                lambda: any(e["event"] == "redis.unavailable" for e in logged),
                message="the episode logged",
            )
            time.sleep(0.5)
            assert receiver.received == []
        finally:
            admin.config_set("maxmemory", "0")
        try:
            wait_for(lambda: receiver.delivered(), message="the delivery after")
            wait_for(lambda: backend.outbox.counts().pending == 0, message="settled")
        finally:
            notifier.stop(timeout=3.0)
    episodes = [e for e in logged if e["event"] == "redis.unavailable"]
    assert len(episodes) == 1 and episodes[0]["during"] == "notifications"
    assert episodes[0]["kind"] == "out_of_memory"


def test_a_delivery_whose_settling_meets_a_read_only_redis_is_settled_later_not_resent(
    redis_url: str, receiver: Receiver
) -> None:
    s = nsettings(redis_url, receiver)
    backend = get_backend(s)
    succeed(backend, s, job_message("a7" * 16))
    receiver.mode, receiver.delay_s = "slow", 0.5  # within the 1 s timeout
    admin = redis.Redis.from_url(redis_url)
    notifier = Notifier(s, policy=fast_policy(s), rng=random.Random(4)).start()
    try:
        wait_for(lambda: receiver.received, message="the POST")
        # The answer comes while Redis refuses every write (a replica after a failover;
        # a full Redis would still take the settlement: its first write is a DEL).
        admin.execute_command("REPLICAOF", "127.0.0.1", "1")
        try:
            wait_for(lambda: notifier.counts.posts == 1, message="the answer")
            time.sleep(0.5)
            assert backend.outbox.counts().pending == 1  # not settled yet
        finally:
            admin.execute_command("REPLICAOF", "NO", "ONE")
        wait_for(lambda: backend.outbox.counts().pending == 0, message="settled after")
    finally:
        notifier.stop(timeout=3.0)
    assert len(receiver.received) == 1 and notifier.counts.delivered == 1


# ------------------------------------------------------------------- the command line


def test_notify_list_retry_purge_on_the_command_line(redis_url: str) -> None:
    s = nsettings(redis_url, notify_url="https://crm.example.com/hooks/x")
    backend = get_backend(s)
    for c in "gh":
        dead(backend, job_message(c * 32))
    claimed = backend.outbox.claim(limit=5, lease_s=30, token="t")
    backend.outbox.settle(
        [
            backend.outbox.attempt_failed_args(
                c.event.id, token="t", delay_s=1, window_s=0, error="HTTP 503", status=503
            )
            for c in claimed
        ]
    )
    listed = run_cli(s, "notify", "list", "--failed", "--json")
    check(listed)
    data = json.loads(listed.stdout)
    assert data["counts"]["failed"] == 2
    assert {e["last_error"] for e in data["events"]} == {"HTTP 503"}
    assert all(e["status"] == "failed" and e["receiver"] for e in data["events"])
    human = run_cli(s, "notify", "list", "--failed")
    check(human)
    assert "HTTP 503" in human.stdout and "failed: 2" in human.stdout
    check(run_cli(s, "notify", "retry"), 2)  # nothing selected: usage
    check(run_cli(s, "notify", "retry", "x", "--all-failed"), 2)
    check(run_cli(s, "notify", "retry", "--all-failed"), 1)  # not confirmed
    first = data["events"][0]["id"]
    check(run_cli(s, "notify", "retry", first, "no-such", "--yes"), 1)  # one was not failed
    assert backend.outbox.counts().failed == 1
    check(run_cli(s, "notify", "purge", "--all-failed", "--yes"))
    counts = backend.outbox.counts()
    assert (counts.failed, counts.pending) == (0, 1)
    status = run_cli(s, "status", "--json")
    check(status)
    assert json.loads(status.stdout)["notifications"]["pending"] == 1


def test_enqueue_on_the_command_line_checks_notify_url(redis_url: str, tmp_path: Any) -> None:
    s = nsettings(redis_url, notify_allowed=("https://crm.example.com/hooks/",))
    bad = run_cli(
        s,
        "enqueue",
        "--agent-user",
        "1000",
        "--phone",
        PHONE,
        "--notify-url",
        "https://evil.example/x",
    )
    check(bad, 2)
    assert "notify_url: not allowed" in bad.stderr
    good = run_cli(
        s,
        "enqueue",
        "--agent-user",
        "1000",
        "--phone",
        PHONE,
        "--notify-url",
        "https://crm.example.com/hooks/a",
    )
    check(good)
    leads = tmp_path / "leads.csv"
    leads.write_text(
        "agent_user,phone_number,notify_url\n"
        "1000,7275551301,https://crm.example.com/hooks/b\n"
        "1000,7275551302,https://evil.example/c\n"
        "1000,7275551303,\n"
    )
    refused = run_cli(s, "enqueue", "--file", str(leads))
    check(refused, 2)
    assert "line 3: notify_url: not allowed" in refused.stderr


def test_the_sender_yields_cpu_while_the_rest_of_its_process_is_busy() -> None:
    """CpuShare: with the rest of the process burning CPU (a stand-in for the lead
    engine), the sender may spend at most its share of it; idle, no limit. The window's
    clock is the test's (a loaded machine gives the burner little CPU per wall second):
    the burner runs until it has used some CPU, and the window is 0.1 s long."""
    now = [1000.0]
    governor = CpuShare(
        SendPolicy(cpu_share=0.2, busy_core=0.1, cpu_floor=0.02), clock=lambda: now[0]
    )
    now[0] += 0.05
    governor.spent(1.0)  # a sender that used a whole second of CPU
    assert governor.allows()  # nobody else is busy: no limit
    stop = threading.Event()

    def burn() -> None:
        while not stop.is_set():
            sum(range(1000))

    burner = threading.Thread(target=burn, daemon=True)
    now[0] += CpuShare.WINDOW_S
    assert governor.allows()  # a new window
    burner.start()
    try:
        used = time.process_time()
        deadline = time.monotonic() + 30
        # The sender's 0.05 s below counts as its own in the process's CPU: the others
        # must have used clearly more (here 0.12 - 0.05 s; under 0.25, or a fifth of
        # it would cover the sender's 0.05).
        while time.process_time() - used < 0.12 and time.monotonic() < deadline:
            time.sleep(0.005)
        stop.set()
        burner.join()
        now[0] += 0.1  # the others used about 0.07 s of CPU in 0.1 s: busy (> 0.1 core)
        governor.spent(0.05)  # more than a fifth of what the burner used meanwhile
        assert not governor.allows()
        assert governor.throttled == 1
    finally:
        stop.set()
        burner.join()
    assert CpuShare(SendPolicy(cpu_share=0.0)).allows()  # 0: no limit
