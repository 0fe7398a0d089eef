"""What replay and `dlq reconcile` do to a dead letter's job, through :class:`Job`.

``Job.replayed`` and ``Job.looking_up`` are the two edits (unit tests); the dead-letter
store publishes exactly those (real Redis), and a letter whose job no worker could
read is not published at all: replaying it would only bury it as another letter.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from dispatcher.config.settings import Settings
from dispatcher.model.jobs import Job, Reconcile
from dispatcher.ops.producer import prepare_job
from dispatcher.store.deadletter import DeadLetter, DeadLetterStore
from tests.support.queues import queued_envelopes
from tests.support.settings import make_settings


def _job(**changes: Any) -> Job:
    job = prepare_job(
        {"agent_user": "1000", "phone_number": "7275551212", "idempotency_key": "k-1"},
        settings=Settings(),
        dnc_check=True,
        campaign_dnc_check=False,
        now=1_764_250_000.0,
    )
    return job.evolve(**changes)


def test_replayed_is_the_next_publication_with_a_fresh_attempt_count() -> None:
    rec = Reconcile(step="recall", since=1_764_250_100.0, tries=2, absent=1)
    job = _job(
        attempts=5,
        seq=3,
        replays=1,
        first_failed_at=1_764_250_001.0,
        agent_wait_since=1_764_250_002.0,
        reconcile=rec,
    )
    again = job.replayed()
    assert (again.attempts, again.seq, again.replays) == (0, 4, 2)
    assert again.first_failed_at is None and again.agent_wait_since is None
    assert again.reconcile is None  # a replay calls; it does not look up
    # What travels unchanged: the lead, its DNC checks, its key, dialer and lane.
    assert again.evolve(attempts=5, seq=3, replays=1) == job.evolve(
        first_failed_at=None, agent_wait_since=None, reconcile=None
    )
    assert "reconcile" not in again.to_message()


def test_looking_up_is_the_next_publication_and_keeps_the_attempts() -> None:
    job = _job(attempts=4, seq=2, replays=1)
    rec = Reconcile(step="lookup", since=1_764_250_100.0, error="read timeout", http_status=504)
    nxt = job.looking_up(rec)
    assert (nxt.attempts, nxt.seq, nxt.replays, nxt.reconcile) == (4, 3, 1, rec)
    assert nxt.to_message()["reconcile"]["step"] == "lookup"


# -- the store publishes them --------------------------------------------------------------


@pytest.fixture
def rsettings(redis_url: str) -> Settings:
    return make_settings(redis_url)


@pytest.fixture
def store(rsettings: Settings) -> DeadLetterStore:
    return DeadLetterStore(settings=rsettings)


def _letter(store: DeadLetterStore, job: dict[str, Any], *, reason: str = "ambiguous") -> Any:
    now = time.time()
    return store.record(
        job=job,
        reason=reason,
        error="read timeout; reconciliation: VICIdial could not tell",
        http_status=None,
        attempts=int(job.get("attempts", 0) or 0),
        first_failed_at=now - 10,
        now=now - 5,
    )


def _published(settings: Settings) -> list[dict[str, Any]]:
    out = []
    for raw in queued_envelopes(settings):
        envelope = json.loads(raw)
        out.append(json.loads(base64.b64decode(envelope["body"]))[0][0])
    return out


def test_replay_publishes_the_replayed_job(store: DeadLetterStore, rsettings: Settings) -> None:
    rec = Reconcile(step="lookup", since=time.time() - 60, error="read timeout", tries=3)
    job = _job(attempts=2, seq=1, reconcile=rec)
    letter = _letter(store, job.to_message())
    assert store.replay(letter) == "replayed"
    assert _published(rsettings) == [job.replayed().to_message()]
    assert store.get(letter.id) is None


def test_reconcile_publishes_a_look_up_of_the_job(
    store: DeadLetterStore, rsettings: Settings
) -> None:
    job = _job(attempts=2, seq=1)
    letter = _letter(store, job.to_message())
    assert store.reconcile(letter) == "reconciling"
    client = store.redis
    (raw,) = client.zrange(store.keys.scheduled, 0, -1)
    message = json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0]
    expected = job.looking_up(
        Reconcile(
            step="lookup",
            since=letter.score,
            error="read timeout",  # without the earlier reconciliation's explanation
            http_status=None,
        )
    )
    assert message == expected.to_message()
    assert store.get(letter.id) is None


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param({"v": 3}, id="unknown version"),  # 2: a list job (issue 27)
        pytest.param({"seq": "one"}, id="seq not a number"),
        pytest.param({"lead": {"agent_user": "1000", "phone_number": "12ab"}}, id="bad phone"),
    ],
)
def test_a_letter_whose_job_no_worker_can_read_is_neither_replayed_nor_reconciled(
    store: DeadLetterStore, rsettings: Settings, breakage: dict[str, Any]
) -> None:
    """Before, replay published it (the job showed `queued`), and the worker that took it
    buried it as a new invalid_payload letter under another id: the operator's letter
    vanished, the job's state stayed `queued`. Now it stays where it is, unreplayable."""
    broken = {**_job().to_message(), **breakage}
    letter: DeadLetter = _letter(store, broken, reason="network")
    assert letter.replayable  # a lead is there: only reading the job tells
    assert store.replay(letter) == "unreplayable"
    assert store.replay_many([letter]) == ["unreplayable"]
    assert store.reconcile(letter) == "unreplayable"
    assert store.get(letter.id) is not None
    assert _published(rsettings) == []
    assert not store.redis.zcard(store.keys.scheduled)
