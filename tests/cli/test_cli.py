"""The ``dispatcher`` command, run for real: a subprocess against a real Redis.

Every test starts the installed console script (``.venv/bin/dispatcher``) with
the ``DISPATCHER_*`` environment of its settings, exactly as an operator would,
and checks exit codes, stdout/stderr and what changed in Redis. Dead letters
here are written through the store's own write API (what a worker calls), so
that filters can be tested on chosen reasons, agents and ages; the tests with a
real worker, replay and crashes are in ``tests/e2e/test_cli_e2e.py``; the helpers are
``tests/support/cli.py``.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, get_args

import pytest
import redis
from click.testing import CliRunner
from structlog.testing import capture_logs

from dispatcher.cli import cli
from dispatcher.cli.common import CliContext
from dispatcher.config.settings import Settings
from dispatcher.devtools.redis_server import free_port
from dispatcher.ops import dlq as dlq_ops
from dispatcher.ops.dlq import ReconcileSummary, ReplaySummary, replay_letters
from dispatcher.store.deadletter import (
    DeadLetter,
    DeadLetterStore,
    ReconcileResult,
    ReplayResult,
)
from dispatcher.store.execution import new_token
from tests.support.cli import (
    JOB_KEYS,
    LETTER_KEYS,
    STATUS_KEYS,
    check,
    cli_env,
    json_lines,
    record_letter,
    run_cli,
    run_many,
    snapshot,
)
from tests.support.queues import queue_length, queued_envelopes
from tests.support.settings import make_settings

JOB_ID = re.compile(r"^[0-9a-f]{32}$")


# ---------------------------------------------------------------------------- helpers


def client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, decode_responses=True)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def rsettings(redis_url: str) -> Settings:
    """Settings with a real (flushed) Redis; no VICIdial needed by these commands."""
    return make_settings(redis_url)


@pytest.fixture
def store(rsettings: Settings) -> DeadLetterStore:
    return DeadLetterStore(settings=rsettings)


@pytest.fixture
def letters(store: DeadLetterStore, rsettings: Settings) -> dict[str, DeadLetter]:
    """Five dead letters of three reasons, two agents and ages from a minute to 40 days."""
    made = {
        "m1": record_letter(store, rsettings, phone="7275551001", age_s=60),
        "m2": record_letter(store, rsettings, phone="7275551002", age_s=120),
        "m3": record_letter(store, rsettings, phone="7275551003", age_s=180, first_name="Ann"),
        "dnc": record_letter(
            store, rsettings, agent="1000", phone="7275550000", reason="dnc", age_s=3 * 3600
        ),
        "auth": record_letter(
            store, rsettings, agent="1000", phone="7275551004", reason="auth", age_s=40 * 86400
        ),
    }
    return made


# ---------------------------------------------------------------------------- help


def _no_settings(self: CliContext) -> Any:
    raise AssertionError("help and usage errors must need neither settings nor Redis")


SUBCOMMANDS = [
    [],
    *(
        [name]
        for name in ("enqueue", "job", "status", "health", "dlq", "notify", "demo", "simulate")
    ),
    *(["dlq", name] for name in ("list", "show", "replay", "purge", "export")),
    *(["notify", name] for name in ("list", "retry", "purge")),
]


@pytest.mark.parametrize("args", SUBCOMMANDS, ids=lambda a: " ".join(a) or "dispatcher")
def test_help_exits_0(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # --help needs no settings and no Redis.
    monkeypatch.setattr(CliContext, "settings", property(_no_settings))
    result = CliRunner().invoke(cli, [*args, "--help"], prog_name="dispatcher")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: dispatcher")


def test_help_of_the_installed_command() -> None:
    # No Redis and a broken setting: --help needs neither.
    env = cli_env(None, DISPATCHER_MAX_ATTEMPTS="not-a-number")
    results = run_many(None, [["--help"], ["dlq", "replay", "--help"], ["--version"]], env=env)
    for result in results:
        check(result, 0)
    top, replay_help, version = results
    assert "Exit codes: 0 success, 1 operation failed, 2 usage or invalid input" in " ".join(
        top.stdout.split()
    )
    for command in ("enqueue", "job", "status", "dlq", "demo"):
        assert f"  {command} " in top.stdout
    for option in ("--dry-run", "--rate", "--yes", "--include-dnc", "--all", "--reason"):
        assert option in replay_help.stdout
    assert version.stdout.startswith("dispatcher, version ")
    # `python -m dispatcher.cli` is the same command.
    module = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "dlq", "replay", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    check(module, 0)
    assert module.stdout == replay_help.stdout


# ---------------------------------------------------------------------------- bad input


USAGE_ERRORS: list[tuple[list[str], list[str]]] = [
    (["dlq", "list", "--reason", "bogus"], ["--reason", "'bogus' is not one of"]),
    (["dlq", "list", "--since", "yesterday"], ["--since", "'yesterday'"]),
    (["dlq", "list", "--since", "2026-01-01T10:00:00"], ["--since", "time zone"]),
    (["dlq", "list", "--limit", "0"], ["--limit"]),
    (["dlq", "export", "--since", "later"], ["--since", "'later'"]),
    (["dlq", "replay"], ["say which dead letters"]),
    (["dlq", "replay", "--dry-run"], ["say which dead letters"]),
    (["dlq", "replay", "--all", "--reason", "auth"], ["--all cannot be combined"]),
    (["dlq", "replay", "--all", "0123abcd"], ["--all cannot be combined"]),
    (["dlq", "replay", "--reason", "unknown_reason"], ["--reason", "'unknown_reason'"]),
    (["dlq", "replay", "--all", "--rate", "0"], ["--rate"]),
    (["dlq", "replay", "--all", "--rate", "fast"], ["--rate"]),
    (["dlq", "replay", "--reason", "dnc"], ["DNC list", "--include-dnc"]),
    (["dlq", "replay", "--reason", "campaign_dnc", "--yes"], ["DNC list", "--include-dnc"]),
    (["dlq", "purge"], ["say which dead letters"]),
    (["dlq", "purge", "--all", "--reason", "dnc"], ["--all cannot be combined"]),
    (["dlq", "purge", "--older-than", "soon"], ["--older-than", "duration"]),
    (["dlq", "frobnicate"], ["No such command"]),
    (["dlq", "show"], ["Missing argument"]),
    (["job"], ["Missing argument"]),
    (
        ["enqueue", "--agent-user", "1000", "--phone", "7275551212", "--field", "bogus"],
        ["NAME=VALUE"],
    ),
    (["enqueue", "--file", "/nonexistent/leads.csv"], ["--file", "does not exist"]),
    (["enqueue", "--skip-invalid"], ["need --file"]),
    (["enqueue", "--file", "/dev/null", "--phone", "7275551212"], ["cannot be combined"]),
]


@pytest.mark.parametrize(
    ("args", "needles"), USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS]
)
def test_usage_errors_exit_2_with_a_clear_message(
    args: list[str], needles: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CliContext, "settings", property(_no_settings))
    result = CliRunner().invoke(cli, args, prog_name="dispatcher")
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # not a crash
    assert result.stdout == ""  # stdout carries results only
    for needle in needles:
        assert needle in result.stderr


BAD_INPUT: list[tuple[list[str], list[str]]] = [
    # The installed command too: usage errors exit 2, no traceback.
    (["dlq", "replay", "--all", "--reason", "auth", "--yes"], ["--all cannot be combined"]),
    (["dlq", "list", "--since", "yesterday"], ["--since", "'yesterday'"]),
    # Bad leads: every bad field named, nothing enqueued.
    (["enqueue", "--agent-user", "1000", "--phone", "72755x1212"], ["invalid lead: phone_number"]),
    (["enqueue", "--agent-user", "1000"], ["phone_number: is required"]),
    (
        ["enqueue", "--agent-user", "1", "--phone", "12", "--field", "colour=red"],
        ["agent_user:", "phone_number:", "colour: unknown field"],
    ),
    (
        ["enqueue", "--agent-user", "1000", "--phone", "7275551212", "--field", "gender=Q"],
        ["gender: must be one of M, F, U"],
    ),
]


def test_bad_input_to_the_installed_command_exits_2_and_changes_nothing(
    rsettings: Settings, letters: dict[str, DeadLetter]
) -> None:
    before = snapshot(rsettings)
    results = run_many(rsettings, [args for args, _ in BAD_INPUT])
    for (args, needles), result in zip(BAD_INPUT, results, strict=True):
        check(result, 2)
        assert result.stdout == "", args
        for needle in needles:
            assert needle in result.stderr, (args, needle, result.stderr)
    assert snapshot(rsettings) == before
    assert queue_length(rsettings) == 0


def test_a_bad_setting_exits_2_and_an_unreachable_redis_exits_1(rsettings: Settings) -> None:
    bad_setting = run_cli(None, "status", env=cli_env(rsettings, DISPATCHER_MAX_ATTEMPTS="lots"))
    check(bad_setting, 2)
    assert "DISPATCHER_MAX_ATTEMPTS" in bad_setting.stderr
    nowhere = cli_env(rsettings, DISPATCHER_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    results = run_many(
        None,
        [
            ["status", "--json"],
            ["dlq", "list"],
            ["dlq", "export"],
            ["dlq", "replay", "--all", "--yes"],
            ["job", "0" * 32],
            ["enqueue", "--agent-user", "1000", "--phone", "7275551212"],
        ],
        env=nowhere,
    )
    assert time.monotonic() - started < 20  # an error, never a hang
    for result in results:
        check(result, 1)
        assert "unreachable" in result.stderr and result.stdout == ""


# ---------------------------------------------------------------------------- enqueue


def test_enqueue_one_lead_prints_the_job_id_alone_and_keeps_flags_and_key(
    rsettings: Settings,
) -> None:
    args = [
        "enqueue",
        "--agent-user",
        "1000",
        "--phone",
        "(727) 555-1212",
        "--field",
        "first_name=José",
        "--no-campaign-dnc-check",
        "--idempotency-key",
        "webform-8812",
    ]
    first = run_cli(rsettings, *args)
    check(first)
    assert JOB_ID.match(first.stdout.rstrip("\n")) and first.stdout.count("\n") == 1
    job_id = first.stdout.strip()
    again = run_cli(rsettings, *args)
    check(again)
    assert again.stdout.strip() == job_id  # same key: the first job's id, nothing enqueued
    assert queue_length(rsettings) == 1

    shown = run_cli(rsettings, "job", job_id, "--json")
    check(shown)
    status = json.loads(shown.stdout)
    assert set(status) >= JOB_KEYS
    assert status["job_id"] == job_id and status["state"] == "queued"
    assert status["attempts"] == 0 and status["lead_id"] is None and status["reason"] is None
    human = run_cli(rsettings, "job", job_id)
    check(human)
    assert "queued" in human.stdout and job_id in human.stdout

    [envelope] = queued_envelopes(rsettings)
    message = json.loads(base64.b64decode(json.loads(envelope)["body"]))[0][0]
    assert message["lead"]["phone_number"] == "7275551212"
    assert message["lead"]["first_name"] == "Jose"
    assert message["dnc_check"] is True and message["campaign_dnc_check"] is False
    assert message["idempotency_key"] == "webform-8812"


def test_job_with_an_unknown_id_exits_1(rsettings: Settings) -> None:
    for args in (["job", "f" * 32], ["job", "f" * 32, "--json"]):
        result = run_cli(rsettings, *args)
        check(result, 1)
        assert "no job" in result.stderr and result.stdout == ""


CSV_WITH_BAD_ROWS = (
    "agent_user,phone_number,first_name,vendor_lead_code\n"  # line 1
    "1000,7275551212,Bob,V1\n"  # 2 good
    "\n"  # 3 blank: ignored
    "1000,72755x1213,Al,V2\n"  # 4 bad phone
    "1000,7275551214,Cy,V3,extra\n"  # 5 one cell too many
    "x,7275551215,Di,V4\n"  # 6 agent too short
    '1000,7275551216,"Ed\nward",V5\n'  # 7-8 a newline in a name (one row from line 7)
    "1000,7275551217,Flo,V6\n"  # 9 good
)


def test_enqueue_csv_lists_every_bad_row_by_line_and_enqueues_nothing(
    rsettings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "leads.csv"
    path.write_text(CSV_WITH_BAD_ROWS)
    result = run_cli(rsettings, "enqueue", "--file", str(path))
    check(result, 2)
    assert result.stdout == ""
    err = result.stderr
    assert "line 4: phone_number:" in err
    assert "line 5: 5 cells, the header has 4" in err
    assert "line 6: agent_user:" in err
    assert "line 7: first_name:" in err
    assert not re.search(r"line (2|3|8|9)\b", err)
    assert "4 bad row(s), 2 good: nothing enqueued" in err
    assert queue_length(rsettings) == 0


def test_enqueue_csv_skip_invalid_enqueues_the_good_rows_and_lists_the_bad(
    rsettings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "leads.csv"
    path.write_text(CSV_WITH_BAD_ROWS)
    result = run_cli(rsettings, "enqueue", "--file", str(path), "--skip-invalid", "--print-ids")
    check(result, 0)
    ids = result.stdout.split()
    assert len(ids) == 2 and all(JOB_ID.match(i) for i in ids)
    assert "line 4: phone_number:" in result.stderr and "line 7: first_name:" in result.stderr
    assert "enqueued 2 lead(s)" in result.stderr and "4 bad row(s) skipped" in result.stderr
    assert queue_length(rsettings) == 2


def test_enqueue_jsonl_reports_line_numbers(rsettings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "leads.jsonl"
    path.write_text(
        '{"agent_user": "1000", "phone_number": "7275551300", "first_name": "Ann"}\n'  # 1
        "\n"  # 2 blank
        "{not json\n"  # 3
        "[1, 2]\n"  # 4
        '{"agent_user": "1000", "phone_number": "7275551301", "dnc_check": "maybe"}\n'  # 5
        '{"agent_user": "1000", "phone_number": "7275551302", "gender": "Q", "x": 1}\n'  # 6
        '{"agent_user": "1000", "phone_number": "7275551303", "dnc_check": false}\n'  # 7
    )
    strict = run_cli(rsettings, "enqueue", "--file", str(path))
    check(strict, 2)
    err = strict.stderr
    assert "line 3: not JSON" in err and "line 4: not a JSON object" in err
    assert "line 5: dnc_check: must be true or false" in err
    assert "line 6: gender:" in err and "line 6: x: unknown field" in err
    assert not re.search(r"line (1|2|7)\b", err)
    assert queue_length(rsettings) == 0

    lenient = run_cli(rsettings, "enqueue", "--file", str(path), "--skip-invalid")
    check(lenient, 0)
    assert "enqueued 2 lead(s)" in lenient.stderr and "4 bad row(s) skipped" in lenient.stderr
    assert queue_length(rsettings) == 2


def test_idempotency_column_makes_a_second_import_add_nothing(
    rsettings: Settings, tmp_path: Path
) -> None:
    csv_path = tmp_path / "vendor.csv"
    csv_path.write_text(
        "agent_user,phone_number,ext_id\n"
        + "".join(f"1000,72755520{n:02d},E{n}\n" for n in range(30))
    )
    args = ["enqueue", "--file", str(csv_path), "--idempotency-column", "ext_id", "--print-ids"]
    first = run_cli(rsettings, *args, "--batch-size", "7")  # several batches
    check(first)
    assert "enqueued 30 lead(s)" in first.stderr
    second = run_cli(rsettings, *args)
    check(second)
    assert "enqueued 0 lead(s); 30 already enqueued before" in second.stderr
    assert second.stdout.split() == first.stdout.split()  # the first import's job ids
    assert queue_length(rsettings) == 30

    # A row without a value in that column is a bad row, named by line.
    csv_path.write_text("agent_user,phone_number,ext_id\n1000,7275552100,\n")
    missing = run_cli(
        rsettings, "enqueue", "--file", str(csv_path), "--idempotency-column", "ext_id"
    )
    check(missing, 2)
    assert "line 2: ext_id: empty" in missing.stderr


def test_enqueue_file_that_cannot_be_read_exits_2(rsettings: Settings, tmp_path: Path) -> None:
    latin1 = tmp_path / "excel.csv"
    latin1.write_bytes(
        "agent_user,phone_number,first_name\n1000,7275551212,José\n".encode("cp1252")
    )
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    header_only = tmp_path / "header.csv"
    header_only.write_text("agent_user,phone_number\n")
    twice = tmp_path / "twice.csv"
    twice.write_text("agent_user,phone_number,phone_number\n1000,7275551212,7275551213\n")
    results = run_many(
        rsettings,
        [["enqueue", "--file", str(p)] for p in (latin1, empty, header_only, twice)],
    )
    for result in results:
        check(result, 2)
    assert "not UTF-8" in results[0].stderr and "nothing enqueued" in results[0].stderr
    assert "no rows to enqueue" in results[1].stderr
    assert "no rows to enqueue" in results[2].stderr
    assert "line 1: the header row names a column twice" in results[3].stderr
    assert queue_length(rsettings) == 0


# ---------------------------------------------------------------------------- dlq list / show


def test_dlq_list_json_is_every_record_newest_first_with_the_design_keys(
    rsettings: Settings, letters: dict[str, DeadLetter]
) -> None:
    result = run_cli(rsettings, "dlq", "list", "--json")
    check(result)
    records = json.loads(result.stdout)
    assert [r["id"] for r in records] == [letters[k].id for k in ("m1", "m2", "m3", "dnc", "auth")]
    for record in records:
        assert set(record) == LETTER_KEYS
        assert record["id"] == record["job_id"]
        assert (record["target"], record["target_list_id"]) == ("agent", None)
        assert record["http_status"] == 200 and record["attempts"] == 1 and record["replays"] == 0
        job = record["job"]
        assert job["job_id"] == record["id"]
        assert {"lead", "dnc_check", "campaign_dnc_check", "idempotency_key"} <= set(job)
    assert records[2]["job"]["lead"]["first_name"] == "Ann"
    assert records[0] == letters["m1"].to_dict()
    # The same answer twice: stable output.
    again = run_cli(rsettings, "dlq", "list", "--json")
    assert again.stdout == result.stdout


def test_dlq_list_filters_combine(rsettings: Settings, letters: dict[str, DeadLetter]) -> None:
    one_day_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 86400))
    cases: list[tuple[list[str], list[str]]] = [
        (["--reason", "manual_list_undefined"], ["m1", "m2", "m3"]),
        (["--agent-user", "1000"], ["dnc", "auth"]),
        (["--since", "150s"], ["m1", "m2"]),
        (["--since", one_day_ago], ["m1", "m2", "m3", "dnc"]),
        (["--limit", "2"], ["m1", "m2"]),
        (["--agent-user", "1000", "--since", "1d", "--limit", "5"], ["dnc"]),
        (["--reason", "manual_list_undefined", "--since", "2h", "--limit", "1"], ["m1"]),
        (["--reason", "dnc", "--agent-user", "1003"], []),
    ]
    results = run_many(rsettings, [["dlq", "list", "--json", *args] for args, _ in cases])
    for (args, expected), result in zip(cases, results, strict=True):
        check(result)
        got = [r["id"] for r in json.loads(result.stdout)]
        assert got == [letters[k].id for k in expected], args


def test_dlq_list_table_shows_the_letters_and_counts_per_reason(
    rsettings: Settings, letters: dict[str, DeadLetter]
) -> None:
    full, exact, limited, filtered = run_many(
        rsettings,
        [
            ["dlq", "list"],
            ["dlq", "list", "--limit", "5"],
            ["dlq", "list", "--limit", "2"],
            ["dlq", "list", "--agent-user", "1000"],
        ],
    )
    for result in (full, exact, limited, filtered):
        check(result)
    for letter in letters.values():
        assert letter.id in full.stdout
    assert "7275551003" in full.stdout and "manual_list_undefined" in full.stdout
    # The footer counts the whole store, per reason, most first.
    footer = "in store: manual_list_undefined 3, "
    assert footer in full.stdout and "dnc 1" in full.stdout and "auth 1" in full.stdout
    assert "(first" not in full.stdout  # five letters, limit 50: nothing more to see
    assert "(first" not in exact.stdout  # five letters, limit 5: nothing more either
    assert letters["m1"].id in limited.stdout and letters["m3"].id not in limited.stdout
    assert "(first 2; use --limit or filters to see more)" in limited.stdout
    assert letters["dnc"].id in filtered.stdout and letters["m1"].id not in filtered.stdout
    assert footer in filtered.stdout


def test_dlq_list_on_an_empty_store(rsettings: Settings) -> None:
    table, as_json = run_many(rsettings, [["dlq", "list"], ["dlq", "list", "--json"]])
    check(table)
    check(as_json)
    assert "the dead-letter store is empty" in table.stdout
    assert json.loads(as_json.stdout) == []


def test_dlq_show_prints_the_whole_record(
    rsettings: Settings, letters: dict[str, DeadLetter]
) -> None:
    letter = letters["m3"]
    as_json, human, unknown, unknown_json = run_many(
        rsettings,
        [
            ["dlq", "show", letter.id, "--json"],
            ["dlq", "show", letter.id],
            ["dlq", "show", "nope"],
            ["dlq", "show", "nope", "--json"],
        ],
    )
    check(as_json)
    record = json.loads(as_json.stdout)
    assert set(record) == LETTER_KEYS and record == letter.to_dict()
    check(human)
    for text in (letter.id, "manual_list_undefined", letter.error, '"first_name": "Ann"'):
        assert text in human.stdout
    assert '"dnc_check": true' in human.stdout
    for result in (unknown, unknown_json):
        check(result, 1)
        assert "no dead letter 'nope'" in result.stderr and result.stdout == ""


# ---------------------------------------------------------------------------- export / purge


def test_dlq_export_writes_one_record_per_line(
    rsettings: Settings, letters: dict[str, DeadLetter]
) -> None:
    everything, by_reason, listed = run_many(
        rsettings,
        [
            ["dlq", "export"],
            ["dlq", "export", "--reason", "manual_list_undefined"],
            ["dlq", "list", "--json"],
        ],
    )
    check(everything)
    check(by_reason)
    assert everything.stdout.endswith("\n")
    records = json_lines(everything.stdout)
    assert records == json.loads(listed.stdout)  # the `dlq show --json` shape, newest first
    assert all(set(r) == LETTER_KEYS for r in records)
    assert "exported 5 dead letter(s)" in everything.stderr
    assert [r["id"] for r in json_lines(by_reason.stdout)] == [
        letters[k].id for k in ("m1", "m2", "m3")
    ]


def test_dlq_purge_older_than_asks_first_and_deletes_only_old_letters(
    rsettings: Settings, store: DeadLetterStore, letters: dict[str, DeadLetter]
) -> None:
    before = snapshot(rsettings)
    refused = run_cli(rsettings, "dlq", "purge", "--older-than", "30d", input="n\n")
    check(refused, 1)
    assert "Delete 1 dead letter(s) for good?" in refused.stderr
    assert "nothing changed" in refused.stderr
    no_answer = run_cli(rsettings, "dlq", "purge", "--all")  # stdin at EOF: not a yes
    assert no_answer.returncode != 0
    assert snapshot(rsettings) == before

    # A named letter still has to be older than --older-than.
    young = run_cli(rsettings, "dlq", "purge", letters["m1"].id, "--older-than", "1h", "--yes")
    check(young)
    assert "no dead letters match" in young.stderr
    assert store.get(letters["m1"].id) is not None

    done = run_cli(rsettings, "dlq", "purge", "--older-than", "30d", input="y\n")
    check(done)
    assert "purged 1 dead letter(s)" in done.stderr
    assert store.get(letters["auth"].id) is None
    assert store.counts() == {"manual_list_undefined": 3, "dnc": 1}

    by_id = run_cli(rsettings, "dlq", "purge", letters["m2"].id, "--yes")
    check(by_id)
    by_reason = run_cli(rsettings, "dlq", "purge", "--reason", "dnc", "--yes")
    check(by_reason)
    assert store.counts() == {"manual_list_undefined": 2}
    rest = run_cli(rsettings, "dlq", "purge", "--all", "--yes")
    check(rest)
    assert "purged 2 dead letter(s)" in rest.stderr
    assert len(store) == 0 and store.counts() == {}
    with client(rsettings) as r:
        assert not list(r.scan_iter(match=f"{rsettings.key_prefix}:dl:*"))


# ---------------------------------------------------------------------------- replay (no worker)


def test_replay_dry_run_and_a_refused_confirmation_change_nothing(
    rsettings: Settings, store: DeadLetterStore, letters: dict[str, DeadLetter]
) -> None:
    before = snapshot(rsettings)
    dry = run_cli(rsettings, "dlq", "replay", "--all", "--dry-run")
    check(dry)
    lines = dry.stdout.splitlines()
    assert len(lines) == 4  # the dnc letter is left out without --include-dnc
    for key in ("m1", "m2", "m3", "auth"):
        assert any(letters[key].id in line for line in lines)
    assert letters["dnc"].id not in dry.stdout
    assert "4 would be replayed; nothing changed" in dry.stderr
    assert "1 DNC letter(s) would be left alone" in dry.stderr
    assert "--include-dnc" in dry.stderr

    by_reason, by_agent = run_many(
        rsettings,
        [
            ["dlq", "replay", "--reason", "manual_list_undefined", "--dry-run"],
            ["dlq", "replay", "--agent-user", "1000", "--dry-run"],
        ],
    )
    check(by_reason)
    assert len(by_reason.stdout.splitlines()) == 3
    check(by_agent)
    [line] = by_agent.stdout.splitlines()
    assert letters["auth"].id in line and "agent=1000" in line
    assert "1 DNC letter(s) would be left alone" in by_agent.stderr

    refused = run_cli(rsettings, "dlq", "replay", "--reason", "manual_list_undefined", input="n\n")
    check(refused, 1)
    assert "Replay 3 dead letter(s)?" in refused.stderr and "nothing changed" in refused.stderr
    assert snapshot(rsettings) == before
    assert queue_length(rsettings) == 0


def test_replay_by_id_and_json_summary(
    rsettings: Settings, store: DeadLetterStore, letters: dict[str, DeadLetter]
) -> None:
    target = letters["m2"]
    result = run_cli(rsettings, "dlq", "replay", target.id, "--yes", "--json")
    check(result)
    summary = json.loads(result.stdout)
    assert {k: summary[k] for k in ("replayed", "already_added", "gone", "unreplayable")} == {
        "replayed": 1,
        "already_added": 0,
        "gone": 0,
        "unreplayable": 0,
    }
    assert summary["skipped_dnc"] == summary["skipped_ambiguous"] == summary["busy"] == 0
    assert store.get(target.id) is None and len(store) == 4
    assert queue_length(rsettings) == 1
    job = json.loads(run_cli(rsettings, "job", target.id, "--json").stdout)
    assert job["state"] == "queued" and job["attempts"] == 0 and job["reason"] is None
    # The same id again: nothing left to replay, nothing sent twice.
    again = run_cli(rsettings, "dlq", "replay", target.id, "--yes")
    check(again)
    assert "no dead letters match" in again.stderr
    assert queue_length(rsettings) == 1


def test_replay_of_a_letter_under_a_live_claim_says_busy_and_keeps_it(
    rsettings: Settings, store: DeadLetterStore, letters: dict[str, DeadLetter]
) -> None:
    target = letters["m1"]
    backend = store.backend
    # The job's execution record expired (DISPATCHER_JOB_TTL_S) while its letter lives
    # on, and a late copy of the job is being called right now: a worker holds its claim.
    backend.redis.delete(backend.keys.execution(target.job_id))
    dialer = rsettings.dialers.resolve(None)
    assert dialer is not None
    claim = backend.execution.claim(
        target.job_id,
        seq=1,
        token=new_token(),
        lease_s=60,
        ttl=600,
        rate_interval_s=0.0,
        worker="w1@host",
        max_rate_wait_s=1.0,
        server=dialer.name,
    )
    assert claim.verdict == "ok"
    result = run_cli(rsettings, "dlq", "replay", target.id, "--yes", "--json")
    check(result)
    summary = json.loads(result.stdout)
    assert summary["busy"] == 1 and summary["replayed"] == 0
    assert list(summary) == [
        "replayed",
        "already_added",
        "gone",
        "unreplayable",
        "skipped_dnc",
        "skipped_ambiguous",
        "busy",
    ]
    assert store.get(target.id) is not None and queue_length(rsettings) == 0
    said = run_cli(rsettings, "dlq", "replay", target.id, "--yes")
    assert "1 held by a worker right now (try again)" in said.stderr


def test_the_summaries_count_every_outcome_the_store_can_answer() -> None:
    """A new outcome of replay or reconcile cannot be counted by one surface and lost."""
    assert set(get_args(ReplayResult)) | {"skipped_dnc", "skipped_ambiguous"} == set(
        ReplaySummary.FIELDS
    )
    assert set(get_args(ReconcileResult)) | {"left_alone"} == set(ReconcileSummary.FIELDS)
    outcomes = {"replayed": 3, "done": 1, "missing": 2, "busy": 4, "skipped_dnc": 5}
    summary = ReplaySummary.of(outcomes)
    assert (summary.replayed, summary.already_added, summary.gone, summary.busy) == (3, 1, 2, 4)
    assert "4 held by a worker right now" in summary.sentence()
    assert "5 DNC and 0 ambiguous left alone" in summary.sentence()


def test_a_letter_knows_its_phone() -> None:
    def letter(job: dict[str, Any]) -> DeadLetter:
        return DeadLetter("i", "i", "auth", "", 200, 1, None, None, None, 0, job=job)

    assert letter({"lead": {"phone_number": "7275551212"}}).phone == "7275551212"
    assert letter({"lead": {}}).phone == ""
    assert letter({"lead": "not a lead"}).phone == ""  # an invalid_payload letter
    assert letter({}).phone == ""


def test_replay_many_answers_each_letter_in_its_place(
    store: DeadLetterStore, rsettings: Settings, letters: dict[str, DeadLetter]
) -> None:
    gone = letters["m3"]
    assert store.replay(gone) == "replayed"
    bad = record_letter(store, rsettings, phone="7275551009", reason="invalid_payload")
    results = store.replay_many([letters["m1"], gone, bad, letters["m2"]])
    assert results == ["replayed", "missing", "unreplayable", "replayed"]
    assert store.get(letters["m1"].id) is None and store.get(letters["m2"].id) is None
    assert store.get(bad.id) is not None
    assert queue_length(rsettings) == 3


def test_replay_all_goes_in_batches_and_counts_and_logs_every_letter(
    store: DeadLetterStore, rsettings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dlq_ops, "REPLAY_BATCH", 4)
    made = [record_letter(store, rsettings, phone=f"72755520{i:02d}") for i in range(10)]
    trips: list[int] = []
    replay_many = store.replay_many
    monkeypatch.setattr(store, "replay_many", lambda b: trips.append(len(b)) or replay_many(b))
    seen: list[str] = []
    with capture_logs() as logged:
        outcomes = replay_letters(
            store, store.iter(), on_each=lambda letter, result: seen.append(result)
        )
    assert trips == [4, 4, 2]
    assert outcomes["replayed"] == 10 and seen == ["replayed"] * 10
    replayed = [e["job_id"] for e in logged if e["event"] == "dlq.replayed"]
    assert sorted(replayed) == sorted(letter.job_id for letter in made)
    assert len(store) == 0 and queue_length(rsettings) == 10


# ---------------------------------------------------------------------------- status


def test_status_json_shape_and_pause_state(
    rsettings: Settings, store: DeadLetterStore, letters: dict[str, DeadLetter]
) -> None:
    enqueued = run_cli(rsettings, "enqueue", "--agent-user", "1000", "--phone", "7275551212")
    check(enqueued)
    until = time.time() + 120
    with client(rsettings) as r:
        r.hset(
            store.keys.pause("127.0.0.1:8088"),
            mapping={
                "until": f"{until:.6f}",
                "reason": "auth",
                "kind": "refused",
                "since": f"{time.time():.6f}",
            },
        )
        r.sadd(store.keys.pauses, "127.0.0.1:8088")
    as_json, human = run_many(rsettings, [["status", "--json"], ["status"]])
    check(as_json)
    status = json.loads(as_json.stdout)
    assert set(status) >= STATUS_KEYS
    assert status["queued"] == 1 and status["retrying"] == 0
    assert status["dead_letters"] == {"manual_list_undefined": 3, "dnc": 1, "auth": 1}
    assert 40 * 86400 <= status["oldest_dead_letter_age_s"] < 40 * 86400 + 60
    assert status["workers"] == []
    pause = status["paused"]["127.0.0.1:8088"]
    assert pause["reason"] == "auth" and pause["kind"] == "refused"
    assert 100 < pause["remaining_s"] <= 120 and pause["until"]
    check(human)
    assert "queued: 1" in human.stdout and "manual_list_undefined" in human.stdout
    assert "PAUSED" in human.stdout and "127.0.0.1:8088" in human.stdout


def test_status_of_an_empty_fleet(rsettings: Settings) -> None:
    as_json, human = run_many(rsettings, [["status", "--json"], ["status"]])
    check(as_json)
    status = json.loads(as_json.stdout)
    assert {k: status[k] for k in STATUS_KEYS} == {
        "queued": 0,
        "retrying": 0,
        "dead_letters": {},
        "oldest_dead_letter_age_s": None,
        "workers": [],
        "paused": {},
    }
    check(human)
    assert "dead letters: none" in human.stdout and "not paused" in human.stdout


def test_replay_all_leaves_ambiguous_letters_alone_unless_included(
    rsettings: Settings, store: DeadLetterStore, letters: dict[str, DeadLetter]
) -> None:
    ambiguous = record_letter(store, rsettings, phone="7275551009", reason="ambiguous")
    dry = run_cli(rsettings, "dlq", "replay", "--all", "--dry-run")
    check(dry)
    assert ambiguous.id not in dry.stdout
    assert "1 ambiguous letter(s) would be left alone" in dry.stderr
    assert "--include-ambiguous" in dry.stderr
    by_reason = run_cli(rsettings, "dlq", "replay", "--reason", "ambiguous", "--yes")
    check(by_reason, 2)
    assert "--include-ambiguous" in by_reason.stderr
    replayed = run_cli(rsettings, "dlq", "replay", "--all", "--yes", "--json")
    check(replayed)
    assert json.loads(replayed.stdout)["replayed"] == 4
    assert store.get(ambiguous.id) is not None
    included = run_cli(rsettings, "dlq", "replay", "--all", "--include-ambiguous", "--yes")
    check(included)
    assert store.get(ambiguous.id) is None
    # By id it is explicit: no flag needed.
    again = record_letter(store, rsettings, phone="7275551010", reason="ambiguous")
    check(run_cli(rsettings, "dlq", "replay", again.id, "--yes"))
    assert store.get(again.id) is None
