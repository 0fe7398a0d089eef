"""What VICIdial's ``vicidial/non_agent_api.php`` answers: ``version``, ``lead_all_info``,
``lead_search`` and ``update_lead`` (``delete_lead=Y`` and ``no_update=Y``).

Pure request -> answer logic over the same in-memory tables as ``agc`` (the caller
holds the simulator's lock). Every answer string, the order of checks and the
quirks follow shared/vicidial/non_agent_api_lookup.md (version 2.14-202):

- ``version`` and ``coffee`` need no login; everything else logs in first through
  ``user_authorization(...,'REPORTS',...)``: user level above 6, active, and the
  failed-login counter shared with the agent API (a success here resets it, one
  there does not);
- then, per function: the source check, the allowed-functions check, the
  permission check (``vdc_agent_api_access``, ``modify_leads``, ``view_reports``,
  ``user_level``), then the parameters;
- ``lead_all_info`` prints one 32-field record per lead, newest first, raw (no
  quoting), a header before each record with ``header=YES``, skips leads whose list
  is not a list row (list 0, what a campaign without a manual dial list gives) or
  whose list's campaign the user's group may not read (``allowed_campaigns``), and
  fails with HTTP 500 when a record holds ``'`` (its API-log INSERT breaks). A
  skipped lead is silent unless the user has ``api_list_restrict`` (then a ``LIST
  NOT FOUND`` line at once, before the records); only when no lead passed does the
  answer end with ``LIST NOT FOUND`` naming the last skipped lead's list;
- ``lead_search`` sees every list (list 0 too) and counts the rows of all numbers
  together (``records``); with ``api_list_restrict`` the group row must exist and an
  explicit ``list_id`` of 99 or more must be one of the group's lists;
- ``update_lead`` with ``api_list_restrict`` stops at a found lead whose list (99 or
  more) is not one of the group's.

``add_lead`` is :mod:`dispatcher.simulator.addlead`; the ``version`` line reports
PHP's clock and the servers row's ``local_gmt`` (:mod:`dispatcher.simulator.servertime`).

The lists are the state's ``lists`` and the campaigns' manual dial lists (a list
belongs to the first campaign naming it). ``update_lead``'s delete also deletes the
lead's callbacks (counted in its line) and, with ``custom_fields=Y``, its custom
field row. Not simulated: ``search_location`` of ``lead_search`` (the search is
always SYSTEM-wide), custom field values in ``lead_all_info`` and the archive table
(asking for them is the HTTP 500 of a server without them), field updates of
``update_lead`` (answered with an empty body, nothing changed), IP lists and
two-factor login.
"""

from __future__ import annotations

import re

from dispatcher.simulator.addlead import PendingInsert, answer_add_lead
from dispatcher.simulator.agc import LOCK_ATTEMPTS, LOCK_SECONDS, Answer, StoredLead, Tables
from dispatcher.simulator.state import ALL_CAMPAIGNS

__all__ = ["NONAGENT_BUILD", "NONAGENT_VERSION", "RECORD_FIELDS", "answer_nonagent", "record"]

NONAGENT_VERSION = "2.14-202"
NONAGENT_BUILD = "250720-1841"

#: The fields of a lead_all_info record, in order. Written out from
#: shared/vicidial/non_agent_api_lookup.md, not imported from the client
#: (dispatcher/vicidial/nonagent.py): a stand-in that shares the client's list could not catch
#: a mistake in it.
RECORD_FIELDS: tuple[str, ...] = (
    "status",
    "user",
    "vendor_lead_code",
    "source_id",
    "list_id",
    "gmt_offset_now",
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
    "entry_list_id",
    "lead_id",
)

_COFFEE = frozenset({"coffee", "start_coffee", "make_coffee", "brew_coffee"})
_DELIMITERS = {"pipe": "|", "csv": ",", "tab": "\t", "newline": "\n"}
_NOT_CREDENTIAL = re.compile(r"[^-_0-9a-zA-Z]")
_NOT_SOURCE = re.compile(r"[^0-9a-zA-Z]")
_NOT_DIGIT = re.compile(r"[^0-9]")
_NOT_PHONE_LIST = re.compile(r"[^0-9,]")


def _reply(*lines: str) -> Answer:
    body = "".join(line + "\n" for line in lines)
    return Answer(200, body, body)


