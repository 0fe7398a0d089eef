"""Reconciliation's settings, message format and command-line errors (no workers)."""

from __future__ import annotations

import pytest

from dispatcher.config.settings import Settings
from dispatcher.model.errors import ConfigError, InvalidPayload
from dispatcher.model.jobs import Job, Reconcile
from dispatcher.model.lead import make_lead
from dispatcher.store.deadletter import DeadLetterStore
from tests.support.cli import check, record_letter, run_cli


def test_defaults_and_the_derived_nonagent_url() -> None:
    s = Settings(vicidial_url="https://dialer.example.com/agc/api.php")
    assert (s.ambiguous, s.reconcile_after_s, s.marker_field) == ("reconcile", 60.0, "source_id")
    assert s.reconcile_delete_duplicates is False
    assert s.nonagent_url == "https://dialer.example.com/vicidial/non_agent_api.php"
    own = s.replace(vicidial_nonagent_url="http://other:81/x/non_agent_api.php")
    assert own.nonagent_url == "http://other:81/x/non_agent_api.php"
    assert Settings(vicidial_url="http://h/custom.php").nonagent_url is None
    assert Settings().nonagent_url is None


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("DISPATCHER_AMBIGUOUS", "lookup", "reconcile, dead_letter or retry"),
        ("DISPATCHER_RECONCILE_AFTER_S", "-1", "between 0 and 86400"),
        ("DISPATCHER_MARKER_FIELD", "comments", "source_id, vendor_lead_code or none"),
        ("DISPATCHER_VICIDIAL_NONAGENT_URL", "ftp://x/y", "non_agent_api.php"),
        ("DISPATCHER_RECONCILE_DELETE_DUPLICATES", "maybe", "true or false"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_mapping({name: value})
    assert name in str(caught.value) and words in str(caught.value)


def test_a_reconciling_job_round_trips_and_other_messages_are_unchanged() -> None:
    lead = make_lead({"agent_user": "1000", "phone_number": "7275551212"})
    plain = Job("j1", lead, enqueued_at=1_800_000_000.0)
    assert "reconcile" not in plain.to_message()
    rec = Reconcile("lookup", since=1_800_000_000.0, error="ReadTimeout", http_status=None)
    job = plain.evolve(reconcile=rec)
    again = Job.from_message(job.to_message())
    assert again.reconcile == rec and again == job


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("x", "reconcile is not an object"),
        ({"step": "call"}, "reconcile.step"),
        ({"step": "lookup", "since": 1e20}, "reconcile.since"),
        ({"step": "lookup", "tries": -1}, "reconcile.tries"),
        ({"step": "verify", "lead_id": 5}, "reconcile.lead_id"),
    ],
)
def test_a_malformed_reconcile_object_is_an_invalid_payload(bad: object, words: str) -> None:
    lead = make_lead({"agent_user": "1000", "phone_number": "7275551212"})
    message = Job("j1", lead).to_message()
    message["reconcile"] = bad
    with pytest.raises(InvalidPayload, match=words):
        Job.from_message(message)


def test_dlq_reconcile_usage_errors(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, log_format="json")
    nothing = run_cli(settings, "dlq", "reconcile")
    check(nothing, code=2)
    assert "IDs, --reason ambiguous, or --all" in nothing.stderr
    other = run_cli(settings, "dlq", "reconcile", "--reason", "dnc")
    check(other, code=2)
    both = run_cli(settings, "dlq", "reconcile", "--all", "x")
    check(both, code=2)
    empty = run_cli(settings, "dlq", "reconcile", "--all", "--yes")
    check(empty)
    assert "no ambiguous dead letters" in empty.stderr
    none = run_cli(settings, "dlq", "reconcile", "--all", "--dry-run")
    check(none)  # nothing to look up
    record_letter(DeadLetterStore(settings=settings), settings, reason="ambiguous")
    dry = run_cli(settings, "dlq", "reconcile", "--all", "--dry-run")
    check(dry, code=2)  # the dry run looks leads up: it needs VICIdial's settings
    assert "DISPATCHER_VICIDIAL_URL" in dry.stderr


def test_health_and_status_with_reconciliation_off(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, ambiguous="dead_letter", log_format="json")
    health = run_cli(settings, "health")
    check(health)
    assert "reconcile: off" in health.stdout
    status = run_cli(settings, "status")
    check(status)
    assert "reconcile: off" in status.stdout
