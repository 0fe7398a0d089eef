"""Every error the dispatcher raises, in one tree.

The task decides between "retry" and "dead letter" by the *type* of the error,
never by matching strings, so the tree is the retry policy's vocabulary::

    DispatcherError
     ├── InvalidLead (ValueError)         bad input at enqueue time; names every bad field
     ├── IdempotencyConflict (ValueError) an idempotency key reused with a different lead
     ├── ConfigError (ValueError)         a DISPATCHER_* variable is missing or malformed
     ├── BrokerUnavailable                Redis cannot be reached (enqueue, CLI)
     │    ├── EnqueueUnconfirmed          the enqueue was sent, its answer lost: it may have
     │    │                               happened (retry with the same idempotency key)
     │    ├── BrokerWriteRefused          Redis answers but refuses writes (MISCONF: disk)
     │    │    ├── BrokerOutOfMemory      OOM: maxmemory reached (noeviction)
     │    │    └── BrokerReadOnly         READONLY: a replica (after a failover)
     │    └── LayoutMismatch              Redis holds a layout this release cannot use
     │         ├── LayoutTooNew           written by a newer release (roll forward, or back
     │         │                          by README "Upgrading")
     │         └── LayoutNotMigrated      older, and only workers migrate it: upgrade them first
     ├── UserError (ValueError)           a console user's name, role or password is bad
     │    ├── UserExists                  `dispatcher users add` of a name taken
     │    └── UnknownUser                 no user of that name
     └── CallFailed                       one external_add_lead call did not add the lead
          ├── TemporaryFailure            worth another attempt after a backoff
          │    ├── AgentNotLoggedIn       agent_not_logged_in: waits up to AGENT_WAIT_S
          │    ├── InsertFailed           insert_failed
          │    ├── NetworkError           network: nothing reached VICIdial
          │    ├── HTTPStatusError        http_error: 500/502/503/429
          │    ├── UnknownResponse        unknown_response: garbage, empty body, odd status
          │    └── UnknownDialer          unknown_dialer: the job's dialer is not one this
          │                               worker knows (as the job knows it): it waits for a
          │                               worker that does, up to UNKNOWN_DIALER_WAIT_S
          ├── AmbiguousFailure            ambiguous: the request may have been executed
          └── PermanentFailure            can never succeed as sent
               ├── DNCBlocked             dnc
               ├── CampaignDNCBlocked     campaign_dnc
               ├── ManualListUndefined    manual_list_undefined
               ├── InvalidRequest         invalid_request
               ├── InvalidPayload         invalid_payload: the queue message is not a job
               ├── InternalFailure        internal: an unexpected error inside the worker
               ├── InvalidPhone           invalid_phone: add_lead's phone checks refused it
               ├── ListUndefined          list_undefined: add_lead's list does not exist
               ├── ListNotAllowed         permission: the API user may not add to that
               │                          list (one list's fault: calls do not pause)
               ├── ServerError            server_error: HTTP 500 before anything was printed
               │                          (add_lead fails on this request every time)
               └── ServerRefused          the server refuses *every* call: pause the fleet
                    ├── AuthFailed        auth
                    ├── PermissionDenied  permission
                    ├── ApiDisabled       api_disabled
                    └── InvalidSource     invalid_source
     ├── ClaimLapsed                      right before a request: the job's claim could have
     │                                    lapsed before the call would end; nothing was sent
     └── LookupFailed                     a Non-Agent API request (a lead look-up for
          │                               reconciliation) gave no usable answer
          ├── LookupRefused               the login was refused (BAD, LOCK): every refusal
          │                               counts toward VICIdial's lock, never retried blindly
          ├── LookupDenied                logged in, but not permitted: ``missing`` and ``fix``
          │                               say what to change in VICIdial's admin screens
          └── LookupUnavailable           no usable answer now (network, HTTP error, timeout,
                                          an answer that cannot be read)

Every ``CallFailed`` carries ``reason`` (the dead-letter reason code), ``line``
(VICIdial's answer line or an exception summary, with secrets already removed)
and ``http_status`` (None when no HTTP answer came back).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AgentNotLoggedIn",
    "AmbiguousFailure",
    "ApiDisabled",
    "AuthFailed",
    "BrokerOutOfMemory",
    "BrokerReadOnly",
    "BrokerUnavailable",
    "BrokerWriteRefused",
    "CallFailed",
    "CampaignDNCBlocked",
    "ClaimLapsed",
    "ConfigError",
    "DNCBlocked",
    "DispatcherError",
    "EnqueueUnconfirmed",
    "FieldError",
    "HTTPStatusError",
    "IdempotencyConflict",
    "InsertFailed",
    "InternalFailure",
    "InvalidLead",
    "InvalidPayload",
    "InvalidPhone",
    "InvalidRequest",
    "InvalidSource",
    "LayoutMismatch",
    "LayoutNotMigrated",
    "LayoutTooNew",
    "ListNotAllowed",
    "ListUndefined",
    "LookupDenied",
    "LookupFailed",
    "LookupRefused",
    "LookupUnavailable",
    "ManualListUndefined",
    "NetworkError",
    "PermanentFailure",
    "PermissionDenied",
    "ServerError",
    "ServerRefused",
    "TemporaryFailure",
    "UnknownDialer",
    "UnknownResponse",
    "UnknownUser",
    "UserError",
    "UserExists",
    "all_reasons",
]


class DispatcherError(Exception):
    """Root of every error this package raises on purpose."""


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of one lead.

    ``index`` is the position of the lead in a bulk call (None for a single lead).
    """

    field: str
    message: str
    index: int | None = None

    def __str__(self) -> str:
        where = f"lead {self.index}: " if self.index is not None else ""
        return f"{where}{self.field}: {self.message}"


