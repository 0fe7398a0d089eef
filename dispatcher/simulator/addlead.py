"""``function=add_lead`` of VICIdial's ``vicidial/non_agent_api.php`` (2.14-202).

Pure request -> answer logic over the simulator's tables (the caller holds the lock),
following shared/vicidial/non_agent_add_lead.md step by step, every line byte for
byte. After the login (:mod:`dispatcher.simulator.nonagent`):

1. with ``api_list_restrict``, the user group's row must exist;
2. ``source`` (2+ characters), 3. ``api_allowed_functions``, 4. the permission query
   (``vdc_agent_api_access``, ``modify_leads`` 1-4, ``user_level`` > 7, active);
5. with ``api_list_restrict``, ``list_id`` as sent must be a list of the group's
   campaigns; 6. ``list_exists_check`` (any value containing ``y``);
7. defaults (list 999, phone code 1, gender U, rank 0) and the NANPA NOTICE when the
   NANPA options are asked for but fewer than 10 prefix rows are loaded;
8. phone length 6-16, ``usacan_prefix_check``, ``usacan_areacode_check`` (never refuses
   a 10-digit mismatch), the NANPA prefix check; ``lookup_state``;
9. system DNC (``Y``/``AREACODE``), then campaign DNC of the *request's* ``campaign_id``
   (or its ``use_other_campaign_dnc``);
10. the duplicate checks (:data:`DUPLICATE_CHECKS`, in that order, each when its name
    is a substring of ``duplicate_check``; one time window for all, the last of
    :data:`WINDOWS` found wins; MariaDB's ``utf8mb4_general_ci`` comparisons);
11. the GMT look-up, the INSERT (status NEW, CBHOLD with ``callback=Y``), the SUCCESS
    line, then multi alt phones, custom fields, hopper, callback, in that order.

Every answer line is followed by an INSERT into ``vicidial_api_log`` whose ``value`` is
the last POST field's raw value: when that value breaks the SQL literal (a lone ``'``,
a trailing ``\\``), PHP dies right after the first line (HTTP 500 with what was
printed). Other failing statements die the same way: a ``*CAMP*`` check on a list
without a row, ``'`` in names/title/alt_phone with the checks that quote them, in
``owner`` with ``tz_method=TZCODE``, a trailing ``\\`` in the free-text fields (before
the INSERT, so nothing is stored), a custom field row that already exists (after it).

The duplicate check and the INSERT are not atomic on the real server (MyISAM, no
lock). :func:`answer_add_lead` can stop between them (``pause=True``) and hand back a
:class:`PendingInsert`, which the simulator finishes after a configurable gap with
the lock released: two identical requests in that window both insert.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass, field, replace

from dispatcher.simulator.addlead_fields import (
    ADD_LEAD_FIELDS,
    FREE_TEXT,
    column,
    option,
    sanitize_add_lead,
)
from dispatcher.simulator.agc import Answer, StoredLead, Tables
from dispatcher.simulator.gmt import dialable, lookup_gmt, stored_gmt
from dispatcher.simulator.listtables import (
    MAX_LIST_ID,
    AltPhoneRow,
    CallbackRow,
    HopperRow,
    list_key,
)
from dispatcher.simulator.mangling import sql_literal
from dispatcher.simulator.state import ALL_CAMPAIGNS

__all__ = [
    "DUPLICATE_CHECKS",
    "WINDOWS",
    "PendingInsert",
    "answer_add_lead",
    "general_ci",
    "log_value_breaks",
]

#: (option, what is compared, where): the order in which add_lead runs its checks.
DUPLICATE_CHECKS: tuple[tuple[str, str, str], ...] = tuple(
    (f"DUP{what}{where}", what, where)
    for what in ("", "PHONEALT", "TITLEALTPHONE", "NAMEPHONE")
    for where in ("LIST", "CAMP", "SYS")
)
#: The time windows of duplicate_check (days); with several, the last one found wins.
WINDOWS: tuple[int, ...] = (1, 2, 3, 7, 14, 15, 21, 28, 30, 60, 90, 180, 360)

_SCOPE_TEXT = {"LIST": "IN LIST", "CAMP": "IN CAMPAIGN LISTS", "SYS": "IN SYSTEM"}
_NO_VALUE_TYPES = frozenset({"DISPLAY", "SCRIPT", "BUTTON", "SWITCH"})
# The vicidial_list columns a custom field may not be named after.
_LIST_COLUMNS = frozenset(
    {
        "lead_id",
        "vendor_lead_code",
        "source_id",
        "list_id",
        "gmt_offset_now",
        "called_since_last_reset",
        "phone_code",
        "phone_number",
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
        "called_count",
        "last_local_call_time",
        "rank",
        "owner",
    }
)
_DATETIME = re.compile(
    r"^(\d{4})\D(\d{1,2})\D(\d{1,2})(?:\D+(\d{1,2})\D(\d{1,2})(?:\D(\d{1,2}))?)?$"
)
_PACKED_DATETIME = re.compile(r"^(\d{4})(\d{2})(\d{2})(?:(\d{2})(\d{2})(\d{2}))?$")


class _Died(Exception):
    """PHP stopped: a statement failed (mysqli throws; HTTP 500 with what was printed)."""


def log_value_breaks(value: str) -> bool:
    """Whether ``value='...'`` breaks the API log INSERT: a quote that is neither doubled
    nor backslash-escaped ends the literal early; a trailing backslash escapes its end."""
    i = 0
    while i < len(value):
        char = value[i]
        if char == "\\":
            if i + 1 == len(value):
                return True
            i += 2
        elif char == "'":
            if value[i + 1 : i + 2] != "'":
                return True
            i += 2
        else:
            i += 1
    return False


def general_ci(text: str) -> str:
    """A comparison key like MariaDB's ``utf8mb4_general_ci``: case- and
    accent-insensitive, trailing spaces ignored (PAD SPACE)."""
    if text.isascii():  # the common case (phones), at C speed
        return text.rstrip(" ").upper()
    out = []
    for char in text.rstrip(" "):
        base = unicodedata.normalize("NFD", char)[0]
        upper = base.upper()
        out.append(upper if len(upper) == 1 else base)
    return "".join(out)


class _Output:
    """What the script has printed; each logged line may kill it (the API log INSERT)."""

    def __init__(self, log_breaks: bool) -> None:
        self.parts: list[str] = []
        self._log_breaks = log_breaks

    def line(self, text: str, *, logged: bool = True) -> None:
        self.parts.append(text + "\n")
        if logged and self._log_breaks:
            raise _Died

    def raw(self, text: str) -> None:
        self.parts.append(text)

    @property
    def body(self) -> str:
        return "".join(self.parts)


@dataclass
class _Request:
    """The request's fields after add_lead's filters (values untruncated)."""

    user: str
    phone: str
    list_sent: str
    list_id: str
    phone_code: str
    values: dict[str, str]
    entry_list_id: str
    opts: dict[str, str]
    fields: dict[str, str]
    lines: _Output
    #: digits 4-6 of the phone (digit 4 only after usacan_prefix_check)
    prefix: str = ""
    lead: StoredLead | None = field(default=None)

    def on(self, name: str) -> bool:
        return self.opts.get(name) == "Y"


def _parse(user: str, fields: dict[str, str], non_latin: bool, post_value: str) -> _Request:
    def lead_field(name: str) -> str:
        return sanitize_add_lead(name, fields.get(name, ""), non_latin=non_latin)

    opts = {
        name: option(name, fields.get(name, ""))
        for name in (
            "source",
            "dnc_check",
            "campaign_dnc_check",
            "add_to_hopper",
            "remove_from_hopper",
            "hopper_local_call_time_check",
            "usacan_prefix_check",
            "usacan_areacode_check",
            "nanpa_ac_prefix_check",
            "lookup_state",
            "callback",
            "custom_fields",
            "duplicate_check",
            "campaign_id",
            "tz_method",
            "hopper_priority",
            "callback_datetime",
            "callback_type",
            "callback_status",
            "callback_user",
            "callback_comments",
            "multi_alt_phones",
        )
    }
    opts["list_exists_check"] = fields.get("list_exists_check", "")
    list_sent = lead_field("list_id")
    return _Request(
        user=user,
        phone=lead_field("phone_number"),
        list_sent=list_sent,
        list_id=list_sent,
        phone_code=lead_field("phone_code"),
        values={name: lead_field(name) for name in ADD_LEAD_FIELDS},
        entry_list_id=lead_field("entry_list_id"),
        opts=opts,
        fields=fields,
        lines=_Output(log_value_breaks(post_value)),
    )


@dataclass
class PendingInsert:
    """add_lead past its checks, before the GMT look-up and the INSERT."""

    _request: _Request
    _insert_fails: bool

    def finish(self, tables: Tables, now: float) -> Answer:
        """Run the rest (the caller holds the lock again)."""
        request = self._request
        try:
            _insert(tables, request, now, self._insert_fails)
        except _Died:
            body = request.lines.body
            return Answer(500, body, body, request.lead)
        body = request.lines.body
        return Answer(200, body, body, request.lead)


def answer_add_lead(
    tables: Tables,
    user: str,
    fields: dict[str, str],
    now: float,
    *,
    post_value: str = "",
    insert_fails: bool = False,
    pause: bool = False,
) -> Answer | PendingInsert:
    """Answer add_lead for the logged-in ``user`` (filtered), updating ``tables``.

    ``post_value`` is the raw value of the request's last POST field (the script's
    ``$value``, written to the API log). ``insert_fails``: the INSERT fails (HTTP 500).
    With ``pause``, a request that passed every check comes back as a
    :class:`PendingInsert` instead of being inserted.
    """
    request = _parse(user, fields, tables.non_latin, post_value)
    try:
        passed = _check(tables, request, now)
    except _Died:
        body = request.lines.body
        return Answer(500, body, body)
    if not passed:
        body = request.lines.body
        return Answer(200, body, body)
    pending = PendingInsert(request, insert_fails)
    return pending if pause else pending.finish(tables, now)


# --------------------------------------------------------------------------- checks


def _check(tables: Tables, r: _Request, now: float) -> bool:
    """Steps up to the duplicate checks; False when a refusal line was printed."""
    out, user, phone = r.lines, r.user, r.phone
    row = tables.user(user)
    assert row is not None  # logged in
    config = row.config
    if config.api_list_restrict and tables.user_group(config.user_group) is None:
        out.line(f"ERROR: user_group DOES NOT EXIST: |{user}|{config.user_group}|")
        return False
    source = r.opts["source"]
    if len(source) < 2:
        out.line(f"ERROR: Invalid Source - {source}")
        out.line(f"ERROR: Invalid Source: |{source}|", logged=False)
        return False
    allowed = " " + " ".join(config.functions) + " "
    if " add_lead " not in allowed and "ALL_FUNCTIONS" not in allowed:
        out.line(
            f"ERROR: auth USER DOES NOT HAVE PERMISSION TO USE THIS FUNCTION: |{user}|add_lead|"
        )
        return False
    if not (
        config.api_access
        and 1 <= config.modify_leads <= 4
        and config.user_level > 7
        and config.active
    ):
        out.line(
            f"ERROR: add_lead USER DOES NOT HAVE PERMISSION TO ADD LEADS TO THE SYSTEM: |{user}|0|"
        )
        return False
    if config.api_list_restrict:
        lists = " " + " ".join(_group_lists(tables, config.user_group)) + " "
        if f" {r.list_sent} " not in lists:
            out.line(f"ERROR: add_lead NOT AN ALLOWED LIST ID - {phone}|{r.list_sent}")
            return False
    if "y" in r.opts["list_exists_check"].lower() and tables.list_row(r.list_sent) is None:
        out.line(
            "ERROR: add_lead NOT A DEFINED LIST ID, LIST EXISTS CHECK ENABLED - "
            f"{phone}|{r.list_sent}"
        )
        return False

    values = r.values
    if not values["gender"]:
        values["gender"] = "U"
    if not values["rank"]:
        values["rank"] = "0"
    if len(r.list_id) < 3:
        r.list_id = "999"
    if not r.phone_code:
        r.phone_code = "1"
    nanpa_check = r.on("nanpa_ac_prefix_check")
    if nanpa_check or "NANPA" in r.opts["tz_method"].upper():
        rows = len(tables.lists.nanpa_prefixes)
        if rows < 10:
            nanpa_check = False
            r.opts["tz_method"] = r.opts["tz_method"].replace("NANPA", "")
            out.line(
                f"NOTICE: add_lead NANPA options disabled, NANPA prefix data not loaded - "
                f"{rows}|{user}"
            )

    reason = ""
    if not 6 <= len(phone) <= 16:
        reason = "INVALID PHONE NUMBER LENGTH"
    r.prefix = phone[3:6]
    if not reason and r.on("usacan_prefix_check"):
        # The check overwrites the prefix the NANPA time zone look-up would use.
        r.prefix = phone[3:4]
        # PHP 8 compares a digit with 2 as numbers, a comma with "2" as strings.
        low = int(r.prefix) < 2 if r.prefix.isdigit() else r.prefix < "2"
        if low:
            reason = "INVALID PHONE NUMBER PREFIX"
    if not reason and r.on("usacan_areacode_check"):
        area = phone[:3]
        if not any(
            c.country_code == 1 and c.areacode.lower() == area.lower()
            for c in tables.lists.phone_codes
        ):
            reason = "INVALID PHONE NUMBER AREACODE"
    if (
        not reason
        and nanpa_check
        and not any(
            n.areacode == phone[:3] and n.prefix == phone[3:6] for n in tables.lists.nanpa_prefixes
        )
    ):
        reason = "INVALID PHONE NUMBER NANPA AREACODE PREFIX"
    if reason:
        out.line(f"ERROR: add_lead {reason} - {phone}|{user}")
        return False

    if r.on("lookup_state") and not values["state"]:
        code = int(r.phone_code)
        for pc in tables.lists.phone_codes:
            if pc.country_code == code and pc.areacode.lower() == phone[:3].lower():
                values["state"] = pc.state
                break

    dnc = r.opts["dnc_check"]
    if dnc in ("Y", "AREACODE"):
        wanted = {phone.lower()}
        if dnc == "AREACODE":
            wanted.add(phone[:3].lower() + "xxxxxxx")
        if wanted & tables.dnc:
            out.line(f"ERROR: add_lead PHONE NUMBER IN DNC - {phone}|{user}")
            return False
    camp_dnc = r.opts["campaign_dnc_check"]
    if camp_dnc in ("Y", "AREACODE"):
        campaign_id = r.opts["campaign_id"]
        found = tables.campaign(campaign_id)
        other = found[1].use_other_campaign_dnc if found is not None else ""
        listed = tables.campaign_dnc.get((other or campaign_id).lower(), set())
        wanted = {phone.lower()}
        if camp_dnc == "AREACODE":
            wanted.add(phone[:3].lower() + "xxxxxxx")
        if wanted & listed:
            out.line(f"ERROR: add_lead PHONE NUMBER IN CAMPAIGN DNC - {phone}|{campaign_id}|{user}")
            return False

    return not _duplicate(tables, r, now)


def _group_lists(tables: Tables, group_name: str) -> list[str]:
    """The list ids of the group's allowed campaigns (every list for ALL-CAMPAIGNS)."""
    group = tables.user_group(group_name)
    if group is None:
        return []
    rows = tables.list_rows()
    campaigns = group.allowed_campaigns
    if any(c == ALL_CAMPAIGNS or "-ALL" in c.upper() for c in campaigns):
        return sorted(rows, key=int)
    wanted = {c.lower() for c in campaigns}
    return sorted((k for k, row in rows.items() if row.campaign_id.lower() in wanted), key=int)


