"""add_lead's answers, byte for byte as shared/vicidial/non_agent_add_lead.md captures them,
read by workers.list_answer: added (and what the NOTICEs report), a duplicate (which lead),
or the error type (and so the dead-letter reason) of each refusal; the status never decides
alone. Pure: no server (the client against the simulator is
tests/workers/test_list_client.py)."""

from __future__ import annotations

import pytest

from dispatcher.model.errors import (
    AmbiguousFailure,
    AuthFailed,
    CallFailed,
    CampaignDNCBlocked,
    DNCBlocked,
    HTTPStatusError,
    InsertFailed,
    InvalidPhone,
    InvalidRequest,
    InvalidSource,
    ListNotAllowed,
    ListUndefined,
    PermanentFailure,
    PermissionDenied,
    ServerError,
    ServerRefused,
    TemporaryFailure,
    UnknownResponse,
    all_reasons,
)
from dispatcher.model.list_lead import make_list_lead
from dispatcher.model.list_options import make_list_options
from dispatcher.vicidial.nonagent import parse_lead_all_info
from workers.list_answer import (
    DuplicateFound,
    ListLeadAdded,
    classify_list_line,
    duplicate_verdict,
    parse_list_answer,
)

NANPA = b"NOTICE: add_lead NANPA options disabled, NANPA prefix data not loaded - 0|6666\n"

#: Every refusal line of the facts -> (error type, dead-letter reason).
REFUSALS: list[tuple[bytes, type[CallFailed], str]] = [
    (b"ERROR: Login incorrect, please try again: |6666|wrng|BAD|\n", AuthFailed, "auth"),
    (b"ERROR: Login incorrect, please try again: |6666||BAD|\n", AuthFailed, "auth"),
    (b"ERROR: Login incorrect, please try again: |||BAD|\n", AuthFailed, "auth"),
    (b"ERROR: Login incorrect, please try again: |9999|1234|BAD|\n", AuthFailed, "auth"),
    (
        b"ERROR: Too many login attempts, try again in 15 minutes: |6681|LOCK|\n",
        AuthFailed,
        "auth",
    ),
    (b"ERROR: user_group DOES NOT EXIST: |6671|ADDONLY|\n", PermissionDenied, "permission"),
    (b"ERROR: Invalid Source - t\nERROR: Invalid Source: |t|\n", InvalidSource, "invalid_source"),
    (
        b"ERROR: auth USER DOES NOT HAVE PERMISSION TO USE THIS FUNCTION: |6668|add_lead|\n",
        PermissionDenied,
        "permission",
    ),
    (
        b"ERROR: add_lead USER DOES NOT HAVE PERMISSION TO ADD LEADS TO THE SYSTEM: |6667|0|\n",
        PermissionDenied,
        "permission",
    ),
    (b"ERROR: add_lead NOT AN ALLOWED LIST ID - 7275559102|101\n", ListNotAllowed, "permission"),
    (b"ERROR: add_lead NOT AN ALLOWED LIST ID - 7275559106|\n", ListNotAllowed, "permission"),
    (
        b"ERROR: add_lead NOT A DEFINED LIST ID, LIST EXISTS CHECK ENABLED - 7275559103|103\n",
        ListUndefined,
        "list_undefined",
    ),
    (b"ERROR: add_lead INVALID PHONE NUMBER LENGTH - 12345|6666\n", InvalidPhone, "invalid_phone"),
    (
        NANPA + b"ERROR: add_lead INVALID PHONE NUMBER LENGTH - 12345|6666\n",
        InvalidPhone,
        "invalid_phone",
    ),
    (
        b"ERROR: add_lead INVALID PHONE NUMBER PREFIX - 7270559101|6666\n",
        InvalidPhone,
        "invalid_phone",
    ),
    (
        b"ERROR: add_lead INVALID PHONE NUMBER AREACODE - 2125559111|6666\n",
        InvalidPhone,
        "invalid_phone",
    ),
    (
        b"ERROR: add_lead INVALID PHONE NUMBER NANPA AREACODE PREFIX - 7275509120|6666\n",
        InvalidPhone,
        "invalid_phone",
    ),
    (b"ERROR: add_lead PHONE NUMBER IN DNC - 7275550000|6666\n", DNCBlocked, "dnc"),
    (
        b"ERROR: add_lead PHONE NUMBER IN CAMPAIGN DNC - 7275550001|TESTCAMP|6666\n",
        CampaignDNCBlocked,
        "campaign_dnc",
    ),
    (
        b"ERROR: add_lead PHONE NUMBER IN CAMPAIGN DNC - 7275550001|testcamp|6666\n",
        CampaignDNCBlocked,
        "campaign_dnc",
    ),
    (
        b"ERROR: add_lead LEAD HAS NOT BEEN ADDED - 7275559101|101|INSERT INTO x|6666\n",
        InsertFailed,
        "insert_failed",
    ),
    (b"ERROR: NO FUNCTION SPECIFIED\n", InvalidRequest, "invalid_request"),
]


