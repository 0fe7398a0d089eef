"""Outcome notifications for operators: the backlog, failed notifications, resending them.

What ``dispatcher notify`` and the console show and do, over the outbox
(:mod:`dispatcher.store.outbox`): list undelivered events (pending, waiting behind an
earlier event of their job, or failed), send failed ones again (a new retry window), purge
failed ones, and read the backlog's counts (``status``, ``/metrics``). The erasure of a
phone (``dispatcher forget``) removes the undelivered events of its jobs
(:func:`erase_notifications`, registered with :mod:`dispatcher.ops.erasure`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dispatcher.store.backend import Backend
from dispatcher.store.connection import broker_errors
from dispatcher.store.outbox import OutboxCounts, StoredEvent

__all__ = [
    "PAGE",
    "NotificationPage",
    "erase_notifications",
    "list_notifications",
    "notification_counts",
    "notification_counts_dict",
    "purge_failed",
    "retry_failed",
]

#: Events read per round trip (retry --all-failed, purge --all-failed work in these).
PAGE = 500


@dataclass(frozen=True)
class NotificationPage:
    events: list[StoredEvent]
    counts: OutboxCounts

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": notification_counts_dict(self.counts),
            "events": [e.to_dict() for e in self.events],
        }


def notification_counts(backend: Backend) -> OutboxCounts:
    with broker_errors(backend.settings):
        return backend.outbox.counts()


def notification_counts_dict(counts: OutboxCounts) -> dict[str, Any]:
    return {
        "pending": counts.pending,
        "failed": counts.failed,
        "due": counts.due,
        "oldest_pending_age_s": counts.oldest_pending_age_s,
    }


def list_notifications(
    backend: Backend, *, failed: bool = False, limit: int = 50, offset: int = 0
) -> NotificationPage:
    """Undelivered events, oldest first: the pending ones (with those waiting behind an
    earlier event of their job), or with ``failed`` the failed ones."""
    outbox = backend.outbox
    with broker_errors(backend.settings):
        ids = (
            outbox.failed_ids(limit=limit, offset=offset)
            if failed
            else outbox.pending_ids(limit=limit, offset=offset)
        )
        events = outbox.read(ids)
        counts = outbox.counts()
    return NotificationPage(events, counts)


def retry_failed(backend: Backend, event_ids: list[str] | None = None) -> int:
    """Send failed events again (``None``: every failed one); how many were failed."""
    outbox = backend.outbox
    n = 0
    with broker_errors(backend.settings):
        if event_ids is not None:
            for start in range(0, len(event_ids), PAGE):
                n += outbox.retry(event_ids[start : start + PAGE])
            return n
        # At most the failed ones of now: one retried now may fail again meanwhile (a
        # receiver this worker may not send to fails at once), and is not taken twice.
        todo = outbox.counts().failed
        while n < todo:
            ids = outbox.failed_ids(limit=min(PAGE, todo - n))
            if not ids:
                return n
            done = outbox.retry(ids)
            n += done
            if done == 0:
                return n
        return n


def purge_failed(backend: Backend, event_ids: list[str] | None = None) -> int:
    """Remove failed events for good (``None``: every failed one); how many went."""
    outbox = backend.outbox
    n = 0
    with broker_errors(backend.settings):
        if event_ids is not None:
            for start in range(0, len(event_ids), PAGE):
                n += outbox.purge(event_ids[start : start + PAGE])
            return n
        while True:
            ids = outbox.failed_ids(limit=PAGE)
            if not ids:
                return n
            done = outbox.purge(ids)
            n += done
            if done == 0:
                return n


def erase_notifications(backend: Backend, target: Any, dry_run: bool) -> dict[str, int]:
    """The erasure of a phone (:mod:`dispatcher.ops.erasure`): the undelivered events of
    its jobs (found in the index, or by ``--scan``). They hold no phone, but they name
    jobs whose data is gone."""
    job_ids = {*target.job_ids, *(job_id for job_id, _ in target.scanned)}
    with broker_errors(backend.settings):
        n = backend.outbox.forget(sorted(job_ids), dry_run=dry_run)
    return {"notifications": n}
