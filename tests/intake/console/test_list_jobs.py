"""What operators see of leads for a list (issue 27, part B): `dispatcher status` (and
``--json``), ``/metrics``, the console's overview, job page and dead-letter pages.

List jobs wait in lanes of their own; status and /metrics count them in each dialer's
lanes (the totals as before) and apart (``queued_by_target``,
``dispatcher_queue_depth_by_target``); the pause of a dialer's list jobs alone shows as
such; a ``duplicate`` outcome and a letter's target show on their pages.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.testclient import TestClient

from dispatcher.config.settings import Settings
from dispatcher.ops.producer import enqueue_lead, enqueue_leads
from dispatcher.ops.status import fleet_status
from dispatcher.store.backend import get_backend
from dispatcher.store.deadletter import DeadLetterStore
from dispatcher.store.execution import new_token
from dispatcher.store.replies import Claim
from tests.support.cli import run_cli

LIST: dict[str, Any] = {"list_id": "101", "campaign_id": "TESTCAMP", "campaign_dnc_check": False}


def test_status_metrics_and_the_overview_count_list_jobs_and_their_pause(
    cs: Settings, operator: TestClient
) -> None:
    enqueue_leads(
        [{**LIST, "phone_number": f"72755512{i:02d}"} for i in range(3)]
        + [{"agent_user": "1000", "phone_number": "7275551299"}],
        settings=cs,
    )
    enqueue_lead(**LIST, phone_number="7275551298", settings=cs)  # realtime
    backend = get_backend(cs)
    backend.execution.pause("default:list", seconds=60, reason="permission", error="x")
    status = fleet_status(backend)
    dialer = status["dialers"]["default"]
    assert status["queued"] == 5 and dialer["queued"] == {"realtime": 1, "bulk": 4}
    assert dialer["queued_by_target"] == {
        "agent": {"realtime": 0, "bulk": 1},
        "list": {"realtime": 1, "bulk": 3},
    }
    assert dialer["list_paused"] and not dialer["paused"]
    assert dialer["list_pause"]["reason"] == "permission"
    assert dialer["oldest_queued_age_s"] is not None

    text = operator.get("/metrics").text
    assert 'dispatcher_queue_depth{dialer="default",lane="bulk"} 4.0' in text
    assert (
        'dispatcher_queue_depth_by_target{dialer="default",lane="bulk",target="list"} 3.0' in text
    )
    assert 'dispatcher_list_jobs_paused{dialer="default"} 1.0' in text
    assert 'dispatcher_vicidial_paused{dialer="default"' in text
    assert "default:list" not in text.split("dispatcher_list_jobs_paused")[0]
    assert "dispatcher_leads_duplicate_total 0.0" in text

    page = operator.get("/ui/").text
    assert "(3 for a list)" in page and "list jobs PAUSED" in page

    result = run_cli(cs, "status")
    assert "leads for a list of default" in " ".join(result.stdout.split())
    data = json.loads(run_cli(cs, "status", "--json").stdout)
    assert data["dialers"]["default"]["queued_by_target"]["list"]["bulk"] == 3


def test_a_duplicate_and_a_list_letter_on_their_pages(cs: Settings, operator: TestClient) -> None:
    backend = get_backend(cs)
    execution = backend.execution
    job_id = enqueue_lead(**LIST, phone_number="7275551400", settings=cs)
    token = new_token()
    claim = Claim.from_reply(
        execution.call(
            *execution.claim_args(
                job_id,
                seq=0,
                token=token,
                lease_s=30,
                ttl=600,
                rate_interval_s=0.0,
                worker="w",
                max_rate_wait_s=1.0,
                server="default",
                scope="default:list",
                lock="ab" * 16,
            )
        )
    )
    assert claim.verdict == "ok"
    execution.call(
        *execution.duplicate_args(
            job_id,
            token=token,
            existing_lead_id="17",
            list_id="101",
            check="DUPLIST",
            done_ttl=600,
            ttl=600,
            attempts=1,
            server="default",
        )
    )
    page = operator.get(f"/ui/jobs/{job_id}").text
    assert "duplicate" in page and "found lead 17 in list 101" in page
    assert "nothing was added" in page
    shown = json.loads(run_cli(cs, "job", job_id, "--json").stdout)
    assert (shown["state"], shown["existing_lead_id"], shown["duplicate_check"]) == (
        "duplicate",
        "17",
        "DUPLIST",
    )
    assert (shown["target"], shown["target_list_id"], shown["campaign_id"]) == (
        "list",
        "101",
        "TESTCAMP",
    )

    # A list job's dead letter: its target on the list, the letter page, dlq list.
    store = DeadLetterStore(backend)
    letter_job = {
        "v": 2,
        "job_id": "lj1",
        "lead": {"list_id": "555", "phone_number": "7275551500", "phone_code": "1"},
        "list_options": {"campaign_id": "TESTCAMP"},
        "dnc_check": True,
        "campaign_dnc_check": False,
    }
    letter = store.letter(
        job=letter_job,
        reason="list_undefined",
        error="ERROR: add_lead NOT A DEFINED LIST ID, LIST EXISTS CHECK ENABLED - 7275551500|555",
        http_status=200,
        attempts=1,
        first_failed_at=time.time(),
    )
    assert store.write(letter) == "ok"
    listing = operator.get("/ui/dead-letters").text
    assert "list 555" in listing
    detail = operator.get("/ui/dead-letters/lj1").text
    assert "a list: list 555 (add_lead), campaign TESTCAMP" in detail
    [record] = json.loads(run_cli(cs, "dlq", "list", "--json").stdout)
    assert (record["target"], record["target_list_id"]) == ("list", "555")
    assert "list 555" in run_cli(cs, "dlq", "list").stdout
    stored = backend.redis.get(backend.keys.dead_letter("lj1"))
    assert "target" not in json.loads(stored)  # the stored record is as before