@pytest.mark.parametrize(("body", "error", "reason"), REFUSALS)
def test_every_refusal_maps_to_its_type_and_reason(
    body: bytes, error: type[CallFailed], reason: str
) -> None:
    with pytest.raises(error) as info:
        parse_list_answer(body.decode(), secrets=("wr&ng!",))
    assert type(info.value) is error
    assert info.value.reason == reason and info.value.http_status == 200
    assert "ERROR: " in info.value.line and "NOTICE" not in info.value.line
    # Refusals are final for the same input: none is retried (DESIGN "Two ways into VICIdial").
    assert isinstance(info.value, PermanentFailure) or error is InsertFailed


def test_the_login_echo_is_redacted() -> None:
    body = "ERROR: Login incorrect, please try again: |6666|wrng|BAD|\n"
    with pytest.raises(AuthFailed) as info:
        parse_list_answer(body, secrets=("wr&ng!",))
    assert "wrng" not in info.value.line and "|BAD|" in info.value.line


def test_a_list_restriction_does_not_pause_the_server_but_a_login_does() -> None:
    assert not issubclass(ListNotAllowed, ServerRefused)
    assert issubclass(AuthFailed, ServerRefused) and issubclass(PermissionDenied, ServerRefused)
    assert {"invalid_phone", "list_undefined", "server_error"} <= set(all_reasons())


def test_invalid_source_keeps_both_of_its_lines() -> None:
    with pytest.raises(InvalidSource) as info:
        parse_list_answer("ERROR: Invalid Source - t\nERROR: Invalid Source: |t|\n")
    assert info.value.line == "ERROR: Invalid Source - t / ERROR: Invalid Source: |t|"


def test_an_error_line_we_do_not_know_is_an_unknown_response() -> None:
    with pytest.raises(UnknownResponse, match="unrecognised answer: ERROR: add_lead SOMETHING"):
        parse_list_answer("ERROR: add_lead SOMETHING NEW - 1|2\n")
    assert classify_list_line("ERROR: add_lead SOMETHING NEW") is None


# ---------------------------------------------------------------------------------------------
# Success, and what the NOTICEs after it report
# ---------------------------------------------------------------------------------------------


def test_success_line() -> None:
    added = parse_list_answer(
        "SUCCESS: add_lead LEAD HAS BEEN ADDED - 7275559101|101|1|-5.00|6666\n"
    )
    assert added == ListLeadAdded(
        lead_id="1",
        list_id="101",
        gmt="-5.00",
        phone="7275559101",
        line="SUCCESS: add_lead LEAD HAS BEEN ADDED - 7275559101|101|1|-5.00|6666",
    )
    assert (
        added.complete and added.unfinished(make_list_options({}, campaign_dnc_check=False)) == ()
    )


@pytest.mark.parametrize(
    ("body", "lead_id", "list_id", "gmt"),
    [
        (
            b"SUCCESS: add_lead LEAD HAS BEEN ADDED - 7275559101|00101|2|-5.00|6666\n",
            "2",
            "00101",
            "-5.00",
        ),
        (b"SUCCESS: add_lead LEAD HAS BEEN ADDED - 491701234567|999|8||6666\n", "8", "999", ""),
        (b"SUCCESS: add_lead LEAD HAS BEEN ADDED - 61299991234|998|9|11|6666\n", "9", "998", "11"),
        (
            b"SUCCESS: add_lead LEAD HAS BEEN ADDED - "
            b"727,555,9109|99999999999999999999|3|-5.00|6666\n",
            "3",
            "99999999999999999999",
            "-5.00",
        ),
        (
            NANPA + b"SUCCESS: add_lead LEAD HAS BEEN ADDED - 7275559101|101|4|-5.00|6666\n",
            "4",
            "101",
            "-5.00",
        ),
    ],
)
def test_success_fields(body: bytes, lead_id: str, list_id: str, gmt: str) -> None:
    added = parse_list_answer(body.decode())
    assert isinstance(added, ListLeadAdded)
    assert (added.lead_id, added.list_id, added.gmt) == (lead_id, list_id, gmt)


