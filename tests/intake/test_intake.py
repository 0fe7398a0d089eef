"""The HTTP intake (`dispatcher serve`) against a real Redis, over real HTTP.

The server is the real app on uvicorn, on a loopback port: in a thread for most
tests, and as the real ``dispatcher serve`` subprocess where the
process itself matters (refusing to start, the access log). Nothing is mocked:
leads really land on the queue, and the metrics test runs a real worker process
against the VICIdial simulator, then checks the scrape against what happened.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from prometheus_client.parser import text_string_to_metric_families
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess, settings_env
from dispatcher.devtools.redis_server import RedisServer, free_port
from dispatcher.intake import create_app
from dispatcher.intake.metrics import FleetSnapshot, render_metrics, server_id
from dispatcher.intake.openapi import openapi_document
from dispatcher.model.dialers import Dialer
from dispatcher.model.errors import ConfigError, all_reasons
from dispatcher.ops.producer import job_status
from dispatcher.simulator import Simulator
from tests.support.intake import ThreadedIntake, start_intake
from tests.support.queues import queue_length
from tests.support.settings import ROOT, make_settings
from tests.support.waiting import wait_for

TOKEN_A = "tok-A-3f9c2d8e61b04a7f9e2c"
TOKEN_B = "tok-B-77a1c0de5b9e4f12aa03"
AUTH = {"Authorization": f"Bearer {TOKEN_A}"}
MIB = 1024 * 1024


# --- a real server on loopback --------------------------------------------------------------


@dataclass
class Intake:
    url: str
    settings: Settings

    def client(self, token: str | None = TOKEN_A, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10, **kwargs)


@pytest.fixture
def serve() -> Iterator[Callable[[Settings], Intake]]:
    """Start an intake for some settings; stopped at the end of the test."""
    started: list[ThreadedIntake] = []

    def start(settings: Settings) -> Intake:
        running = start_intake(settings)
        started.append(running)
        return Intake(running.url, settings)

    yield start
    for running in started:
        running.stop()


@pytest.fixture(scope="module")
def module_intake(redis_server: RedisServer) -> Iterator[Intake]:
    settings = make_settings(redis_server.url, intake_tokens=(TOKEN_A, TOKEN_B))
    running = start_intake(settings)
    yield Intake(running.url, settings)
    running.stop()


@pytest.fixture
def intake(module_intake: Intake, redis_url: str) -> Intake:
    """The module's server, on a freshly flushed Redis (redis_url flushes it)."""
    assert module_intake.settings.redis_url == redis_url
    return module_intake


@pytest.fixture
def client(intake: Intake) -> Iterator[httpx.Client]:
    with intake.client() as c:
        yield c


def _queue_length(settings: Settings) -> int:
    return queue_length(settings)


LEAD = {"agent_user": "1000", "phone_number": "(727) 555-1212", "first_name": "Bob"}


# --- POST /v1/leads -------------------------------------------------------------------------


def test_lead_is_enqueued_and_answered_202_with_its_job_id(
    intake: Intake, client: httpx.Client
) -> None:
    reply = client.post("/v1/leads", json={**LEAD, "dnc_check": False})
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["job_id"]
    assert reply.json() == {"job_id": job_id}
    assert reply.headers["location"] == f"/v1/jobs/{job_id}"
    status = job_status(job_id, settings=intake.settings)
    assert status is not None and status["state"] == "queued"
    assert _queue_length(intake.settings) == 1
    # The job route shows the same thing as `dispatcher job --json`.
    shown = client.get(f"/v1/jobs/{job_id}")
    assert shown.status_code == 200 and shown.json() == status


