"""Replay, purge and reconcile from the console (dispatcher/intake/console/actions.py):
previewed, then confirmed; DNC and ambiguous letters held back unless included with a
reason; what each did said in the flash and logged ``console.<verb>``.
"""

from __future__ import annotations

import base64
import json
import re
import time
from urllib.parse import urlencode

from starlette.testclient import TestClient

from dispatcher.config.settings import Settings
from dispatcher.ops.producer import job_status
from dispatcher.store.backend import get_backend
from dispatcher.store.execution import new_token
from tests.support.console import (
    OPERATOR,
    add_letters,
    capture_logs,
    csrf_of,
    deny_lookups,
    lookups_held,
    store_of,
)
from tests.support.queues import queue_length


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


def test_reconcile_one_from_its_page_hands_it_to_the_workers(
    two_operator: TestClient, two: Settings
) -> None:
    [letter] = add_letters(two, 1, reason="ambiguous", dialer="west", now=time.time() - 3600)
    deny_lookups(two, "west")
    assert lookups_held(two, "west")
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
    assert not lookups_held(two, "west")  # the operator fixed the cause: the look-up is tried again
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
