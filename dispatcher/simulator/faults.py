"""Fault injection: which call fails, how, and how slowly the server answers.

A :class:`FaultPlan` is consulted once per call to /agc/api.php. Precedence: the
outage switch, then a script for that call number, then a script for that phone
number, then the random failure rate (seeded RNG). Latency applies to every call.
The plan itself is not thread-safe; the simulator holds its lock around it.

Calls to /vicidial/non_agent_api.php (:meth:`FaultPlan.choose_lookup`) obey the same
outage, phone scripts (a script entry goes to whichever request carries the phone
next: the add, then its look-up), failure rate and latency, but not call-number
scripts, and draw from generators of their own: a look-up never changes which
agc/api.php call a seeded failure rate hits.
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, get_args

__all__ = [
    "AFTER_PROCESSING",
    "BEFORE_PROCESSING",
    "FAULT_DESCRIPTIONS",
    "FAULT_KINDS",
    "PHP_WARNING_HTML",
    "PROXY_AFTER_PROCESSING",
    "FaultKind",
    "FaultPlan",
    "check_kind",
    "fault_response",
    "phone_key",
]

FaultKind = Literal[
    "http_500",
    "http_502",
    "http_503",
    "http_504",
    "http_429",
    "reset",
    "reset_after",
    "stall",
    "stall_after",
    "html",
    "html_warning",
    "empty",
    "insert_failed",
    "drip_after",
    "flood",
    "http_500_sql",
    "http_504_after",
    "hold_insert",
]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)

FAULT_DESCRIPTIONS: dict[FaultKind, str] = {
    "http_500": "HTTP 500, empty body (PHP fatal error); nothing inserted",
    "http_502": "HTTP 502 proxy page; nothing inserted",
    "http_503": "HTTP 503 proxy page; nothing inserted",
    "http_504": "HTTP 504 proxy page; nothing inserted",
    "http_429": "HTTP 429 with Retry-After: 1; nothing inserted",
    "reset": "connection reset (RST) before processing; nothing inserted",
    "reset_after": "request processed (lead inserted), then connection reset: the ambiguous case",
    "stall": "no answer for the stall time, then the connection closes; nothing inserted",
    "stall_after": "request processed (lead inserted), then no answer for the stall time",
    "html": "HTTP 200 with an HTML error page and no result line; nothing inserted",
    "html_warning": "processed normally, but PHP warnings in HTML precede the result line",
    "empty": "HTTP 200 with an empty body; nothing inserted",
    "insert_failed": "the INSERT affects no row: 'ERROR: lead insertion failed - ...' "
    "(add_lead: the INSERT fails, HTTP 500 with what was printed before it)",
    "drip_after": "request processed (lead inserted), then the answer trickles in, one byte "
    "every 0.3 s (a slow proxy): each read is quick, the whole answer is not",
    "flood": "HTTP 200 with 2 MiB of PHP notices and no result line; nothing inserted",
    "http_500_sql": "HTTP 500 with a PHP fatal-error page (display_errors=On) showing the "
    "failing SQL, which holds the API user's password; nothing inserted",
    "http_504_after": "request processed (lead inserted), then HTTP 504 from the proxy, which "
    "gave up waiting: the ambiguous case",
    "hold_insert": "no answer: the request stays stuck (as in PHP) for the stall time or until "
    "released, and only then is processed (lead inserted); the connection closes",
}

# Kinds answered without running the VICIdial logic, and kinds that run it first.
BEFORE_PROCESSING: frozenset[FaultKind] = frozenset(
    {
        "http_500",
        "http_502",
        "http_503",
        "http_504",
        "http_429",
        "reset",
        "stall",
        "html",
        "empty",
        "flood",
        "http_500_sql",
    }
)
AFTER_PROCESSING: frozenset[FaultKind] = frozenset({"reset_after", "stall_after"})
#: Processed, then answered by the proxy with this canned page instead of the script's.
PROXY_AFTER_PROCESSING: dict[FaultKind, FaultKind] = {"http_504_after": "http_504"}
#: Seconds between two bytes of a ``drip_after`` answer.
DRIP_INTERVAL_S = 0.3

# What a misconfigured PHP (display_errors=On) prints before the script's own output.
PHP_WARNING_HTML = (
    "<br />\n<b>Warning</b>:  Undefined variable $DB in <b>/srv/www/htdocs/agc/api.php</b>"
    " on line 912<br />\n"
    "<br />\n<b>Deprecated</b>:  preg_replace(): Passing null to parameter #3 ($subject) of type"
    " array|string is deprecated in <b>/srv/www/htdocs/agc/api.php</b> on line 596<br />\n"
)

_PROXY_PAGE = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_ERROR_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>VICIdial</title></head>\n<body>\n"
    "<h2>Database connection failed</h2>\n"
    "<p>mysqli_connect(): (HY000/2002): Connection refused</p>\n</body></html>\n"
)
_NOTICE = (
    "<br />\n<b>Notice</b>:  Undefined index: lead_id in <b>/srv/www/htdocs/agc/api.php</b>"
    " on line 1207<br />\n"
)
# PHP 8 with display_errors=On prints an uncaught mysqli exception with its stack
# trace, whose arguments include the query: the authentication query holds the password.
_SQL_FATAL = (
    "<br />\n<b>Fatal error</b>:  Uncaught mysqli_sql_exception: Table "
    "'asterisk.vicidial_users' is marked as crashed and should be repaired in "
    "/srv/www/htdocs/agc/api.php:1056\nStack trace:\n#0 /srv/www/htdocs/agc/api.php(1056): "
    "mysqli_query(Object(mysqli), 'SELECT count(*) from vicidial_users where "
    "user='{user}' and pass='{password}' and user_level > 0 and active='Y' and "
    "api_only_user!='1';')\n#1 {{main}}\n  thrown in <b>/srv/www/htdocs/agc/api.php</b> on line "
    "<b>1056</b><br />\n"
)
_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Time-out", 429: "Too Many Requests"}  # fmt: skip


def check_kind(kind: str) -> FaultKind:
    """Return ``kind`` as a FaultKind, or raise ValueError listing the valid kinds."""
    for known in FAULT_KINDS:
        if kind == known:
            return known
    raise ValueError(f"unknown fault kind {kind!r} (one of: {', '.join(FAULT_KINDS)})")


def _script_entry(kind: str | None) -> FaultKind | None:
    # None or "ok" in a script means "behave normally this time".
    if kind is None or kind == "ok":
        return None
    return check_kind(kind)


def fault_response(
    kind: FaultKind, *, user: str = "", password: str = ""
) -> tuple[int, str, tuple[tuple[str, str], ...]]:
    """Status, body and extra headers for a kind answered without processing."""
    if kind == "http_500":
        return 500, "", ()
    if kind == "http_500_sql":
        return 500, _SQL_FATAL.format(user=user, password=password), ()
    if kind == "flood":
        return 200, _NOTICE * (2 * 1024 * 1024 // len(_NOTICE) + 1), ()
    if kind in ("http_502", "http_503", "http_504", "http_429"):
        status = int(kind[-3:])
        page = _PROXY_PAGE.format(status=status, reason=_REASONS[status])
        headers = (("Retry-After", "1"),) if status == 429 else ()
        return status, page, headers
    if kind == "html":
        return 200, _ERROR_PAGE, ()
    if kind == "empty":
        return 200, "", ()
    raise ValueError(f"{kind} has no canned response")


def phone_key(phone: str) -> str:
    """How scripted phone numbers are matched: formatting removed, case ignored."""
    return re.sub(r"[^*#0-9a-zA-Z]", "", phone).lower()


class FaultPlan:
    """The fault settings of one simulator (see the module docstring for precedence)."""

    def __init__(self, *, seed: int | None = None, stall_s: float = 30.0) -> None:
        self.outage: FaultKind | None = None
        self.rate = 0.0
        self.rate_kinds: tuple[FaultKind, ...] = ("http_503",)
        self.latency_ms: tuple[float, float] = (0.0, 0.0)
        self.stall_s = stall_s
        self.call_script: dict[int, FaultKind | None] = {}
        self.phone_script: dict[str, deque[FaultKind | None]] = {}
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        # Separate generators, so changing the latency does not change which calls fail
        # (and a look-up does not change which agc/api.php call fails).
        self._fail_rng = random.Random(seed)
        self._latency_rng = random.Random(None if seed is None else seed + 1)
        self._lookup_fail_rng = random.Random(None if seed is None else seed + 2)
        self._lookup_latency_rng = random.Random(None if seed is None else seed + 3)

    def clear(self) -> None:
        """Back to a healthy, instant server (the seed and stall time are kept)."""
        self.outage = None
        self.rate = 0.0
        self.rate_kinds = ("http_503",)
        self.latency_ms = (0.0, 0.0)
        self.call_script.clear()
        self.phone_script.clear()

    def set_rate(self, rate: float, kinds: str | Sequence[str]) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"failure rate must be between 0 and 1, got {rate}")
        names = [kinds] if isinstance(kinds, str) else list(kinds)
        if not names:
            raise ValueError("give at least one fault kind")
        self.rate_kinds = tuple(check_kind(name) for name in names)
        self.rate = rate

    def set_latency(self, min_ms: float, max_ms: float | None) -> None:
        high = min_ms if max_ms is None else max_ms
        if min_ms < 0 or high < min_ms:
            raise ValueError(f"latency must satisfy 0 <= min <= max, got {min_ms}..{high} ms")
        self.latency_ms = (min_ms, high)

    def script_phone(self, phone: str, kinds: Iterable[str | None]) -> None:
        entries = [_script_entry(kind) for kind in kinds]
        self.phone_script.setdefault(phone_key(phone), deque()).extend(entries)

    def script_calls(self, script: Mapping[int, str | None]) -> None:
        for number, kind in script.items():
            if number < 1:
                raise ValueError(f"call numbers start at 1, got {number}")
            self.call_script[number] = _script_entry(kind)

    def choose(self, number: int, phone: str) -> FaultKind | None:
        """The fault for call ``number`` carrying ``phone`` (consumes script entries)."""
        if self.outage is not None:
            return self.outage
        if number in self.call_script:
            return self.call_script.pop(number)
        if phone:
            queue = self.phone_script.get(phone_key(phone))
            if queue:
                kind = queue.popleft()
                if not queue:
                    del self.phone_script[phone_key(phone)]
                return kind
        if self.rate > 0.0 and self._fail_rng.random() < self.rate:
            kinds = self.rate_kinds
            return kinds[0] if len(kinds) == 1 else self._fail_rng.choice(kinds)
        return None

    def choose_lookup(self, phone: str) -> FaultKind | None:
        """The fault for a Non-Agent API request carrying ``phone`` ("" for none)."""
        if self.outage is not None:
            return self.outage
        if phone:
            queue = self.phone_script.get(phone_key(phone))
            if queue:
                kind = queue.popleft()
                if not queue:
                    del self.phone_script[phone_key(phone)]
                return kind
        if self.rate > 0.0 and self._lookup_fail_rng.random() < self.rate:
            kinds = self.rate_kinds
            return kinds[0] if len(kinds) == 1 else self._lookup_fail_rng.choice(kinds)
        return None

    def latency_s(self, *, lookup: bool = False) -> float:
        low, high = self.latency_ms
        if high <= 0.0:
            return 0.0
        rng = self._lookup_latency_rng if lookup else self._latency_rng
        return (low if low == high else rng.uniform(low, high)) / 1000.0