def test_invalid_lead_is_422_naming_every_bad_field_and_enqueues_nothing(
    intake: Intake, client: httpx.Client
) -> None:
    reply = client.post(
        "/v1/leads",
        json={
            "agent_user": "x",
            "phone_number": "727-CALL-NOW",
            "gender": "Q",
            "date_of_birth": "1990-02-31",
            "favourite_colour": "blue",
            "dnc_check": "yes",
        },
    )
    assert reply.status_code == 422
    errors = reply.json()["errors"]
    fields = {e["field"] for e in errors}
    assert {
        "agent_user",
        "phone_number",
        "gender",
        "date_of_birth",
        "favourite_colour",
        "dnc_check",
    } <= fields
    assert all(isinstance(e["message"], str) and e["message"] for e in errors)
    assert _queue_length(intake.settings) == 0
    missing = client.post("/v1/leads", json={})
    assert missing.status_code == 422
    assert {"agent_user", "phone_number"} <= {e["field"] for e in missing.json()["errors"]}
    not_object = client.post("/v1/leads", json=[LEAD])
    assert not_object.status_code == 422 and not_object.json()["errors"][0]["field"] == "body"


def test_idempotency_key_header_returns_the_first_job_with_200(
    intake: Intake, client: httpx.Client
) -> None:
    headers = {"Idempotency-Key": "webform-8812"}
    first = client.post("/v1/leads", json=LEAD, headers=headers)
    again = client.post("/v1/leads", json={**LEAD, "phone_number": "7275551212"}, headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["job_id"] == first.json()["job_id"]
    # Another lead under the same key is a conflict (DESIGN.md): 409, the key's job named.
    other = client.post("/v1/leads", json={**LEAD, "first_name": "Robert"}, headers=headers)
    assert other.status_code == 409 and other.json()["job_id"] == first.json()["job_id"]
    # The body's idempotency_key is the same key.
    body_key = client.post("/v1/leads", json={**LEAD, "idempotency_key": "webform-8812"})
    assert body_key.status_code == 200 and body_key.json() == first.json()
    assert _queue_length(intake.settings) == 1
    conflict = client.post("/v1/leads", json={**LEAD, "idempotency_key": "other"}, headers=headers)
    assert conflict.status_code == 422
    assert conflict.json()["errors"][0]["field"] == "Idempotency-Key"
    bad = client.post("/v1/leads", json=LEAD, headers={"Idempotency-Key": "x" * 201})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "Idempotency-Key"
    assert _queue_length(intake.settings) == 1


# --- POST /v1/leads:batch -------------------------------------------------------------------


def test_batch_with_mixed_rows_enqueues_the_valid_ones_and_reports_each_in_order(
    intake: Intake, client: httpx.Client
) -> None:
    leads: list[Any] = [
        {"agent_user": "1000", "phone_number": "7275551001"},
        {"agent_user": "1000", "phone_number": "oops", "gender": "X"},
        "not a lead",
        {"agent_user": "1001", "phone_number": "7275551003", "idempotency_key": "k1"},
        {"agent_user": "1001", "phone_number": "7275551003", "idempotency_key": "k1"},
        {"agent_user": "1002", "phone_number": "+1 727 555 1005", "campaign_dnc_check": False},
    ]
    reply = client.post("/v1/leads:batch", json={"leads": leads})
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert [r["index"] for r in results] == list(range(len(leads)))
    assert {e["field"] for e in results[1]["errors"]} == {"phone_number", "gender"}
    assert results[2]["errors"][0]["field"] == "lead"
    for i in (0, 3, 5):
        assert results[i]["created"] is True and "errors" not in results[i]
        state = job_status(results[i]["job_id"], settings=intake.settings)
        assert state is not None and state["state"] == "queued"
    # The same key twice in one batch: one job.
    assert results[4] == {"index": 4, "job_id": results[3]["job_id"], "created": False}
    assert _queue_length(intake.settings) == 3


def test_batch_body_shape_and_size_are_checked(intake: Intake, client: httpx.Client) -> None:
    lead = {"agent_user": "1000", "phone_number": "7275551212"}
    too_many = client.post("/v1/leads:batch", json={"leads": [lead] * 1001})
    assert too_many.status_code == 422 and too_many.json()["errors"][0]["field"] == "leads"
    for body in ({}, {"leads": "x"}, [lead], {"leads": [lead], "lead": [lead]}):
        assert client.post("/v1/leads:batch", json=body).status_code == 422, body
    assert client.post("/v1/leads:batch", json={"leads": []}).json() == {"results": []}
    full = client.post("/v1/leads:batch", json={"leads": [lead] * 1000})
    assert full.status_code == 200 and len(full.json()["results"]) == 1000
    assert _queue_length(intake.settings) == 1000


# --- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-token",
        f"Bearer {TOKEN_A}x",
        f"Bearer {TOKEN_A[:-1]}",
        f"Basic {TOKEN_A}",
        f"{TOKEN_A}",
        "Bearer",
        f"Bearer {TOKEN_A} {TOKEN_B}",
        'Bearer ""',
        f"Token {TOKEN_A}",
    ],
)
def test_missing_wrong_or_malformed_token_gets_the_same_401(
    intake: Intake, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with intake.client(token=None) as anon:
        replies = [
            anon.post("/v1/leads", json=LEAD, headers=headers),
            anon.post("/v1/leads:batch", json={"leads": [LEAD]}, headers=headers),
            anon.get("/v1/jobs/whatever", headers=headers),
            anon.get("/v1/no-such-route", headers=headers),
            anon.get("/", headers=headers),  # closed by default, not only /v1
        ]
    for reply in replies:
        assert reply.status_code == 401
        assert reply.content == b'{"error":"missing or invalid bearer token"}'
        assert reply.headers["www-authenticate"] == "Bearer"
    assert _queue_length(intake.settings) == 0


def test_every_configured_token_works_for_rotation(intake: Intake) -> None:
    for token in (TOKEN_A, TOKEN_B):
        with intake.client(token=token) as c:
            assert c.post("/v1/leads", json=LEAD).status_code == 202
    # The scheme is case-insensitive (RFC 7235).
    with intake.client(token=None) as c:
        reply = c.post("/v1/leads", json=LEAD, headers={"Authorization": f"bearer {TOKEN_B}"})
        assert reply.status_code == 202
    assert _queue_length(intake.settings) == 3


def test_healthz_metrics_and_openapi_need_no_token(intake: Intake) -> None:
    with intake.client(token=None) as anon:
        assert anon.get("/healthz").json() == {"status": "ok"}
        assert anon.get("/metrics").status_code == 200
        document = anon.get("/openapi.json").json()
    assert {"/v1/leads", "/v1/leads:batch", "/v1/jobs/{job_id}", "/healthz", "/metrics"} <= set(
        document["paths"]
    )


# --- malformed and oversized requests -------------------------------------------------------


def test_body_over_1_mib_is_413(intake: Intake, client: httpx.Client) -> None:
    big = json.dumps({**LEAD, "comments": "x" * MIB}).encode()
    reply = client.post("/v1/leads", content=big, headers={"Content-Type": "application/json"})
    assert reply.status_code == 413
    assert "larger than" in reply.json()["error"]

    # Chunked (no Content-Length): refused as soon as the limit is passed.
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 65536

    with intake.client() as c:
        chunked = c.post("/v1/leads:batch", content=chunks())
    assert chunked.status_code == 413
    # Just under the limit is read (and refused for what it is, not for its size).
    under = json.dumps({**LEAD, "comments": "x" * (MIB - 200)}).encode()
    assert len(under) <= MIB
    assert client.post("/v1/leads", content=under).status_code == 422
    assert _queue_length(intake.settings) == 0


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"",
        b"   ",
        b"{'agent_user': '1000'}",
        b"\xff\xfe\x00garbage",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"agent_user": ' + b"9" * 5000 + b"}",
        b'{"agent_user": "1000", "phone_number": NaN}',
        b"null",
        b"42",
    ],
    ids=lambda b: repr(b[:20]),
)
def test_malformed_json_is_a_json_400_or_422_never_500(
    intake: Intake, client: httpx.Client, body: bytes
) -> None:
    for path in ("/v1/leads", "/v1/leads:batch"):
        reply = client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert reply.status_code in (400, 422), (path, reply.status_code, reply.text)
        assert reply.json()["errors"][0]["field"]
    assert _queue_length(intake.settings) == 0


