"""What the dispatcher needs of its Redis, and how a worker waits when Redis cannot serve.

**An evicting Redis forgets.** A job's ``done`` record carries a TTL, so the
``volatile-*`` policies (a common managed-Redis default) evict it first when memory
runs short, and a redelivered copy of that job is then claimed and called again;
``allkeys-*`` may drop queued jobs, dead letters and job states too. Redis must run
with ``maxmemory-policy noeviction``: a full Redis then refuses writes (which the
dispatcher survives, below) instead of deleting what it holds. A worker refuses to
start on any other policy (:func:`require_noeviction`); ``dispatcher status`` and
``health`` warn (:func:`policy_warnings`). A Redis whose ``INFO`` is refused (some
managed services restrict it) cannot be checked: that is a warning, not a refusal.

**Redis unavailable is an episode, not an error per command.** Every path of a worker
that talks to Redis (the consumer's fetch and acks, the visibility sweep, the
scheduler's retries, heartbeats and reaper, a job's claim and outcome writes) reports
what happened to :class:`RedisAvailability`. A Redis that is full (OOM), read-only,
refusing writes (MISCONF), loading, busy, slow (a timeout) or unreachable is a passing
condition: the path waits and tries again. The first such failure starts an episode and
logs ``redis.unavailable`` once (its kind, the path that met it, the error), however
many commands and threads fail meanwhile; a success after a quiet spell without
failures ends it with ``redis.available`` (how long it lasted, how many commands
failed, and on which paths).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from dispatcher.config import logs
from dispatcher.config.settings import Settings
from dispatcher.model.errors import ConfigError
from dispatcher.store.connection import redis_client, unavailable_kind

__all__ = [
    "NOEVICTION",
    "RedisAvailability",
    "memory_policy",
    "policy_problem",
    "policy_warnings",
    "redis_availability",
    "require_noeviction",
    "reset_redis_availability",
]

_log = logs.get_logger("dispatcher.redis")

NOEVICTION = "noeviction"


def policy_problem(policy: str) -> str | None:
    """Why ``policy`` (Redis's ``maxmemory-policy``) is unsafe, or None for noeviction."""
    if policy == NOEVICTION:
        return None
    return (
        f"Redis maxmemory-policy is {policy}, it must be {NOEVICTION}: when memory runs "
        "short an evicting Redis deletes keys, first those with a TTL under the volatile-* "
        "policies, such as the record that a lead was added (a redelivered copy would then "
        "call VICIdial again), and under allkeys-* queued jobs and dead letters too. Set "
        f"maxmemory-policy {NOEVICTION} (redis.conf, CONFIG SET, or your provider's "
        "parameter group); see README 'Running Redis'"
    )


def memory_policy(client: Any) -> str | None:
    """Redis's ``maxmemory_policy`` from ``INFO memory``; None if INFO does not say.

    Raises redis.RedisError (a refused INFO is a ResponseError)."""
    info = client.info("memory")
    policy = info.get("maxmemory_policy") if isinstance(info, dict) else None
    return str(policy) if policy else None


def policy_warnings(policy: str | None, *, error: str | None = None) -> list[str]:
    """What `status` and `health` say about the policy (``error``: why INFO failed)."""
    if error is not None:
        return [
            f"cannot check Redis maxmemory-policy (INFO memory refused: {error}); it must "
            f"be {NOEVICTION}"
        ]
    if policy is None:
        return [f"Redis does not report its maxmemory-policy; it must be {NOEVICTION}"]
    problem = policy_problem(policy)
    return [problem] if problem else []


def require_noeviction(
    settings: Settings, *, client: Any = None, sleep: Callable[[float], None] = time.sleep
) -> str | None:
    """A worker's start-up check: the policy, once Redis answers (waiting meanwhile).

    Raises ConfigError naming ``maxmemory-policy`` when Redis evicts. Returns the
    policy, or None when it cannot be read (INFO refused or silent: logged as a
    warning, the worker starts).
    """
    client = client if client is not None else redis_client(settings)
    availability = redis_availability()
    while True:
        try:
            policy = memory_policy(client)
        except redis.RedisError as exc:
            if availability.failed(exc, during="start-up check"):
                sleep(1.0)  # Redis away: a worker cannot serve without it anyway
                continue
            _log.warning(
                "redis.policy_unchecked",
                error=f"{type(exc).__name__}: {str(exc)[:200]}",
                why=f"INFO memory refused; Redis must run with maxmemory-policy {NOEVICTION}",
            )
            return None
        availability.ok()
        break
    if policy is None:
        _log.warning(
            "redis.policy_unchecked",
            why=f"INFO memory has no maxmemory_policy; it must be {NOEVICTION}",
        )
        return None
    problem = policy_problem(policy)
    if problem is not None:
        raise ConfigError(problem)
    return policy


class RedisAvailability:
    """Whether this process's Redis serves, as its commands find it (thread-safe)."""

    def __init__(
        self, *, quiet_s: float = 3.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        #: an episode ends at a success only after this long without a failure: a
        #: command that happens to get through (a script whose first write frees
        #: memory, a read) does not end it while others still fail
        self.quiet_s = quiet_s
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._last_failure = 0.0
        self._failures = 0
        self._paths: set[str] = set()

    @property
    def unavailable(self) -> bool:
        """True during an episode."""
        return self._since is not None

    def failed(self, exc: BaseException, *, during: str) -> bool:
        """Note a failed command sent ``during`` a path (``fetch``, ``acks``...).

        True if ``exc`` means Redis cannot serve now (the caller waits and tries
        again; logged once per episode), False for anything else (a wrong key type,
        a script bug): the caller handles that as before.
        """
        kind = unavailable_kind(exc)
        if kind is None:
            return False
        now = self._clock()
        with self._lock:
            self._last_failure = now
            self._failures += 1
            self._paths.add(during)
            if self._since is not None:
                return True
            self._since = now
        # redis-py's errors name host and port, never a password (and the log's
        # redaction processor removes any configured secret).
        _log.error(
            "redis.unavailable",
            kind=kind,
            during=during,
            error=f"{type(exc).__name__}: {str(exc)[:300]}",
        )
        return True

    def ok(self) -> None:
        """Note a command that Redis served (one that writes, where the path has one)."""
        if self._since is None:
            return  # the common case: no lock
        now = self._clock()
        with self._lock:
            since = self._since
            if since is None or now - self._last_failure < self.quiet_s:
                return
            failures, self._since, self._failures = self._failures, None, 0
            paths, self._paths = sorted(self._paths), set()
        _log.warning(
            "redis.available", after_s=round(now - since, 1), failures=failures, paths=paths
        )


_availability = RedisAvailability()


def redis_availability() -> RedisAvailability:
    """This process's tracker (a forked child starts with its own)."""
    return _availability


def reset_redis_availability(tracker: RedisAvailability | None = None) -> RedisAvailability:
    """Start this process's tracker afresh, outside any episode (``tracker``: this one
    instead of a default one), and return it: a forked child does, and so does each test
    (one test's fault must not end, with a ``redis.available`` line, in the next's logs)."""
    global _availability
    _availability = RedisAvailability() if tracker is None else tracker
    return _availability


def _after_fork() -> None:
    reset_redis_availability()


os.register_at_fork(after_in_child=_after_fork)
