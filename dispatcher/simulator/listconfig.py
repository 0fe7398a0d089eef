"""The state file's keys for the Non-Agent API's ``add_lead``: lists, phone codes, call times.

Rows of the VICIdial tables ``add_lead`` reads (shared/vicidial/non_agent_add_lead.md),
as frozen configuration, with their JSON shape (every key optional)::

    "lists": {"101": {"campaign_id": "TESTCAMP", "active": true, "local_call_time": "campaign"},
              "999": "TESTCAMP"},
    "phone_codes": [{"country_code": 1, "areacode": "727", "state": "FL", "gmt_offset": "-5.00",
                     "dst": true, "dst_range": "SSM-FSN", "tz_code": "EST"}],
    "postal_codes": [{"postal_code": "33701", "state": "FL", "gmt_offset": "-5.00",
                      "dst": true, "dst_range": "SSM-FSN", "country_code": 1}],
    "nanpa_prefixes": [{"areacode": "727", "prefix": "555", "gmt_offset": "-5.00", "dst": true}],
    "custom_fields": {"102": [{"label": "favorite_color", "type": "TEXT", "max": 100}]},
    "call_times": {"9am-6pm": {"start": 900, "stop": 1800, "days": {"saturday": [1000, 1400]},
                               "states": {"FL": [1000, 1800]}}}

- ``lists`` (``vicidial_lists``): list id (digits) -> its campaign, ``active`` (default
  true; never checked by add_lead) and ``local_call_time`` (default ``campaign``: the
  campaign's). A bare string is the campaign. Every campaign's manual dial list is a list
  of that campaign as well unless named here.
- ``phone_codes`` (``vicidial_phone_codes``, in table order: "the first row of a country
  code" matters): replaces the default table :data:`DEFAULT_PHONE_CODES` (the facts' rows
  1/727 FL -5.00, 1/808 HI -10.00, 44 +0.00, 61 NSW +10.00). ``dst_range`` is one of
  VICIdial's rules (``SSM-FSN``, ``FSO-FSA``, ``LSM-LSO``, ...); any other text means no DST.
- ``postal_codes`` (``tz_method=POSTAL``) and ``nanpa_prefixes``
  (``vicidial_nanpa_prefix_codes``: fewer than 10 rows and add_lead disables its NANPA
  options with a NOTICE) default to empty tables.
- ``custom_fields``: per list, the ``vicidial_lists_fields`` definitions; naming a list
  (even with ``[]``) creates its table ``custom_{list}``. ``type`` (default TEXT; DISPLAY,
  SCRIPT, BUTTON, SWITCH hold no value), ``max`` the column size (default 100).
- ``call_times`` (``vicidial_call_times``): added to (or replacing) VICIdial's six
  defaults (``24hours``, ``9am-9pm``, ``9am-5pm``, ``12pm-5pm``, ``12pm-9pm``,
  ``5pm-9pm``); times are HHMM numbers, ``days`` override the default per weekday, and
  ``states`` are state call times (one start/stop per state).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_CALL_TIMES",
    "DEFAULT_PHONE_CODES",
    "WEEKDAYS",
    "CallTimeConfig",
    "CustomFieldConfig",
    "ListConfig",
    "NanpaPrefixConfig",
    "PhoneCodeConfig",
    "PostalCodeConfig",
    "call_times_to_json",
    "custom_fields_to_json",
    "lists_to_json",
    "nanpa_to_json",
    "phone_codes_to_json",
    "postal_codes_to_json",
    "read_call_times",
    "read_custom_fields",
    "read_lists",
    "read_nanpa",
    "read_phone_codes",
    "read_postal_codes",
]

#: date("w") order: Sunday first.
WEEKDAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")


@dataclass(frozen=True)
class ListConfig:
    """One row of ``vicidial_lists``."""

    campaign_id: str = ""
    active: bool = True
    #: a call time id, or ``campaign`` (or empty): the campaign's
    local_call_time: str = "campaign"


@dataclass(frozen=True)
class PhoneCodeConfig:
    """One row of ``vicidial_phone_codes``; ``gmt_offset`` is the table's text."""

    country_code: int
    areacode: str = ""
    state: str = ""
    gmt_offset: str = "+0.00"
    dst: bool = False
    dst_range: str = ""
    tz_code: str = ""


