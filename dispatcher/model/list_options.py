"""add_lead's own options, as job fields: what a lead for a list asks VICIdial to do.

shared/vicidial/non_agent_add_lead.md ("Options"): every option is read through a filter
and anything but its exact value is "off", silently (``YES`` is not ``Y``; ``dupsys`` works
but ``DUP_SYS`` checks nothing). So each option is checked here, at enqueue, with the
value VICIdial acts on, and sent the one way VICIdial reads it (:meth:`ListOptions.form`):

* ``campaign_id``: the campaign whose DNC list ``campaign_dnc_check`` searches and whose
  callback ``callback`` schedules. **The request's, not the list's campaign**: without it
  the campaign DNC check passes silently, so a list job with ``campaign_dnc_check`` on (the
  default) or a ``callback`` needs one (from the job, or the dialer's defaults);
* ``duplicate_check``: one or more of VICIdial's checks (:data:`DUPLICATE_CHECKS`), joined
  by ``-``, with at most one time window (:data:`WINDOWS`: ``DUPLIST30DAY``); VICIdial
  searches the value for each name as a substring, so the value is checked to mean to
  VICIdial exactly what it says; ``NONE`` means no check (over a dialer's default);
* ``add_to_hopper`` (bool) and ``hopper_priority`` (-99..99, only with the hopper);
* ``callback``: ``{"datetime", "type", "user", "status", "comments"}``; ``datetime`` is
  ``NOW``, ``{n}DAYS`` or ``YYYY-MM-DD HH:MM:SS`` (the server's local time); ``type``
  ``ANYONE`` (default) or ``USERONLY`` (which needs ``user``); with a callback VICIdial
  stores the lead with status ``CBHOLD``;
* ``custom_fields``: the list's custom fields, name -> value; names ``[a-z0-9_]`` that are
  not one of add_lead's own fields (they travel as plain request fields beside them);
* ``lookup_state`` (bool: an empty ``state`` takes the area code's), ``tz_method``
  (``POSTAL``, ``TZCODE`` or ``NANPA``), ``usacan_prefix_check`` and
  ``usacan_areacode_check`` (bools: VICIdial's phone checks), ``list_exists_check`` (bool,
  **on unless turned off**: a list without a ``vicidial_lists`` row is refused as
  ``list_undefined`` rather than filled with leads that no look-up can read).

Some options make a lead field fail on the server (HTTP 500, nothing stored, the same every
time): a ``'`` in ``first_name``/``last_name`` with a ``DUPNAMEPHONE`` check, in ``title``
with ``DUPTITLEALTPHONE``, in ``owner`` with ``tz_method=TZCODE``.
:func:`check_with_lead` refuses those at enqueue, naming the field.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from dispatcher.model.errors import FieldError, InvalidLead
from dispatcher.model.lead import Lead
from dispatcher.model.list_lead import LIST_LEAD_FIELDS
from dispatcher.model.normalise import TEXT_DESC, FrozenFields, Rule, clean

__all__ = [
    "CALLBACK_TYPES",
    "DUPLICATE_CHECKS",
    "LIST_OPTION_KEYS",
    "TZ_METHODS",
    "WINDOWS",
    "Callback",
    "ListOptions",
    "check_campaign_id",
    "check_duplicate_check",
    "check_with_lead",
    "make_list_options",
    "parse_duplicate_check",
]

#: add_lead's duplicate checks, in the order it runs them (the first hit answers).
DUPLICATE_CHECKS: Final[tuple[str, ...]] = tuple(
    f"DUP{what}{where}"
    for what in ("", "PHONEALT", "TITLEALTPHONE", "NAMEPHONE")
    for where in ("LIST", "CAMP", "SYS")
)
#: Its time windows (days): one applies to every check of the call.
WINDOWS: Final[tuple[int, ...]] = (1, 2, 3, 7, 14, 15, 21, 28, 30, 60, 90, 180, 360)
#: A duplicate_check that asks for nothing (to turn a dialer's default off).
NO_DUPLICATE_CHECK: Final = "NONE"
TZ_METHODS: Final[tuple[str, ...]] = ("POSTAL", "TZCODE", "NANPA")
CALLBACK_TYPES: Final[tuple[str, ...]] = ("ANYONE", "USERONLY")
_SWITCHES: Final = (
    "add_to_hopper",
    "lookup_state",
    "usacan_prefix_check",
    "usacan_areacode_check",
    "list_exists_check",
)
#: The job fields of a lead for a list, beside its lead fields.
LIST_OPTION_KEYS: Final[tuple[str, ...]] = (
    "campaign_id",
    "duplicate_check",
    "add_to_hopper",
    "hopper_priority",
    "callback",
    "custom_fields",
    "lookup_state",
    "tz_method",
    "usacan_prefix_check",
    "usacan_areacode_check",
    "list_exists_check",
)

_CAMPAIGN = re.compile(r"[-_0-9a-zA-Z]{2,8}")
_CB_STATUS = re.compile(r"[-_0-9a-zA-Z]{1,6}")
_CB_USER = re.compile(r"[-_0-9a-zA-Z]{2,20}")
_CB_DAYS = re.compile(r"[1-9][0-9]{0,3}DAYS")
_CB_DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
_CB_COMMENTS = re.compile(r"[- +.:/@_0-9a-zA-Z]*")
_CB_COMMENTS_MAX = 255
_CUSTOM_NAME = re.compile(r"[a-z0-9_]{1,50}")
_MAX_CUSTOM_FIELDS = 50
_DUP_TOKEN = re.compile(
    "(" + "|".join(sorted(DUPLICATE_CHECKS, key=len, reverse=True)) + ")"
    "(" + "|".join(f"{n}DAY" for n in sorted(WINDOWS, reverse=True)) + ")?"
)
_DUP_MAX = 100

# What add_lead reads from a request besides the lead fields: a custom field may not be
# named so (its value would be read as that option, or the option's as its value), nor
# after a vicidial_list column (add_lead skips such custom fields).
_RESERVED: Final[frozenset[str]] = frozenset(
    {
        *LIST_LEAD_FIELDS,
        *LIST_OPTION_KEYS,
        "source",
        "user",
        "pass",
        "function",
        "agent_user",
        "dnc_check",
        "campaign_dnc_check",
        "remove_from_hopper",
        "hopper_local_call_time_check",
        "nanpa_ac_prefix_check",
        "multi_alt_phones",
        "callback_datetime",
        "callback_type",
        "callback_user",
        "callback_status",
        "callback_comments",
        "format",
        "value",
        "status",
        "lead_id",
        "gmt_offset_now",
        "called_since_last_reset",
        "called_count",
        "last_local_call_time",
        "force_entry_list_id",
        "list_name",
        "entry_date",
        "modify_date",
        "user_group",
    }
)

# A custom field's value: add_lead turns '+' into a space and removes ';', '"' and a
# trailing '\' (and MariaDB reads other backslashes as escapes); '#' and "'" are kept.
# Free text otherwise, as comments are (the shared normalisation removes '"' and '\').
_CUSTOM_RULE: Final = Rule(
    255,
    r"\t\n\r\x20\x21\x23-\x2a\x2c-\x3a\x3c-\x5b\x5d-\x7e",
    TEXT_DESC.replace("; # +", "; +"),
    plus_to_space=True,
    drop_quotes=True,
    int_ok=True,
    text=True,
    bad_chars_msg="contains characters VICIdial would drop",
)


@dataclass(frozen=True)
class Callback:
    """A scheduled callback add_lead makes for the new lead (``callback=Y``)."""

    #: ``NOW``, ``{n}DAYS`` or ``YYYY-MM-DD HH:MM:SS`` (the server's local time)
    datetime: str
    #: ``ANYONE`` or ``USERONLY`` (the callback goes to ``user``)
    type: str = "ANYONE"
    user: str = ""
    #: the lead's status when the callback comes due ("": VICIdial's ``CALLBK``)
    status: str = ""
    comments: str = ""

    def to_dict(self) -> dict[str, str]:
        return {
            "datetime": self.datetime,
            "type": self.type,
            "user": self.user,
            "status": self.status,
            "comments": self.comments,
        }


@dataclass(frozen=True)
class ListOptions:
    """add_lead's options of one list job (validated: build with :func:`make_list_options`)."""

    campaign_id: str = ""
    duplicate_check: str = ""
    add_to_hopper: bool = False
    hopper_priority: int | None = None
    callback: Callback | None = None
    custom_fields: Mapping[str, str] = field(default_factory=FrozenFields)
    lookup_state: bool = False
    tz_method: str = ""
    usacan_prefix_check: bool = False
    usacan_areacode_check: bool = False
    list_exists_check: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.custom_fields, FrozenFields):
            object.__setattr__(self, "custom_fields", FrozenFields(self.custom_fields))

    def to_dict(self) -> dict[str, Any]:
        """The job message's ``list_options`` object (every key, defaults included)."""
        return {
            "campaign_id": self.campaign_id,
            "duplicate_check": self.duplicate_check,
            "add_to_hopper": self.add_to_hopper,
            "hopper_priority": self.hopper_priority,
            "callback": None if self.callback is None else self.callback.to_dict(),
            "custom_fields": dict(self.custom_fields),
            "lookup_state": self.lookup_state,
            "tz_method": self.tz_method,
            "usacan_prefix_check": self.usacan_prefix_check,
            "usacan_areacode_check": self.usacan_areacode_check,
            "list_exists_check": self.list_exists_check,
        }

    @property
    def checks_duplicates(self) -> bool:
        """Whether add_lead runs a duplicate check for the job (``NONE`` or none: no)."""
        return bool(self.duplicate_check) and self.duplicate_check != NO_DUPLICATE_CHECK

    def form(self) -> list[tuple[str, str]]:
        """The options as add_lead's request fields, switches as ``Y`` (the one value
        VICIdial reads as on), nothing for what is off or not given."""
        out: list[tuple[str, str]] = []
        if self.campaign_id:
            out.append(("campaign_id", self.campaign_id))
        if self.duplicate_check and self.duplicate_check != NO_DUPLICATE_CHECK:
            out.append(("duplicate_check", self.duplicate_check))
        if self.add_to_hopper:
            out.append(("add_to_hopper", "Y"))
            if self.hopper_priority is not None:
                out.append(("hopper_priority", str(self.hopper_priority)))
        if self.callback is not None:
            cb = self.callback
            out += [("callback", "Y"), ("callback_datetime", cb.datetime)]
            out.append(("callback_type", cb.type))
            if cb.user:
                out.append(("callback_user", cb.user))
            if cb.status:
                out.append(("callback_status", cb.status))
            if cb.comments:
                out.append(("callback_comments", cb.comments))
        if self.custom_fields:
            out.append(("custom_fields", "Y"))
            out += list(self.custom_fields.items())
        for name in ("lookup_state", "usacan_prefix_check", "usacan_areacode_check"):
            if getattr(self, name):
                out.append((name, "Y"))
        if self.tz_method:
            out.append(("tz_method", self.tz_method))
        if self.list_exists_check:
            out.append(("list_exists_check", "Y"))
        return out


