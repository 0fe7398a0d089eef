"""Every Redis key the dispatcher writes or reads: the one place Python builds their names.

Two families, both configurable so that a second deployment can share a Redis
server: keys under the key prefix ``P`` (``DISPATCHER_KEY_PREFIX``, default
``dispatcher``), and the Celery queue's keys, named after the queue ``Q``
(``DISPATCHER_QUEUE``, default ``dispatcher``), beside which kombu keeps its own.

The Lua scripts that change these keys build the same names from ``P`` and ``Q``
and list the keys they touch at their top, in the same notation (``P:job:{id}``);
``tests/store/test_keys.py`` checks every such list against this class, and every name a
script builds against its list. Which script changes what:

* ``execution.lua``: the job's life: ``P:job``, ``P:exec``, ``P:idem``, ``P:dl``,
  ``P:dlq``, ``P:dlq:reason``, the phone index (``P:phone``, ``P:dlq:phone_keys``,
  ``P:index_key``), ``P:scheduled``, pauses, breakers, rate limits, ``P:stats``,
  look-up records (``P:lookup``, ``P:lookups``), the lanes and ``Q.wake``;
* ``fleet.lua``: heartbeats (``P:workers``, ``P:worker``, ``P:consumer``), and the
  in-flight lists of consumers gone back to the queue;
* ``broker.lua``: the broker's pop: in-flight lists, consumer heartbeats, and kombu's
  unacked record;
* ``outbox.lua``: the outbox of outcome notifications (``P:notify:*``), which
  ``execution.lua`` writes into with each outcome, and ``P:stats``' notify counters;
* ``layout.lua``: ``P:layout``, ``P:layout:lock``;
* ``activity.lua``: ``P:activity``; ``deadletter_page.lua`` reads dead letters;
* ``dispatcher/intake/console/sessions.lua``: sessions and login throttles;
* plain commands (no script): console users (:mod:`~dispatcher.store.users`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dispatcher.config.settings import Settings

__all__ = ["KOMBU_KEYS", "Keys"]

#: Keys kombu's Redis transport keeps itself, beside the queue's lists, under the names
#: it gives them by default (the worker never configures others): the hash and sorted
#: set of delivered messages not yet acknowledged (``broker.lua`` writes both on the
#: broker's pop, as kombu's ``QoS.append`` would), the lock of its visibility sweep,
#: and its exchange bindings.
KOMBU_KEYS = ("unacked", "unacked_index", "unacked_mutex", "_kombu.binding.*")


@dataclass(frozen=True)
class Keys:
    prefix: str = "dispatcher"
    queue: str = "dispatcher"

    @classmethod
    def of(cls, settings: Settings) -> Keys:
        """The keys of a deployment (``DISPATCHER_KEY_PREFIX``, ``DISPATCHER_QUEUE``)."""
        return cls(prefix=settings.key_prefix, queue=settings.queue)

    @property
    def pattern(self) -> str:
        """Every key under the prefix (a SCAN pattern)."""
        return f"{self.prefix}:*"

    # -- the queue (Q): the broker's lists -----------------------------------------------

    def lane(self, dialer: str, priority: str) -> str:
        """List: the broker messages of one dialer's priority lane (realtime, bulk).

        The queue's own list (``queue``) is still consumed, after the default
        dialer's realtime lane: messages published by an older version.
        """
        return f"{self.queue}.{dialer}.{priority}"

    def list_lane(self, dialer: str, priority: str) -> str:
        """List: the broker messages of one dialer's priority lane of leads for a list
        (add_lead). Lanes of their own: a worker of the release before list jobs never
        polls them, so during a rolling upgrade a list job waits for a worker that serves
        it instead of becoming that worker's ``invalid_payload`` letter."""
        return f"{self.queue}.list.{dialer}.{priority}"

    def target_lane(self, dialer: str, priority: str, target: str) -> str:
        """The lane of a job by its target (``agent``: :meth:`lane`; ``list``:
        :meth:`list_lane`)."""
        if target == "list":
            return self.list_lane(dialer, priority)
        return self.lane(dialer, priority)

    @property
    def wake(self) -> str:
        """List: a token per enqueue, to wake consumers waiting on an empty fleet."""
        return f"{self.queue}.wake"

    @property
    def inflight_registry(self) -> str:
        """Set: the in-flight list of every consumer of the queue."""
        return f"_dispatcher.inflight.{self.queue}"

    def inflight(self, consumer: str) -> str:
        """List: what one consumer popped that is not a kombu message, until its dead
        letter is written (``broker.lua``)."""
        return f"_dispatcher.inflight.{self.queue}.{consumer}"

    # -- a job: its state, its execution record, its idempotency key -------------------

    def job(self, job_id: str) -> str:
        """Hash: the job's state as `dispatcher job` shows it."""
        return f"{self.prefix}:job:{job_id}"

    def execution(self, job_id: str) -> str:
        """Hash: the execution record (claim lease, delivery sequence, done + lead_id)."""
        return f"{self.prefix}:exec:{job_id}"

    def idempotency(self, key: str) -> str:
        """String: idempotency key -> the first job id enqueued with it."""
        return f"{self.prefix}:idem:{key}"

    @property
    def scheduled(self) -> str:
        """Sorted set: broker messages waiting for their retry time (score = due epoch)."""
        return f"{self.prefix}:scheduled"

    # -- dead letters -------------------------------------------------------------------

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

    # -- the phone index (dispatcher/store/phone_index.py) ------------------------------

    def phone(self, phone_key: str) -> str:
        """Hash: the jobs of one phone (by its keyed hash), and ``#letters``."""
        return f"{self.prefix}:phone:{phone_key}"

    @property
    def dead_letter_phones(self) -> str:
        """Hash: dead-letter id -> its phone's keyed hash, while the letter exists."""
        return f"{self.prefix}:dlq:phone_keys"

    @property
    def dead_letter_index_cursor(self) -> str:
        """String: how far the pass that puts the previous release's letters into the
        phone index has got (a last-failure score), or ``done``
        (dispatcher/store/letter_index.py)."""
        return f"{self.prefix}:dlq:index_cursor"

    @property
    def index_key(self) -> str:
        """String: the phone index's HMAC key (hex), made once per Redis."""
        return f"{self.prefix}:index_key"

    # -- the fleet: pauses, breakers, rate limits, look-ups, counters -------------------

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

    def add_lock(self, server: str, phone_key: str) -> str:
        """String with a TTL: the job id of the one add_lead call in flight for a phone
        (its phone index key) on a dialer, fleet-wide."""
        return f"{self.prefix}:addlock:{server}:{phone_key}"

    def lookup(self, server: str) -> str:
        """Hash with a TTL: what the last look-up or check of the server's Non-Agent API
        found (reconciliation)."""
        return f"{self.prefix}:lookup:{server}"

    @property
    def lookups(self) -> str:
        """Set with a TTL: the servers that have a lookup hash."""
        return f"{self.prefix}:lookups"

    @property
    def stats(self) -> str:
        """Hash: fleet-wide counters (enqueued, added, dead_lettered:reason...)."""
        return f"{self.prefix}:stats"

    @property
    def activity(self) -> str:
        """Sorted set: one sample of the cumulative counters per minute (score = minute epoch)."""
        return f"{self.prefix}:activity"

    # -- liveness (fleet.lua) ------------------------------------------------------------

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

    def served(self, dialer: str) -> str:
        """String with a TTL (the heartbeat's): some live worker serves ``dialer``."""
        return f"{self.prefix}:served:{dialer}"

    @property
    def lanes(self) -> str:
        """Set: every lane (but the queue's own list) a message was pushed onto."""
        return f"{self.prefix}:lanes"

    # -- the console: users, sessions, login throttles -----------------------------------

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

    def pair_failures(self, user: str, client: str) -> str:
        """String counter: console password checks for one user name from one client
        address, in a window (``user``: the digest of the name typed)."""
        return f"{self.prefix}:login_failures:pair:{user}:{client}"

    def user_failures(self, user: str) -> str:
        """String counter: console password checks for one user name, every address."""
        return f"{self.prefix}:login_failures:user:{user}"

    def client_failures(self, client: str) -> str:
        """String counter: console password checks from one address, every user name."""
        return f"{self.prefix}:login_failures:client:{client}"

    # -- the layout's version (dispatcher/store/layout.py) --------------------------------

    @property
    def layout(self) -> str:
        """String: the Redis layout's version; absent before it existed."""
        return f"{self.prefix}:layout"

    @property
    def layout_lock(self) -> str:
        """String with a TTL: the token of the process migrating the layout."""
        return f"{self.prefix}:layout:lock"

    # -- outcome notifications: the outbox (dispatcher/store/outbox.py) ------------------

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
