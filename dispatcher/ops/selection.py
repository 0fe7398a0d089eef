"""Which dead letters an operator means: shared by ``dispatcher dlq`` and the web console
(what is done to them: :mod:`dispatcher.ops.dlq`).

A :class:`Selection` is the filters both offer: IDs, a reason, an agent, a time
window on the last failure (``since``/``until``) and, for the console, the last
four digits of the phone. Reason and time window are answered by the sorted-set
indexes of :mod:`dispatcher.store.deadletter` (a range query, O(log n)); agent and
phone are checked on each record read.

:meth:`Selection.page` reads one page after a *cursor*: the (score, id) of the
last letter shown. With the cursor's letter still in the index, one small
read-only Lua script (``dispatcher/store/deadletter_page.lua``, through
:meth:`DeadLetterStore.walk`) finds its rank and reads the next rows in the same
atomic step, so a page costs the same with 10 letters or 100,000, and a replay or purge
of letters before the cursor cannot shift it. Filters the index cannot answer
read at most ``scan_budget`` records per page: a rare agent costs a few bounded
pages, never a read of the whole store.

Letters held back from bulk replays (DNC, and ambiguous since the lead may be in
VICIdial already) are named here once: :func:`held_reasons`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from dispatcher.model.errors import all_reasons
from dispatcher.store.connection import broker_errors
from dispatcher.store.deadletter import DeadLetter, DeadLetterStore

__all__ = [
    "AMBIGUOUS_REASONS",
    "DNC_REASONS",
    "Cursor",
    "Page",
    "Selection",
    "held_reasons",
    "parse_duration",
]

DNC_REASONS: tuple[str, ...] = ("dnc", "campaign_dnc")
AMBIGUOUS_REASONS: tuple[str, ...] = ("ambiguous",)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


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
    #: The dialer the letter's job names.
    dialer: str | None = None

    @property
    def empty(self) -> bool:
        """No IDs and no filter: everything (``--all``)."""
        return self == Selection()

    @property
    def indexed(self) -> bool:
        """True when the indexes alone answer it (counting is then O(log n))."""
        return (
            not self.ids
            and self.agent_user is None
            and self.phone_last4 is None
            and self.dialer is None
        )

    def matches(self, letter: DeadLetter) -> bool:
        """The filters the index cannot answer (and all of them, for named IDs)."""
        if self.reason is not None and letter.reason != self.reason:
            return False
        if self.agent_user is not None and letter.agent_user != self.agent_user:
            return False
        if self.dialer is not None and letter.dialer != self.dialer:
            return False
        if self.phone_last4 is not None and not letter.phone.endswith(self.phone_last4):
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
            if self.phone_last4 is not None and not letter.phone.endswith(self.phone_last4):
                continue
            if self.dialer is None or letter.dialer == self.dialer:
                yield letter

    def count(self, store: DeadLetterStore) -> int:
        if self.indexed:
            if self.since is None and self.until is None:
                return store.counts().get(self.reason, 0) if self.reason else len(store)
            with broker_errors(store.backend.settings):
                return int(store.redis.zcount(self.index(store), *self._bounds()))
        return sum(1 for _ in self.iter(store))

    def by_reason(self, store: DeadLetterStore) -> dict[str, int]:
        """How many letters of each reason are selected (reasons with none left out)."""
        if not self.indexed:
            counts: Counter[str] = Counter(letter.reason for letter in self.iter(store))
            return dict(counts)
        if self.since is None and self.until is None:
            everything = store.counts()
            if self.reason is None:
                return everything
            return {self.reason: everything[self.reason]} if self.reason in everything else {}
        reasons = [self.reason] if self.reason else list(all_reasons())
        low, high = self._bounds()
        with broker_errors(store.backend.settings):
            pipe = store.redis.pipeline(transaction=False)
            for reason in reasons:
                pipe.zcount(store.keys.dead_letters_by_reason(reason), low, high)
            values = pipe.execute()
        return {r: int(n) for r, n in zip(reasons, values, strict=True) if n}

    def tally(self, store: DeadLetterStore, held: Collection[str]) -> tuple[int, Counter[str]]:
        """(letters outside ``held``, count per held reason), in one pass at most."""
        counts = self.by_reason(store)
        held_counts = Counter({r: n for r, n in counts.items() if r in held})
        return sum(counts.values()) - sum(held_counts.values()), held_counts

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
        low, high = self._bounds()
        needles = []
        # Agents and phone digits are never escaped in JSON: a record without them
        # cannot match, and is skipped inside Redis without being sent or parsed.
        if self.agent_user is not None:
            needles.append(f'"{self.agent_user}"')
        if self.phone_last4 is not None:
            needles.append(f'{self.phone_last4}"')
        if self.dialer is not None:
            needles.append(f'"dialer":"{self.dialer}"')
        walk = store.walk(
            reason=self.reason,
            after=(after.score, after.id) if after else None,
            low=low,
            high=high,
            want=limit + 1,
            budget=max(scan_budget, limit + 1),
            needles=needles,
        )
        # The needles are necessary, not sufficient.
        out = [letter for letter in walk.letters if self.matches(letter)]
        if len(out) > limit:
            last = out[limit - 1]
            return Page(out[:limit], Cursor(last.score, last.id), walk.scanned)
        if walk.exhausted or not walk.last_id:
            return Page(out, None, walk.scanned)
        return Page(out, Cursor(walk.last_score, walk.last_id), walk.scanned)

    def _bounds(self) -> tuple[str, str]:
        low = "-inf" if self.since is None else repr(self.since)
        high = "+inf" if self.until is None else repr(self.until)
        return low, high
