"""Exactly-once under a randomized fault schedule (issue 23, "a fault schedule in the suite").

One seeded run (:mod:`dispatcher.devtools.fault_schedule`): a few hundred leads over
two real workers (the default engine and ``DISPATCHER_ENGINE=threads``), a real Redis
with its AOF on and the simulator, while workers are killed and frozen past their
lease, Redis restarts and fills up, VICIdial has an outage and answers are lost after
the insert. Then the checker (:mod:`dispatcher.devtools.history_check`) reads the
final history: every job final, one lead in VICIdial per ``added`` job, none for dead
letters other than ``ambiguous``, no lead nobody accounts for.

The seed is fresh each run, printed and in the failure message;
``DISPATCHER_FAULT_SEED=N`` replays a schedule (set it for this file only: the other
tests read every ``DISPATCHER_*`` variable as a setting). Longer runs over many seeds:
``python -m bench --only faults --long``.

The checker's own tests below feed it made-up histories: each kind of violation must
be reported, so that a green run means something.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dispatcher.devtools.fault_schedule import (
    FAULT_SEED_ENV,
    SUITE,
    FaultRun,
    fault_seed,
    make_schedule,
)
from dispatcher.devtools.history_check import (
    History,
    JobRecord,
    Letter,
    StoredRecord,
    check,
)

# -- the run -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_fault_schedule_loses_no_lead_and_adds_none_twice(tmp_path: Path) -> None:
    seed = fault_seed()
    schedule = make_schedule(seed, SUITE)
    print(f"fault schedule seed {seed} (replay: {FAULT_SEED_ENV}={seed})", flush=True)
    for line in schedule.describe():
        print(f"  {line}", flush=True)
    history = FaultRun(schedule, tmp_path).run()
    verdict = check(history)
    print(verdict.summary(), flush=True)
    if not verdict.ok:
        pytest.fail(verdict.report(), pytrace=False)
    # The run did what it says: every scheduled fault was applied without error.
    if any("FAILED" in step for step in history.applied):
        pytest.fail("a fault could not be applied\n" + verdict.report(), pytrace=False)
    steps = sum(1 if event.kind == "kill" else 2 for event in schedule.events)
    assert len([a for a in history.applied if "heal:" not in a]) == steps, verdict.report()


# -- the schedule ------------------------------------------------------------------------


def test_a_seed_gives_one_schedule_and_faults_of_a_resource_never_overlap() -> None:
    first, again = make_schedule(12345), make_schedule(12345)
    assert first == again
    assert first != make_schedule(12346)
    for seed in range(200):
        schedule = make_schedule(seed)
        spans: dict[str, list[tuple[float, float]]] = {}
        for event in schedule.events:
            resource = event.target if event.kind in ("kill", "stop") else event.kind
            resource = "redis" if event.kind.startswith("redis") else resource
            assert event.at + event.seconds <= SUITE.window_s, event  # undone in the window
            # A killed worker boots for a while: its next fault comes after.
            end = event.at + max(event.seconds, 3.0 if event.kind == "kill" else 0.0)
            for start, stop in spans.get(resource, []):
                assert end <= start or event.at >= stop, (seed, event)
            spans.setdefault(resource, []).append((event.at, end))
        counts = schedule.counts()
        assert counts["stop"] == 1 and counts["redis_restart"] == 1, (seed, counts)
        assert counts["answer_lost"] == 15
        assert all(e.seconds > 8.0 for e in schedule.events if e.kind == "stop")


def test_the_seed_comes_from_the_environment_or_is_fresh() -> None:
    assert fault_seed({FAULT_SEED_ENV: " 42 "}) == 42
    fresh = {fault_seed({}) for _ in range(5)}
    assert len(fresh) > 1 and all(seed > 0 for seed in fresh)
    with pytest.raises(ValueError, match=FAULT_SEED_ENV):
        fault_seed({FAULT_SEED_ENV: "forty-two"})


# -- the checker -------------------------------------------------------------------------


def _job(index: int, state: str, *, lead_id: str = "", reason: str = "", **more: Any) -> JobRecord:
    job_id = f"job{index}"
    status = {"state": state, "lead_id": lead_id or None, "reason": reason or None, **more}
    return JobRecord(index, f"72780000{index:02d}", (job_id,), {job_id: status})


def _stored(index: int, lead_id: str, *, marker: str | None = None) -> StoredRecord:
    return StoredRecord(
        lead_id, f"72780000{index:02d}", f"job{index}" if marker is None else marker
    )


def _history(
    jobs: list[JobRecord], stored: list[StoredRecord], letters: list[Letter] | None = None
) -> History:
    return History(seed=7, faults={"kill": 1}, jobs=jobs, letters=letters or [], stored=stored)


def _kinds(history: History) -> list[str]:
    return [p.kind for p in check(history).problems]


def test_the_checker_passes_a_clean_history() -> None:
    verdict = check(
        _history(
            [
                _job(0, "added", lead_id="1"),
                _job(1, "dead", reason="ambiguous"),
                _job(2, "dead", reason="ambiguous"),
                _job(3, "dead", reason="dnc"),
            ],
            [_stored(0, "1"), _stored(2, "2")],
            [
                Letter("job1", "job1", "ambiguous"),
                Letter("job2", "job2", "ambiguous"),
                Letter("job3", "job3", "dnc"),
            ],
        )
    )
    assert verdict.ok, verdict.report()
    assert (verdict.lost, verdict.duplicated, verdict.ambiguous_left) == (0, 0, 2)
    assert verdict.ambiguous_in_vicidial == 1
    assert "lost=0 duplicated=0 ambiguous_left=2" in verdict.summary()


def test_the_checker_reports_a_lead_added_twice() -> None:
    verdict = check(_history([_job(0, "added", lead_id="1")], [_stored(0, "1"), _stored(0, "2")]))
    assert [p.kind for p in verdict.problems] == ["duplicated"]
    assert verdict.duplicated == 1 and not verdict.ok
    assert "FAILED" in verdict.summary() and "leads 1, 2" in verdict.report()


def test_the_checker_reports_every_way_of_losing_a_lead() -> None:
    unknown = JobRecord(3, "7278000003", ("job3",), {"job3": None})
    never = JobRecord(4, "7278000004", (), {}, enqueue_errors=9)
    verdict = check(
        _history(
            [
                _job(0, "retrying", reason="http_error", attempts=3),
                _job(1, "added", lead_id="5"),
                _job(2, "dead", reason="http_error"),
                unknown,
                never,
            ],
            [],
        )
    )
    assert [p.kind for p in verdict.problems] == [
        "lost",
        "added_not_in_vicidial",
        "dead_without_letter",
        "lost",
        "not_enqueued",
    ]
    assert verdict.lost == 5
    assert "not final: state=retrying, reason=http_error, attempts=3" in verdict.report()


def test_the_checker_reports_wrong_ids_stray_leads_and_letters() -> None:
    kinds = _kinds(
        _history(
            [
                _job(0, "added", lead_id="2"),  # VICIdial has lead 1 for it
                _job(1, "dead", reason="http_error"),  # yet its lead is there
                _job(2, "added", lead_id="3", duplicate_lead_ids=["9"]),
                _job(3, "added", lead_id="4"),
            ],
            [
                _stored(0, "1"),
                _stored(1, "5"),
                _stored(2, "3"),
                _stored(3, "4", marker="job0"),  # another job's marker
                StoredRecord("6", "7279999999", ""),  # a phone no job has
            ],
            [
                Letter("job1", "job1", "http_error"),
                Letter("job3", "job3", "ambiguous"),
                Letter("x", "nobody", "internal"),
            ],
        )
    )
    assert kinds == [
        "wrong_lead_id",
        "dead_but_added",
        "false_duplicate",
        "foreign_marker",
        "stray_letter",
        "unaccounted_lead",
        "foreign_letter",
    ]


def test_the_checker_reports_a_lead_enqueued_as_two_jobs() -> None:
    record = JobRecord(
        0,
        "7278000000",
        ("a", "b"),
        {"a": {"state": "added", "lead_id": "1"}, "b": {"state": "added", "lead_id": "2"}},
    )
    history = _history(
        [record],
        [StoredRecord("1", "7278000000", "a"), StoredRecord("2", "7278000000", "b")],
    )
    assert _kinds(history) == ["enqueued_twice", "duplicated"]


def test_the_checker_reports_a_worker_that_ended_on_its_own() -> None:
    history = History(
        seed=7,
        faults={},
        jobs=[_job(0, "added", lead_id="1")],
        letters=[],
        stored=[_stored(0, "1")],
        worker_exits=["w2 (exit code 1, by the end)"],
    )
    verdict = check(history)
    assert [p.kind for p in verdict.problems] == ["worker_exited"]
    assert verdict.lost == 0 and verdict.duplicated == 0 and not verdict.ok


def test_the_checker_reports_a_list_job_taken_for_a_duplicate_of_its_own_lead() -> None:
    """Every lead of a run has a phone of its own: a ``duplicate`` can only name a lead of
    the job itself (its lost call's), which the job must have ended ``added`` with."""

    def listed(index: int, state: str, **more: Any) -> JobRecord:
        record = _job(index, state, **more)
        return JobRecord(record.index, record.phone, record.job_ids, record.states, target="list")

    clean = _history(
        [listed(0, "added", lead_id="1"), listed(1, "duplicate", existing_lead_id="2")],
        [_stored(0, "1"), _stored(1, "2", marker="")],  # lead 2: not the job's (no marker)
    )
    assert check(clean).ok, check(clean).report()
    kinds = _kinds(
        _history(
            [
                listed(0, "duplicate", existing_lead_id="1"),  # its own lead (its marker)
                listed(1, "duplicate", existing_lead_id="7"),  # a lead VICIdial lacks
                _job(2, "duplicate", existing_lead_id="3"),  # an agent's job
            ],
            [_stored(0, "1"), _stored(2, "3", marker="")],
        )
    )
    assert kinds == ["duplicate_of_own_lead", "duplicate_of_nothing", "duplicate_of_agent_job"]


def test_a_schedule_sends_a_share_of_leads_to_a_list_some_with_a_duplicate_check() -> None:
    schedule = make_schedule(4242)
    targets = [schedule.target(i) for i in range(SUITE.leads)]
    assert targets.count("agent") == SUITE.leads - round(SUITE.leads * SUITE.list_share)
    assert 20 <= targets.count("list_dup") <= 70 and 20 <= targets.count("list") <= 70
    assert make_schedule(4242).targets == schedule.targets
    assert any("leads for a list" in line for line in schedule.describe())
