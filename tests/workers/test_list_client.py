"""add_lead's clients (workers.list_client) against the simulator, over real HTTP.

The simulator's add_lead is pinned byte for byte to shared/vicidial/non_agent_add_lead.md
(tests/simulator/test_simulator_addlead.py). Here the product's own request goes to it:
added (with hopper, callback and custom fields), every refusal, a duplicate, DNC, the empty
500, the faults around a call, both clients (threaded and the engine's asyncio one). And the
property for leads for a list: whatever validates, the simulator stores exactly the value
sent after the documented normalisations (README "Leads"); whatever is refused names its
field, and only for a reason (the server would change the value, or a documented rule).
The leads it draws are tests/support/strategies.py's (the end-to-end property draws them too).

No worker here: the worker's integration is issue 27's part B.
"""

from __future__ import annotations

import asyncio
import string
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.config.settings import Settings
from dispatcher.devtools.redis_server import free_port
from dispatcher.model.dialers import Dialer
from dispatcher.model.errors import (
    AmbiguousFailure,
    AuthFailed,
    CampaignDNCBlocked,
    ConfigError,
    DNCBlocked,
    HTTPStatusError,
    InvalidLead,
    InvalidPhone,
    InvalidSource,
    ListNotAllowed,
    ListUndefined,
    NetworkError,
    PermissionDenied,
    ServerError,
)
from dispatcher.model.lead import Lead
from dispatcher.model.list_lead import make_list_lead
from dispatcher.model.list_options import ListOptions, make_list_options
from dispatcher.model.marker import mark
from dispatcher.simulator import Simulator, SimulatorState
from dispatcher.simulator.addlead import PendingInsert, answer_add_lead, log_value_breaks
from dispatcher.simulator.addlead_fields import ADD_LEAD_FIELDS
from dispatcher.simulator.agc import StoredLead, Tables
from tests.support.leads import TRICKY, documented, refused_by_design
from tests.support.strategies import (
    CANDIDATES,
    LIST_RANDOM_FIELDS,
    LIST_SIZES,
    LIST_TYPED,
    list_leads,
    list_near_valid,
    list_server_stores,
)
from workers.list_answer import DuplicateFound, ListLeadAdded, parse_list_answer
from workers.list_client import AsyncListClient, ListClient, list_form

NO_DNC = {"dnc_check": False, "campaign_dnc_check": False}


@pytest.fixture(scope="module")
def shared_sim() -> Iterator[Simulator]:
    with Simulator(SimulatorState.demo(), stall_s=3.0) as sim:
        yield sim


@pytest.fixture
def sim(shared_sim: Simulator) -> Simulator:
    shared_sim.reset()
    shared_sim.set_non_latin(False)
    return shared_sim


