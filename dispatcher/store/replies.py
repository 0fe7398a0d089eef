"""What the store's Lua scripts answer, as typed values.

A script answers with a flat array (``{'ok', '0.25'}``, ``{'done', '17'}``): what each
item means depends on the first. The types below read one command's answer once,
where it comes in, so that the code deciding on it names fields (``claim.lead_id``,
``written.applied``) instead of positions; each verdict is documented at its command
in ``execution.lua``. :func:`text` is the one reading of a reply item (bytes from a
raw connection, str from a decoding client, None for a Lua false).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Claim", "DialerWait", "LookupGate", "Stored", "Written", "text"]


def text(value: Any) -> str:
    """One item of a script's reply as text ('' for a Lua false or nil)."""
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)


def _seconds(reply: Sequence[Any], at: int) -> float:
    item = text(reply[at]) if len(reply) > at else ""
    return float(item) if item else 0.0


@dataclass(frozen=True)
class Claim:
    """The ``claim`` command's answer (and ``gate``'s, which claims no job).

    ``verdict``: ok, probe_refused, probe_outage, probe_list (claimed: call), done,
    duplicate, stale, busy, orphaned, locked, paused, throttled (see execution.lua
    ``claim``).
    """

    verdict: str
    #: ok, probe_*: the wait for the rate-limit slot the claim reserved; throttled: until
    #: a slot is free; busy: until the live claim's lease ends; paused: until the pause
    #: ends; orphaned: how long ago the vanished holder's lease ended; locked: until the
    #: add_lead lock of the phone expires (its holder usually ends it much sooner)
    delay_s: float = 0.0
    #: done: the lead the job was added with; duplicate: the lead VICIdial's duplicate
    #: check found
    lead_id: str = ""
    #: stale: the publication the record is at
    seq: int = 0
    #: paused: the pause's reason (``network`` for an outage)
    reason: str = ""
    #: ok: the claim was this delivery's already (its first reply was lost)
    own: bool = False

    @classmethod
    def from_reply(cls, reply: Sequence[Any]) -> Claim:
        verdict = text(reply[0])
        if verdict in ("done", "duplicate"):
            return cls(verdict, lead_id=text(reply[1]) if len(reply) > 1 else "")
        if verdict == "stale":
            return cls(verdict, seq=int(text(reply[1]) or 0) if len(reply) > 1 else 0)
        delay = _seconds(reply, 1)
        if len(reply) < 3:
            return cls(verdict, delay)
        extra = text(reply[2])
        if verdict == "paused":
            return cls(verdict, delay, reason=extra)
        return cls(verdict, delay, own=extra == "own")


@dataclass(frozen=True)
class Written:
    """The answer of an outcome written as a compare-and-set on the delivery's token:
    ``retry``, ``await_lookup``, ``defer`` and ``dead``.

    ``verdict``: ok (written), again (this delivery wrote it already: a lost reply),
    done (the job was added: nothing written), superseded (another delivery holds or
    changed the record), stale (the job moved past this publication), busy (``dead``
    of a job another delivery holds).
    """

    verdict: str
    #: done, where the command says: the lead the job was added with
    lead_id: str = ""

    @property
    def applied(self) -> bool:
        """The outcome is on the record (written now, or by this delivery before)."""
        return self.verdict in ("ok", "again")

    @classmethod
    def from_reply(cls, reply: Sequence[Any]) -> Written:
        verdict = text(reply[0])
        return cls(verdict, text(reply[1]) if verdict == "done" and len(reply) > 1 else "")


@dataclass(frozen=True)
class Stored:
    """The answer of a success written to the record: ``succeed`` and ``reconciled``.

    ``verdict``: ok (recorded now), again (this delivery recorded it before: a lost
    reply), same (recorded with this very lead already), duplicate (recorded with
    another lead: this one is a copy), done (``reconciled``, ``duplicate``: another
    delivery recorded the job added first), superseded (``duplicate``: another delivery
    holds the claim).
    """

    verdict: str
    #: again, same, duplicate, done: the lead on the record
    lead_id: str = ""
    #: ok: the reason of the job's dead letter this success retired ('' for none)
    retired: str = ""
    #: ok: this answer ended an outage pause of the dialer
    resumed: bool = False

    @classmethod
    def from_reply(cls, reply: Sequence[Any]) -> Stored:
        verdict = text(reply[0])
        if verdict == "ok":
            retired = text(reply[1]) if len(reply) > 1 else ""
            return cls(verdict, retired=retired, resumed=len(reply) > 2 and text(reply[2]) == "1")
        return cls(verdict, text(reply[1]) if len(reply) > 1 else "")


@dataclass(frozen=True)
class DialerWait:
    """The ``await_dialer`` command's answer: waiting (handed out again at ``due``),
    expired (the wait is over: dead-letter it), done or stale."""

    verdict: str
    #: waiting: when the publication is handed out again (Redis time)
    due: float = 0.0
    #: waiting: when the wait for a worker that knows the dialer ends (Redis time)
    wait_until: float = 0.0
    #: done: the lead the job was added with
    lead_id: str = ""

    @classmethod
    def from_reply(cls, reply: Sequence[Any]) -> DialerWait:
        verdict = text(reply[0])
        if verdict == "waiting":
            return cls(verdict, due=_seconds(reply, 1), wait_until=_seconds(reply, 2))
        if verdict == "done":
            return cls(verdict, lead_id=text(reply[1]) if len(reply) > 1 else "")
        return cls(verdict)


@dataclass(frozen=True)
class LookupGate:
    """The ``lookup_gate`` command's answer: go ahead, or held (and why)."""

    verdict: str  # go | held | fresh
    state: str = ""
    error: str = ""
    missing: str = ""
    fix: str = ""

    @classmethod
    def from_reply(cls, reply: Sequence[Any]) -> LookupGate:
        return cls(*(text(x) for x in reply[:5]))
