"""The job's execution record and every transition of a job, as one Lua script.

The state machine, the Redis key layout and each command are documented at the
top of ``execution.lua`` (beside this file), the one place that changes those
keys. :class:`Execution` gives each command a typed Python method (what the commands
answer, typed: :mod:`dispatcher.store.replies`); producers, the dead-letter store, the
CLI and the workers all go through it, so a late or repeated writer can never undo
``done``.

Tokens: a worker names each delivery of a message with a fresh random token and
claims the job with it. Outcomes are compare-and-set on that token, so a copy
that lost its claim cannot overwrite what the claim's new holder decided, and a
write repeated after a lost reply (the same token) is recognised as done.

The fence (:class:`Fence`): a claim is a lease in Redis's clock, and nothing in
Redis can stop a request that leaves a worker after the lease ran out. So right
before the request, the worker checks how old its claim may be: it stamps its own
clock (:func:`claim_clock`) *before* the claim command leaves (Redis grants the
claim after that), and sends only if the call, at its deadline, still ends inside
the lease (with :data:`FENCE_MARGIN_S` to spare). A worker frozen between claim and
request past its lease (SIGSTOP, ``docker pause``, a suspended machine, a long GC, a
blocked loop) thus never sends; it raises :class:`~dispatcher.model.errors.ClaimLapsed`,
and the job goes on as a copy of it would (claimed again).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, NamedTuple

import redis

from dispatcher.model.errors import ClaimLapsed
from dispatcher.store.direct import ThreadConnections
from dispatcher.store.outbox import Notify
from dispatcher.store.replies import Claim, LookupGate, text

__all__ = [
    "FENCE_MARGIN_S",
    "EnqueueItem",
    "Execution",
    "Fence",
    "IndexKeyChanged",
    "claim_clock",
    "new_token",
]

_SOURCE = resources.files("dispatcher.store").joinpath("execution.lua").read_text(encoding="utf-8")


class EnqueueItem(NamedTuple):
    """One job of an ``enqueue`` command."""

    job_id: str
    envelope: str
    agent_user: str
    #: '' for none
    idempotency_key: str
    #: what the key is bound to (dispatcher.ops.producer.fingerprint)
    fingerprint: str
    lane: str
    #: the job's phone index key ('' for none)
    phone_key: str
    #: more fields of the job state, a JSON object of strings ('' for none): a list
    #: job's target (target, target_list_id, campaign_id)
    state_fields: str = ""


class IndexKeyChanged(Exception):
    """The phone index's key given to ``enqueue`` is not the one Redis holds (Redis was
    emptied and indexed anew since the caller read it): read it again and resend."""


def new_token() -> str:
    """A token for one delivery of a job (its claim and outcome writes).

    Unique, not secret: 128 bits of the process's generator, which Python seeds
    from the OS and seeds again in a forked child (uuid4 asks the OS every time).
    """
    return f"{random.getrandbits(128):032x}"


def _boottime() -> int | None:
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    if clock is None:
        return None
    try:
        time.clock_gettime(clock)
    except OSError:  # a kernel or sandbox without it
        return None
    return int(clock)


_BOOTTIME = _boottime()


def claim_clock() -> float:
    """Seconds on the clock that fences claims: never set back (NTP, an operator), and
    counting while this process is stopped (SIGSTOP, ``docker pause``: every system
    clock does) *and* while the machine is suspended: Linux's CLOCK_BOOTTIME, where
    CLOCK_MONOTONIC (``time.monotonic``, the fallback elsewhere) stands still, so a
    worker woken from a suspend would think its old claim fresh. A VM whose hypervisor
    freezes the guest's clocks while paused is seen by no guest clock (README)."""
    if _BOOTTIME is not None:
        return time.clock_gettime(_BOOTTIME)
    return time.monotonic()


#: What a call must leave of its claim's lease beyond its own deadline when it is
#: sent: the timers that end a call fire a little late, and a claim's clock and
#: Redis's may run at slightly different rates.
FENCE_MARGIN_S = 0.5


