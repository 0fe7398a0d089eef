"""Leads for a list everywhere a job is made: the Python API, the dialers file's defaults,
the command line (flags and files), the HTTP intake; and what this release's worker does
with a list job (issue 27, part A; the workers serving it: tests/e2e/test_list_e2e.py).

Real Redis, the installed ``dispatcher`` command, the real intake app over HTTP, a real
worker process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from dispatcher import InvalidLead, enqueue_lead, enqueue_leads, job_status
from dispatcher.config.settings import Settings
from dispatcher.devtools.redis_server import free_port
from dispatcher.intake import create_app
from dispatcher.model.dialers import read_dialers_file
from dispatcher.model.errors import ConfigError, IdempotencyConflict
from dispatcher.model.jobs import Job
from dispatcher.ops.producer import fingerprint, prepare_job
from dispatcher.store.deadletter import DeadLetterStore
from tests.support.cli import cli_env
from tests.support.queues import queued_envelopes
from tests.support.settings import make_settings
from tests.support.waiting import wait_for

DISPATCHER = str(Path(sys.executable).with_name("dispatcher"))
LIST = {"list_id": "101", "campaign_id": "TESTCAMP"}


@pytest.fixture
def psettings(redis_url: str) -> Settings:
    return make_settings(redis_url)


def messages(settings: Settings) -> list[dict[str, Any]]:
    """The queued job messages, by phone number."""
    out = []
    for raw in queued_envelopes(settings):
        envelope = json.loads(raw)
        out.append(json.loads(base64.b64decode(envelope["body"]))[0][0])
    return sorted(out, key=lambda m: str(m["lead"]["phone_number"]))


def errors(exc: pytest.ExceptionInfo[InvalidLead]) -> dict[str, str]:
    return {e.field: e.message for e in exc.value.errors}


# ---------------------------------------------------------------------------------------------
# The Python API
# ---------------------------------------------------------------------------------------------


def test_enqueue_a_lead_for_a_list(psettings: Settings) -> None:
    job_id = enqueue_lead(
        **LIST,
        phone_number="(727) 555-1212",
        first_name="José",
        duplicate_check="DUPLIST",
        add_to_hopper=True,
        hopper_priority=5,
        callback={"datetime": "3DAYS", "comments": "after 5"},
        custom_fields={"favorite_color": "red"},
        idempotency_key="web-1",
        settings=psettings,
    )
    [message] = messages(psettings)
    assert message["v"] == 2 and message["job_id"] == job_id
    assert message["lead"] == {
        "list_id": "101",
        "phone_number": "7275551212",
        "phone_code": "1",
        "first_name": "Jose",
    }
    options = message["list_options"]
    assert (options["campaign_id"], options["duplicate_check"], options["hopper_priority"]) == (
        "TESTCAMP",
        "DUPLIST",
        5,
    )
    assert options["callback"]["datetime"] == "3DAYS" and options["list_exists_check"] is True
    job = Job.from_message(message)
    assert job.target == "list" and job.dnc_check and job.campaign_dnc_check
    status = job_status(job_id, settings=psettings)
    assert status is not None
    assert (status["state"], status["target"], status["target_list_id"]) == (
        "queued",
        "list",
        "101",
    )
    assert status["campaign_id"] == "TESTCAMP" and status["agent_user"] is None
    # The same key and lead: the same job; another option: a conflict.
    again = dict(LIST, phone_number="7275551212", first_name="Jose", duplicate_check="DUPLIST")
    again.update(add_to_hopper=True, hopper_priority=5, idempotency_key="web-1")
    again.update(callback={"datetime": "3DAYS", "comments": "after 5"})
    again.update(custom_fields={"favorite_color": "red"})
    assert enqueue_lead(**again, settings=psettings) == job_id
    with pytest.raises(IdempotencyConflict):
        enqueue_lead(**{**again, "duplicate_check": "DUPSYS"}, settings=psettings)
    assert len(messages(psettings)) == 1


def test_an_agent_job_is_as_before(psettings: Settings) -> None:
    job_id = enqueue_lead(agent_user="1000", phone_number="7275551212", settings=psettings)
    [message] = messages(psettings)
    assert message["v"] == 1 and "list_options" not in message
    status = job_status(job_id, settings=psettings)
    assert status is not None and status["target"] == "agent" and status["agent_user"] == "1000"
    assert status["target_list_id"] is None and status["existing_lead_id"] is None
    # The idempotency fingerprint of an agent job is the previous release's.
    job = Job.from_message(message)
    data = {"lead": job.lead.to_dict(), "dnc": True, "cdnc": True}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert fingerprint(job) == hashlib.sha256(text.encode()).hexdigest()[:20]


@pytest.mark.parametrize(
    ("lead", "named"),
    [
        (
            {"agent_user": "1000", "list_id": "101", "phone_number": "7275551212"},
            {"agent_user", "list_id"},
        ),
        ({"phone_number": "7275551212"}, {"agent_user", "list_id"}),
        (
            {"agent_user": " ", "list_id": "", "phone_number": "7275551212"},
            {"agent_user", "list_id"},
        ),
        ({"phone_number": "1", "rank": "x"}, {"agent_user", "list_id", "phone_number", "rank"}),
        ({"list_id": "101", "phone_number": "7275551212"}, {"campaign_id"}),
        (
            {"agent_user": "1000", "phone_number": "7275551212", "duplicate_check": "DUPLIST"},
            {"duplicate_check"},
        ),
        (
            {"agent_user": "1000", "phone_number": "7275551212", "callback": {"datetime": "NOW"}},
            {"callback"},
        ),
        (
            {
                **LIST,
                "phone_number": "7275551212",
                "first_name": "O'Brien",
                "duplicate_check": "DUPNAMEPHONELIST",
            },
            {"first_name"},
        ),
        ({**LIST, "phone_number": "7275551212", "entry_list_id": "1"}, set()),
        ({**LIST, "phone_number": "7275551212", "agent_user": None}, set()),
        ({"agent_user": "1000", "list_id": "  ", "phone_number": "7275551212"}, set()),
        ({"agent_user": "1000", "list_id": None, "phone_number": "7275551212"}, set()),
    ],
)
def test_targets_and_options_are_checked_at_enqueue(
    psettings: Settings, lead: dict[str, Any], named: set[str]
) -> None:
    if not named:
        assert enqueue_lead(**lead, settings=psettings)
        return
    with pytest.raises(InvalidLead) as info:
        enqueue_lead(**lead, settings=psettings)
    assert set(errors(info)) == named, info.value
    assert messages(psettings) == []


def test_both_or_neither_names_both_fields(psettings: Settings) -> None:
    with pytest.raises(InvalidLead) as info:
        enqueue_lead(
            agent_user="1000", list_id="101", phone_number="7275551212", settings=psettings
        )
    assert "not both" in errors(info)["agent_user"] and "not both" in errors(info)["list_id"]
    with pytest.raises(InvalidLead) as info:
        enqueue_lead(phone_number="7275551212", settings=psettings)
    assert "is required" in errors(info)["list_id"]


def test_campaign_dnc_check_off_needs_no_campaign(psettings: Settings) -> None:
    job_id = enqueue_lead(
        list_id="101", phone_number="7275551212", campaign_dnc_check=False, settings=psettings
    )
    status = job_status(job_id, settings=psettings)
    assert status is not None and status["campaign_id"] is None


def test_enqueue_leads_mixes_targets_and_names_bad_items(psettings: Settings) -> None:
    ids = enqueue_leads(
        [
            {"agent_user": "1000", "phone_number": "7275551212"},
            {**LIST, "phone_number": "7275551213", "custom_fields": {"favorite_color": "blue"}},
        ],
        settings=psettings,
    )
    assert sorted(m["v"] for m in messages(psettings)) == [1, 2] and len(ids) == 2
    with pytest.raises(InvalidLead) as info:
        enqueue_leads(
            [
                {**LIST, "phone_number": "7275551214"},
                {**LIST, "phone_number": "7275551215", "callback": {"datetime": "tomorrow"}},
                {"list_id": "101", "phone_number": "7275551216"},
            ],
            settings=psettings,
        )
    assert {(e.index, e.field) for e in info.value.errors} == {
        (1, "callback.datetime"),
        (2, "campaign_id"),
    }
    assert len(messages(psettings)) == 2


def test_a_list_job_s_dead_letter_replays_as_the_same_list_job(psettings: Settings) -> None:
    """Replay publishes the job through Job (Job.replayed): its list, options and version
    travel unchanged."""
    job = prepare_job(
        {**LIST, "phone_number": "7275551212", "custom_fields": {"favorite_color": "red"}},
        settings=psettings,
    ).evolve(attempts=3, seq=2)
    store = DeadLetterStore(settings=psettings)
    letter = store.record(
        job=job.to_message(),
        reason="unknown_dialer",
        error="waited",
        http_status=None,
        attempts=3,
        first_failed_at=None,
    )
    assert letter.replayable and store.replay(letter) == "replayed"
    [message] = messages(psettings)
    assert message["v"] == 2 and message["seq"] == 3 and message["attempts"] == 0
    assert Job.from_message(message) == job.replayed()


# ---------------------------------------------------------------------------------------------
# The dialers file's defaults for list jobs
# ---------------------------------------------------------------------------------------------

DIALERS = """
default = "east"

