"""Retention of dead letters (DISPATCHER_DEAD_LETTER_RETENTION_DAYS), run by the workers.

Letters are kept forever by default (0). With a number of days, every worker's
maintenance thread (workers/scheduler.py) calls :func:`expire_dead_letters` about
once a minute: the letters whose last failure is older are removed, oldest first, in
bounded batches through the ``dlq`` index's scores (no keyspace scan), each one as
``dlq purge`` removes it (its phone index entry too: execution.lua
``expire_letters``), and each logged ``dlq.expired`` with its job id and reason only.
Several workers doing it at once remove each letter once.
"""

from __future__ import annotations

import time

from dispatcher.config import logs
from dispatcher.store.backend import Backend
from dispatcher.store.connection import broker_errors

__all__ = ["BATCH", "EVERY_S", "expire_dead_letters"]

#: Letters removed per script call, and how often the workers look.
BATCH = 500
EVERY_S = 60.0
_log = logs.get_logger("dispatcher.ops.retention")


def expire_dead_letters(backend: Backend, *, now: float | None = None, batch: int = BATCH) -> int:
    """Remove the dead letters older than the retention; how many went."""
    days = backend.settings.dead_letter_retention_days
    if days <= 0:
        return 0
    cutoff = (time.time() if now is None else now) - days * 86400.0
    removed = 0
    while True:
        with broker_errors(backend.settings):
            gone = backend.execution.expire_letters(before=cutoff, limit=batch)
        for job_id, reason in gone:
            _log.info("dlq.expired", job_id=job_id, reason=reason or None)
        removed += len(gone)
        if len(gone) < batch:
            return removed