def _server_error() -> Answer:
    # A failed SQL statement: mysqli throws on PHP 8.1+, the script dies.
    return Answer(500, "", "")


def record(lead: StoredLead) -> dict[str, str]:
    """A stored lead as lead_all_info prints it (defaults of a fresh row where not sent)."""
    f = lead.fields
    stamp = lead.entry_date
    values = {name: f.get(name, "") for name in RECORD_FIELDS}
    values.update(
        status=lead.status,
        user=lead.user,
        list_id=lead.list_id or "0",
        gmt_offset_now=lead.gmt_offset_now,
        phone_code=lead.phone_code,
        phone_number=lead.phone_number,
        date_of_birth=f.get("date_of_birth") or "0000-00-00",
        called_count=str(lead.called_count),
        last_local_call_time=stamp,
        rank=f.get("rank") or "0",
        entry_list_id=lead.entry_list_id,
        lead_id=str(lead.lead_id),
    )
    return values


def answer_nonagent(
    tables: Tables,
    fields: dict[str, str],
    now: float,
    *,
    post_value: str = "",
    insert_fails: bool = False,
    pause_before_insert: bool = False,
) -> Answer | PendingInsert:
    """Answer one request to non_agent_api.php, updating ``tables`` as the server would.

    ``post_value`` (the last POST field's raw value), ``insert_fails`` and
    ``pause_before_insert`` concern add_lead (:func:`answer_add_lead`); only add_lead
    returns a :class:`PendingInsert`.
    """
    function = _NOT_CREDENTIAL.sub("", fields.get("function", ""))
    if function == "version":
        return _version(tables, now)
    if function in _COFFEE:
        body = f"Coffee: {function}|Error 418 I'm a teapot"
        return Answer(418, body, body)
    user = _credential(fields.get("user", ""), tables.non_latin)
    password = _credential(fields.get("pass", ""), tables.non_latin)
    verdict = _login(tables, user, password, now)
    if verdict == "LOCK":
        return _reply(f"ERROR: Too many login attempts, try again in 15 minutes: |{user}|LOCK|")
    if verdict == "BAD":
        body = f"ERROR: Login incorrect, please try again: |{user}|{password}|BAD|\n"
        shown = f"ERROR: Login incorrect, please try again: |{user}|<redacted>|BAD|\n"
        return Answer(200, body, shown)
    if function == "add_lead":
        return answer_add_lead(
            tables,
            user,
            fields,
            now,
            post_value=post_value,
            insert_fails=insert_fails,
            pause=pause_before_insert,
        )
    handler = _FUNCTIONS.get(function)
    if handler is None:
        return _reply("ERROR: NO FUNCTION SPECIFIED")
    source = _NOT_SOURCE.sub("", fields.get("source", ""))
    if len(source) < 2:
        return _reply(f"ERROR: Invalid Source - {source}", f"ERROR: Invalid Source: |{source}|")
    row = tables.user(user)
    assert row is not None  # logged in
    allowed = " " + " ".join(row.config.functions) + " "
    if f" {function} " not in allowed and "ALL_FUNCTIONS" not in allowed:
        return _reply(
            f"ERROR: auth USER DOES NOT HAVE PERMISSION TO USE THIS FUNCTION: |{user}|{function}|"
        )
    return handler(tables, user, fields)


def _credential(value: str, non_latin: bool) -> str:
    """``user``/``pass`` filter: ``[-_0-9a-zA-Z]``; letters of any script with
    use_non_latin=1."""
    if non_latin:
        return "".join(
            c for c in value if c in "-_" or (c.isdigit() and c.isascii()) or c.isalpha()
        )
    return _NOT_CREDENTIAL.sub("", value)


def _version(tables: Tables, now: float) -> Answer:
    # DATE and DST come from PHP's clock; TZ is the servers row's local_gmt as stored,
    # TZNOW the script's SERVER_GMT (++ during DST: PHP prints the number, "-4").
    clock = tables.time
    tz_now, _ = clock.server_gmt(now)
    return _reply(
        f"VERSION: {NONAGENT_VERSION}|BUILD: {NONAGENT_BUILD}|DATE: {clock.stamp(now)}|"
        f"EPOCH: {int(now)}|DST: {1 if clock.isdst(now) else 0}|TZ: {clock.local_gmt or ''}|"
        f"TZNOW: {tz_now}|"
    )