@dataclass(frozen=True)
class PostalCodeConfig:
    """One row of ``vicidial_postal_codes``."""

    postal_code: str
    state: str = ""
    gmt_offset: str = "+0.00"
    dst: bool = False
    dst_range: str = ""
    country_code: int = 1


@dataclass(frozen=True)
class NanpaPrefixConfig:
    """One row of ``vicidial_nanpa_prefix_codes``."""

    areacode: str
    prefix: str
    gmt_offset: str = "-5.00"
    dst: bool = True


@dataclass(frozen=True)
class CustomFieldConfig:
    """One row of ``vicidial_lists_fields``: the column ``label`` of ``custom_{list}``."""

    label: str
    type: str = "TEXT"
    #: field_max: the column's size
    max: int = 100


@dataclass(frozen=True)
class CallTimeConfig:
    """One row of ``vicidial_call_times`` (HHMM numbers, stop exclusive).

    ``days`` holds (start, stop) per weekday, Sunday first; (0, 0) means "the default".
    ``states`` holds (state, start, stop) state call times.
    """

    start: int = 900
    stop: int = 2100
    days: tuple[tuple[int, int], ...] = ((0, 0),) * 7
    states: tuple[tuple[str, int, int], ...] = ()


DEFAULT_PHONE_CODES: tuple[PhoneCodeConfig, ...] = (
    PhoneCodeConfig(1, "727", "FL", "-5.00", True, "SSM-FSN", "EST"),
    PhoneCodeConfig(1, "808", "HI", "-10.00", False, "", "HST"),
    PhoneCodeConfig(44, "", "", "+0.00", True, "LSM-LSO", "GMT"),
    PhoneCodeConfig(61, "", "NSW", "+10.00", True, "FSO-FSA", "AEST"),
)

#: VICIdial's shipped call times (extras/MySQL_AST_CREATE_tables.sql).
DEFAULT_CALL_TIMES: dict[str, CallTimeConfig] = {
    "24hours": CallTimeConfig(0, 2400),
    "9am-9pm": CallTimeConfig(900, 2100),
    "9am-5pm": CallTimeConfig(900, 1700),
    "12pm-5pm": CallTimeConfig(1200, 1700),
    "12pm-9pm": CallTimeConfig(1200, 2100),
    "5pm-9pm": CallTimeConfig(1700, 2100),
}

_GMT = re.compile(r"^[-+]?\d{1,2}(\.\d{1,2})?$")

# ---------------------------------------------------------------------- reading


def read_lists(raw: Any, where: str) -> dict[str, ListConfig]:
    out: dict[str, ListConfig] = {}
    for key, row in _object(raw, where).items():
        here = f"{where}.{key}"
        if not key.isdigit():
            raise ValueError(f"{here}: a list id is digits only")
        list_id = str(int(key))
        if isinstance(row, str):
            out[list_id] = ListConfig(campaign_id=row)
            continue
        obj = _object(row, here)
        _known(obj, {"campaign_id", "active", "local_call_time"}, here)
        out[list_id] = ListConfig(
            campaign_id=_text(obj.get("campaign_id", ""), f"{here}.campaign_id"),
            active=_bool(obj.get("active", True), f"{here}.active"),
            local_call_time=_text(
                obj.get("local_call_time", "campaign"), f"{here}.local_call_time"
            ),
        )
    return out


def read_phone_codes(raw: Any, where: str) -> tuple[PhoneCodeConfig, ...]:
    rows = []
    for i, row in enumerate(_list(raw, where)):
        here = f"{where}[{i}]"
        obj = _object(row, here)
        _known(
            obj,
            {"country_code", "areacode", "state", "gmt_offset", "dst", "dst_range", "tz_code"},
            here,
        )
        if "country_code" not in obj:
            raise ValueError(f"{here}.country_code: missing")
        rows.append(
            PhoneCodeConfig(
                country_code=_code(obj["country_code"], f"{here}.country_code"),
                areacode=_text(obj.get("areacode", ""), f"{here}.areacode"),
                state=_text(obj.get("state", ""), f"{here}.state"),
                gmt_offset=_gmt(obj.get("gmt_offset", "+0.00"), f"{here}.gmt_offset"),
                dst=_bool(obj.get("dst", False), f"{here}.dst"),
                dst_range=_text(obj.get("dst_range", ""), f"{here}.dst_range"),
                tz_code=_text(obj.get("tz_code", ""), f"{here}.tz_code"),
            )
        )
    return tuple(rows)


