"""Leads for a list, end to end: enqueue -> real Redis -> real worker processes -> add_lead.

Issue 27, part B: the workers deliver list jobs (the Non-Agent API's ``add_lead``,
workers/list_client.py) with the agent jobs' guarantees. Each test asserts what the
simulator stored and received, the job's state, the dead letters and the worker's log
events: added (hopper, callback, custom field), a duplicate on the first call, every
refusal's letter (an empty 500 never retried), a SUCCESS inside a 500, lost answers
reconciled (by look-up, and by the duplicate check's answer and the marker), the
fleet-wide add_lead lock against VICIdial's check-then-insert race, the pause of a
dialer's list jobs alone, and a replay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from dispatcher import DeadLetterStore, enqueue_lead, enqueue_leads, job_status
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.model.jobs import Job, broker_envelope
from dispatcher.model.list_lead import make_list_lead
from dispatcher.model.list_options import make_list_options
from dispatcher.model.marker import marker
from dispatcher.simulator import Simulator
from dispatcher.store.backend import get_backend
from tests.support.settings import make_settings
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

FINAL = ("added", "duplicate", "dead")
#: A list job for the demo state's list 101 (campaign TESTCAMP), no DNC checks.
LIST: dict[str, Any] = {
    "list_id": "101",
    "campaign_id": "TESTCAMP",
    "dnc_check": False,
    "campaign_dnc_check": False,
}


def final(job_id: str, settings: Settings, timeout: float = 30.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status = job_status(job_id, settings=settings)
        return status if status and status["state"] in FINAL else None

    result: dict[str, Any] = wait_for(done, timeout=timeout, message=f"job {job_id} to end")
    return result


def adds(sim: Simulator, phone: str) -> list[dict[str, str]]:
    """The add_lead requests the simulator received for a phone."""
    return [r.fields for r in sim.add_lead_requests if r.fields.get("phone_number") == phone]


def events(worker: WorkerProcess, job_id: str) -> dict[str, dict[str, Any]]:
    return {e["event"]: e for e in worker.logs() if e.get("job_id") == job_id}


@pytest.fixture
def worker(settings: Settings, start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start_worker(settings)


# ---------------------------------------------------------------------------------------------
# Added, with what add_lead did after the INSERT
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["asyncio", "threads"])
def test_added_with_hopper_callback_and_custom_field(
    redis_url: str,
    simulator: Simulator,
    start_worker: Callable[..., WorkerProcess],
    engine: str,
) -> None:
    """Both send paths (the lead engine and the threaded runner) call add_lead."""
    settings = make_settings(redis_url, simulator, engine=engine)
    worker = start_worker(settings)
    job_id = enqueue_lead(
        list_id="102",
        campaign_id="TESTCAMP",
        phone_number="(727) 555-1212",
        first_name="Ann",
        duplicate_check="DUPLIST",
        add_to_hopper=True,
        hopper_priority=5,
        callback={"datetime": "2027-01-02 10:00:00", "type": "USERONLY", "user": "6666"},
        custom_fields={"favorite_color": "dark red"},
        settings=settings,
    )
    status = final(job_id, settings)
    assert status["state"] == "added" and status["target"] == "list"
    assert (status["list_id"], status["target_list_id"], status["campaign"]) == (
        "102",
        "102",
        "TESTCAMP",
    )
    assert (status["hopper"], status["callback"], status["custom_fields"]) == ("added",) * 3
    assert status["unfinished"] is None and status["attempts"] == 1
    [row] = simulator.leads
    assert status["lead_id"] == str(row.lead_id)
    assert (row.list_id, row.status, row.phone_number) == ("102", "CBHOLD", "7275551212")
    assert row.fields["first_name"] == "Ann"
    assert row.fields["source_id"] == marker(job_id, "source_id")  # the job's marker
    assert simulator.custom_values(102, row.lead_id) == {"favorite_color": "dark red"}
    assert [h.lead_id for h in simulator.hopper] == [row.lead_id]
    assert [c.lead_id for c in simulator.callbacks] == [row.lead_id]
    [sent] = adds(simulator, "7275551212")
    assert (sent["duplicate_check"], sent["campaign_id"], sent["dnc_check"]) == (
        "DUPLIST",
        "TESTCAMP",
        "Y",
    )
    assert simulator.requests == []  # nothing went to the agent API
    added = events(worker, job_id)["lead.added"]
    assert added["lead_id"] == str(row.lead_id) and added["list_id"] == "102"
    assert added["hopper"] == "added" and added["phone"] == "******1212"


def test_a_success_inside_a_500_is_added_and_says_what_is_missing(
    settings: Settings, simulator: Simulator, worker: WorkerProcess
) -> None:
    """VICIdial inserted the lead, then died (HTTP 500, the SUCCESS line in the body): a
    custom field row left over for the new lead id. Added once, never called again; the
    hopper (not done) is reported as unfinished."""
    custom = {"list_id": "102", "campaign_id": "TESTCAMP", "campaign_dnc_check": False}
    first = enqueue_lead(
        **custom, phone_number="7275551301", custom_fields={"c": "x"}, settings=settings
    )
    lead_id = final(first, settings)["lead_id"]
    # An admin deletes the lead (its custom row stays) and resets the ids: the next lead
    # gets the same id, and its custom row's INSERT fails after the lead's.
    deleted = httpx.post(
        simulator.base_url + "/vicidial/non_agent_api.php",
        data={
            "source": "test",
            "user": "6666",
            "pass": "1234",
            "function": "update_lead",
            "lead_id": lead_id,
            "delete_lead": "Y",
        },
    )
    assert deleted.text.startswith("SUCCESS: update_lead LEAD HAS BEEN DELETED")
    simulator.set_next_lead_id(int(lead_id))
    job_id = enqueue_lead(
        **custom,
        phone_number="7275551302",
        add_to_hopper=True,
        custom_fields={"favorite_color": "blue"},
        settings=settings,
    )
    status = final(job_id, settings)
    assert status["state"] == "added" and status["lead_id"] == lead_id
    assert status["unfinished"] == ["hopper: not reported", "custom_fields: not reported"]
    assert len(adds(simulator, "7275551302")) == 1
    assert [r.status for r in simulator.add_lead_requests][-1] == 500
    assert simulator.hopper == []
    added = events(worker, job_id)["lead.added"]
    assert added["http_status"] == 500 and added["unfinished"]


# ---------------------------------------------------------------------------------------------
# A duplicate, and every refusal's letter
# ---------------------------------------------------------------------------------------------


def test_a_duplicate_on_the_first_call_is_final_and_never_called_again(
    settings: Settings, simulator: Simulator, worker: WorkerProcess
) -> None:
    first = enqueue_lead(**LIST, phone_number="7275551400", settings=settings)
    lead_id = final(first, settings)["lead_id"]
    job_id = enqueue_lead(
        **LIST,
        phone_number="7275551400",
        first_name="Bob",
        duplicate_check="DUPLIST",
        settings=settings,
    )
    status = final(job_id, settings)
    assert status["state"] == "duplicate" and status["existing_lead_id"] == lead_id
    assert (status["list_id"], status["duplicate_check"]) == ("101", "DUPLIST")
    assert status["lead_id"] is None and status["reason"] is None
    assert len(simulator.leads) == 1 and len(adds(simulator, "7275551400")) == 2
    assert DeadLetterStore(settings=settings).get(job_id) is None
    duplicate = events(worker, job_id)["lead.duplicate"]
    assert duplicate["existing_lead_id"] == lead_id and duplicate["check"] == "DUPLIST"
    # A redelivered copy of the job is acknowledged without a call.
    copy = Job(
        job_id=job_id,
        lead=make_list_lead({"list_id": "101", "phone_number": "7275551400"}),
        dnc_check=False,
        campaign_dnc_check=False,
        list_options=make_list_options({"campaign_id": "TESTCAMP"}, campaign_dnc_check=False),
    )
    lane = get_backend(settings).keys.list_lane("default", "realtime")
    client = redis.Redis.from_url(settings.redis_url)
    client.lpush(lane, broker_envelope(copy.to_message(), queue=lane))
    wait_for(
        lambda: any(
            e["event"] == "lead.duplicate_suppressed" and e.get("job_id") == job_id
            for e in worker.logs()
        ),
        message="the copy to be suppressed",
    )
    assert len(adds(simulator, "7275551400")) == 2
    assert client.hget(f"{settings.key_prefix}:stats", "duplicate") == b"1"


def test_refusals_become_letters_after_one_call(
    settings: Settings, simulator: Simulator, worker: WorkerProcess
) -> None:
    """DNC, campaign DNC, a phone check, an undefined list: one call each, the dead letter
    of its reason. An empty HTTP 500 (VICIdial fails the same way every time) is never
    called again: server_error."""
    cases = {
        "dnc": dict(LIST, phone_number="7275550000", dnc_check=True),
        "campaign_dnc": dict(LIST, phone_number="7275550001", campaign_dnc_check=True),
        "invalid_phone": dict(LIST, phone_number="7270559101", usacan_prefix_check=True),
        "list_undefined": dict(LIST, list_id="555", phone_number="7275551501"),
        "server_error": dict(
            LIST,
            list_id="103",
            phone_number="7275551502",
            duplicate_check="DUPCAMP",
            list_exists_check=False,
        ),
    }
    ids = {reason: enqueue_lead(**lead, settings=settings) for reason, lead in cases.items()}
    store = DeadLetterStore(settings=settings)
    for reason, job_id in ids.items():
        status = final(job_id, settings)
        assert (status["state"], status["reason"]) == ("dead", reason), status
        letter = store.get(job_id)
        assert letter is not None and letter.reason == reason and letter.attempts == 1
        assert letter.job["lead"]["list_id"] == cases[reason]["list_id"]
        phone = str(cases[reason]["phone_number"])
        assert len(adds(simulator, phone)) == 1, reason
    assert simulator.leads == []
    assert store.get(ids["server_error"]).http_status == 500  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# Lost answers: reconciled, the lead added once
# ---------------------------------------------------------------------------------------------


def test_a_lost_answer_is_looked_up_and_added_once(
    settings: Settings, simulator: Simulator, worker: WorkerProcess
) -> None:
    """No duplicate check: as for an agent job, the phone is looked up (lead_all_info,
    lead_search, the marker) and the lead the lost call added is the job's."""
    simulator.script_phone("7275551600", ["reset_after"])
    job_id = enqueue_lead(**LIST, phone_number="7275551600", settings=settings)
    status = final(job_id, settings)
    assert status["state"] == "added" and status["reconcile"] == "found"
    [row] = [x for x in simulator.leads if x.phone_number == "7275551600"]
    assert status["lead_id"] == str(row.lead_id) and status["list_id"] == "101"
    assert len(adds(simulator, "7275551600")) == 1
    assert {r.fields.get("function") for r in simulator.lookups} >= {"lead_all_info"}


