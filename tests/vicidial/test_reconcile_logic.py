"""Reconciliation's pure parts: the marker, reading lead_all_info, and the decision.

The answers parsed here are the captured bodies of
shared/vicidial/non_agent_api_lookup.md, byte for byte; no server is needed.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.model.errors import LookupDenied, LookupRefused, LookupUnavailable
from dispatcher.model.lead import make_lead
from dispatcher.model.marker import mark, marker
from dispatcher.vicidial.findings import Finding, deletable, lookup_finding
from dispatcher.vicidial.nonagent import (
    LookupAnswer,
    SearchAnswer,
    diagnose_denied,
    parse_lead_all_info,
    parse_lead_search,
)

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


def judge(answer: LookupAnswer, *, search: SearchAnswer | None = None, **kw: object) -> Finding:
    """lookup_finding() where lead_search found exactly the leads lead_all_info showed,
    unless told."""
    if search is None:
        search = SearchAnswer(tuple(r.lead_id for r in answer.records))
    return lookup_finding(answer, search=search, **kw)  # type: ignore[arg-type]


def test_one_lead_with_our_marker_is_found() -> None:
    answer = parse_lead_all_info(rec(5, source="other") + rec(4, source=JOB) + rec(1))
    finding = judge(answer, job_id=JOB, lead=lead(), marker_field="source_id")
    assert (finding.kind, finding.lead_id, finding.duplicates, finding.found) == (
        "found",
        "4",
        (),
        1,
    )
    assert finding.matched_by == "marker"


def test_several_are_found_the_oldest_kept() -> None:
    answer = parse_lead_all_info(rec(9, source=JOB) + rec(7) + rec(4, source=JOB))
    finding = judge(answer, job_id=JOB, lead=lead(), marker_field="source_id")
    assert (finding.kind, finding.lead_id, finding.duplicates) == ("found", "4", ("9",))
    assert finding.found == 2


def test_the_vendor_lead_code_marker_counts_whatever_the_setting_now_says() -> None:
    answer = parse_lead_all_info(rec(3, vendor=marker(JOB, "vendor_lead_code")))
    finding = judge(answer, job_id=JOB, lead=lead(), marker_field="source_id")
    assert (finding.kind, finding.lead_id) == ("found", "3")


def test_no_marker_no_lead_other_leads_of_that_phone_are_not_ours() -> None:
    answer = parse_lead_all_info(rec(3, source="someone-else", first="Ann"))
    finding = judge(answer, job_id=JOB, lead=lead(first_name="Ann"), marker_field="source_id")
    assert finding.kind == "absent" and finding.found == 0
    empty = parse_lead_all_info("ERROR: lead_all_info LEAD NOT FOUND: 6666||7275559101\n")
    assert judge(empty, job_id=JOB, lead=lead(), marker_field="source_id").kind == "absent"


def test_hidden_or_unreadable_leads_make_absence_unknowable() -> None:
    hidden = parse_lead_all_info("ERROR: lead_all_info LIST NOT FOUND: 6666||7275559101|0\n")
    finding = judge(
        hidden, search=SearchAnswer(("12",)), job_id=JOB, lead=lead(), marker_field="source_id"
    )
    assert finding.kind == "unknown" and "lead 12" in finding.why
    assert finding.unseen == ("12",)
    # Without lead_search, the LIST NOT FOUND line alone says it.
    finding = judge(
        hidden, search=SearchAnswer(None), job_id=JOB, lead=lead(), marker_field="source_id"
    )
    assert finding.kind == "unknown" and "list" in finding.why.lower()
    garbled = parse_lead_all_info("NEW|6666|x\n" + rec(3, source="someone-else"))
    assert garbled.unreadable == 1 and [r.lead_id for r in garbled.records] == ["3"]
    assert judge(garbled, job_id=JOB, lead=lead(), marker_field="source_id").kind == "unknown"
    # Found anyway: a lead we can read proves the add, hidden ones notwithstanding.
    both = parse_lead_all_info(
        "ERROR: lead_all_info LIST NOT FOUND: 6669k||7275559101\n" + rec(8, source=JOB)
    )
    assert judge(both, job_id=JOB, lead=lead(), marker_field="source_id").kind == "found"


def test_without_a_marker_every_field_sent_must_match() -> None:
    own = lead(source_id="crm-7", first_name="Ann")
    answer = parse_lead_all_info(
        rec(6, source="crm-7", first="Ann") + rec(5, source="crm-7", first="Bob")
    )
    finding = judge(answer, job_id=JOB, lead=own, marker_field="source_id")
    assert (finding.kind, finding.lead_id, finding.matched_by) == ("found", "6", "fields")
    none_field = judge(
        parse_lead_all_info(rec(2, first="Ann")),
        job_id=JOB,
        lead=lead(first_name="Ann"),
        marker_field="none",
    )
    assert (none_field.kind, none_field.lead_id) == ("found", "2")
    # A marker was written (source_id was empty): a look-alike without it is not ours.
    assert (
        judge(
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
    finding = judge(answer, job_id=JOB, lead=lead(), marker_field="source_id")
    assert finding.duplicates == ("8", "9")
    assert [r.lead_id for r in finding.matches if deletable(r)] == ["9", "4"]
    by_fields = judge(
        parse_lead_all_info(rec(3, first="Ann") + rec(2, first="Ann")),
        job_id=JOB,
        lead=lead(first_name="Ann"),
        marker_field="none",
    )
    assert by_fields.duplicates == ("3",)
    assert not any(deletable(r) for r in by_fields.matches)  # no marker: never deleted


# -- issue 23, item 1: absent only when VICIdial could have shown the lead ------------------

OTHER = rec(2, source="someone-else")  # a readable lead of the phone that is not ours


def test_a_lead_only_lead_search_sees_makes_the_outcome_unknown() -> None:
    """lead_all_info silently leaves out a hidden lead beside a readable one."""
    answer = parse_lead_all_info(OTHER)
    assert answer.hidden == []  # no LIST NOT FOUND line: nothing says a lead is missing
    search = parse_lead_search("7275559101|2|12-2\n", "7275559101")
    finding = lookup_finding(
        answer, search=search, job_id=JOB, lead=lead(), marker_field="source_id"
    )
    assert (finding.kind, finding.unseen) == ("unknown", ("12",))
    # Looked up by its id: list 0 gives LIST NOT FOUND again, and the why names the list.
    by_id = parse_lead_all_info("ERROR: lead_all_info LIST NOT FOUND: 6666|12||0\n")
    finding = lookup_finding(
        answer, search=search, by_id=[by_id], job_id=JOB, lead=lead(), marker_field="source_id"
    )
    assert finding.kind == "unknown" and "lead 12 (list 0)" in finding.why
    # Readable by id after all (e.g. inserted between the two look-ups): decided on it.
    mine = parse_lead_all_info(rec(12, source=JOB))
    finding = lookup_finding(
        answer, search=search, by_id=[mine], job_id=JOB, lead=lead(), marker_field="source_id"
    )
    assert (finding.kind, finding.lead_id, finding.unseen) == ("found", "12", ())
    someone = parse_lead_all_info(rec(12, source="someone-else"))
    finding = lookup_finding(
        answer, search=search, by_id=[someone], job_id=JOB, lead=lead(), marker_field="source_id"
    )
    assert finding.kind == "absent"


def test_absence_needs_lead_search() -> None:
    answer = parse_lead_all_info(OTHER)
    everything = SearchAnswer(("2",))
    assert (
        lookup_finding(
            answer, search=everything, job_id=JOB, lead=lead(), marker_field="source_id"
        ).kind
        == "absent"
    )
    refused = SearchAnswer(None, "ERROR: lead_search USER DOES NOT HAVE PERMISSION", "lead_search")
    finding = lookup_finding(
        answer, search=refused, job_id=JOB, lead=lead(), marker_field="source_id"
    )
    assert finding.kind == "unknown" and "lead_search" in finding.why
    # Found needs no lead_search.
    found = parse_lead_all_info(rec(5, source=JOB) + OTHER)
    assert (
        lookup_finding(
            found, search=refused, job_id=JOB, lead=lead(), marker_field="source_id"
        ).kind
        == "found"
    )


def test_a_found_lead_beside_hidden_ones_is_found_and_the_hidden_ones_named() -> None:
    answer = parse_lead_all_info(rec(5, source=JOB) + OTHER)
    search = SearchAnswer(("12", "5", "2"))
    finding = lookup_finding(
        answer, search=search, job_id=JOB, lead=lead(), marker_field="source_id"
    )
    assert (finding.kind, finding.lead_id, finding.unseen) == ("found", "5", ("12",))


def test_the_job_s_own_lead_needs_no_showing_when_verifying() -> None:
    """The verification knows the lead the job was added with (list 0: never shown)."""
    only_ours = parse_lead_all_info("ERROR: lead_all_info LIST NOT FOUND: 6666||7275559101|0\n")
    search = SearchAnswer(("7",))
    finding = lookup_finding(
        only_ours, search=search, known=("7",), job_id=JOB, lead=lead(), marker_field="source_id"
    )
    assert finding.kind == "absent"
    search = SearchAnswer(("9", "7"))
    finding = lookup_finding(
        only_ours, search=search, known=("7",), job_id=JOB, lead=lead(), marker_field="source_id"
    )
    assert (finding.kind, finding.unseen) == ("unknown", ("9",))


@pytest.mark.parametrize(
    ("body", "ids", "missing"),
    [
        ("7275559101|3|12-2-1\n", ("12", "2", "1"), ""),
        ("search_keyrecords_foundlead_ids\n7275559101|1|4\n", ("4",), ""),
        ("ERROR: lead_search NO MATCHES FOUND IN THE SYSTEM: |6666|||7275559101\n", (), ""),
        (
            "ERROR: lead_search USER DOES NOT HAVE PERMISSION TO SEARCH FOR LEADS: |6666|0|\n",
            None,
            "lead_search",
        ),
        (
            "ERROR: auth USER DOES NOT HAVE PERMISSION TO USE THIS FUNCTION: |6666|lead_search|\n",
            None,
            "lead_search",
        ),
        ("ERROR: user_group DOES NOT EXIST: |6669|NOSUCH|\n", None, "user group"),
    ],
)
def test_lead_search_answers(body: str, ids: tuple[str, ...] | None, missing: str) -> None:
    answer = parse_lead_search(body, "7275559101", user="6666")
    assert answer.ids == ids
    assert missing in answer.missing


def test_lead_search_refusals_and_garbage() -> None:
    with pytest.raises(LookupRefused):
        parse_lead_search(
            "ERROR: Login incorrect, please try again: |6666|wrong|BAD|\n",
            "7275559101",
            secrets=("wrong",),
        )
    for body in ("", "7275559101|2|12\n", "7275550000|1|4\n", "<html>oops</html>"):
        with pytest.raises(LookupUnavailable):
            parse_lead_search(body, "7275559101")
