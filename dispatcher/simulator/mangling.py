"""How VICIdial's agc/api.php rewrites input values before it uses them.

Two stages, both silent (no error is ever reported to the caller):

1. :func:`sanitize` -- the ``preg_replace`` block at the top of ``agc/api.php``:
   characters outside each field's allowed set are removed, and ``+`` becomes a
   space in most text fields. With the system setting ``use_non_latin=0`` (the
   default) the allowed sets are ASCII, so non-ASCII letters disappear from them
   (``José`` -> ``Jos``); with ``use_non_latin=1`` (``non_latin=True`` here) the
   sets of the lead's text fields keep letters of every script (PCRE's ``\\p{L}``,
   which is Python's ``str.isalpha``: categories Lu, Ll, Lt, Lm, Lo; combining marks
   are not letters). ``comments``, ``source_id`` and ``vendor_lead_code`` lose only
   ``;`` and ``#`` in both modes (and ``+`` becomes a space).
2. :func:`to_column` -- what MariaDB (non-strict mode, as VICIdial installs it) does
   when the value lands in a ``vicidial_list`` column: with ``use_non_latin=1`` the
   connection is utf8mb3, so every character above U+FFFF becomes one ``?`` per
   UTF-8 byte; then truncation to the column size (in characters), enum/date/number
   coercion. :func:`sql_literal` handles the backslash escapes of the three fields
   that reach the SQL statement unfiltered.

The reference is shared/vicidial/external_add_lead.md ("How the server mangles field
values"); the measured instance has utf8mb4 tables, so in the default mode the three
free-text fields keep any text (emoji included) byte for byte.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

__all__ = [
    "COLUMN_SIZES",
    "LEAD_FIELDS",
    "RAW_SQL_FIELDS",
    "sanitize",
    "sql_literal",
    "to_column",
]

# The lead columns external_add_lead writes (phone_number comes from `value`).
LEAD_FIELDS: tuple[str, ...] = (
    "phone_number",
    "phone_code",
    "title",
    "first_name",
    "middle_initial",
    "last_name",
    "address1",
    "address2",
    "address3",
    "city",
    "state",
    "province",
    "postal_code",
    "country_code",
    "gender",
    "date_of_birth",
    "alt_phone",
    "email",
    "security_phrase",
    "comments",
    "source_id",
    "vendor_lead_code",
    "rank",
    "owner",
)

# Column sizes of vicidial_list, as listed in shared/vicidial/external_add_lead.md.
COLUMN_SIZES: dict[str, int] = {
    "phone_number": 18,
    "phone_code": 10,
    "title": 4,
    "first_name": 30,
    "middle_initial": 1,
    "last_name": 30,
    "address1": 100,
    "address2": 100,
    "address3": 100,
    "city": 50,
    "state": 2,
    "province": 50,
    "postal_code": 10,
    "country_code": 3,
    "alt_phone": 12,
    "email": 70,
    "security_phrase": 100,
    "comments": 255,
    "source_id": 50,
    "vendor_lead_code": 20,
    "owner": 20,
}

# Fields that agc/api.php only strips of `;` and `#`: a `"` or a trailing `\` in them
# reaches the INSERT statement and breaks it (HTTP 500 on PHP 8.1+).
RAW_SQL_FIELDS: tuple[str, ...] = ("vendor_lead_code", "source_id", "comments")

_ALNUM = "0-9a-zA-Z"


def _removing(pattern: str) -> Callable[[str], str]:
    regex = re.compile(pattern)
    return lambda value: regex.sub("", value)


def _keeping(allowed: str) -> Callable[[str], str]:
    return _removing(f"[^{allowed}]")


def _keeping_letters(others: str) -> Callable[[str], str]:
    """``preg_replace('/[^{others}\\p{L}]/u', '', $x)``: letters of any script, plus ``others``.

    ``others`` lists literal characters (no ranges): the set's digits and punctuation.
    """
    kept = frozenset(others)
    return lambda value: "".join(c for c in value if c in kept or c.isalpha())


# Allowed characters per input field, transcribed from agc/api.php 2.14-81 (use_non_latin=0),
# except phone_number, where the spec (observed on 2.14-82) also keeps letters.
_FILTERS: dict[str, Callable[[str], str]] = {
    "user": _keeping(rf"\-_{_ALNUM}"),
    "pass": _keeping(rf"\-.+/=_{_ALNUM}"),
    "agent_user": _keeping(rf"\-_{_ALNUM}"),
    "alt_user": _keeping(_ALNUM),
    "function": _keeping(rf"\-_{_ALNUM}"),
    "value": _keeping(rf"\-|_{_ALNUM}"),
    "source": _keeping(_ALNUM),
    "format": _keeping(_ALNUM),
    "dnc_check": _keeping(rf"\-_{_ALNUM}"),
    "campaign_dnc_check": _keeping(rf"\-_{_ALNUM}"),
    "phone_code": _keeping("0-9X"),
    "phone_number": _keeping(rf"*#{_ALNUM}"),
    "gmt_offset_now": _keeping(r"\-_.0-9"),
    "title": _keeping(rf"\- '_.{_ALNUM}"),
    "first_name": _keeping(rf"\- '+_.{_ALNUM}"),
    "middle_initial": _keeping(_ALNUM),
    "last_name": _keeping(rf"\- '+_.{_ALNUM}"),
    "address1": _keeping(rf"\- '+.:/@_{_ALNUM}"),
    "address2": _keeping(rf"\- '+.:/@_{_ALNUM}"),
    "address3": _keeping(rf"\- '+.:/@_{_ALNUM}"),
    "city": _keeping(rf"\- '+.:/@_{_ALNUM}"),
    "state": _keeping(rf"\- {_ALNUM}"),
    "province": _keeping(rf"\- '+._{_ALNUM}"),
    # Filtered twice in the PHP: [- '+0-9a-zA-Z] then [- ._0-9a-zA-Z]; this is what survives both.
    "postal_code": _keeping(rf"\- +{_ALNUM}"),
    "country_code": _keeping("A-Z"),
    "gender": _keeping("A-Z"),
    "date_of_birth": _keeping(r"\-0-9"),
    "alt_phone": _keeping(rf"\- '+_.{_ALNUM}"),
    "email": _keeping(rf"\- '+.:/@%_{_ALNUM}"),
    "security_phrase": _keeping(rf"\- '+.:/@_{_ALNUM}"),
    "rank": _keeping("0-9"),
    "owner": _keeping(rf"\- '+.:/@_{_ALNUM}"),
    # No allowed-character set: only `;` and `#` are removed. Tabs, newlines, `|` and any
    # non-ASCII text reach the database as sent (the spec's utf8mb4 instance keeps them).
    "vendor_id": _removing(r"[;#]"),
    "vendor_lead_code": _removing(r"[;#]"),
    "source_id": _removing(r"[;#]"),
    "comments": _removing(r"[;#]"),
}

_DIGITS = "0123456789"
# use_non_latin=1: the sets of these fields have a-zA-Z replaced by \p{L} (the spec lists
# them); every other field (country_code and gender stay [A-Z]) keeps its filter above.
_NON_LATIN_FILTERS: dict[str, Callable[[str], str]] = {
    **_FILTERS,
    "value": _keeping_letters("-|_" + _DIGITS),
    "phone_number": _keeping_letters("*#" + _DIGITS),
    "title": _keeping_letters("- '_." + _DIGITS),
    "first_name": _keeping_letters("- '+_." + _DIGITS),
    "middle_initial": _keeping_letters(_DIGITS),
    "last_name": _keeping_letters("- '+_." + _DIGITS),
    "address1": _keeping_letters("- '+.:/@_" + _DIGITS),
    "address2": _keeping_letters("- '+.:/@_" + _DIGITS),
    "address3": _keeping_letters("- '+.:/@_" + _DIGITS),
    "city": _keeping_letters("- '+.:/@_" + _DIGITS),
    "state": _keeping_letters("- " + _DIGITS),
    "province": _keeping_letters("- '+._" + _DIGITS),
    "postal_code": _keeping_letters("- +" + _DIGITS),
    "alt_phone": _keeping_letters("- '+_." + _DIGITS),
    "email": _keeping_letters("- '+.:/@%_" + _DIGITS),
    "security_phrase": _keeping_letters("- '+.:/@_" + _DIGITS),
    "owner": _keeping_letters("- '+.:/@_" + _DIGITS),
}

# Fields where agc/api.php turns `+` into a space after filtering.
_PLUS_TO_SPACE = frozenset(
    {
        "first_name",
        "last_name",
        "address1",
        "address2",
        "address3",
        "city",
        "province",
        "postal_code",
        "alt_phone",
        "email",
        "security_phrase",
        "owner",
        "vendor_id",
        "vendor_lead_code",
        "source_id",
        "comments",
    }
)


def sanitize(field: str, value: str, *, non_latin: bool = False) -> str:
    """Return ``value`` as agc/api.php holds it after its input filter for ``field``.

    ``non_latin`` is the system setting ``use_non_latin``. Fields the PHP does not
    filter are returned unchanged.
    """
    keep = (_NON_LATIN_FILTERS if non_latin else _FILTERS).get(field)
    if keep is None:
        return value
    value = keep(value)
    if field in _PLUS_TO_SPACE:
        value = value.replace("+", " ")
    return value


# MySQL's backslash escapes inside a string literal; `\%` and `\_` keep their backslash.
_MYSQL_ESCAPES = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a"}


def sql_literal(value: str) -> str | None:
    """What MySQL stores for ``"value"`` in the INSERT, or None if the statement breaks.

    A ``"`` anywhere or an unpaired trailing backslash ends the literal early and makes
    the statement a syntax error (the spec: HTTP 500, nothing inserted). Other backslash
    sequences are MySQL escapes (``\\n`` becomes a newline, ``\\\\`` one backslash).
    """
    if '"' in value:
        return None
    if "\\" not in value:
        return value
    out: list[str] = []
    i = 0
    while i < len(value):
        char = value[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        if i + 1 == len(value):
            return None
        nxt = value[i + 1]
        out.append("\\" + nxt if nxt in "%_" else _MYSQL_ESCAPES.get(nxt, nxt))
        i += 2
    return "".join(out)


_DATE_DASHED = re.compile(r"^(\d{2}|\d{4})-(\d{1,2})-(\d{1,2})$")
_DATE_PACKED = re.compile(r"^(\d{4})(\d{2})(\d{2})$")


def _mysql_date(value: str) -> str:
    """A DATE column in non-strict mode: a valid date, else the zero date."""
    match = _DATE_DASHED.match(value) or _DATE_PACKED.match(value)
    if match is None:
        return "0000-00-00"
    year = int(match.group(1))
    if len(match.group(1)) == 2:  # MySQL: 70-99 -> 19xx, 00-69 -> 20xx
        year += 1900 if year >= 70 else 2000
    try:
        return dt.date(year, int(match.group(2)), int(match.group(3))).isoformat()
    except ValueError:
        return "0000-00-00"


_RANK_MAX = 32767  # vicidial_list.rank is a signed SMALLINT


def _rank_column(value: str) -> str:
    # MariaDB without strict mode clamps an out-of-range integer to the column's maximum;
    # no sign can reach it ('-' is filtered out). Never int() a huge digit string.
    digits = value.lstrip("0")
    if len(digits) > len(str(_RANK_MAX)) or int(digits or "0") > _RANK_MAX:
        return str(_RANK_MAX)
    return digits or "0"


def _utf8mb3(value: str) -> str:
    # SET NAMES 'UTF8' is utf8mb3 on MariaDB: a 4-byte UTF-8 sequence (any character above
    # U+FFFF) cannot be stored and becomes one '?' per byte.
    if value.isascii() or all(ord(c) <= 0xFFFF for c in value):
        return value
    return "".join("????" if ord(c) > 0xFFFF else c for c in value)


def to_column(field: str, value: str, *, non_latin: bool = False) -> str:
    """What MariaDB stores in ``vicidial_list.<field>`` for an already sanitised value.

    ``non_latin`` is the system setting ``use_non_latin`` (it picks the connection's
    character set).
    """
    if non_latin:
        value = _utf8mb3(value)
    if field == "gender":
        # enum('M','F','U'): an invalid value becomes the empty "error" member.
        return value if value in ("M", "F", "U") else ""
    if field == "date_of_birth":
        return _mysql_date(value)
    if field == "rank":
        return _rank_column(value)
    size = COLUMN_SIZES.get(field)
    return value[:size] if size is not None else value