def _login(tables: Tables, user: str, password: str, now: float) -> str:
    """``user_authorization()`` of functions.php: GOOD, BAD or LOCK.

    Failures count in the counter the agent API shares; a success resets it.
    """
    epoch = int(now)
    lock_over = epoch - LOCK_SECONDS
    row = tables.user(user)
    if (
        row is not None
        and row.config.active
        and row.config.user_level > 6
        and row.config.password.lower() == password.lower()
        and (row.failed_login_count < LOCK_ATTEMPTS or row.last_login < lock_over)
    ):
        row.last_login = epoch
        row.failed_login_count = 0
        return "GOOD"
    if row is not None:
        if row.failed_login_count < LOCK_ATTEMPTS:
            row.failed_login_count += 1
        elif lock_over > row.last_login:
            row.last_login = epoch
            row.failed_login_count = 1
        else:
            return "LOCK"
    return "BAD"


def _permitted(tables: Tables, user: str, *, level: int, modify: range, reports: bool) -> bool:
    row = tables.user(user)
    if row is None:
        return False
    c = row.config
    return (
        c.api_access
        and c.active
        and c.user_level > level
        and c.modify_leads in modify
        and (c.view_reports or not reports)
    )


def _lists(tables: Tables) -> dict[str, str]:
    """The rows of vicidial_lists (the state's lists, every campaign's manual dial list)
    -> their campaign."""
    return {list_id: row.campaign_id for list_id, row in tables.list_rows().items()}


def _readable_lists(tables: Tables, user: str) -> set[str]:
    """The lists whose leads lead_all_info shows ``user``: a list row whose campaign the
    user's group may read (none if the group row does not exist)."""
    row = tables.user(user)
    group = tables.user_group(row.config.user_group) if row is not None else None
    if group is None:
        return set()
    lists = _lists(tables)
    if ALL_CAMPAIGNS in group.allowed_campaigns:
        return set(lists)
    allowed = {c.lower() for c in group.allowed_campaigns}
    return {list_id for list_id, campaign in lists.items() if campaign.lower() in allowed}


def _restricted(tables: Tables, user: str) -> bool:
    row = tables.user(user)
    return row is not None and row.config.api_list_restrict


def _missing_group(tables: Tables, user: str) -> Answer | None:
    """With api_list_restrict, the user group row must exist (lead_search, update_lead)."""
    row = tables.user(user)
    if row is None or not row.config.api_list_restrict:
        return None
    if tables.user_group(row.config.user_group) is not None:
        return None
    return _reply(f"ERROR: user_group DOES NOT EXIST: |{user}|{row.config.user_group}|")


def _allowed_list(tables: Tables, user: str, list_id: str) -> bool:
    """Whether api_list_restrict lets ``user`` touch list ``list_id`` (below 99: always)."""
    if not list_id.isdigit() or int(list_id) < 99:
        return True
    return list_id in _readable_lists(tables, user)


def _lead_all_info(tables: Tables, user: str, fields: dict[str, str]) -> Answer:
    if not _permitted(tables, user, level=6, modify=range(1, 6), reports=True):
        return _reply(
            f"ERROR: lead_all_info USER DOES NOT HAVE PERMISSION TO GET LEAD INFO: |{user}|0|"
        )
    lead_id = _NOT_DIGIT.sub("", fields.get("lead_id", ""))
    phone = _NOT_PHONE_LIST.sub("", fields.get("phone_number", ""))
    not_found = f"ERROR: lead_all_info LEAD NOT FOUND: {user}|{lead_id}|{phone}"
    if not lead_id and not 6 <= len(phone) <= 19:
        return _reply(not_found)
    if lead_id:
        found = [x for x in tables.leads if str(x.lead_id) == lead_id]
    else:
        found = [x for x in tables.leads if x.phone_number == phone]
    found = sorted(found, key=lambda x: -x.lead_id)[:1000]
    if not found:
        return _reply(not_found)
    if fields.get("custom_fields") == "Y" or fields.get("archived_lead") == "Y":
        # "SELECT  from custom_0 ..." / no vicidial_list_archive table: SQL error.
        return _server_error()
    stage = fields.get("stage", "")
    sep = _DELIMITERS.get(stage, "|")
    header = fields.get("header") == "YES"
    lists = _readable_lists(tables, user)
    restricted = _restricted(tables, user)
    skipped: list[str] = []
    out: list[str] = []
    last_list = ""
    for lead in found:
        values = record(lead)
        if values["list_id"] not in lists:
            last_list = values["list_id"]
            if restricted:
                # Printed at once: before every record, which are printed at the end.
                skipped.append(f"ERROR: lead_all_info LIST NOT FOUND: {user}|{lead_id}|{phone}\n")
            continue
        text = sep.join(values[name] for name in RECORD_FIELDS)
        if "'" in text:
            # The record goes unescaped into the API log's INSERT, which fails.
            return _server_error()
        if header:
            out.append(sep.join(RECORD_FIELDS) + "\n")
        out.append(text + "\n")
    if not out:
        out.append(f"ERROR: lead_all_info LIST NOT FOUND: {user}|{lead_id}|{phone}|{last_list}\n")
    body = "".join(skipped + out)
    return Answer(200, body, body)