def _duplicate(tables: Tables, r: _Request, now: float) -> bool:
    """The duplicate checks; True when one answered (its line printed)."""
    wanted = r.opts["duplicate_check"].upper()
    checks = [(name, what, where) for name, what, where in DUPLICATE_CHECKS if name in wanted]
    if not checks:
        return False
    days = 0
    for window in WINDOWS:
        if f"{window}DAY" in wanted:
            days = window
    since = ""
    if days:
        local = tables.time.local_fields(now)
        since = (local - dt.timedelta(days=days)).strftime("%Y-%m-%d %H:%M:%S")
    values, phone, list_id = r.values, r.phone, r.list_id
    key_phone = general_ci(phone)
    campaign_lists: set[str] | None = None
    for _, what, where in checks:
        if what == "TITLEALTPHONE" and ("'" in values["title"] or "'" in values["alt_phone"]):
            raise _Died  # the quote ends the SQL literal
        if what == "NAMEPHONE" and ("'" in values["first_name"] or "'" in values["last_name"]):
            raise _Died
        if where == "CAMP" and campaign_lists is None:
            own = tables.list_row(list_id)
            if own is None:
                raise _Died  # "list_id IN()": SQL syntax error
            campaign = own.campaign_id.lower()
            campaign_lists = {
                k for k, row in tables.list_rows().items() if row.campaign_id.lower() == campaign
            }
        found: StoredLead | None = None
        own_list = list_key(list_id)
        for lead in tables.leads:
            # A phone that matches P under general_ci starts with P (P is digits and
            # commas): a cheap test before the collation, like the server's phone index.
            if what in ("", "NAMEPHONE") and not lead.phone_number.startswith(phone):
                continue
            if (
                what == "PHONEALT"
                and not lead.phone_number.startswith(phone)
                and not lead.fields.get("alt_phone", "").startswith(phone)
            ):
                continue
            if not _matches(lead, what, key_phone, values):
                continue
            if since and not lead.entry_date > since:
                continue
            lead_list = list_key(lead.list_id)
            if where == "LIST" and lead_list != own_list:
                continue
            if where == "CAMP" and lead_list not in (campaign_lists or set()):
                continue
            if found is None or lead.lead_id < found.lead_id:
                found = lead
        if found is None:
            continue
        _print_duplicate(r, what, where, found)
        return True
    return False