# --------------------------------------------------------------------------------------------
# duplicate_check
# --------------------------------------------------------------------------------------------


def parse_duplicate_check(value: str) -> tuple[tuple[str, ...], int | None]:
    """What VICIdial reads in a ``duplicate_check`` value: the checks it runs (in its order)
    and the window of days it applies to all of them (None: no window).

    Its reading: ``[-_0-9a-zA-Z]`` kept, then each check name and each window searched as
    a substring, case-insensitively; with several windows, the last of :data:`WINDOWS` wins.
    """
    text = re.sub(r"[^-_0-9a-zA-Z]", "", value).upper()
    checks = tuple(name for name in DUPLICATE_CHECKS if name in text)
    window = None
    for days in WINDOWS:
        if f"{days}DAY" in text:
            window = days
    return checks, window


def check_duplicate_check(value: str) -> str | None:
    """Why ``value`` (upper case) is not a duplicate_check VICIdial reads as written; None
    when it is (or is ``NONE``)."""
    if value == NO_DUPLICATE_CHECK:
        return None
    if len(value) > _DUP_MAX:
        return f"is longer than {_DUP_MAX} characters"
    checks: list[str] = []
    windows: set[int] = set()
    for token in value.split("-"):
        match = _DUP_TOKEN.fullmatch(token)
        if match is None:
            return (
                f"{token!r} is not one of VICIdial's checks ({', '.join(DUPLICATE_CHECKS)}), "
                f"optionally followed by a window of {', '.join(f'{n}DAY' for n in WINDOWS)}; "
                "join several with '-' (e.g. DUPLIST-DUPSYS30DAY), or NONE"
            )
        checks.append(match.group(1))
        if match.group(2):
            windows.add(int(match.group(2)[:-3]))
    if len(windows) > 1:
        return (
            "gives several windows; VICIdial applies one window to every check of the call "
            "(the last of its list it finds): give one"
        )
    found, window = parse_duplicate_check(value)
    if set(found) != set(checks) or window != (next(iter(windows)) if windows else None):
        # A name that holds another one: VICIdial would run a check not written here.
        return f"would make VICIdial run {', '.join(found)} with window {window}: not as written"
    return None


