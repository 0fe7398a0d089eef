"""The simulator answers external_add_lead / version byte for byte like VICIdial.

Every example of shared/vicidial/external_add_lead.md is here, sent over real HTTP
(httpx over loopback) to a real simulator, with the exact response bytes and the
state afterwards (row inserted or not, and what was stored).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.simulator import (
    CampaignConfig,
    Simulator,
    SimulatorState,
    StoredLead,
    UserConfig,
)
from dispatcher.simulator.mangling import COLUMN_SIZES, LEAD_FIELDS

T0 = 1_750_000_000.0  # the fake clock's start (epoch seconds)
LOCK_OVER = int(T0) - 900  # appears in the auth error's SQL while the clock is at T0

BASE = {
    "source": "test",
    "user": "6666",
    "pass": "1234",
    "function": "external_add_lead",
    "agent_user": "1000",
    "phone_code": "1",
}


class FakeClock:
    """An injectable clock, so the 15-minute lockout window needs no waiting."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[Simulator]:
    with Simulator(SimulatorState.demo(), clock=clock, seed=1) as simulator:
        yield simulator


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as http:
        yield http


def params(**changes: str | None) -> dict[str, str]:
    """BASE with changes; a value of None removes the field."""
    out = dict(BASE)
    for key, val in changes.items():
        if val is None:
            out.pop(key, None)
        else:
            out[key] = val
    return out


def auth_error(user: str, password: str, auth: int, auth_api: int, lock_over: int) -> str:
    stmt = (
        f"SELECT count(*) from vicidial_users where user='{user}' and pass='{password}' "
        f"and user_level > 0 and active='Y' and ( (failed_login_count < 10) or "
        f"(UNIX_TIMESTAMP(last_login_date) < {lock_over}) );"
    )
    return (
        f"ERROR: Invalid Username/Password: |{user}|{password}|{auth}|{auth_api}|"
        f"BAD|0|api|{stmt}|\n"
    )


# ------------------------------------------------------------------ the answers


@dataclass
class Case:
    id: str
    fields: dict[str, str]
    body: str
    stored: dict[str, Any] | None = None  # expected StoredLead attributes; None: no row
    state: dict[str, Any] = field(default_factory=dict)  # SimulatorState.from_dict overlay


SUCCESS_1 = "SUCCESS: lead added - 7275551212|TESTCAMP|101|1|1000\n"