class InvalidLead(DispatcherError, ValueError):
    """The lead (or some leads of a batch) cannot be enqueued; nothing was enqueued."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("invalid lead: " + "; ".join(str(e) for e in self.errors))


class ConfigError(DispatcherError, ValueError):
    """A setting is missing or malformed. The message names the variable, never its secret."""


class BrokerUnavailable(DispatcherError):
    """Redis did not answer (refused, timed out, authentication failed)."""

    #: True when no connection could be made: no command reached Redis.
    connecting: bool = False
    #: Why, for logs (dispatcher.store.connection.unavailable_kind): "connection", "timeout",
    #: "out_of_memory", "read_only", "misconf", "auth", ...
    kind: str = "connection"


class EnqueueUnconfirmed(BrokerUnavailable):
    """The enqueue reached Redis but its answer did not come back, and Redis could not be
    asked afterwards: the lead may or may not be on the queue. Retrying with the same
    idempotency key is safe; retrying without one may enqueue it twice."""


class BrokerWriteRefused(BrokerUnavailable):
    """Redis answered but refused to write (MISCONF: it cannot persist to disk)."""

    kind = "misconf"


class BrokerOutOfMemory(BrokerWriteRefused):
    """Redis reached maxmemory (noeviction): every write is refused until memory frees."""

    kind = "out_of_memory"


class BrokerReadOnly(BrokerWriteRefused):
    """Redis is a read-only replica (e.g. the old master after a failover)."""

    kind = "read_only"


class LayoutMismatch(BrokerUnavailable):
    """The Redis layout's version (``{prefix}:layout``, dispatcher/store/layout.py) is not one
    this release may use as it is. A kind of BrokerUnavailable: every caller already
    turns that into exit 1 (CLI), 503 (intake) or a retry later (producers), which is
    right while a rolling upgrade is under way."""

    def __init__(self, message: str, *, found: int, supported: int) -> None:
        super().__init__(message)
        #: the version Redis holds, and the one this release writes
        self.found = found
        self.supported = supported


class LayoutTooNew(LayoutMismatch):
    """A newer release wrote this Redis: this one would misread what it holds."""


class LayoutNotMigrated(LayoutMismatch):
    """An older layout that this release's workers migrate when they start: a producer,
    the intake or the CLI meets it when they were upgraded before the workers."""


class IdempotencyConflict(DispatcherError, ValueError):
    """An idempotency key was used before with a different lead; nothing was enqueued.

    ``job_id`` is the job the key belongs to.
    """

    def __init__(self, key: str, job_id: str, *, index: int | None = None) -> None:
        self.key = key
        self.job_id = job_id
        self.index = index
        where = f"lead {index}: " if index is not None else ""
        super().__init__(
            f"{where}idempotency key {key!r} was used for another lead (job {job_id}); "
            "nothing enqueued"
        )


class UserError(DispatcherError, ValueError):
    """A console user's name, role or password is not acceptable."""


class UserExists(UserError):
    """A user of that name exists already."""


class UnknownUser(UserError):
    """No console user of that name."""


class CallFailed(DispatcherError):
    """A call to VICIdial (external_add_lead, or add_lead) that did not add the lead."""

    reason: str = "unknown_response"

    def __init__(self, line: str = "", *, http_status: int | None = None) -> None:
        self.line = line
        self.http_status = http_status
        super().__init__(f"{self.reason}: {line}" if line else self.reason)


class TemporaryFailure(CallFailed):
    """Might work later: retry with backoff until attempts are used up."""


class AgentNotLoggedIn(TemporaryFailure):
    reason = "agent_not_logged_in"


class InsertFailed(TemporaryFailure):
    reason = "insert_failed"


class NetworkError(TemporaryFailure):
    """Connection refused, DNS failure, connect timeout: the request never left."""

    reason = "network"


class HTTPStatusError(TemporaryFailure):
    reason = "http_error"


class UnknownResponse(TemporaryFailure):
    """An answer we cannot read: retried a few times only."""

    reason = "unknown_response"


class UnknownDialer(TemporaryFailure):
    """A job whose dialer this worker does not know as the job does: a name missing from
    its dialers file (a rolling deploy of the file, a renamed dialer), or ``non_latin``
    set otherwise than when the lead was validated (the lead fails this worker's rules
    and passes the job's). Nothing is called: the job waits for a worker that knows the
    dialer, and after ``DISPATCHER_UNKNOWN_DIALER_WAIT_S`` becomes the replayable dead
    letter ``unknown_dialer`` under its own id.

    ``job``: the job as it was enqueued (a ``dispatcher.model.jobs.Job``); ``dialer``: the
    name it gives ("" for the default one).
    """

    reason = "unknown_dialer"

    def __init__(self, line: str, *, job: object, dialer: str) -> None:
        super().__init__(line)
        self.job = job
        self.dialer = dialer