ALL_AT_ONCE = (
    b"NOTICE: add_lead NANPA options disabled, NANPA prefix data not loaded - 0|6666\n"
    b"SUCCESS: add_lead LEAD HAS BEEN ADDED - 7275558801|102|72|-5.00|6666\n"
    b"7275551212|1|work7275551213||NOTICE: add_lead MULTI-ALT-PHONE NUMBERS LOADED - 2|72|6666\n"
    b"NOTICE: add_lead CUSTOM FIELDS VALUES ADDED - 7275558801|72|102|1\n"
    b"NOTICE: add_lead ADDED TO HOPPER - 7275558801|72|3|6666\n"
    b"NOTICE: add_lead SCHEDULED CALLBACK ADDED - "
    b"72|TESTCAMP|2027-01-02 10:00:00|USERONLY|6666|CBX\n"
)


def test_all_at_once() -> None:
    added = parse_list_answer(ALL_AT_ONCE.decode())
    assert isinstance(added, ListLeadAdded)
    assert (added.lead_id, added.list_id, added.complete) == ("72", "102", True)
    assert (added.custom_fields, added.hopper, added.hopper_id, added.callback) == (
        "added",
        "added",
        "3",
        "added",
    )
    assert added.notes == (NANPA.decode().strip(),)


@pytest.mark.parametrize(
    ("notice", "what", "outcome"),
    [
        (
            "NOTICE: add_lead CUSTOM FIELDS NOT ADDED, NO CUSTOM FIELDS DEFINED FOR THIS LIST - "
            "7275559101|5|101",
            "custom_fields",
            "no_table",
        ),
        (
            "NOTICE: add_lead CUSTOM FIELDS NOT ADDED, NO FIELDS DEFINED - 7275559101|5|102",
            "custom_fields",
            "no_fields",
        ),
        (
            "NOTICE: add_lead CUSTOM FIELDS NOT ADDED, NO FIELDS TO UPDATE DEFINED - "
            "7275559101|5|102",
            "custom_fields",
            "not_inserted",
        ),
        (
            "NOTICE: add_lead CUSTOM FIELDS NOT ADDED, CUSTOM FIELDS DISABLED - 7275559101|5|Y|0",
            "custom_fields",
            "disabled",
        ),
        (
            "NOTICE: add_lead CUSTOM FIELDS VALUES ADDED - 7275559101|5|102|0",
            "custom_fields",
            "added",
        ),
        (
            "NOTICE: add_lead NOT ADDED TO HOPPER, OUTSIDE OF LOCAL TIME - "
            "8085559101|5|-10.00|0|6666",
            "hopper",
            "outside_local_time",
        ),
        ("NOTICE: add_lead NOT ADDED TO HOPPER - 7275559101|5|SQL|6666", "hopper", "not_added"),
        (
            "NOTICE: add_lead SCHEDULED CALLBACK NOT ADDED, USER NOT VALID - 25|TESTCAMP||USERONLY",
            "callback",
            "user_not_valid",
        ),
        (
            "NOTICE: add_lead SCHEDULED CALLBACK NOT ADDED, CAMPAIGN NOT VALID - 25|NOSUCH",
            "callback",
            "campaign_not_valid",
        ),
    ],
)
def test_each_notice_after_success(notice: str, what: str, outcome: str) -> None:
    body = f"SUCCESS: add_lead LEAD HAS BEEN ADDED - 7275559101|102|5|-5.00|6666\n{notice}\n"
    added = parse_list_answer(body)
    assert isinstance(added, ListLeadAdded) and getattr(added, what) == outcome
    options = make_list_options(
        {
            "add_to_hopper": True,
            "callback": {"datetime": "NOW"},
            "campaign_id": "TESTCAMP",
            "custom_fields": {"c": "x"},
        },
        campaign_dnc_check=False,
    )
    unfinished = added.unfinished(options)
    if outcome == "added":
        assert len(unfinished) == 2 and not any(x.startswith(what) for x in unfinished)
    else:
        assert f"{what}: {outcome}" in unfinished and len(unfinished) == 3