CASES = [
    # 1. source
    Case("source-missing", params(source=None, value="7275551212"), "ERROR: Invalid Source - \n"),
    Case("source-short", params(source="a", value="7275551212"), "ERROR: Invalid Source - a\n"),
    Case(
        "source-sanitised-to-short",
        params(source="t!", value="7275551212"),
        "ERROR: Invalid Source - t\n",
    ),
    # 2. authentication (the answer echoes the password)
    Case(
        "auth-wrong-password",
        params(**{"pass": "wrong", "value": "7275551212"}),
        auth_error("6666", "wrong", 0, 1, LOCK_OVER),
    ),
    Case(
        "auth-unknown-user",
        params(user="9999", value="7275551212"),
        auth_error("9999", "1234", 0, 0, LOCK_OVER),
    ),
    Case(
        "auth-no-api-access-GOOD",
        params(user="6667", value="7275551212"),
        "ERROR: Invalid Username/Password: |6667|1234|1|0|GOOD|\n",
    ),
    Case(
        "auth-short-password",
        params(**{"user": "7777", "pass": "1", "value": "7275551212"}),
        "ERROR: Invalid Username/Password: |7777|1|1|1|GOOD|\n",
        state={"users": {"7777": {"pass": "1"}}},
    ),
    Case(
        "auth-inactive-user",
        params(user="7777", value="7275551212"),
        auth_error("7777", "1234", 0, 1, LOCK_OVER),
        state={"users": {"7777": {"pass": "1234", "active": False}}},
    ),
    # 3. API switched off
    Case(
        "api-not-active",
        params(value="7275551212"),
        "ERROR: System API NOT ACTIVE\n",
        state={"api_active": False},
    ),
    # 4. validity
    Case(
        "not-valid-agent-user",
        params(agent_user="1", value="7275551212"),
        "ERROR: external_add_lead not valid - 7275551212|1|1|\n",
    ),
    Case(
        "not-valid-no-phone-code",
        params(phone_code=None, value="7275551212"),
        "ERROR: external_add_lead not valid - 7275551212||1000|\n",
    ),
    Case(
        "not-valid-short-phone",
        params(value="1"),
        "ERROR: external_add_lead not valid - 1|1|1000|\n",
    ),
    Case(
        "api-user-is-not-a-logged-in-agent",
        params(agent_user="6666", phone_code="1", value="7275551212", alt_user=""),
        "ERROR: agent_user is not logged in - 6666\n",
    ),
    # 5. permission
    Case(
        "permission",
        params(user="6668", value="7275551212"),
        "ERROR: auth USER DOES NOT HAVE PERMISSION TO USE THIS FUNCTION - "
        "7275551212|6668|external_add_lead|ADMIN\n",
    ),
    Case(
        "permission-listed-function",
        params(user="7777", value="7275551212"),
        SUCCESS_1,
        {"user": "7777"},
        state={"users": {"7777": {"pass": "1234", "functions": ["version", "external_add_lead"]}}},
    ),
    # 6. agent not logged in
    Case(
        "agent-not-logged-in",
        params(agent_user="1005", value="7275551212"),
        "ERROR: agent_user is not logged in - 1005\n",
    ),
    # 7. campaign row missing; NULL manual dial list
    Case(
        "manual-list-undefined",
        params(agent_user="1003", value="7275551212"),
        "ERROR: campaign manual dial list undefined - 7275551212||1003\n",
    ),
    Case(
        "null-manual-list",
        params(agent_user="1001", value="7275551212"),
        "SUCCESS: lead added - 7275551212|NOLIST||15|1001\n",
        {"lead_id": 15, "list_id": "", "campaign": "NOLIST", "agent_user": "1001"},
        state={"first_lead_id": 15},
    ),
    # 8./9. DNC checks, only on exact YES or Y
    Case(
        "dnc",
        params(value="7275550000", dnc_check="YES"),
        "ERROR: add_lead PHONE NUMBER IN DNC - 7275550000|1000\n",
    ),
    Case(
        "dnc-Y",
        params(value="7275550000", dnc_check="Y"),
        "ERROR: add_lead PHONE NUMBER IN DNC - 7275550000|1000\n",
    ),
    Case(
        "dnc-lowercase-yes-is-no-check",
        params(value="7275550000", dnc_check="yes"),
        "SUCCESS: lead added - 7275550000|TESTCAMP|101|1|1000\n",
        {"phone_number": "7275550000"},
    ),
    Case(
        "dnc-not-asked",
        params(value="7275550000"),
        "SUCCESS: lead added - 7275550000|TESTCAMP|101|1|1000\n",
        {"phone_number": "7275550000"},
    ),
    Case(
        "campaign-dnc",
        params(value="7275550001", campaign_dnc_check="YES"),
        "ERROR: add_lead PHONE NUMBER IN CAMPAIGN DNC - 7275550001|TESTCAMP|1000\n",
    ),
    Case(
        "campaign-dnc-only-system-checked",
        params(value="7275550001", dnc_check="YES"),
        "SUCCESS: lead added - 7275550001|TESTCAMP|101|1|1000\n",
        {"phone_number": "7275550001"},
    ),
    Case(
        "both-dnc-system-first",
        params(value="7275550002", dnc_check="YES", campaign_dnc_check="YES"),
        "ERROR: add_lead PHONE NUMBER IN DNC - 7275550002|1000\n"
        "ERROR: add_lead PHONE NUMBER IN CAMPAIGN DNC - 7275550002|TESTCAMP|1000\n",
    ),
    Case(
        "use-other-campaign-dnc",
        params(agent_user="1002", value="7275550001", campaign_dnc_check="YES"),
        "ERROR: add_lead PHONE NUMBER IN CAMPAIGN DNC - 7275550001|OTHERDNC|1002\n",
    ),
    # 10. success
    Case(
        "success",
        params(value="7275551212", first_name="Bob", last_name="Smith", dnc_check="YES"),
        SUCCESS_1,
        {
            "lead_id": 1,
            "list_id": "101",
            "campaign": "TESTCAMP",
            "agent_user": "1000",
            "phone_number": "7275551212",
            "phone_code": "1",
            "fields": {"first_name": "Bob", "last_name": "Smith"},
            "user": "6666",
            "status": "NEW",
        },
    ),
    # alt_user: "no user found" and the script carries on
    Case(
        "alt-user-resolves",
        params(agent_user=None, alt_user="EXT1000", value="7275551212"),
        SUCCESS_1,
        {"agent_user": "1000"},
    ),
    Case(
        "alt-user-not-found-then-success",
        params(alt_user="NOPE", value="7275551212"),
        "ERROR: no user found - NOPE\n" + SUCCESS_1,
        {"agent_user": "1000"},
    ),
    Case(
        "alt-user-not-found-no-agent",
        params(agent_user=None, alt_user="NOPE", value="7275551212"),
        "ERROR: no user found - NOPE\nERROR: agent_user is not logged in - \n",
    ),
    # unknown function: empty body (after the common checks)
    Case("unknown-function", params(function="external_add_leed", value="7275551212"), ""),
    Case("no-function", params(function=None, value="7275551212"), ""),
    Case(
        "unknown-function-still-checks-source",
        params(function="nope", source=None),
        "ERROR: Invalid Source - \n",
    ),
    # field mangling (spec: "How the server mangles field values")
    Case(
        "phone-number-path-formatting",
        params(phone_number="(727) 555-1212"),
        SUCCESS_1,
        {"phone_number": "7275551212"},
    ),
    Case(
        "value-path-keeps-dashes",
        params(value="727-555-1212"),
        "SUCCESS: lead added - 727-555-1212|TESTCAMP|101|1|1000\n",
        {"phone_number": "727-555-1212"},
    ),
    Case(
        "value-wins-over-phone-number",
        params(value="7275551212", phone_number="8135550000"),
        SUCCESS_1,
        {"phone_number": "7275551212"},
    ),
    Case(
        "non-ascii-removed-from-filtered-fields",
        params(value="7275551212", first_name="José", last_name="Müller", city="Zürich"),
        SUCCESS_1,
        {"fields": {"first_name": "Jos", "last_name": "Mller", "city": "Zrich"}},
    ),
    # comments, source_id, vendor_lead_code lose only ; and # (+ -> space): tabs, newlines,
    # '|' and non-ASCII (emoji too, on the measured utf8mb4 instance) are stored as sent.
    Case(
        "free-text-fields-keep-any-text",
        params(
            value="7275551212",
            comments="café ok\tЖж | 李\nx😀",
            source_id="веб|7",
            vendor_lead_code="Ü-1;#",
        ),
        SUCCESS_1,
        {
            "fields": {
                "comments": "café ok\tЖж | 李\nx😀",
                "source_id": "веб|7",
                "vendor_lead_code": "Ü-1",
            }
        },
    ),
    Case(
        "plus-becomes-space",
        params(value="7275551212", first_name="Mary+Ann", email="a+b@x.com", title="Dr+"),
        SUCCESS_1,
        {"fields": {"first_name": "Mary Ann", "email": "a b@x.com", "title": "Dr"}},
    ),
    Case(
        "allowed-characters",
        params(
            value="7275551212",
            address1="1 Main St. #4, Apt/2",
            state="F-L!",
            comments="a;b#c 'd' <e>",
            middle_initial="J.",
            postal_code="33701'-1234",
            country_code="usA",
            rank="12a",
        ),
        SUCCESS_1,
        {
            "fields": {
                "address1": "1 Main St. 4 Apt/2",
                "state": "F-",
                "comments": "abc 'd' <e>",
                "middle_initial": "J",
                "postal_code": "33701-1234",
                "country_code": "A",
                "rank": "12",
            }
        },
    ),
    Case(
        "truncation-to-column",
        params(
            phone_number="12345678901234567890",
            first_name="A" * 40,
            title="Professor",
            alt_phone="1234567890123456",
            vendor_lead_code="V" * 25,
        ),
        "SUCCESS: lead added - 12345678901234567890|TESTCAMP|101|1|1000\n",
        {
            "phone_number": "123456789012345678",
            "fields": {
                "first_name": "A" * 30,
                "title": "Prof",
                "alt_phone": "123456789012",
                "vendor_lead_code": "V" * 20,
            },
        },
    ),
    Case(
        "enum-date-number-columns",
        params(value="7275551212", gender="x", date_of_birth="1990-1-5", rank="70000"),
        SUCCESS_1,
        {"fields": {"gender": "", "date_of_birth": "1990-01-05", "rank": "32767"}},
    ),
    # rank is a signed SMALLINT: 32767 is the largest value stored; '-' is filtered out.
    Case(
        "rank-32767-kept",
        params(value="7275551212", rank="32767"),
        SUCCESS_1,
        {"fields": {"rank": "32767"}},
    ),
    Case(
        "rank-clamped-and-sign-dropped",
        params(value="7275551212", rank="32768", title="Dr"),
        SUCCESS_1,
        {"fields": {"rank": "32767", "title": "Dr"}},
    ),
    Case(
        "rank-negative", params(value="7275551212", rank="-5"), SUCCESS_1, {"fields": {"rank": "5"}}
    ),
    Case(
        "rank-huge-clamped",
        params(value="7275551212", rank="9" * 5000),
        SUCCESS_1,
        {"fields": {"rank": "32767"}},
    ),
    Case(
        "invalid-date-is-zero-date",
        params(value="7275551212", gender="F", date_of_birth="1990-13-01"),
        SUCCESS_1,
        {"fields": {"gender": "F", "date_of_birth": "0000-00-00"}},
    ),
    Case(
        "only-sent-fields-written-status-ignored",
        params(value="7275551212", status="SALE", gmt_offset_now="-5.00", city="Tampa"),
        SUCCESS_1,
        {"fields": {"city": "Tampa"}, "status": "NEW"},
    ),
    Case(
        "vendor-id-becomes-vendor-lead-code",
        params(value="7275551212", vendor_id="VID-9", vendor_lead_code="ignored"),
        SUCCESS_1,
        {"fields": {"vendor_lead_code": "VID-9"}},
    ),
    Case(
        "mysql-backslash-escapes",
        params(value="7275551212", comments=r"a\nb", source_id="x\\\\"),
        SUCCESS_1,
        {"fields": {"comments": "a\nb", "source_id": "x\\"}},
    ),
    # a `"` or a trailing backslash breaks the INSERT: HTTP 500, empty body, nothing stored
    Case("quote-in-comments-500", params(value="7275551212", comments='say "hi"'), ""),
    Case("quote-in-source-id-500", params(value="7275551212", source_id='a"b'), ""),
    Case("quote-in-vendor-lead-code-500", params(value="7275551212", vendor_lead_code='"'), ""),
    Case("trailing-backslash-500", params(value="7275551212", comments="end\\"), ""),
    Case(
        "quote-harmless-before-the-insert",
        params(agent_user="1005", value="7275551212", comments='"'),
        "ERROR: agent_user is not logged in - 1005\n",
    ),
    Case(
        "quote-stripped-from-filtered-field",
        params(value="7275551212", first_name='Bo"b\\'),
        SUCCESS_1,
        {"fields": {"first_name": "Bob"}},
    ),
    # use_non_latin=1 (state "non_latin": true): \p{L} instead of a-zA-Z, utf8mb3 connection
    Case(
        "non-latin-letters-of-every-script-kept",
        params(
            value="7275551212",
            first_name="Иван",
            last_name="Петров",
            title="Г-н",
            middle_initial="Ж",
            address1="ул. Ленина 5/2",
            city="李小龍",
            state="ЖД",
            province="محمد علي",
            postal_code="ГД-12",
            email="иван@пример.рф",
            security_phrase="Nguyễn",
            owner="José Müller",
        ),
        SUCCESS_1,
        {
            "fields": {
                "first_name": "Иван",
                "last_name": "Петров",
                "title": "Г-н",
                "middle_initial": "Ж",
                "address1": "ул. Ленина 5/2",
                "city": "李小龍",
                "state": "ЖД",
                "province": "محمد علي",
                "postal_code": "ГД-12",
                "email": "иван@пример.рф",
                "security_phrase": "Nguyễn",
                "owner": "José Müller",
            }
        },
        state={"non_latin": True},
    ),
    Case(
        "non-latin-column-sizes-in-characters",
        params(value="7275551212", first_name="Ж" * 31, comments="ж" * 256),
        SUCCESS_1,
        {"fields": {"first_name": "Ж" * 30, "comments": "ж" * 255}},
        state={"non_latin": True},
    ),
    Case(
        "non-latin-above-u-ffff-is-one-question-mark-per-byte",
        params(
            value="7275551212",
            first_name="Bob😀",
            last_name="𠮷野",
            comments="Bob😀 ok",
            source_id="\U0001d400",
        ),
        SUCCESS_1,
        {
            "fields": {
                "first_name": "Bob",  # 😀 is not a letter: filtered out first
                "last_name": "????野",  # 𠮷 is a letter: kept, then stored as ????
                "comments": "Bob???? ok",
                "source_id": "????",
            }
        },
        state={"non_latin": True},
    ),
    Case(
        "non-latin-combining-marks-dropped-from-letter-fields",
        params(
            value="7275551212",
            first_name="नमस्ते",
            last_name="مُحَمَّد",
            city="น้ำ",
            address1="Jose\u0301",  # decomposed (NFD)
            comments="नमस्ते Jose\u0301",
        ),
        SUCCESS_1,
        {
            "fields": {
                "first_name": "नमसत",
                "last_name": "محمد",
                "city": "นำ",
                "address1": "Jose",
                "comments": "नमस्ते Jose\u0301",  # free text keeps them
            }
        },
        state={"non_latin": True},
    ),
    Case(
        "non-latin-only-ascii-space-digits-0-9-no-symbols",
        params(
            value="7275551212",
            first_name="李\u3000龍",
            last_name="Ann\u00a0Lee\t",
            address1="★ € → © 5",
            postal_code="٣٤٥ 12",
            alt_phone="٣12",
        ),
        SUCCESS_1,
        {
            "fields": {
                "first_name": "李龍",
                "last_name": "AnnLee",
                "address1": "    5",
                "postal_code": " 12",
                "alt_phone": "12",
            }
        },
        state={"non_latin": True},
    ),
    Case(
        "non-latin-unchanged-rules",
        params(
            value="7275551212",
            country_code="ЖФus",
            gender="Ж",
            first_name="Анна+Мария",
            comments="a;b#c+d",
            rank="40000",
        ),
        SUCCESS_1,
        {
            "fields": {
                "country_code": "",
                "gender": "",
                "first_name": "Анна Мария",
                "comments": "abc d",
                "rank": "32767",
            }
        },
        state={"non_latin": True},
    ),
    Case(
        "non-latin-phone-paths-keep-letters",
        params(phone_number="(727) 555-ЖЖЖЖ"),
        "SUCCESS: lead added - 727555ЖЖЖЖ|TESTCAMP|101|1|1000\n",
        {"phone_number": "727555ЖЖЖЖ"},
        state={"non_latin": True},
    ),
    Case(
        "non-latin-value-path",
        params(value="727-555|Ж_1 ٣"),
        "SUCCESS: lead added - 727-555|Ж_1|TESTCAMP|101|1|1000\n",
        {"phone_number": "727-555|Ж_1"},
        state={"non_latin": True},
    ),
]


