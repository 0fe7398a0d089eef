"""Redis key names under a configurable prefix, for the Python side.

The scripts that change these keys (``execution.lua``, ``fleet.lua``, ``outbox.lua``...) build the
same names from the prefix and document the whole layout at their top; this
class is what Python code reads with. A second deployment can share a Redis
server under another ``DISPATCHER_KEY_PREFIX``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


@dataclass(frozen=True)
class Keys:
    prefix: str = "dispatcher"
    queue: str = "dispatcher"

    def lane(self, dialer: str, priority: str) -> str:
        """List: the broker messages of one dialer's priority lane (realtime, bulk).

        The queue's own list (``queue``) is still consumed, after the default
        dialer's realtime lane: messages published by an older version.
        """
        return f"{self.queue}.{dialer}.{priority}"

    @property
    def wake(self) -> str:
        """List: a token per enqueue, to wake consumers waiting on an empty fleet."""
        return f"{self.queue}.wake"

    def job(self, job_id: str) -> str:
        """Hash: the job's state as `dispatcher job` shows it."""
        return f"{self.prefix}:job:{job_id}"

    def execution(self, job_id: str) -> str:
        """Hash: the execution record (claim lease, delivery sequence, done + lead_id)."""
        return f"{self.prefix}:exec:{job_id}"

    def idempotency(self, key: str) -> str:
        """String: idempotency key -> the first job id enqueued with it."""
        return f"{self.prefix}:idem:{key}"

    def dead_letter(self, dl_id: str) -> str:
        """String: one dead-letter record (JSON)."""
        return f"{self.prefix}:dl:{dl_id}"

    @property
    def dead_letters(self) -> str:
        """Sorted set: every dead-letter id, scored by last failure time."""
        return f"{self.prefix}:dlq"

    def dead_letters_by_reason(self, reason: str) -> str:
        """Sorted set: the dead-letter ids of one reason, scored by last failure time."""
        return f"{self.prefix}:dlq:reason:{reason}"

    @property
    def dead_letter_counts(self) -> str:
        """Hash: reason -> number of dead letters (kept in step with the sets)."""
        return f"{self.prefix}:dlq:counts"

    @property
    def scheduled(self) -> str:
        """Sorted set: broker messages waiting for their retry time (score = due epoch)."""
        return f"{self.prefix}:scheduled"

    def pause(self, server: str) -> str:
        """Hash: a fleet-wide pause of calls to one VICIdial server."""
        return f"{self.prefix}:pause:{server}"

    @property
    def pauses(self) -> str:
        """Set: the servers that have a pause hash (read paths never scan the keyspace)."""
        return f"{self.prefix}:pauses"

    def breaker(self, server: str) -> str:
        """String counter: consecutive network failures against one server."""
        return f"{self.prefix}:breaker:{server}"

    def rate(self, server: str) -> str:
        """String: GCRA theoretical arrival time for the fleet-wide rate limit."""
        return f"{self.prefix}:rate:{server}"

    @property
    def stats(self) -> str:
        """Hash: fleet-wide counters (enqueued, added, dead_lettered:reason...)."""
        return f"{self.prefix}:stats"

    @property
    def workers(self) -> str:
        """Set: names of the workers seen (pruned once their heartbeat key is gone)."""
        return f"{self.prefix}:workers"

    def worker(self, name: str) -> str:
        """String with a TTL: a worker's heartbeat."""
        return f"{self.prefix}:worker:{name}"

    def consumer(self, consumer_id: str) -> str:
        """String with a TTL: a consumer process's heartbeat."""
        return f"{self.prefix}:consumer:{consumer_id}"

    @property
    def activity(self) -> str:
        """Sorted set: one sample of the cumulative counters per minute (score = minute epoch)."""
        return f"{self.prefix}:activity"

    def user(self, name: str) -> str:
        """Hash: one console user (role, password hash, created_at)."""
        return f"{self.prefix}:user:{name}"

    @property
    def users(self) -> str:
        """Set: the names of every console user."""
        return f"{self.prefix}:users"

    def session(self, token_digest: str) -> str:
        """Hash: one console session, by the SHA-256 of its cookie (expires with it)."""
        return f"{self.prefix}:session:{token_digest}"

    def user_sessions(self, name: str) -> str:
        """Sorted set: the session digests of one user, scored by each session's end
        (trimmed at each login, removed with the user; a set in the previous release)."""
        return f"{self.prefix}:user_sessions:{name}"

    def login_failures(self, kind: str, who: str) -> str:
        """String counter: console password checks per user and client (``pair``), per
        user, or per client, in a window (intake/console/sessions.lua)."""
        return f"{self.prefix}:login_failures:{kind}:{who}"

    @property
    def layout(self) -> str:
        """String: the Redis layout's version (dispatcher/store/layout.py); absent before
        it existed."""
        return f"{self.prefix}:layout"

    @property
    def layout_lock(self) -> str:
        """String with a TTL: the token of the process migrating the layout."""
        return f"{self.prefix}:layout:lock"

    def notify_event(self, event_id: str) -> str:
        """Hash: one outcome notification in the outbox (execution.lua writes it with the
        outcome; outbox.lua sends, settles and removes it)."""
        return f"{self.prefix}:notify:event:{event_id}"

    def notify_job(self, job_id: str) -> str:
        """List: a job's undelivered notification ids, oldest first (only the first is due)."""
        return f"{self.prefix}:notify:job:{job_id}"

    @property
    def notify_due(self) -> str:
        """Sorted set: notifications that may be sent, by when (a claim's lease end, or the
        next retry)."""
        return f"{self.prefix}:notify:due"

    @property
    def notify_pending(self) -> str:
        """Sorted set: every undelivered notification not failed, by created_at."""
        return f"{self.prefix}:notify:pending"

    @property
    def notify_failed(self) -> str:
        """Sorted set: notifications not delivered within DISPATCHER_NOTIFY_RETRY_S, by when
        they failed (kept for `dispatcher notify retry`)."""
        return f"{self.prefix}:notify:failed"

    @property
    def pattern(self) -> str:
        return f"{self.prefix}:*"
