"""Reconciliation's pure parts: the marker, reading lead_all_info, and the decision.

The answers parsed here are the captured bodies of
shared/vicidial/non_agent_api_lookup.md, byte for byte; no server is needed.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.errors import LookupDenied, LookupRefused, LookupUnavailable
from dispatcher.lead import make_lead
from dispatcher.nonagent import diagnose_denied, parse_lead_all_info
from dispatcher.reconcile import decide, deletable, mark, marker

STAMP = "2026-11-29 22:22:59"
HEADER = (
    "status|user|vendor_lead_code|source_id|list_id|gmt_offset_now|phone_code|phone_number|"
    "title|first_name|middle_initial|last_name|address1|address2|address3|city|state|province|"
    "postal_code|country_code|gender|date_of_birth|alt_phone|email|security_phrase|comments|"
    "called_count|last_local_call_time|rank|owner|entry_list_id|lead_id"
)
JOB = "0123456789abcdef0123456789abcdef"


def rec(lead_id: int, *, source: str = "", vendor: str = "", first: str = "", **kw: str) -> str:
    status = kw.get("status", "NEW")
    called = kw.get("called", "0")
    comments = kw.get("comments", "")
    return (
        f"{status}|6666|{vendor}|{source}|101|0.00|1|7275559101||{first}||||||||||||0000-00-00|"
        f"|||{comments}|{called}|{STAMP}|0||0|{lead_id}\n"
    )


# -- the marker ---------------------------------------------------------------------------


def test_the_marker_is_the_job_id_where_it_fits_else_a_digest() -> None:
    assert marker(JOB, "source_id") == JOB
    vendor = marker(JOB, "vendor_lead_code")
    assert len(vendor) == 20 and vendor != JOB[:20] and vendor.isalnum()
    assert marker(JOB, "vendor_lead_code") == vendor  # stable
    odd = marker("job with spaces;#", "source_id")
    assert len(odd) == 50 and odd.isalnum()
    assert marker("short-id_1.x", "vendor_lead_code") == "short-id_1.x"


@settings(max_examples=60, deadline=None)
@given(job_id=st.text(min_size=1, max_size=100), non_latin=st.booleans())
def test_every_marker_passes_the_lead_rules_unchanged(job_id: str, non_latin: bool) -> None:
    for field in ("source_id", "vendor_lead_code"):
        value = marker(job_id, field)
        lead = make_lead(
            {"agent_user": "1000", "phone_number": "7275551212", field: value},
            non_latin=non_latin,
        )
        assert lead.fields[field] == value


def test_mark_writes_the_marker_only_where_the_producer_left_the_field_empty() -> None:
    plain = make_lead({"agent_user": "1000", "phone_number": "7275551212"})
    assert mark(plain, JOB, "source_id").fields == {"source_id": JOB}
    assert mark(plain, JOB, "vendor_lead_code").fields == {
        "vendor_lead_code": marker(JOB, "vendor_lead_code")
    }
    assert mark(plain, JOB, "none") is plain
    own = make_lead({"agent_user": "1000", "phone_number": "7275551212", "source_id": "crm-7"})
    assert mark(own, JOB, "source_id") is own


# -- reading lead_all_info --------------------------------------------------------------


def test_records_newest_first_and_headers_skipped() -> None:
    body = (
        HEADER + "\n" + rec(2, source=JOB) + HEADER + "\n" + rec(1, source="job-abc", first="Ann")
    )
    answer = parse_lead_all_info(body)
    assert [r.lead_id for r in answer.records] == ["2", "1"]
    assert answer.records[1].values["first_name"] == "Ann"
    assert answer.records[0].complete and not answer.hidden and not answer.unreadable


def test_raw_pipes_tabs_and_line_breaks_still_give_the_record() -> None:
    captured = (
        f"NEW|6666|t\tab|a|b|101|0.00|1|7275559102||||||||||||||0000-00-00||||x|y\nz|0|"
        f"{STAMP}|0||0|3\n"
    )
    answer = parse_lead_all_info(captured + rec(1, source=JOB))
    assert [r.lead_id for r in answer.records] == ["3", "1"]
    odd = answer.records[0]
    assert not odd.complete  # one field more per pipe: only its two ends can be trusted
    assert odd.values["vendor_lead_code"] == "t\tab" and odd.values["called_count"] == "0"


def test_error_lines_of_a_partial_answer() -> None:
    restricted = (
        "ERROR: lead_all_info LIST NOT FOUND: 6669k||7275559101\n" + rec(2, source=JOB) + rec(1)
    )
    answer = parse_lead_all_info(restricted)
    assert [r.lead_id for r in answer.records] == ["2", "1"]
    assert answer.hidden == ["ERROR: lead_all_info LIST NOT FOUND: 6669k||7275559101"]
    only_hidden = parse_lead_all_info("ERROR: lead_all_info LIST NOT FOUND: 6669||7275559103|0\n")
    assert only_hidden.records == [] and only_hidden.hidden
    none = parse_lead_all_info("ERROR: lead_all_info LEAD NOT FOUND: 6669||7275559101\n")
    assert none.records == [] and none.not_found and not none.hidden


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("ERROR: Login incorrect, please try again: |6666|wrong|BAD|\n", LookupRefused),
        ("ERROR: Too many login attempts, try again in 15 minutes: |6666|LOCK|\n", LookupRefused),
        (
            "ERROR: lead_all_info USER DOES NOT HAVE PERMISSION TO GET LEAD INFO: |6666|0|\n",
            LookupDenied,
        ),
        (
            "ERROR: auth USER DOES NOT HAVE PERMISSION TO USE THIS FUNCTION: "
            "|6668|lead_all_info|\n",
            LookupDenied,
        ),
        ("ERROR: Invalid Source - t\nERROR: Invalid Source: |t|\n", LookupDenied),
        ("ERROR: NO FUNCTION SPECIFIED\n", LookupUnavailable),
        ("", LookupUnavailable),
        ("<html>maintenance</html>\n", LookupUnavailable),
    ],
)
def test_refusals_are_typed(body: str, error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        parse_lead_all_info(body, secrets=("wrong",))
    assert "wrong" not in str(caught.value)


def test_a_denial_says_what_to_change_in_vicidial() -> None:
    line = "ERROR: lead_all_info USER DOES NOT HAVE PERMISSION TO GET LEAD INFO: |6666|0|"
    sure = diagnose_denied(line, user="6666", search_answered=True)
    assert sure.missing == "View Reports"
    assert "Users" in sure.fix and '"View Reports"' in sure.fix and "6666" in sure.fix
    unsure = diagnose_denied(line, user="6666", search_answered=False)
    assert "View Reports" in unsure.missing and "Modify Leads" in unsure.missing
    assert "Agent API Access" in unsure.missing
    functions = diagnose_denied(
        "ERROR: auth USER DOES NOT HAVE PERMISSION TO USE THIS FUNCTION: |6666|lead_all_info|",
        user="6666",
        search_answered=None,
    )
    assert "API Allowed Functions" in functions.missing and "lead_all_info" in functions.fix


# -- the decision -----------------------------------------------------------------------


def lead(**fields: str) -> object:
    return make_lead({"agent_user": "1000", "phone_number": "7275559101", **fields})


def test_one_lead_with_our_marker_is_found() -> None:
    answer = parse_lead_all_info(rec(5, source="other") + rec(4, source=JOB) + rec(1))
    finding = decide(answer, job_id=JOB, lead=lead(), marker_field="source_id")
    assert (finding.kind, finding.lead_id, finding.duplicates, finding.found) == (
        "found",
        "4",
        (),
        1,
    )
    assert finding.matched_by == "marker"


def test_several_are_found_the_oldest_kept() -> None:
    answer = parse_lead_all_info(rec(9, source=JOB) + rec(7) + rec(4, source=JOB))
    finding = decide(answer, job_id=JOB, lead=lead(), marker_field="source_id")
    assert (finding.kind, finding.lead_id, finding.duplicates) == ("found", "4", ("9",))
    assert finding.found == 2


def test_the_vendor_lead_code_marker_counts_whatever_the_setting_now_says() -> None:
    answer = parse_lead_all_info(rec(3, vendor=marker(JOB, "vendor_lead_code")))
    finding = decide(answer, job_id=JOB, lead=lead(), marker_field="source_id")
    assert (finding.kind, finding.lead_id) == ("found", "3")


def test_no_marker_no_lead_other_leads_of_that_phone_are_not_ours() -> None:
    answer = parse_lead_all_info(rec(3, source="someone-else", first="Ann"))
    finding = decide(answer, job_id=JOB, lead=lead(first_name="Ann"), marker_field="source_id")
    assert finding.kind == "absent" and finding.found == 0
    empty = parse_lead_all_info("ERROR: lead_all_info LEAD NOT FOUND: 6666||7275559101\n")
    assert decide(empty, job_id=JOB, lead=lead(), marker_field="source_id").kind == "absent"


def test_hidden_or_unreadable_leads_make_absence_unknowable() -> None:
    hidden = parse_lead_all_info("ERROR: lead_all_info LIST NOT FOUND: 6666||7275559101|0\n")
    finding = decide(hidden, job_id=JOB, lead=lead(), marker_field="source_id")
    assert finding.kind == "unknown" and "list" in finding.why.lower()
    garbled = parse_lead_all_info("NEW|6666|x\n" + rec(3, source="someone-else"))
    assert garbled.unreadable == 1 and [r.lead_id for r in garbled.records] == ["3"]
    assert decide(garbled, job_id=JOB, lead=lead(), marker_field="source_id").kind == "unknown"
    # Found anyway: a lead we can read proves the add, hidden ones notwithstanding.
    both = parse_lead_all_info(
        "ERROR: lead_all_info LIST NOT FOUND: 6669k||7275559101\n" + rec(8, source=JOB)
    )
    assert decide(both, job_id=JOB, lead=lead(), marker_field="source_id").kind == "found"


def test_without_a_marker_every_field_sent_must_match() -> None:
    own = lead(source_id="crm-7", first_name="Ann")
    answer = parse_lead_all_info(
        rec(6, source="crm-7", first="Ann") + rec(5, source="crm-7", first="Bob")
    )
    finding = decide(answer, job_id=JOB, lead=own, marker_field="source_id")
    assert (finding.kind, finding.lead_id, finding.matched_by) == ("found", "6", "fields")
    none_field = decide(
        parse_lead_all_info(rec(2, first="Ann")),
        job_id=JOB,
        lead=lead(first_name="Ann"),
        marker_field="none",
    )
    assert (none_field.kind, none_field.lead_id) == ("found", "2")
    # A marker was written (source_id was empty): a look-alike without it is not ours.
    assert (
        decide(
            parse_lead_all_info(rec(2, first="Ann")),
            job_id=JOB,
            lead=lead(first_name="Ann"),
            marker_field="source_id",
        ).kind
        == "absent"
    )


def test_only_never_touched_marked_copies_may_be_deleted() -> None:
    answer = parse_lead_all_info(
        rec(9, source=JOB) + rec(8, source=JOB, status="NA", called="1") + rec(4, source=JOB)
    )
    finding = decide(answer, job_id=JOB, lead=lead(), marker_field="source_id")
    assert finding.duplicates == ("8", "9")
    assert [r.lead_id for r in finding.matches if deletable(r)] == ["9", "4"]
    by_fields = decide(
        parse_lead_all_info(rec(3, first="Ann") + rec(2, first="Ann")),
        job_id=JOB,
        lead=lead(first_name="Ann"),
        marker_field="none",
    )
    assert by_fields.duplicates == ("3",)
    assert not any(deletable(r) for r in by_fields.matches)  # no marker: never deleted