def _state_with(overlay: dict[str, Any]) -> SimulatorState:
    state = SimulatorState.demo()
    extra = SimulatorState.from_dict(overlay)
    state.users.update(extra.users)
    if "api_active" in overlay:
        state.api_active = extra.api_active
    if "first_lead_id" in overlay:
        state.first_lead_id = extra.first_lead_id
    if "non_latin" in overlay:
        state.non_latin = extra.non_latin
    return state


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_answer(case: Case, clock: FakeClock, client: httpx.Client) -> None:
    with Simulator(_state_with(case.state), clock=clock) as sim:
        reply = client.get(sim.url, params=case.fields)
        expected_status = 500 if case.id.endswith("-500") else 200
        assert reply.status_code == expected_status
        assert reply.content == case.body.encode()
        assert reply.headers["content-type"] == "text/html; charset=utf-8"
        leads = sim.leads
    if case.stored is None:
        assert leads == []
        return
    assert len(leads) == 1
    lead = leads[0]
    for name, expected in case.stored.items():
        assert getattr(lead, name) == expected, name


def test_success_line_fields_split_from_the_right(sim: Simulator, client: httpx.Client) -> None:
    reply = client.get(sim.url, params=params(value="7275551212"))
    phone, campaign, list_id, lead_id, agent = reply.text.strip().split(" - ", 1)[1].split("|")
    lead = sim.leads[0]
    assert (phone, campaign, list_id, int(lead_id), agent) == (
        lead.phone_number,
        lead.campaign,
        lead.list_id,
        lead.lead_id,
        lead.agent_user,
    )


