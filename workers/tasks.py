"""The add-lead task body: a thin Celery shell around :class:`workers.runner.JobRunner`.

Registered on the app by :func:`workers.celery_app.make_app` (this module does not
import the app, so importing it builds nothing).
"""

from __future__ import annotations

import time
from typing import Any

from celery.exceptions import Reject

from dispatcher.config import logs
from workers.runner import TransientInfrastructureError, get_runner

__all__ = ["add_lead"]

_log = logs.get_logger("workers.tasks")


def add_lead(self: Any, message: Any = None, *args: Any, **kwargs: Any) -> None:
    """Add one lead to VICIdial (the message is a job, see dispatcher.model.jobs).

    Never returns without an outcome stored: anything that goes wrong here and
    is not stored hands the message back to the queue (Celery would otherwise
    acknowledge a task that raised, and the job would vanish).
    """
    if args or kwargs:
        # Not our message shape; the runner dead-letters it as invalid_payload.
        message = {"raw": repr((message, args, kwargs))[:10_000]}
    try:
        get_runner().run(message)
    except TransientInfrastructureError as exc:
        time.sleep(1.0)  # do not spin on a dead Redis
        raise Reject(str(exc), requeue=True) from None
    except Exception as exc:  # the runner could not even start (settings, HTTP client)
        _log.error("worker.task_failed", error=f"{type(exc).__name__}: {exc}")
        time.sleep(1.0)
        raise Reject(f"{type(exc).__name__}: {exc}", requeue=True) from None
