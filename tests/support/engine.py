"""The lead engine in-process: a runner and an engine on a real Redis, whose consumer's
acks and rejects are recorded instead of sent (the end-to-end tests run the engine
inside real Celery workers); jobs pushed as producers push them, and read back."""

from __future__ import annotations

from typing import Any

import redis

from dispatcher import job_status
from dispatcher.config.settings import Settings
from dispatcher.ops.producer import prepare_job, push_jobs
from dispatcher.store.backend import get_backend
from tests.support.waiting import wait_for
from workers import engine as engine_module
from workers.engine import LeadEngine
from workers.runner import JobRunner

__all__ = ["Harness", "Recorded", "engine_connections", "enqueue_message", "job_state"]


class Recorded:
    """A message's ack/reject as the consumer would receive them."""

    def __init__(self, log: list[tuple[str, Recorded]]) -> None:
        self._log = log

    def settle(self, *, ack: bool) -> None:
        self._log.append(("ack" if ack else "reject", self))


class Harness:
    """A started :class:`LeadEngine` over its own :class:`JobRunner`; :meth:`close` it."""

    def __init__(self, settings: Settings, *, capacity: int = 32) -> None:
        self.settings = settings
        self.runner = JobRunner(settings, get_backend(settings))
        self.engine = LeadEngine(self.runner, capacity=capacity)
        self.engine.start()
        self.settled: list[tuple[str, Recorded]] = []

    def submit(self, message: object) -> Recorded:
        handle = Recorded(self.settled)
        self.engine.submit(handle, message)  # type: ignore[arg-type]
        return handle

    def wait(self, count: int, timeout: float = 20.0) -> None:
        wait_for(lambda: len(self.settled) >= count, timeout=timeout, message="settled")

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.settled]

    def close(self) -> None:
        self.engine.stop(timeout=20)
        self.runner.close()


def enqueue_message(settings: Settings, phone: str, **fields: object) -> dict[str, Any]:
    """A job for agent 1000 and ``phone``, pushed to its queue; its message, as a worker
    receives it."""
    job = prepare_job({"agent_user": "1000", "phone_number": phone, **fields}, settings=settings)
    push_jobs([job], settings=settings)
    message: dict[str, Any] = job.to_message()
    return message


def job_state(settings: Settings, message: dict[str, Any]) -> str:
    """The state of ``message``'s job ("" for a job the store does not know)."""
    status = job_status(str(message["job_id"]), settings=settings)
    return "" if status is None else str(status["state"])


def engine_connections(redis_url: str) -> list[str]:
    """The names of the lead engines' connections to the Redis at ``redis_url``."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [c["name"] for c in client.client_list() if c["name"] == engine_module.CLIENT_NAME]
    finally:
        client.close()
