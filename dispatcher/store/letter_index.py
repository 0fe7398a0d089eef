"""Dead letters the phone index lacks, put into it by the workers' maintenance.

``dispatcher forget --phone`` finds a phone's jobs and letters through the phone index
(:mod:`dispatcher.store.phone_index`), which ``execution.lua`` keeps as it writes them.
Some letters were written without it: those of the previous release (1c0038d, which
had no index), those its workers write while they still run beside this release's
during a rolling restart, and those this release writes for a job the previous release
enqueued (its state names no phone key). Every worker's maintenance
(``workers/scheduler.py``) calls :func:`index_some_letters` about once a minute:

* the newest letters (a letter's score is its last failure, so that is where one
  written by a previous-release worker since the last look lands);
* and, until it is done, the next part of one pass over all the others, newest to
  oldest, whose progress is ``P:dlq:index_cursor`` (a last-failure score, then
  ``done``).

No keyspace scan: letters are read through the dead-letter store's own index
(``P:dlq``), and ``P:dlq:phone_keys`` says which are indexed. Indexing a letter twice
changes nothing (``index_letters`` in execution.lua skips a letter that is indexed or
gone), so several workers may do it at once. Until the pass is done,
:func:`index_complete` is False and ``dispatcher forget`` says that ``--scan`` is the
way to be sure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from dispatcher.store.backend import Backend
from dispatcher.store.connection import broker_errors
from dispatcher.store.phone_index import index_key, phone_key
from dispatcher.store.replies import text

__all__ = [
    "BATCH",
    "NEWEST",
    "PER_TICK",
    "index_complete",
    "index_letters",
    "index_some_letters",
]

#: Letters read per round trip.
BATCH = 500
#: How many of the newest letters each look covers.
NEWEST = 200
#: How many older letters each look passes over (at most), so that a worker's
#: maintenance stays short: 100,000 letters take about 20 minutes of one worker.
PER_TICK = 5000
DONE = "done"


def _phone_and_key(raw: str) -> tuple[str, str]:
    """The lead's normalised phone and the job's idempotency key, from a letter's JSON."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "", ""
    job = record.get("job") if isinstance(record, dict) else None
    if not isinstance(job, dict):
        return "", ""  # an invalid_payload letter: no job, no phone
    lead = job.get("lead")
    phone = lead.get("phone_number") if isinstance(lead, dict) else None
    idem = job.get("idempotency_key")
    return (phone if isinstance(phone, str) else ""), (idem if isinstance(idem, str) else "")


def index_letters(backend: Backend, ids: Sequence[str], *, cursor: str = "") -> int:
    """Index those of the letters ``ids`` that the phone index lacks (and move the pass's
    cursor to ``cursor``, if given); how many letters joined."""
    keys = backend.keys
    letters: list[tuple[str, str, str]] = []
    if ids:
        with broker_errors(backend.settings):
            known = backend.redis.hmget(keys.dead_letter_phones, list(ids))
            todo = [dl_id for dl_id, h in zip(ids, known, strict=True) if h is None]
            raws = backend.redis.mget([keys.dead_letter(x) for x in todo]) if todo else []
        secret = index_key(backend) if todo else b""
        for dl_id, raw in zip(todo, raws, strict=True):
            phone, idem = _phone_and_key(text(raw)) if raw is not None else ("", "")
            if phone:
                letters.append((dl_id, phone_key(secret, phone), idem))
    with broker_errors(backend.settings):
        return backend.execution.index_letters(letters, cursor=cursor)


def index_complete(backend: Backend) -> bool:
    """Whether every letter is in the phone index (the pass is done, or there is no
    letter at all)."""
    keys = backend.keys
    with broker_errors(backend.settings):
        cursor, letters = (
            backend.redis.get(keys.dead_letter_index_cursor),
            backend.redis.zcard(keys.dead_letters),
        )
    return text(cursor) == DONE if cursor is not None else int(letters) == 0


def index_some_letters(
    backend: Backend, *, newest: int = NEWEST, per_tick: int = PER_TICK, batch: int = BATCH
) -> int:
    """One look (see the module docstring): the newest letters, then the pass's next
    ``per_tick`` letters; how many letters joined the index."""
    keys = backend.keys
    with broker_errors(backend.settings):
        ids = [text(x) for x in backend.redis.zrevrange(keys.dead_letters, 0, newest - 1)]
        cursor = backend.redis.get(keys.dead_letter_index_cursor)
    joined = index_letters(backend, ids)
    if cursor is not None and text(cursor) == DONE:
        return joined
    # Inclusive bounds (letters failed in the same microsecond are not skipped); what
    # was looked at already is found indexed and costs a read.
    upper = "+inf" if cursor is None else text(cursor)
    passed = 0
    while passed < per_tick:
        with broker_errors(backend.settings):
            page: list[Any] = list(
                backend.redis.zrevrangebyscore(
                    keys.dead_letters, upper, "-inf", start=0, num=batch, withscores=True
                )
            )
        ids = [text(member) for member, _ in page]
        if len(page) < batch:
            return joined + index_letters(backend, ids, cursor=DONE)
        lowest = repr(float(page[-1][1]))
        # A page of one score only (never seen: microsecond scores): step below it.
        upper = lowest if lowest != upper else f"({lowest}"
        joined += index_letters(backend, ids, cursor=lowest)
        passed += len(page)
    return joined
