"""How values look on the console's pages: times, ages, rates, job-state values.

Each is a Jinja filter (:mod:`.context` registers them) or is used by the
handlers' own sentences. Times are shown in UTC, always saying so.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["RECONCILE_STATES", "age", "minute", "rate", "utc", "value", "when"]

#: What the ``reconcile`` field of a job's state means (execution.lua).
RECONCILE_STATES = {
    "pending": "a look-up in VICIdial is due (the call's answer never came)",
    "found": "found in VICIdial: added with that lead",
    "duplicates": "found in VICIdial more than once: added with the oldest lead",
    "verifying": "called again after a look-up found nothing; a verification look-up is due",
    "verified": "the verification look-up found no other copy",
    "unverified": "VICIdial holds leads of this phone the API user cannot read "
    "(unverified_lead_ids): they may be copies; check them by hand",
}


def when(moment: object) -> str:
    """An ISO time (as job states and letters hold it) in UTC; as given if not one."""
    if not moment:
        return ""
    try:
        parsed = datetime.fromisoformat(str(moment))
    except ValueError:
        return str(moment)
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def minute(epoch: object) -> str:
    return datetime.fromtimestamp(float(str(epoch)), UTC).strftime("%H:%M")


def age(seconds: object) -> str:
    """A duration for people: 0.4 s, 12 s, 5 min, 3.5 h, 2.0 d."""
    if seconds is None or seconds == "":
        return ""
    s = float(str(seconds))
    if 0 < s < 1:
        return f"{s:.1f} s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 36 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def value(raw: object) -> str:
    """A job-state value for people: lists joined, nothing for null."""
    if raw is None:
        return ""
    if isinstance(raw, list | tuple):
        return ", ".join(str(v) for v in raw)
    return str(raw)


def rate(limit: object) -> str:
    """A dialer's rate limit: ``50/s``, or ``none``."""
    per_s = float(str(limit or 0))
    if per_s <= 0:
        return "none"
    return f"{per_s:g}/s"