def settings_for(sim: Simulator, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "vicidial_url": sim.url,
        "vicidial_user": "6666",
        "vicidial_pass": "1234",
        "http_timeout_s": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def client(sim: Simulator) -> Iterator[ListClient]:
    settings = settings_for(sim)
    dialer = settings.dialers.resolve(None)
    assert dialer is not None
    c = ListClient(settings, dialer=dialer)
    yield c
    c.close()


def lead(**fields: object) -> Lead:
    return make_list_lead({"list_id": "101", "phone_number": "7275551212", **fields})


def options(**values: object) -> ListOptions:
    return make_list_options(values, campaign_dnc_check=False)


def sent_fields(sim: Simulator) -> list[tuple[str, str]]:
    """The last add_lead request's form fields, in the order they were sent."""
    record = sim.add_lead_requests[-1]
    assert record.method == "POST"
    return list(record.fields.items())


# ---------------------------------------------------------------------------------------------
# The request
# ---------------------------------------------------------------------------------------------


def test_the_request_add_lead_reads(client: ListClient) -> None:
    dialer = client.dialer
    body = list_form(
        dialer,
        mark(lead(first_name="O'Brien", comments="a b"), "job-1", "source_id"),
        options(campaign_id="TESTCAMP", duplicate_check="DUPLIST", custom_fields={"c": "x"}),
        dnc_check=True,
        campaign_dnc_check=True,
    )
    fields = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
    assert fields[:3] == [("source", "dispatcher"), ("user", "6666"), ("pass", "1234")]
    assert fields[-1] == ("function", "add_lead")  # a constant last, never user text
    sent = dict(fields)
    assert sent["list_id"] == "101" and sent["phone_code"] == "1"
    assert sent["source_id"] == "job-1" and sent["first_name"] == "O'Brien"
    assert (sent["dnc_check"], sent["campaign_dnc_check"], sent["list_exists_check"]) == ("Y",) * 3
    assert (sent["campaign_id"], sent["duplicate_check"], sent["custom_fields"]) == (
        "TESTCAMP",
        "DUPLIST",
        "Y",
    )
    # The last field is what VICIdial's API log INSERT holds: it must never break it.
    assert not log_value_breaks(fields[-1][1])
    assert b"%27" in body and b"'" not in body  # the quote travels encoded


def test_a_list_form_needs_a_list_lead_and_refuses_a_trailing_backslash(
    client: ListClient,
) -> None:
    agent = Lead("1000", "7275551212", "1")
    with pytest.raises(ValueError, match="list_id"):
        list_form(client.dialer, agent, ListOptions(), **NO_DNC)
    forged = Lead("", "7275551212", "1", {"comments": "x\\"}, list_id="101")
    with pytest.raises(ValueError, match="backslash"):
        list_form(client.dialer, forged, ListOptions(), **NO_DNC)


def test_a_nonagent_url_with_a_query_string_is_refused(sim: Simulator) -> None:
    settings = settings_for(sim, vicidial_nonagent_url=sim.base_url + "/x.php?list_id=1")
    dialer = settings.dialers.resolve(None)
    assert dialer is not None
    with pytest.raises(ConfigError, match="query string"):
        ListClient(settings, dialer=dialer)


# ---------------------------------------------------------------------------------------------
# Added, and what VICIdial did after
# ---------------------------------------------------------------------------------------------


def test_added_with_hopper_callback_and_custom_fields(sim: Simulator, client: ListClient) -> None:
    sent = lead(first_name="Ann", entry_list_id="102", list_id="102")
    opts = make_list_options(
        {
            "campaign_id": "TESTCAMP",
            "duplicate_check": "DUPLIST",
            "add_to_hopper": True,
            "hopper_priority": 5,
            "callback": {
                "datetime": "2027-01-02 10:00:00",
                "type": "USERONLY",
                "user": "6666",
                "status": "CBX",
                "comments": "hi+there",
            },
            "custom_fields": {"favorite_color": "dark red"},
        },
        campaign_dnc_check=True,
    )
    outcome, latency_ms = client.add_lead(sent, opts, dnc_check=True, campaign_dnc_check=True)
    assert isinstance(outcome, ListLeadAdded) and latency_ms > 0
    assert (outcome.lead_id, outcome.list_id, outcome.gmt) == ("1", "102", "-5.00")
    assert (outcome.hopper, outcome.callback, outcome.custom_fields) == ("added",) * 3
    assert outcome.unfinished(opts) == ()
    stored = sim.lead(1)
    assert stored is not None
    assert (stored.list_id, stored.status, stored.fields["first_name"]) == ("102", "CBHOLD", "Ann")
    assert stored.entry_list_id == "102"
    assert sim.custom_values(102, 1) == {"favorite_color": "dark red"}
    [hopper] = sim.hopper
    assert (hopper.lead_id, hopper.priority) == (1, 5)
    [callback] = sim.callbacks
    assert (callback.callback_time, callback.recipient, callback.user, callback.lead_status) == (
        "2027-01-02 10:00:00",
        "USERONLY",
        "6666",
        "CBX",
    )
    assert callback.comments == "hi+there" and callback.campaign_id == "TESTCAMP"


def test_what_the_answer_reports_not_done(sim: Simulator, client: ListClient) -> None:
    opts = make_list_options(
        {
            "campaign_id": "NOSUCH",
            "callback": {"datetime": "NOW"},
            "custom_fields": {"favorite_color": "red"},
        },
        campaign_dnc_check=False,
    )
    outcome, _ = client.add_lead(lead(), opts, **NO_DNC)  # list 101 has no custom fields
    assert isinstance(outcome, ListLeadAdded)
    assert outcome.unfinished(opts) == (
        "callback: campaign_not_valid",
        "custom_fields: no_table",
    )


# ---------------------------------------------------------------------------------------------
# Every refusal, a duplicate, DNC
# ---------------------------------------------------------------------------------------------


def test_a_duplicate_names_the_lead_found(sim: Simulator, client: ListClient) -> None:
    first, _ = client.add_lead(lead(), options(duplicate_check="DUPLIST"), **NO_DNC)
    assert isinstance(first, ListLeadAdded)
    again, _ = client.add_lead(lead(first_name="Bob"), options(duplicate_check="DUPLIST"), **NO_DNC)
    assert again == DuplicateFound(
        existing_lead_id=first.lead_id,
        existing_list_id="101",
        check="DUPLIST",
        line=f"ERROR: add_lead DUPLICATE PHONE NUMBER IN LIST - 7275551212|101|{first.lead_id}",
    )
    elsewhere, _ = client.add_lead(
        lead(list_id="998"), options(duplicate_check="DUPCAMP"), **NO_DNC
    )
    assert isinstance(elsewhere, DuplicateFound)
    assert (elsewhere.existing_lead_id, elsewhere.existing_list_id) == (first.lead_id, "101")
    assert len(sim.leads) == 1


def test_dnc_and_campaign_dnc(sim: Simulator, client: ListClient) -> None:
    with pytest.raises(DNCBlocked):
        client.add_lead(
            lead(phone_number="7275550000"), ListOptions(), dnc_check=True, campaign_dnc_check=False
        )
    with pytest.raises(CampaignDNCBlocked) as info:
        client.add_lead(
            lead(phone_number="7275550001"),
            options(campaign_id="TESTCAMP"),
            dnc_check=True,
            campaign_dnc_check=True,
        )
    assert info.value.line.endswith("7275550001|TESTCAMP|6666")
    assert sim.leads == []


def test_refusals_of_the_list_and_the_phone(sim: Simulator, client: ListClient) -> None:
    with pytest.raises(ListUndefined):
        client.add_lead(lead(list_id="555"), ListOptions(), **NO_DNC)
    with pytest.raises(InvalidPhone, match="PREFIX"):
        client.add_lead(
            lead(phone_number="7270559101"), options(usacan_prefix_check=True), **NO_DNC
        )
    with pytest.raises(InvalidPhone, match="AREACODE"):
        client.add_lead(
            lead(phone_number="2125559111"), options(usacan_areacode_check=True), **NO_DNC
        )
    sim.add_user("6671", "1234", api_list_restrict=True, user_group="ADDONLY", view_reports=True)
    sim.set_user_group("ADMIN", allowed_campaigns=["ALL-CAMPAIGNS"])
    sim.set_user_group("ADDONLY", allowed_campaigns=["OTHERDNC"])
    restricted = ListClient(client.settings, dialer=replace(client.dialer, user="6671"))
    try:
        with pytest.raises(ListNotAllowed) as info:
            restricted.add_lead(lead(), ListOptions(), **NO_DNC)
        assert info.value.reason == "permission"
        outcome, _ = restricted.add_lead(lead(list_id="102"), ListOptions(), **NO_DNC)
        assert isinstance(outcome, ListLeadAdded)
    finally:
        restricted.close()
    assert [x.list_id for x in sim.leads] == ["102"]


@pytest.mark.parametrize(
    ("user", "password", "source", "error"),
    [
        ("6666", "wr&ng!", "dispatcher", AuthFailed),
        ("9999", "1234", "dispatcher", AuthFailed),
        ("6667", "1234", "dispatcher", PermissionDenied),  # no agent API access
        ("6668", "1234", "dispatcher", PermissionDenied),  # not allowed the function
        ("6666", "1234", "t", InvalidSource),
    ],
)
def test_refusals_of_the_user(
    sim: Simulator, client: ListClient, user: str, password: str, source: str, error: type
) -> None:
    dialer = replace(client.dialer, user=user, password=password, source=source)
    c = ListClient(client.settings, dialer=dialer)
    try:
        with pytest.raises(error) as info:
            c.add_lead(lead(), ListOptions(), **NO_DNC)
        assert "wr&ng" not in str(info.value) and "wrng" not in str(info.value)
        with pytest.raises(error):
            c.probe("101")
    finally:
        c.close()
    assert sim.leads == []


def test_the_probe_stores_nothing(sim: Simulator, client: ListClient) -> None:
    client.probe()
    client.probe("101")
    with pytest.raises(ListUndefined):
        client.probe("555")
    assert sim.leads == [] and len(sim.add_lead_requests) == 3


# ---------------------------------------------------------------------------------------------
# HTTP 500 and the faults around a call
# ---------------------------------------------------------------------------------------------


def test_an_empty_500_is_a_server_error_and_nothing_was_stored(
    sim: Simulator, client: ListClient
) -> None:
    # A *CAMP* duplicate check on a list without a vicidial_lists row (VICIdial's IN()).
    with pytest.raises(ServerError) as info:
        client.add_lead(
            lead(list_id="103"),
            options(duplicate_check="DUPCAMP", list_exists_check=False),
            **NO_DNC,
        )
    assert info.value.http_status == 500 and info.value.reason == "server_error"
    assert sim.leads == []
    # With list_exists_check (the default) VICIdial refuses the list first: no 500.
    with pytest.raises(ListUndefined):
        client.add_lead(lead(list_id="103"), options(duplicate_check="DUPCAMP"), **NO_DNC)


def test_the_post_last_field_trap_a_success_inside_a_500(
    sim: Simulator, client: ListClient
) -> None:
    """The trap itself, sent on purpose (the product never does, see the request test): a
    POST whose last field is user text holding a quote. VICIdial inserts the lead, then dies
    writing its API log: HTTP 500 whose body is the SUCCESS line. The parser reads it as
    added (a retry would add the lead again)."""
    trap = urllib.parse.urlencode(
        [
            ("source", "test"),
            ("user", "6666"),
            ("pass", "1234"),
            ("function", "add_lead"),
            ("list_id", "101"),
            ("phone_number", "7275558302"),
            ("first_name", "O'Brien"),  # user text, last
        ]
    ).encode()
    status, text, truncated = client.post(trap)
    assert status == 500 and text.startswith("SUCCESS: add_lead LEAD HAS BEEN ADDED")

    added = parse_list_answer(text, http_status=status, truncated=truncated)
    assert isinstance(added, ListLeadAdded) and not added.complete
    stored = sim.lead(int(added.lead_id))
    assert stored is not None and stored.fields["first_name"] == "O'Brien"
    # The product's own request of the same lead: a constant last, an answer of 200.
    outcome, _ = client.add_lead(
        lead(first_name="O'Brien", phone_number="7275558303"), ListOptions(), **NO_DNC
    )
    assert isinstance(outcome, ListLeadAdded) and outcome.complete


@pytest.mark.parametrize(
    ("fault", "error", "inserted"),
    [
        ("reset_after", AmbiguousFailure, True),
        ("http_504_after", AmbiguousFailure, True),
        ("http_503", HTTPStatusError, False),
        ("insert_failed", ServerError, False),
        ("reset", AmbiguousFailure, False),  # sent, then dropped: VICIdial may have run it
    ],
)
def test_faults_around_a_call(
    sim: Simulator, client: ListClient, fault: str, error: type, inserted: bool
) -> None:
    sim.script_phone("7275551212", [fault])
    with pytest.raises(error):
        client.add_lead(lead(), ListOptions(), **NO_DNC)
    assert len(sim.leads) == (1 if inserted else 0)


def test_nothing_listening_is_a_network_error(sim: Simulator) -> None:
    url = f"http://127.0.0.1:{free_port()}/vicidial/non_agent_api.php"
    settings = settings_for(sim, vicidial_nonagent_url=url)
    dialer = settings.dialers.resolve(None)
    assert dialer is not None
    c = ListClient(settings, dialer=dialer)
    try:
        with pytest.raises(NetworkError):
            c.add_lead(lead(), ListOptions(), **NO_DNC)
    finally:
        c.close()


def test_a_stalled_answer_ends_at_the_deadline_ambiguous(sim: Simulator) -> None:
    settings = settings_for(sim, http_timeout_s=0.5)
    dialer = settings.dialers.resolve(None)
    assert dialer is not None
    c = ListClient(settings, dialer=dialer)
    sim.script_phone("7275551212", ["stall_after"])
    try:
        with pytest.raises(AmbiguousFailure, match="ReadTimeout"):
            c.add_lead(lead(), ListOptions(), **NO_DNC)
    finally:
        c.close()


# ---------------------------------------------------------------------------------------------
# The engine's client: the same outcomes on an event loop
# ---------------------------------------------------------------------------------------------


def test_the_async_client(sim: Simulator, client: ListClient) -> None:
    async def run() -> list[object]:
        c = AsyncListClient(client.settings, dialer=client.dialer)
        results: list[object] = []
        try:
            for phone in ("7275551212", "7275551212", "7275550000"):
                try:
                    outcome, _ = await c.add_lead(
                        lead(phone_number=phone),
                        options(duplicate_check="DUPLIST"),
                        dnc_check=True,
                        campaign_dnc_check=False,
                    )
                    results.append(outcome)
                except DNCBlocked as exc:
                    results.append(exc)
            await c.probe("101")
            many = await asyncio.gather(
                *(
                    c.add_lead(lead(phone_number=f"72755520{i:02d}"), ListOptions(), **NO_DNC)
                    for i in range(20)
                )
            )
            results.extend(outcome for outcome, _ in many)
        finally:
            await c.aclose()
        return results

    results = asyncio.run(run())
    assert isinstance(results[0], ListLeadAdded)
    assert isinstance(results[1], DuplicateFound) and results[1].existing_lead_id == "1"
    assert isinstance(results[2], DNCBlocked)
    assert all(isinstance(x, ListLeadAdded) for x in results[3:]) and len(results) == 23
    assert len(sim.leads) == 21


# ---------------------------------------------------------------------------------------------
# The property: stored exactly, or refused naming the field for a reason
# ---------------------------------------------------------------------------------------------

_LIST_INT_OK = frozenset(
    {"phone_number", "phone_code", "alt_phone", "rank", "vendor_lead_code", "source_id", "owner"}
)
#: What add_lead stores for a field not sent.
_UNSENT = {"gender": "U", "rank": "0", "date_of_birth": "0000-00-00"}


def must_accept(field: str, raw: object, non_latin: bool) -> bool:
    """Whether the product has no documented reason to refuse ``raw`` in a list's lead."""
    if field not in ADD_LEAD_FIELDS:
        return False  # list_id, phone_code, entry_list_id: checked by examples
    if isinstance(raw, bool) or not (
        isinstance(raw, str) or (isinstance(raw, int) and field in _LIST_INT_OK)
    ):
        return False
    value = documented(field, raw, non_latin=non_latin, phone_code="1")
    if not isinstance(value, str) or refused_by_design(field, raw, value, non_latin):
        return False
    return list_server_stores(field, value, non_latin) == value


_TEXT = st.text(st.one_of(st.sampled_from(string.printable), st.sampled_from(TRICKY)), max_size=30)


@pytest.mark.parametrize("non_latin", [False, True], ids=["latin", "non_latin"])
def test_property_list_leads_are_stored_exactly_or_refused_by_field(
    sim: Simulator, client: ListClient, non_latin: bool
) -> None:
    sim.set_non_latin(non_latin)
    seen = {"stored": 0, "refused": 0}

    @settings(
        max_examples=100,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=list_leads(non_latin))
    def check(data: dict[str, object]) -> None:
        try:
            sent = make_list_lead(data, non_latin=non_latin)
        except InvalidLead as exc:
            seen["refused"] += 1
            for error in exc.errors:
                assert error.field in data and error.message, exc.errors
                raw = data[error.field]
                assert not must_accept(error.field, raw, non_latin), (error.field, raw, error)
            return
        seen["stored"] += 1
        outcome, _ = client.add_lead(sent, ListOptions(list_exists_check=False), **NO_DNC)
        assert isinstance(outcome, ListLeadAdded), outcome
        stored = sim.lead(int(outcome.lead_id))
        assert stored is not None
        assert (stored.list_id, stored.phone_number, stored.phone_code) == (
            sent.list_id,
            sent.phone_number,
            sent.phone_code,
        )
        assert stored.entry_list_id == sent.fields.get("entry_list_id", "0")
        for name in ADD_LEAD_FIELDS:
            assert stored.fields[name] == sent.fields.get(name, _UNSENT.get(name, "")), name
        # Each value is the documented normalisation of what was sent.
        for name, value in sent.fields.items():
            expected = documented(name, data[name], non_latin=non_latin, phone_code="1")
            if isinstance(expected, str):
                assert value == expected, (name, data[name], value)
        # And it reads back as the same lead (a worker re-validates it).
        assert make_list_lead(sent.to_dict(), non_latin=non_latin) == sent

    try:
        check()
    finally:
        sim.set_non_latin(False)
    # Both ways were taken (a property that only ever refused would prove nothing).
    assert seen["stored"] >= 15 and seen["refused"] >= 10, seen


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(value=st.one_of(_TEXT, st.integers(0, 10**6)))
def test_property_custom_field_values_are_stored_exactly(
    shared_sim: Simulator, value: object
) -> None:
    """Custom values up to 100 characters: the demo list's column (the list's own size,
    which the dispatcher does not know: README "Leads")."""
    shared_sim.reset()
    settings_ = settings_for(shared_sim)
    dialer = settings_.dialers.resolve(None)
    assert dialer is not None
    c = ListClient(settings_, dialer=dialer)
    try:
        try:
            opts = make_list_options(
                {"custom_fields": {"favorite_color": value}}, campaign_dnc_check=False
            )
        except InvalidLead as exc:
            assert [e.field for e in exc.errors] == ["custom_fields.favorite_color"]
            return
        kept = opts.custom_fields.get("favorite_color")
        if kept is not None and len(kept) > 100:
            return
        outcome, _ = c.add_lead(lead(list_id="102"), opts, **NO_DNC)
        assert isinstance(outcome, ListLeadAdded)
        assert outcome.custom_fields == ("added" if kept is not None else "")
        if kept is not None:
            assert shared_sim.custom_values(102, int(outcome.lead_id)) == {"favorite_color": kept}
    finally:
        c.close()


class ListServer:
    """The simulator's add_lead logic and tables, in-process (the same code that answers
    over HTTP above), for the many examples of the per-field property."""

    def __init__(self, non_latin: bool) -> None:
        state = SimulatorState.demo()
        state.non_latin = non_latin
        self.tables = Tables.from_state(state, time.time())
        self.dialer = Dialer("default", url="http://x/agc/api.php", user="6666", password="1234")

    def store(self, sent: Lead) -> StoredLead:
        body = list_form(self.dialer, sent, ListOptions(list_exists_check=False), **NO_DNC)
        fields = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
        reply = answer_add_lead(self.tables, "6666", fields, time.time(), post_value="add_lead")
        assert not isinstance(reply, PendingInsert)
        self.tables.leads.clear()
        assert reply.status == 200 and reply.body.startswith("SUCCESS: "), reply.body
        assert reply.lead is not None
        return reply.lead


def _field_value(field: str, non_latin: bool) -> st.SearchStrategy[object]:
    if field == "list_id":
        return st.one_of(
            st.sampled_from(["101", 101, "0101", "12", "999", str(10**19), str(2**64)]),
            st.text(st.sampled_from(string.digits + " +-x"), max_size=22),
        )
    if field == "phone_number":
        return st.one_of(
            st.text(st.sampled_from(string.digits + " -.()"), min_size=5, max_size=20),
            st.text(st.sampled_from(string.digits + " -.()+*#A,٣"), min_size=5, max_size=20),
            st.integers(-5, 10**18),
        )
    return LIST_TYPED[field] if field in LIST_TYPED else list_near_valid(field, non_latin)


@pytest.mark.parametrize("non_latin", [False, True], ids=["latin", "non_latin"])
@pytest.mark.parametrize("field", ["list_id", "phone_number", *LIST_RANDOM_FIELDS])
def test_property_each_list_field_stored_exactly_or_refused_for_a_reason(
    field: str, non_latin: bool
) -> None:
    server = ListServer(non_latin)
    base: dict[str, object] = {"list_id": "101", "phone_number": "7275551212"}

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(raw=_field_value(field, non_latin))
    def check(raw: object) -> None:
        data = {**base, field: raw}
        try:
            sent = make_list_lead(data, non_latin=non_latin)
        except InvalidLead as exc:
            assert [e.field for e in exc.errors] == [field], exc.errors
            assert not must_accept(field, raw, non_latin), (raw, exc.errors[0].message)
            return
        stored = server.store(sent)
        assert (stored.list_id, stored.phone_number, stored.phone_code) == (
            sent.list_id,
            sent.phone_number,
            sent.phone_code,
        )
        assert stored.entry_list_id == sent.fields.get("entry_list_id", "0")
        for name in ADD_LEAD_FIELDS:
            assert stored.fields[name] == sent.fields.get(name, _UNSENT.get(name, "")), name
        got = sent.to_dict().get(field)
        expected = documented(field, raw, non_latin=non_latin, phone_code="1")
        if isinstance(expected, str) and field not in ("list_id", "entry_list_id"):
            assert got == expected, (raw, got, expected)
        assert make_list_lead(sent.to_dict(), non_latin=non_latin) == sent

    check()


_FORMATTED = ("gender", "date_of_birth", "rank")


@pytest.mark.parametrize("non_latin", [False, True], ids=["latin", "non_latin"])
def test_every_ascii_character_in_every_list_field(non_latin: bool) -> None:
    """Exhaustive where the property samples: each ASCII character (and tab, line feed) in
    each of add_lead's text fields is accepted exactly when add_lead stores it unchanged
    (or a documented normalisation makes it so), else refused naming the field."""
    server = ListServer(non_latin)
    accepted = refused = 0
    for field in (f for f in ADD_LEAD_FIELDS if f not in _FORMATTED):
        size = LIST_SIZES.get(field, 20)
        for char in CANDIDATES[:97]:
            raw = f"1{char}1" if size >= 3 else f"1{char}" if size == 2 else char
            data = {"list_id": "101", "phone_number": "7275551212", field: raw}
            try:
                sent = make_list_lead(data, non_latin=non_latin)
            except InvalidLead as exc:
                refused += 1
                assert [e.field for e in exc.errors] == [field], exc.errors
                assert not must_accept(field, raw, non_latin), (field, raw, exc.errors)
                continue
            accepted += 1
            stored = server.store(sent)
            assert stored.fields[field] == sent.fields.get(field, ""), (field, raw)
            expected = documented(field, raw, non_latin=non_latin, phone_code="1")
            assert sent.fields.get(field) == expected, (field, raw)
    assert accepted > 500 and refused > 300, (accepted, refused)
