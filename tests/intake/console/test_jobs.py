"""Job lookup (dispatcher/intake/console/jobs.py), and what a job's and a letter's pages
say about its dialer, lane and reconciliation.
"""

from __future__ import annotations

import re

from starlette.testclient import TestClient

from dispatcher.config.settings import Settings
from dispatcher.store.backend import get_backend
from tests.support.console import add_letters


def test_job_lookup(operator: TestClient, cs: Settings) -> None:
    [letter] = add_letters(cs, 1)
    page = operator.get(f"/ui/jobs?job_id={letter.job_id}").text
    assert '<span id="job-state">dead</span>' in page
    assert f'href="/ui/dead-letters/{letter.id}"' in page
    assert operator.get("/ui/jobs?job_id=feedfeed").status_code == 404
    assert operator.get("/ui/jobs?job_id=" + "x" * 200).status_code == 400
    assert operator.get("/ui/jobs").status_code == 200


def test_detail_and_job_pages_show_dialer_lane_and_reconciliation(
    two_operator: TestClient, two: Settings
) -> None:
    [letter] = add_letters(two, 1, dialer="west", priority="bulk")
    page = two_operator.get(f"/ui/dead-letters/{letter.id}").text
    assert "<dt>Dialer</dt><dd>west</dd>" in page and "<dt>Lane</dt><dd>bulk</dd>" in page
    # A job reconciled with VICIdial: found twice, one copy deleted (dialer and lane as
    # the enqueue recorded them).
    backend = get_backend(two)
    backend.redis.hset(
        backend.keys.job(letter.job_id),
        mapping={
            "dialer": "west",
            "priority": "bulk",
            "state": "added",
            "lead_id": "7",
            "reconcile": "duplicates",
            "duplicate_lead_ids": "9,12",
            "deleted_lead_ids": "12",
        },
    )
    job = two_operator.get(f"/ui/jobs/{letter.job_id}").text
    assert "<dt>dialer</dt><dd>west</dd>" in job and "<dt>priority</dt><dd>bulk</dd>" in job
    assert "<dt>duplicate_lead_ids</dt><dd>9, 12</dd>" in job
    assert "found in VICIdial more than once" in job
    assert re.search(r"added as lead 7;\s+the other copies are leads 9, 12", job)
    assert "deleted as duplicates: 12" in job