def _lead_search(tables: Tables, user: str, fields: dict[str, str]) -> Answer:
    if not _permitted(tables, user, level=7, modify=range(1, 6), reports=False):
        return _reply(
            f"ERROR: lead_search USER DOES NOT HAVE PERMISSION TO SEARCH FOR LEADS: |{user}|0|"
        )
    missing = _missing_group(tables, user)
    if missing is not None:
        return missing
    method = fields.get("search_method", "") or "PHONE_NUMBER"
    raw_records = _NOT_DIGIT.sub("", fields.get("records", ""))
    limit = int(raw_records) if raw_records else 1000
    if raw_records and len(raw_records) > 19:
        return _server_error()  # above the 64-bit range: SQL syntax error
    header = "search_keyrecords_foundlead_ids\n" if fields.get("header") == "YES" else ""
    lead_id = _NOT_DIGIT.sub("", fields.get("lead_id", ""))
    vendor = fields.get("vendor_lead_code", "")
    vendor = re.sub(r'[;#"]', "", vendor).replace("+", " ")
    phone = _NOT_PHONE_LIST.sub("", fields.get("phone_number", ""))
    if method == "LEAD_ID":
        if not fields.get("lead_ids"):
            return _server_error()
        return Answer(200, header, header)
    lines: list[str] = []
    vendor_found = False
    vendor_lines: list[str] = []
    if method in ("VENDOR_LEAD_CODE", "PHONE_NUMBER_VENDOR_LEAD_CODE") and vendor:
        if vendor.endswith("\\"):
            return _server_error()
        codes = vendor.split(",")
        wanted = {c.lower() for c in codes}
        rows = [x for x in tables.leads if x.fields.get("vendor_lead_code", "").lower() in wanted]
        rows = sorted(rows, key=lambda x: -x.lead_id)[:limit]
        for code in codes:
            # The SQL matches case-insensitively, the counting compares case-sensitively.
            ids = [str(x.lead_id) for x in rows if x.fields.get("vendor_lead_code") == code]
            vendor_lines.append(f"{code}|{len(ids)}|{'-'.join(ids)}")
            vendor_found = vendor_found or bool(ids)
        if method == "VENDOR_LEAD_CODE":
            if not rows:
                return _reply(
                    f"ERROR: lead_search NO MATCHES FOUND IN THE SYSTEM: |{user}|{lead_id}|"
                    f"{vendor}|{phone}"
                )
            body = header + "".join(line + "\n" for line in vendor_lines)
            return Answer(200, body, body)
    if len(phone) <= 5:
        return _reply(
            f"ERROR: lead_search NO VALID SEARCH METHOD - {user}|{method}|{lead_id}(0)|"
            f"{vendor}(0)|{phone}(0)"
        )
    list_id = _NOT_DIGIT.sub("", fields.get("list_id", ""))
    if list_id and _restricted(tables, user) and not _allowed_list(tables, user, list_id):
        return _reply(f"ERROR: lead_search NOT AN ALLOWED LIST ID - {phone}|{list_id}")
    numbers = phone.split(",")
    valid = [n for n in numbers if 6 <= len(n) <= 18]
    if not valid:
        return _server_error()  # "where  order by": SQL syntax error
    if vendor_found:
        lines = [f"{n}|0|" for n in numbers]
    else:
        rows = sorted(
            (x for x in tables.leads if x.phone_number in set(valid)), key=lambda x: -x.lead_id
        )[:limit]
        if not rows and not vendor_lines:
            return _reply(
                f"ERROR: lead_search NO MATCHES FOUND IN THE SYSTEM: |{user}|{lead_id}|"
                f"{vendor}|{phone}"
            )
        for n in numbers:
            ids = [str(x.lead_id) for x in rows if x.phone_number == n]
            lines.append(f"{n}|{len(ids)}|{'-'.join(ids)}")
    body = header + "".join(line + "\n" for line in lines + vendor_lines)
    return Answer(200, body, body)


