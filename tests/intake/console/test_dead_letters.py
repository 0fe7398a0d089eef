"""The dead-letter list and one letter's page (dispatcher/intake/console/dead_letters.py):
filters, pages by cursor, masked phones, the whole job redacted, no secret anywhere.
"""

from __future__ import annotations

import csv
import io
import re
import time

import pytest
from starlette.testclient import TestClient

from dispatcher.config.settings import Settings
from dispatcher.ops.selection import Cursor, Selection
from tests.support.console import AUTH_ERROR, SECRET, TOKEN, add_letters, csrf_of, ids_on, store_of


def test_list_masks_phones_and_filters_by_reason_agent_phone_and_age(
    operator: TestClient, cs: Settings
) -> None:
    now = time.time()
    old = add_letters(cs, 2, reason="dnc", agent="2000", phone_base=7275551000, now=now - 3 * 86400)
    new = add_letters(cs, 3, agent="1000", phone_base=7275552000, now=now)
    page = operator.get("/ui/dead-letters").text
    assert set(ids_on(page)) == {x.id for x in old + new}
    assert "7275552000" not in page and "******2000" in page
    assert "1003|GHOST" in page  # the answer is shown...
    new_error = add_letters(cs, 1, error="ERROR: add_lead PHONE NUMBER IN DNC - 7275559999|1000")
    page = operator.get("/ui/dead-letters").text
    assert "7275559999" not in page and "******9999|1000" in page  # ...its phone masked
    store_of(cs).purge(new_error[0])
    assert set(ids_on(operator.get("/ui/dead-letters?reason=dnc").text)) == {x.id for x in old}
    assert set(ids_on(operator.get("/ui/dead-letters?agent=1000").text)) == {x.id for x in new}
    assert ids_on(operator.get("/ui/dead-letters?phone4=2001").text) == [new[1].id]
    assert set(ids_on(operator.get("/ui/dead-letters?within=1h").text)) == {x.id for x in new}
    assert set(ids_on(operator.get("/ui/dead-letters?older=1d").text)) == {x.id for x in old}
    assert ids_on(operator.get("/ui/dead-letters?agent=1000&phone4=9999").text) == []
    indexed = operator.get("/ui/dead-letters?reason=dnc").text
    assert "2 matching letters" in indexed


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("reason=nope", "reason"),
        ("agent=a%20b", "agent"),
        ("phone4=12345", "phone4"),
        ("within=2x", "within"),
        ("older=-1h", "older"),
    ],
)
def test_a_bad_filter_names_the_field(operator: TestClient, query: str, field: str) -> None:
    reply = operator.get(f"/ui/dead-letters?{query}")
    assert reply.status_code == 400
    assert f"{field}:" in reply.text


def test_pages_follow_a_cursor_without_gaps_or_repeats(operator: TestClient, cs: Settings) -> None:
    letters = add_letters(cs, 120)
    seen: list[str] = []
    url = "/ui/dead-letters"
    pages = 0
    while url:
        page = operator.get(url).text
        seen += ids_on(page)
        pages += 1
        match = re.search(r'href="([^"]+)" rel="next"', page)
        url = match.group(1).replace("&amp;", "&") if match else ""
    assert pages == 3
    assert seen == [x.id for x in letters]  # newest first, each once


def test_a_cursor_survives_replays_before_it(operator: TestClient, cs: Settings) -> None:
    letters = add_letters(cs, 60)
    first = operator.get("/ui/dead-letters").text
    next_url = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    store = store_of(cs)
    for letter in letters[:50]:  # the whole first page is replayed meanwhile
        store.replay(letter)
    assert ids_on(operator.get(next_url).text) == [x.id for x in letters[50:]]


def test_selection_pages_equal_scores_by_id(cs: Settings) -> None:
    """Letters written in the same microsecond: the (score, id) cursor still pages them all."""
    now = time.time()
    letters = add_letters(cs, 25, now=now, step=0.0)
    store = store_of(cs)
    seen: list[str] = []
    cursor: Cursor | None = None
    while True:
        page = Selection().page(store, after=cursor, limit=7)
        seen += [x.id for x in page.letters]
        if page.next is None:
            break
        # Delete the cursor's letter: the next page is found by score and id instead.
        if len(seen) == 14:
            store.purge(page.letters[-1])
        cursor = Cursor.decode(page.next.encode())
    assert sorted(seen) == sorted(x.id for x in letters) and len(seen) == len(set(seen))