def test_a_lost_answer_with_a_duplicate_check_is_called_again_and_recognised(
    settings: Settings, simulator: Simulator, worker: WorkerProcess
) -> None:
    """With a duplicate check the job is called again after the settle time: add_lead's
    duplicate answer names the lead the lost call added; read back by its id, it carries
    the job's marker: added with it, nothing added twice. Where the lost call did not
    land and an older lead of the phone exists, the answer names that one: duplicate."""
    simulator.script_phone("7275551700", ["reset_after"])
    landed = enqueue_lead(
        **LIST, phone_number="7275551700", duplicate_check="DUPLIST", settings=settings
    )
    older = enqueue_lead(**LIST, phone_number="7275551701", settings=settings)
    older_id = final(older, settings)["lead_id"]
    simulator.script_phone("7275551701", ["reset"])  # sent, dropped before VICIdial ran it
    lost = enqueue_lead(
        **LIST, phone_number="7275551701", duplicate_check="DUPLIST", settings=settings
    )

    status = final(landed, settings)
    [row] = [x for x in simulator.leads if x.phone_number == "7275551700"]
    assert status["state"] == "added" and status["lead_id"] == str(row.lead_id)
    assert status["attempts"] == 2 and len(adds(simulator, "7275551700")) == 2
    looked = [r.fields for r in simulator.lookups if r.fields.get("function") != "add_lead"]
    assert {"function": "lead_all_info", "lead_id": str(row.lead_id)}.items() <= next(
        f for f in looked if f.get("lead_id") == str(row.lead_id)
    ).items()
    assert not any(f.get("phone_number") == "7275551700" for f in looked)  # no phone look-up
    assert events(worker, landed)["lead.reconciled"]["matched_by"] == "duplicate_check"

    status = final(lost, settings)
    assert status["state"] == "duplicate" and status["existing_lead_id"] == older_id
    assert len([x for x in simulator.leads if x.phone_number == "7275551701"]) == 1


