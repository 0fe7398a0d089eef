"""A rolling restart: the previous release's workers and this release's on one Redis.

The previous release (commit :data:`PREVIOUS`) is installed from git into a venv of
its own (:mod:`tests.upgrade.release`, once per test session) and runs real
``celery -A workers worker`` processes beside this release's, against one Redis
and one VICIdial simulator, while both releases' producers enqueue. An old worker
is stopped (SIGTERM: Celery's warm shutdown) mid-run and a new one takes over;
then the reverse (an old worker joins again, as in a rollback, and the new one is
restarted). Every lead ends added exactly once, nothing is left queued or dead,
and every worker either stays up or (a release that knows the layout version,
meeting a newer one) refuses to start with exit 1 naming both versions, or leaves
with a warm shutdown once the newer release has migrated the layout.

Under ``CI=true`` the test fails when the previous release cannot be installed
(no git history, say); elsewhere it is skipped, saying why.

This release's producer also makes jobs only it can serve (:func:`new_release_leads`):
leads for a list (issue 27), some with a duplicate check. They travel in lanes of their
own that the previous release never polls, so an old worker never meets one (it would
take it for an ``invalid_payload`` letter): while only old workers run, list jobs wait,
and the new workers add them (README "Upgrading").
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from dispatcher import enqueue_lead, enqueue_leads
from dispatcher.config.settings import Settings
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.simulator import Simulator, SimulatorState
from dispatcher.store.layout import LAYOUT_VERSION
from tests.support.queues import queue_length
from tests.support.settings import FAST
from tests.support.waiting import wait_for
from tests.upgrade.release import Release, ReleaseUnavailable, ReleaseWorker, install_release

pytestmark = pytest.mark.slow

#: The release this round started from (its fixture: fixtures/1c0038d.json).
PREVIOUS = "1c0038d"
#: Leads per producer batch (four batches: old, new, old, new).
BATCH = 75


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    try:
        return install_release(PREVIOUS, tmp_path_factory.mktemp(f"release-{PREVIOUS}"))
    except ReleaseUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"the previous release cannot be installed in CI: {exc}")
        pytest.skip(f"the previous release cannot be installed here: {exc}")


def _env(redis_url: str, sim: Simulator) -> dict[str, str]:
    """What an operator's .env says: both releases read the same variables."""
    env = {f"DISPATCHER_{k.upper()}": str(v) for k, v in FAST.items()}
    env.update(
        DISPATCHER_REDIS_URL=redis_url,
        DISPATCHER_VICIDIAL_URL=sim.url,
        DISPATCHER_VICIDIAL_USER="6666",
        DISPATCHER_VICIDIAL_PASS="1234",
    )
    return env


def _leads(start: int, n: int) -> list[dict[str, Any]]:
    return [
        {"agent_user": "1000", "phone_number": f"727557{i:04d}", "first_name": f"Lead{i}"}
        for i in range(start, start + n)
    ]


def new_release_leads(start: int, n: int) -> list[dict[str, Any]]:
    """Leads as only this release makes them: every third lead is for list 101 (a list
    job, a version 2 message in a list lane), half of those with a duplicate check."""
    leads = _leads(start, n)
    for i, lead in enumerate(leads):
        if i % 3 == 0:
            del lead["agent_user"]
            lead.update(list_id="101", campaign_id="TESTCAMP")
            if i % 2 == 0:
                lead["duplicate_check"] = "DUPLIST"
    return leads


