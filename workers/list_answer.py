"""What an answer of the Non-Agent API's ``add_lead`` means: added, a duplicate, or a failure.

Follows shared/vicidial/non_agent_add_lead.md ("For a dispatcher: what to rely on"):

* **Every line is scanned, whatever the HTTP status.** A line
  ``SUCCESS: add_lead LEAD HAS BEEN ADDED - {P}|{L}|{lead_id}|{gmt}|{user}`` means the lead
  exists, in a 200 or in a 500 (VICIdial died after the INSERT: the steps after it, hopper
  or callback, may be missing, :attr:`ListLeadAdded.complete` says so). The NOTICE lines
  after it say what became of the hopper, the callback and the custom fields; a NOTICE is
  found anywhere in a line (``multi_alt_phones`` records are printed glued to the next one).
* An ``ERROR: add_lead DUPLICATE ...`` line is not a failure: VICIdial's duplicate check
  found a lead (:class:`DuplicateFound`, naming it and its list; what it means for the job
  depends on whether an earlier call's answer was lost: :func:`duplicate_verdict`).
* Every other ERROR line is a :class:`~dispatcher.model.errors.CallFailed` of the errors
  tree, by :data:`LIST_ANSWER_RULES` (the table README "What each VICIdial answer does"
  shows): the type decides retry, pause or dead letter, never the text.
* No SUCCESS or ERROR line: an HTTP 500 with nothing else printed is
  :class:`~dispatcher.model.errors.ServerError` (a statement failed before anything was
  stored, and it fails again for the same request: never retried); other 5xx and 429 are
  temporary, 504 ambiguous (a proxy gave up on a request VICIdial may still run), an
  answer cut at the 64 KiB cap ambiguous, anything else unknown.

Every text that leaves here is redacted (the login refusal echoes the password, reduced
to ``[-_0-9a-zA-Z]``). Pure functions: the clients (:mod:`workers.list_client`) call them.
"""

from __future__ import annotations

from dataclasses import dataclass

from dispatcher.config.logs import redact_vicidial_line
from dispatcher.model.errors import (
    AmbiguousFailure,
    AuthFailed,
    CallFailed,
    CampaignDNCBlocked,
    DNCBlocked,
    HTTPStatusError,
    InsertFailed,
    InvalidPhone,
    InvalidRequest,
    InvalidSource,
    ListNotAllowed,
    ListUndefined,
    PermissionDenied,
    ServerError,
    UnknownResponse,
)
from dispatcher.model.lead import Lead
from dispatcher.model.list_options import ListOptions
from dispatcher.model.marker import marker
from dispatcher.vicidial.nonagent import LeadRecord

__all__ = [
    "LIST_ANSWER_RULES",
    "LIST_STATUS_RULES",
    "DuplicateFound",
    "ListLeadAdded",
    "classify_list_line",
    "duplicate_verdict",
    "parse_list_answer",
]

_SUCCESS = "SUCCESS: add_lead LEAD HAS BEEN ADDED - "
_DUPLICATE = "ERROR: add_lead DUPLICATE "
_SNIPPET = 300

#: ERROR line prefix -> error type, in the order add_lead checks (the facts' "Processing
#: order and every refusal"). add_lead prints one refusal and stops (``Invalid Source``
#: is two lines of the same refusal), so the first ERROR line decides.
LIST_ANSWER_RULES: tuple[tuple[str, type[CallFailed]], ...] = (
    ("ERROR: Login incorrect, please try again", AuthFailed),
    ("ERROR: Too many login attempts", AuthFailed),
    ("ERROR: user_group DOES NOT EXIST", PermissionDenied),
    ("ERROR: Invalid Source", InvalidSource),
    ("ERROR: auth USER DOES NOT HAVE PERMISSION TO USE THIS FUNCTION", PermissionDenied),
    ("ERROR: add_lead USER DOES NOT HAVE PERMISSION TO ADD LEADS", PermissionDenied),
    ("ERROR: add_lead NOT AN ALLOWED LIST ID", ListNotAllowed),
    ("ERROR: add_lead NOT A DEFINED LIST ID", ListUndefined),
    ("ERROR: add_lead INVALID PHONE NUMBER ", InvalidPhone),
    ("ERROR: add_lead PHONE NUMBER IN DNC - ", DNCBlocked),
    ("ERROR: add_lead PHONE NUMBER IN CAMPAIGN DNC - ", CampaignDNCBlocked),
    ("ERROR: add_lead LEAD HAS NOT BEEN ADDED", InsertFailed),
    # This non_agent_api.php does not know add_lead (too old), or the URL is another script.
    ("ERROR: NO FUNCTION SPECIFIED", InvalidRequest),
)