def _matches(lead: StoredLead, what: str, key_phone: str, values: dict[str, str]) -> bool:
    f = lead.fields
    if what == "":
        return general_ci(lead.phone_number) == key_phone
    if what == "PHONEALT":
        return key_phone in (general_ci(lead.phone_number), general_ci(f.get("alt_phone", "")))
    if what == "TITLEALTPHONE":
        return general_ci(f.get("title", "")) == general_ci(values["title"]) and general_ci(
            f.get("alt_phone", "")
        ) == general_ci(values["alt_phone"])
    return (
        general_ci(f.get("first_name", "")) == general_ci(values["first_name"])
        and general_ci(f.get("last_name", "")) == general_ci(values["last_name"])
        and general_ci(lead.phone_number) == key_phone
    )


def _print_duplicate(r: _Request, what: str, where: str, lead: StoredLead) -> None:
    values, phone, list_id = r.values, r.phone, r.list_id
    found_list = lead.list_id or "0"
    scope = _SCOPE_TEXT[where]
    tail = "" if where == "LIST" else f"|{found_list}"
    if what in ("", "PHONEALT"):
        data = f"{phone}|{list_id}|{lead.lead_id}{tail}"
        if what == "PHONEALT":
            data += "|PHONE" if general_ci(lead.phone_number) == general_ci(phone) else "|ALT"
        reason = f"DUPLICATE PHONE NUMBER {scope}"
    elif what == "TITLEALTPHONE":
        data = f"{values['title']}|{values['alt_phone']}|{list_id}|{lead.lead_id}{tail}"
        reason = f"DUPLICATE TITLE ALT_PHONE {scope}"
    else:
        data = (
            f"{values['first_name']}|{values['last_name']}|{phone}|{list_id}|{lead.lead_id}{tail}"
        )
        reason = f"DUPLICATE NAME PHONE {scope}"
    r.lines.line(f"ERROR: add_lead {reason} - {data}")


