"""Settings validation and secret hygiene; log redaction and phone masking."""

from __future__ import annotations

import datetime
import io
import json
import logging
import time
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from dispatcher.config import logs as logs_module
from dispatcher.config.logs import (
    Redactor,
    UtcStamper,
    configure_logging,
    mask_phone,
    redact_vicidial_line,
)
from dispatcher.config.settings import SETTINGS_VARIABLES, Settings
from dispatcher.model.errors import ConfigError


def test_defaults_match_the_design() -> None:
    s = Settings.from_mapping({})
    assert s.redis_url == "redis://localhost:6379/0"
    assert (s.dnc_check, s.campaign_dnc_check) == (True, True)
    assert (s.max_attempts, s.retry_base_s, s.retry_cap_s) == (8, 2.0, 300.0)
    assert (s.agent_wait_s, s.http_timeout_s, s.rate_limit) == (900.0, 10.0, 0.0)
    assert s.vicidial_source == "dispatcher" and s.phone_code == "1"
    assert s.vicidial_non_latin is False


def test_non_latin_setting() -> None:
    assert Settings.from_mapping({"DISPATCHER_VICIDIAL_NON_LATIN": "true"}).vicidial_non_latin
    assert not Settings.from_mapping({"DISPATCHER_VICIDIAL_NON_LATIN": "0"}).vicidial_non_latin


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DISPATCHER_MAX_ATTEMPTS", "many"),
        ("DISPATCHER_MAX_ATTEMPTS", "0"),
        ("DISPATCHER_DNC_CHECK", "maybe"),
        ("DISPATCHER_VICIDIAL_NON_LATIN", "cyrillic"),
        ("DISPATCHER_RETRY_BASE_S", "-1"),
        ("DISPATCHER_HTTP_TIMEOUT_S", "nan"),
        ("DISPATCHER_VICIDIAL_SOURCE", "a"),
        ("DISPATCHER_VICIDIAL_SOURCE", "has space"),
        ("DISPATCHER_REDIS_URL", "localhost:6379"),
        ("DISPATCHER_VICIDIAL_URL", "ftp://x/agc/api.php"),
        ("DISPATCHER_LOG_FORMAT", "xml"),
        ("DISPATCHER_AMBIGUOUS", "sometimes"),
        ("DISPATCHER_VISIBILITY_TIMEOUT_S", "10"),
        ("DISPATCHER_MAX_ATTEMTPS", "3"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping({variable: value})
    assert variable in str(info.value)


def test_secrets_never_in_repr_or_errors() -> None:
    s = Settings.from_mapping(
        {
            "DISPATCHER_REDIS_URL": "redis://:redispw@localhost:6379/0",
            "DISPATCHER_VICIDIAL_PASS": "hunter22",
            "DISPATCHER_INTAKE_TOKENS": "tok-a,tok-b",
        }
    )
    text = repr(s) + str(s)
    for secret in ("redispw", "hunter22", "tok-a", "tok-b"):
        assert secret not in text
    assert set(s.secrets) == {"redispw", "hunter22", "tok-a", "tok-b"}
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping({"DISPATCHER_VICIDIAL_PASS": "hunter22", "DISPATCHER_QUEUE": "a b"})
    assert "hunter22" not in str(info.value)


def test_worker_refuses_to_start_without_vicidial() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping({}).require_vicidial()
    assert "DISPATCHER_VICIDIAL_URL" in str(info.value)


def test_env_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# comment\nDISPATCHER_MAX_ATTEMPTS=3\nexport DISPATCHER_VICIDIAL_USER='6666'\n"
        'DISPATCHER_PHONE_CODE="44"\n'
    )
    s = Settings.from_env({"DISPATCHER_PHONE_CODE": "1"}, env_file=env_file)
    assert (s.max_attempts, s.vicidial_user, s.phone_code) == (3, "6666", "1")


def test_every_field_has_a_variable() -> None:
    assert "DISPATCHER_REDIS_URL" in SETTINGS_VARIABLES
    assert "DISPATCHER_VICIDIAL_PASS" in SETTINGS_VARIABLES
    assert len(SETTINGS_VARIABLES) == len(set(SETTINGS_VARIABLES))


def test_mask_phone() -> None:
    assert mask_phone("7275551212") == "******1212"
    assert mask_phone("12") == "**"


def test_redact_vicidial_auth_line() -> None:
    line = (
        "ERROR: Invalid Username/Password: |6666|pw9|BAD|0|api|SELECT count(*) from "
        "vicidial_users where user='6666' and pass='pw9';|"
    )
    out = redact_vicidial_line(line)
    assert "pw9" not in out and out.count("[REDACTED]") == 2


def test_redactor_processor_masks_and_redacts() -> None:
    processor = Redactor(["sekret"])
    event = processor(
        None,
        "info",
        {
            "event": "lead.dead_lettered",
            "phone": "7275551212",
            "error": "ERROR: add_lead PHONE NUMBER IN DNC - 7275551212|1000",
            "nested": {"detail": "pass is sekret"},
            "job_id": "abc",
        },
    )
    assert event["phone"] == "******1212"
    assert "7275551212" not in event["error"] and "******1212" in event["error"]
    assert event["nested"]["detail"] == "pass is [REDACTED]"
    assert event["job_id"] == "abc"


def test_configured_pipeline_writes_one_json_line_with_timestamp_and_level() -> None:
    stream = io.StringIO()
    configure_logging(fmt="json", secrets=["topsecret"], stream=stream, force=True)
    try:
        structlog.contextvars.bind_contextvars(job_id="j-1")
        structlog.get_logger().info("lead.added", phone="7275551212", note="topsecret")

        logging.getLogger("celery.worker").warning("foreign topsecret 7275551212")
    finally:
        structlog.contextvars.clear_contextvars()
        logs_module.reset_logging()
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert len(lines) == 2
    ours, foreign = lines
    assert ours["event"] == "lead.added" and ours["job_id"] == "j-1"
    assert ours["level"] == "info" and ours["timestamp"].endswith("Z")
    assert ours["phone"] == "******1212" and ours["note"] == "[REDACTED]"
    assert "topsecret" not in foreign["event"] and "7275551212" not in foreign["event"]


def test_capture_logs_sees_events() -> None:
    with capture_logs() as logs:
        structlog.get_logger().info("lead.enqueued", job_id="x")
    assert logs == [{"event": "lead.enqueued", "job_id": "x", "log_level": "info"}]


def test_the_timestamp_is_written_as_structlogs_iso_utc_stamper_writes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, theirs = UtcStamper(), structlog.processors.TimeStamper(fmt="iso", utc=True)
    # Whole seconds, halves of a microsecond (rounded to even), a carry to the next second.
    cases = (1796024379.5525002, 1796024379.0, 1796024380.000001, 946684799.999999)
    cases += (1953571005.8919725, 1699601365.5983775, 1796024379.9999996)
    for now in cases:
        monkeypatch.setattr(time, "time", lambda now=now: now)
        expected = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
        stamped = ours(None, "info", {})["timestamp"]
        assert stamped == expected.isoformat().replace("+00:00", "Z")
    monkeypatch.undo()
    # The live clock: the same shape as structlog's, a moment apart.
    a = ours(None, "info", {})["timestamp"]
    b = theirs(None, "info", {})["timestamp"]
    apart = datetime.datetime.fromisoformat(b) - datetime.datetime.fromisoformat(a)
    assert a.endswith("Z") and datetime.timedelta(0) <= apart < datetime.timedelta(seconds=1)
