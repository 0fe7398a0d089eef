"""The answer parser and classifier: every answer string of the spec -> kind and reason."""

from __future__ import annotations

import random

import pytest

from dispatcher.model.errors import (
    AmbiguousFailure,
    CallFailed,
    PermanentFailure,
    ServerRefused,
    TemporaryFailure,
)
from dispatcher.model.jobs import Job
from dispatcher.model.lead import make_lead
from workers.retry import RetryPolicy
from workers.vicidial import parse_add_lead

AUTH_LINE = (
    "ERROR: Invalid Username/Password: |6666|s3cret|BAD|0|BAD|0|api|SELECT count(*) from "
    "vicidial_users where user='6666' and pass='s3cret' and user_level > 0 and active='Y';|\n"
)

# (answer body, http status, reason, kind)
CASES = [
    ("ERROR: Invalid Source - x\n", 200, "invalid_source", ServerRefused),
    (AUTH_LINE, 200, "auth", ServerRefused),
    (
        "ERROR: Invalid Username/Password: |6666|s3cret|GOOD|0|GOOD|0|api||\n",
        200,
        "auth",
        ServerRefused,
    ),
    ("ERROR: System API NOT ACTIVE\n", 200, "api_disabled", ServerRefused),
    (
        "ERROR: external_add_lead not valid - 7275551212||1000|\n",
        200,
        "invalid_request",
        PermanentFailure,
    ),
    (
        "ERROR: auth USER DOES NOT HAVE PERMISSION TO USE THIS FUNCTION - 7275551212|6666|"
        "external_add_lead|ADMIN\n",
        200,
        "permission",
        ServerRefused,
    ),
    ("ERROR: agent_user is not logged in - 1000\n", 200, "agent_not_logged_in", TemporaryFailure),
    (
        "ERROR: campaign manual dial list undefined - 7275551212||1000\n",
        200,
        "manual_list_undefined",
        PermanentFailure,
    ),
    ("ERROR: add_lead PHONE NUMBER IN DNC - 7275550000|1000\n", 200, "dnc", PermanentFailure),
    (
        "ERROR: add_lead PHONE NUMBER IN CAMPAIGN DNC - 7275550001|TESTCAMP|1000\n",
        200,
        "campaign_dnc",
        PermanentFailure,
    ),
    (
        "ERROR: add_lead PHONE NUMBER IN DNC - 7275550000|1000\n"
        "ERROR: add_lead PHONE NUMBER IN CAMPAIGN DNC - 7275550000|TESTCAMP|1000\n",
        200,
        "dnc",
        PermanentFailure,
    ),
    (
        "ERROR: lead insertion failed - 7275551212|TESTCAMP|101|1000\n",
        200,
        "insert_failed",
        TemporaryFailure,
    ),
    ("ERROR: no user found - bob\n", 200, "invalid_request", PermanentFailure),
    (
        "ERROR: no user found - bob\nERROR: agent_user is not logged in - 1000\n",
        200,
        "agent_not_logged_in",
        TemporaryFailure,
    ),
    ("", 200, "unknown_response", TemporaryFailure),
    (
        "<html><body>Warning: mysqli_connect(): too many connections</body></html>",
        200,
        "unknown_response",
        TemporaryFailure,
    ),
    (
        "VERSION: 2.14-82|BUILD: 250122-1010|DATE: 2026-11-27 10:00:00|EPOCH: 1\n",
        200,
        "unknown_response",
        TemporaryFailure,
    ),
    ("", 500, "http_error", TemporaryFailure),
    ("Bad gateway", 502, "http_error", TemporaryFailure),
    ("", 503, "http_error", TemporaryFailure),
    ("slow down", 429, "http_error", TemporaryFailure),
    ("", 504, "ambiguous", AmbiguousFailure),
    ("not found", 404, "unknown_response", TemporaryFailure),
    ("", 301, "unknown_response", TemporaryFailure),
]


@pytest.mark.parametrize(("body", "status", "reason", "kind"), CASES)
def test_every_answer_maps_to_its_reason_and_kind(
    body: str, status: int, reason: str, kind: type[CallFailed]
) -> None:
    with pytest.raises(CallFailed) as info:
        parse_add_lead(body, http_status=status, secrets=("s3cret",))
    assert info.value.reason == reason
    assert isinstance(info.value, kind)
    assert info.value.http_status == status
    assert "s3cret" not in info.value.line


def test_success_fields_are_split_from_the_right() -> None:
    result = parse_add_lead("SUCCESS: lead added - 7275551212|TESTCAMP|101|1234|1000\n")
    assert (result.lead_id, result.list_id, result.campaign, result.phone, result.agent_user) == (
        "1234",
        "101",
        "TESTCAMP",
        "7275551212",
        "1000",
    )