def test_insert_failed_answer(sim: Simulator, client: httpx.Client) -> None:
    sim.script_calls({1: "insert_failed"})
    reply = client.get(sim.url, params=params(value="7275551212"))
    assert reply.text == "ERROR: lead insertion failed - 7275551212|TESTCAMP|101|1000\n"
    assert sim.leads == []
    # The next call works, and takes lead id 1: the failed insert used no id.
    assert client.get(sim.url, params=params(value="7275551212")).text == SUCCESS_1


def test_no_duplicate_check(sim: Simulator, client: httpx.Client) -> None:
    for _ in range(2):
        client.get(sim.url, params=params(value="7275551212"))
    assert [lead.lead_id for lead in sim.leads] == [1, 2]
    assert sim.count_by_phone() == {"7275551212": 2}


def test_lookups_are_case_insensitive_like_mysql(sim: Simulator, client: httpx.Client) -> None:
    sim.add_user("Admin", "Secret")
    sim.login("ab12", "testcamp")
    reply = client.get(
        sim.url,
        params=params(user="admin", agent_user="AB12", value="7275551212", **{"pass": "SECRET"}),
    )
    # The campaign id printed is the campaign row's own spelling.
    assert reply.text == "SUCCESS: lead added - 7275551212|TESTCAMP|101|1|AB12\n"


