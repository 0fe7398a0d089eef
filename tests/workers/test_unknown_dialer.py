"""A job for a dialer the worker does not know waits for one that does (issue 23, item 7).

A rolling deploy of the dialers file, a renamed dialer, or ``non_latin`` flipped on
one side only: a worker gets a job whose dialer it does not know as the job does.
It must neither call nor bury the job as an unreplayable ``invalid_payload`` letter
under a new id: the job waits (its state says for which dialer) for a worker that
knows the dialer, and after ``DISPATCHER_UNKNOWN_DIALER_WAIT_S`` becomes the
replayable dead letter ``unknown_dialer`` under its own job id.

Real Redis, real HTTP to two simulators (east, west), runners driven message by
message as in tests/workers/test_reconciler.py.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import structlog
from structlog.testing import capture_logs as _capture_logs

from dispatcher import DeadLetterStore, job_status
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess, settings_env
from dispatcher.model.jobs import broker_envelope
from dispatcher.ops.producer import prepare_job, push_jobs
from dispatcher.simulator import Simulator, SimulatorState
from dispatcher.store.backend import get_backend
from tests.support.queues import queued_envelopes
from tests.support.settings import FAST, make_settings
from tests.support.waiting import wait_for
from workers.runner import JobRunner

PHONE = "7275551212"


def capture_logs() -> Any:
    return _capture_logs(processors=[structlog.contextvars.merge_contextvars])


@pytest.fixture
def two_sims() -> Iterator[tuple[Simulator, Simulator]]:
    with Simulator(SimulatorState.demo()) as east, Simulator(SimulatorState.demo()) as west:
        yield east, west


@pytest.fixture(autouse=True)
def passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EAST_PASS", "1234")
    monkeypatch.setenv("WEST_PASS", "1234")


def _dialers(tmp_path: Path, name: str, sims: dict[str, Simulator]) -> str:
    text = 'default = "east"\n'
    for dialer, sim in sims.items():
        text += (
            f'\n[dialers.{dialer}]\nurl = "{sim.url}"\nuser = "6666"\n'
            f'pass_env = "{dialer.upper()}_PASS"\n'
        )
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def fleet(
    redis_url: str, tmp_path: Path, two_sims: tuple[Simulator, Simulator]
) -> tuple[Settings, Settings]:
    """(new: knows east and west, old: knows east only), on the same Redis."""
    east, west = two_sims
    new = Settings(
        **{
            **FAST,
            "redis_url": redis_url,
            "dialers_file": _dialers(tmp_path, "new.toml", {"east": east, "west": west}),
        }
    )
    old = new.replace(dialers_file=_dialers(tmp_path, "old.toml", {"east": east}))
    return new, old


@pytest.fixture
def runners() -> Iterator[Callable[[Settings], JobRunner]]:
    made: list[JobRunner] = []

    def make(settings: Settings) -> JobRunner:
        runner = JobRunner(settings, get_backend(settings))
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.close()


def _enqueue(settings: Settings, **fields: Any) -> dict[str, Any]:
    job = prepare_job({"agent_user": "1000", "phone_number": PHONE, **fields}, settings=settings)
    push_jobs([job], settings=settings)
    return job.to_message()


def _take_scheduled(settings: Settings) -> list[tuple[dict[str, Any], str]]:
    """Pop every scheduled message: (message, the lane it goes back to)."""
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        popped = client.zpopmin(f"{settings.key_prefix}:scheduled", 100)
    finally:
        client.close()
    out = []
    for envelope, _ in popped:
        data = json.loads(envelope)
        body = json.loads(base64.b64decode(data["body"]))
        out.append((body[0][0], data["properties"]["delivery_info"]["routing_key"]))
    return out


def test_a_job_for_a_dialer_the_worker_does_not_know_waits_for_one_that_does(
    fleet: tuple[Settings, Settings],
    two_sims: tuple[Simulator, Simulator],
    runners: Callable[[Settings], JobRunner],
) -> None:
    new, old = fleet
    east, west = two_sims
    message = _enqueue(new, dialer="west")
    with capture_logs() as logs:
        assert runners(old).run(message) == "waiting"
    assert east.call_count == 0 and west.call_count == 0
    assert len(DeadLetterStore(settings=new)) == 0
    status = job_status(message["job_id"], settings=new)
    assert status is not None
    assert (status["state"], status["reason"]) == ("retrying", "unknown_dialer")
    assert status["waiting_for_dialer"] == "west"
    assert status["dialer_wait_until"] is not None and status["next_attempt_at"] is not None
    assert "west" in str(status["error"])
    waiting = [e for e in logs if e["event"] == "lead.waiting_for_dialer"]
    assert waiting and waiting[0]["job_id"] == message["job_id"]
    ((again, lane),) = _take_scheduled(new)
    assert lane == f"{new.queue}.west.realtime"  # its own lane: where west's workers look
    assert again["job_id"] == message["job_id"] and again["seq"] == message["seq"]
    # A worker that knows west takes it: the wait is over, whatever comes next (here
    # west's calls are paused: the job waits for that, and says so).
    knows = runners(new)
    knows.writes.execution.pause("west", seconds=30, reason="auth", error="test")
    assert knows.run(again) == "deferred"
    status = job_status(message["job_id"], settings=new)
    assert status is not None and status["state"] == "retrying"
    assert status["waiting_for_dialer"] is None and status["reason"] is None
    knows.writes.execution.resume("west")
    ((again, _),) = _take_scheduled(new)
    assert knows.run(again) == "added"
    assert west.count_by_phone() == {PHONE: 1} and east.call_count == 0
    status = job_status(message["job_id"], settings=new)
    assert (
        status is not None
        and status["state"] == "added"
        and "waiting_for_dialer" not in {k for k, v in status.items() if v is not None}
    )


def test_after_the_wait_it_is_a_replayable_letter_under_its_own_id(
    fleet: tuple[Settings, Settings],
    two_sims: tuple[Simulator, Simulator],
    runners: Callable[[Settings], JobRunner],
) -> None:
    new, old = fleet
    old = old.replace(unknown_dialer_wait_s=0.5)
    message = _enqueue(new, dialer="west")
    worker = runners(old)
    assert worker.run(message) == "waiting"
    time.sleep(0.6)
    ((again, _),) = _take_scheduled(new)
    assert worker.run(again) == "dead"
    store = DeadLetterStore(settings=new)
    letter = store.get(message["job_id"])
    assert letter is not None and letter.job_id == message["job_id"]
    assert letter.reason == "unknown_dialer" and letter.replayable
    assert "west" in letter.error
    assert store.counts() == {"unknown_dialer": 1}
    status = job_status(message["job_id"], settings=new)
    assert status is not None and (status["state"], status["reason"]) == ("dead", "unknown_dialer")
    # Fixed (this CLI knows west): replayed, and a worker that knows it adds the lead once.
    assert store.replay(letter) == "replayed"
    queued = [
        json.loads(base64.b64decode(json.loads(e)["body"]))[0][0] for e in queued_envelopes(new)
    ]
    (replayed,) = [m for m in queued if m["seq"] == message["seq"] + 1]
    assert replayed["dialer"] == "west"
    assert runners(new).run(replayed) == "added"
    assert two_sims[1].count_by_phone() == {PHONE: 1}


def test_non_latin_flipped_on_one_side_waits_too(
    redis_url: str, simulator: Simulator, runners: Callable[[Settings], JobRunner]
) -> None:
    simulator.set_non_latin(True)
    producer = make_settings(redis_url, simulator, vicidial_non_latin=True)
    stale = producer.replace(vicidial_non_latin=False)  # a worker not redeployed yet
    message = _enqueue(producer, first_name="Иван")
    assert runners(stale).run(message) == "waiting"
    status = job_status(message["job_id"], settings=producer)
    assert status is not None and status["reason"] == "unknown_dialer"
    assert "non_latin" in str(status["error"])
    assert len(DeadLetterStore(settings=producer)) == 0
    ((again, _),) = _take_scheduled(producer)
    assert runners(producer).run(again) == "added"
    assert simulator.leads[0].fields["first_name"] == "Иван"


def test_a_lead_invalid_in_every_mode_is_still_an_invalid_payload(
    settings: Settings, runners: Callable[[Settings], JobRunner]
) -> None:
    message = _enqueue(settings)
    message["lead"] = {**message["lead"], "phone_number": "not a phone"}
    assert runners(settings).run(message) == "dead"
    assert DeadLetterStore(settings=settings).counts() == {"invalid_payload": 1}


def test_a_rolling_deploy_end_to_end(
    fleet: tuple[Settings, Settings],
    two_sims: tuple[Simulator, Simulator],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Real workers: one still on the old dialers file (east only) finds a job for west
    in its lane (replayed by a CLI that did not know west); it waits, `dispatcher job`
    says for which dialer; a worker on the new file then adds it on west, once."""
    new, old = fleet
    new, old = (s.replace(unknown_dialer_wait_s=60.0) for s in (new, old))
    east, west = two_sims
    env = {"EAST_PASS": "1234", "WEST_PASS": "1234"}
    start_worker(old, name="old", extra_env=env)
    job = prepare_job({"agent_user": "1000", "phone_number": PHONE, "dialer": "west"}, settings=new)
    # Where a CLI that does not know west replays such a job: the default dialer's lane.
    client = redis.Redis.from_url(new.redis_url)
    client.lpush(
        f"{new.queue}.east.realtime",
        broker_envelope(job.to_message(), queue=f"{new.queue}.east.realtime"),
    )
    client.close()
    status = wait_for(
        lambda: (s := job_status(job.job_id, settings=new)) and s.get("waiting_for_dialer") and s,
        timeout=30,
        message="the old worker to hand the job back",
    )
    assert status["state"] == "retrying" and status["reason"] == "unknown_dialer"
    assert status["waiting_for_dialer"] == "west"
    shown = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "job", job.job_id],
        env={**os.environ, **settings_env(new), **env, "DISPATCHER_ENV_FILE": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0 and "waiting_for_dialer" in shown.stdout and "west" in shown.stdout
    start_worker(new, name="new", extra_env=env)
    wait_for(
        lambda: (job_status(job.job_id, settings=new) or {}).get("state") == "added",
        timeout=60,
        message="the new worker to add it",
    )
    assert west.count_by_phone() == {PHONE: 1} and east.call_count == 0
    assert len(DeadLetterStore(settings=new)) == 0


def test_a_job_in_the_lane_of_a_dialer_no_worker_serves_still_ends_as_its_letter(
    fleet: tuple[Settings, Settings],
    two_sims: tuple[Simulator, Simulator],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A producer that knows west (a renamed dialer; a dialers file deployed to the
    producers first) enqueues into west's lane, which no worker polls. The workers'
    maintenance takes such a lane's jobs (no worker serves its dialer): the job waits
    for a worker that knows west, its state says so, and after the wait it is the
    replayable letter under its own id, not a job `queued` until its TTL. Once a worker
    that knows west runs, its lane is its own again."""
    new, old = fleet
    old = old.replace(unknown_dialer_wait_s=4.0)
    east, west = two_sims
    env = {"EAST_PASS": "1234", "WEST_PASS": "1234"}
    start_worker(old, name="old", extra_env=env)
    job_id = _enqueue(new, dialer="west")["job_id"]
    status = wait_for(
        lambda: (s := job_status(job_id, settings=new)) and s.get("waiting_for_dialer") and s,
        timeout=30,
        message="the orphaned lane's job to wait for its dialer",
    )
    assert status["reason"] == "unknown_dialer" and status["waiting_for_dialer"] == "west"
    wait_for(
        lambda: (job_status(job_id, settings=new) or {}).get("state") == "dead",
        timeout=40,
        message="the unknown_dialer letter",
    )
    letter = DeadLetterStore(settings=new).get(job_id)
    assert letter is not None and letter.reason == "unknown_dialer" and letter.replayable
    assert east.call_count == 0 and west.call_count == 0

    knows = start_worker(new, name="new", extra_env=env)
    knows_west = redis.Redis.from_url(new.redis_url)
    wait_for(
        lambda: knows_west.exists(f"{new.key_prefix}:served:west"),
        timeout=30,
        message="the new worker's heartbeat",
    )
    knows_west.close()
    second = _enqueue(new, dialer="west", phone_number="7275551313")["job_id"]
    wait_for(
        lambda: (job_status(second, settings=new) or {}).get("state") == "added",
        timeout=40,
        message="the worker that knows west to add it",
    )
    assert west.count_by_phone() == {"7275551313": 1} and knows.alive()
