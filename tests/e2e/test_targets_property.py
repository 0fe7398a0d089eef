"""The property for both ways into VICIdial, through real workers (issue 27, part B).

Random leads, some for an agent (external_add_lead), some for a list (add_lead), each
enqueued through the Python API and delivered by a real worker process to the
simulator: whatever validates is added once, and what VICIdial stores is exactly what
was sent after the documented normalisations (README "Leads"), plus the job's marker
(``source_id``, when the lead left it empty); whatever is refused is refused at enqueue,
naming its fields. The leads come from the per-field properties' strategies
(tests/support/strategies.py, shared with tests/model/test_lead_property.py and
tests/workers/test_list_client.py), drawn so that most validate; each has a phone
number of its own (written in one of the accepted formats), so that every job finds its
own row. Sized to seconds: a few batches of a dozen leads.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher import InvalidLead, enqueue_lead, job_status
from dispatcher.devtools.localfleet import WorkerProcess
from dispatcher.model.lead import Lead, make_lead
from dispatcher.model.list_lead import make_list_lead
from dispatcher.model.marker import marker
from dispatcher.simulator import Simulator
from dispatcher.simulator.addlead_fields import ADD_LEAD_FIELDS
from tests.support.settings import make_settings
from tests.support.strategies import LETTER_FIELDS, list_leads, near_valid
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

#: What add_lead stores for a field not sent.
UNSENT = {"gender": "U", "rank": "0", "date_of_birth": "0000-00-00"}
#: How a producer may write a phone number (the lead rules remove the formatting).
FORMATS: tuple[Callable[[str], str], ...] = (
    lambda p: p,
    lambda p: f"({p[:3]}) {p[3:6]}-{p[6:]}",
    lambda p: f"+1 {p[:3]} {p[3:6]} {p[6:]}",
    lambda p: f"{p[:3]}.{p[3:6]}.{p[6:]}",
)


@st.composite
def agent_leads(draw: st.DrawFn) -> dict[str, object]:
    """A lead for agent 1000 (logged in on TESTCAMP) with a few near-valid fields."""
    data: dict[str, object] = {"agent_user": "1000"}
    for name in draw(st.lists(st.sampled_from(LETTER_FIELDS), max_size=4, unique=True)):
        data[name] = draw(near_valid(name, False))
    return data


def expected(data: dict[str, object], phone: str) -> Lead:
    """The lead the job holds: the documented normalisations of what was sent."""
    if "list_id" in data:
        return make_list_lead({**data, "phone_number": phone}, default_phone_code="1")
    return make_lead({**data, "phone_number": phone}, default_phone_code="1")


def test_property_both_targets_are_stored_exactly_through_real_workers(
    redis_url: str, simulator: Simulator, start_worker: Callable[..., WorkerProcess]
) -> None:
    config = make_settings(redis_url, simulator)
    start_worker(config, concurrency=8)
    numbers = itertools.count()
    seen = {"agent": 0, "list": 0, "refused": 0}

    @settings(
        max_examples=10, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(
        batch=st.lists(
            st.tuples(
                st.one_of(agent_leads(), list_leads(False)),
                st.sampled_from(range(len(FORMATS))),
            ),
            min_size=8,
            max_size=16,
        )
    )
    def check(batch: list[tuple[dict[str, object], int]]) -> None:
        sent: list[tuple[str, Lead, dict[str, object]]] = []
        for data, style in batch:
            phone = f"727{6000000 + next(numbers):07d}"
            fields = {k: v for k, v in data.items() if k != "phone_number"}
            try:
                job_id = enqueue_lead(
                    **fields,
                    phone_number=FORMATS[style](phone),
                    dnc_check=False,
                    campaign_dnc_check=False,
                    settings=config,
                )
            except InvalidLead as exc:
                seen["refused"] += 1
                named = set(fields) | {"phone_code"}
                if style == 2 and "phone_code" in fields:
                    # "+1 ..." with another phone_code: the number's own country code
                    # contradicts it, and the error names the number.
                    named.add("phone_number")
                assert {e.field for e in exc.errors} <= named, exc
                continue
            lead = expected(fields, phone)
            sent.append((job_id, lead, fields))
            seen["list" if lead.list_id else "agent"] += 1
        for job_id, lead, fields in sent:
            status: dict[str, Any] = wait_for(
                lambda job_id=job_id: (
                    (s := job_status(job_id, settings=config))
                    and s["state"] in ("added", "duplicate", "dead")
                    and s
                ),
                timeout=30,
                message=f"job {job_id}",
            )
            assert status["state"] == "added", (status, fields)
            stored = simulator.lead(int(status["lead_id"]))
            assert stored is not None
            assert (stored.phone_number, stored.phone_code) == (lead.phone_number, lead.phone_code)
            sent_fields = dict(lead.fields)
            sent_fields.setdefault("source_id", marker(job_id, "source_id"))
            if lead.list_id:
                assert stored.list_id == lead.list_id and status["target"] == "list"
                for name in ADD_LEAD_FIELDS:
                    want = sent_fields.get(name, UNSENT.get(name, ""))
                    assert stored.fields[name] == want, (name, fields)
            else:
                assert stored.list_id == "101" and status["target"] == "agent"
                assert stored.fields == sent_fields, fields
            assert len([x for x in simulator.leads if x.phone_number == lead.phone_number]) == 1

    check()
    # Both targets reached VICIdial, and the rules refused some (a property that only
    # ever refused, or only ever took one way, would prove little).
    assert seen["agent"] >= 10 and seen["list"] >= 10 and seen["refused"] >= 3, seen