def read_postal_codes(raw: Any, where: str) -> tuple[PostalCodeConfig, ...]:
    rows = []
    for i, row in enumerate(_list(raw, where)):
        here = f"{where}[{i}]"
        obj = _object(row, here)
        _known(
            obj,
            {"postal_code", "state", "gmt_offset", "dst", "dst_range", "country_code"},
            here,
        )
        if "postal_code" not in obj:
            raise ValueError(f"{here}.postal_code: missing")
        rows.append(
            PostalCodeConfig(
                postal_code=_text(obj["postal_code"], f"{here}.postal_code"),
                state=_text(obj.get("state", ""), f"{here}.state"),
                gmt_offset=_gmt(obj.get("gmt_offset", "+0.00"), f"{here}.gmt_offset"),
                dst=_bool(obj.get("dst", False), f"{here}.dst"),
                dst_range=_text(obj.get("dst_range", ""), f"{here}.dst_range"),
                country_code=_code(obj.get("country_code", 1), f"{here}.country_code"),
            )
        )
    return tuple(rows)


def read_nanpa(raw: Any, where: str) -> tuple[NanpaPrefixConfig, ...]:
    rows = []
    for i, row in enumerate(_list(raw, where)):
        here = f"{where}[{i}]"
        obj = _object(row, here)
        _known(obj, {"areacode", "prefix", "gmt_offset", "dst"}, here)
        for key in ("areacode", "prefix"):
            if key not in obj:
                raise ValueError(f"{here}.{key}: missing")
        rows.append(
            NanpaPrefixConfig(
                areacode=_text(obj["areacode"], f"{here}.areacode"),
                prefix=_text(obj["prefix"], f"{here}.prefix"),
                gmt_offset=_gmt(obj.get("gmt_offset", "-5.00"), f"{here}.gmt_offset"),
                dst=_bool(obj.get("dst", True), f"{here}.dst"),
            )
        )
    return tuple(rows)


def read_custom_fields(raw: Any, where: str) -> dict[str, tuple[CustomFieldConfig, ...]]:
    out: dict[str, tuple[CustomFieldConfig, ...]] = {}
    for key, defs in _object(raw, where).items():
        here = f"{where}.{key}"
        if not key.isdigit():
            raise ValueError(f"{here}: a list id is digits only")
        fields = []
        for i, row in enumerate(_list(defs, here)):
            spot = f"{here}[{i}]"
            obj = _object(row, spot)
            _known(obj, {"label", "type", "max"}, spot)
            if "label" not in obj:
                raise ValueError(f"{spot}.label: missing")
            size = obj.get("max", 100)
            if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 65535:
                raise ValueError(f"{spot}.max: expected a column size 1-65535, got {size!r}")
            fields.append(
                CustomFieldConfig(
                    label=_text(obj["label"], f"{spot}.label"),
                    type=_text(obj.get("type", "TEXT"), f"{spot}.type").upper(),
                    max=size,
                )
            )
        out[str(int(key))] = tuple(fields)
    return out


def read_call_times(raw: Any, where: str) -> dict[str, CallTimeConfig]:
    out = dict(DEFAULT_CALL_TIMES)
    for name, row in _object(raw, where).items():
        here = f"{where}.{name}"
        obj = _object(row, here)
        _known(obj, {"start", "stop", "days", "states"}, here)
        days = [(0, 0)] * 7
        for day, span in _object(obj.get("days", {}), f"{here}.days").items():
            if day not in WEEKDAYS:
                raise ValueError(f"{here}.days.{day}: not a weekday ({', '.join(WEEKDAYS)})")
            days[WEEKDAYS.index(day)] = _span(span, f"{here}.days.{day}")
        states = tuple(
            (state, *_span(span, f"{here}.states.{state}"))
            for state, span in _object(obj.get("states", {}), f"{here}.states").items()
        )
        out[name] = CallTimeConfig(
            start=_hhmm(obj.get("start", 900), f"{here}.start"),
            stop=_hhmm(obj.get("stop", 2100), f"{here}.stop"),
            days=tuple(days),
            states=states,
        )
    return out


