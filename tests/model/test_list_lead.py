"""Leads for a list (the Non-Agent API's add_lead): the lead rules, the options, the job.

Pure tests of dispatcher.model.list_lead, list_options and the job's version 2 message. The
property "whatever validates, VICIdial stores exactly the normalised value" for list leads
is tests/workers/test_list_client.py, end to end through the client to the simulator.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping
from typing import Any

import pytest

from dispatcher.model.dialers import Dialer, Dialers
from dispatcher.model.errors import InvalidLead, InvalidPayload, UnknownDialer
from dispatcher.model.jobs import JOB_VERSION, LIST_JOB_VERSION, Job, state_to_status
from dispatcher.model.lead import AGENT_RULES, Lead, make_lead
from dispatcher.model.list_lead import LIST_LEAD_FIELDS, LIST_RULES, MAX_LIST_ID, make_list_lead
from dispatcher.model.list_options import (
    DUPLICATE_CHECKS,
    WINDOWS,
    Callback,
    ListOptions,
    check_duplicate_check,
    check_with_lead,
    make_list_options,
    parse_duplicate_check,
)
from dispatcher.model.marker import mark, marker
from dispatcher.simulator.addlead_fields import ADD_LEAD_FIELDS
from tests.support.settings import ROOT

BASE: dict[str, object] = {"list_id": "101", "phone_number": "7275551212"}


def lead_with(**fields: object) -> dict[str, object]:
    return {**BASE, **fields}


def errors_of(data: Mapping[str, object], **kwargs: Any) -> dict[str, str]:
    with pytest.raises(InvalidLead) as info:
        make_list_lead(data, **kwargs)
    return {e.field: e.message for e in info.value.errors}


def option_errors(data: Mapping[str, object], **kwargs: Any) -> dict[str, str]:
    kwargs.setdefault("campaign_dnc_check", False)
    with pytest.raises(InvalidLead) as info:
        make_list_options(data, **kwargs)
    return {e.field: e.message for e in info.value.errors}


# ---------------------------------------------------------------------------------------------
# add_lead's field rules: where they differ from external_add_lead's
# ---------------------------------------------------------------------------------------------


def test_a_list_lead_names_its_list_and_no_agent() -> None:
    lead = make_list_lead(lead_with(first_name="José", phone_number="(727) 555-1212"))
    assert (lead.list_id, lead.agent_user, lead.target) == ("101", "", "list")
    assert lead.phone_number == "7275551212" and lead.phone_code == "1"
    assert lead.fields == {"first_name": "Jose"}  # the shared normalisation
    assert lead.to_dict() == {
        "list_id": "101",
        "phone_number": "7275551212",
        "phone_code": "1",
        "first_name": "Jose",
    }
    assert make_list_lead(lead.to_dict()) == lead
    assert "list_id='101'" in repr(lead) and "7275551212" not in repr(lead)
    assert make_lead({"agent_user": "1000", "phone_number": "7275551212"}).target == "agent"


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"phone_number": "7275551212"}, "list_id", "is required"),
        (lead_with(list_id="99"), "list_id", "must be 3-20 digits long, got 2"),
        (lead_with(list_id="00101"), "list_id", "must not start with 0"),
        (lead_with(list_id="000"), "list_id", "must not start with 0"),
        (lead_with(list_id="10a"), "list_id", "may only contain digits"),
        (lead_with(list_id=str(MAX_LIST_ID + 1)), "list_id", "largest list id"),
        (lead_with(list_id=True), "list_id", "must be a string or an integer"),
        # 6-16 digits (external_add_lead: 18)
        (lead_with(phone_number="12345678901234567"), "phone_number", "6-16 digits long"),
        (lead_with(phone_number="727,555,1212"), "phone_number", "may only contain digits"),
        # phone_code: digits only (X is dropped by add_lead)
        (lead_with(phone_code="1X"), "phone_code", "VICIdial would drop: 'X'"),
        (lead_with(agent_user="1000"), "agent_user", "not both"),
        (lead_with(status="NEW"), "status", "add_lead ignores status"),
        (lead_with(gmt_offset_now="-5"), "gmt_offset_now", "computes"),
        (lead_with(multi_alt_phones="7275551213"), "multi_alt_phones", "not supported"),
        (lead_with(favorite_color="red"), "favorite_color", "goes in custom_fields"),
        (lead_with(campaign_id="TESTCAMP"), "campaign_id", "no lead field"),
        (lead_with(entry_list_id="0101"), "entry_list_id", "must not start with 0"),
        (lead_with(middle_initial="+"), "middle_initial", "VICIdial would drop"),
        (lead_with(postal_code="33.701"), "postal_code", "VICIdial would drop: '.'"),
        (lead_with(country_code="U.S"), "country_code", "VICIdial would drop: '.'"),
        (lead_with(comments="a;b"), "comments", "VICIdial would drop: ';'"),
        (lead_with(comments="a+b"), "comments", "'+'"),
        (lead_with(first_name="A" * 31), "first_name", "at most 30"),
        (lead_with(gender="X"), "gender", "M, F, U"),
        (lead_with(rank="40000"), "rank", "0 to 32767"),
        (lead_with(date_of_birth="1970/01/02"), "date_of_birth", "YYYY-MM-DD"),
    ],
)
def test_invalid_list_leads_name_the_field(data: dict[str, object], field: str, words: str) -> None:
    errors = errors_of(data)
    assert field in errors, errors
    assert words in errors[field], errors[field]


@pytest.mark.parametrize(
    ("field", "sent", "kept"),
    [
        ("list_id", 101, "101"),
        ("list_id", str(MAX_LIST_ID), str(MAX_LIST_ID)),
        ("phone_number", "+1 727 555 1212", "7275551212"),  # country code = phone_code
        ("phone_number", "7275551234567890", "7275551234567890"),  # 16 digits
        ("phone_code", "+44", "44"),
        ("middle_initial", "-", "-"),  # add_lead keeps - and _ (external_add_lead does not)
        ("middle_initial", "_", "_"),
        ("postal_code", "O'Hara 1", "O'Hara 1"),  # ' kept (filtered once)
        ("country_code", "usa", "USA"),  # a-z upper-cased, as for agents
        ("country_code", "U-1", "U-1"),
        ("entry_list_id", "0", "0"),
        ("entry_list_id", 102, "102"),
        ("first_name", "O'Brien", "O'Brien"),  # ' stored (not with DUPNAMEPHONE)
        ("comments", 'say "hi"\\', "say hi"),  # " and \ removed
        ("gender", "m", "M"),
    ],
)
def test_valid_list_fields_are_normalised(field: str, sent: object, kept: str) -> None:
    lead = make_list_lead(lead_with(**{field: sent}))
    got = {"list_id": lead.list_id, "phone_number": lead.phone_number}
    got["phone_code"] = lead.phone_code
    got.update(lead.fields)
    assert got[field] == kept


def test_list_rules_in_non_latin_mode() -> None:
    lead = make_list_lead(
        lead_with(first_name="Иван", country_code="ÜSA", comments="李小龍"), non_latin=True
    )
    assert lead.fields == {"first_name": "Иван", "country_code": "ÜSA", "comments": "李小龍"}
    errors = errors_of(lead_with(first_name="Иван"))
    assert "DISPATCHER_VICIDIAL_NON_LATIN" in errors["first_name"]
    errors = errors_of(lead_with(comments="Bob😀"), non_latin=True)
    assert "above U+FFFF" in errors["comments"]


def test_every_bad_field_is_named_at_once() -> None:
    errors = errors_of({"list_id": "1", "phone_number": "12", "rank": "-1", "foo": "x"})
    assert set(errors) == {"list_id", "phone_number", "rank", "foo"}


def test_list_lead_fields_are_add_lead_s_columns() -> None:
    assert set(LIST_LEAD_FIELDS) == {
        *ADD_LEAD_FIELDS,
        "list_id",
        "phone_number",
        "phone_code",
        "entry_list_id",
    }


# ---------------------------------------------------------------------------------------------
# add_lead's options
# ---------------------------------------------------------------------------------------------


def test_options_default_and_their_request_fields() -> None:
    options = make_list_options({}, campaign_dnc_check=False)
    assert options == ListOptions()
    assert options.list_exists_check is True  # on unless turned off
    assert options.form() == [("list_exists_check", "Y")]
    full = make_list_options(
        {
            "campaign_id": "TESTCAMP",
            "duplicate_check": "duplist-dupsys30day",
            "add_to_hopper": True,
            "hopper_priority": "-5",
            "callback": {
                "datetime": "2027-01-02 10:00:00",
                "type": "USERONLY",
                "user": "6666",
                "status": "CBX",
                "comments": "hi+there",
            },
            "custom_fields": {"favorite_color": "red", "crm_id": 42},
            "lookup_state": True,
            "tz_method": "POSTAL",
            "usacan_prefix_check": True,
            "usacan_areacode_check": True,
            "list_exists_check": False,
        },
        campaign_dnc_check=True,
    )
    assert full.duplicate_check == "DUPLIST-DUPSYS30DAY" and full.hopper_priority == -5
    assert full.form() == [
        ("campaign_id", "TESTCAMP"),
        ("duplicate_check", "DUPLIST-DUPSYS30DAY"),
        ("add_to_hopper", "Y"),
        ("hopper_priority", "-5"),
        ("callback", "Y"),
        ("callback_datetime", "2027-01-02 10:00:00"),
        ("callback_type", "USERONLY"),
        ("callback_user", "6666"),
        ("callback_status", "CBX"),
        ("callback_comments", "hi+there"),
        ("custom_fields", "Y"),
        ("favorite_color", "red"),
        ("crm_id", "42"),
        ("lookup_state", "Y"),
        ("usacan_prefix_check", "Y"),
        ("usacan_areacode_check", "Y"),
        ("tz_method", "POSTAL"),
    ]
    again = make_list_options(full.to_dict(), campaign_dnc_check=True)
    assert again == full
    assert json.loads(json.dumps(full.to_dict())) == full.to_dict()


@pytest.mark.parametrize(
    "value",
    [
        *DUPLICATE_CHECKS,
        *(f"DUPLIST{n}DAY" for n in WINDOWS),
        "DUPLIST-DUPSYS",
        "DUPSYS-DUPLIST30DAY",
        "DUPNAMEPHONECAMP-DUPTITLEALTPHONESYS-DUPPHONEALTLIST",
        "DUPLIST30DAY-DUPSYS30DAY",
        "NONE",
    ],
)
def test_duplicate_checks_vicidial_reads_as_written(value: str) -> None:
    assert check_duplicate_check(value) is None
    if value == "NONE":
        return
    written = [re.fullmatch(r"([A-Z]+?)(?:([0-9]+)DAY)?", t) for t in value.split("-")]
    assert all(written)
    checks, window = parse_duplicate_check(value)
    assert set(checks) == {m.group(1) for m in written if m}
    days = {int(m.group(2)) for m in written if m and m.group(2)}
    assert window == (days.pop() if days else None)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("Y", "is not one of VICIdial's checks"),
        ("DUP_SYS", "is not one of"),
        ("DUPLIST 30DAY", "is not one of"),
        ("DUPLIST5DAY", "is not one of"),  # 5DAY is no window: VICIdial would ignore it
        ("DUPLIST365DAY", "is not one of"),
        ("DUPLIST30DAY-DUPSYS60DAY", "several windows"),
        ("DUPLIST-", "is not one of"),
        ("X" * 101, "longer than 100"),
    ],
)
def test_duplicate_checks_vicidial_would_misread_are_refused(value: str, words: str) -> None:
    problem = check_duplicate_check(value)
    assert problem is not None and words in problem
    errors = option_errors({"duplicate_check": value})
    assert words in errors["duplicate_check"]


def test_parse_duplicate_check_is_vicidial_s_substring_reading() -> None:
    # The facts: DUPSYS-DUPLIST30DAY limits DUPSYS to 30 days too; 11DAY is 1 day.
    assert parse_duplicate_check("DUPSYS-DUPLIST30DAY") == (("DUPLIST", "DUPSYS"), 30)
    assert parse_duplicate_check("dupsys") == (("DUPSYS",), None)
    assert parse_duplicate_check("XDUPSYSX") == (("DUPSYS",), None)
    assert parse_duplicate_check("DUP_SYS") == ((), None)
    assert parse_duplicate_check("DUPLIST11DAY") == (("DUPLIST",), 1)
    assert parse_duplicate_check("DUPLIST7DAY-DUPSYS60DAY") == (("DUPLIST", "DUPSYS"), 60)
    assert parse_duplicate_check("DUPLIST360DAY") == (("DUPLIST",), 360)


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"campaign_id": "T"}, "campaign_id", "2-8"),
        ({"campaign_id": "TEST CAMP"}, "campaign_id", "2-8"),
        ({"campaign_id": "TESTCAMPX"}, "campaign_id", "2-8"),
        ({"campaign_id": 5}, "campaign_id", "must be a string"),
        ({"add_to_hopper": "Y"}, "add_to_hopper", "true or false"),
        ({"list_exists_check": 1}, "list_exists_check", "true or false"),
        ({"hopper_priority": 5}, "hopper_priority", "without add_to_hopper"),
        ({"add_to_hopper": True, "hopper_priority": 100}, "hopper_priority", "-99 to 99"),
        ({"add_to_hopper": True, "hopper_priority": 1.5}, "hopper_priority", "-99 to 99"),
        ({"add_to_hopper": True, "hopper_priority": True}, "hopper_priority", "-99 to 99"),
        ({"tz_method": "postal"}, "tz_method", "POSTAL, TZCODE, NANPA"),
        ({"callback": "NOW"}, "callback", "must be an object"),
        ({"callback": {}}, "callback.datetime", "is required"),
        ({"callback": {"datetime": "now"}}, "callback.datetime", "must be NOW"),
        ({"callback": {"datetime": "tomorrow"}}, "callback.datetime", "0000-00-00"),
        ({"callback": {"datetime": "2027-02-30 10:00:00"}}, "callback.datetime", "not a real"),
        ({"callback": {"datetime": "2027-01-02T10:00:00"}}, "callback.datetime", "must be NOW"),
        ({"callback": {"datetime": "NOW", "type": "anyone"}}, "callback.type", "ANYONE"),
        ({"callback": {"datetime": "NOW", "type": "USERONLY"}}, "callback.user", "required"),
        ({"callback": {"datetime": "NOW", "user": "6666"}}, "callback.user", "only with"),
        ({"callback": {"datetime": "NOW", "status": "TOOLONG"}}, "callback.status", "1-6"),
        ({"callback": {"datetime": "NOW", "comments": "soon's"}}, "callback.comments", '"\'"'),
        ({"callback": {"datetime": "NOW", "when": "x"}}, "callback.when", "unknown key"),
        ({"custom_fields": ["a"]}, "custom_fields", "must be an object"),
        ({"custom_fields": {"Color": "red"}}, "custom_fields.Color", "a-z, 0-9 and _"),
        ({"custom_fields": {"user": "x"}}, "custom_fields.user", "add_lead's own fields"),
        ({"custom_fields": {"first_name": "x"}}, "custom_fields.first_name", "own fields"),
        ({"custom_fields": {"c": "a;b"}}, "custom_fields.c", "VICIdial would drop: ';'"),
        ({"custom_fields": {"c": "a+b"}}, "custom_fields.c", "'+'"),
        ({"custom_fields": {"c": "x" * 256}}, "custom_fields.c", "at most 255"),
        ({"custom_fields": {"c": True}}, "custom_fields.c", "a string or an integer"),
    ],
)
def test_invalid_options_name_the_option(data: dict[str, object], field: str, words: str) -> None:
    errors = option_errors(data)
    assert field in errors, errors
    assert words in errors[field], errors[field]


def test_custom_values_keep_hash_and_quote_and_lose_double_quotes() -> None:
    options = make_list_options(
        {"custom_fields": {"c": "O'Brien\"s #1\\", "d": "  ", "e": 7}}, campaign_dnc_check=False
    )
    assert dict(options.custom_fields) == {"c": "O'Briens #1", "e": "7"}


@pytest.mark.parametrize(
    ("callback", "datetime"),
    [("NOW", "NOW"), ("3DAYS", "3DAYS"), ("2027-01-02 10:00:00", "2027-01-02 10:00:00")],
)
def test_callback_datetimes(callback: str, datetime: str) -> None:
    options = make_list_options(
        {"callback": {"datetime": callback}, "campaign_id": "TESTCAMP"}, campaign_dnc_check=False
    )
    assert options.callback == Callback(datetime=datetime)


def test_a_campaign_is_required_with_campaign_dnc_check_or_a_callback() -> None:
    errors = option_errors({}, campaign_dnc_check=True)
    assert "passes silently" in errors["campaign_id"]
    errors = option_errors({"callback": {"datetime": "NOW"}})
    assert "with a callback" in errors["campaign_id"]
    errors = option_errors({"callback": {"datetime": "bad"}})  # the callback's own error too
    assert set(errors) == {"campaign_id", "callback.datetime"}
    ok = make_list_options({}, campaign_dnc_check=True, default_campaign_id="TESTCAMP")
    assert ok.campaign_id == "TESTCAMP"
    mine = make_list_options(
        {"campaign_id": "OTHER"}, campaign_dnc_check=True, default_campaign_id="TESTCAMP"
    )
    assert mine.campaign_id == "OTHER"
    assert make_list_options({}, campaign_dnc_check=False).campaign_id == ""


def test_duplicate_check_default_and_none() -> None:
    assert make_list_options(
        {}, campaign_dnc_check=False, default_duplicate_check="DUPLIST"
    ).duplicate_check == ("DUPLIST")
    none = make_list_options(
        {"duplicate_check": "NONE"}, campaign_dnc_check=False, default_duplicate_check="DUPLIST"
    )
    assert none.duplicate_check == "NONE" and ("duplicate_check", "NONE") not in none.form()


@pytest.mark.parametrize(
    ("fields", "options", "field"),
    [
        ({"first_name": "O'Brien"}, {"duplicate_check": "DUPNAMEPHONELIST"}, "first_name"),
        ({"last_name": "D'Arcy"}, {"duplicate_check": "DUPLIST-DUPNAMEPHONESYS"}, "last_name"),
        ({"title": "O'"}, {"duplicate_check": "DUPTITLEALTPHONECAMP"}, "title"),
        ({"owner": "O'Neil"}, {"tz_method": "TZCODE"}, "owner"),
        ({"entry_list_id": "555"}, {"custom_fields": {"c": "x"}}, "entry_list_id"),
    ],
)
def test_what_breaks_add_lead_for_this_lead_is_refused(
    fields: dict[str, str], options: dict[str, object], field: str
) -> None:
    lead = make_list_lead(lead_with(**fields))
    problems = check_with_lead(lead, make_list_options(options, campaign_dnc_check=False))
    assert [e.field for e in problems] == [field]
    # The same quote with other options is stored as sent: accepted.
    assert check_with_lead(lead, ListOptions()) == []


def test_entry_list_id_equal_to_the_list_is_fine_with_custom_fields() -> None:
    lead = make_list_lead(lead_with(entry_list_id="101"))
    options = make_list_options({"custom_fields": {"c": "x"}}, campaign_dnc_check=False)
    assert check_with_lead(lead, options) == []


# ---------------------------------------------------------------------------------------------
# The job: a version 2 message, read back; an agent job's message unchanged
# ---------------------------------------------------------------------------------------------


def list_job(**options: object) -> Job:
    lead = make_list_lead(lead_with(first_name="Ann"))
    opts = make_list_options({"campaign_id": "TESTCAMP", **options}, campaign_dnc_check=True)
    return Job(job_id="j1", lead=lead, list_options=opts, enqueued_at=1_800_000_000.0)


def test_a_list_job_is_a_version_2_message_that_reads_back() -> None:
    job = list_job(duplicate_check="DUPLIST", custom_fields={"c": "x"})
    message = job.to_message()
    assert message["v"] == LIST_JOB_VERSION == 2 and job.v == 2
    assert message["lead"] == {
        "list_id": "101",
        "phone_number": "7275551212",
        "phone_code": "1",
        "first_name": "Ann",
    }
    assert message["list_options"]["duplicate_check"] == "DUPLIST"
    back = Job.from_message(json.dumps(message))
    assert back == job and back.target == "list" and back.agent_user == ""


def test_an_agent_job_s_message_is_version_1_s_unchanged() -> None:
    lead = make_lead({"agent_user": "1000", "phone_number": "7275551212"})
    message = Job(job_id="j1", lead=lead).to_message()
    assert message["v"] == JOB_VERSION == 1
    assert set(message) == {
        "v",
        "job_id",
        "lead",
        "dnc_check",
        "campaign_dnc_check",
        "idempotency_key",
        "enqueued_at",
        "attempts",
        "seq",
        "replays",
        "first_failed_at",
        "agent_wait_since",
        "non_latin",
        "dialer",
        "priority",
    }
    assert message["lead"] == {
        "agent_user": "1000",
        "phone_number": "7275551212",
        "phone_code": "1",
    }


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda m: m.update(v=1), "version 2 message"),
        (lambda m: m.update(v=3), "unsupported job version 3"),
        (lambda m: m.update(v=True), "unsupported job version True"),
        (lambda m: m.pop("list_options"), "list_options missing"),
        (lambda m: m["list_options"].update(foo=1), "unknown key 'foo'"),
        (lambda m: m["list_options"].update(duplicate_check="Y"), "duplicate_check"),
        (lambda m: m["list_options"].update(campaign_id=""), "campaign_id"),
        (lambda m: m["lead"].update(list_id="12"), "list_id"),
        (lambda m: m["lead"].update(agent_user="1000"), "agent_user"),
    ],
)
def test_malformed_list_messages_are_invalid_payloads(change: Any, words: str) -> None:
    message = list_job().to_message()
    change(message)
    with pytest.raises(InvalidPayload, match=words):
        Job.from_message(message)


def test_list_options_in_an_agent_job_are_an_invalid_payload() -> None:
    message = Job(job_id="j1", lead=make_lead({"agent_user": "1000", "phone_number": "7275551212"}))
    data = message.to_message()
    data["list_options"] = ListOptions().to_dict()
    with pytest.raises(InvalidPayload, match="list_options in a job of a lead for an agent"):
        Job.from_message(data)


def test_a_worker_serves_both_targets_and_one_that_serves_agents_only_hands_lists_on() -> None:
    """A worker reads list jobs (part B: both targets are served by default); a caller that
    serves agents only leaves a list job untouched: it waits, as a job of a dialer it does
    not know does (and, after the wait, is a replayable letter)."""
    dialers = Dialers({"default": Dialer("default", url="http://x/agc/api.php")}, "default")
    message = list_job().to_message()
    assert Job.from_message(message, dialers=dialers) == list_job()
    with pytest.raises(UnknownDialer, match="does not serve leads for a list") as info:
        Job.from_message(message, dialers=dialers, serves=("agent",))
    assert info.value.job == list_job() and info.value.reason == "unknown_dialer"
    agent = Job(job_id="j2", lead=make_lead({"agent_user": "1000", "phone_number": "7275551212"}))
    assert Job.from_message(agent.to_message(), dialers=dialers) == agent


def test_the_marker_goes_into_a_list_lead_and_keeps_its_list() -> None:
    lead = make_list_lead(BASE)
    marked = mark(lead, "abc123", "source_id")
    assert marked.list_id == "101" and marked.agent_user == ""
    assert marked.fields["source_id"] == marker("abc123", "source_id") == "abc123"
    # The marker passes the list's rules as it is.
    assert make_list_lead(marked.to_dict()) == marked


def test_job_status_shows_the_target_and_a_duplicate() -> None:
    agent = state_to_status("j", {"state": "added", "agent_user": "1000", "list_id": "101"})
    assert agent["target"] == "agent" and agent["list_id"] == "101"
    assert agent["existing_lead_id"] is None and agent["target_list_id"] is None
    queued = state_to_status(
        "j",
        {"state": "queued", "target": "list", "target_list_id": "101", "campaign_id": "TC"},
    )
    assert (queued["target"], queued["target_list_id"], queued["campaign_id"]) == (
        "list",
        "101",
        "TC",
    )
    assert queued["list_id"] is None
    duplicate = state_to_status(
        "j",
        {"state": "duplicate", "target": "list", "existing_lead_id": "7", "list_id": "102"},
    )
    assert (duplicate["state"], duplicate["existing_lead_id"], duplicate["list_id"]) == (
        "duplicate",
        "7",
        "102",
    )


def test_lead_equality_and_hash_include_the_list() -> None:
    a = make_list_lead(BASE)
    b = make_list_lead({**BASE, "list_id": "102"})
    assert a != b and len({a, b}) == 2
    assert Lead("", "7275551212", "1", {}, list_id="101") == a


# ---------------------------------------------------------------------------------------------
# README "Leads" states the list's differences as the code has them
# ---------------------------------------------------------------------------------------------


def test_readme_list_table_is_the_list_rules() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("**A lead for a list**") : readme.index("## Two ways")]
    rows = re.findall(
        r"^\| `([a-z_0-9]+)`[^|]* \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", section, re.M
    )
    documented = {name: (size, chars) for name, size, chars, _ in rows}
    rules = LIST_RULES.rules
    # Every field whose rule differs from the agent's is in the table, and only those.
    differs = {
        name
        for name, rule in rules.items()
        if name not in AGENT_RULES.rules or AGENT_RULES.rules[name] != rule
    }
    assert set(documented) == differs
    ascii_chars = "".join(map(chr, range(0x20, 0x7F)))
    for name, (size, chars) in documented.items():
        rule = rules[name]
        numbers = [int(n) for n in re.findall(r"\d+", size)]
        assert numbers[0] == rule.max_len, name
        assert (numbers[1] if len(numbers) > 1 else 1) == rule.min_len, name
        kept = {c for c in ascii_chars if rule.ok.fullmatch(c)}
        expected = set(re.findall(r"`(.)`", chars)) | ({" "} if "space" in chars else set())
        if "digit" in chars:
            expected |= set(string.digits)
        if "letter" in chars or "`A-Z`" in chars:
            expected |= set(string.ascii_uppercase)
        if "letter" in chars:
            expected |= set(string.ascii_lowercase)
        assert kept == expected, (name, sorted(kept ^ expected))
        assert ("any script" in chars or "letter" in chars) == rule.letters, name
