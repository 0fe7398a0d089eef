"""The dead-letter store: where every job that could not be added ends, whole.

Layout in Redis (under the key prefix):

* ``dl:{id}`` one record as JSON (the shape ``dispatcher dlq show --json`` prints);
* ``dlq`` a sorted set of every id scored by the last failure time, and
  ``dlq:reason:{reason}`` one per reason, so listing by reason and time is a
  range query and counting by reason is ZCARD (no counter to drift).

The id of a dead letter is its job id, so writing the same dead letter twice
(a redelivered message) leaves one record. Every write goes through the job's
execution record (``execution.lua``): a letter is never written over a job that
was added, and a later SUCCESS of the job retires it. Listing, exporting and
replaying stream in pages, never loading the whole store. Replay is one script
call per letter: the record is removed and the job published in the same atomic
step, so a crash mid-replay loses nothing and adds nothing twice. What a replay
(and ``dlq reconcile``) does to the job is :class:`~dispatcher.model.jobs.Job`'s
(``replayed``, ``looking_up``): a letter whose job no worker could read is not
replayable.

Errors are redacted again whenever a letter is read (secrets of these settings),
so a letter stored by an older version is never shown or exported with one.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from typing import Any, Literal

from dispatcher.config.logs import redact_vicidial_line
from dispatcher.config.settings import Settings
from dispatcher.model.errors import InvalidPayload, all_reasons
from dispatcher.model.jobs import (
    EARLIEST,
    LATEST,
    Job,
    Reconcile,
    broker_envelope,
    iso,
    new_job_id,
)
from dispatcher.store.backend import Backend, get_backend
from dispatcher.store.connection import broker_error, broker_errors
from dispatcher.store.execution import Execution
from dispatcher.store.outbox import notify_for

__all__ = [
    "DeadLetter",
    "DeadLetterStore",
    "IndexWalk",
    "ReconcileResult",
    "ReplayResult",
    "WriteResult",
]

ReplayResult = Literal["replayed", "missing", "done", "busy", "unreplayable"]
#: What handing a letter to the workers to be looked up did (see execution.lua reconcile).
ReconcileResult = Literal["reconciling", "missing", "done", "busy", "unreplayable"]
#: What a letter write did: written ("ok", or "again" for a repeat), or refused because
#: the lead was added ("done"), another copy holds or decided the job ("superseded",
#: "busy"), or a newer publication exists ("stale").
WriteResult = str
_PAGE = 500
_WALK = (
    resources.files("dispatcher.store").joinpath("deadletter_page.lua").read_text(encoding="utf-8")
)


@dataclass(frozen=True)
class DeadLetter:
    id: str
    job_id: str
    reason: str
    error: str
    http_status: int | None
    attempts: int
    first_failed_at: str | None
    last_failed_at: str | None
    enqueued_at: str | None
    replays: int
    job: dict[str, Any] = field(default_factory=dict)
    #: epoch of last_failed_at, the index score (not part of the JSON shape)
    score: float = field(default=0.0, compare=False, repr=False)

    def to_dict(self, *, shown: bool = True) -> dict[str, Any]:
        """The record as `dlq show --json` prints it; ``shown`` False: as it is stored
        (without ``target`` and ``target_list_id``, which the job says)."""
        # Not dataclasses.asdict: its deep copy of the job was a third of `dlq export`'s
        # time. The job is parsed afresh for each letter read; a shallow copy keeps
        # the letter's own dict out of the caller's hands.
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "score"}
        data["job"] = dict(self.job)
        if shown:
            data["target"] = self.target
            data["target_list_id"] = self.list_id
        return data

    @property
    def target(self) -> str:
        """Where the job's lead goes: ``list`` (add_lead) or ``agent`` (external_add_lead)."""
        return "list" if self.list_id else "agent"

    @property
    def list_id(self) -> str | None:
        """The list a list job's lead goes to (None: a lead for an agent)."""
        lead = self.job.get("lead")
        if isinstance(lead, Mapping) and lead.get("list_id") not in (None, ""):
            return str(lead["list_id"])
        return None

    @property
    def agent_user(self) -> str | None:
        lead = self.job.get("lead")
        if isinstance(lead, Mapping):
            value = lead.get("agent_user")
            return str(value) if value is not None else None
        return None

    @property
    def phone(self) -> str:
        """The lead's phone number as the job holds it ("" for a job without one)."""
        lead = self.job.get("lead")
        if isinstance(lead, Mapping):
            return str(lead.get("phone_number", ""))
        return ""

    @property
    def dialer(self) -> str:
        """The dialer the job names ("" for a job of an older version: the default)."""
        value = self.job.get("dialer")
        return value if isinstance(value, str) else ""

    @property
    def replayable(self) -> bool:
        return self.reason != "invalid_payload" and isinstance(self.job.get("lead"), Mapping)

    @classmethod
    def from_json(cls, raw: str, *, score: float = 0.0) -> DeadLetter:
        data = json.loads(raw)
        return cls(
            id=data["id"],
            job_id=data["job_id"],
            reason=data["reason"],
            error=data.get("error", ""),
            http_status=data.get("http_status"),
            attempts=int(data.get("attempts", 0)),
            first_failed_at=data.get("first_failed_at"),
            last_failed_at=data.get("last_failed_at"),
            enqueued_at=data.get("enqueued_at"),
            replays=int(data.get("replays", 0)),
            job=data.get("job") or {},
            score=score,
        )


