"""Every transient key has a TTL, given in the same atomic step that writes it.

Sessions, login throttles, flashes (inside the session hash; CSRF tokens too) and the
reconciliation's look-up records. The last test walks the whole of Redis after a full
console session (login, pages, an action with its flash, logout, a flash after
logout) and a reconciliation (a real worker process looks an ambiguous job up in the
simulator), and finds no such key without a TTL: every key without one is on the
list of what is meant to persist.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable

import pytest
import redis
from starlette.testclient import TestClient

from dispatcher import enqueue_lead, job_status
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.intake.app import create_app
from dispatcher.intake.console.sessions import Session, SessionStore
from dispatcher.simulator import Simulator
from dispatcher.store.backend import get_backend
from dispatcher.store.deadletter import DeadLetterStore
from dispatcher.store.users import UserStore
from tests.support.console import OPERATOR, csrf_of, login, seed_users
from tests.support.settings import make_settings
from tests.support.waiting import wait_for

TOKEN = "intake-token-0123456789abcdef"


@pytest.fixture
def ks(redis_url: str, simulator: Simulator) -> Settings:
    return make_settings(redis_url, simulator, intake_tokens=(TOKEN,))


def test_a_flash_after_logout_recreates_no_session(ks: Settings) -> None:
    backend = get_backend(ks)
    seed_users(ks)
    user = UserStore(backend).get(OPERATOR[0])
    assert user is not None
    store = SessionStore(backend, idle_s=60, lifetime_s=3600)
    _token, session = store.create(user)
    store.destroy(session.token_digest, session.user)
    # A request that loaded the session before the logout sets its flash after it.
    store.set_flash(session, "Replayed 1 letter.")
    assert not backend.redis.exists(backend.keys.session(session.token_digest))


def test_a_users_session_index_forgets_sessions_that_ended(ks: Settings) -> None:
    backend = get_backend(ks)
    seed_users(ks)
    user = UserStore(backend).get(OPERATOR[0])
    assert user is not None
    short = SessionStore(backend, idle_s=1, lifetime_s=1)
    for _ in range(3):
        short.create(user)
    time.sleep(1.5)
    SessionStore(backend, idle_s=60, lifetime_s=3600).create(user)
    index = backend.keys.user_sessions(user.name)
    assert backend.redis.type(index) == "zset"
    assert backend.redis.zcard(index) == 1
    assert 3500 < backend.redis.ttl(index) <= 3600 + 60


def test_a_session_index_of_the_previous_release_is_taken_over(ks: Settings) -> None:
    """The previous release kept ``user_sessions:{name}`` as a set: removing the user
    still ends those sessions, and a new login turns it into the sorted set."""
    backend = get_backend(ks)
    seed_users(ks)
    r = backend.redis
    old = backend.keys.session("a" * 64)
    r.hset(old, mapping={"user": OPERATOR[0], "role": "operator", "csrf": "x", "created_at": "1"})
    r.expire(old, 600)
    r.sadd(backend.keys.user_sessions(OPERATOR[0]), "a" * 64)
    user = UserStore(backend).get(OPERATOR[0])
    assert user is not None
    SessionStore(backend, idle_s=60, lifetime_s=3600).create(user)
    index = backend.keys.user_sessions(OPERATOR[0])
    assert r.type(index) == "zset" and r.zcard(index) == 2 and r.ttl(index) > 0
    assert UserStore(backend).end_sessions(OPERATOR[0]) == 2
    assert not r.exists(old)


#: Keys meant to outlive any TTL: queues and their bookkeeping, dead letters and their
#: indexes, users, fleet counters, worker registries. Anything else must expire.
PERSISTENT = (
    "{q}",
    "{q}.*",
    "_kombu.*",
    "unacked",
    "unacked_index",
    "unacked_mutex",
    "_dispatcher.inflight.*",
    "{p}:stats",
    "{p}:activity",
    "{p}:scheduled",
    "{p}:dlq",
    "{p}:dlq:*",
    "{p}:dl:*",
    "{p}:users",
    "{p}:user:*",
    "{p}:workers",
    "{p}:lanes",  # lane names (as many as dialers x lanes): where jobs wait
    "{p}:pauses",
    "{p}:phone:*",
    "{p}:index_key",
    "{p}:layout",
    # The outbox of outcome notifications: pending events must not vanish; failed ones
    # go by the senders' retention (DISPATCHER_NOTIFY_FAILED_RETENTION_DAYS).
    "{p}:notify:*",
)
#: What the walk must have seen, with a TTL (else it proves nothing).
TRANSIENT = (
    "{p}:session:*",
    "{p}:user_sessions:*",
    "{p}:login_failures:*",
    "{p}:lookup:*",
    "{p}:lookups",
)


def test_no_transient_key_lacks_a_ttl_after_a_console_session_and_a_reconciliation(
    ks: Settings, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    backend = get_backend(ks)
    seed_users(ks)
    # A reconciliation: the call's answer is lost, a real worker looks the lead up.
    simulator.script_phone("7275551212", ["reset_after"])
    start_worker(ks)
    job_id = enqueue_lead(agent_user="1000", phone_number="7275551212", settings=ks)
    wait_for(
        lambda: (job_status(job_id, settings=ks) or {}).get("reconcile") == "found",
        timeout=60,
        message="the job to be reconciled",
    )
    assert simulator.lookup_count >= 1
    # A dead letter to act on in the console.
    DeadLetterStore(backend).record(
        job={"job_id": "f" * 32, "lead": {"agent_user": "1000", "phone_number": "7275550000"}},
        reason="dnc",
        error="ERROR: add_lead PHONE NUMBER IN DNC - 7275550000|1000",
        http_status=200,
        attempts=1,
        first_failed_at=None,
    )
    app = create_app(ks)
    # A failed login first (a throttle counter), then a whole session.
    with TestClient(app) as stranger:
        page = stranger.get("/ui/login")
        reply = stranger.post(
            "/ui/login",
            data={"csrf": csrf_of(page.text), "username": OPERATOR[0], "password": "nope-nope"},
            follow_redirects=False,
        )
        assert reply.status_code == 401
    client = login(app, OPERATOR)
    (key,) = backend.redis.scan_iter(backend.keys.session("*"))
    session = backend.redis.hgetall(key)
    digest = key.rsplit(":", 1)[1]
    for path in ("/ui/", "/ui/dead-letters", f"/ui/jobs/{job_id}", f"/ui/dead-letters/{'f' * 32}"):
        assert client.get(path).status_code == 200
    page = client.get(f"/ui/dead-letters/{'f' * 32}")
    acted = client.post(
        "/ui/dead-letters/purge",
        data={"csrf": csrf_of(page.text), "scope": "selected", "id": "f" * 32, "confirm": "yes"},
        follow_redirects=False,
    )
    assert acted.status_code == 303
    assert backend.redis.hget(backend.keys.session(digest), "flash")  # the action's flash
    page = client.get("/ui/")
    assert (
        client.post(
            "/ui/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False
        ).status_code
        == 303
    )
    # A request of that session still running sets its flash after the logout.

    late = Session(digest, OPERATOR[0], "operator", session["csrf"], time.time())
    SessionStore(backend, idle_s=60, lifetime_s=3600).set_flash(late, "Purged 1 letter.")
    # The same operator is still logged in elsewhere.
    login(app, OPERATOR).get("/ui/")

    r = redis.Redis.from_url(ks.redis_url, decode_responses=True)
    fill = {"p": ks.key_prefix, "q": ks.queue}
    persistent = [p.format(**fill) for p in PERSISTENT]
    transient = [p.format(**fill) for p in TRANSIENT]
    seen: set[str] = set()
    lacking: list[str] = []
    for key in r.scan_iter(count=1000):
        ttl = r.ttl(key)
        for pattern in transient:
            if fnmatch.fnmatchcase(key, pattern):
                seen.add(pattern)
        if ttl == -1 and not any(fnmatch.fnmatchcase(key, p) for p in persistent):
            lacking.append(key)
    assert lacking == [], f"keys without a TTL: {lacking}"
    # The walk saw every kind of transient key; the session logged out is gone.
    assert seen == set(transient), seen
    assert not r.exists(ks.key_prefix + ":session:" + digest)