def test_unknown_job_is_404(client: httpx.Client) -> None:
    for job_id in ("0" * 32, "not-a-job", "x" * 5000, "%00", "a%2Fb"):
        reply = client.get(f"/v1/jobs/{job_id}")
        assert reply.status_code == 404, job_id
        assert "error" in reply.json()
    assert client.get("/v1/nothing-here").status_code == 404
    assert client.get("/v1/leads").status_code == 405


# --- Redis down -----------------------------------------------------------------------------


def test_healthz_is_503_and_writes_are_503_when_redis_is_down(
    serve: Callable[[Settings], Intake],
) -> None:
    dead = serve(make_settings(f"redis://127.0.0.1:{free_port()}/0", intake_tokens=(TOKEN_A,)))
    with dead.client() as c:
        started = time.monotonic()
        health = c.get("/healthz")
        assert health.status_code == 503 and health.json() == {"status": "unavailable"}
        assert time.monotonic() - started < 5
        write = c.post("/v1/leads", json=LEAD)
        assert write.status_code == 503 and write.headers["retry-after"] == "5"
        assert "127.0.0.1" not in write.text  # the Redis address stays in the log
        assert c.get("/v1/jobs/" + "0" * 32).status_code == 503
        metrics = _scrape(c)
    assert metrics["dispatcher_redis_up"][()] == 0
    assert "dispatcher_queue_depth" not in metrics