@dataclass(frozen=True)
class IndexWalk:
    """What one bounded walk of a dead-letter index read (:meth:`DeadLetterStore.walk`)."""

    #: the letters whose record holds every needle, newest first
    letters: builtins.list[DeadLetter]
    #: index rows read
    scanned: int
    #: the walk reached the end of the range (nothing follows)
    exhausted: bool
    #: the last row read: its id ("" for none: the cursor given, if any) and score
    last_id: str
    last_score: float


class DeadLetterStore:
    """Read, write, replay and purge dead letters."""

    def __init__(self, backend: Backend | None = None, *, settings: Settings | None = None):
        self.backend = backend or get_backend(settings)
        self.keys = self.backend.keys
        self.redis = self.backend.redis

    # -- write side (workers) ------------------------------------------------------------

    def letter(
        self,
        *,
        job: Mapping[str, Any],
        reason: str,
        error: str,
        http_status: int | None,
        attempts: int,
        first_failed_at: float | None,
        now: float | None = None,
        job_id: str | None = None,
    ) -> DeadLetter:
        """The record for ``job`` (the whole job message), not yet stored."""
        now = time.time() if now is None else now
        job_id = job_id or str(job.get("job_id") or "") or new_job_id()
        enqueued = job.get("enqueued_at")
        replays = job.get("replays")
        return DeadLetter(
            id=job_id,
            job_id=job_id,
            reason=reason,
            error=redact_vicidial_line(error, self.backend.settings.secrets),
            http_status=http_status,
            attempts=attempts,
            first_failed_at=iso(first_failed_at if first_failed_at is not None else now),
            last_failed_at=iso(now),
            enqueued_at=iso(float(enqueued)) if isinstance(enqueued, int | float) else None,
            replays=replays if isinstance(replays, int) and not isinstance(replays, bool) else 0,
            job=dict(job),
            score=now,
        )

    def write(
        self, letter: DeadLetter, *, token: str = "", seq: int = 0, server: str = ""
    ) -> WriteResult:
        """Store ``letter`` through the job's execution record (see execution.lua ``dead``).

        ``token``: the claim of the worker writing it ("" for a letter written
        without one: an operator tool, a test).
        """
        with broker_errors(self.backend.settings):
            result = self.backend.execution.dead(
                letter.job_id,
                token=token,
                seq=seq,
                record=_dumps(letter),
                score=letter.score,
                reason=letter.reason,
                attempts=letter.attempts,
                error=letter.error,
                http_status=letter.http_status,
                ttl=int(self.backend.settings.job_ttl_s),
                server=server,
                # The job's outcome notification, written in the same step (if it has a
                # receiver): its error without the phone or any lead field.
                notify=notify_for(
                    letter.job, self.backend.settings, error=letter.error, dialer=server or None
                ),
            )
        return result[0]

    def record(
        self,
        *,
        job: Mapping[str, Any],
        reason: str,
        error: str,
        http_status: int | None,
        attempts: int,
        first_failed_at: float | None,
        now: float | None = None,
        job_id: str | None = None,
    ) -> DeadLetter:
        """Store a dead letter for ``job`` and mark the job dead (no claim held).

        Refused (nothing written) if the job was added or a worker holds it now.
        """
        letter = self.letter(
            job=job,
            reason=reason,
            error=error,
            http_status=http_status,
            attempts=attempts,
            first_failed_at=first_failed_at,
            now=now,
            job_id=job_id,
        )
        seq = job.get("seq")
        self.write(letter, seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else 0)
        return letter

    def poison(
        self,
        *,
        raw: Mapping[str, Any],
        error: str,
        job_id: str | None = None,
        inflight: str = "",
        item: str | bytes = "",
        now: float | None = None,
    ) -> DeadLetter:
        """An ``invalid_payload`` letter for something that is not a job.

        The letter takes ``job_id`` (an id the message carried) only if no job has
        it: a forged or broken message never overwrites a real job's letter or
        state. ``inflight``/``item``: the in-flight list the item was popped into;
        it leaves that list only together with the letter's write.
        """
        ids = [job_id] if job_id else []
        ids.append(new_job_id())
        with broker_errors(self.backend.settings):
            for dl_id in ids:
                letter = self.letter(
                    job=raw,
                    reason="invalid_payload",
                    error=error,
                    http_status=None,
                    attempts=0,
                    first_failed_at=None,
                    now=now,
                    job_id=dl_id,
                )
                if self.backend.execution.poison(
                    dl_id,
                    record=_dumps(letter),
                    score=letter.score,
                    ttl=int(self.backend.settings.job_ttl_s),
                    inflight=inflight,
                    raw=item,
                ):
                    return letter
        raise AssertionError("a fresh job id was taken")  # pragma: no cover

    # -- read side ----------------------------------------------------------------------

    def get(self, dl_id: str) -> DeadLetter | None:
        with broker_errors(self.backend.settings):
            raw = self.redis.get(self.keys.dead_letter(dl_id))
            score = self.redis.zscore(self.keys.dead_letters, dl_id) if raw else None
        if raw is None:
            return None
        return self._read(str(raw), float(score or 0.0))

    def _read(self, raw: str, score: float) -> DeadLetter:
        letter = DeadLetter.from_json(raw, score=score)
        shown = redact_vicidial_line(letter.error, self.backend.settings.secrets)
        return letter if shown == letter.error else replace(letter, error=shown)

    def _iter_ids(
        self, index: str, *, since: float | None, until: float | None
    ) -> Iterator[list[tuple[str, float]]]:
        """Pages of (id, score), newest first.

        The cursor is a score (inclusive) plus the ids already seen at that
        score, so it stays correct while a replay or purge deletes what it read.
        """
        low = "-inf" if since is None else repr(since)
        high = until
        skip: set[str] = set()
        while True:
            want = _PAGE + len(skip)
            with broker_errors(self.backend.settings):
                rows: list[tuple[str, float]] = self.redis.zrevrangebyscore(  # type: ignore[assignment]
                    index,
                    "+inf" if high is None else repr(high),
                    low,
                    start=0,
                    num=want,
                    withscores=True,
                )
            page = [(str(m), float(s)) for m, s in rows if str(m) not in skip]
            if page:
                yield page
            if len(rows) < want or not page:
                return
            edge = page[-1][1]
            if edge != high:
                skip = set()
            skip.update(m for m, s in page if s == edge)
            high = edge

    def iter(
        self,
        *,
        reason: str | None = None,
        agent_user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        ids: Iterable[str] | None = None,
    ) -> Iterator[DeadLetter]:
        """Dead letters, newest first, streamed in pages of 500."""
        if ids is not None:
            for dl_id in ids:
                letter = self.get(dl_id)
                if letter is not None and (reason is None or letter.reason == reason):
                    yield letter
            return
        index = self.keys.dead_letters_by_reason(reason) if reason else self.keys.dead_letters
        for page in self._iter_ids(index, since=since, until=until):
            with broker_errors(self.backend.settings):
                raws = self.redis.mget([self.keys.dead_letter(m) for m, _ in page])
            for (_, score), raw in zip(page, raws, strict=True):
                if raw is None:
                    continue  # replayed or purged while we were reading
                letter = self._read(str(raw), score)
                if agent_user is not None and letter.agent_user != agent_user:
                    continue
                yield letter

    def walk(
        self,
        *,
        reason: str | None,
        after: tuple[float, str] | None,
        low: str,
        high: str,
        want: int,
        budget: int,
        needles: Sequence[str] = (),
    ) -> IndexWalk:
        """Up to ``want`` letters whose record holds every needle, newest first, after
        ``after`` (the (score, id) of the last letter shown) within the score bounds
        ``low``, ``high`` (as ZRANGEBYSCORE takes them), reading at most ``budget`` index
        rows: one read-only step in Redis (``deadletter_page.lua``), whatever the store
        holds."""
        with broker_errors(self.backend.settings):
            reply = self.redis.register_script(_WALK)(
                keys=[self.keys.prefix],
                args=[
                    reason or "",
                    after[1] if after else "",
                    repr(after[0]) if after else "0",
                    low,
                    high,
                    want,
                    budget,
                    *needles,
                ],
            )
        exhausted, scanned, last_id, last_score = reply[:4]
        hits = reply[4:]
        letters = [self._read(str(hits[i + 2]), float(hits[i + 1])) for i in range(0, len(hits), 3)]
        return IndexWalk(
            letters=letters,
            scanned=int(scanned),
            exhausted=bool(int(exhausted)),
            last_id=str(last_id or ""),
            last_score=float(last_score),
        )

    def list(self, *, limit: int | None = 100, **filters: Any) -> list[DeadLetter]:
        out: list[DeadLetter] = []
        for letter in self.iter(**filters):
            if limit is not None and len(out) >= limit:
                break
            out.append(letter)
        return out

    def counts(self) -> dict[str, int]:
        """Number of dead letters per reason (reasons with none are left out)."""
        reasons = all_reasons()
        with broker_errors(self.backend.settings):
            pipe = self.redis.pipeline(transaction=False)
            for reason in reasons:
                pipe.zcard(self.keys.dead_letters_by_reason(reason))
            values = pipe.execute()
        return {r: int(n) for r, n in zip(reasons, values, strict=True) if n}

    def oldest(self) -> float | None:
        """Epoch of the oldest dead letter's last failure, or None when the store is empty."""
        with broker_errors(self.backend.settings):
            rows = self.redis.zrange(self.keys.dead_letters, 0, 0, withscores=True)
        return float(rows[0][1]) if rows else None

    def __len__(self) -> int:
        with broker_errors(self.backend.settings):
            return int(self.redis.zcard(self.keys.dead_letters))

    # -- operations ---------------------------------------------------------------------

    def replay(self, letter: DeadLetter, *, now: float | None = None) -> ReplayResult:
        """Put the job back on the queue with a fresh attempt count; remove the letter.

        Keeps job id, idempotency key and DNC flags; increments ``replays``. If the
        execution record says the lead was added after all, nothing is sent and the
        letter is removed ("done"); while a copy of the job holds a live claim,
        nothing changes ("busy").
        """
        call = self._replay_call(letter)
        if call is None:
            return "unreplayable"
        with broker_errors(self.backend.settings):
            reply = self.backend.execution.call(*call)
        return _replay_result(reply)

    def replay_many(self, letters: Sequence[DeadLetter]) -> builtins.list[ReplayResult | Exception]:
        """:meth:`replay` of each letter, all in one round trip (each its own step).

        Results in the letters' order. A letter whose step Redis refused (a write
        refused by a read-only replica...) has the error in its place, as
        :meth:`replay` would raise it: the others' steps ran. A lost connection
        raises for the whole batch (some steps may have run: replaying again
        finds those letters gone).
        """
        calls: builtins.list[tuple[Any, ...]] = []
        places: builtins.list[int] = []
        results: builtins.list[ReplayResult | Exception] = []
        for letter in letters:
            call = self._replay_call(letter)
            if call is None:
                results.append("unreplayable")
            else:
                places.append(len(results))
                results.append("missing")  # replaced below
                calls.append(call)
        if not calls:
            return results
        settings = self.backend.settings
        with broker_errors(settings):
            replies = self.backend.execution.call_many(calls)
        for place, reply in zip(places, replies, strict=True):
            if isinstance(reply, Exception):
                results[place] = broker_error(reply, settings)  # what replay() would raise
            else:
                results[place] = _replay_result(reply)
        return results

    def _replay_call(self, letter: DeadLetter) -> tuple[Any, ...] | None:
        """The ``replay`` step of a letter (None: not replayable)."""
        job = _job_of(letter)
        if job is None:
            return None
        lost = (letter.error or "ambiguous") if letter.reason == "ambiguous" else ""
        job = job.replayed(lost_answer=lost)
        lane = self.lane_of(job)
        envelope = broker_envelope(job.to_message(), queue=lane, task_id=letter.job_id)
        ttl = int(self.backend.settings.job_ttl_s)
        return Execution.replay_args(letter.id, envelope=envelope, seq=job.seq, ttl=ttl, lane=lane)

    def lane_of(self, job: Job) -> str:
        """The list a job goes back to: its dialer's lane of its target (the default
        dialer's for a job of an older version, or one naming a dialer the fleet no longer
        has)."""
        dialers = self.backend.settings.dialers
        dialer = dialers.resolve(job.dialer) or dialers.resolve(None)
        if dialer is None:
            return self.keys.queue
        return self.keys.target_lane(dialer.name, job.priority, job.target)

    def reconcile(self, letter: DeadLetter, *, now: float | None = None) -> ReconcileResult:
        """Hand the letter to the workers to be looked up in VICIdial (`dlq reconcile`).

        The letter is removed and a look-up of its job scheduled in one step, at the
        letter's last failure plus ``DISPATCHER_RECONCILE_AFTER_S`` (at once for an old
        letter). The attempts already made still count. A worker then marks the job
        added (found), calls it again (not found) or writes the letter again with why.
        """
        job = _job_of(letter)
        if job is None:
            return "unreplayable"
        settings = self.backend.settings
        now = time.time() if now is None else now
        since = letter.score if EARLIEST <= letter.score <= LATEST else now
        job = job.looking_up(
            Reconcile(
                step="lookup",
                since=since,
                # An earlier reconciliation's explanation is not part of the failure.
                error=letter.error.split("; reconciliation: ")[0][:1000],
                http_status=letter.http_status,
            )
        )
        envelope = broker_envelope(job.to_message(), queue=self.lane_of(job), task_id=letter.job_id)
        delay = max(0.0, since + settings.reconcile_after_s - now)
        with broker_errors(settings):
            result = self.backend.execution.reconcile(
                letter.id,
                envelope=envelope,
                seq=job.seq,
                ttl=int(settings.job_ttl_s),
                delay_s=delay,
            )
        if result[0] == "conflict":
            return "missing"
        return result[0]  # type: ignore[return-value]

    def purge(self, letter: DeadLetter) -> bool:
        """Delete one dead letter for good; False if it was already gone."""
        with broker_errors(self.backend.settings):
            return self.backend.execution.purge(letter.id)


def _job_of(letter: DeadLetter) -> Job | None:
    """The letter's job, as a worker would read it; None when it is not one (an
    ``invalid_payload`` letter, or a job no worker would take: replaying it would only
    make another letter)."""
    if not letter.replayable:
        return None
    try:
        return Job.from_message(letter.job)
    except InvalidPayload:
        return None


def _replay_result(reply: Any) -> ReplayResult:
    answer = Execution.replay_answer(reply)
    return "missing" if answer == "conflict" else answer  # type: ignore[return-value]


def _dumps(letter: DeadLetter) -> str:
    return json.dumps(letter.to_dict(shown=False), separators=(",", ":"))