def test_a_success_line_in_a_500_means_added() -> None:
    body = "SUCCESS: add_lead LEAD HAS BEEN ADDED - 7275558302|101|52|-5.00|6666\n"
    added = parse_list_answer(body, http_status=500)
    assert isinstance(added, ListLeadAdded)
    assert (added.lead_id, added.http_status, added.complete) == ("52", 500, False)
    options = make_list_options({"add_to_hopper": True}, campaign_dnc_check=False)
    assert added.unfinished(options) == ("hopper: not reported",)
    # Any status: a proxy's 502 around a body that holds it says the same.
    assert isinstance(parse_list_answer(body, http_status=502), ListLeadAdded)


def test_an_error_line_in_a_500_is_that_refusal() -> None:
    with pytest.raises(InvalidPhone) as info:
        parse_list_answer(
            "ERROR: add_lead INVALID PHONE NUMBER LENGTH - 12|6666\n", http_status=500
        )
    assert info.value.http_status == 500


# ---------------------------------------------------------------------------------------------
# Duplicates: which lead, in which list, by which check
# ---------------------------------------------------------------------------------------------

DUPLICATES = [
    (
        b"ERROR: add_lead DUPLICATE PHONE NUMBER IN LIST - 7275551000|101|1\n",
        "1",
        "101",
        "DUPLIST",
        "",
    ),
    (
        b"ERROR: add_lead DUPLICATE PHONE NUMBER IN CAMPAIGN LISTS - 7275551000|102|1|101\n",
        "1",
        "101",
        "DUPCAMP",
        "",
    ),
    (
        b"ERROR: add_lead DUPLICATE PHONE NUMBER IN SYSTEM - 7275551000|103|1|101\n",
        "1",
        "101",
        "DUPSYS",
        "",
    ),
    (
        b"ERROR: add_lead DUPLICATE PHONE NUMBER IN LIST - 7275552000|101|1|ALT\n",
        "1",
        "101",
        "DUPPHONEALTLIST",
        "ALT",
    ),
    (
        b"ERROR: add_lead DUPLICATE PHONE NUMBER IN SYSTEM - 7275555000|999|5|201|ALT\n",
        "5",
        "201",
        "DUPPHONEALTSYS",
        "ALT",
    ),
    (
        b"ERROR: add_lead DUPLICATE PHONE NUMBER IN CAMPAIGN LISTS - 7275551000|102|1|101|PHONE\n",
        "1",
        "101",
        "DUPPHONEALTCAMP",
        "PHONE",
    ),
    (
        b"ERROR: add_lead DUPLICATE TITLE ALT_PHONE IN LIST - mr|7275552000|101|1\n",
        "1",
        "101",
        "DUPTITLEALTPHONELIST",
        "",
    ),
    (
        b"ERROR: add_lead DUPLICATE TITLE ALT_PHONE IN SYSTEM - ||201|2|102\n",
        "2",
        "102",
        "DUPTITLEALTPHONESYS",
        "",
    ),
    (
        b"ERROR: add_lead DUPLICATE NAME PHONE IN LIST - ann|LEE|7275551000|101|1\n",
        "1",
        "101",
        "DUPNAMEPHONELIST",
        "",
    ),
    (
        b"ERROR: add_lead DUPLICATE NAME PHONE IN CAMPAIGN LISTS - Ann|Lee|7275551000|102|1|101\n",
        "1",
        "101",
        "DUPNAMEPHONECAMP",
        "",
    ),
    (
        b"ERROR: add_lead DUPLICATE NAME PHONE IN SYSTEM - "
        b"Jos\xc3\xa9|Zo\xc3\xab|7275558604|101|68|101\n",
        "68",
        "101",
        "DUPNAMEPHONESYS",
        "",
    ),
]


