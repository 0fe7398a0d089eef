"""The add-lead task: a thin Celery shell around :class:`workers.runner.JobRunner`."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from celery.exceptions import Reject

from dispatcher.backend import get_backend
from dispatcher.jobs import TASK_NAME
from dispatcher.settings import get_settings
from workers.celery_app import app
from workers.runner import JobRunner, TransientInfrastructureError

__all__ = ["add_lead", "get_runner"]

_runner: JobRunner | None = None
_runner_pid = 0
_lock = threading.Lock()


def get_runner() -> JobRunner:
    """The process's runner: one httpx.Client and one Redis pool per process.

    Created lazily and again after a fork (prefork children must not share the
    parent's sockets).
    """
    global _runner, _runner_pid
    if _runner is None or _runner_pid != os.getpid():
        with _lock:
            if _runner is None or _runner_pid != os.getpid():
                settings = get_settings()
                _runner = JobRunner(settings, get_backend(settings))
                _runner_pid = os.getpid()
    return _runner


@app.task(name=TASK_NAME, bind=True, acks_late=True, ignore_result=True)
def add_lead(self: Any, message: Any = None, *args: Any, **kwargs: Any) -> None:
    """Add one lead to VICIdial (the message is a job, see dispatcher.jobs)."""
    if args or kwargs:
        # Not our message shape; the runner dead-letters it as invalid_payload.
        message = {"raw": repr((message, args, kwargs))[:10_000]}
    try:
        get_runner().run(message)
    except TransientInfrastructureError as exc:
        time.sleep(1.0)  # do not spin on a dead Redis
        raise Reject(str(exc), requeue=True) from None