# ---------------------------------------------------------------------------------------------
# The add_lead lock: VICIdial's duplicate check has none
# ---------------------------------------------------------------------------------------------


def test_identical_list_jobs_at_once_add_one_lead(
    redis_url: str, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    """8 identical DUPLIST jobs at once, over two workers (both engines, 8 calls in flight
    each), against a server whose check and INSERT are 0.5 s apart (on the real one,
    8 simultaneous identical requests inserted up to 5 leads): one add_lead in flight per
    dialer and phone, fleet-wide, so one lead and 7 duplicates naming it."""
    simulator.set_add_lead_race_window(0.5)
    settings = make_settings(redis_url, simulator)
    leads = [
        dict(LIST, phone_number="7275551800", duplicate_check="DUPLIST", priority="realtime")
        for _ in range(8)
    ]
    ids = enqueue_leads(leads, settings=settings)
    start_worker(settings, concurrency=8, name="a")
    start_worker(make_settings(redis_url, simulator, engine="threads"), concurrency=8, name="b")
    states = [final(job_id, settings, timeout=60) for job_id in ids]
    rows = [x for x in simulator.leads if x.phone_number == "7275551800"]
    assert len(rows) == 1, [s["state"] for s in states]
    assert sorted(s["state"] for s in states) == ["added"] + ["duplicate"] * 7
    assert {s["existing_lead_id"] for s in states if s["state"] == "duplicate"} == {
        str(rows[0].lead_id)
    }
    lock = get_backend(settings).keys.add_lock("default", "*")
    assert redis.Redis.from_url(redis_url).keys(lock) == []  # every lock released


# ---------------------------------------------------------------------------------------------
# Pauses, and a replay
# ---------------------------------------------------------------------------------------------


def test_add_lead_s_permission_refused_pauses_list_jobs_alone(
    settings: Settings, simulator: Simulator, worker: WorkerProcess
) -> None:
    """The API user may not add leads to lists (Modify Leads 0): the list job is a
    permission letter and the dialer's list jobs pause; its agent jobs go on. Once the
    right is given, the next list job probes (a request that stores nothing) and goes."""
    simulator.update_user("6666", modify_leads=0)
    refused = enqueue_lead(**LIST, phone_number="7275551900", settings=settings)
    status = final(refused, settings)
    assert (status["state"], status["reason"]) == ("dead", "permission")
    agent = enqueue_lead(agent_user="1000", phone_number="7275551901", settings=settings)
    assert final(agent, settings)["state"] == "added"
    simulator.update_user("6666", modify_leads=1)
    later = enqueue_lead(**LIST, phone_number="7275551902", settings=settings)
    assert final(later, settings)["state"] == "added"
    logs = worker.logs()
    paused = [e for e in logs if e["event"] == "vicidial.paused"]
    assert [e["server"] for e in paused] == ["default:list"]
    resumed = [e for e in logs if e["event"] == "vicidial.resumed"]
    assert [(e["server"], e["after"]) for e in resumed] == [("default:list", "add_lead probe")]
    # The probe: a one-digit phone, refused by add_lead's length check, nothing stored.
    assert [r.fields.get("phone_number") for r in simulator.add_lead_requests] == [
        "7275551900",
        "0",
        "7275551902",
    ]


def test_a_list_letter_replays_as_the_same_list_job_and_is_added_once(
    settings: Settings, simulator: Simulator, worker: WorkerProcess
) -> None:
    job_id = enqueue_lead(
        **dict(LIST, list_id="556"),
        phone_number="7275552000",
        add_to_hopper=True,
        settings=settings,
    )
    assert final(job_id, settings)["reason"] == "list_undefined"
    simulator.set_list("556", campaign_id="TESTCAMP")
    store = DeadLetterStore(settings=settings)
    letter = store.get(job_id)
    assert letter is not None and store.replay(letter) == "replayed"
    status = final(job_id, settings)
    assert status["state"] == "added" and status["list_id"] == "556"
    assert status["hopper"] == "added" and status["target"] == "list"
    assert len([x for x in simulator.leads if x.phone_number == "7275552000"]) == 1
    [first, second] = adds(simulator, "7275552000")
    assert first == second  # the same list job, the same request
