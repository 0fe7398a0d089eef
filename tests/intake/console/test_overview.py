"""The overview (dispatcher/intake/console/overview.py): queue, lanes per dialer,
retries, workers, pauses, dead letters, the reconcile mode and what to fix, and the
last hour's per-minute samples the workers record.
"""

from __future__ import annotations

import re
import time

from starlette.testclient import TestClient

from dispatcher.config.settings import Settings
from dispatcher.intake import create_app
from dispatcher.ops.producer import prepare_job, push_jobs
from dispatcher.store.activity import read_activity, record_minute
from dispatcher.store.backend import get_backend
from tests.support.console import (
    OPERATOR,
    add_letters,
    cells,
    deny_lookups,
    session_client,
    table_row,
)
from workers.scheduler import RetryScheduler


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
    scheduler = RetryScheduler(cs, name="w-test@host")
    scheduler.tick()
    scheduler.tick()
    r = get_backend(cs).redis
    assert r.zcard(get_backend(cs).keys.activity) == 1


def test_overview_shows_each_dialers_lanes_pause_and_rate_limit(
    two_operator: TestClient, two: Settings
) -> None:
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
    east = cells(table_row(text, "dialers", "east"))
    west = cells(table_row(text, "dialers", "west"))
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
    idle = cells(table_row(two_operator.get("/ui/").text, "dialers", "east"))
    assert idle[:3] == ["0", "0", "\u2013"]


def test_overview_shows_the_reconcile_mode_and_what_to_fix(
    two_operator: TestClient, two: Settings
) -> None:
    add_letters(two, 2, reason="ambiguous", dialer="west")
    get_backend(two).execution.lookup_record(
        "east", state="ok", error="", missing="", fix="", hold_s=0
    )
    deny_lookups(two, "west")
    text = two_operator.get("/ui/").text
    assert "On: a call whose answer never came is looked up in VICIdial" in text
    assert "<code>source_id</code>" in text
    assert cells(table_row(text, "lookups", "east"))[0] == "permitted"
    west = cells(table_row(text, "lookups", "west"))
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
    assert cells(table_row(text, "lookups", "west"))[0].startswith("not checked yet")
    assert "become dead letters" not in text
