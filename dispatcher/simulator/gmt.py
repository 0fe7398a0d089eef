"""``lookup_gmt_api`` and ``dialable_gmt`` of ``non_agent_api.php``: a lead's GMT offset
and whether it may be dialled now.

As shared/vicidial/non_agent_add_lead.md describes ("gmt", "Hopper"):

- the offset comes from ``vicidial_postal_codes`` (``tz_method`` containing POSTAL),
  ``vicidial_phone_codes.tz_code`` (``tz_method`` exactly TZCODE, the lead's ``owner``),
  ``vicidial_nanpa_prefix_codes`` (containing NANPA), else ``vicidial_phone_codes``:
  by area code for country codes 1 and 52, by state for 61, and otherwise -- or when
  that found nothing -- the first row of the country code; no row: empty;
- then the row's DST rule (``DST_range``) is evaluated at the area's local time, which
  the script computes as PHP's local time shifted by (offset - ``SERVER_GMT``) hours;
  when it says DST, the offset + 1 is printed as a PHP number (``11``, ``-4``), else the
  table's text without ``+`` (``-5.00``, ``0.00``);
- ``dialable_gmt``: UTC + offset must fall in the call time of the day (HHMM, stop
  exclusive; a day of 0-0 uses the default; state call times win when the call time
  has some and the lead has a state). An unknown call time is never dialable.

The DST rules are VICIdial's (second Sunday of March to first Sunday of November at
2 am, and so on), with the script's own boundary quirks: it compares the day of the
month with the weekday (``dd >= dow + 8``), and its ``LSS-FSA`` rule never switches on
in September (a branch that cannot be reached): DST from October 1.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from dispatcher.simulator.listconfig import PhoneCodeConfig
from dispatcher.simulator.listtables import ListTables
from dispatcher.simulator.servertime import ServerTime, php_number

__all__ = ["dialable", "is_dst", "lookup_gmt", "stored_gmt"]


@dataclass(frozen=True)
class _Edge:
    """A DST switch: month, and on which Sunday (the script's arithmetic)."""

    month: int
    #: the switching Sunday has come once day - weekday >= n
    n: int
    #: past this day of the month the switch has happened, Sunday or not
    cutoff: int
    #: the switching time on that Sunday, seconds into the day
    seconds: int

    def passed(self, day: int, dow: int, secs: int) -> bool:
        if day > self.cutoff:
            return True
        if day - dow < self.n:
            return False
        return not (dow == 0 and secs < self.seconds)


@dataclass(frozen=True)
class _Rule:
    start: _Edge | None
    end: _Edge
    #: months entirely in DST
    on: frozenset[int]


def _months(*months: int) -> frozenset[int]:
    return frozenset(months)


_RULES: dict[str, _Rule] = {
    "SSM-FSN": _Rule(_Edge(3, 8, 13, 7200), _Edge(11, 1, 7, 7200), _months(*range(4, 11))),
    "FSA-LSO": _Rule(_Edge(4, 1, 7, 7200), _Edge(10, 25, 31, 7200), _months(*range(5, 10))),
    "LSM-LSO": _Rule(_Edge(3, 25, 31, 3600), _Edge(10, 25, 31, 3600), _months(*range(4, 10))),
    "LSO-LSM": _Rule(_Edge(10, 25, 31, 3600), _Edge(3, 25, 31, 3600), _months(11, 12, 1, 2)),
    "FSO-LSM": _Rule(_Edge(10, 1, 7, 3600), _Edge(3, 25, 31, 3600), _months(11, 12, 1, 2)),
    "FSO-FSA": _Rule(_Edge(10, 1, 7, 3600), _Edge(4, 1, 7, 7200), _months(11, 12, 1, 2, 3)),
    "FSO-TSM": _Rule(_Edge(10, 1, 7, 3600), _Edge(3, 14, 31, 3600), _months(11, 12, 1, 2)),
    # The script's September branch is unreachable: DST from October 1.
    "LSS-FSA": _Rule(None, _Edge(4, 1, 7, 7200), _months(10, 11, 12, 1, 2, 3)),
    "TSO-LSF": _Rule(_Edge(10, 22, 31, 3600), _Edge(2, 22, 31, 3600), _months(11, 12, 1)),
}


def is_dst(dst_range: str, local: dt.datetime) -> bool:
    """Whether VICIdial's rule ``dst_range`` says DST at the (naive) local time."""
    rule = _RULES.get(dst_range)
    if rule is None:
        return False  # "No DST Method Found"
    month, day = local.month, local.day
    dow = (local.weekday() + 1) % 7  # date("w"): Sunday is 0
    secs = local.hour * 3600 + local.minute * 60 + local.second
    if month in rule.on:
        return True
    if rule.start is not None and month == rule.start.month:
        return rule.start.passed(day, dow, secs)
    if month == rule.end.month:
        return not rule.end.passed(day, dow, secs)
    return False


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _plain(gmt: str) -> str:
    return gmt.replace("+", "")


def lookup_gmt(
    tables: ListTables,
    clock: ServerTime,
    now: float,
    *,
    phone_code: str,
    area: str,
    prefix: str,
    state: str,
    tz_method: str,
    postal_code: str,
    owner: str,
) -> str:
    """The offset as ``add_lead`` prints it ("" when no row was found)."""
    gmt: str | float | None = None  # None: the PHP variable stays unset
    dst_range = ""
    found = False
    code = _number(phone_code)
    if "POSTAL" in tz_method.upper() and len(postal_code) > 4 and phone_code == "1":
        wanted = postal_code.lower()
        for postal in tables.postal_codes:
            if postal.country_code == 1 and postal.postal_code.lower().startswith(wanted):
                gmt, dst_range, found = _plain(postal.gmt_offset), postal.dst_range, True
                break
    if tz_method == "TZCODE" and len(owner) > 1:
        gmt, dst_range = 0, ""
        rows = [
            r
            for r in tables.phone_codes
            if r.tz_code.lower() == owner.lower() and r.country_code == code
        ]
        if rows:
            gmt, found = _plain(rows[0].gmt_offset), True
            # "select distinct DST_range ... order by DST_range desc limit 1"
            dst_range = max((r.dst_range for r in rows), key=str.lower)
    if "NANPA" in tz_method.upper() and len(area) > 2 and len(prefix) > 2:
        for nanpa in tables.nanpa_prefixes:
            if nanpa.areacode == area and nanpa.prefix == prefix:
                gmt, found = _plain(nanpa.gmt_offset), True
                dst_range = "SSM-FSN" if nanpa.dst else ""
                break
    if not found:
        row: PhoneCodeConfig | None = None
        if code in (1, 52):
            row = _first(tables, code, lambda r: r.areacode.lower() == area.lower())
        elif code == 61:
            row = _first(tables, code, lambda r: r.state.lower() == state.lower())
        if row is None:
            row = _first(tables, code, lambda r: True)
        if row is not None:
            gmt, dst_range = _plain(row.gmt_offset), row.dst_range
    if gmt is None:
        return ""
    if dst_range in _RULES:
        offset = float(gmt)
        _, server_gmt = clock.server_gmt(now)
        if is_dst(dst_range, clock.shifted(now, offset - server_gmt)):
            return php_number(offset + 1)
    return gmt if isinstance(gmt, str) else php_number(gmt)


def _first(
    tables: ListTables, code: int | None, match: Callable[[PhoneCodeConfig], bool]
) -> PhoneCodeConfig | None:
    for row in tables.phone_codes:
        if row.country_code == code and match(row):
            return row
    return None


def stored_gmt(printed: str) -> str:
    """What the DECIMAL(4,2) column ``gmt_offset_now`` holds for the printed offset."""
    if not printed:
        return "0.00"
    value = Decimal(printed).quantize(Decimal("0.01"))
    value = max(min(value, Decimal("99.99")), Decimal("-99.99"))
    return "0.00" if value == 0 else f"{value:.2f}"


def dialable(tables: ListTables, call_time_id: str, gmt: str, state: str, now: float) -> bool:
    """``dialable_gmt()``: is UTC + ``gmt`` inside the call time right now?"""
    row = tables.call_time(call_time_id) if call_time_id else None
    if row is None:
        return False
    offset = float(gmt) if gmt else 0.0
    local = dt.datetime.fromtimestamp(int(now + 3600 * offset), dt.UTC)
    hour = local.hour * 100 + local.minute
    start, stop = row.start, row.stop
    days = row.days
    if row.states and state:
        for name, s_start, s_stop in row.states:
            if name.lower() == state.lower():
                start, stop, days = s_start, s_stop, ((0, 0),) * 7
                break
    day = (local.weekday() + 1) % 7
    day_start, day_stop = days[day]
    if day_start == 0 and day_stop == 0:
        return start <= hour < stop
    return day_start <= hour < day_stop