# --------------------------------------------------------------------------- insert


def _insert(tables: Tables, r: _Request, now: float, insert_fails: bool) -> None:
    out, values, non_latin = r.lines, r.values, tables.non_latin
    phone, list_id, user = r.phone, r.list_id, r.user
    tz_method = r.opts["tz_method"]
    if tz_method == "TZCODE" and len(values["owner"]) > 1 and "'" in values["owner"]:
        raise _Died  # tz_code='{owner}' in the look-up
    gmt = lookup_gmt(
        tables.lists,
        tables.time,
        now,
        phone_code=r.phone_code,
        area=phone[:3],
        prefix=r.prefix,
        state=values["state"],
        tz_method=tz_method,
        postal_code=values["postal_code"],
        owner=values["owner"],
    )
    stored: dict[str, str] = {}
    for name in ADD_LEAD_FIELDS:
        value = values[name]
        if name in FREE_TEXT:
            literal = sql_literal(value)
            if literal is None:
                raise _Died  # a trailing backslash escapes the closing quote
            value = literal
        stored[name] = column(name, value, non_latin=non_latin)
    if insert_fails:
        raise _Died  # a failed INSERT throws on PHP 8.1+
    row = tables.list_row(list_id)
    lead = StoredLead(
        lead_id=tables.next_lead_id,
        list_id=str(min(int(list_id), MAX_LIST_ID)),
        campaign=row.campaign_id if row is not None else "",
        agent_user="",
        phone_number=column("phone_number", phone),
        phone_code=column("phone_code", r.phone_code),
        fields=stored,
        user=user,
        status="CBHOLD" if r.on("callback") else "NEW",
        entry_date=tables.time.stamp(now),
        gmt_offset_now=stored_gmt(gmt),
        entry_list_id=str(min(int(r.entry_list_id or "0"), MAX_LIST_ID)),
        function="add_lead",
    )
    tables.next_lead_id += 1
    tables.leads.append(lead)
    r.lead = lead
    out.line(
        f"SUCCESS: add_lead LEAD HAS BEEN ADDED - {phone}|{list_id}|{lead.lead_id}|{gmt}|{user}"
    )
    _multi_alt_phones(tables, r, lead)
    _custom_fields(tables, r, lead)
    _hopper(tables, r, lead, gmt, now)
    _callback(tables, r, lead, now)


