"""What each VICIdial answer means, and what the worker does about it, as data.

Two tables drive everything:

* :data:`ANSWER_RULES`: the first words of a VICIdial ``ERROR:`` line -> the
  error type of :mod:`dispatcher.model.errors` (which carries the dead-letter reason);
* :data:`STATUS_RULES`: a non-200 HTTP status -> the error type.

and one policy object, :class:`RetryPolicy`, turns an error into a
:class:`Decision` (retry after a delay, or dead-letter). The task never inspects
strings itself: it raises and catches types.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dispatcher.config.settings import Settings
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
    PermanentFailure,
    PermissionDenied,
    TemporaryFailure,
    UnknownResponse,
)
from dispatcher.model.jobs import Job

__all__ = ["ANSWER_RULES", "STATUS_RULES", "Decision", "RetryPolicy", "classify_line"]

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


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay_s: float = 0.0
    #: For an agent who is not logged in: when the wait started (travels with the job).
    agent_wait_since: float | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by attempts or a deadline.

    The predicate is the error's type: permanent failures never retry, temporary
    ones retry within ``max_attempts`` (``unknown_max_attempts`` for answers we
    cannot read), an agent who is not logged in is waited for up to
    ``agent_wait_s`` whatever the attempt count, and ambiguous calls retry only
    when the operator chose ``DISPATCHER_AMBIGUOUS=retry``.
    """

    max_attempts: int = 8
    base_s: float = 2.0
    cap_s: float = 300.0
    agent_wait_s: float = 900.0
    #: Polling for a late agent should notice the login quickly.
    agent_cap_s: float = 60.0
    unknown_max_attempts: int = 3
    retry_ambiguous: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            base_s=settings.retry_base_s,
            cap_s=settings.retry_cap_s,
            agent_wait_s=settings.agent_wait_s,
            agent_cap_s=min(settings.retry_cap_s, 60.0),
            unknown_max_attempts=settings.unknown_max_attempts,
            retry_ambiguous=settings.ambiguous == "retry",
        )

    def backoff(self, attempts: int, rng: random.Random, *, cap_s: float | None = None) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(attempts-1))]."""
        cap = self.cap_s if cap_s is None else cap_s
        ceiling = min(cap, self.base_s * 2 ** max(0, attempts - 1))
        return rng.uniform(0, ceiling)

    def decide(self, error: CallFailed, job: Job, *, now: float, rng: random.Random) -> Decision:
        """``job.attempts`` already counts the call that just failed."""
        if isinstance(error, PermanentFailure):
            return Decision(retry=False)
        if isinstance(error, AmbiguousFailure) and not self.retry_ambiguous:
            return Decision(retry=False)
        if isinstance(error, AgentNotLoggedIn):
            since = job.agent_wait_since if job.agent_wait_since is not None else now
            remaining = since + self.agent_wait_s - now
            if remaining <= 0:
                return Decision(retry=False, agent_wait_since=since)
            delay = self.backoff(job.attempts, rng, cap_s=self.agent_cap_s)
            return Decision(retry=True, delay_s=min(delay, remaining), agent_wait_since=since)
        limit = (
            self.unknown_max_attempts if isinstance(error, UnknownResponse) else self.max_attempts
        )
        limit = min(limit, self.max_attempts)
        if not isinstance(error, TemporaryFailure | AmbiguousFailure) or job.attempts >= limit:
            return Decision(retry=False, agent_wait_since=job.agent_wait_since)
        return Decision(
            retry=True,
            delay_s=self.backoff(job.attempts, rng),
            agent_wait_since=job.agent_wait_since,
        )
