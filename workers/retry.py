"""What the worker does about a failed call, as data: the retry policy.

:class:`RetryPolicy` turns an error (its type: :mod:`workers.classify`,
:mod:`dispatcher.model.errors`) and the job's attempts into a :class:`RetryDecision`:
retry after a delay (exponential backoff with full jitter), or give up (the dead
letter). The runner writes what it decides (:mod:`workers.delivery`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dispatcher.config.settings import Settings
from dispatcher.model.errors import (
    AgentNotLoggedIn,
    AmbiguousFailure,
    CallFailed,
    PermanentFailure,
    TemporaryFailure,
    UnknownResponse,
)
from dispatcher.model.jobs import Job

__all__ = ["RetryDecision", "RetryPolicy"]


@dataclass(frozen=True)
class RetryDecision:
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

    def retry_or_dead_letter(
        self, error: CallFailed, job: Job, *, now: float, rng: random.Random
    ) -> RetryDecision:
        """Retry the failed call (after how long), or give up: the dead letter.

        ``job.attempts`` already counts the call that just failed."""
        if isinstance(error, PermanentFailure):
            return RetryDecision(retry=False)
        if isinstance(error, AmbiguousFailure) and not self.retry_ambiguous:
            return RetryDecision(retry=False)
        if isinstance(error, AgentNotLoggedIn):
            since = job.agent_wait_since if job.agent_wait_since is not None else now
            remaining = since + self.agent_wait_s - now
            if remaining <= 0:
                return RetryDecision(retry=False, agent_wait_since=since)
            delay = self.backoff(job.attempts, rng, cap_s=self.agent_cap_s)
            return RetryDecision(retry=True, delay_s=min(delay, remaining), agent_wait_since=since)
        limit = (
            self.unknown_max_attempts if isinstance(error, UnknownResponse) else self.max_attempts
        )
        limit = min(limit, self.max_attempts)
        if not isinstance(error, TemporaryFailure | AmbiguousFailure) or job.attempts >= limit:
            return RetryDecision(retry=False, agent_wait_since=job.agent_wait_since)
        return RetryDecision(
            retry=True,
            delay_s=self.backoff(job.attempts, rng),
            agent_wait_since=job.agent_wait_since,
        )