def _multi_alt_phones(tables: Tables, r: _Request, lead: StoredLead) -> None:
    text = r.opts["multi_alt_phones"]
    if len(text) <= 5:
        return
    records = text.split("!")
    for count, record in enumerate(records, start=1):
        parts = record.split("_")
        number, code, note = [*parts, "", ""][:3]
        r.lines.raw(f"{number}|{code}|{note}")  # printed without a separator
        tables.lists.alt_phones.append(
            AltPhoneRow(
                alt_phone_id=tables.lists.next_alt_phone_id,
                lead_id=lead.lead_id,
                phone_code=(code or "1")[:10],
                phone_number=number[:18],
                alt_phone_note=note[:30],
                alt_phone_count=count,
            )
        )
        tables.lists.next_alt_phone_id += 1
    r.lines.line(
        f"NOTICE: add_lead MULTI-ALT-PHONE NUMBERS LOADED - {len(records)}|{lead.lead_id}|{r.user}"
    )


def _custom_fields(tables: Tables, r: _Request, lead: StoredLead) -> None:
    if not r.on("custom_fields"):
        return
    out, phone, list_id, lists = r.lines, r.phone, r.list_id, tables.lists
    head = f"{phone}|{lead.lead_id}|{list_id}"
    if not lists.custom_fields_enabled:
        out.line(
            "NOTICE: add_lead CUSTOM FIELDS NOT ADDED, CUSTOM FIELDS DISABLED - "
            f"{phone}|{lead.lead_id}|Y|0"
        )
        return
    # SHOW TABLES LIKE "custom_{list_id}": the list id as sent (00101 is no table).
    if list_id not in lists.custom_fields:
        out.line(
            "NOTICE: add_lead CUSTOM FIELDS NOT ADDED, NO CUSTOM FIELDS DEFINED FOR THIS LIST - "
            + head
        )
        return
    usable = [
        d
        for d in lists.custom_fields[list_id]
        if d.type not in _NO_VALUE_TYPES and d.label not in _LIST_COLUMNS
    ]
    if not usable:
        out.line(f"NOTICE: add_lead CUSTOM FIELDS NOT ADDED, NO FIELDS DEFINED - {head}")
        return
    table = lists.custom_rows.setdefault(list_id, {})
    if lead.lead_id in table:
        raise _Died  # duplicate primary key
    values: dict[str, str] = {}
    for definition in usable:
        value = r.fields.get(definition.label, "").replace("+", " ")
        value = re.sub(r'[;"]', "", value)
        value = value.removesuffix("\\")
        literal = sql_literal(value)
        if literal is None:
            raise _Died
        if tables.non_latin:
            literal = "".join("????" if ord(c) > 0xFFFF else c for c in literal)
        values[definition.label] = literal[: definition.max]
    table[lead.lead_id] = values
    changed = lead.entry_list_id != list_key(list_id)
    updated = replace(lead, entry_list_id=list_key(list_id))
    tables.leads[tables.leads.index(lead)] = updated
    r.lead = updated
    out.line(f"NOTICE: add_lead CUSTOM FIELDS VALUES ADDED - {head}|{1 if changed else 0}")