# --- the real process -----------------------------------------------------------------------


def _intake_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.update(settings_env(settings))
    env.update(DISPATCHER_ENV_FILE="/nonexistent", DISPATCHER_LOG_FORMAT="json")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def test_serve_refuses_to_start_without_tokens(redis_url: str) -> None:
    env = _intake_env(make_settings(redis_url), DISPATCHER_INTAKE_TOKENS=" , ")
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "serve", "--port", str(free_port())],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert "DISPATCHER_INTAKE_TOKENS is empty" in done.stderr
    with pytest.raises(ConfigError, match="DISPATCHER_INTAKE_TOKENS"):
        create_app(make_settings(redis_url))


def test_real_process_serves_and_its_access_log_holds_no_token_or_phone(
    redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, intake_tokens=(TOKEN_A, TOKEN_B))
    port = free_port()
    log_path = tmp_path / "intake.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dispatcher.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=_intake_env(settings),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, log_path.read_text()
                return False

        wait_for(healthy, timeout=20, message="the intake process to answer")
        with httpx.Client(base_url=base, headers=AUTH, timeout=10) as c:
            reply = c.post(
                f"/v1/leads?token={TOKEN_B}",
                json={"agent_user": "1000", "phone_number": "7275559876"},
                headers={"Idempotency-Key": "form-1"},
            )
            assert reply.status_code == 202
            bad = c.post("/v1/leads", json={"agent_user": "1000", "phone_number": "72755598X6"})
            assert bad.status_code == 422
            assert c.get(f"/v1/jobs/{reply.json()['job_id']}").json()["state"] == "queued"
            assert c.get("/v1/jobs/7275551111").status_code == 404
        assert httpx.post(f"{base}/v1/leads", json=LEAD).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
    text = log_path.read_text()
    # A graceful stop: uvicorn finishes, then re-raises the SIGTERM it caught.
    assert code in (0, -signal.SIGTERM), text
    assert "Finished server process" in text
    for secret in (TOKEN_A, TOKEN_B, "7275559876", "72755598X6", "7275551111", "form-1"):
        assert secret not in text
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    requests = [e for e in events if e["event"] == "intake.request"]
    assert [(e["method"], e["path"], e["status"]) for e in requests if e["path"] != "/healthz"] == [
        ("POST", "/v1/leads", 202),
        ("POST", "/v1/leads", 422),
        ("GET", f"/v1/jobs/{reply.json()['job_id']}", 200),
        ("GET", "/v1/jobs/******1111", 404),
        ("POST", "/v1/leads", 401),
    ]
    assert all(e["timestamp"].endswith("Z") and "duration_ms" in e for e in requests)
    [enqueued] = [e for e in events if e["event"] == "lead.enqueued"]
    assert enqueued["phone"] == "******9876"


# --- fuzzing from the OpenAPI document ------------------------------------------------------


