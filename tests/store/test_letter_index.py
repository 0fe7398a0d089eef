"""Dead letters written without the phone index join it (dispatcher/store/letter_index.py).

The previous release (1c0038d) had no phone index, and its workers still write letters
during a rolling restart: ``dispatcher forget`` would miss them without ``--scan``. The
workers' maintenance puts them into the index, through the dead-letter store's own
index (no keyspace scan), newest first, and says when it is done. Real Redis.
"""

from __future__ import annotations

import json

import redis

from dispatcher.ops.erasure import forget_phone
from dispatcher.store.backend import Backend, get_backend
from dispatcher.store.deadletter import DeadLetterStore
from dispatcher.store.letter_index import index_complete, index_some_letters
from dispatcher.store.phone_index import index_key, phone_key
from tests.support.settings import make_settings


def _old_letter(backend: Backend, n: int, *, at: float, phone: str | None = None) -> str:
    """A letter as the previous release wrote it (its record, the dead-letter index and
    the reason's): no phone index entry, and no job state naming a phone key."""
    job_id = f"{n:032x}"
    letter = DeadLetterStore(backend).letter(
        job={
            "job_id": job_id,
            "lead": {"agent_user": "1000", "phone_number": phone or f"72755{n:05d}"},
            "idempotency_key": f"old-{n}",
        },
        reason="dnc",
        error="ERROR: add_lead PHONE NUMBER IN DNC",
        http_status=200,
        attempts=1,
        first_failed_at=None,
        now=at,
    )
    keys = backend.keys
    pipe = backend.redis.pipeline()
    pipe.set(keys.dead_letter(job_id), json.dumps(letter.to_dict(shown=False)))
    pipe.zadd(keys.dead_letters, {job_id: at})
    pipe.zadd(keys.dead_letters_by_reason("dnc"), {job_id: at})
    pipe.execute()
    return job_id


def test_a_letter_this_release_writes_for_an_unindexed_job_is_found_at_once(
    redis_url: str,
) -> None:
    """A job the previous release enqueued has a state without a phone key (or none at
    all); the letter this release writes for it joins the index in the same step, so an
    erasure request finds it before any maintenance runs."""
    settings = make_settings(redis_url)
    backend = get_backend(settings)
    assert index_complete(backend)  # no letter yet: nothing to index
    DeadLetterStore(backend).record(
        job={
            "job_id": "a" * 32,
            "lead": {"agent_user": "1000", "phone_number": "7275560012"},
            "idempotency_key": "old-job",
        },
        reason="agent_not_logged_in",
        error="ERROR: agent_user is not logged in",
        http_status=200,
        attempts=1,
        first_failed_at=None,
    )
    found = forget_phone(backend, "7275560012", dry_run=True)
    assert found.index_complete and found.counts["dead_letters"] == 1, found.counts
    assert index_some_letters(backend) == 0  # nothing left for the maintenance


def test_the_previous_release_s_letters_join_the_index_and_forget_finds_them(
    redis_url: str,
) -> None:
    settings = make_settings(redis_url)
    backend = get_backend(settings)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    ids = [_old_letter(backend, n, at=1_700_000_000.0 + n) for n in range(1, 4)]
    # Written without the index: forget finds nothing, and says the index is not done.
    preview = forget_phone(backend, "7275500002", dry_run=True)
    assert preview.counts["dead_letters"] == 0 and not preview.index_complete
    assert not index_complete(backend)

    assert index_some_letters(backend) == 3
    assert index_complete(backend)
    assert r.get(f"{settings.key_prefix}:dlq:index_cursor") == "done"
    found = forget_phone(backend, "7275500002", dry_run=True)
    assert found.counts["dead_letters"] == 1 and found.index_complete
    assert found.counts["idempotency_records"] == 0  # the record was never written here
    # Idempotent: a second look, or another worker's, changes nothing (#letters stays 1).
    assert index_some_letters(backend) == 0
    index = backend.keys.phone(str(r.hget(f"{settings.key_prefix}:dlq:phone_keys", ids[1])))
    assert r.hget(index, "#letters") == "1" and r.hget(index, ids[1]) == "old-2"
    assert r.ttl(index) == -1  # a letter's index lives as long as the letter
    # Erased: the letter goes, and the index with it.
    assert forget_phone(backend, "7275500002").counts["dead_letters"] == 1
    assert DeadLetterStore(backend).get(ids[1]) is None and not r.exists(index)