def _update_lead(tables: Tables, user: str, fields: dict[str, str]) -> Answer:
    if not _permitted(tables, user, level=7, modify=range(1, 5), reports=False):
        return _reply(
            "ERROR: update_lead USER DOES NOT HAVE PERMISSION TO UPDATE LEADS IN THE SYSTEM: "
            f"|{user}|0|"
        )
    missing = _missing_group(tables, user)
    if missing is not None:
        return missing
    method = fields.get("search_method", "") or "LEAD_ID"
    lead_id = _NOT_DIGIT.sub("", fields.get("lead_id", ""))
    vendor = re.sub(r'[;#"]', "", fields.get("vendor_lead_code", "")).replace("+", " ")
    phone = _NOT_PHONE_LIST.sub("", fields.get("phone_number", ""))
    raw_records = _NOT_DIGIT.sub("", fields.get("records", ""))
    limit = int(raw_records) if raw_records else 1
    if method == "PHONE_NUMBER" and 6 <= len(phone) <= 18:
        rows = [x for x in tables.leads if x.phone_number == phone]
    elif method == "VENDOR_LEAD_CODE" and vendor:
        rows = [
            x
            for x in tables.leads
            if x.fields.get("vendor_lead_code", "").lower() == vendor.lower()
        ]
    elif method == "LEAD_ID" and lead_id:
        rows = [x for x in tables.leads if str(x.lead_id) == lead_id]
    else:
        return _reply(
            f"ERROR: update_lead NO VALID SEARCH METHOD - {user}|{method}|{lead_id}|{vendor}|"
            f"{phone}"
        )
    # order by entry_date desc: leads of the same second come in table order.
    order = {id(x): i for i, x in enumerate(tables.leads)}
    rows = sorted(rows, key=lambda x: (_desc(x.entry_date), order[id(x)]))[:limit]
    if fields.get("no_update") == "Y":
        if not rows:
            return _reply(
                f"NOTICE: update_lead NO MATCHES FOUND IN THE SYSTEM: |{user}|{lead_id}|{vendor}|"
                f"{phone}"
            )
        return _reply(
            *(
                f"NOTICE: update_lead LEADS FOUND IN THE SYSTEM: |{user}|{x.lead_id}|{vendor}|"
                f"{phone}|{x.list_id or '0'}|0"
                for x in rows
            )
        )
    if not rows:
        return _reply(
            f"ERROR: update_lead NO MATCHES FOUND IN THE SYSTEM: |{user}|{lead_id}|{vendor}|{phone}"
        )
    if fields.get("delete_lead") != "Y":
        return Answer(200, "", "")  # field updates: not simulated (nothing changed)
    lines = []
    restricted = _restricted(tables, user)
    custom = fields.get("custom_fields") == "Y"
    for x in rows:
        if restricted and not _allowed_list(tables, user, x.list_id or "0"):
            lines.append(f"ERROR: update_lead NOT AN ALLOWED LIST ID, RESULTS - {x.list_id}")
            break
        tables.leads.remove(x)
        n, no_table = tables.lists.forget_lead(x.lead_id, x.list_id or "0", custom_fields=custom)
        lines.append(
            f"SUCCESS: update_lead LEAD HAS BEEN DELETED {n}|{n} - {user}|{x.lead_id}|1|{n}|{n}|"
        )
        if no_table:
            lines.append(
                "NOTICE: update_lead CUSTOM FIELDS NOT ADDED, NO CUSTOM FIELDS DEFINED FOR THIS "
                f"LIST - {x.phone_number}|{x.lead_id}|{x.list_id or '0'}"
            )
    return _reply(*lines)


def _desc(stamp: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in stamp)


_FUNCTIONS = {
    "lead_all_info": _lead_all_info,
    "lead_search": _lead_search,
    "update_lead": _update_lead,
}