# ---------------------------------------------------------------------- writing


def lists_to_json(lists: Mapping[str, ListConfig]) -> dict[str, Any]:
    return {
        key: {
            "campaign_id": row.campaign_id,
            "active": row.active,
            "local_call_time": row.local_call_time,
        }
        for key, row in lists.items()
    }


def phone_codes_to_json(rows: tuple[PhoneCodeConfig, ...]) -> list[dict[str, Any]]:
    return [
        {
            "country_code": r.country_code,
            "areacode": r.areacode,
            "state": r.state,
            "gmt_offset": r.gmt_offset,
            "dst": r.dst,
            "dst_range": r.dst_range,
            "tz_code": r.tz_code,
        }
        for r in rows
    ]


def postal_codes_to_json(rows: tuple[PostalCodeConfig, ...]) -> list[dict[str, Any]]:
    return [
        {
            "postal_code": r.postal_code,
            "state": r.state,
            "gmt_offset": r.gmt_offset,
            "dst": r.dst,
            "dst_range": r.dst_range,
            "country_code": r.country_code,
        }
        for r in rows
    ]


def nanpa_to_json(rows: tuple[NanpaPrefixConfig, ...]) -> list[dict[str, Any]]:
    return [
        {"areacode": r.areacode, "prefix": r.prefix, "gmt_offset": r.gmt_offset, "dst": r.dst}
        for r in rows
    ]


def custom_fields_to_json(
    fields: Mapping[str, tuple[CustomFieldConfig, ...]],
) -> dict[str, list[dict[str, Any]]]:
    return {
        key: [{"label": f.label, "type": f.type, "max": f.max} for f in defs]
        for key, defs in fields.items()
    }


def call_times_to_json(times: Mapping[str, CallTimeConfig]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, row in times.items():
        entry: dict[str, Any] = {"start": row.start, "stop": row.stop}
        days = {WEEKDAYS[i]: list(span) for i, span in enumerate(row.days) if span != (0, 0)}
        if days:
            entry["days"] = days
        if row.states:
            entry["states"] = {state: [start, stop] for state, start, stop in row.states}
        out[name] = entry
    return out


# ---------------------------------------------------------------------- helpers


def _object(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
    return dict(raw)


def _list(raw: Any, where: str) -> list[Any]:
    if not isinstance(raw, list):
        raise ValueError(f"{where}: expected a list, got {type(raw).__name__}")
    return raw


def _known(obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ValueError(
            f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})"
        )


def _text(raw: Any, where: str) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    raise ValueError(f"{where}: expected a string, got {type(raw).__name__}")


def _bool(raw: Any, where: str) -> bool:
    if not isinstance(raw, bool):
        raise ValueError(f"{where}: expected true or false, got {raw!r}")
    return raw


def _code(raw: Any, where: str) -> int:
    text = _text(raw, where)
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"{where}: expected a country code 0-65535, got {raw!r}")
    return int(text)


def _gmt(raw: Any, where: str) -> str:
    text = _text(raw, where)
    if not _GMT.match(text):
        raise ValueError(f"{where}: expected a GMT offset such as -5.00 or +10.00, got {raw!r}")
    return text


def _hhmm(raw: Any, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 2400:
        raise ValueError(f"{where}: expected a time HHMM 0-2400, got {raw!r}")
    return raw


def _span(raw: Any, where: str) -> tuple[int, int]:
    if not isinstance(raw, list) or len(raw) != 2:
        raise ValueError(f"{where}: expected [start, stop] (HHMM numbers)")
    return _hhmm(raw[0], f"{where}[0]"), _hhmm(raw[1], f"{where}[1]")
