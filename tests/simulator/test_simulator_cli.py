"""``dispatcher simulate`` / ``python -m dispatcher.simulator``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from dispatcher.simulator import FAULT_KINDS, Simulator, simulate_command


def test_help_explains_the_simulator() -> None:
    result = CliRunner().invoke(simulate_command, ["--help"])
    assert result.exit_code == 0
    for needle in (
        "agc/api.php",
        "demo state",
        "curl",
        "--state",
        "--fail-rate",
        "6666",
        *FAULT_KINDS,
    ):
        assert needle in result.output


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--fail-rate", "2"], "--fail-rate"),
        (["--fail-with", "explode"], "--fail-with"),
        (["--port", "70000"], "--port"),
        (["--latency-ms", "-1"], "--latency-ms"),
        (["--state", "/nonexistent/state.json"], "--state"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_options_exit_2(args: list[str], named: str) -> None:
    result = CliRunner().invoke(simulate_command, args)
    assert result.exit_code == 2
    assert named in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"users": {"6666": {"pass": "1", "api_access": "yes"}}}', "users.6666.api_access"),
        ('{"campaignz": {}}', "campaignz: unknown key"),
    ],
)
def test_bad_state_file_exits_2(tmp_path: Path, content: str, message: str) -> None:
    state = tmp_path / "state.json"
    state.write_text(content)
    result = CliRunner().invoke(simulate_command, ["--state", str(state)])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_fail_with_without_rate_is_noted() -> None:
    with Simulator() as busy:  # a busy port makes the command stop right after the note
        result = CliRunner().invoke(
            simulate_command, ["--fail-with", "reset", "--port", str(busy.port)]
        )
    assert "--fail-with has no effect without --fail-rate" in result.output


def test_port_in_use_exits_1() -> None:
    with Simulator() as busy:
        result = CliRunner().invoke(simulate_command, ["--port", str(busy.port)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{busy.port}" in result.output


def _start(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher.simulator", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if "listening on " in line:
            return proc, line.rsplit("listening on ", 1)[1].strip()
    proc.kill()
    raise AssertionError(f"simulator did not start: {proc.communicate()}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_real_command_serves_a_state_file(tmp_path: Path, sig: signal.Signals) -> None:
    state = tmp_path / "state.json"
    state.write_text(
        json.dumps(
            {
                "users": {"api": {"pass": "s3cret"}},
                "agents": {"2000": "SALES"},
                "campaigns": {"SALES": {"manual_dial_list_id": "700"}},
            }
        )
    )
    proc, url = _start(["--port", "0", "--state", str(state), "--seed", "3"])
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/agc/api.php")
        reply = httpx.post(
            url,
            data={
                "source": "test",
                "user": "api",
                "pass": "s3cret",
                "function": "external_add_lead",
                "agent_user": "2000",
                "value": "7275551212",
                "phone_code": "1",
            },
            timeout=5,
        )
        assert reply.text == "SUCCESS: lead added - 7275551212|SALES|700|1|2000\n"
        wrong = httpx.get(url, params={"source": "test", "user": "api", "pass": "guess99"})
        assert "|api|guess99|0|1|BAD|" in wrong.text  # the wire answer echoes it...
    finally:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "Traceback" not in err
    assert "s3cret" not in err and "guess99" not in err  # ...the per-call log never does
    assert "|api|<redacted>|0|1|BAD|" in err
    assert "SUCCESS: lead added" in err
    assert "1 leads added" in err


def test_help_and_command_serve_add_lead(tmp_path: Path) -> None:
    help_text = CliRunner().invoke(simulate_command, ["--help"]).output
    for needle in ("add_lead", "--add-lead-race-ms", "custom_fields", "php_timezone", "lists"):
        assert needle in help_text
    state = tmp_path / "state.json"
    state.write_text(
        json.dumps(
            {
                "users": {"api": {"pass": "s3cret"}},
                "campaigns": {"SALES": {"manual_dial_list_id": "700"}},
                "lists": {"701": {"campaign_id": "SALES"}},
                "php_timezone": "UTC",
            }
        )
    )
    proc, url = _start(["--port", "0", "--state", str(state), "--add-lead-race-ms", "5"])
    try:
        nonagent = url.replace("/agc/api.php", "/vicidial/non_agent_api.php")
        params = {"source": "test", "user": "api", "pass": "s3cret", "function": "add_lead"}
        reply = httpx.get(
            nonagent,
            params={**params, "phone_number": "7275551212", "list_id": "701", "tz_method": "NANPA"},
            timeout=5,
        )
        assert reply.text == (
            "NOTICE: add_lead NANPA options disabled, NANPA prefix data not loaded - 0|api\n"
            "SUCCESS: add_lead LEAD HAS BEEN ADDED - 7275551212|701|1|-5.00|api\n"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in err
    assert "GET add_lead agent=- phone=7275551212 -> 200 SUCCESS: add_lead LEAD HAS BEEN" in err
    assert "stopped after 0 calls and 1 Non-Agent calls, 1 leads added" in err
