"""The simulated VICIdial server's clocks: PHP's time zone and the ``servers`` row's GMT.

A real VICIdial web server has two notions of "local time" that need not agree
(shared/vicidial/non_agent_add_lead.md was captured with PHP in UTC and a servers
row saying ``local_gmt=-5.00``):

- PHP's time zone (``date.timezone``): every ``date()`` call -- the ``DATE`` of the
  ``version`` answers, ``entry_date``/``last_local_call_time`` of new leads, the
  duplicate checks' time windows, callback times, the ``DST`` flag (``date('I')``);
- the ``local_gmt`` column of the active ``servers`` row: ``TZ`` of the Non-Agent
  ``version`` answer and the reference of ``lookup_gmt_api``'s DST arithmetic.

``non_agent_api.php`` computes ``SERVER_GMT = local_gmt`` and, while PHP reports
DST, ``SERVER_GMT++``: PHP's increment turns the text ``-5.00`` into the number -4,
printed ``-4`` (``TZNOW``). Without a servers row it is ``date("O")/100`` and ``TZ``
is empty. :func:`php_number` prints a number as PHP's ``echo`` does.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["DEFAULT_LOCAL_GMT", "ServerTime", "check_local_gmt", "check_timezone", "php_number"]

#: The servers row's local_gmt of the measured instance (and VICIdial's usual US East).
DEFAULT_LOCAL_GMT = "-5.00"


def php_number(value: float) -> str:
    """A float as PHP 8 prints it (precision 14, no trailing ``.0``): -4.0 -> ``-4``."""
    if value == 0:
        return "0"
    return f"{value:.14G}"  # GMT offsets never reach PHP's exponent notation


def check_timezone(name: str) -> dt.tzinfo:
    """The tzinfo of an IANA zone name; ValueError when the name is unknown."""
    if name.upper() == "UTC":
        return dt.UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def check_local_gmt(text: str) -> str:
    """``servers.local_gmt`` as VICIdial stores it (``-5.00``, ``+10.00``, ``5.50``)."""
    body = text[1:] if text[:1] in "+-" else text
    whole, dot, frac = body.partition(".")
    if not (whole.isdigit() and len(whole) <= 2 and (not dot or (frac.isdigit() and frac))):
        raise ValueError(f"expected a GMT offset such as -5.00, got {text!r}")
    return text


@dataclass
class ServerTime:
    """PHP's time zone (None: this machine's) and the servers row's ``local_gmt``
    (None: no active servers row)."""

    php_timezone: str | None = None
    local_gmt: str | None = DEFAULT_LOCAL_GMT

    def __post_init__(self) -> None:
        self._tz = None if self.php_timezone is None else check_timezone(self.php_timezone)

    def wall(self, now: float) -> dt.datetime:
        """PHP's ``date()`` view of ``now``: an aware datetime in PHP's time zone."""
        if self._tz is None:
            return dt.datetime.fromtimestamp(now).astimezone()
        return dt.datetime.fromtimestamp(now, self._tz)

    def stamp(self, now: float) -> str:
        """``date("Y-m-d H:i:s")``."""
        return self.wall(now).strftime("%Y-%m-%d %H:%M:%S")

    def isdst(self, now: float) -> bool:
        """``date("I")``."""
        offset = self.wall(now).dst()
        return bool(offset)

    def server_gmt(self, now: float) -> tuple[str, float]:
        """``SERVER_GMT`` as the script holds it (printed text, numeric value)."""
        if self.local_gmt is None:
            offset = self.wall(now).utcoffset() or dt.timedelta(0)
            # date("O") is e.g. "-0500" or "+0530"; the script divides its integer by 100.
            sign = -1 if offset < dt.timedelta(0) else 1
            minutes = abs(int(offset.total_seconds())) // 60
            number = sign * int(f"{minutes // 60:02d}{minutes % 60:02d}") / 100
            return php_number(number), number
        base = float(self.local_gmt)
        if self.isdst(now):
            return php_number(base + 1), base + 1  # PHP's ++ on the text "-5.00"
        return self.local_gmt, base

    def local_fields(self, now: float) -> dt.datetime:
        """The naive wall-clock time PHP's ``mktime()`` arithmetic works on."""
        return self.wall(now).replace(tzinfo=None)

    def shifted(self, now: float, hours: float) -> dt.datetime:
        """``mktime(H + hours, i, s, m, d, Y)``: PHP truncates a fractional hour argument."""
        local = self.local_fields(now)
        whole = math.trunc(local.hour + hours)
        return local.replace(hour=0) + dt.timedelta(hours=whole)