# ---------------------------------------------------------------- version, HTTP


def test_version_needs_no_credentials(
    sim: Simulator, client: httpx.Client, clock: FakeClock
) -> None:
    reply = client.get(sim.url, params={"function": "version"})
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(clock.now))
    assert reply.status_code == 200
    assert reply.text == f"VERSION: 2.14-82|BUILD: 250122-1010|DATE: {stamp}|EPOCH: {int(T0)}\n"


def test_version_line_format_with_real_clock(client: httpx.Client) -> None:
    with Simulator() as sim:
        text = client.get(sim.url, params={"function": "version"}).text
    date = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert re.fullmatch(rf"VERSION: 2\.14-82\|BUILD: 250122-1010\|DATE: {date}\|EPOCH: \d+\n", text)


def test_post_form_body(sim: Simulator, client: httpx.Client) -> None:
    reply = client.post(sim.url, data=params(value="7275551212", first_name="Bob"))
    assert reply.text == SUCCESS_1
    assert sim.leads[0].fields == {"first_name": "Bob"}


@pytest.mark.parametrize(
    ("last_field", "stored_phone"),
    [({"last_name": "Smith"}, "Smith"), ({"dnc_check": "YES"}, "YES")],
)
def test_post_quirk_last_field_becomes_the_phone(
    sim: Simulator, client: httpx.Client, last_field: dict[str, str], stored_phone: str
) -> None:
    # A POST without `value`: the LAST form field's value is taken as the phone number.
    data = params(phone_number="7275551212", first_name="Bob") | last_field
    reply = client.post(sim.url, data=data)
    assert reply.text == f"SUCCESS: lead added - {stored_phone}|TESTCAMP|101|1|1000\n"
    assert sim.leads[0].phone_number == stored_phone
    assert sim.count_by_phone() == {stored_phone: 1}


