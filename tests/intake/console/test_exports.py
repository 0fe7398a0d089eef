"""Exports (dispatcher/intake/console/exports.py): JSON lines and CSV of what matches,
streamed; no CSV cell starts a formula.
"""

from __future__ import annotations

import csv
import io
import json

from starlette.testclient import TestClient

from dispatcher.config.settings import Settings
from tests.support.console import add_letters


def test_export_streams_json_lines_and_csv_of_what_matches(
    operator: TestClient, cs: Settings
) -> None:
    add_letters(cs, 3)
    add_letters(cs, 2, reason="dnc", phone_base=7275581000)
    reply = operator.get("/ui/dead-letters/export?format=jsonl&reason=dnc")
    assert reply.status_code == 200
    assert reply.headers["content-disposition"].startswith('attachment; filename="dead-letters-')
    records = [json.loads(line) for line in reply.text.splitlines()]
    assert [r["reason"] for r in records] == ["dnc", "dnc"]
    assert set(records[0]) >= {"id", "job_id", "reason", "error", "attempts", "job", "replays"}
    reply = operator.get("/ui/dead-letters/export?format=csv")
    rows = list(csv.DictReader(io.StringIO(reply.text)))
    assert len(rows) == 5 and rows[0]["phone_number"].startswith("72755")
    assert json.loads(rows[0]["job"])["lead"]["phone_number"] == rows[0]["phone_number"]
    assert operator.get("/ui/dead-letters/export?format=xml").status_code == 400


def test_csv_cells_never_start_a_formula(operator: TestClient, cs: Settings) -> None:
    add_letters(cs, 1, error='=HYPERLINK("http://evil")')
    rows = list(
        csv.DictReader(io.StringIO(operator.get("/ui/dead-letters/export?format=csv").text))
    )
    assert rows[0]["error"].startswith("'=")