def _is_list_phone(phone: str) -> bool:
    """A phone of :func:`new_release_leads`' list leads (by its index)."""
    index = int(phone[-4:])
    return (index // BATCH) % 2 == 1 and (index % BATCH) % 3 == 0


def _old_enqueue(release: Release, env: dict[str, str], leads: list[dict[str, Any]]) -> list[str]:
    """The previous release's producer API: half one by one (realtime), half in bulk."""
    code = (
        "from dispatcher import enqueue_lead, enqueue_leads\n"
        "half = len(data) // 2\n"
        "ids = [enqueue_lead(**lead) for lead in data[:half]]\n"
        "ids += enqueue_leads(data[half:])\n"
        "print(json.dumps(ids))\n"
    )
    ids: list[str] = release.python_json(code, settings=env, data=leads)
    return ids


def _new_enqueue(settings: Settings, leads: list[dict[str, Any]]) -> list[str]:
    half = len(leads) // 2
    ids = [enqueue_lead(settings=settings, **lead) for lead in leads[:half]]
    return ids + enqueue_leads(leads[half:], settings=settings)


def _up_or_left_cleanly(worker: ReleaseWorker) -> bool:
    """Still serving, or gone as a release that knows the layout version leaves a Redis
    a newer release migrated: a warm shutdown after ``layout.newer`` (exit 0)."""
    if worker.alive():
        return True
    assert worker.process is not None
    left = any(e.get("event") == "layout.newer" for e in worker.logs())
    return worker.process.returncode == 0 and left and "Traceback" not in worker.tail()


@pytest.fixture
def old_workers() -> Iterator[list[ReleaseWorker]]:
    started: list[ReleaseWorker] = []
    yield started
    for worker in started:
        worker.kill()


def test_old_and_new_workers_share_one_redis_through_a_rolling_restart(
    redis_url: str,
    tmp_path: Path,
    previous_release: Release,
    start_worker: Callable[..., WorkerProcess],
    old_workers: list[ReleaseWorker],
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with Simulator(SimulatorState.demo()) as sim:
        sim.set_latency(40)  # calls in flight whenever a worker stops
        env = _env(redis_url, sim)
        settings = Settings.from_mapping(env)

        def old_worker(name: str) -> ReleaseWorker | None:
            """Started, or None when it refuses this Redis cleanly (a newer layout)."""
            worker = previous_release.worker(env, tmp_path / f"{name}.log", name=name)
            old_workers.append(worker)
            try:
                return worker.start()
            except RuntimeError:
                assert worker.process is not None and worker.process.returncode == 1
                text = worker.tail()
                assert "newer than version" in text and "Traceback" not in text, text
                return None

        def added() -> int:
            letters = client.zrange("dispatcher:dlq", 0, 4)
            if letters:  # fail at once, saying why, rather than time out
                shown = [client.get(f"dispatcher:dl:{x}") for x in letters]
                pytest.fail(f"dead letters during the rolling restart: {shown}")
            return sum(1 for j in ids if client.hget(f"dispatcher:job:{j}", "state") == "added")

        ids: list[str] = []
        old_a = old_worker("old-a")
        ids += _old_enqueue(previous_release, env, _leads(0, BATCH))
        new_b = start_worker(settings, name="new-b")
        ids += _new_enqueue(settings, new_release_leads(BATCH, BATCH))
        wait_for(lambda: added() >= len(ids) // 3, timeout=60, message="a third added")
        if old_a is not None:
            # The rolling restart: the old worker leaves (warm shutdown), calls finish.
            assert old_a.stop() == 0, old_a.tail()
        ids += _old_enqueue(previous_release, env, _leads(2 * BATCH, BATCH))
        # The reverse, as in a rollback: an old worker joins the new one's fleet.
        old_c = old_worker("old-c")
        ids += _new_enqueue(settings, new_release_leads(3 * BATCH, BATCH))
        wait_for(lambda: added() >= 2 * len(ids) // 3, timeout=60, message="two thirds added")
        assert new_b.stop() == 0, new_b.tail()
        new_d = start_worker(settings, name="new-d")
        wait_for(lambda: added() == len(ids), timeout=90, message="every lead added")

        counts = Counter(lead.phone_number for lead in sim.leads)
        assert len(ids) == 4 * BATCH and len(set(ids)) == len(ids)
        assert len(counts) == 4 * BATCH and set(counts.values()) == {1}, counts.most_common(3)
        assert queue_length(settings) == 0
        assert client.zcard("dispatcher:scheduled") == 0 and client.zcard("dispatcher:dlq") == 0
        assert new_d.alive()
        assert old_c is None or _up_or_left_cleanly(old_c), old_c.tail()
        # Both releases took part (else this proved nothing about running side by side).
        served_by_old = sum(
            1 for w in old_workers for e in w.logs() if e.get("event") == "lead.added"
        )
        served_by_new = sum(
            1 for w in (new_b, new_d) for e in w.logs() if e.get("event") == "lead.added"
        )
        assert served_by_old + served_by_new == len(ids), (served_by_old, served_by_new)
        # Leads for a list: the new workers alone served them (an old one never took one).
        listed = [x for x in sim.leads if _is_list_phone(x.phone_number)]
        assert len(listed) == 2 * len(range(0, BATCH, 3)) and {x.list_id for x in listed} == {"101"}
        old_events = [e for w in old_workers for e in w.logs()]
        assert not any(
            e.get("event") == "lead.added" and _is_list_phone(str(e.get("phone", "0000")))
            for e in old_events
        )
        assert not any(e.get("reason") == "invalid_payload" for e in old_events)
        if old_a is not None or old_c is not None:
            assert served_by_old > 0 and served_by_new > 0, (served_by_old, served_by_new)
        assert client.get("dispatcher:layout") == str(LAYOUT_VERSION)