def test_success_with_null_manual_list_has_empty_list_id() -> None:
    result = parse_add_lead("SUCCESS: lead added - 7275551212|NOLIST||15|1001\n")
    assert (result.lead_id, result.list_id, result.campaign) == ("15", "", "NOLIST")


def test_alt_user_miss_then_success_is_added() -> None:
    body = "ERROR: no user found - bob\nSUCCESS: lead added - 7275551212|TESTCAMP|101|7|1000\n"
    result = parse_add_lead(body)
    assert result.lead_id == "7"
    assert result.notes == ("ERROR: no user found - bob",)


def test_php_warnings_before_the_result_line_are_skipped() -> None:
    body = (
        "<br />\n<b>Warning</b>: Undefined variable $x in api.php on line 12<br />\n"
        "SUCCESS: lead added - 7275551212|TESTCAMP|101|9|1000\n"
    )
    assert parse_add_lead(body).lead_id == "9"


def test_both_dnc_lines_are_kept_in_the_error() -> None:
    body = (
        "ERROR: add_lead PHONE NUMBER IN DNC - 7275550000|1000\n"
        "ERROR: add_lead PHONE NUMBER IN CAMPAIGN DNC - 7275550000|TESTCAMP|1000\n"
    )
    with pytest.raises(CallFailed) as info:
        parse_add_lead(body)
    assert "IN DNC" in info.value.line and "IN CAMPAIGN DNC" in info.value.line


def test_auth_echo_is_redacted_even_for_an_unknown_password() -> None:
    with pytest.raises(CallFailed) as info:
        parse_add_lead(AUTH_LINE, secrets=())
    assert "s3cret" not in info.value.line
    assert "[REDACTED]" in info.value.line


def _job(**changes: object) -> Job:
    lead = make_lead({"agent_user": "1000", "phone_number": "7275551212"})
    return Job(job_id="j1", lead=lead).evolve(**changes)


def _fail(line: str, status: int = 200) -> CallFailed:
    try:
        parse_add_lead(line, http_status=status)
    except CallFailed as exc:
        return exc
    raise AssertionError("no failure")


def test_policy_permanent_never_retries() -> None:
    policy = RetryPolicy(max_attempts=8)
    error = _fail("ERROR: add_lead PHONE NUMBER IN DNC - 7275550000|1000\n")
    assert not policy.retry_or_dead_letter(
        error, _job(attempts=1), now=0, rng=random.Random(1)
    ).retry


def test_policy_temporary_retries_until_max_attempts_with_full_jitter() -> None:
    policy = RetryPolicy(max_attempts=3, base_s=2, cap_s=5)
    error = _fail("", 503)
    rng = random.Random(7)
    d1 = policy.retry_or_dead_letter(error, _job(attempts=1), now=0, rng=rng)
    d2 = policy.retry_or_dead_letter(error, _job(attempts=2), now=0, rng=rng)
    d3 = policy.retry_or_dead_letter(error, _job(attempts=3), now=0, rng=rng)
    assert d1.retry and 0 <= d1.delay_s <= 2
    assert d2.retry and 0 <= d2.delay_s <= 4
    assert not d3.retry
    delays = [policy.backoff(10, rng) for _ in range(200)]
    assert max(delays) <= 5 and min(delays) < 1  # capped, and jittered down to ~0


def test_policy_unknown_response_gets_few_attempts() -> None:
    policy = RetryPolicy(max_attempts=8, unknown_max_attempts=3)
    error = _fail("")
    assert policy.retry_or_dead_letter(error, _job(attempts=2), now=0, rng=random.Random()).retry
    assert not policy.retry_or_dead_letter(
        error, _job(attempts=3), now=0, rng=random.Random()
    ).retry


def test_policy_agent_wait_ignores_max_attempts_and_stops_at_deadline() -> None:
    policy = RetryPolicy(max_attempts=2, agent_wait_s=100, agent_cap_s=10)
    error = _fail("ERROR: agent_user is not logged in - 1000\n")
    first = policy.retry_or_dead_letter(error, _job(attempts=1), now=1000, rng=random.Random(3))
    assert first.retry and first.agent_wait_since == 1000 and first.delay_s <= 10
    later = policy.retry_or_dead_letter(
        error, _job(attempts=30, agent_wait_since=1000), now=1095, rng=random.Random(3)
    )
    assert later.retry and later.delay_s <= 5
    over = policy.retry_or_dead_letter(
        error, _job(attempts=31, agent_wait_since=1000), now=1100, rng=random.Random(3)
    )
    assert not over.retry


def test_policy_ambiguous_is_dead_by_default_and_retried_on_request() -> None:
    error = AmbiguousFailure("ReadTimeout")
    assert (
        not RetryPolicy()
        .retry_or_dead_letter(error, _job(attempts=1), now=0, rng=random.Random())
        .retry
    )
    assert (
        RetryPolicy(retry_ambiguous=True)
        .retry_or_dead_letter(error, _job(attempts=1), now=0, rng=random.Random())
        .retry
    )