def _hopper(tables: Tables, r: _Request, lead: StoredLead, gmt: str, now: float) -> None:
    if not r.on("add_to_hopper") or r.on("remove_from_hopper"):
        return
    out, phone = r.lines, r.phone
    campaign_id = call_time = ""
    row = tables.list_row(r.list_id)
    joined = tables.campaign(row.campaign_id) if row is not None else None
    if row is not None and joined is not None:
        campaign_id, call_time = joined[0], joined[1].local_call_time
        if row.local_call_time and row.local_call_time.lower() != "campaign":
            call_time = row.local_call_time
    if r.on("hopper_local_call_time_check") and not dialable(
        tables.lists, call_time, gmt, r.values["state"], now
    ):
        out.line(
            f"NOTICE: add_lead NOT ADDED TO HOPPER, OUTSIDE OF LOCAL TIME - "
            f"{phone}|{lead.lead_id}|{gmt}|0|{r.user}"
        )
        return
    priority_text = re.match(r"-?\d+", r.opts["hopper_priority"])
    priority = max(-99, min(99, int(priority_text.group()) if priority_text else 0))
    hopper = HopperRow(
        hopper_id=tables.lists.next_hopper_id,
        lead_id=lead.lead_id,
        campaign_id=campaign_id[:8],
        list_id=lead.list_id,
        gmt_offset_now=lead.gmt_offset_now,
        state=lead.fields["state"],
        priority=priority,
        vendor_lead_code=lead.fields["vendor_lead_code"],
    )
    tables.lists.next_hopper_id += 1
    tables.lists.hopper.append(hopper)
    out.line(
        f"NOTICE: add_lead ADDED TO HOPPER - {phone}|{lead.lead_id}|{hopper.hopper_id}|{r.user}"
    )