[dialers.east]
url = "http://127.0.0.1:1/agc/api.php"
user = "6666"
pass_env = "EAST_PASS"
list_id = "101"
campaign_id = "TESTCAMP"
duplicate_check = "duplist"

[dialers.east.list_campaigns]
"102" = "OTHERDNC"

[dialers.west]
url = "http://127.0.0.1:2/agc/api.php"
user = "6666"
pass_env = "EAST_PASS"
"""


@pytest.fixture
def with_dialers(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("EAST_PASS", "1234")
    path = tmp_path / "dialers.toml"
    path.write_text(DIALERS)
    return make_settings(redis_url, dialers_file=str(path))


def test_dialer_defaults_for_list_jobs(with_dialers: Settings) -> None:
    east = with_dialers.dialers.by_name["east"]
    assert (east.list_id, east.campaign_id, east.duplicate_check) == ("101", "TESTCAMP", "DUPLIST")
    assert east.campaign_for("102") == "OTHERDNC" and east.campaign_for("999") == "TESTCAMP"
    # No target: the dialer's default list, its campaign, its duplicate check.
    plain = prepare_job({"phone_number": "7275551212"}, settings=with_dialers)
    assert plain.lead.list_id == "101" and plain.list_options is not None
    assert (plain.list_options.campaign_id, plain.list_options.duplicate_check) == (
        "TESTCAMP",
        "DUPLIST",
    )
    other = prepare_job({"list_id": "102", "phone_number": "7275551212"}, settings=with_dialers)
    assert other.list_options is not None and other.list_options.campaign_id == "OTHERDNC"
    mine = prepare_job(
        {"phone_number": "7275551212", "campaign_id": "MINE", "duplicate_check": "NONE"},
        settings=with_dialers,
    )
    assert mine.list_options is not None
    assert (mine.list_options.campaign_id, mine.list_options.form()[1:2]) == (
        "MINE",
        [("list_exists_check", "Y")],
    )
    # An agent job is untouched by the list defaults.
    agent = prepare_job({"agent_user": "1000", "phone_number": "7275551212"}, settings=with_dialers)
    assert agent.list_options is None and agent.lead.agent_user == "1000"
    # west has no default list: a job naming neither is refused, naming both fields.
    with pytest.raises(InvalidLead) as info:
        prepare_job({"phone_number": "7275551212", "dialer": "west"}, settings=with_dialers)
    assert set(errors(info)) == {"agent_user", "list_id"}
    with pytest.raises(InvalidLead) as info:
        prepare_job(
            {"list_id": "101", "phone_number": "7275551212", "dialer": "west"},
            settings=with_dialers,
        )
    assert set(errors(info)) == {"campaign_id"}


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ('list_id = "0101"', "dialers.east.list_id: must not start with 0"),
        ('list_id = "12"', "dialers.east.list_id: must be 3-20 digits"),
        ("list_id = true", "dialers.east.list_id: must be a list id"),
        ('campaign_id = "TEST CAMP"', "dialers.east.campaign_id: must be 2-8"),
        ('duplicate_check = "DUP_SYS"', "dialers.east.duplicate_check: 'DUP_SYS' is not one"),
        ('duplicate_check = ""', "dialers.east.duplicate_check: must not be empty"),
        ('list_campaigns = { "x1" = "TESTCAMP" }', "dialers.east.list_campaigns.x1: the key"),
        ('list_campaigns = { "102" = "!" }', "dialers.east.list_campaigns.102: must be 2-8"),
        ('list_campaigns = "102"', "dialers.east.list_campaigns: must be a table"),
    ],
)
def test_bad_list_defaults_stop_the_start_naming_the_key(
    tmp_path: Path, line: str, named: str
) -> None:
    path = tmp_path / "dialers.toml"
    path.write_text(
        '[dialers.east]\nurl = "http://x/agc/api.php"\nuser = "6666"\npass_env = "P"\n' + line
    )
    with pytest.raises(ConfigError) as info:
        read_dialers_file(path, environ={"P": "1"}, defaults=make_settings("redis://x"))
    assert named in str(info.value)


# ---------------------------------------------------------------------------------------------
# The command line: flags, files, `dispatcher job --json`
# ---------------------------------------------------------------------------------------------


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [DISPATCHER, *args],
        env=cli_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def test_enqueue_flags_of_a_list_and_the_job_s_json(psettings: Settings) -> None:
    done = cli(
        psettings,
        "enqueue",
        "--list-id",
        "102",
        "--campaign-id",
        "TESTCAMP",
        "--phone",
        "727 555 1212",
        "--field",
        "first_name=Ann",
        "--duplicate-check",
        "DUPLIST30DAY",
        "--add-to-hopper",
        "--hopper-priority",
        "-3",
        "--callback-datetime",
        "2027-01-02 10:00:00",
        "--callback-type",
        "USERONLY",
        "--callback-user",
        "6666",
        "--custom",
        "favorite_color=red",
        "--no-list-exists-check",
        "--usacan-prefix-check",
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    [message] = messages(psettings)
    assert message["job_id"] == job_id and message["lead"]["list_id"] == "102"
    options = message["list_options"]
    assert options["callback"] == {
        "datetime": "2027-01-02 10:00:00",
        "type": "USERONLY",
        "user": "6666",
        "status": "",
        "comments": "",
    }
    assert (
        options["custom_fields"] == {"favorite_color": "red"} and options["hopper_priority"] == -3
    )
    assert options["list_exists_check"] is False and options["usacan_prefix_check"] is True
    shown = cli(psettings, "job", job_id, "--json")
    assert shown.returncode == 0
    status = json.loads(shown.stdout)
    assert (status["target"], status["target_list_id"], status["campaign_id"]) == (
        "list",
        "102",
        "TESTCAMP",
    )


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--agent-user", "1000", "--list-id", "101"], ["agent_user:", "list_id:", "not both"]),
        (["--list-id", "101"], ["campaign_id: is required with campaign_dnc_check"]),
        (
            ["--list-id", "101", "--campaign-id", "TESTCAMP", "--custom", "bad"],
            ["--custom", "NAME=VALUE"],
        ),
        (
            ["--list-id", "101", "--campaign-id", "TESTCAMP", "--duplicate-check", "Y"],
            ["duplicate_check: 'Y' is not one of VICIdial's checks"],
        ),
        (
            ["--agent-user", "1000", "--add-to-hopper"],
            ["add_to_hopper: an option of add_lead: only for a lead for a list"],
        ),
    ],
)
def test_bad_list_flags_exit_2_naming_the_field(
    psettings: Settings, args: list[str], needles: list[str]
) -> None:
    done = cli(psettings, "enqueue", "--phone", "7275551212", *args)
    assert done.returncode == 2, done.stderr
    for needle in needles:
        assert needle in done.stderr
    assert messages(psettings) == []


def test_a_csv_of_list_leads(psettings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    path.write_text(
        "phone_number,first_name,custom.favorite_color,callback_datetime,add_to_hopper,list_id\n"
        "7275551000,Ann,red,3DAYS,yes,\n"
        "7275551001,Bob,,,no,102\n"
        "7275551002,Cy,,,,\n"
    )
    done = cli(
        psettings, "enqueue", "--file", str(path), "--list-id", "101", "--campaign-id", "TESTCAMP"
    )
    assert done.returncode == 0, done.stderr
    first, second, third = messages(psettings)
    assert first["lead"]["list_id"] == "101" and second["lead"]["list_id"] == "102"
    assert first["list_options"]["custom_fields"] == {"favorite_color": "red"}
    assert first["list_options"]["callback"]["datetime"] == "3DAYS"
    assert first["list_options"]["add_to_hopper"] is True
    assert second["list_options"]["add_to_hopper"] is False
    assert third["list_options"]["campaign_id"] == "TESTCAMP" and third["v"] == 2
    # The same file again enqueues nothing twice (its rows' keys).
    again = cli(
        psettings, "enqueue", "--file", str(path), "--list-id", "101", "--campaign-id", "TESTCAMP"
    )
    assert again.returncode == 0 and len(messages(psettings)) == 3


def test_a_file_s_bad_list_rows_are_listed_by_line(psettings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "leads.jsonl"
    path.write_text(
        json.dumps(
            {**LIST, "phone_number": "7275551000", "custom_fields": {"favorite_color": "a;b"}}
        )
        + "\n"
        + json.dumps({"agent_user": "1000", "list_id": "101", "phone_number": "7275551001"})
        + "\n"
        + json.dumps({**LIST, "phone_number": "7275551002", "callback": {"datetime": "NOW"}})
        + "\n"
    )
    done = cli(psettings, "enqueue", "--file", str(path))
    assert done.returncode == 2
    assert "line 1: custom_fields.favorite_color:" in done.stderr
    assert "line 2: agent_user:" in done.stderr and "line 2: list_id:" in done.stderr
    assert "line 3" not in done.stderr and messages(psettings) == []


# ---------------------------------------------------------------------------------------------
# The HTTP intake
# ---------------------------------------------------------------------------------------------


TOKEN = "tok-list-7f3a9c1e5b2d4a6f8e0c"


@pytest.fixture
def intake_url(redis_url: str) -> Iterator[str]:
    """The real intake app on uvicorn, on a loopback port."""
    settings = make_settings(redis_url, intake_tokens=(TOKEN,))
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=10, message="uvicorn to start")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_the_intake_takes_list_leads(intake_url: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=intake_url, headers=auth, timeout=10) as c:
        body = {
            **LIST,
            "phone_number": "7275551212",
            "duplicate_check": "DUPLIST",
            "callback": {"datetime": "NOW", "type": "ANYONE"},
            "custom_fields": {"favorite_color": "red"},
        }
        reply = c.post("/v1/leads", json=body)
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["job_id"]
        status = c.get(f"/v1/jobs/{job_id}").json()
        assert (status["target"], status["target_list_id"], status["state"]) == (
            "list",
            "101",
            "queued",
        )
        bad = c.post(
            "/v1/leads", json={"agent_user": "1000", "list_id": "101", "phone_number": "7275551212"}
        )
        assert bad.status_code == 422
        assert {e["field"] for e in bad.json()["errors"]} == {"agent_user", "list_id"}
        batch = c.post(
            "/v1/leads:batch",
            json={
                "leads": [
                    {"agent_user": "1000", "phone_number": "7275551213"},
                    {**LIST, "phone_number": "7275551214", "hopper_priority": 3},
                    {**LIST, "phone_number": "7275551215"},
                ]
            },
        ).json()["results"]
        assert "job_id" in batch[0] and "job_id" in batch[2]
        assert batch[1]["errors"] == [
            {"field": "hopper_priority", "message": "has no effect without add_to_hopper"}
        ]
        document = c.get("/openapi.json").json()
        lead = document["components"]["schemas"]["Lead"]
        assert lead["required"] == ["phone_number"]
        assert {"list_id", "campaign_id", "duplicate_check", "callback", "custom_fields"} <= set(
            lead["properties"]
        )
        job = document["components"]["schemas"]["JobStatus"]["properties"]
        assert "duplicate" in job["state"]["enum"] and "existing_lead_id" in job