@pytest.mark.parametrize(("body", "lead_id", "list_id", "check", "matched"), DUPLICATES)
def test_every_duplicate_answer_names_the_lead_found(
    body: bytes, lead_id: str, list_id: str, check: str, matched: str
) -> None:
    found = parse_list_answer(body.decode())
    assert isinstance(found, DuplicateFound)
    assert (found.existing_lead_id, found.existing_list_id, found.check, found.matched) == (
        lead_id,
        list_id,
        check,
        matched,
    )
    assert found.line == body.decode().strip()


def test_a_duplicate_line_that_cannot_be_read_is_a_duplicate_of_no_known_lead() -> None:
    found = parse_list_answer("ERROR: add_lead DUPLICATE PHONE NUMBER IN LIST - 7275551000|101\n")
    assert isinstance(found, DuplicateFound) and found.existing_lead_id == ""


# ---------------------------------------------------------------------------------------------
# No SUCCESS or ERROR line: the status, and the empty 500
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["", "\n", NANPA.decode()])
def test_an_empty_500_is_deterministic_never_retried(body: str) -> None:
    with pytest.raises(ServerError) as info:
        parse_list_answer(body, http_status=500)
    assert info.value.reason == "server_error" and info.value.http_status == 500
    assert isinstance(info.value, PermanentFailure)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (500, "<html>Internal Server Error</html>", HTTPStatusError),
        (502, "", HTTPStatusError),
        (503, "Service Unavailable", HTTPStatusError),
        (429, "", HTTPStatusError),
        (504, "", AmbiguousFailure),
        (404, "Not Found", UnknownResponse),
        (200, "", UnknownResponse),
        (200, "<b>Warning</b>: something", UnknownResponse),
    ],
)
def test_no_result_line_the_status_decides(status: int, body: str, error: type[CallFailed]) -> None:
    with pytest.raises(error) as info:
        parse_list_answer(body, http_status=status)
    assert type(info.value) is error and info.value.http_status == status
    if error is HTTPStatusError:
        assert isinstance(info.value, TemporaryFailure)


def test_an_answer_cut_before_any_result_line_is_ambiguous() -> None:
    with pytest.raises(AmbiguousFailure, match="may have been added"):
        parse_list_answer("<b>Warning</b>" * 10, truncated=True)


def test_php_warnings_before_the_result_line_are_skipped() -> None:
    body = (
        "<br />\n<b>Warning</b>: Undefined variable $DL in x.php\n"
        "SUCCESS: add_lead LEAD HAS BEEN ADDED - 7275559101|101|9|-5.00|6666\n"
    )
    added = parse_list_answer(body)
    assert isinstance(added, ListLeadAdded) and added.lead_id == "9"


# ---------------------------------------------------------------------------------------------
# A duplicate after a lost answer: the job's own lead, or another one
# ---------------------------------------------------------------------------------------------

RECORD = (
    "NEW|6666||{source}|101|-5.00|1|7275551000||Ann||||||||||||0000-00-00|||||0|"
    "2026-12-07 17:57:00|0||0|{id}\n"
)


def _record(source: str, lead_id: str = "1") -> object:
    return parse_lead_all_info(RECORD.format(source=source, id=lead_id)).records[0]


def test_duplicate_verdict() -> None:
    found = parse_list_answer(DUPLICATES[0][0].decode())
    assert isinstance(found, DuplicateFound)
    lead = make_list_lead({"list_id": "101", "phone_number": "7275551000"})
    mine, other = _record("job-1"), _record("job-0")
    kwargs = {"job_id": "job-1", "lead": lead, "marker_field": "source_id"}
    # A first call: a duplicate, whoever the lead is.
    assert duplicate_verdict(found, mine, after_lost_answer=False, **kwargs) == "duplicate"
    # After a lost answer: the lead the lost call added, or an older one.
    assert duplicate_verdict(found, mine, after_lost_answer=True, **kwargs) == "added"
    assert duplicate_verdict(found, other, after_lost_answer=True, **kwargs) == "duplicate"
    assert duplicate_verdict(found, None, after_lost_answer=True, **kwargs) == "unknown"
    elsewhere = _record("job-1", lead_id="2")
    assert duplicate_verdict(found, elsewhere, after_lost_answer=True, **kwargs) == "unknown"
    filled = make_list_lead({**lead.to_dict(), "source_id": "crm-9"})
    no_marker = {**kwargs, "lead": filled}
    assert duplicate_verdict(found, mine, after_lost_answer=True, **no_marker) == "unknown"
