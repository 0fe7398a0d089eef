"""Leads added and dead-lettered per minute, for the console's last-hour chart.

The fleet already counts ``added`` and ``dead_lettered:{reason}`` in the stats
hash (:mod:`dispatcher.store.stats`), inside the scripts that record each outcome. So
nothing more is counted per lead: once a minute, one sample of those cumulative
counters is written to a sorted set (``{prefix}:activity``, score = the minute's
epoch, member ``minute:added:dead``), and per-minute figures are the differences
between consecutive samples.

:func:`record_minute` is one small Lua call (``activity.lua``): the first caller in a minute writes
the sample, later callers (other workers, the console) change nothing, and
samples older than :data:`KEEP_S` are trimmed in the same call, so the set holds
at most ~180 members. Workers call it from their scheduler thread when the minute
changes (once a minute per worker); minutes with no sample had no worker running,
so nothing was added or dead-lettered in them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from importlib import resources

from dispatcher.store.backend import Backend
from dispatcher.store.connection import broker_errors

__all__ = ["KEEP_S", "Minute", "read_activity", "record_minute"]

#: How long samples are kept (the chart shows the last hour; the rest is margin).
KEEP_S = 3 * 3600

_SOURCE = resources.files("dispatcher.store").joinpath("activity.lua").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Minute:
    """One minute of the chart: its start (epoch) and what happened in it (None: unknown)."""

    start: float
    added: int | None
    dead: int | None


def _minute(now: float) -> int:
    return int(math.floor(now / 60.0) * 60)


def record_minute(backend: Backend, *, now: float | None = None) -> bool:
    """Write this minute's sample unless someone did; True if this call wrote it."""
    now = time.time() if now is None else now
    script = backend.redis.register_script(_SOURCE)
    with broker_errors(backend.settings):
        return bool(script(keys=[backend.keys.prefix], args=[_minute(now), KEEP_S]))


def _totals(stats: dict[str, str]) -> tuple[int, int]:
    added = int(float(stats.get("added", 0) or 0))
    dead = sum(int(float(v or 0)) for k, v in stats.items() if k.startswith("dead_lettered:"))
    return added, dead


def read_activity(backend: Backend, *, minutes: int = 60, now: float | None = None) -> list[Minute]:
    """The last ``minutes`` minutes, oldest first; the current minute counts up to now.

    A minute is the difference between its sample and the next one (for the
    current minute: the live counters). Without a sample at its start or end, it
    is unknown (None), unless the counters did not move across the gap (0).
    """
    now = time.time() if now is None else now
    current = _minute(now)
    first = current - (minutes - 1) * 60
    keys = backend.keys
    with broker_errors(backend.settings):
        pipe = backend.redis.pipeline(transaction=False)
        pipe.zrangebyscore(keys.activity, first - 60, current, withscores=False)
        pipe.hgetall(keys.stats)
        members, stats = pipe.execute()
    samples: dict[int, tuple[int, int]] = {}
    for member in members:
        m, added, dead = str(member).split(":")
        samples[int(m)] = (int(added), int(dead))
    samples[current + 60] = _totals(stats)  # the live counters close the current minute
    known = sorted(samples)
    out: list[Minute] = []
    for start in range(first, current + 60, 60):
        before = [m for m in known if m <= start]
        after = [m for m in known if m >= start + 60]
        if not before or not after:
            out.append(Minute(float(start), None, None))
            continue
        here, later = samples[before[-1]], samples[after[0]]
        if before[-1] != start or after[0] != start + 60:
            # Samples missing around this minute: only "nothing happened" is certain,
            # when the counters did not move across the gap.
            zero = here == later
            out.append(Minute(float(start), 0 if zero else None, 0 if zero else None))
            continue
        # A counter that went down was reset (Redis data wiped): show what is known.
        out.append(Minute(float(start), max(0, later[0] - here[0]), max(0, later[1] - here[1])))
    return out