@dataclass
class Fence:
    """Whether a delivery may still send its call: only if the call ends, at its
    deadline, inside the lease its claim was granted.

    ``asked_at``: :func:`claim_clock` taken before the claim command was sent (the
    grant came after it, so the claim's age is at most ``clock() - asked_at``);
    ``lease_s``: the lease granted (a reserved rate-limit slot's delay included);
    ``call_s``: the call's deadline plus :data:`FENCE_MARGIN_S`.
    """

    asked_at: float
    lease_s: float
    call_s: float
    clock: Callable[[], float] = field(default=claim_clock, repr=False)
    #: the check refused the call (the request was not sent)
    lapsed: bool = False

    def age(self) -> float:
        """At most how long ago the claim was granted."""
        return self.clock() - self.asked_at

    def check(self) -> None:
        """Right before the request leaves: raise ClaimLapsed if the call could outlive
        the claim (the request is then not sent)."""
        age = self.age()
        if age + self.call_s > self.lease_s:
            self.lapsed = True
            raise ClaimLapsed(age_s=age, lease_s=self.lease_s, call_s=self.call_s)


class Execution:
    """The commands of execution.lua, bound to one Redis client, prefix and queue."""

    def __init__(self, client: redis.Redis, *, prefix: str, queue: str) -> None:
        self._client = client
        self._script: Any = client.register_script(_SOURCE)
        self._keys = [prefix, queue]
        self._direct: ThreadConnections | None = None

    def direct(self) -> Execution:
        """The same commands, each thread on its own connection outside the pool (a
        worker's hot path, :mod:`dispatcher.store.direct`; falls back to the pool where
        that cannot be done)."""
        other = Execution.__new__(Execution)
        other.__dict__.update(self.__dict__)
        if ThreadConnections.supports(self._client):
            other._direct = ThreadConnections(self._client)
        return other

    @property
    def connections(self) -> ThreadConnections | None:
        """The per-thread connections of a :meth:`direct` copy (None: through the pool)."""
        return self._direct

    def call(self, command: str, *args: Any, client: Any = None) -> Any:
        """Run one command (``client``: a pipeline to queue it on instead)."""
        direct = self._direct
        if client is None and direct is not None:
            script = self._script
            try:
                return direct.execute("EVALSHA", script.sha, 2, *self._keys, command, *args)
            except redis.exceptions.NoScriptError:
                # A restarted or flushed Redis: EVAL loads it again as it runs.
                return direct.execute("EVAL", script.script, 2, *self._keys, command, *args)
        return self._script(keys=self._keys, args=[command, *args], client=client)

    def script_command(self, call: tuple[Any, ...]) -> tuple[Any, ...]:
        """The EVALSHA command of one call (``(command, *args)``), as sent on the wire."""
        return ("EVALSHA", self._script.sha, len(self._keys), *self._keys, *call)

    @property
    def source(self) -> str:
        """The script's Lua text (to load it again after a NOSCRIPT: a restarted Redis)."""
        return _SOURCE

    def call_many(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        """Run several commands (each ``(command, *args)``) in one round trip, in order.

        Each reply is in its command's place, or the exception of an error reply
        (a write refused under OOM, ...); a lost connection raises for the whole
        batch. Not atomic: each command is a script of its own, as with
        :meth:`call`.
        """
        script = self._script
        head = (script.sha, len(self._keys), *self._keys)
        direct = self._direct
        if direct is not None:
            replies = direct.execute_many([("EVALSHA", *head, *call) for call in calls])
        else:
            pipe = self._client.pipeline(transaction=False)
            for call in calls:
                pipe.evalsha(*head, *call)
            replies = pipe.execute(raise_on_error=False)
        noscript = redis.exceptions.NoScriptError
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, noscript)]
        if missing:
            # A restarted or flushed Redis: load the script, run those again.
            self.load()
            again = self.call_many([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    def queue(self, pipe: Any, command: str, *args: Any) -> None:
        """Queue one command on ``pipe`` as a bare EVALSHA (redis-py would add a SCRIPT
        EXISTS round trip to every execute); the caller handles NoScriptError."""
        pipe.evalsha(self._script.sha, len(self._keys), *self._keys, command, *args)

    def load(self) -> None:
        """Load the script into Redis (after a NOSCRIPT: a restarted or flushed server)."""
        self._script.registered_client.script_load(self._script.script)

    # -- producers ------------------------------------------------------------------------

    def enqueue(
        self,
        items: list[EnqueueItem],
        *,
        now: float,
        ttl: int,
        strict: bool,
        index_key: str = "",
    ) -> list[tuple[str, str]]:
        """Enqueue jobs (:class:`EnqueueItem`; a plain 7-tuple has no state fields);
        ``index_key``: the phone index's key, hex.

        Returns per job ("new" | "existing" | "conflict", job id). With ``strict``
        a single conflict writes nothing (the others come back as ("", "")). Raises
        :class:`IndexKeyChanged` (nothing written) when ``index_key`` is not the key
        Redis holds.
        """
        args: list[Any] = [ttl, "1" if strict else "0", index_key]
        stamp = f"{now:.6f}"
        for item in items:
            job_id, envelope, agent, key, fingerprint, lane, phone, *more = item
            extra = more[0] if more else ""
            args += [job_id, envelope, agent, key, fingerprint, stamp, lane, phone, extra]
        kinds = {"n": "new", "e": "existing", "c": "conflict"}
        out = []
        reply = self.call("enqueue", *args)
        if len(reply) == 1 and text(reply[0]) == "rekey":
            raise IndexKeyChanged
        for raw in reply:
            answer = text(raw)
            out.append((kinds[answer[0]], answer[2:]) if answer else ("", ""))
        return out

    # -- workers --------------------------------------------------------------------------

    def claim(self, job_id: str, **options: Any) -> Claim:
        """Claim the job for a delivery (options: :meth:`claim_args`)."""
        return Claim.from_reply(self.call(*self.claim_args(job_id, **options)))

    @staticmethod
    def claim_args(
        job_id: str,
        *,
        seq: int,
        token: str,
        lease_s: float,
        ttl: int,
        rate_interval_s: float,
        worker: str,
        max_rate_wait_s: float,
        server: str,
        scope: str = "",
        lock: str = "",
    ) -> tuple[Any, ...]:
        """The ``claim`` command, for :meth:`call` or :meth:`call_many`.

        ``scope``: a second pause the job obeys (a list job's: ``{server}:list``);
        ``lock``: the phone key whose add_lead lock the claim takes ('' for none)."""
        return (
            "claim",
            job_id,
            seq,
            token,
            lease_s,
            ttl,
            rate_interval_s,
            worker,
            max_rate_wait_s,
            server,
            scope,
            lock,
        )

    def succeed(self, job_id: str, *, client: Any = None, **options: Any) -> Any:
        """Store a success (options: :meth:`succeed_args`; ``client``: a pipeline)."""
        return self.call(*self.succeed_args(job_id, **options), client=client)

    @staticmethod
    def succeed_args(
        job_id: str,
        *,
        token: str,
        lead_id: str,
        list_id: str,
        campaign: str,
        done_ttl: int,
        ttl: int,
        attempts: int,
        latency_field: str,
        latency_ms: float,
        server: str,
        state_fields: str = "",
        notify: Notify | None = None,
    ) -> tuple[Any, ...]:
        """The ``succeed`` command, for :meth:`call` or :meth:`call_many`;
        ``state_fields``: more fields of the job state, a JSON object of strings;
        ``notify``: the outcome notification to write with it
        (:func:`dispatcher.store.outbox.notify_for`)."""
        return (
            "succeed",
            job_id,
            token,
            lead_id,
            list_id,
            campaign,
            done_ttl,
            ttl,
            attempts,
            latency_field,
            f"{latency_ms:.3f}",
            server,
            state_fields,
            *Notify.tail(notify),
        )

    @staticmethod
    def duplicate_args(
        job_id: str,
        *,
        token: str,
        existing_lead_id: str,
        list_id: str,
        check: str,
        done_ttl: int,
        ttl: int,
        attempts: int,
        server: str,
        notify: Notify | None = None,
    ) -> tuple[Any, ...]:
        """The ``duplicate`` command (add_lead's duplicate check found a lead: the final
        state ``duplicate``), for :meth:`call` or :meth:`call_many`; ``notify``: the
        ``lead.duplicate`` notification to write with it."""
        return (
            "duplicate",
            job_id,
            token,
            existing_lead_id,
            list_id,
            check,
            done_ttl,
            ttl,
            attempts,
            server,
            *Notify.tail(notify),
        )

    def retry(
        self,
        job_id: str,
        *,
        token: str,
        seq: int,
        envelope: str,
        delay_s: float,
        ttl: int,
        attempts: int,
        reason: str,
        error: str,
        http_status: int | None,
        server: str,
    ) -> list[str]:
        reply = self.call(
            "retry",
            job_id,
            token,
            seq,
            envelope,
            f"{delay_s:.6f}",
            ttl,
            attempts,
            reason,
            error,
            "" if http_status is None else http_status,
            server,
        )
        return [text(x) for x in reply]

    def defer(
        self, job_id: str, *, token: str, seq: int, envelope: str, delay_s: float, ttl: int
    ) -> list[str]:
        reply = self.call("defer", job_id, token, seq, envelope, f"{delay_s:.6f}", ttl)
        return [text(x) for x in reply]

    def await_dialer(
        self,
        job_id: str,
        *,
        seq: int,
        envelope: str,
        delay_s: float,
        wait_s: float,
        dialer: str,
        error: str,
        ttl: int,
    ) -> list[str]:
        """Hand a job whose dialer this worker does not know back for one that does (see
        execution.lua ``await_dialer``): waiting, expired, done or stale."""
        reply = self.call(
            "await_dialer",
            job_id,
            seq,
            envelope,
            f"{delay_s:.6f}",
            f"{wait_s:.6f}",
            dialer,
            error,
            ttl,
        )
        return [text(x) for x in reply]

    def dead(
        self,
        job_id: str,
        *,
        token: str,
        seq: int,
        record: str,
        score: float,
        reason: str,
        attempts: int,
        error: str,
        http_status: int | None,
        ttl: int,
        server: str = "",
        notify: Notify | None = None,
        phone_key: str = "",
        idempotency_key: str = "",
        index_key: str = "",
    ) -> list[str]:
        reply = self.call(
            "dead",
            job_id,
            token,
            seq,
            record,
            f"{score:.6f}",
            reason,
            attempts,
            error,
            "" if http_status is None else http_status,
            ttl,
            server,
            *Notify.tail(notify),
            phone_key,
            idempotency_key,
            index_key,
        )
        return [text(x) for x in reply]

    def poison(
        self,
        dl_id: str,
        *,
        record: str,
        score: float,
        ttl: int,
        inflight: str = "",
        raw: str | bytes = "",
    ) -> bool:
        """Write an invalid_payload letter; False if ``dl_id`` belongs to a job already."""
        reply = self.call("poison", dl_id, record, f"{score:.6f}", ttl, inflight, raw)
        return text(reply[0]) == "ok"

    # -- operators ------------------------------------------------------------------------

    @staticmethod
    def replay_args(dl_id: str, *, envelope: str, seq: int, ttl: int, lane: str) -> tuple[Any, ...]:
        """The ``replay`` command, for :meth:`call` or :meth:`call_many`."""
        return ("replay", dl_id, envelope, seq, ttl, lane)

    @staticmethod
    def replay_answer(reply: Any) -> str:
        """The first word of a ``replay`` reply (replayed, done, missing, busy, conflict)."""
        return text(reply[0])

    def purge(self, dl_id: str) -> bool:
        return bool(int(self.call("purge", dl_id)))

    def index_letters(self, letters: Sequence[tuple[str, str, str]], *, cursor: str = "") -> int:
        """Index dead letters that the phone index lacks: (letter id, phone key,
        idempotency key) each; letters indexed already are left alone. ``cursor``: where
        the pass over the previous release's letters has got to (a score, or ``done``).
        How many letters joined."""
        if not letters and not cursor:
            return 0
        args = [x for letter in letters for x in letter]
        return int(self.call("index_letters", cursor, *args))

    def expire_letters(self, *, before: float, limit: int) -> list[tuple[str, str]]:
        """Remove dead letters whose last failure is before ``before`` (epoch), at most
        ``limit``, oldest first: (id, reason) of each removed."""
        items = [text(x) for x in self.call("expire_letters", f"{before:.6f}", limit)]
        return list(zip(items[0::2], items[1::2], strict=True))

    def forget(
        self,
        phone_key: str,
        *,
        dry_run: bool,
        ttl: int,
        extra: list[tuple[str, str]] | None = None,
    ) -> dict[str, int]:
        """Erase every job listed under one phone key, and the ``extra`` (job id,
        idempotency key) pairs (see execution.lua ``forget``): counts by kind
        (job_states, dead_letters, idempotency_records, stopped, in_flight);
        ``dry_run`` counts without changing anything."""
        pairs = [x for pair in extra or [] for x in pair]
        reply = self.call("forget", phone_key, "1" if dry_run else "0", ttl, *pairs)
        items = [text(x) for x in reply]
        return {kind: int(n) for kind, n in zip(items[0::2], items[1::2], strict=True)}

    # -- the fleet ------------------------------------------------------------------------

    def move_due(self, *, limit: int) -> int:
        return int(self.call("move_due", limit))

    def network_failure(
        self, server: str, *, threshold: int, base_s: float, max_s: float
    ) -> tuple[int, float | None, bool]:
        """(consecutive failures, seconds the server stays paused or None, newly tripped)."""
        n, seconds, tripped = self.call("network_failure", server, threshold, base_s, max_s)
        left = text(seconds)
        return int(n), (float(left) if left else None), bool(int(tripped))

    def pause(self, server: str, *, seconds: float, reason: str, error: str) -> None:
        self.call("pause", server, seconds, reason, error)

    def extend_pause(self, server: str, *, seconds: float) -> None:
        self.call("extend_pause", server, seconds)

    def resume(self, server: str) -> None:
        self.call("resume", server)

    def pauses(self) -> Any:
        """Every pause; see :func:`parse_pauses` (``queue(pipe, "pauses")`` in a pipeline)."""
        return self.call("pauses")

    # -- reconciliation -------------------------------------------------------------------

    def await_lookup(
        self,
        job_id: str,
        *,
        token: str,
        seq: int,
        envelope: str,
        delay_s: float,
        ttl: int,
        attempts: int,
        error: str,
        http_status: int | None,
        server: str,
    ) -> list[str]:
        reply = self.call(
            "await_lookup",
            job_id,
            token,
            seq,
            envelope,
            f"{delay_s:.6f}",
            ttl,
            attempts,
            error,
            "" if http_status is None else http_status,
            server,
        )
        return [text(x) for x in reply]

    def reconciled(
        self,
        job_id: str,
        *,
        token: str,
        lead_id: str,
        list_id: str,
        duplicates: tuple[str, ...],
        done_ttl: int,
        ttl: int,
        attempts: int,
        server: str,
        notify: Notify | None = None,
    ) -> list[str]:
        reply = self.call(
            "reconciled",
            job_id,
            token,
            lead_id,
            list_id,
            ",".join(duplicates),
            done_ttl,
            ttl,
            attempts,
            server,
            *Notify.tail(notify),
        )
        return [text(x) for x in reply]

    def duplicates(
        self,
        job_id: str,
        *,
        lead_ids: tuple[str, ...],
        deleted: tuple[str, ...],
        ttl: int,
        unverified: tuple[str, ...] = (),
    ) -> int:
        return int(
            self.call(
                "duplicates",
                job_id,
                ",".join(lead_ids),
                ",".join(deleted),
                ttl,
                ",".join(unverified),
            )
        )

    def verify_later(
        self, job_id: str, *, lead_id: str, envelope: str, delay_s: float, ttl: int
    ) -> list[str]:
        reply = self.call("verify_later", job_id, lead_id, envelope, f"{delay_s:.6f}", ttl)
        return [text(x) for x in reply]

    def reconcile(
        self, dl_id: str, *, envelope: str, seq: int, ttl: int, delay_s: float
    ) -> list[str]:
        reply = self.call("reconcile", dl_id, envelope, seq, ttl, f"{delay_s:.6f}")
        return [text(x) for x in reply]

    def gate(self, server: str, *, rate_interval_s: float, max_rate_wait_s: float) -> Claim:
        """Pause and rate limit for a request that is not a job's call (verdict paused,
        throttled or ok, as a claim's)."""
        return Claim.from_reply(self.call("gate", server, rate_interval_s, max_rate_wait_s))

    def lookup_gate(self, server: str, *, mode: str, lease_s: float, fresh_s: float) -> LookupGate:
        return LookupGate.from_reply(self.call("lookup_gate", server, mode, lease_s, fresh_s))

    def lookup_record(
        self, server: str, *, state: str, error: str, missing: str, fix: str, hold_s: float
    ) -> str:
        """Store what a look-up or check found; the state recorded before."""
        return text(self.call("lookup_record", server, state, error, missing, fix, hold_s))

    def lookup_release(self, server: str) -> bool:
        return bool(int(self.call("lookup_release", server)))

    @staticmethod
    def parse_lookups(reply: Any) -> tuple[float, dict[str, dict[str, str]]]:
        """(Redis time, server -> {state, checked_at, error, missing, fix}) from ``lookups``."""
        items = [text(x) for x in reply]
        now = float(items[0])
        out: dict[str, dict[str, str]] = {}
        for i in range(1, len(items), 6):
            server, state, checked_at, error, missing, fix = items[i : i + 6]
            out[server] = {
                "state": state,
                "checked_at": checked_at,
                "error": error,
                "missing": missing,
                "fix": fix,
            }
        return now, out

    @staticmethod
    def parse_pauses(reply: Any) -> tuple[float, dict[str, dict[str, str]]]:
        """(Redis time, server -> {until, reason, kind, since}) from a ``pauses`` reply."""
        items = [text(x) for x in reply]
        now = float(items[0])
        out: dict[str, dict[str, str]] = {}
        for i in range(1, len(items), 5):
            server, until, reason, kind, since = items[i : i + 5]
            out[server] = {"until": until, "reason": reason, "kind": kind, "since": since}
        return now, out