def test_the_pass_goes_a_part_at_a_time_and_newer_letters_are_seen_at_once(
    redis_url: str,
) -> None:
    """1,200 letters at 500 a look: three looks; a letter a previous-release worker
    writes after the pass is done (a rolling restart) is taken by the next look."""
    settings = make_settings(redis_url)
    backend = get_backend(settings)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for n in range(1200):
        _old_letter(backend, n, at=1_700_000_000.0 + n)
    cursor_key = f"{settings.key_prefix}:dlq:index_cursor"
    joined = index_some_letters(backend, newest=10, per_tick=500, batch=250)
    # The 10 newest, then 500 of the pass (which begins with those 10 again, and whose
    # pages overlap by the letter on their border: looked at twice, indexed once).
    assert 480 <= joined <= 510 and not index_complete(backend)
    first = float(r.get(cursor_key) or "nan")
    joined += index_some_letters(backend, newest=10, per_tick=500, batch=250)
    assert not index_complete(backend) and float(r.get(cursor_key) or "nan") < first
    joined += index_some_letters(backend, newest=10, per_tick=500, batch=250)
    assert joined == 1200 and index_complete(backend)
    assert r.hlen(f"{settings.key_prefix}:dlq:phone_keys") == 1200

    late = _old_letter(backend, 5000, at=1_800_000_000.0)  # an old worker, still running
    assert not r.hexists(f"{settings.key_prefix}:dlq:phone_keys", late)
    assert index_some_letters(backend, newest=10) == 1
    assert forget_phone(backend, "7275505000", dry_run=True).counts["dead_letters"] == 1


def test_letters_without_a_phone_are_left_alone(redis_url: str) -> None:
    """invalid_payload letters hold no job (nothing to index); the pass still ends. The
    first letter of an empty Redis (of either kind) leaves no pass to make."""
    settings = make_settings(redis_url)
    backend = get_backend(settings)
    DeadLetterStore(backend).poison(raw={"not": "a job"}, error="not a job")
    assert index_complete(backend)
    backend.redis.delete(backend.keys.dead_letter_index_cursor)  # as before this release
    assert not index_complete(backend)
    assert index_some_letters(backend) == 0
    assert index_complete(backend)


def test_a_key_cached_before_redis_was_emptied_indexes_and_finds_under_redis_s_key(
    redis_url: str,
) -> None:
    """The index key is cached per process; a Redis emptied since (and a new key made by
    another process) must not leave a letter indexed, or an erasure looking, under the
    old one: both go by the key Redis holds."""
    settings = make_settings(redis_url)
    backend = get_backend(settings)
    stale = index_key(backend)  # cached by this process
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.flushall()
    r.set(backend.keys.index_key, "ab" * 32)  # made by another process since
    DeadLetterStore(backend).record(
        job={
            "job_id": "b" * 32,
            "lead": {"agent_user": "1000", "phone_number": "7275560099"},
            "idempotency_key": "k",
        },
        reason="dnc",
        error="ERROR: add_lead PHONE NUMBER IN DNC",
        http_status=200,
        attempts=1,
        first_failed_at=None,
    )
    now = bytes.fromhex("ab" * 32)
    assert now != stale
    assert r.hget(backend.keys.dead_letter_phones, "b" * 32) == phone_key(now, "7275560099")
    found = forget_phone(backend, "7275560099", dry_run=True)
    assert found.counts["dead_letters"] == 1, found.counts
