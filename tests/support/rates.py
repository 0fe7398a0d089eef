"""Rates measured from the times of calls (rate limits are checked on them)."""

from __future__ import annotations

__all__ = ["steady_rate"]


def steady_rate(times: list[float]) -> float:
    """Calls per second over the middle 80% of ``times`` (sorted).

    The ends are left out: the first calls wait for workers to start, and a call
    delayed on a loaded machine makes the next ones (whose slots were already
    reserved) come at once; both are noise, not the limit's doing.
    """
    cut = len(times) // 10
    middle = times[cut : len(times) - cut]
    return (len(middle) - 1) / (middle[-1] - middle[0])
