"""The simulator's /vicidial/non_agent_api.php answers byte for byte like VICIdial.

The examples of shared/vicidial/non_agent_api_lookup.md (version, login and the
shared failed-login counter, lead_all_info, lead_search, update_lead with
delete_lead=Y, permissions), sent over real HTTP to a real simulator whose leads
were added through its agc/api.php, with the exact bytes of every answer.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator

import httpx
import pytest

from dispatcher.simulator import Simulator, SimulatorState
from dispatcher.simulator.server import NONAGENT_PATH

T0 = 1_795_990_979.0


class FakeClock:
    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


STAMP = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(T0))
HEADER = (
    "status|user|vendor_lead_code|source_id|list_id|gmt_offset_now|phone_code|phone_number|"
    "title|first_name|middle_initial|last_name|address1|address2|address3|city|state|province|"
    "postal_code|country_code|gender|date_of_birth|alt_phone|email|security_phrase|comments|"
    "called_count|last_local_call_time|rank|owner|entry_list_id|lead_id"
)
LEAD_1 = (
    f"NEW|6666||job-abc|101|0.00|1|7275559101||Ann||||||||||||0000-00-00|||||0|{STAMP}|0||0|1\n"
)
LEAD_2 = (
    "NEW|6666|VLC-0123456789abcdef|0123456789abcdef0123456789abcdef|101|0.00|1|7275559101"
    f"||||||||||||||0000-00-00|||||0|{STAMP}|0||0|2\n"
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[Simulator]:
    with Simulator(SimulatorState.demo(), clock=clock, seed=1) as simulator:
        yield simulator


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as client:
        yield client


def url(sim: Simulator) -> str:
    return sim.base_url + NONAGENT_PATH


def add(sim: Simulator, http: httpx.Client, phone: str, agent: str = "1000", **fields: str) -> str:
    reply = http.post(
        sim.url,
        data={
            "source": "test",
            "user": "6666",
            "pass": "1234",
            "function": "external_add_lead",
            "agent_user": agent,
            "phone_code": "1",
            "value": phone,
            **fields,
        },
    )
    assert reply.text.startswith("SUCCESS"), reply.text
    return reply.text


def ask(sim: Simulator, http: httpx.Client, function: str, **fields: str) -> httpx.Response:
    data = {"source": "test", "user": "6666", "pass": "1234", "function": function, **fields}
    return http.get(url(sim), params=data)


@pytest.fixture
def seeded(sim: Simulator, http: httpx.Client) -> Simulator:
    """Leads 1, 2 (list 101) and 3 (list 0) with the phone 7275559101, as in the facts."""
    add(sim, http, "7275559101", first_name="Ann", source_id="job-abc")
    add(
        sim,
        http,
        "7275559101",
        source_id="0123456789abcdef0123456789abcdef",
        vendor_lead_code="VLC-0123456789abcdef",
    )
    add(sim, http, "7275559101", agent="1001")  # NOLIST: list 0, unreadable by lead_all_info
    return sim


# -- version, coffee, login --------------------------------------------------------------


def test_version_needs_no_login_and_ends_with_a_pipe(sim: Simulator, http: httpx.Client) -> None:
    for reply in (
        http.get(url(sim), params={"function": "version"}),
        http.post(url(sim), data={"function": "version", "user": "x", "pass": "wrong"}),
    ):
        assert reply.status_code == 200
        assert re.fullmatch(
            r"VERSION: 2\.14-202\|BUILD: 250720-1841\|DATE: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\|"
            rf"EPOCH: {int(T0)}\|DST: [01]\|TZ: -5\.00\|TZNOW: (-5\.00|-4)\|\n",
            reply.text,
        ), reply.text
    assert sim.failed_logins("6666") == 0


def test_coffee_and_head(sim: Simulator, http: httpx.Client) -> None:
    reply = http.get(url(sim), params={"function": "coffee"})
    assert (reply.status_code, reply.content) == (418, b"Coffee: coffee|Error 418 I'm a teapot")
    head = http.head(url(sim), params={"function": "version"})
    assert (head.status_code, head.content) == (200, b"")


def test_login_failures_echo_the_password_and_feed_the_shared_counter(
    sim: Simulator, http: httpx.Client, clock: FakeClock
) -> None:
    bad = http.get(
        url(sim),
        params={"source": "t1", "user": "6666", "pass": "wr!o'ng x", "function": "lead_all_info"},
    )
    assert bad.text == "ERROR: Login incorrect, please try again: |6666|wrongx|BAD|\n"
    assert http.get(url(sim), params={"function": "lead_all_info"}).text == (
        "ERROR: Login incorrect, please try again: |||BAD|\n"
    )
    assert ask(sim, http, "lead_all_info", user="9999").text == (
        "ERROR: Login incorrect, please try again: |9999|1234|BAD|\n"
    )
    assert sim.failed_logins("6666") == 1
    # A JSON body is not read: no credentials.
    assert http.post(url(sim), json={"user": "6666"}).text == (
        "ERROR: Login incorrect, please try again: |||BAD|\n"
    )
    # A successful Non-Agent login resets the count (the Agent API's does not).
    assert ask(sim, http, "lead_all_info").text == "ERROR: lead_all_info LEAD NOT FOUND: 6666||\n"
    assert sim.failed_logins("6666") == 0
    for _ in range(10):
        ask(sim, http, "lead_all_info", **{"pass": "nope"})
    assert sim.failed_logins("6666") == 10
    locked = ask(sim, http, "lead_all_info")
    assert locked.text == "ERROR: Too many login attempts, try again in 15 minutes: |6666|LOCK|\n"
    assert sim.is_locked("6666")
    clock.advance(901)
    assert ask(sim, http, "lead_all_info").text.startswith("ERROR: lead_all_info LEAD NOT FOUND")


def test_a_user_of_level_6_is_refused_with_the_right_password_and_it_counts(
    sim: Simulator, http: httpx.Client
) -> None:
    sim.update_user("6666", user_level=6)
    assert ask(sim, http, "lead_all_info").text == (
        "ERROR: Login incorrect, please try again: |6666|1234|BAD|\n"
    )
    assert sim.failed_logins("6666") == 1
    # The Agent API still works for that user: it asks for level > 0 only.
    add(sim, http, "7275559999")


def test_functions_missing_or_unknown(sim: Simulator, http: httpx.Client) -> None:
    for function in ("", "LEAD_ALL_INFO", "no_such"):
        assert ask(sim, http, function).text == "ERROR: NO FUNCTION SPECIFIED\n"
    assert ask(sim, http, "lead_all_info", source="t").text == (
        "ERROR: Invalid Source - t\nERROR: Invalid Source: |t|\n"
    )
    assert ask(sim, http, "lead_all_info", source="", user="6668").text == (
        "ERROR: Invalid Source - \nERROR: Invalid Source: ||\n"
    )


# -- permissions ------------------------------------------------------------------------


def test_permissions_exactly_as_checked(sim: Simulator, http: httpx.Client) -> None:
    lead_all_info = (
        "ERROR: lead_all_info USER DOES NOT HAVE PERMISSION TO GET LEAD INFO: |6666|0|\n"
    )
    lead_search = "ERROR: lead_search USER DOES NOT HAVE PERMISSION TO SEARCH FOR LEADS: |6666|0|\n"
    update = (
        "ERROR: update_lead USER DOES NOT HAVE PERMISSION TO UPDATE LEADS IN THE SYSTEM: |6666|0|\n"
    )

    def answers() -> tuple[bool, bool, bool]:
        a = ask(sim, http, "lead_all_info", lead_id="1").text
        b = ask(sim, http, "lead_search", phone_number="7275550999").text
        c = ask(sim, http, "update_lead", lead_id="999", delete_lead="Y").text
        return a != lead_all_info, b != lead_search, c != update

    assert answers() == (True, True, True)
    sim.update_user("6666", view_reports=False)
    assert answers() == (False, True, True)
    sim.update_user("6666", view_reports=True, user_level=7)
    assert answers() == (True, False, False)
    sim.update_user("6666", user_level=8, modify_leads=5)
    assert answers() == (True, True, False)
    sim.update_user("6666", modify_leads=0)
    assert answers() == (False, False, False)
    sim.update_user("6666", modify_leads=1, api_access=False)
    assert answers() == (False, False, False)
    assert sim.failed_logins("6666") == 0
    # Not allowed the function at all (6668 may only call version).
    sim.update_user("6668", user_level=9, view_reports=True)
    assert ask(sim, http, "lead_all_info", user="6668").text == (
        "ERROR: auth USER DOES NOT HAVE PERMISSION TO USE THIS FUNCTION: |6668|lead_all_info|\n"
    )
    sim.update_user("6668", functions=["version", "lead_all_info"])
    assert ask(sim, http, "lead_all_info", user="6668").text.startswith(
        "ERROR: lead_all_info LEAD NOT FOUND"
    )
    sim.update_user("6668", functions=["version", "lead_all_infos"])
    assert "USE THIS FUNCTION" in ask(sim, http, "lead_all_info", user="6668").text


# -- lead_all_info ----------------------------------------------------------------------


def test_lead_all_info_by_id_and_by_phone_newest_first(
    seeded: Simulator, http: httpx.Client
) -> None:
    sim = seeded
    assert ask(sim, http, "lead_all_info", lead_id="1").content == LEAD_1.encode()
    # ` 1x` keeps the digits; the phone is ignored when a lead_id is given.
    assert ask(sim, http, "lead_all_info", lead_id=" 1x", phone_number="0").text == LEAD_1
    by_phone = ask(sim, http, "lead_all_info", phone_number="727-555-9101")
    assert by_phone.text == LEAD_2 + LEAD_1  # lead 3 (list 0) silently left out
    with_header = ask(sim, http, "lead_all_info", phone_number="7275559101", header="YES")
    assert with_header.text == HEADER + "\n" + LEAD_2 + HEADER + "\n" + LEAD_1
    post = http.post(
        url(sim),
        data={
            "source": "test",
            "user": "6666",
            "pass": "1234",
            "function": "lead_all_info",
            "lead_id": "1",
        },
        params={"lead_id": "2"},  # the query string wins
    )
    assert post.text == LEAD_2


def test_lead_all_info_stages(sim: Simulator, http: httpx.Client) -> None:
    add(
        sim,
        http,
        "7275559107",
        title="Mr",
        first_name="Hal",
        middle_initial="Q",
        last_name="Smith",
        address1="1 Main St",
        address2="Apt 2",
        address3="c/o X",
        city="St Pete",
        state="FL",
        province="Pinellas",
        postal_code="33701",
        country_code="USA",
        gender="M",
        date_of_birth="1970-01-02",
        alt_phone="7275550123",
        email="a@b.co",
        security_phrase="secret",
        comments="hello, world",
        rank="5",
        owner="o1",
        vendor_lead_code="A-1_b.c",
        source_id="a b c,d",
    )
    values = (
        f"NEW|6666|A-1_b.c|a b c,d|101|0.00|1|7275559107|Mr|Hal|Q|Smith|1 Main St|Apt 2|c/o X|"
        f"St Pete|FL|Pinellas|33701|USA|M|1970-01-02|7275550123|a@b.co|secret|hello, world|0|"
        f"{STAMP}|5|o1|0|1"
    )
    tab = ask(sim, http, "lead_all_info", lead_id="1", stage="tab", header="YES").text
    assert tab == HEADER.replace("|", "\t") + "\n" + values.replace("|", "\t") + "\n"
    assert ask(sim, http, "lead_all_info", lead_id="1", stage="csv").text == (
        values.replace("|", ",") + "\n"
    )
    assert ask(sim, http, "lead_all_info", lead_id="1", stage="CSV").text == values + "\n"
    newline = ask(sim, http, "lead_all_info", lead_id="1", stage="newline").text
    assert newline == values.replace("|", "\n") + "\n"


def test_lead_all_info_prints_pipes_tabs_and_line_breaks_raw(
    sim: Simulator, http: httpx.Client
) -> None:
    add(sim, http, "7275559102", vendor_lead_code="t\tab", source_id="a|b", comments="x|y\nz")
    assert (
        ask(sim, http, "lead_all_info", lead_id="1").content
        == (
            f"NEW|6666|t\tab|a|b|101|0.00|1|7275559102||||||||||||||0000-00-00||||x|y\nz|0|"
            f"{STAMP}|0||0|1\n"
        ).encode()
    )


def test_lead_all_info_errors(seeded: Simulator, http: httpx.Client) -> None:
    sim = seeded
    cases = {
        (("lead_id", "999"),): "ERROR: lead_all_info LEAD NOT FOUND: 6666|999|\n",
        (("lead_id", "abc"),): "ERROR: lead_all_info LEAD NOT FOUND: 6666||\n",
        (): "ERROR: lead_all_info LEAD NOT FOUND: 6666||\n",
        (("phone_number", "12345"),): "ERROR: lead_all_info LEAD NOT FOUND: 6666||12345\n",
        (("phone_number", "12345678901234567890"),): (
            "ERROR: lead_all_info LEAD NOT FOUND: 6666||12345678901234567890\n"
        ),
        (("phone_number", "7275559101,7275559102"),): (
            "ERROR: lead_all_info LEAD NOT FOUND: 6666||7275559101,7275559102\n"
        ),
        (("phone_number", "+17275559101"),): (
            "ERROR: lead_all_info LEAD NOT FOUND: 6666||17275559101\n"
        ),
        (("lead_id", "3"),): "ERROR: lead_all_info LIST NOT FOUND: 6666|3||0\n",
    }
    for fields, body in cases.items():
        assert ask(sim, http, "lead_all_info", **dict(fields)).text == body
    add(sim, http, "7275559103", agent="1001")
    assert ask(sim, http, "lead_all_info", phone_number="7275559103").text == (
        "ERROR: lead_all_info LIST NOT FOUND: 6666||7275559103|0\n"
    )
    for extra in ({"custom_fields": "Y"}, {"archived_lead": "Y"}):
        reply = ask(sim, http, "lead_all_info", lead_id="1", **extra)
        assert (reply.status_code, reply.content) == (500, b"")
    assert ask(sim, http, "lead_all_info", lead_id="1", custom_fields="y").text == LEAD_1


def test_a_record_with_a_quote_is_unreadable(sim: Simulator, http: httpx.Client) -> None:
    add(sim, http, "7275559104", first_name="O'Brien")
    add(sim, http, "7275559104", first_name="Bob")
    for fields in ({"lead_id": "1"}, {"phone_number": "7275559104"}):
        reply = ask(sim, http, "lead_all_info", **fields)
        assert (reply.status_code, reply.content) == (500, b"")
    assert ask(sim, http, "lead_all_info", lead_id="2").status_code == 200


def test_user_groups_and_api_list_restrict(seeded: Simulator, http: httpx.Client) -> None:
    """The facts' captures: a group reading only NOLIST, api_list_restrict's extra lines,
    a group row that does not exist."""
    sim = seeded  # leads 1, 2 in list 101 (TESTCAMP), 3 in list 0
    sim.add_user("6669f", "1234", user_group="ONLYNOLIST", view_reports=True)
    sim.add_user("6669k", "1234", view_reports=True, api_list_restrict=True)
    sim.add_user("6669h0", "1234", user_group="NOSUCH", view_reports=True)
    sim.set_user_group("ADMIN", allowed_campaigns=["ALL-CAMPAIGNS"])
    sim.set_user_group("ONLYNOLIST", allowed_campaigns=["NOLIST"])

    def as_user(user: str, function: str, **fields: str) -> str:
        data = {"source": "test", "user": user, "pass": "1234", "function": function, **fields}
        return http.get(url(sim), params=data).text

    # A group that may not read TESTCAMP: no line per skipped lead without the restrict.
    assert as_user("6669f", "lead_all_info", lead_id="1") == (
        "ERROR: lead_all_info LIST NOT FOUND: 6669f|1||101\n"
    )
    sim.update_user("6669f", api_list_restrict=True)
    assert as_user("6669f", "lead_all_info", lead_id="1") == (
        "ERROR: lead_all_info LIST NOT FOUND: 6669f|1|\n"
        "ERROR: lead_all_info LIST NOT FOUND: 6669f|1||101\n"
    )
    # api_list_restrict, group ADMIN: the list-0 lead's line comes before the records.
    assert as_user("6669k", "lead_all_info", phone_number="7275559101") == (
        "ERROR: lead_all_info LIST NOT FOUND: 6669k||7275559101\n" + LEAD_2 + LEAD_1
    )
    # Without the restrict, the same phone shows the readable leads and no error line.
    assert ask(sim, http, "lead_all_info", phone_number="7275559101").text == LEAD_2 + LEAD_1
    # A user whose group row does not exist sees no lead at all.
    assert as_user("6669h0", "lead_all_info", lead_id="1") == (
        "ERROR: lead_all_info LIST NOT FOUND: 6669h0|1||101\n"
    )
    # lead_search sees every list, also for a group that reads none of them.
    assert as_user("6669f", "lead_search", phone_number="7275559101") == "7275559101|3|3-2-1\n"
    sim.update_user("6669h0", api_list_restrict=True)
    assert as_user("6669h0", "lead_search", phone_number="7275559101") == (
        "ERROR: user_group DOES NOT EXIST: |6669h0|NOSUCH|\n"
    )
    assert as_user("6669f", "lead_search", phone_number="7275559101", list_id="101") == (
        "ERROR: lead_search NOT AN ALLOWED LIST ID - 7275559101|101\n"
    )
    # update_lead with the restrict: a lead of a list the group may not touch stops it.
    assert as_user("6669f", "update_lead", lead_id="1", delete_lead="Y") == (
        "ERROR: update_lead NOT AN ALLOWED LIST ID, RESULTS - 101\n"
    )
    assert as_user("6669f", "update_lead", lead_id="3", delete_lead="Y") == (
        "SUCCESS: update_lead LEAD HAS BEEN DELETED 0|0 - 6669f|3|1|0|0|\n"
    )


def test_state_file_user_groups_and_api_list_restrict() -> None:
    state = SimulatorState.from_dict(
        {
            "users": {"6669": {"pass": "1234", "api_list_restrict": True}},
            "user_groups": {"ADMIN": {"allowed_campaigns": ["TESTCAMP"]}},
        }
    )
    assert state.users["6669"].api_list_restrict is True
    assert state.user_groups is not None
    assert state.user_groups["ADMIN"].allowed_campaigns == ("TESTCAMP",)
    assert SimulatorState.from_dict(state.to_dict()) == state
    assert SimulatorState.demo().user_groups is None
    with pytest.raises(ValueError, match=r"user_groups\.X\.allowed_campaigns"):
        SimulatorState.from_dict({"user_groups": {"X": {"allowed_campaigns": "ALL"}}})
    with pytest.raises(ValueError, match=r"users\.1\.api_list_restrict"):
        SimulatorState.from_dict({"users": {"1": {"pass": "x", "api_list_restrict": 1}}})


# -- lead_search ------------------------------------------------------------------------


def test_lead_search(seeded: Simulator, http: httpx.Client) -> None:
    sim = seeded
    add(sim, http, "7275559102")  # lead 4
    reply = ask(
        sim,
        http,
        "lead_search",
        phone_number="7275559101,7275559102,7275550999",
        header="YES",
    )
    assert reply.text == (
        "search_keyrecords_foundlead_ids\n7275559101|3|3-2-1\n7275559102|1|4\n7275550999|0|\n"
    )
    assert ask(
        sim, http, "lead_search", phone_number="7275559101,7275559102", records="2"
    ).text == ("7275559101|1|3\n7275559102|1|4\n")
    assert ask(sim, http, "lead_search", phone_number="7275550999,7275550998").text == (
        "ERROR: lead_search NO MATCHES FOUND IN THE SYSTEM: |6666|||7275550999,7275550998\n"
    )
    assert ask(sim, http, "lead_search", phone_number="12345").text == (
        "ERROR: lead_search NO VALID SEARCH METHOD - 6666|PHONE_NUMBER|(0)|(0)|12345(0)\n"
    )
    bad = ask(sim, http, "lead_search", phone_number="123,456,789")
    assert (bad.status_code, bad.content) == (500, b"")
    vendor = ask(
        sim,
        http,
        "lead_search",
        search_method="VENDOR_LEAD_CODE",
        vendor_lead_code="VLC-0123456789abcdef,nosuch",
    )
    assert vendor.text == "VLC-0123456789abcdef|1|2\nnosuch|0|\n"
    lower = ask(
        sim,
        http,
        "lead_search",
        search_method="VENDOR_LEAD_CODE",
        vendor_lead_code="vlc-0123456789abcdef",
    )
    assert lower.text == "vlc-0123456789abcdef|0|\n"
    both = ask(
        sim,
        http,
        "lead_search",
        search_method="PHONE_NUMBER_VENDOR_LEAD_CODE",
        phone_number="7275559102",
        vendor_lead_code="VLC-0123456789abcdef",
    )
    assert both.text == "7275559102|0|\nVLC-0123456789abcdef|1|2\n"
    assert (
        ask(sim, http, "lead_search", search_method="LEAD_ID", lead_id="1", lead_ids="1,2").text
        == ""
    )


# -- update_lead delete_lead=Y ----------------------------------------------------------


def test_update_lead_deletes(seeded: Simulator, http: httpx.Client) -> None:
    sim = seeded
    assert ask(sim, http, "update_lead", lead_id="abc", delete_lead="Y").text == (
        "ERROR: update_lead NO VALID SEARCH METHOD - 6666|LEAD_ID|||\n"
    )
    assert ask(sim, http, "update_lead", lead_id="11", delete_lead="Y").text == (
        "ERROR: update_lead NO MATCHES FOUND IN THE SYSTEM: |6666|11||\n"
    )
    assert ask(sim, http, "update_lead", lead_id="2", no_update="Y").text == (
        "NOTICE: update_lead LEADS FOUND IN THE SYSTEM: |6666|2|||101|0\n"
    )
    assert ask(sim, http, "update_lead", lead_id="999", no_update="Y").text == (
        "NOTICE: update_lead NO MATCHES FOUND IN THE SYSTEM: |6666|999||\n"
    )
    for nothing in ({"delete_lead": "y"}, {}):
        reply = ask(sim, http, "update_lead", lead_id="2", **nothing)
        assert (reply.status_code, reply.content) == (200, b"")
    assert len(sim.leads) == 3
    assert ask(sim, http, "update_lead", lead_id="2", delete_lead="Y").text == (
        "SUCCESS: update_lead LEAD HAS BEEN DELETED 0|0 - 6666|2|1|0|0|\n"
    )
    assert [lead.lead_id for lead in sim.leads] == [1, 3]
    assert ask(sim, http, "update_lead", lead_id="2", delete_lead="Y").text == (
        "ERROR: update_lead NO MATCHES FOUND IN THE SYSTEM: |6666|2||\n"
    )
    assert ask(sim, http, "lead_all_info", lead_id="2").text == (
        "ERROR: lead_all_info LEAD NOT FOUND: 6666|2|\n"
    )
    by_phone = ask(
        sim,
        http,
        "update_lead",
        search_method="PHONE_NUMBER",
        phone_number="7275559101",
        records="5",
        delete_lead="Y",
    )
    assert by_phone.text == (
        "SUCCESS: update_lead LEAD HAS BEEN DELETED 0|0 - 6666|1|1|0|0|\n"
        "SUCCESS: update_lead LEAD HAS BEEN DELETED 0|0 - 6666|3|1|0|0|\n"
    )
    assert sim.leads == []


# -- faults and records -----------------------------------------------------------------


def test_lookups_are_recorded_apart_and_faults_apply(seeded: Simulator, http: httpx.Client) -> None:
    sim = seeded
    calls = sim.call_count
    sim.script_phone("7275559101", ["http_503", "reset"])
    assert ask(sim, http, "lead_all_info", phone_number="7275559101").status_code == 503
    with pytest.raises(httpx.TransportError):
        ask(sim, http, "lead_all_info", phone_number="7275559101")
    assert ask(sim, http, "lead_all_info", phone_number="7275559101").text == LEAD_2 + LEAD_1
    assert sim.call_count == calls  # agc/api.php calls only
    assert [r.fault for r in sim.lookups] == ["http_503", "reset", None]
    assert sim.lookups[-1].fields["function"] == "lead_all_info"
    assert "pass" not in sim.lookups[-1].fields
    assert sim.lookup_count == 3
    sim.set_outage("http_502")
    assert ask(sim, http, "lead_all_info", lead_id="1").status_code == 502
    sim.set_outage(None)
    sim.set_latency(200)
    started = time.monotonic()
    ask(sim, http, "lead_all_info", lead_id="1")
    assert time.monotonic() - started >= 0.2


def test_a_touched_lead_shows_its_status_and_calls(seeded: Simulator, http: httpx.Client) -> None:
    sim = seeded
    sim.touch_lead(1, status="NA", called_count=2)
    assert ask(sim, http, "lead_all_info", lead_id="1").text == LEAD_1.replace(
        "NEW|", "NA|"
    ).replace(f"|||||0|{STAMP}", f"|||||2|{STAMP}")


def test_new_fault_kinds_504_after_and_held_insert(sim: Simulator, http: httpx.Client) -> None:
    sim.script_phone("7275559201", ["http_504_after"])
    reply = http.post(
        sim.url,
        data={
            "source": "test",
            "user": "6666",
            "pass": "1234",
            "function": "external_add_lead",
            "agent_user": "1000",
            "phone_code": "1",
            "value": "7275559201",
        },
    )
    assert reply.status_code == 504 and "Gateway" in reply.text
    assert len(sim.leads) == 1  # inserted, then the proxy gave up
    sim.set_stall_seconds(30)
    sim.script_phone("7275559202", ["hold_insert"])
    with httpx.Client(timeout=0.3) as short, contextlib.suppress(httpx.TransportError):
        short.post(
            sim.url,
            data={
                "source": "test",
                "user": "6666",
                "pass": "1234",
                "function": "external_add_lead",
                "agent_user": "1000",
                "phone_code": "1",
                "value": "7275559202",
            },
        )
    assert len(sim.leads) == 1  # still stuck "in PHP"
    assert sim.release_held() == 1
    deadline = time.monotonic() + 5
    while len(sim.leads) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [lead.phone_number for lead in sim.leads] == ["7275559201", "7275559202"]


def test_state_file_users_gain_level_reports_and_modify_leads() -> None:
    state = SimulatorState.from_dict(
        {
            "users": {
                "6666": {
                    "pass": "1234",
                    "user_level": 8,
                    "view_reports": True,
                    "modify_leads": False,
                },
                "7000": {"pass": "1234"},
            }
        }
    )
    assert (state.users["6666"].user_level, state.users["6666"].view_reports) == (8, True)
    assert state.users["6666"].modify_leads == 0
    assert (state.users["7000"].user_level, state.users["7000"].view_reports) == (9, False)
    assert state.users["7000"].modify_leads == 1
    assert SimulatorState.from_dict(state.to_dict()).users["6666"].modify_leads == 0
    with pytest.raises(ValueError, match=r"users\.6666\.user_level"):
        SimulatorState.from_dict({"users": {"6666": {"pass": "x", "user_level": "nine"}}})
    with pytest.raises(ValueError, match=r"users\.6666\.modify_leads"):
        SimulatorState.from_dict({"users": {"6666": {"pass": "x", "modify_leads": 7}}})
