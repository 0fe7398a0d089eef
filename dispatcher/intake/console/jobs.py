"""Job lookup (``/ui/jobs``): one job's state as ``dispatcher job`` shows it.

Where an action on one letter lands (its job, with the flash saying what was
done); a dead job links to its letter.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from dispatcher.intake.console.context import Console
from dispatcher.ops.producer import job_status
from dispatcher.store.deadletter import DeadLetter

__all__ = ["Jobs", "job_state"]


def job_state(console: Console, job_id: str) -> dict[str, Any] | None:
    """The job's state, its error line redacted (workers store it redacted already)."""
    job = job_status(job_id, settings=console.settings)
    if job is not None and job.get("error"):
        job["error"] = console.redact(job["error"])
    return job


class Jobs:
    """``GET /jobs?job_id=ID`` and ``GET /jobs/ID``."""

    def __init__(self, console: Console) -> None:
        self.console = console

    async def page(self, request: Request) -> Response:
        console = self.console
        job_id = (
            request.path_params.get("job_id") or request.query_params.get("job_id", "")
        ).strip()
        context: dict[str, Any] = {
            "nav": "jobs",
            "job_id": job_id,
            "job": None,
            "letter": None,
            "error": "",
            "flash": await console.flash(request),
        }
        if not job_id:
            return console.render(request, "job.html", **context)
        if len(job_id) > 128 or not job_id.isprintable():
            context["error"] = "job id: at most 128 printable characters"
            return console.render(request, "job.html", status_code=400, **context)
        job, letter = await console.thread(self._job_and_letter, job_id)
        if job is None:
            context["error"] = f"No job {job_id!r} (unknown id, or its state expired)."
            return console.render(request, "job.html", status_code=404, **context)
        context.update(job=job, letter=letter)
        return console.render(request, "job.html", **context)

    def _job_and_letter(self, job_id: str) -> tuple[dict[str, Any] | None, DeadLetter | None]:
        job = job_state(self.console, job_id)
        dead = job is not None and job.get("state") == "dead"
        letter = self.console.store.get(job_id) if dead else None
        return job, letter