def check_campaign_id(value: str) -> str | None:
    """Why ``value`` is not a campaign id VICIdial keeps as sent; None when it is."""
    if _CAMPAIGN.fullmatch(value):
        return None
    return "must be 2-8 of A-Z, a-z, digits, - and _ (VICIdial's campaign ids)"


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _text(raw: object) -> str | FieldError | None:
    """A text option's value: stripped, None when absent or blank, or a type problem."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        return FieldError("", f"must be a string, not {type(raw).__name__}")
    return raw.strip() or None


def _callback(raw: object, errors: list[FieldError]) -> Callback | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        errors.append(
            FieldError(
                "callback",
                'must be an object: {"datetime", "type", "user", "status", "comments"}',
            )
        )
        return None
    values: dict[str, str] = {}
    for key, item in raw.items():
        name = f"callback.{key}"
        if key not in ("datetime", "type", "user", "status", "comments"):
            errors.append(FieldError(name, "unknown key (datetime, type, user, status, comments)"))
            continue
        value = _text(item)
        if isinstance(value, FieldError):
            errors.append(FieldError(name, value.message))
        elif value is not None:
            values[str(key)] = value
    when = values.get("datetime")
    if when is None:
        if not any(e.field == "callback.datetime" for e in errors):
            errors.append(
                FieldError("callback.datetime", "is required: NOW, {n}DAYS or YYYY-MM-DD HH:MM:SS")
            )
    elif when != "NOW" and not _CB_DAYS.fullmatch(when):
        problem = None
        if not _CB_DATETIME.fullmatch(when):
            problem = (
                "must be NOW, {n}DAYS (1-9999 days from now) or YYYY-MM-DD HH:MM:SS "
                "(VICIdial's local time); VICIdial stores anything else as 0000-00-00 00:00:00"
            )
        else:
            try:
                datetime.datetime.strptime(when, "%Y-%m-%d %H:%M:%S")
            except ValueError:
                problem = "is not a real date and time (VICIdial would store 0000-00-00 00:00:00)"
        if problem is not None:
            errors.append(FieldError("callback.datetime", problem))
    kind = values.get("type", "ANYONE")
    if kind not in CALLBACK_TYPES:
        errors.append(FieldError("callback.type", "must be ANYONE or USERONLY"))
    user = values.get("user", "")
    if kind == "USERONLY" and not user and "callback.user" not in {e.field for e in errors}:
        errors.append(FieldError("callback.user", "is required with type USERONLY"))
    elif user and kind == "ANYONE":
        errors.append(
            FieldError("callback.user", "only with type USERONLY (VICIdial drops it for ANYONE)")
        )
    elif user and not _CB_USER.fullmatch(user):
        errors.append(FieldError("callback.user", "must be 2-20 of A-Z, a-z, digits, - and _"))
    status = values.get("status", "")
    if status and not _CB_STATUS.fullmatch(status):
        errors.append(FieldError("callback.status", "must be 1-6 of A-Z, a-z, digits, - and _"))
    comments = values.get("comments", "")
    if not _CB_COMMENTS.fullmatch(comments):
        bad = sorted(set(re.sub(r"[- +.:/@_0-9a-zA-Z]", "", comments)))
        errors.append(
            FieldError(
                "callback.comments",
                f"contains characters VICIdial would drop: {', '.join(map(repr, bad[:10]))} "
                "(it keeps letters A-Z, digits, space and - + . : / @ _)",
            )
        )
    elif len(comments) > _CB_COMMENTS_MAX:
        errors.append(
            FieldError(
                "callback.comments",
                f"is {len(comments)} characters long; VICIdial keeps {_CB_COMMENTS_MAX}",
            )
        )
    if any(e.field.startswith("callback") for e in errors):
        return None
    return Callback(datetime=str(when), type=kind, user=user, status=status, comments=comments)


def _custom_fields(raw: object, non_latin: bool, errors: list[FieldError]) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        errors.append(FieldError("custom_fields", "must be an object of field name -> value"))
        return {}
    if len(raw) > _MAX_CUSTOM_FIELDS:
        errors.append(
            FieldError("custom_fields", f"has {len(raw)} fields; at most {_MAX_CUSTOM_FIELDS}")
        )
        return {}
    out: dict[str, str] = {}
    for key, item in raw.items():
        name = f"custom_fields.{key}"
        if not isinstance(key, str) or not _CUSTOM_NAME.fullmatch(key):
            errors.append(FieldError(name, "a custom field's name is 1-50 of a-z, 0-9 and _"))
            continue
        if key in _RESERVED:
            errors.append(
                FieldError(
                    name,
                    "is one of add_lead's own fields (or a vicidial_list column): a custom "
                    "field of that name cannot be sent",
                )
            )
            continue
        value, problem = clean(_CUSTOM_RULE, item, non_latin)
        if problem is not None:
            errors.append(FieldError(name, problem))
        elif value is not None:
            out[key] = value
    return out


def make_list_options(
    data: Mapping[str, object],
    *,
    campaign_dnc_check: bool,
    default_campaign_id: str | None = None,
    default_duplicate_check: str | None = None,
    non_latin: bool = False,
) -> ListOptions:
    """Check a list job's options (keys of :data:`LIST_OPTION_KEYS` in ``data``; others are
    ignored) and build them; InvalidLead naming every bad one.

    ``campaign_id`` and ``duplicate_check`` fall back to the defaults given (the dialer's).
    ``campaign_dnc_check``: the job's flag; with it, or a callback, a campaign is required.
    """
    errors: list[FieldError] = []
    texts: dict[str, str | None] = {}
    for key in ("campaign_id", "duplicate_check", "tz_method"):
        value = _text(data.get(key))
        if isinstance(value, FieldError):
            errors.append(FieldError(key, value.message))
            value = None
        texts[key] = value
    campaign = texts["campaign_id"]
    if campaign is not None and (problem := check_campaign_id(campaign)) is not None:
        errors.append(FieldError("campaign_id", problem))
    campaign = campaign or default_campaign_id or ""
    duplicate = texts["duplicate_check"]
    if duplicate is not None:
        duplicate = duplicate.upper()
        if (problem := check_duplicate_check(duplicate)) is not None:
            errors.append(FieldError("duplicate_check", problem))
    duplicate = duplicate or default_duplicate_check or ""
    tz_method = texts["tz_method"] or ""
    if tz_method and tz_method not in TZ_METHODS:
        errors.append(FieldError("tz_method", f"must be one of {', '.join(TZ_METHODS)}"))
    switches: dict[str, bool] = {}
    for key in _SWITCHES:
        switch = data.get(key)
        if switch is None:
            switches[key] = key == "list_exists_check"
        elif isinstance(switch, bool):
            switches[key] = switch
        else:
            errors.append(FieldError(key, "must be true or false"))
            switches[key] = False
    priority = _hopper_priority(data.get("hopper_priority"), switches["add_to_hopper"], errors)
    callback = _callback(data.get("callback"), errors)
    custom = _custom_fields(data.get("custom_fields"), non_latin, errors)
    if not campaign and "campaign_id" not in {e.field for e in errors}:
        if callback is not None or data.get("callback") is not None:
            errors.append(
                FieldError(
                    "campaign_id",
                    "is required with a callback (VICIdial schedules it in that campaign; "
                    "without one it adds the lead in CBHOLD and no callback)",
                )
            )
        elif campaign_dnc_check:
            errors.append(
                FieldError(
                    "campaign_id",
                    "is required with campaign_dnc_check (on by default): add_lead searches "
                    "the DNC list of the request's campaign, and without one the check "
                    "passes silently; give campaign_id (or a default in the dialers file), "
                    "or turn campaign_dnc_check off",
                )
            )
    if errors:
        raise InvalidLead(errors)
    return ListOptions(
        campaign_id=campaign,
        duplicate_check=duplicate,
        add_to_hopper=switches["add_to_hopper"],
        hopper_priority=priority,
        callback=callback,
        custom_fields=FrozenFields.adopt(custom),
        lookup_state=switches["lookup_state"],
        tz_method=tz_method,
        usacan_prefix_check=switches["usacan_prefix_check"],
        usacan_areacode_check=switches["usacan_areacode_check"],
        list_exists_check=switches["list_exists_check"],
    )


def _hopper_priority(raw: object, hopper: bool, errors: list[FieldError]) -> int | None:
    if raw is None or raw == "":
        return None
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and re.fullmatch(r"-?[0-9]{1,3}", raw.strip()):
        value = int(raw.strip())
    if value is None or not -99 <= value <= 99:
        errors.append(FieldError("hopper_priority", "must be a whole number from -99 to 99"))
        return None
    if not hopper:
        errors.append(FieldError("hopper_priority", "has no effect without add_to_hopper"))
        return None
    return value


def check_with_lead(lead: Lead, options: ListOptions) -> list[FieldError]:
    """What breaks on the server for this lead with these options (HTTP 500, nothing
    stored, every time), each problem naming the lead field; and ``entry_list_id`` that
    VICIdial would overwrite."""
    errors: list[FieldError] = []
    checks, _ = parse_duplicate_check(options.duplicate_check)
    quoted: list[tuple[str, str]] = []
    if any(c.startswith("DUPNAMEPHONE") for c in checks):
        quoted += [("first_name", "DUPNAMEPHONE"), ("last_name", "DUPNAMEPHONE")]
    if any(c.startswith("DUPTITLEALTPHONE") for c in checks):
        quoted += [("title", "DUPTITLEALTPHONE"), ("alt_phone", "DUPTITLEALTPHONE")]
    if options.tz_method == "TZCODE":
        quoted.append(("owner", "tz_method TZCODE"))
    for name, why in quoted:
        if "'" in lead.fields.get(name, ""):
            errors.append(
                FieldError(
                    name,
                    f"contains ', which VICIdial cannot use with {why} (HTTP 500, nothing "
                    "stored, every time); remove it or choose other options",
                )
            )
    entry = lead.fields.get("entry_list_id")
    if options.custom_fields and entry is not None and entry != lead.list_id:
        errors.append(
            FieldError(
                "entry_list_id",
                f"VICIdial sets it to list_id ({lead.list_id}) when it stores custom fields; "
                "leave it out or make it list_id",
            )
        )
    return errors