def test_a_rare_agent_costs_bounded_pages_not_a_full_read(cs: Settings) -> None:
    add_letters(cs, 1, agent="4242", now=time.time() - 100)
    add_letters(cs, 3000, agent="1000")
    page = Selection(agent_user="4242").page(store_of(cs), limit=50, scan_budget=2000)
    assert page.letters == [] and page.scanned == 2000 and page.next is not None
    page = Selection(agent_user="4242").page(
        store_of(cs), after=page.next, limit=50, scan_budget=2000
    )
    assert [x.agent_user for x in page.letters] == ["4242"] and page.next is None


def test_a_garbled_cursor_is_a_clear_400(operator: TestClient) -> None:
    reply = operator.get("/ui/dead-letters?cursor=nonsense")
    assert reply.status_code == 400 and "cursor" in reply.text


def test_the_dead_letter_list_filters_by_dialer_and_shows_dialer_and_lane(
    two_operator: TestClient, two: Settings
) -> None:
    east = add_letters(two, 3, dialer="east")
    west = add_letters(two, 2, dialer="west", priority="bulk", phone_base=7275560000)
    west_dnc = add_letters(two, 1, dialer="west", reason="dnc", phone_base=7275570000)
    page = two_operator.get("/ui/dead-letters").text
    assert '<option value="east" >east</option><option value="west" >west</option>' in page
    assert set(ids_on(page)) == {x.id for x in east + west + west_dnc}
    row = re.search(rf'href="/ui/dead-letters/{west[0].id}">.*?</tr>', page, re.S)
    assert row and "<td>west</td>" in row.group(0) and "<td>bulk</td>" in row.group(0)
    row = re.search(rf'href="/ui/dead-letters/{east[0].id}">.*?</tr>', page, re.S)
    assert row and "<td>east</td>" in row.group(0) and "<td>realtime</td>" in row.group(0)
    listed = two_operator.get("/ui/dead-letters?dialer=west").text
    assert set(ids_on(listed)) == {x.id for x in west + west_dnc}
    assert '<option value="west" selected>west</option>' in listed
    both = two_operator.get("/ui/dead-letters?dialer=west&reason=dnc").text
    assert ids_on(both) == [west_dnc[0].id]
    assert ids_on(two_operator.get("/ui/dead-letters?dialer=east&reason=dnc").text) == []
    bad = two_operator.get("/ui/dead-letters?dialer=north")
    assert bad.status_code == 400 and "dialer: unknown dialer &#39;north&#39;" in bad.text
    assert "(known: east, west)" in bad.text
    # The filter follows into the actions and the export.
    preview = two_operator.get("/ui/dead-letters/purge?scope=matching&dialer=west").text
    assert "of dialer west" in preview and "Delete 3 letters for good" in preview
    assert 'name="dialer" value="west"' in preview
    rows = list(
        csv.DictReader(
            io.StringIO(two_operator.get("/ui/dead-letters/export?format=csv&dialer=east").text)
        )
    )
    assert [(r["dialer"], r["priority"]) for r in rows] == [("east", "realtime")] * 3
    reply = two_operator.post(
        "/ui/dead-letters/purge",
        data={"csrf": csrf_of(preview), "confirm": "yes", "scope": "matching", "dialer": "west"},
        follow_redirects=False,
    )
    assert reply.headers["location"] == "/ui/dead-letters?dialer=west"
    assert {x.id for x in store_of(two).iter()} == {x.id for x in east}


def test_detail_shows_the_whole_job_redacted_with_its_state(
    operator: TestClient, cs: Settings
) -> None:
    [letter] = add_letters(cs, 1, reason="auth", error=AUTH_ERROR, phone_base=7275553333)
    page = operator.get(f"/ui/dead-letters/{letter.id}").text
    assert SECRET not in page and "[REDACTED]" in page
    assert "7275553333" in page  # the whole job, for the operator to check in VICIdial
    assert letter.job_id in page and "&#34;dnc_check&#34;: true" in page
    assert "<dt>state</dt><dd>dead</dd>" in page
    assert "<dt>Attempts</dt><dd>1</dd>" in page
    assert operator.get("/ui/dead-letters/feedfeedfeedfeedfeedfeedfeedfeed").status_code == 404


def test_no_secret_in_list_detail_export_or_job_pages(operator: TestClient, cs: Settings) -> None:
    [letter] = add_letters(cs, 1, reason="auth", error=AUTH_ERROR)
    for path in (
        "/ui/",
        "/ui/dead-letters",
        f"/ui/dead-letters/{letter.id}",
        f"/ui/jobs/{letter.job_id}",
        "/ui/dead-letters/export?format=jsonl",
        "/ui/dead-letters/export?format=csv",
    ):
        body = operator.get(path).text
        assert SECRET not in body and TOKEN not in body, path
