"""What an operator does to dead letters: replay, reconcile, purge, and what each did.

One implementation for ``dispatcher dlq`` and the web console: the letters come
from a :class:`~dispatcher.ops.selection.Selection` (or any iterable), each is
handed to the store's one-command transition, and the outcomes are counted into a
summary whose fields and sentence both surfaces show, so that no outcome (a letter
``busy`` under a worker's live claim, say) is counted by one and lost by the other.

Every letter acted on is logged (``dlq.replayed``, ``dlq.reconcile_requested``,
``dlq.purged``) with the caller's ``log_fields`` (the console adds the operator).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import ClassVar

from dispatcher.config import logs
from dispatcher.ops.selection import AMBIGUOUS_REASONS, DNC_REASONS
from dispatcher.store.deadletter import DeadLetter, DeadLetterStore

__all__ = [
    "REPLAY_BATCH",
    "ReconcileSummary",
    "ReplaySummary",
    "purge_letters",
    "reconcile_letters",
    "replay_letters",
]

#: Letters replayed in one round trip when no rate is set (`dlq replay --all` of a
#: large store: one round trip a letter was most of its time).
REPLAY_BATCH = 200
_log = logs.get_logger("dispatcher.dlq")


@dataclass(frozen=True)
class ReplaySummary:
    """What a replay did, counted from :func:`replay_letters`' outcomes.

    The fields, in this order, are ``dispatcher dlq replay --json``'s keys.
    """

    replayed: int = 0
    #: the lead was added after all: the letter was removed, nothing sent ("done")
    already_added: int = 0
    #: replayed or purged meanwhile by someone else ("missing")
    gone: int = 0
    #: no job a worker can read (invalid_payload, say): nothing to send
    unreplayable: int = 0
    skipped_dnc: int = 0
    skipped_ambiguous: int = 0
    #: a worker holds a live claim on the job right now: the letter stays, try again
    busy: int = 0

    #: Outcome (ReplayResult or a skip) -> the field that counts it.
    FIELDS: ClassVar[dict[str, str]] = {
        "replayed": "replayed",
        "done": "already_added",
        "missing": "gone",
        "unreplayable": "unreplayable",
        "skipped_dnc": "skipped_dnc",
        "skipped_ambiguous": "skipped_ambiguous",
        "busy": "busy",
    }

    @classmethod
    def of(cls, outcomes: Mapping[str, int]) -> ReplaySummary:
        return cls(**{field: outcomes.get(key, 0) for key, field in cls.FIELDS.items()})

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def sentence(self) -> str:
        """Every count, for people (lower case, no full stop: the caller frames it)."""
        return (
            f"replayed {self.replayed}; {self.already_added} were added after all "
            f"(removed, not sent); {self.gone} already gone; {self.unreplayable} not "
            f"replayable (invalid_payload, or no job a worker can read); {self.busy} held by "
            "a worker right now "
            f"(try again); {self.skipped_dnc} DNC and {self.skipped_ambiguous} ambiguous "
            "left alone"
        )


@dataclass(frozen=True)
class ReconcileSummary:
    """What handing letters to the workers to be looked up did (:func:`reconcile_letters`)."""

    reconciling: int = 0
    #: the lead was added after all: the letter was removed, nothing sent ("done")
    already_added: int = 0
    #: replayed or purged meanwhile by someone else ("missing")
    gone: int = 0
    #: a worker holds a live claim on the job right now: the letter stays, try again
    busy: int = 0
    #: no job a worker can read: nothing to look up
    unreplayable: int = 0
    #: not ambiguous: VICIdial answered these, nothing to look up
    left_alone: int = 0
    #: when the first look-up is due (epoch), None if none was handed over
    first_due: float | None = None

    #: Outcome (ReconcileResult, or left_alone) -> the field that counts it.
    FIELDS: ClassVar[dict[str, str]] = {
        "reconciling": "reconciling",
        "done": "already_added",
        "missing": "gone",
        "busy": "busy",
        "unreplayable": "unreplayable",
        "left_alone": "left_alone",
    }

    def as_dict(self) -> dict[str, int]:
        """The counts (``dispatcher dlq reconcile --json``), without ``first_due``."""
        return {field: getattr(self, field) for field in self.FIELDS.values()}

    def sentence(self, when: str = "") -> str:
        """Every count, for people; ``when``: the first look-up's time as the caller shows it."""
        since = f" from {when}" if when and self.first_due is not None else ""
        return (
            f"handed {self.reconciling} letter(s) to the workers: each lead is looked up "
            f"in VICIdial{since}, then marked added, called again, or written back as a "
            f"dead letter saying why; {self.already_added} were added after all (removed, "
            f"nothing sent); {self.gone} already gone; {self.busy} held by a worker right "
            f"now (try again); {self.unreplayable} not replayable (no job a worker can read); "
            f"{self.left_alone} not ambiguous, left alone"
        )


