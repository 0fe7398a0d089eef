"""VICIdial's Non-Agent API (``vicidial/non_agent_api.php``), as reconciliation uses it.

Follows shared/vicidial/non_agent_api_lookup.md:

* ``lead_all_info`` by ``phone_number`` returns every lead with that number the API
  user may see, newest first, one 32-field ``|`` record each, printed raw: a ``|``,
  TAB or line break inside ``source_id``, ``vendor_lead_code`` or ``comments`` shifts
  the fields or splits the record over lines. :func:`parse_lead_all_info` joins such
  lines again (a record ends with its two numeric fields, ``entry_list_id`` and
  ``lead_id``) and marks a record with extra fields *incomplete*: only its first four
  fields (up to ``source_id``) and its last six (``called_count`` to ``lead_id``) can
  be trusted there.
* An answer mixes ERROR lines and records: ``LIST NOT FOUND`` lines name leads the
  user may not see (list 0, other user groups' lists), so an answer with them cannot
  prove that a lead is absent. Such a line appears only when no lead at all could be
  shown (or the user has ``api_list_restrict``): a hidden lead beside a readable one
  of the same phone is left out *silently*.
* ``lead_search`` sees every list (list 0 too) and answers the phone's lead ids
  (:func:`parse_lead_search`): the cross-check that says whether lead_all_info
  showed every lead of the phone. It needs user level 8 (lead_all_info: 7) and no
  View Reports; when it is not permitted, :class:`SearchAnswer` says so instead of
  raising, since lead_all_info alone can still find a lead (not prove it absent).
* Logging in needs user level 7+ and counts failures in the counter the agent API
  shares (10 failures lock both for 15 minutes): a refused login is
  :class:`~dispatcher.model.errors.LookupRefused` and is never retried blindly.
* Permissions are checked after the login; the answer does not say which one is
  missing, so :meth:`NonAgentClient.check` asks ``lead_search`` too (it needs the
  same rights as ``lead_all_info`` but View Reports, and level 8): if that answers,
  View Reports is what is missing. :func:`diagnose_denied` turns it into what to
  change in VICIdial's admin screens.
* Never ``format=debug``, ``DB``, ``custom_fields=Y``, ``archived_lead=Y`` or a ``'``.
  Requests are POSTed (the password stays out of proxies' URL logs).

The HTTP client is plain httpx with a per-operation timeout; a worker passes its own
deadline-bounded client (``workers.http_deadline``) so a look-up ends within its
deadline however slowly the answer comes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import httpx

from dispatcher.config.logs import redact_vicidial_line
from dispatcher.config.settings import Settings
from dispatcher.model.dialers import Dialer
from dispatcher.model.errors import LookupDenied, LookupFailed, LookupRefused, LookupUnavailable

__all__ = [
    "MAX_LOOKUP_BYTES",
    "RECORD_FIELDS",
    "Diagnosis",
    "LeadRecord",
    "LookupAnswer",
    "NonAgentClient",
    "SearchAnswer",
    "diagnose_denied",
    "parse_delete",
    "parse_lead_all_info",
    "parse_lead_search",
]

#: The fields of a lead_all_info record, in order.
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
_N = len(RECORD_FIELDS)
#: What an incomplete record still gives reliably: up to source_id from the left when
#: only later fields hold extra pipes, and called_count..lead_id from the right.
_LEFT = RECORD_FIELDS[:4]
_RIGHT = RECORD_FIELDS[-6:]
#: At most this much of a look-up's answer is read (1,000 records are about 100 KB).
MAX_LOOKUP_BYTES = 1024 * 1024
_HEADER_LINE = "|".join(RECORD_FIELDS)


@dataclass(frozen=True)
class LeadRecord:
    """One lead of a lead_all_info answer.

    ``values`` holds every field when ``complete``; otherwise only the fields that
    can be trusted (see the module docstring).
    """

    values: dict[str, str]
    complete: bool
    raw: str = field(repr=False, default="")

    @property
    def lead_id(self) -> str:
        return self.values["lead_id"]

    @property
    def status(self) -> str:
        return self.values.get("status", "")

    @property
    def called_count(self) -> str:
        return self.values.get("called_count", "")


@dataclass(frozen=True)
class LookupAnswer:
    """What one lead_all_info answer said."""

    records: list[LeadRecord]
    #: the LEAD NOT FOUND line: no lead has that phone (or lead id)
    not_found: bool = False
    #: LIST NOT FOUND lines: leads of that phone the API user may not see
    hidden: list[str] = field(default_factory=list)
    #: lines that are neither a record nor a known ERROR line
    unreadable: int = 0
    #: the answer was cut at MAX_LOOKUP_BYTES
    truncated: bool = False

    def hidden_lists(self) -> dict[str, str]:
        """lead_id -> list_id of the hidden leads a ``LIST NOT FOUND`` line names with both
        (the last line of a look-up by lead id: ``{user}|{lead_id}|{phone}|{list_id}``)."""
        out: dict[str, str] = {}
        for line in self.hidden:
            parts = line.split(": ", 1)[-1].split("|")
            if len(parts) == 4 and parts[1].isdigit():
                out[parts[1]] = parts[3]
        return out


@dataclass(frozen=True)
class SearchAnswer:
    """What one lead_search answer said about one phone.

    ``ids``: the phone's lead ids in every list, highest first; None when lead_search
    was not permitted (``line`` says VICIdial's refusal, ``missing`` and ``fix`` what
    to change), so that the look-up cannot prove a lead absent.
    """

    ids: tuple[str, ...] | None
    line: str = ""
    missing: str = ""
    fix: str = ""


@dataclass(frozen=True)
class Diagnosis:
    missing: str
    fix: str


def _admin(user: str) -> str:
    return f'VICIdial admin: Users, user {user}, "Modify"'


def diagnose_denied(line: str, *, user: str, search_answered: bool | None) -> Diagnosis:
    """What a lead_all_info permission refusal means, and what to change.

    ``search_answered``: whether lead_search (same rights but View Reports, and user
    level 8+) answered for the same user; None when it was not asked.
    """
    if "PERMISSION TO USE THIS FUNCTION" in line:
        return Diagnosis(
            "API Allowed Functions: lead_all_info",
            f'{_admin(user)}: add lead_all_info to "API Allowed Functions" (or ALL_FUNCTIONS)'
            + (", and update_lead to delete duplicates" if "update_lead" in line else ""),
        )
    if line.startswith("ERROR: Invalid Source"):
        return Diagnosis(
            "a valid source",
            "DISPATCHER_VICIDIAL_SOURCE must be 2-20 letters or digits",
        )
    if "update_lead" in line:
        return Diagnosis(
            "Modify Leads 1-4 and User Level 8+ (for update_lead)",
            f'{_admin(user)}: "Modify Leads" = 1 (1-4) and "User Level" 8 or more, '
            "or set DISPATCHER_RECONCILE_DELETE_DUPLICATES=false",
        )
    if search_answered:
        return Diagnosis(
            "View Reports",
            f'{_admin(user)}: set "View Reports" to 1 (lead_all_info needs it; the other '
            "rights are there). VICIdial's seed user 6666 has it at 0.",
        )
    return Diagnosis(
        "Agent API Access, Modify Leads or View Reports",
        f'{_admin(user)}: lead_all_info needs "Agent API Access" = 1, "Modify Leads" = 1 '
        '(any of 1-5) and "View Reports" = 1, with "User Level" 7 or more; one of them is 0',
    )


def _refused(line: str, user: str) -> LookupRefused:
    # ``line`` is already redacted (the BAD line echoes the password).
    if "LOCK" in line:
        return LookupRefused(
            line,
            http_status=200,
            missing="an unlocked account",
            fix=f"user {user} is locked after 10 failed logins (agent and Non-Agent API "
            "together): it unlocks 15 minutes after the last login attempt; find what "
            "else logs in with a wrong password",
        )
    return LookupRefused(
        line,
        http_status=200,
        missing="a Non-Agent API login",
        fix=f"the Non-Agent API refused user {user}: wrong password, user inactive, or "
        f'"User Level" below 7 ({_admin(user)}: "User Level" 7 or more; the agent API '
        "does not need it). Each refusal counts toward VICIdial's 10-failure lock, so "
        "look-ups stop until `dispatcher health --recheck` after the fix",
    )


def _classify(line: str, user: str, secrets: tuple[str, ...] = ()) -> LookupFailed | None:
    """The error a single ERROR line means, or None if it is not a refusal."""
    line = redact_vicidial_line(line, secrets)
    if line.startswith("ERROR: Login incorrect") or line.startswith(
        "ERROR: Too many login attempts"
    ):
        return _refused(line, user)
    if (
        "USER DOES NOT HAVE PERMISSION" in line
        or line.startswith("ERROR: Invalid Source")
        or line.startswith("ERROR: user_group DOES NOT EXIST")
    ):
        d = diagnose_denied(line, user=user, search_answered=None)
        return LookupDenied(line, http_status=200, missing=d.missing, fix=d.fix)
    if line.startswith("ERROR: NO FUNCTION SPECIFIED"):
        return LookupUnavailable(
            line,
            http_status=200,
            missing="lead_all_info",
            fix="this server's non_agent_api.php does not know lead_all_info (VICIdial "
            "too old?) or DISPATCHER_VICIDIAL_NONAGENT_URL points elsewhere",
        )
    return None


def _record(text: str) -> LeadRecord | None:
    parts = text.split("|")
    if len(parts) < _N or not parts[-1].isdigit() or not parts[-2].isdigit():
        return None
    if len(parts) == _N:
        return LeadRecord(dict(zip(RECORD_FIELDS, parts, strict=True)), True, text)
    values = dict(zip(_LEFT, parts[: len(_LEFT)], strict=True))
    values.update(zip(_RIGHT, parts[-len(_RIGHT) :], strict=True))
    return LeadRecord(values, False, text)


def parse_lead_all_info(
    body: str, *, secrets: tuple[str, ...] = (), user: str = "", truncated: bool = False
) -> LookupAnswer:
    """Read a lead_all_info answer (default ``|`` stage; header lines are skipped).

    Lines that do not close a record are joined with the next ones (a line break in a
    field); a line that is a whole record by itself is taken alone, and whatever was
    pending before it counts as unreadable. Raises :class:`LookupRefused` (login),
    :class:`LookupDenied` (permission) or :class:`LookupUnavailable` (nothing
    readable), the line redacted.
    """
    records: list[LeadRecord] = []
    hidden: list[str] = []
    not_found = False
    unreadable = 0
    pending: list[str] = []
    lines = body.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for line in lines:
        if not pending and line.startswith("ERROR: "):
            error = _classify(line, user, secrets)
            if error is not None:
                raise error
            if line.startswith("ERROR: lead_all_info LIST NOT FOUND"):
                hidden.append(line)
            elif line.startswith("ERROR: lead_all_info LEAD NOT FOUND"):
                not_found = True
            else:
                unreadable += 1
            continue
        if line == _HEADER_LINE:
            unreadable += 1 if pending else 0
            pending = []
            continue
        alone = _record(line)
        if alone is not None:
            unreadable += 1 if pending else 0
            pending = []
            records.append(alone)
            continue
        pending.append(line)
        joined = _record("\n".join(pending))
        if joined is not None:
            records.append(joined)
            pending = []
    unreadable += 1 if pending else 0
    if not records and not hidden and not not_found and "|" not in body:
        shown = redact_vicidial_line(" ".join(body.split())[:300], secrets)
        raise LookupUnavailable(
            f"unreadable lead_all_info answer: {shown!r}" if body.strip() else "empty answer",
            http_status=200,
        )
    return LookupAnswer(records, not_found, hidden, unreadable, truncated)


def _search_denied(line: str, user: str) -> SearchAnswer:
    if "user_group DOES NOT EXIST" in line:
        return SearchAnswer(
            None,
            line,
            "an existing user group",
            f"user {user} has API List Restrict on and its user group does not exist: "
            f'{_admin(user)}: choose an existing "User Group"',
        )
    return SearchAnswer(
        None,
        line,
        "lead_search (User Level 8+, Modify Leads 1-5, API Allowed Functions)",
        f'{_admin(user)}: "User Level" 8 or more and lead_search in "API Allowed Functions" '
        "(or ALL_FUNCTIONS): lead_search sees every list, lead_all_info does not (list 0, "
        "lists outside the user group's campaigns); without it a lead that cannot be "
        "shown cannot be proven absent, and the job stays an ambiguous dead letter",
    )


def parse_lead_search(
    body: str, phone: str, *, secrets: tuple[str, ...] = (), user: str = ""
) -> SearchAnswer:
    """Read a lead_search answer for one phone (``{phone}|{count}|{ids}``, or NO MATCHES).

    A refused login raises :class:`LookupRefused` (it would refuse lead_all_info too);
    a permission or user-group refusal is a :class:`SearchAnswer` without ids; anything
    unreadable raises :class:`LookupUnavailable`.
    """
    for line in body.split("\n"):
        if not line:
            continue
        if line.startswith("ERROR: "):
            shown = redact_vicidial_line(line, secrets)
            if line.startswith("ERROR: lead_search NO MATCHES FOUND"):
                return SearchAnswer(())
            if (
                "USER DOES NOT HAVE PERMISSION" in line
                or line.startswith("ERROR: user_group DOES NOT EXIST")
                or line.startswith("ERROR: NO FUNCTION SPECIFIED")
            ):
                return _search_denied(shown, user)
            error = _classify(line, user, secrets)
            raise error or LookupUnavailable(f"unexpected lead_search answer: {shown[:300]}")
        parts = line.split("|")
        if len(parts) == 3 and parts[0] == phone and parts[1].isdigit():
            ids = tuple(x for x in parts[2].split("-") if x)
            if len(ids) == int(parts[1]) and all(x.isdigit() for x in ids):
                return SearchAnswer(ids)
    shown = redact_vicidial_line(" ".join(body.split())[:300], secrets)
    raise LookupUnavailable(
        f"unreadable lead_search answer: {shown!r}" if body.strip() else "empty answer",
        http_status=200,
    )


_DELETED = "SUCCESS: update_lead LEAD HAS BEEN DELETED"


def parse_delete(body: str, *, secrets: tuple[str, ...] = (), user: str = "") -> bool:
    """True if an update_lead delete answer says the lead was deleted; False if VICIdial
    found nothing to delete. Refusals raise as in :func:`parse_lead_all_info`."""
    for line in body.splitlines():
        if line.startswith(_DELETED):
            return True
        if line.startswith("ERROR: update_lead NO MATCHES FOUND"):
            return False
        if line.startswith("ERROR: "):
            raise _classify(line, user, secrets) or LookupUnavailable(
                redact_vicidial_line(line, secrets), http_status=200
            )
    raise LookupUnavailable(
        "unrecognised update_lead answer: "
        + redact_vicidial_line(" ".join(body.split())[:300], secrets),
        http_status=200,
    )


class NonAgentClient:
    """Calls the Non-Agent API of one VICIdial server.

    ``http``: the httpx client to use (a worker passes its deadline-bounded one);
    ``bound``: a context manager factory wrapped around each request (the worker's
    overall deadline). Both default to a plain client with the settings' timeout.
    ``owns_http``: :meth:`close` closes ``http`` too (default: only a client made here).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        dialer: Dialer | None = None,
        http: httpx.Client | None = None,
        bound: Callable[[], AbstractContextManager[object]] | None = None,
        owns_http: bool | None = None,
    ) -> None:
        dialer = dialer or settings.dialers.resolve(None)
        url = dialer.lookup_url if dialer is not None else None
        if dialer is None or url is None:
            where = (
                f"nonagent_url of dialers.{dialer.name} in {settings.dialers.origin}"
                if dialer is not None and settings.dialers_file
                else "DISPATCHER_VICIDIAL_NONAGENT_URL"
            )
            raise LookupUnavailable(
                "no Non-Agent API URL",
                missing=where,
                fix=f"set {where} (the agent API URL does not end with agc/api.php, so it "
                "cannot be derived)",
            )
        self.settings = settings
        self.dialer = dialer
        self.url = url
        self.user = str(dialer.user or "")
        self._secrets = settings.secrets
        timeout = settings.http_timeout_s
        self._own = http is None if owns_http is None else owns_http
        self._http = http or httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            headers={"User-Agent": "vicidial-lead-dispatcher/0.1"},
        )
        self._bound = bound or contextlib.nullcontext

    def close(self) -> None:
        if self._own:
            self._http.close()

    def _post(self, function: str, **fields: str) -> tuple[int, str, bool]:
        # The last form field's raw value goes into VICIdial's API-log INSERT: it is
        # always one we made (function, a phone's digits, a lead id, "Y"), never the
        # password, which may hold a quote.
        data = {
            "source": self.dialer.source,
            "user": self.user,
            "pass": str(self.dialer.password or ""),
            "function": function,
            **fields,
        }
        try:
            with self._bound(), self._http.stream("POST", self.url, data=data) as reply:
                chunks: list[bytes] = []
                size = 0
                truncated = False
                for chunk in reply.iter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_LOOKUP_BYTES:
                        truncated = True
                        break
                body = b"".join(chunks)[:MAX_LOOKUP_BYTES]
                return reply.status_code, body.decode("utf-8", "replace"), truncated
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise LookupUnavailable(
                f"{type(exc).__name__}: could not connect to the Non-Agent API", network=True
            ) from None
        except httpx.HTTPError as exc:
            raise LookupUnavailable(
                f"{type(exc).__name__}: no answer from the Non-Agent API"
            ) from None

    def _checked(self, status: int, body: str) -> str:
        if status == 200:
            return body
        shown = redact_vicidial_line(" ".join(body.split())[:200], self._secrets)
        raise LookupUnavailable(
            f"HTTP {status} from the Non-Agent API" + (f": {shown}" if shown else ""),
            http_status=status,
            network=status in (502, 503, 504, 429),
            missing="a working Non-Agent API" if status == 404 else "",
            fix=f"{self.url} answered 404: set DISPATCHER_VICIDIAL_NONAGENT_URL"
            if status == 404
            else (
                "VICIdial's lead_all_info fails (HTTP 500) when a lead of that phone holds a "
                "' (its API log cannot store the record), or on a database error"
                if status == 500
                else ""
            ),
        )

    def lead_all_info(self, phone: str) -> LookupAnswer:
        """Every lead with ``phone`` (digits) the user may see, newest first."""
        status, body, truncated = self._post("lead_all_info", phone_number=phone)
        return parse_lead_all_info(
            self._checked(status, body), secrets=self._secrets, user=self.user, truncated=truncated
        )

    def lead_by_id(self, lead_id: str) -> LookupAnswer:
        """One lead by its id, if the user may see it (else its LIST NOT FOUND line)."""
        status, body, truncated = self._post("lead_all_info", lead_id=lead_id)
        return parse_lead_all_info(
            self._checked(status, body), secrets=self._secrets, user=self.user, truncated=truncated
        )

    def lead_search(self, phone: str) -> SearchAnswer:
        """The ids of every lead with ``phone`` (digits), in every list (1,000 at most)."""
        status, body, _ = self._post("lead_search", records="1000", phone_number=phone)
        return parse_lead_search(
            self._checked(status, body), phone, secrets=self._secrets, user=self.user
        )

    def delete_lead(self, lead_id: str) -> bool:
        """Delete one lead by id (update_lead delete_lead=Y); False if it was not there."""
        status, body, _ = self._post("update_lead", lead_id=lead_id, delete_lead="Y")
        return parse_delete(self._checked(status, body), secrets=self._secrets, user=self.user)

    def check(self, *, delete: bool = False) -> SearchAnswer:
        """Check the look-up's permissions with requests that change nothing.

        ``lead_all_info`` without a lead id or phone answers LEAD NOT FOUND once every
        check passed (login, source, allowed functions, permissions). Raises the
        LookupFailed that says what is wrong. ``delete``: check ``update_lead`` too
        (without a lead id it stops at NO VALID SEARCH METHOD, deleting nothing).
        Returns what ``lead_search`` answers for a phone no lead has: without ids when
        it is not permitted (look-ups then find leads, but never prove one absent).
        """
        status, body, _ = self._post("lead_all_info")
        body = self._checked(status, body)
        line = next((x for x in body.splitlines() if x.startswith("ERROR: ")), body.strip())
        if not line.startswith("ERROR: lead_all_info LEAD NOT FOUND"):
            error = _classify(line, self.user, self._secrets) or LookupUnavailable(
                "unexpected answer to the permission check: "
                + redact_vicidial_line(line[:200], self._secrets),
                http_status=200,
            )
            if isinstance(error, LookupDenied):
                error = self.diagnose(error)
            raise error
        if delete:
            status, body, _ = self._post("update_lead", delete_lead="Y")
            body = self._checked(status, body)
            line = body.strip().splitlines()[0] if body.strip() else ""
            if not line.startswith("ERROR: update_lead NO VALID SEARCH METHOD"):
                raise _classify(line, self.user, self._secrets) or LookupUnavailable(
                    "unexpected answer to the update_lead check: "
                    + redact_vicidial_line(line[:200], self._secrets),
                    http_status=200,
                )
        return self.lead_search("0000000000")

    def diagnose(self, error: LookupDenied) -> LookupDenied:
        """``error`` with what is missing narrowed down, if lead_all_info's permission
        check refused: lead_search (no side effect) answers when only View Reports is
        missing."""
        if "GET LEAD INFO" in error.line:
            d = diagnose_denied(error.line, user=self.user, search_answered=self._search_answers())
            error.missing, error.fix = d.missing, d.fix
        return error

    def _search_answers(self) -> bool | None:
        """Whether lead_search answers this user (it needs no View Reports)."""
        with contextlib.suppress(LookupFailed):
            status, body, _ = self._post("lead_search", phone_number="0000000000")
            body = self._checked(status, body)
            if "lead_search NO MATCHES" in body or "|" in body.split(":", 1)[0]:
                return True
            if "PERMISSION" in body:
                return False
        return None
