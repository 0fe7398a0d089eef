"""What each VICIdial answer means, as data: the classifier.

Two tables drive it:

* :data:`ANSWER_RULES`: the first words of a VICIdial ``ERROR:`` line -> the
  error type of :mod:`dispatcher.model.errors` (which carries the dead-letter reason);
* :data:`STATUS_RULES`: a non-200 HTTP status -> the error type.

The client (:mod:`workers.vicidial`) raises the type a rule names; what the worker
does about it is the retry policy's (:mod:`workers.retry`). Nothing inspects
strings elsewhere: the worker raises and catches types.
"""

from __future__ import annotations

from dispatcher.model.errors import (
    AgentNotLoggedIn,
    AmbiguousFailure,
    ApiDisabled,
    AuthFailed,
    CallFailed,
    CampaignDNCBlocked,
    DNCBlocked,
    HTTPStatusError,
    InsertFailed,
    InvalidRequest,
    InvalidSource,
    ManualListUndefined,
    PermissionDenied,
)

__all__ = ["ANSWER_RULES", "STATUS_RULES", "classify_line"]

#: Line prefix -> error type, in the order VICIdial itself checks (spec section
#: "What the server does, in order"). When an answer has several ERROR lines the
#: earliest rule wins; `no user found` (alt_user) comes last because VICIdial
#: carries on after it.
ANSWER_RULES: tuple[tuple[str, type[CallFailed]], ...] = (
    ("ERROR: Invalid Source", InvalidSource),
    ("ERROR: Invalid Username/Password", AuthFailed),
    ("ERROR: System API NOT ACTIVE", ApiDisabled),
    ("ERROR: external_add_lead not valid", InvalidRequest),
    ("ERROR: auth USER DOES NOT HAVE PERMISSION", PermissionDenied),
    ("ERROR: agent_user is not logged in", AgentNotLoggedIn),
    ("ERROR: campaign manual dial list undefined", ManualListUndefined),
    ("ERROR: add_lead PHONE NUMBER IN DNC", DNCBlocked),
    ("ERROR: add_lead PHONE NUMBER IN CAMPAIGN DNC", CampaignDNCBlocked),
    ("ERROR: lead insertion failed", InsertFailed),
    ("ERROR: no user found", InvalidRequest),
)

#: HTTP status -> error type. 504 is a proxy giving up on a request VICIdial may
#: still be running: ambiguous. Any other non-200 status is unknown_response.
STATUS_RULES: dict[int, type[CallFailed]] = {
    500: HTTPStatusError,
    502: HTTPStatusError,
    503: HTTPStatusError,
    429: HTTPStatusError,
    504: AmbiguousFailure,
}


def classify_line(line: str) -> tuple[int, type[CallFailed]] | None:
    """(rank, error type) for one ERROR line, or None if we do not know it."""
    for rank, (prefix, error) in enumerate(ANSWER_RULES):
        if line.startswith(prefix):
            return rank, error
    return None