#: HTTP status of an answer without a SUCCESS or ERROR line -> error type. A 500 with
#: nothing printed is ServerError (see parse_list_answer); any other status not here is
#: unknown_response.
LIST_STATUS_RULES: dict[int, type[CallFailed]] = {
    500: HTTPStatusError,
    502: HTTPStatusError,
    503: HTTPStatusError,
    429: HTTPStatusError,
    504: AmbiguousFailure,
}

# NOTICE prefix (after "NOTICE: add_lead ") -> (what it reports on, its outcome). Longer
# prefixes first: "NOT ADDED TO HOPPER, OUTSIDE" before "NOT ADDED TO HOPPER -".
_NOTICES: tuple[tuple[str, str, str], ...] = (
    ("CUSTOM FIELDS VALUES ADDED - ", "custom_fields", "added"),
    (
        "CUSTOM FIELDS NOT ADDED, NO CUSTOM FIELDS DEFINED FOR THIS LIST - ",
        "custom_fields",
        "no_table",
    ),
    ("CUSTOM FIELDS NOT ADDED, NO FIELDS DEFINED - ", "custom_fields", "no_fields"),
    ("CUSTOM FIELDS NOT ADDED, NO FIELDS TO UPDATE DEFINED - ", "custom_fields", "not_inserted"),
    ("CUSTOM FIELDS NOT ADDED, CUSTOM FIELDS DISABLED - ", "custom_fields", "disabled"),
    ("ADDED TO HOPPER - ", "hopper", "added"),
    ("NOT ADDED TO HOPPER, OUTSIDE OF LOCAL TIME - ", "hopper", "outside_local_time"),
    ("NOT ADDED TO HOPPER - ", "hopper", "not_added"),
    ("SCHEDULED CALLBACK ADDED - ", "callback", "added"),
    ("SCHEDULED CALLBACK NOT ADDED, USER NOT VALID - ", "callback", "user_not_valid"),
    ("SCHEDULED CALLBACK NOT ADDED, CAMPAIGN NOT VALID - ", "callback", "campaign_not_valid"),
)


@dataclass(frozen=True)
class ListLeadAdded:
    """add_lead inserted the lead (a SUCCESS line), and what it reported after."""

    lead_id: str
    #: the list as sent (after VICIdial's filter), as its answer prints it
    list_id: str
    #: the lead's GMT offset as printed ("" when VICIdial found none: stored 0.00)
    gmt: str
    phone: str
    line: str
    http_status: int = 200
    #: False: VICIdial failed after the INSERT (HTTP 500): what the answer does not report
    #: (hopper, callback, custom fields) may not have happened
    complete: bool = True
    #: "" (not reported), added, outside_local_time, not_added
    hopper: str = ""
    hopper_id: str = ""
    #: "" (not reported), added, user_not_valid, campaign_not_valid
    callback: str = ""
    #: "" (not reported), added, no_table (no custom fields for the list), no_fields,
    #: not_inserted, disabled (custom fields are off in VICIdial's system settings)
    custom_fields: str = ""
    #: the other NOTICE lines (the NANPA notice: NANPA options off), redacted
    notes: tuple[str, ...] = ()

    def unfinished(self, options: ListOptions) -> tuple[str, ...]:
        """What the job asked for that the answer does not report as done: ``hopper``,
        ``callback``, ``custom_fields`` (each with its outcome, or ``not reported``)."""
        asked = (
            ("hopper", options.add_to_hopper),
            ("callback", options.callback is not None),
            ("custom_fields", bool(options.custom_fields)),
        )
        out = []
        for name, wanted in asked:
            outcome = getattr(self, name)
            if wanted and outcome != "added":
                out.append(f"{name}: {outcome or 'not reported'}")
        return tuple(out)


