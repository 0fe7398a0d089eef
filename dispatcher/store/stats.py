"""Fleet-wide counters kept in one Redis hash (``{prefix}:stats``).

Workers and producers increment them inside the scripts and transactions they
already run (no extra round trip); a scrape reads the whole hash at once, so one
request shows the whole fleet. Fields:

* ``enqueued``, ``added``, ``retries``, ``replayed``, ``purged``,
  ``duplicates_suppressed``;
* ``dead_lettered:{reason}``;
* ``latency_bucket:{le}`` / ``latency_count`` / ``latency_sum_ms``: a cumulative-ready
  histogram of VICIdial call latency (each call counted in the first bucket
  whose upper bound it does not exceed; ``+Inf`` for the rest).
"""

from __future__ import annotations

import bisect

__all__ = ["LATENCY_BUCKETS_S", "latency_bucket_field"]

#: Upper bounds in seconds of the latency histogram buckets.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def latency_bucket_field(latency_s: float) -> str:
    """The stats field of the (non-cumulative) bucket this latency falls in."""
    i = bisect.bisect_left(LATENCY_BUCKETS_S, latency_s)
    return (
        f"latency_bucket:{LATENCY_BUCKETS_S[i]:g}"
        if i < len(LATENCY_BUCKETS_S)
        else ("latency_bucket:+Inf")
    )
