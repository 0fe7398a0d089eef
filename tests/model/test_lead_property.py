"""Property: for any value of any lead field, in both modes, either ``InvalidLead`` names that
field, or VICIdial stores exactly the normalised value, and the normalisation is one of the
documented ones (README "Leads"), nothing else.

"VICIdial" is the simulator: its logic (:mod:`dispatcher.simulator.agc` and ``mangling``) is
pinned byte for byte to shared/vicidial/external_add_lead.md by
tests/simulator/test_simulator.py. Most examples drive that logic in-process (pure functions,
fast); a smaller number go through the worker's real HTTP client to a running simulator, on a
real socket. The documented normalisations and the values of every kind are
tests/support/leads.py, the values near what the server keeps (``near_valid``) are
tests/support/strategies.py (the list client's property and the end-to-end one use them too).

``non_latin`` False is a VICIdial with the default ``use_non_latin=0``; True is one with
``use_non_latin=1`` (the simulator's state ``"non_latin": true``).
"""

from __future__ import annotations

import contextlib
import string
import time
import unicodedata
from collections.abc import Iterator, Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.config.settings import Settings
from dispatcher.model.errors import InvalidLead
from dispatcher.model.lead import LEAD_FIELDS, Lead, make_lead
from dispatcher.simulator import Simulator, SimulatorState
from dispatcher.simulator.agc import StoredLead, Tables, answer, merge_fields
from dispatcher.simulator.mangling import (
    sanitize,
    sql_literal,
    to_column,
)
from tests.support.leads import (
    ANY_VALUE,
    BASE,
    FREE_TEXT,
    TRANSLITERATION,
    documented,
    refused_by_design,
)
from tests.support.strategies import LETTER_FIELDS, near_valid
from workers.vicidial import VicidialClient

MODES = [pytest.param(False, id="latin"), pytest.param(True, id="non_latin")]
CAMPAIGN = "TESTCAMP"  # the demo state's campaign with manual dial list 101

# --------------------------------------------------------------------------------------------
# The server: what the simulator stores for a lead sent the way the worker sends it
# --------------------------------------------------------------------------------------------


def request_fields(lead: Lead) -> dict[str, str]:
    """The form fields of workers.vicidial.VicidialClient.add_lead (no DNC checks)."""
    data = {"source": "dispatcher", "user": "6666", "pass": "1234", "function": "external_add_lead"}
    data.update(lead.vicidial_params())
    data["value"] = lead.phone_number
    return data


class Server:
    """The simulator's agc/api.php logic and tables, in-process."""

    def __init__(self, non_latin: bool) -> None:
        state = SimulatorState.demo()
        state.non_latin = non_latin
        self.tables = Tables.from_state(state, time.time())

    def store(self, lead: Lead) -> StoredLead:
        self.tables.login(lead.agent_user, CAMPAIGN)
        fields, value = merge_fields([], list(request_fields(lead).items()))  # a POST body
        reply = answer(self.tables, fields, value, time.time())
        self.tables.leads.clear()
        self.tables.logout(lead.agent_user)
        assert reply.status == 200 and reply.body.startswith("SUCCESS: lead added - "), reply
        assert reply.lead is not None
        return reply.lead


def assert_stored_exactly(stored: StoredLead, lead: Lead) -> None:
    assert stored.agent_user == lead.agent_user
    assert stored.phone_number == lead.phone_number
    assert stored.phone_code == lead.phone_code
    assert stored.fields == dict(lead.fields)


# --------------------------------------------------------------------------------------------
# What the product must accept: the documented normalisations (tests/support/leads.py, written
# again there from README "Leads") of what the server keeps
# --------------------------------------------------------------------------------------------

INT_OK = frozenset(
    {"agent_user", "phone_number", "phone_code", "alt_phone", "rank"}
    | {"vendor_lead_code", "source_id", "owner"}
)


def server_stores(field: str, sent: str, non_latin: bool) -> str | None:
    """What the simulator stores for ``sent`` (None: its INSERT breaks)."""
    if field == "agent_user":
        return sanitize(field, sent, non_latin=non_latin)
    if field == "phone_number":  # the worker sends it as `value`
        return to_column(field, sanitize("value", sent, non_latin=non_latin), non_latin=non_latin)
    value: str | None = sanitize(field, sent, non_latin=non_latin)
    if field in FREE_TEXT:
        value = sql_literal(value or "")
    return None if value is None else to_column(field, value, non_latin=non_latin)


def must_accept(field: str, raw: object, non_latin: bool) -> bool:
    """Whether the product has no documented reason to refuse ``raw``."""
    if isinstance(raw, bool) or not (
        isinstance(raw, str) or (isinstance(raw, int) and field in INT_OK)
    ):
        return False
    value = documented(field, raw, non_latin=non_latin, phone_code="1")
    if not isinstance(value, str) or refused_by_design(field, raw, value, non_latin):
        return False
    return server_stores(field, value, non_latin) == value