_OPERATIONS = [
    pytest.param(path, method.upper(), mode, id=f"{method.upper()} {path} {mode.value}")
    for path, item in openapi_document()["paths"].items()
    for method, spec in item.items()
    # Negative data needs some input to break: the routes without parameters have none.
    for mode in (
        [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
        if "requestBody" in spec or "parameters" in spec
        else [GenerationMode.POSITIVE]
    )
]


@pytest.mark.parametrize(("path", "method", "mode"), _OPERATIONS)
def test_fuzzed_requests_from_the_openapi_document_never_get_a_5xx(
    intake: Intake, path: str, method: str, mode: GenerationMode
) -> None:
    """Every operation, with valid and invalid input: no 5xx, and answers match the document.

    Schemathesis' default checks run (server errors, status codes, content types,
    response schemas, auth really enforced, 405 for other methods) except two that
    do not fit by design: the lead schema is deliberately looser than the lead rules
    (a schema-valid lead may still be a 422 naming the bad field), and the batch
    route reports a schema-violating lead in its 200 results instead of refusing the
    whole batch.
    """
    schema = schemathesis.openapi.from_url(f"{intake.url}/openapi.json")
    operation = schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=50,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        case.call_and_validate(
            headers=AUTH, excluded_checks=[positive_data_acceptance, negative_data_rejection]
        )

    check()


# --- /metrics -------------------------------------------------------------------------------


def _scrape(client: httpx.Client) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """/metrics as {sample name: {sorted labels: value}}."""
    reply = client.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_metrics_render_cumulative_buckets_and_every_reason() -> None:
    snapshot = FleetSnapshot(
        stats={
            "enqueued": 7,
            "added": 3,
            "latency_bucket:0.005": 1,
            "latency_bucket:0.25": 2,
            "latency_bucket:+Inf": 1,
            "latency_count": 4,
            "latency_sum_ms": 12500.5,
            "dead_lettered:dnc": 2,
        },
        queued=4,
        retrying=1,
        dead_letters={"dnc": 2},
        oldest_dead_letter_age_s=12.5,
        workers_alive=2,
        paused={"east": 30.0},
        lanes={("east", "realtime"): (3, 4.5), ("east", "bulk"): (1, None)},
    )
    dialers = {
        "east": Dialer("east", url="https://vici.example/agc/api.php", rate_limit=20),
        "west": Dialer("west", url="http://other/agc/api.php"),
    }
    text = render_metrics(snapshot, dialers=dialers).decode()
    parsed = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    bucket = "dispatcher_vicidial_call_duration_seconds_bucket"
    assert parsed[(bucket, (("le", "0.005"),))] == 1
    assert parsed[(bucket, (("le", "0.1"),))] == 1
    assert parsed[(bucket, (("le", "0.25"),))] == 3
    assert parsed[(bucket, (("le", "10.0"),))] == 3
    assert parsed[(bucket, (("le", "+Inf"),))] == 4
    assert parsed[("dispatcher_vicidial_call_duration_seconds_count", ())] == 4
    assert parsed[("dispatcher_vicidial_call_duration_seconds_sum", ())] == 12.5005
    for reason in all_reasons():
        expected = 2 if reason == "dnc" else 0
        assert parsed[("dispatcher_leads_dead_lettered_total", (("reason", reason),))] == expected
        assert parsed[("dispatcher_dead_letters", (("reason", reason),))] == expected
    east = (("dialer", "east"), ("server", "vici.example:443"))
    assert parsed[("dispatcher_vicidial_paused", east)] == 1
    assert parsed[("dispatcher_vicidial_paused", (("dialer", "west"), ("server", "other:80")))] == 0
    assert parsed[("dispatcher_dialer_rate_limit", (("dialer", "east"),))] == 20
    realtime = (("dialer", "east"), ("lane", "realtime"))
    assert parsed[("dispatcher_queue_depth", realtime)] == 3
    assert parsed[("dispatcher_queue_oldest_age_seconds", realtime)] == 4.5
    assert (
        parsed[("dispatcher_queue_oldest_age_seconds", (("dialer", "east"), ("lane", "bulk")))] == 0
    )
    assert parsed[("dispatcher_leads_enqueued_total", ())] == 7
    assert parsed[("dispatcher_workers_alive", ())] == 2


@pytest.mark.slow
def test_metrics_after_a_real_run_match_what_happened(
    redis_url: str,
    simulator: Simulator,
    start_worker: Callable[..., WorkerProcess],
    serve: Callable[[Settings], Intake],
) -> None:
    settings = make_settings(redis_url, simulator, intake_tokens=(TOKEN_A,))
    intake = serve(settings)
    start_worker(settings)
    leads = [
        {"agent_user": "1000", "phone_number": "7275551212", "idempotency_key": "a"},
        {"agent_user": "1000", "phone_number": "7275551213"},
        {"agent_user": "1000", "phone_number": "7275550000"},  # on the DNC list
        {"agent_user": "1003", "phone_number": "7275551214"},  # campaign without a list
    ]
    with intake.client() as c:
        ids = [c.post("/v1/leads", json=lead).json()["job_id"] for lead in leads]
        # A repeat of the first lead's key: nothing new enqueued.
        assert c.post("/v1/leads", json=leads[0]).status_code == 200

        def final(job_id: str) -> dict[str, Any] | None:
            reply = c.get(f"/v1/jobs/{job_id}").json()
            return reply if reply["state"] in ("added", "dead") else None

        states = [wait_for(functools.partial(final, j), message=f"job {j}") for j in ids]
        assert [s["state"] for s in states] == ["added", "added", "dead", "dead"]
        assert [s["reason"] for s in states[2:]] == ["dnc", "manual_list_undefined"]
        m = _scrape(c)

    def one(name: str, **labels: str) -> float:
        return m[name][tuple(sorted(labels.items()))]

    assert one("dispatcher_redis_up") == 1
    assert one("dispatcher_leads_enqueued_total") == 4
    assert one("dispatcher_leads_added_total") == 2
    assert one("dispatcher_leads_dead_lettered_total", reason="dnc") == 1
    assert one("dispatcher_leads_dead_lettered_total", reason="manual_list_undefined") == 1
    assert one("dispatcher_leads_dead_lettered_total", reason="auth") == 0
    assert one("dispatcher_retries_total") == 0
    assert one("dispatcher_duplicates_suppressed_total") == 0
    assert one("dispatcher_dead_letters", reason="dnc") == 1
    assert one("dispatcher_dead_letters", reason="manual_list_undefined") == 1
    assert sum(m["dispatcher_dead_letters"].values()) == 2
    assert 0 <= one("dispatcher_dead_letter_oldest_age_seconds") < 60
    assert sum(m["dispatcher_queue_depth"].values()) == 0
    assert one("dispatcher_retries_waiting") == 0
    assert one("dispatcher_workers_alive") == 1
    assert one("dispatcher_vicidial_paused", dialer="default", server=server_id(simulator.url)) == 0
    # The latency histogram: the two successful calls, cumulative buckets.
    buckets = m["dispatcher_vicidial_call_duration_seconds_bucket"]
    counts = [v for _, v in sorted(buckets.items(), key=lambda kv: float(kv[0][0][1]))]
    assert counts == sorted(counts) and counts[-1] == 2
    assert one("dispatcher_vicidial_call_duration_seconds_count") == 2
    assert 0 < one("dispatcher_vicidial_call_duration_seconds_sum") < 20


def test_a_lead_with_tens_of_thousands_of_keys_is_refused_at_once(
    intake: Intake, client: httpx.Client
) -> None:
    """45,000 keys in 1 MiB once blocked the event loop for seconds while validated."""
    body = {**LEAD, **{f"k{i:05d}": "" for i in range(45_000)}}
    content = json.dumps(body, separators=(",", ":")).encode()
    assert len(content) <= MIB
    reply = client.post("/v1/leads", content=content)
    assert reply.status_code == 422
    [error] = reply.json()["errors"]
    assert error["field"] == "body" and "too many fields" in error["message"]
    batch = client.post("/v1/leads:batch", content=json.dumps({"leads": [body]}).encode())
    assert batch.status_code == 200
    assert "too many fields" in batch.json()["results"][0]["errors"][0]["message"]
    assert _queue_length(intake.settings) == 0