class AmbiguousFailure(CallFailed):
    """The request may have reached VICIdial but no answer came back.

    VICIdial has no duplicate check, so retrying may add the lead twice; the
    default policy dead-letters these for an operator to check.
    """

    reason = "ambiguous"


class PermanentFailure(CallFailed):
    """Can never succeed as sent: straight to the dead-letter store."""


class DNCBlocked(PermanentFailure):
    reason = "dnc"


class CampaignDNCBlocked(PermanentFailure):
    reason = "campaign_dnc"


class ManualListUndefined(PermanentFailure):
    reason = "manual_list_undefined"


class InvalidRequest(PermanentFailure):
    reason = "invalid_request"


class InvalidPayload(PermanentFailure):
    reason = "invalid_payload"


class InternalFailure(PermanentFailure):
    """An unexpected error inside the worker (a bug): the letter holds the whole job and
    can be replayed once the cause is fixed."""

    reason = "internal"


class InvalidPhone(PermanentFailure):
    """add_lead refused the phone: its length (6-16), or a check the job asked for
    (``usacan_prefix_check``, ``usacan_areacode_check``, NANPA)."""

    reason = "invalid_phone"


class ListUndefined(PermanentFailure):
    """add_lead with ``list_exists_check``: the list has no ``vicidial_lists`` row."""

    reason = "list_undefined"


class ListNotAllowed(PermanentFailure):
    """add_lead: the API user's group (``api_list_restrict``) may not add to that list.
    A permission, but of one list: the server's other calls go on (no pause)."""

    reason = "permission"


class ServerError(PermanentFailure):
    """add_lead answered HTTP 500 with nothing printed (no SUCCESS, no ERROR line): a
    statement failed before anything was stored, and the same request fails the same way
    every time (shared/vicidial/non_agent_add_lead.md, "HTTP 500"). Retrying cannot help;
    the letter is replayable once the cause (a list without a row with a ``*CAMP*``
    duplicate check, a database fault) is fixed."""

    reason = "server_error"


class ServerRefused(PermanentFailure):
    """VICIdial refuses every call from us: calls to that server pause fleet-wide."""


class AuthFailed(ServerRefused):
    reason = "auth"


class PermissionDenied(ServerRefused):
    reason = "permission"


class ApiDisabled(ServerRefused):
    reason = "api_disabled"


class InvalidSource(ServerRefused):
    reason = "invalid_source"


class ClaimLapsed(DispatcherError):
    """The fence refused a call: the job's claim was granted so long ago (a worker
    stopped, paused or blocked since) that its lease could run out before the call
    would end. Nothing was sent; the job goes on as a copy of it would (see
    ``dispatcher.store.execution.Fence``)."""

    def __init__(self, *, age_s: float, lease_s: float, call_s: float) -> None:
        self.age_s = age_s
        self.lease_s = lease_s
        self.call_s = call_s
        super().__init__(
            f"claim granted at least {age_s:.3f} s ago; with the call's {call_s:.1f} s it "
            f"could outlive its {lease_s:.1f} s lease: request not sent"
        )


class LookupFailed(DispatcherError):
    """A Non-Agent API request gave no usable answer.

    ``line`` is VICIdial's answer line or an exception summary (secrets removed);
    ``missing`` names what VICIdial lacks (a permission, a login) and ``fix`` says
    what to change, for the operator (empty when there is nothing to change).
    """

    #: the state a server's look-ups are recorded in (``dispatcher status``)
    state: str = "unavailable"

    def __init__(
        self,
        line: str = "",
        *,
        http_status: int | None = None,
        missing: str = "",
        fix: str = "",
        network: bool = False,
    ) -> None:
        self.line = line
        self.http_status = http_status
        self.missing = missing
        self.fix = fix
        #: the request may never have reached VICIdial, or VICIdial is down (a 5xx):
        #: counts toward the circuit breaker like a call's network failure
        self.network = network
        super().__init__(line)


class LookupRefused(LookupFailed):
    """VICIdial refused the Non-Agent login (wrong password, inactive user, user level
    below 7, locked). Each refusal counts toward VICIdial's 10-failure lock, which the
    agent API shares: never retried automatically."""

    state = "refused"


class LookupDenied(LookupFailed):
    """Logged in, but the user may not look leads up (or delete them)."""

    state = "denied"


class LookupUnavailable(LookupFailed):
    """No usable answer now: network failure, timeout, HTTP error, an unreadable answer."""

    state = "unavailable"


def all_reasons() -> tuple[str, ...]:
    """Every dead-letter reason code, from the tree above."""
    seen: dict[str, None] = {}
    todo: list[type[CallFailed]] = [CallFailed]
    while todo:
        cls = todo.pop(0)
        seen.setdefault(cls.reason, None)
        todo.extend(cls.__subclasses__())
    return tuple(seen)
