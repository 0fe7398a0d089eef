"""The overview (``/ui/``): the fleet at a glance, and the last hour as a chart.

Queue and lanes per dialer, retries waiting, workers, pauses, dead letters per
reason, whether reconciliation's look-ups work (:mod:`.lookups`), and the
leads added and dead-lettered per minute (:mod:`.chart`).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from dispatcher.intake.console.chart import activity_svg
from dispatcher.intake.console.context import Console
from dispatcher.intake.console.lookups import lookup_rows
from dispatcher.ops.status import fleet_status
from dispatcher.store.activity import read_activity

__all__ = ["Overview"]


class Overview:
    """``GET /``."""

    def __init__(self, console: Console) -> None:
        self.console = console

    async def page(self, request: Request) -> Response:
        console = self.console
        data = await console.thread(self._data)
        minutes = data["minutes"]
        hour = {
            "added": sum(m.added or 0 for m in minutes),
            "dead": sum(m.dead or 0 for m in minutes),
        }
        return console.render(
            request,
            "overview.html",
            nav="overview",
            flash=await console.flash(request),
            chart=activity_svg(minutes),
            hour=hour,
            dead_total=sum(data["status"]["dead_letters"].values()),
            lookup_rows=lookup_rows(console.settings, data["status"], redact=console.redact),
            can_act=request.state.session.can_act,
            **data,
        )

    def _data(self) -> dict[str, Any]:
        now = time.time()
        status = fleet_status(self.console.backend, now=now)
        minutes = read_activity(self.console.backend, now=now)
        return {
            "status": status,
            "minutes": minutes,
            "oldest_queued_age": _oldest_queued_age(status),
        }


def _oldest_queued_age(status: dict[str, Any]) -> float | None:
    """How long the next job of the most lagging dialer's lane has waited."""
    ages = [
        d["oldest_queued_age_s"]
        for d in status.get("dialers", {}).values()
        if d.get("oldest_queued_age_s") is not None
    ]
    return max(ages) if ages else None