def test_post_quirk_short_last_field_is_not_valid(sim: Simulator, client: httpx.Client) -> None:
    data = params(phone_number="7275551212", phone_code=None) | {"phone_code": "1"}
    reply = client.post(sim.url, data=data)
    assert reply.text == "ERROR: external_add_lead not valid - 1|1|1000|\n"


def test_get_has_no_quirk(sim: Simulator, client: httpx.Client) -> None:
    reply = client.get(sim.url, params=params(phone_number="7275551212", last_name="Smith"))
    assert reply.text == SUCCESS_1


def test_query_string_wins_over_body(sim: Simulator, client: httpx.Client) -> None:
    reply = client.post(
        sim.url,
        params={"agent_user": "1001", "value": "7275551212"},
        data=params(agent_user="1000", value="8135550000"),
    )
    assert reply.text == "SUCCESS: lead added - 7275551212|NOLIST||1|1001\n"


def test_query_value_wins_over_the_post_quirk(sim: Simulator, client: httpx.Client) -> None:
    reply = client.post(sim.url, params={"value": "7275551212"}, data=params(last_name="Smith"))
    assert reply.text == SUCCESS_1


def test_json_body_is_ignored(sim: Simulator, client: httpx.Client) -> None:
    reply = client.post(sim.url, json=params(value="7275551212"))
    assert reply.text == "ERROR: Invalid Source - \n"
    assert sim.leads == []


def test_other_paths_are_404_and_not_counted(sim: Simulator, client: httpx.Client) -> None:
    reply = client.get(sim.base_url + "/vicidial/admin.php", params=params())
    assert reply.status_code == 404
    assert sim.call_count == 0 and sim.lookup_count == 0