# --------------------------------------------------------------------------------------------
# Values close to what the server keeps, so that many validate (near_valid:
# support/strategies.py; any value: support/leads.py)
# --------------------------------------------------------------------------------------------

TYPED: dict[str, st.SearchStrategy[object]] = {
    "agent_user": st.text(
        st.sampled_from(string.ascii_letters + string.digits + "-_ !Ж"), min_size=1, max_size=22
    ),
    "phone_number": st.one_of(
        st.text(st.sampled_from(string.digits + " -.()"), min_size=6, max_size=18),
        st.text(st.sampled_from(string.digits + " -.()+*#A٣"), min_size=5, max_size=22),
        st.integers(-5, 10**19),
    ),
    "phone_code": st.one_of(
        st.text(st.sampled_from(string.digits + "X+x- "), min_size=1, max_size=11),
        st.integers(0, 10**11),
    ),
    "alt_phone": st.one_of(
        st.text(st.sampled_from(string.digits + " -.()+*#A"), max_size=16),
        st.integers(0, 10**13),
    ),
    "rank": st.one_of(
        st.sampled_from([0, 32767, 32768, 65535, "0", "00", "007", "32767", "32768", " 12 "]),
        st.integers(-2, 70000),
        st.text(st.sampled_from(string.digits + "+- ٣"), max_size=7),
    ),
    "gender": st.sampled_from(["M", "F", "U", "m", " f ", "u", "X", "MF", '"M"', "É", "Ж"]),
    "date_of_birth": st.one_of(
        st.dates().map(lambda d: d.isoformat()),
        st.sampled_from(["2024-02-29", "2023-02-29", "0000-00-00", "1980-1-1", "1980-01-01 "]),
        st.text(st.sampled_from(string.digits + "-"), min_size=8, max_size=11),
    ),
    "country_code": st.one_of(
        st.text(st.sampled_from("abzUSA"), min_size=1, max_size=4),
        st.text(st.sampled_from("abzUSA1+ é\"'ßЖ"), max_size=4),
    ),
}


def value_of(field: str, non_latin: bool) -> st.SearchStrategy[object]:
    near = TYPED[field] if field in TYPED else near_valid(field, non_latin)
    # Three draws in four near the valid set, so that the property often reaches the server.
    return st.integers(0, 3).flatmap(lambda pick: ANY_VALUE if pick == 0 else near)


# --------------------------------------------------------------------------------------------
# The property
# --------------------------------------------------------------------------------------------


def check(field: str, raw: object, non_latin: bool, server: Server) -> Lead | None:
    """The property for one value of one field; the lead when it validated."""
    data = {**BASE, field: raw}
    try:
        lead = make_lead(data, non_latin=non_latin)
    except InvalidLead as exc:
        assert [e.field for e in exc.errors] == [field], exc.errors
        assert exc.errors[0].message
        # Refused only for a reason: the server would change it, or a documented rule.
        assert not must_accept(field, raw, non_latin), (raw, exc.errors[0].message)
        return None
    assert_stored_exactly(server.store(lead), lead)

    got = lead.to_dict().get(field)
    expected = documented(field, raw, non_latin=non_latin, phone_code=lead.phone_code)
    if expected is TRANSLITERATION:
        assert got is None or got.isascii()
    elif field == "phone_code" and expected is None:
        assert got == "1"  # the default
    else:
        assert got == expected, (raw, got, expected)
    # Idempotent, and the same lead for a worker that re-validates it in the other mode
    # when it is ASCII (valid everywhere) -- never a different value.
    assert make_lead(lead.to_dict(), non_latin=non_latin) == lead
    if all(v.isascii() for v in lead.to_dict().values()):
        assert make_lead(lead.to_dict(), non_latin=not non_latin) == lead
    return lead


@pytest.mark.parametrize("non_latin", MODES)
@pytest.mark.parametrize("field", LEAD_FIELDS)
def test_each_field_either_names_it_or_is_stored_exactly(field: str, non_latin: bool) -> None:
    server = Server(non_latin)
    seen = {"valid": 0, "invalid": 0, "non_ascii": 0}

    # Derandomized: the same examples on every run, so that the counts below are stable.
    @settings(max_examples=50, database=None, derandomize=True, deadline=None)
    @given(value_of(field, non_latin))
    def run(raw: object) -> None:
        lead = check(field, raw, non_latin, server)
        got = None if lead is None else lead.to_dict().get(field)
        seen["invalid"] += lead is None
        seen["valid"] += got is not None
        seen["non_ascii"] += got is not None and not got.isascii()

    run()
    # The property is not vacuous: it saw values stored, values refused, and other scripts.
    assert seen["valid"] >= 8 and seen["invalid"] >= 5, seen
    if non_latin and field in LETTER_FIELDS:
        assert seen["non_ascii"] >= 3, seen


