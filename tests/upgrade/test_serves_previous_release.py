"""This release serves what the previous one left in Redis (DESIGN.md, "Upgrades").

The fixture ``fixtures/1c0038d.json`` is release 1c0038d's Redis, written by that
release's own code (``record_fixture.py``): jobs queued in all four lanes of two
dialers, retries and a look-up waiting, a job held by a paused dialer, two calls in
flight when a worker was SIGKILLed, a replayed letter queued again, dead letters
of nine reasons, idempotency records, console users and a session. It is loaded
as if that release had stopped two minutes ago, VICIdial (the simulator) is given
the leads it held then, and this release's real worker, CLI and ``dispatcher
serve`` take over:

* every job the old release had not finished is added exactly once; those it had
  finished are never called again, and the calls in flight are settled by
  reconciliation (the lead the stuck request inserted is found, not added again;
  the one never inserted is called once);
* the dead letters are listed as they were, replayed, reconciled (``ambiguous``);
* idempotency keys still return their first job; console users log in, and the
  old session cookie still works (it is two minutes old: younger than its idle
  timeout);
* the worker records the layout version (``layout.recorded``: absent means 1).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from dispatcher import enqueue_lead
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.devtools.redis_server import free_port
from dispatcher.intake.console.sessions import SessionStore
from dispatcher.ops.erasure import forget_phone
from dispatcher.simulator import Simulator, SimulatorState
from dispatcher.simulator.state import CampaignConfig
from dispatcher.store.backend import Backend, get_backend
from dispatcher.store.layout import LAYOUT_VERSION
from dispatcher.store.letter_index import index_complete
from tests.support.cli import LETTER_KEYS, check, cli_env, run_cli
from tests.support.queues import queue_length
from tests.support.settings import ROOT, make_settings
from tests.support.waiting import wait_for
from tests.upgrade.fixture import load_fixture, read_fixture, seed_simulator

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).with_name("fixtures") / "1c0038d.json"
#: The previous release stopped writing this long before the new one starts.
AGE_S = 120.0


def _calls(sim: Simulator, phone: str, after: int) -> int:
    """external_add_lead calls for ``phone`` after the first ``after`` requests."""
    return sum(
        1
        for r in sim.requests
        if r.number > after
        and r.fields.get("function") == "external_add_lead"
        and r.fields.get("phone_number") == phone
    )


def _state(client: redis.Redis, job_id: str) -> str | None:
    value: str | None = client.hget(f"dispatcher:job:{job_id}", "state")  # type: ignore[assignment]
    return value


def _serve(settings: Settings, token: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = cli_env(settings, DISPATCHER_INTAKE_TOKENS=token, PYTHONPATH=str(ROOT))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", "serve", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(base + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            assert proc.poll() is None, log.read_text()
            return False

    wait_for(up, timeout=30, message="dispatcher serve")
    return proc, base


def test_the_previous_release_s_redis_is_served(
    redis_url: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fixture = read_fixture(FIXTURE)
    meta = fixture["meta"]
    jobs: list[dict[str, Any]] = meta["jobs"]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    loaded = load_fixture(client, fixture, age_s=AGE_S)
    assert loaded["keys"] > 90 and loaded["moved"] > 100, loaded
    assert client.get("dispatcher:layout") is None  # 1c0038d wrote none

    # VICIdial as it was, with what the operator fixed since: west's password, the late
    # agent logged in, a manual dial list for GHOST.
    recorded = meta["simulator"]
    state = SimulatorState.from_dict(recorded["state"])
    state.agents[recorded["late_agent"]] = "TESTCAMP"
    state.campaigns["GHOST"] = CampaignConfig(manual_dial_list_id="103")
    passwords = meta["passwords"]
    monkeypatch.setenv("EAST_VICIDIAL_PASS", passwords["EAST_VICIDIAL_PASS"])
    monkeypatch.setenv("WEST_VICIDIAL_PASS", passwords["WEST_VICIDIAL_PASS"])
    with Simulator(state, stall_s=5.0) as sim:
        seed_simulator(sim, recorded["leads"], recorded["api_passwords"])
        before = sim.call_count
        dialers = tmp_path / "dialers.toml"
        dialers.write_text(meta["dialers_toml"].format(url=sim.url))
        settings = make_settings(redis_url, dialers_file=str(dialers))
        worker = start_worker(settings)

        # 1. Everything under way is added, once.
        todo = [j for j in jobs if j["expect"] == "added"]
        letters_before = sum(1 for j in jobs if j["expect"].startswith("letter:"))

        def all_added() -> bool:
            if int(client.zcard("dispatcher:dlq")) > letters_before:
                # A job of the old release dead-lettered: fail at once, saying why.
                known = {j["job_id"] for j in jobs if j["expect"].startswith("letter:")}
                new = [x for x in client.zrange("dispatcher:dlq", 0, -1) if x not in known]
                pytest.fail(f"dead letters: {[client.get(f'dispatcher:dl:{x}') for x in new]}")
            return all(_state(client, j["job_id"]) == "added" for j in todo)

        wait_for(all_added, timeout=60, message="every unfinished job of the old release added")
        by_phone = sim.count_by_phone()
        for job in jobs:
            if job["expect"] in ("added", "added_before"):
                assert by_phone.get(job["phone"]) == 1, job
        for job in jobs:
            if job["expect"] == "added_before":
                assert _calls(sim, job["phone"], before) == 0, job  # done: never called again
        kinds = {j["kind"]: j for j in jobs}
        leads_by_phone = {lead["phone_number"]: lead for lead in recorded["leads"]}
        for kind in ("lookup_waiting", "in_flight_inserted_late"):
            # VICIdial had the lead already: reconciliation found it, no second call.
            job = kinds[kind]
            assert _calls(sim, job["phone"], before) == 0, job
            lead_id = client.hget(f"dispatcher:job:{job['job_id']}", "lead_id")
            assert lead_id == str(leads_by_phone[job["phone"]]["lead_id"]), job
        assert _calls(sim, kinds["in_flight_never_inserted"]["phone"], before) == 1

        # 2. The dead letters, as the previous release left them.
        env = cli_env(settings)
        listed = run_cli(settings, "dlq", "list", "--json", env=env)
        check(listed)
        letters = json.loads(listed.stdout)
        assert all(set(letter) >= LETTER_KEYS for letter in letters)
        expected = {
            j["job_id"]: j["expect"].split(":")[1]
            for j in jobs
            if j["expect"].startswith("letter:")
        }
        assert {x["job_id"]: x["reason"] for x in letters} == expected
        # The previous release kept no phone index: the worker's maintenance puts its
        # letters into it, so that an erasure request finds them without --scan.
        backend = get_backend(settings)
        wait_for(lambda: index_complete(backend), message="the letters indexed by phone")
        for letter in letters:
            job = next(j for j in jobs if j["job_id"] == letter["job_id"])
            if job["lead"] is not None:
                assert letter["job"]["lead"]["phone_number"] == job["phone"]
                assert letter["job"]["dnc_check"] is True
                preview = forget_phone(backend, job["phone"], dry_run=True)
                assert preview.counts.get("dead_letters") == 1, (job["kind"], preview.counts)

        # 3. Reconciled (ambiguous) and replayed (the causes are fixed).
        ambiguous = [j for j in jobs if j["expect"].startswith("letter:ambiguous:")]
        check(run_cli(settings, "dlq", "reconcile", "--reason", "ambiguous", "--yes", env=env))
        replay = [j for j in jobs if j["expect"].endswith(":replay")]
        assert {j["kind"] for j in replay} == {
            "manual_list_undefined",
            "agent_not_logged_in",
            "http_error",
            "auth",
        }
        check(run_cli(settings, "dlq", "replay", *[j["job_id"] for j in replay], "--yes", env=env))
        wait_for(
            lambda: all(_state(client, j["job_id"]) == "added" for j in ambiguous + replay),
            timeout=40,
            message="the reconciled and replayed letters added",
        )
        by_phone = sim.count_by_phone()
        for job in ambiguous + replay:
            assert by_phone.get(job["phone"]) == 1, job
        found, absent = kinds["ambiguous_inserted"], kinds["ambiguous_absent"]
        assert _calls(sim, found["phone"], before) == 0  # VICIdial had it: found
        assert _calls(sim, absent["phone"], before) == 1  # it had not: called once
        left = json.loads(run_cli(settings, "dlq", "list", "--json", env=env).stdout)
        assert sorted(x["reason"] for x in left) == ["campaign_dnc", "dnc", "invalid_payload"]
        status = run_cli(settings, "status", "--json", env=env)
        check(status)
        data = json.loads(status.stdout)
        assert (data["queued"], data["retrying"]) == (0, 0)
        assert data["layout"] == {"version": LAYOUT_VERSION, "release": LAYOUT_VERSION}

        # Nothing added twice, nothing added that no job asked for.
        counts = Counter(lead.phone_number for lead in sim.leads)
        wanted = {j["phone"] for j in jobs if j["phone"] and not j["expect"].endswith(":stays")}
        assert set(counts) == wanted and set(counts.values()) == {1}, counts

        # 4. Idempotency keys still name their first job; nothing is enqueued again.
        for key in ("rec-added-1", "rec-queued-50", "rec-retry-30"):
            job = next(j for j in jobs if j["idempotency_key"] == key)
            lead = {k: v for k, v in job["lead"].items() if k != "dialer"}
            assert enqueue_lead(settings=settings, **lead) == job["job_id"]
        assert queue_length(settings) == 0

        # 5. The console and the intake: users, their old session, the intake's keys.
        console = meta["console"]
        proc, base = _serve(settings, meta["intake_token"], tmp_path / "serve.log")
        try:
            cookie = {console["session_cookie"]: console["sessions"]["alice"]}
            with httpx.Client(base_url=base, cookies=cookie) as browser:
                page = browser.get("/ui/")
                assert page.status_code == 200 and "alice" in page.text
            for name, user in console["users"].items():
                with httpx.Client(base_url=base) as browser:
                    form = browser.get("/ui/login").text
                    csrf = form.split('name="csrf" value="', 1)[1].split('"', 1)[0]
                    answer = browser.post(
                        "/ui/login",
                        data={"username": name, "password": user["password"], "csrf": csrf},
                    )
                    assert answer.status_code == 303, (name, answer.text)
                    assert browser.get("/ui/").status_code == 200
            intake = next(j for j in jobs if j["kind"] == "queued_intake")
            lead = {k: v for k, v in intake["lead"].items() if k != "idempotency_key"}
            again = httpx.post(
                base + "/v1/leads",
                json=lead,
                headers={
                    "Authorization": f"Bearer {meta['intake_token']}",
                    "Idempotency-Key": intake["idempotency_key"],
                },
            )
            assert (again.status_code, again.json()["job_id"]) == (200, intake["job_id"])
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        assert queue_length(settings) == 0

    recorded_events = [e for e in worker.logs() if e.get("event") == "layout.recorded"]
    assert recorded_events and recorded_events[0]["found"] == "absent"
    assert client.get("dispatcher:layout") == str(LAYOUT_VERSION)
    assert worker.alive()


@pytest.mark.parametrize(("age_s", "valid"), [(AGE_S, True), (29 * 60, True), (31 * 60, False)])
def test_the_previous_release_s_console_session_lives_out_its_idle_timeout(
    redis_url: str, age_s: float, valid: bool
) -> None:
    """Sessions are kept as the previous release wrote them: one still inside its
    30-minute idle timeout is used as it is; one past it is gone (its key expired),
    and the cookie simply asks for a login again."""

    fixture = read_fixture(FIXTURE)
    client = redis.Redis.from_url(redis_url)
    load_fixture(client, fixture, age_s=age_s)
    settings = make_settings(redis_url)
    store = SessionStore(
        Backend(settings), idle_s=settings.console_idle_s, lifetime_s=settings.console_session_s
    )
    session = store.load(fixture["meta"]["console"]["sessions"]["alice"])
    if valid:
        assert session is not None and (session.user, session.role) == ("alice", "operator")
    else:
        assert session is None