def test_requests_are_recorded_without_the_password(sim: Simulator, client: httpx.Client) -> None:
    client.get(sim.url, params=params(**{"pass": "s3cret", "value": "7275551212"}))
    client.post(sim.url, data=params(value="7275551212"))
    first, second = sim.requests
    assert (first.number, first.method, second.number, second.method) == (1, "GET", 2, "POST")
    for record in (first, second):
        assert "pass" not in record.fields
        assert record.fields["value"] == "7275551212"
    assert "s3cret" not in repr(sim.requests)
    assert "|6666|<redacted>|0|1|BAD|" in first.body
    assert second.lead_id == 1 and second.processed and second.fault is None
    assert sim.call_count == 2


def test_state_passwords_are_not_in_repr() -> None:
    assert "1234" not in repr(SimulatorState.demo())


# ----------------------------------------------------------- failed-login lockout


def _login(client: httpx.Client, sim: Simulator, password: str) -> str:
    return client.get(sim.url, params=params(**{"pass": password, "value": "7275551212"})).text


def test_lockout_after_ten_failures_within_fifteen_minutes(
    sim: Simulator, client: httpx.Client, clock: FakeClock
) -> None:
    for attempt in range(10):
        clock.advance(30)
        text = _login(client, sim, "wrong")
        assert "|BAD|0|api|" in text
        assert sim.failed_logins("6666") == attempt + 1
    assert sim.is_locked("6666")
    # Even the right password is refused now, with LOCK.
    assert _login(client, sim, "1234") == "ERROR: Invalid Username/Password: |6666|1234|0|1|LOCK|\n"
    assert sim.leads == []
    # 15 minutes after the window's start the lock is over.
    clock.advance(900)
    assert not sim.is_locked("6666")
    assert _login(client, sim, "1234") == SUCCESS_1


def test_no_lockout_when_failures_spread_over_more_than_fifteen_minutes(
    sim: Simulator, client: httpx.Client, clock: FakeClock
) -> None:
    for _ in range(10):
        clock.advance(101)
        assert "|BAD|" in _login(client, sim, "wrong")
    assert sim.failed_logins("6666") == 10
    assert not sim.is_locked("6666")
    assert _login(client, sim, "1234") == SUCCESS_1
    # The next failure restarts the count (VICIdial's own bookkeeping).
    _login(client, sim, "wrong")
    assert sim.failed_logins("6666") == 1


def test_lock_is_per_user_and_unknown_users_have_no_count(
    sim: Simulator, client: httpx.Client
) -> None:
    for _ in range(10):
        _login(client, sim, "wrong")
    assert sim.is_locked("6666")
    assert not sim.is_locked("6668")
    assert sim.failed_logins("nobody") == 0
    # A right password without API access (GOOD) is not a failed login.
    client.get(sim.url, params=params(user="6667", value="7275551212"))
    assert sim.failed_logins("6667") == 0
    sim.unlock("6666")
    assert _login(client, sim, "1234") == SUCCESS_1


# ------------------------------------------------------------------- state files


DESIGN_EXAMPLE = {
    "users": {
        "6666": {
            "pass": "1234",
            "api_access": True,
            "functions": ["ALL_FUNCTIONS"],
            "user_group": "ADMIN",
        }
    },
    "agents": {"1000": "TESTCAMP", "1003": "GHOST"},
    "campaigns": {
        "TESTCAMP": {"manual_dial_list_id": "101"},
        "NOLIST": {"manual_dial_list_id": None},
    },
    "dnc": ["7275550000"],
    "campaign_dnc": {"TESTCAMP": ["7275550001"]},
    "api_active": True,
}


def test_state_from_design_example() -> None:
    state = SimulatorState.from_dict(DESIGN_EXAMPLE)
    assert state.users["6666"] == UserConfig(password="1234")
    assert state.agents == {"1000": "TESTCAMP", "1003": "GHOST"}
    assert state.campaigns["NOLIST"] == CampaignConfig(manual_dial_list_id=None)
    assert state.dnc == ["7275550000"]
    assert state.campaign_dnc == {"TESTCAMP": ["7275550001"]}
    assert SimulatorState.from_dict(state.to_dict()) == state