@pytest.fixture(scope="module")
def servers() -> dict[bool, Server]:
    return {False: Server(False), True: Server(True)}


def _whole_leads(non_latin: bool) -> st.SearchStrategy[dict[str, object]]:
    optional = [f for f in LEAD_FIELDS if f not in ("agent_user", "phone_number")]
    return st.fixed_dictionaries(
        {"agent_user": value_of("agent_user", non_latin), "phone_number": TYPED["phone_number"]},
        optional={name: value_of(name, non_latin) for name in optional},
    )


@pytest.mark.parametrize("non_latin", MODES)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_whole_leads_name_only_bad_fields_or_are_stored_exactly(
    non_latin: bool, servers: dict[bool, Server], data: st.DataObject
) -> None:
    lead_data = data.draw(_whole_leads(non_latin))
    try:
        lead = make_lead(lead_data, non_latin=non_latin)
    except InvalidLead as exc:
        assert {e.field for e in exc.errors} <= set(lead_data) | {"phone_code"}
        return
    assert_stored_exactly(servers[non_latin].store(lead), lead)


@pytest.mark.parametrize("non_latin", MODES)
@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(LEAD_FIELDS), st.text(max_size=8)), st.from_type(object)
    )
)
def test_arbitrary_input_only_ever_raises_invalid_lead(
    non_latin: bool, data: dict[str, object]
) -> None:
    with contextlib.suppress(InvalidLead):
        make_lead(data, non_latin=non_latin)


# --------------------------------------------------------------------------------------------
# The same, through the worker's HTTP client to a running simulator
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def running() -> Iterator[dict[bool, Simulator]]:
    sims: dict[bool, Simulator] = {}
    with contextlib.ExitStack() as stack:
        for mode in (False, True):
            state = SimulatorState.demo()
            state.non_latin = mode
            sims[mode] = stack.enter_context(Simulator(state))
        yield sims


@pytest.fixture(scope="module")
def clients(running: dict[bool, Simulator]) -> Iterator[dict[bool, VicidialClient]]:
    made = {
        mode: VicidialClient(
            Settings(
                vicidial_url=sim.url,
                vicidial_user="6666",
                vicidial_pass="1234",
                vicidial_non_latin=mode,
            )
        )
        for mode, sim in running.items()
    }
    yield made
    for client in made.values():
        client.close()


def _send(sim: Simulator, client: VicidialClient, lead: Lead) -> StoredLead:
    sim.reset_leads()
    sim.login(lead.agent_user, CAMPAIGN)
    result, _ = client.add_lead(lead, dnc_check=False, campaign_dnc_check=False)
    [stored] = sim.leads
    assert str(stored.lead_id) == result.lead_id
    return stored


@pytest.mark.parametrize("non_latin", MODES)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_over_http_valid_leads_are_stored_exactly(
    non_latin: bool,
    running: dict[bool, Simulator],
    clients: dict[bool, VicidialClient],
    data: st.DataObject,
) -> None:
    lead_data = data.draw(_whole_leads(non_latin))
    try:
        lead = make_lead(lead_data, non_latin=non_latin)
    except InvalidLead:
        # Draw again from near-valid values only, so that most HTTP examples send a lead.
        fields = data.draw(st.lists(st.sampled_from(LETTER_FIELDS), max_size=6, unique=True))
        lead_data = {**BASE}
        for name in fields:
            lead_data[name] = data.draw(near_valid(name, non_latin))
        try:
            lead = make_lead(lead_data, non_latin=non_latin)
        except InvalidLead:
            return
    assert_stored_exactly(_send(running[non_latin], clients[non_latin], lead), lead)


@pytest.mark.parametrize(
    ("given_fields", "non_latin"),
    [
        ({"first_name": "Иван", "last_name": "Петров", "comments": "Перезвонить завтра"}, True),
        ({"first_name": "李小龍", "city": "東京", "comments": "VIP 客户\n第二行"}, True),
        ({"first_name": "محمد علي", "source_id": "نموذج-7"}, True),
        ({"first_name": unicodedata.normalize("NFD", "José Nguyễn"), "rank": 32767}, True),
        ({"first_name": "José Müller", "comments": "Café\tcrème", "rank": "32767"}, False),
    ],
)
def test_over_http_examples_of_the_facts_document(
    given_fields: Mapping[str, object],
    non_latin: bool,
    running: dict[bool, Simulator],
    clients: dict[bool, VicidialClient],
) -> None:
    lead = make_lead({**BASE, **given_fields}, non_latin=non_latin)
    stored = _send(running[non_latin], clients[non_latin], lead)
    assert_stored_exactly(stored, lead)
    if non_latin:
        # What was sent is what the producer wrote (NFC), not a transliteration.
        for name, value in given_fields.items():
            assert stored.fields[name] == unicodedata.normalize("NFC", str(value))
    else:
        assert stored.fields["first_name"] == "Jose Muller"
        assert stored.fields["comments"] == "Cafe\tcreme"