@dataclass(frozen=True)
class DuplicateFound:
    """add_lead's duplicate check found a lead: nothing was added.

    ``existing_lead_id``/``existing_list_id`` name the lead it found (for a ``*LIST``
    check, its list is the job's; "" when the line cannot be read). ``check`` is the check
    that answered (``DUPLIST``, ``DUPPHONEALTSYS``, ...), ``matched`` ``PHONE`` or ``ALT``
    for the phone-or-alt checks (which field of the found lead matched).
    """

    existing_lead_id: str
    existing_list_id: str
    check: str
    line: str
    matched: str = ""
    http_status: int = 200
    notes: tuple[str, ...] = ()


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text[:_SNIPPET] + ("…" if len(text) > _SNIPPET else "")


def classify_list_line(line: str) -> type[CallFailed] | None:
    """The error type of one add_lead ERROR line (not a duplicate), or None if unknown."""
    for prefix, error in LIST_ANSWER_RULES:
        if line.startswith(prefix):
            return error
    return None


_SCOPES = (("IN CAMPAIGN LISTS", "CAMP"), ("IN SYSTEM", "SYS"), ("IN LIST", "LIST"))


def _duplicate(line: str, http_status: int, notes: tuple[str, ...]) -> DuplicateFound:
    """Read ``ERROR: add_lead DUPLICATE {what} {scope} - {data}`` (the facts' table)."""
    head, _, data = line[len("ERROR: add_lead ") :].partition(" - ")
    parts = data.split("|")
    scope = next((code for text, code in _SCOPES if head.endswith(text)), "")
    lead_id = list_id = matched = ""
    check = ""
    # (prefix of the check, index of the lead id, fields of the *LIST form)
    if head.startswith("DUPLICATE PHONE NUMBER "):
        # {P}|{L}|{id} [|{list}] [|{type}]: a type field makes it a PHONEALT check
        base = 3 if scope == "LIST" else 4
        alt = len(parts) == base + 1 and parts[-1] in ("PHONE", "ALT")
        check = f"DUPPHONEALT{scope}" if alt else f"DUP{scope}"
        matched = parts[-1] if alt else ""
        lead_id = parts[2] if len(parts) > 2 else ""
        list_id = parts[1] if scope == "LIST" else (parts[3] if len(parts) > 3 else "")
        ok = len(parts) == base + (1 if alt else 0)
    elif head.startswith("DUPLICATE TITLE ALT_PHONE "):
        # {T}|{A}|{L}|{id} [|{list}]
        check = f"DUPTITLEALTPHONE{scope}"
        lead_id = parts[3] if len(parts) > 3 else ""
        list_id = parts[2] if scope == "LIST" else (parts[4] if len(parts) > 4 else "")
        ok = len(parts) == (4 if scope == "LIST" else 5)
    elif head.startswith("DUPLICATE NAME PHONE "):
        # {F}|{N}|{P}|{L}|{id} [|{list}]
        check = f"DUPNAMEPHONE{scope}"
        lead_id = parts[4] if len(parts) > 4 else ""
        list_id = parts[3] if scope == "LIST" else (parts[5] if len(parts) > 5 else "")
        ok = len(parts) == (5 if scope == "LIST" else 6)
    else:
        ok = False
    if not ok or not scope or not lead_id.isdigit():
        # A duplicate all the same (nothing was added); which lead, the line does not say.
        lead_id = list_id = matched = ""
    return DuplicateFound(lead_id, list_id, check, line, matched, http_status, notes)


def _notice(line: str) -> str | None:
    """The NOTICE in a line (anywhere: raw multi-alt records come glued before it)."""
    at = line.find("NOTICE: ")
    return line[at:] if at >= 0 else None


