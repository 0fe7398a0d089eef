"""Which dead letters an operator means, and replaying them: shared by ``dispatcher dlq``
and the web console.

A :class:`Selection` is the filters both offer: IDs, a reason, an agent, a time
window on the last failure (``since``/``until``) and, for the console, the last
four digits of the phone. Reason and time window are answered by the sorted-set
indexes of :mod:`dispatcher.deadletter` (a range query, O(log n)); agent and
phone are checked on each record read.

:meth:`Selection.page` reads one page after a *cursor*: the (score, id) of the
last letter shown. With the cursor's letter still in the index, one small
read-only Lua script finds its rank and reads the next rows in the same atomic
step, so a page costs the same with 10 letters or 100,000, and a replay or purge
of letters before the cursor cannot shift it. Filters the index cannot answer
read at most ``scan_budget`` records per page: a rare agent costs a few bounded
pages, never a read of the whole store.

Letters held back from bulk replays (DNC, and ambiguous since the lead may be in
VICIdial already) are named here once: :func:`held_reasons`.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass

from dispatcher import logs
from dispatcher.connection import broker_errors
from dispatcher.deadletter import DeadLetter, DeadLetterStore

__all__ = [
    "AMBIGUOUS_REASONS",
    "DNC_REASONS",
    "Cursor",
    "Page",
    "Selection",
    "held_reasons",
    "parse_duration",
    "replay_letters",
]

DNC_REASONS: tuple[str, ...] = ("dnc", "campaign_dnc")
AMBIGUOUS_REASONS: tuple[str, ...] = ("ambiguous",)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_READ = 500
_log = logs.get_logger("dispatcher.dlq")

# KEYS: index. ARGV: cursor id, cursor score, count.
# The rows after the cursor's letter, or false when that letter left the index
# (or moved: a newer failure of the same job) and the caller must seek by score.
_AFTER = """
local r = redis.call('ZREVRANK', KEYS[1], ARGV[1])
if not r then return false end
if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1])) ~= tonumber(ARGV[2]) then return false end
return redis.call('ZREVRANGE', KEYS[1], r + 1, r + tonumber(ARGV[3]), 'WITHSCORES')
"""


def held_reasons(*, include_dnc: bool, include_ambiguous: bool) -> tuple[str, ...]:
    """Reasons a bulk replay leaves alone unless the operator includes them."""
    return (() if include_dnc else DNC_REASONS) + (() if include_ambiguous else AMBIGUOUS_REASONS)


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``2h``, ``30d``, ``1w`` -> seconds; ValueError otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 2h or 30d")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class Cursor:
    """The position of the last letter shown: its index score and its id."""

    score: float
    id: str

    def encode(self) -> str:
        return f"{self.score!r}~{self.id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """ValueError for anything that is not a cursor this module wrote."""
        score, sep, dl_id = text.partition("~")
        value = float(score)
        if not sep or not dl_id or len(dl_id) > 200 or value != value:
            raise ValueError("not a cursor")
        return cls(value, dl_id)


@dataclass(frozen=True)
class Page:
    letters: list[DeadLetter]
    #: Where the next page starts; None on the last page.
    next: Cursor | None
    #: Index rows read to fill this page (more than len(letters) with agent/phone filters).
    scanned: int = 0


@dataclass(frozen=True)
class Selection:
    """Dead letters by IDs and/or filters (all given filters must hold)."""

    ids: tuple[str, ...] = ()
    reason: str | None = None
    agent_user: str | None = None
    #: Last failure at or after this epoch.
    since: float | None = None
    #: Last failure at or before this epoch.
    until: float | None = None
    #: The last digits of the phone number (the console's filter).
    phone_last4: str | None = None

    @property
    def empty(self) -> bool:
        """No IDs and no filter: everything (``--all``)."""
        return self == Selection()

    @property
    def indexed(self) -> bool:
        """True when the indexes alone answer it (counting is then O(log n))."""
        return not self.ids and self.agent_user is None and self.phone_last4 is None

    def matches(self, letter: DeadLetter) -> bool:
        """The filters the index cannot answer (and all of them, for named IDs)."""
        if self.reason is not None and letter.reason != self.reason:
            return False
        if self.agent_user is not None and letter.agent_user != self.agent_user:
            return False
        if self.phone_last4 is not None and not _phone(letter).endswith(self.phone_last4):
            return False
        if self.since is not None and letter.score < self.since:
            return False
        return not (self.until is not None and letter.score > self.until)

    def index(self, store: DeadLetterStore) -> str:
        keys = store.keys
        return keys.dead_letters_by_reason(self.reason) if self.reason else keys.dead_letters

    # -- streaming (bulk actions, export) -----------------------------------------------

    def iter(self, store: DeadLetterStore) -> Iterator[DeadLetter]:
        """Every selected letter, newest first (IDs: in the order given), streamed."""
        if self.ids:
            for letter in store.iter(ids=dict.fromkeys(self.ids)):
                if self.matches(letter):
                    yield letter
            return
        for letter in store.iter(
            reason=self.reason, agent_user=self.agent_user, since=self.since, until=self.until
        ):
            if self.phone_last4 is None or _phone(letter).endswith(self.phone_last4):
                yield letter

    def count(self, store: DeadLetterStore) -> int:
        if self.indexed:
            if self.since is None and self.until is None:
                return store.counts().get(self.reason, 0) if self.reason else len(store)
            with broker_errors(store.backend.settings):
                return int(store.redis.zcount(self.index(store), *self._bounds()))
        return sum(1 for _ in self.iter(store))

    def tally(self, store: DeadLetterStore, held: Collection[str]) -> tuple[int, Counter[str]]:
        """(letters outside ``held``, count per held reason), in one pass at most."""
        if self.indexed and self.since is None and self.until is None:
            counts = store.counts()
            selected = {self.reason: counts.get(self.reason, 0)} if self.reason else counts
            held_counts = Counter({r: n for r, n in selected.items() if r in held and n})
            return sum(selected.values()) - sum(held_counts.values()), held_counts
        kept = 0
        held_counts = Counter[str]()
        for letter in self.iter(store):
            if letter.reason in held:
                held_counts[letter.reason] += 1
            else:
                kept += 1
        return kept, held_counts

    # -- pages (the console's list) ------------------------------------------------------

    def page(
        self,
        store: DeadLetterStore,
        *,
        after: Cursor | None = None,
        limit: int = 50,
        scan_budget: int = 2000,
    ) -> Page:
        """At most ``limit`` letters after ``after``, newest first, in bounded time."""
        if self.ids:
            letters = [
                letter for letter in store.iter(ids=dict.fromkeys(self.ids)) if self.matches(letter)
            ]
            return Page(letters=letters[:limit], next=None, scanned=len(self.ids))
        index = self.index(store)
        out: list[DeadLetter] = []
        cursor = after
        scanned = 0
        exhausted = False
        while len(out) <= limit and scanned < max(scan_budget, limit + 1):
            want = limit + 1 - len(out) if self.indexed else min(_READ, scan_budget - scanned)
            want = max(want, 1)
            rows = self._rows_after(store, index, cursor, want)
            if not rows:
                exhausted = True
                break
            scanned += len(rows)
            with broker_errors(store.backend.settings):
                raws = store.redis.mget([store.keys.dead_letter(m) for m, _ in rows])
            for (member, score), raw in zip(rows, raws, strict=True):
                cursor = Cursor(score, member)
                if raw is None:
                    continue  # replayed or purged since the index was read
                letter = DeadLetter.from_json(str(raw), score=score)
                if self.matches(letter):
                    out.append(letter)
                    if len(out) > limit:
                        break
            if len(rows) < want:
                exhausted = True
                break
        if len(out) > limit:
            last = out[limit - 1]
            return Page(out[:limit], Cursor(last.score, last.id), scanned)
        return Page(out, None if exhausted else cursor, scanned)

    def _bounds(self) -> tuple[str, str]:
        low = "-inf" if self.since is None else repr(self.since)
        high = "+inf" if self.until is None else repr(self.until)
        return low, high

    def _rows_after(
        self, store: DeadLetterStore, index: str, cursor: Cursor | None, n: int
    ) -> list[tuple[str, float]]:
        low, high = self._bounds()
        redis = store.redis
        with broker_errors(store.backend.settings):
            if cursor is None:
                first: list[tuple[str, float]] = redis.zrevrangebyscore(  # type: ignore[assignment]
                    index, high, low, start=0, num=n, withscores=True
                )
                return [(str(m), float(s)) for m, s in first]
            found = redis.register_script(_AFTER)(
                keys=[index], args=[cursor.id, repr(cursor.score), n]
            )
            if found is not None:
                pairs = [(str(found[i]), float(found[i + 1])) for i in range(0, len(found), 2)]
                return [(m, s) for m, s in pairs if self.since is None or s >= self.since]
            # The cursor's letter is gone: seek by score. Equal scores are ordered by
            # member, descending in a reverse range, as Redis compares bytes.
            edge = min(cursor.score, self.until) if self.until is not None else cursor.score
            mark = cursor.id.encode()
            offset = 0
            kept: list[tuple[str, float]] = []
            # Fewer than n rows back means the index is exhausted; so keep reading
            # until n rows are kept or the index ends.
            while len(kept) < n:
                raw: list[tuple[str, float]] = redis.zrevrangebyscore(  # type: ignore[assignment]
                    index, repr(edge), low, start=offset, num=n, withscores=True
                )
                rows = [(str(m), float(s)) for m, s in raw]
                kept += [(m, s) for m, s in rows if not (s == cursor.score and m.encode() >= mark)]
                if len(rows) < n:
                    break
                offset += n
            return kept[:n]


def _phone(letter: DeadLetter) -> str:
    lead = letter.job.get("lead")
    return str(lead.get("phone_number", "")) if isinstance(lead, dict) else ""


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

    Returns counts of :data:`~dispatcher.deadletter.ReplayResult` values plus
    ``skipped_dnc`` and ``skipped_ambiguous``. Logs ``dlq.replayed`` per letter,
    with ``log_fields`` (the console adds the operator's name).
    """
    outcomes: Counter[str] = Counter()
    interval = 1.0 / rate if rate else 0.0
    next_at = time.monotonic()
    for letter in letters:
        if letter.reason in held:
            kind = "skipped_dnc" if letter.reason in DNC_REASONS else "skipped_ambiguous"
            outcomes[kind] += 1
            if on_each is not None:
                on_each(letter, kind)
            continue
        if interval:
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at = max(next_at, time.monotonic()) + interval
        result = store.replay(letter)
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
    return outcomes