def _callback(tables: Tables, r: _Request, lead: StoredLead, now: float) -> None:
    if not r.on("callback"):
        return
    out, opts = r.lines, r.opts
    campaign_id = opts["campaign_id"]
    if tables.campaign(campaign_id) is None:
        out.line(
            "NOTICE: add_lead SCHEDULED CALLBACK NOT ADDED, CAMPAIGN NOT VALID - "
            f"{lead.lead_id}|{campaign_id}"
        )
        return
    kind, cb_user, user_group = opts["callback_type"], opts["callback_user"], ""
    if kind == "USERONLY":
        row = tables.user(cb_user)
        if row is None:
            out.line(
                "NOTICE: add_lead SCHEDULED CALLBACK NOT ADDED, USER NOT VALID - "
                f"{lead.lead_id}|{campaign_id}|{cb_user}|{kind}"
            )
            return
        user_group = row.config.user_group
    else:
        kind, cb_user = "ANYONE", ""
    when = opts["callback_datetime"]
    if when == "NOW":
        when = tables.time.stamp(now)
    elif "DAYS" in when.upper():
        days = int(re.sub(r"\D", "", when) or "0")
        later = tables.time.local_fields(now) + dt.timedelta(days=days)
        when = later.strftime("%Y-%m-%d %H:%M:%S")
    status = opts["callback_status"] or "CALLBK"
    tables.lists.callbacks.append(
        CallbackRow(
            callback_id=tables.lists.next_callback_id,
            lead_id=lead.lead_id,
            list_id=lead.list_id,
            campaign_id=campaign_id[:8],
            entry_time=tables.time.stamp(now),
            callback_time=_mysql_datetime(when),
            user=cb_user[:20],
            recipient=kind,
            comments=opts["callback_comments"][:255],
            user_group=user_group[:20],
            lead_status=status[:6],
        )
    )
    tables.lists.next_callback_id += 1
    out.line(
        "NOTICE: add_lead SCHEDULED CALLBACK ADDED - "
        f"{lead.lead_id}|{campaign_id}|{when}|{kind}|{cb_user}|{status}"
    )


def _mysql_datetime(text: str) -> str:
    """A DATETIME column in non-strict mode: a valid date and time, else the zero value."""
    match = _DATETIME.match(text) or _PACKED_DATETIME.match(text)
    if match is None:
        return "0000-00-00 00:00:00"
    year, month, day, hour, minute, second = (int(p) if p else 0 for p in match.groups())
    try:
        return dt.datetime(year, month, day, hour, minute, second).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return "0000-00-00 00:00:00"