def test_state_every_key_optional() -> None:
    state = SimulatorState.from_dict({})
    assert state == SimulatorState()
    assert state.api_active and state.first_lead_id == 1
    shorthand = SimulatorState.from_dict({"campaigns": {"A": "7", "B": None, "C": {}}})
    assert [c.manual_dial_list_id for c in shorthand.campaigns.values()] == ["7", None, "998"]


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"userz": {}}, "userz"),
        ({"users": {"6666": {"pass": "1", "api_acces": True}}}, "users.6666.api_acces"),
        ({"users": {"6666": {"api_access": True}}}, "users.6666.pass"),
        ({"users": {"6666": {"pass": "1", "api_access": "yes"}}}, "users.6666.api_access"),
        ({"users": {"6666": {"pass": "1", "functions": "ALL"}}}, "users.6666.functions"),
        ({"users": []}, "users"),
        ({"agents": {"1000": 5.5}}, "agents.1000"),
        ({"campaigns": {"X": {"list": "1"}}}, "campaigns.X.list"),
        ({"dnc": "7275550000"}, "dnc"),
        ({"campaign_dnc": {"X": [None]}}, "campaign_dnc.X[0]"),
        ({"api_active": 1}, "api_active"),
        ({"first_lead_id": 0}, "first_lead_id"),
    ],
)
def test_state_errors_name_the_key(data: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=r"^" + named.replace("[", r"\[").replace(".", r"\.")):
        SimulatorState.from_dict(data)


def test_state_from_file(tmp_path: Path) -> None:
    good = tmp_path / "state.json"
    good.write_text(json.dumps(DESIGN_EXAMPLE))
    assert SimulatorState.from_file(good).agents["1000"] == "TESTCAMP"
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{'users': }")
    with pytest.raises(ValueError, match="not valid JSON"):
        SimulatorState.from_file(bad_json)
    bad_key = tmp_path / "key.json"
    bad_key.write_text('{"agents": {"1000": true}}')
    with pytest.raises(ValueError, match=r"key\.json: agents\.1000: expected a string"):
        SimulatorState.from_file(bad_key)
    with pytest.raises(ValueError, match="cannot read state file"):
        SimulatorState.from_file(tmp_path / "missing.json")


def test_demo_state_matches_its_documentation() -> None:
    state = SimulatorState.demo()
    assert set(state.users) == {"6666", "6667", "6668", "1000"}
    assert state.agents == {
        "1000": "TESTCAMP",
        "1001": "NOLIST",
        "1002": "OTHERDNC",
        "1003": "GHOST",
    }
    assert "GHOST" not in state.campaigns
    assert state.campaigns["NOLIST"].manual_dial_list_id is None
    assert set(state.dnc) & set(state.campaign_dnc["TESTCAMP"]) == {"7275550002"}
    assert isinstance(StoredLead, type)


# ------------------------------------------------------------ anything goes in


_ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=300)


_FREE_TEXT = frozenset({"comments", "source_id", "vendor_lead_code"})


@pytest.mark.parametrize("non_latin", [False, True], ids=["latin", "non_latin"])
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.dictionaries(st.sampled_from((*LEAD_FIELDS, "value", "vendor_id")), _ANY_TEXT),
    post=st.booleans(),
)
def test_arbitrary_lead_fields_never_break_the_simulator(
    sim: Simulator, client: httpx.Client, non_latin: bool, values: dict[str, str], post: bool
) -> None:
    sim.set_non_latin(non_latin)
    sim.reset_leads()
    fields = {**params(value="7275551212"), **values}
    reply = client.post(sim.url, data=fields) if post else client.get(sim.url, params=fields)
    assert reply.status_code in (200, 500)
    for lead in sim.leads:
        assert len(lead.phone_number) <= 18 and len(lead.phone_code) <= 10
        for name, stored in lead.fields.items():
            if non_latin:
                assert all(ord(c) <= 0xFFFF for c in stored), name  # utf8mb3
            elif name not in _FREE_TEXT:
                assert stored.isascii(), name
            if name in COLUMN_SIZES:
                assert len(stored) <= COLUMN_SIZES[name], name


def test_state_non_latin_switch(client: httpx.Client) -> None:
    state = SimulatorState.from_dict({**DESIGN_EXAMPLE, "non_latin": True})
    assert state.non_latin and SimulatorState.from_dict(state.to_dict()) == state
    assert not SimulatorState.from_dict({}).non_latin
    assert "use_non_latin" in state.summary()
    with pytest.raises(ValueError, match=r"^non_latin: expected true or false"):
        SimulatorState.from_dict({"non_latin": "yes"})
    fields = params(value="7275551212", first_name="Иван")
    with Simulator(state) as sim:
        assert client.get(sim.url, params=fields).status_code == 200
        sim.set_non_latin(False)  # as an admin switching the system setting
        assert client.get(sim.url, params=fields).status_code == 200
        assert [lead.fields["first_name"] for lead in sim.leads] == ["Иван", ""]