def replay_letters(
    store: DeadLetterStore,
    letters: Iterable[DeadLetter],
    *,
    held: Collection[str] = (),
    rate: float | None = None,
    on_each: Callable[[DeadLetter, str], None] | None = None,
    **log_fields: object,
) -> Counter[str]:
    """Replay each letter (leaving ``held`` reasons alone), at most ``rate`` a second.

    Returns counts of :data:`~dispatcher.store.deadletter.ReplayResult` values plus
    ``skipped_dnc`` and ``skipped_ambiguous`` (:meth:`ReplaySummary.of` names them).
    Logs ``dlq.replayed`` per letter, with ``log_fields``. Without a rate,
    :data:`REPLAY_BATCH` letters go to Redis in one round trip, each replayed in a
    step of its own; an error Redis gives for one is raised once the batch's
    replays are counted and logged.
    """
    outcomes: Counter[str] = Counter()
    interval = 1.0 / rate if rate else 0.0
    next_at = time.monotonic()
    batch: list[DeadLetter] = []

    def settle(letter: DeadLetter, result: str) -> None:
        outcomes[result] += 1
        if result == "replayed":
            _log.info(
                "dlq.replayed",
                job_id=letter.job_id,
                reason=letter.reason,
                replays=letter.replays + 1,
                **log_fields,
            )
        if on_each is not None:
            on_each(letter, result)

    def flush() -> None:
        results = store.replay_many(batch)
        error: Exception | None = None
        for letter, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                error = error or result
            else:
                settle(letter, result)
        batch.clear()
        if error is not None:
            raise error

    for letter in letters:
        if letter.reason in held:
            kind = "skipped_dnc" if letter.reason in DNC_REASONS else "skipped_ambiguous"
            outcomes[kind] += 1
            if on_each is not None:
                on_each(letter, kind)
            continue
        if not interval:
            batch.append(letter)
            if len(batch) >= REPLAY_BATCH:
                flush()
            continue
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        next_at = max(next_at, time.monotonic()) + interval
        settle(letter, store.replay(letter))
    if batch:
        flush()
    return outcomes


def reconcile_letters(
    store: DeadLetterStore,
    letters: Iterable[DeadLetter],
    *,
    left_alone: int = 0,
    **log_fields: object,
) -> ReconcileSummary:
    """Hand each ambiguous letter to the workers to be looked up in VICIdial.

    Letters of other reasons are counted as left alone (``left_alone``: those the
    caller counted without reading them). The look-up hold of each letter's dialer
    is released first, once: the operator says the cause is fixed, so the next
    look-up tries again at once. Logs ``dlq.reconcile_requested`` per letter handed
    over, with ``log_fields``.
    """
    outcomes: Counter[str] = Counter(left_alone=left_alone)
    released: set[str] = set()
    first_due: float | None = None
    backend = store.backend
    after_s = backend.settings.reconcile_after_s
    for letter in letters:
        if letter.reason not in AMBIGUOUS_REASONS:
            outcomes["left_alone"] += 1
            continue
        dialer = backend.settings.dialers.resolve_or_default(letter.dialer)
        if dialer is not None and dialer.name not in released:
            backend.execution.lookup_release(dialer.name)
            released.add(dialer.name)
        result = store.reconcile(letter)
        outcomes[result] += 1
        if result == "reconciling":
            due = max(time.time(), letter.score + after_s)
            first_due = due if first_due is None else min(first_due, due)
            _log.info(
                "dlq.reconcile_requested", job_id=letter.job_id, reason=letter.reason, **log_fields
            )
    counts = {field: outcomes.get(key, 0) for key, field in ReconcileSummary.FIELDS.items()}
    return ReconcileSummary(**counts, first_due=first_due)


def purge_letters(
    store: DeadLetterStore,
    letters: Iterable[DeadLetter],
    *,
    on_each: Callable[[DeadLetter, bool], None] | None = None,
    **log_fields: object,
) -> int:
    """Delete each letter for good; how many were deleted (not gone already).

    Logs ``dlq.purged`` per letter deleted, with ``log_fields``.
    """
    deleted = 0
    for letter in letters:
        gone = store.purge(letter)
        if gone:
            deleted += 1
            _log.info("dlq.purged", job_id=letter.job_id, reason=letter.reason, **log_fields)
        if on_each is not None:
            on_each(letter, gone)
    return deleted