def parse_list_answer(
    body: str,
    *,
    http_status: int = 200,
    secrets: tuple[str, ...] = (),
    truncated: bool = False,
) -> ListLeadAdded | DuplicateFound:
    """Read an add_lead answer: the lead added, or the duplicate found; anything else
    raises the matching CallFailed (its text redacted).

    ``truncated``: only the first 64 KiB were read; with no SUCCESS or ERROR line among
    them the answer is ambiguous (a SUCCESS may have followed).
    """
    lines = [line.rstrip("\r") for line in body.split("\n")]
    success = next((x for x in lines if x.startswith(_SUCCESS)), None)
    errors = [x for x in lines if x.startswith("ERROR: ")]
    notices = [n for x in lines if not x.startswith(("SUCCESS: ", "ERROR: ")) and (n := _notice(x))]
    if success is not None:
        return _added(success, notices, http_status, secrets)
    notes = tuple(redact_vicidial_line(n, secrets) for n in notices)
    if errors:
        first = errors[0]
        if first.startswith(_DUPLICATE):
            return _duplicate(redact_vicidial_line(first, secrets), http_status, notes)
        error = classify_list_line(first)
        shown = redact_vicidial_line(" / ".join(errors) if len(errors) > 1 else first, secrets)
        if error is None:
            raise UnknownResponse(
                "unrecognised answer: " + _snippet(shown), http_status=http_status
            )
        raise error(shown, http_status=http_status)
    if truncated:
        raise AmbiguousFailure(
            "answer larger than 64 KiB, cut before any result line: the lead may have been added",
            http_status=http_status,
        )
    if http_status == 500 and all(not x.strip() or _notice(x) == x for x in lines):
        raise ServerError(
            "HTTP 500 before add_lead printed a result: VICIdial failed on this request "
            "before storing anything, and fails the same way every time"
            + (f" ({'; '.join(notes)})" if notes else ""),
            http_status=500,
        )
    shown = _snippet(redact_vicidial_line(body, secrets))
    if http_status != 200:
        error_type = LIST_STATUS_RULES.get(http_status, UnknownResponse)
        raise error_type(
            f"HTTP {http_status}" + (f": {shown}" if body.strip() else ""),
            http_status=http_status,
        )
    if not body.strip():
        raise UnknownResponse("empty answer", http_status=200)
    raise UnknownResponse("unrecognised answer: " + shown, http_status=200)


def _added(
    line: str, notices: list[str], http_status: int, secrets: tuple[str, ...]
) -> ListLeadAdded:
    # P holds digits and commas only, user [-_0-9a-zA-Z]: the split is safe.
    parts = line[len(_SUCCESS) :].split("|")
    phone, list_id, lead_id, gmt = ([*parts, "", "", "", ""])[:4]
    outcomes: dict[str, str] = {"hopper": "", "callback": "", "custom_fields": ""}
    hopper_id = ""
    notes: list[str] = []
    for notice in notices:
        text = notice.removeprefix("NOTICE: add_lead ")
        for prefix, what, outcome in _NOTICES:
            if text.startswith(prefix):
                outcomes[what] = outcome
                if what == "hopper" and outcome == "added":
                    fields = text[len(prefix) :].split("|")
                    hopper_id = fields[2] if len(fields) > 2 else ""
                break
        else:
            if not text.startswith("MULTI-ALT-PHONE NUMBERS LOADED"):
                notes.append(redact_vicidial_line(notice, secrets))
    return ListLeadAdded(
        lead_id=lead_id if lead_id.isdigit() else "",
        list_id=list_id,
        gmt=gmt,
        phone=phone,
        line=redact_vicidial_line(line, secrets),
        http_status=http_status,
        complete=http_status == 200,
        hopper=outcomes["hopper"],
        hopper_id=hopper_id,
        callback=outcomes["callback"],
        custom_fields=outcomes["custom_fields"],
        notes=tuple(notes),
    )


def duplicate_verdict(
    found: DuplicateFound,
    record: LeadRecord | None,
    *,
    job_id: str,
    lead: Lead,
    marker_field: str,
    after_lost_answer: bool,
) -> str:
    """What a duplicate answer means for the job: ``duplicate``, ``added`` or ``unknown``.

    On a job's first call (no earlier call of it may have landed) it is a duplicate. On a
    call that follows a lost answer, the lead it names is either the one the lost call
    added, or an older one: ``added`` if that lead (``record``, read back by its id)
    carries the job's marker, ``duplicate`` if it does not, ``unknown`` when that cannot
    be told (the record could not be read, the line names no lead, or no marker was
    written: the producer filled the marker field, or ``marker_field`` is ``none``).
    """
    if not after_lost_answer:
        return "duplicate"
    if marker_field == "none" or marker_field in lead.fields or not found.existing_lead_id:
        return "unknown"
    if record is None or record.lead_id != found.existing_lead_id:
        return "unknown"
    mark = marker(job_id, marker_field)
    if record.complete:
        return "added" if record.values.get(marker_field) == mark else "duplicate"
    # Extra pipes in the record: the marker, if it is there, is one whole field.
    return "added" if mark in record.raw.split("|") else "unknown"
