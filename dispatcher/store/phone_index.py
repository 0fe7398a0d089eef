"""The phone index: which jobs and dead letters hold a phone number, without the number.

``dispatcher forget --phone`` must find everything the dispatcher keeps about a phone
without reading the whole keyspace. Every job made (``enqueue`` in execution.lua) is
listed under a keyed hash of its normalised ``phone_number``:

* ``P:phone:{h}`` a hash, job id -> the job's idempotency key ('' for none), plus
  ``#letters`` (how many of those jobs have a dead letter); ``{h}`` is the first 32 hex
  of HMAC-SHA256(index key, phone);
* ``P:job:{id}`` carries ``phone_key`` = h, so every later step of the job (its
  transitions, its dead letter) finds its index entry without the phone;
* ``P:dlq:phone_keys`` a hash, letter id -> h, for as long as the letter exists (a letter
  may outlive its job's state by months).

Lifetime (all in execution.lua): the index key lives at least as long as the job
states it lists (every write of a job's state extends it to the state's TTL plus a
margin), and has no TTL while one of its jobs has a dead letter (letters live until
replayed, purged, erased or expired by DISPATCHER_DEAD_LETTER_RETENTION_DAYS); when
the last letter goes, it gets the longest TTL of its jobs' states again and forgets
the jobs whose state is gone.

The key (see README "Security"): 32 random bytes made once per Redis (``P:index_key``,
SET NX by the first process that needs it), never configured. Every producer and every
operator tool of the deployment therefore hashes with the same key: an index made
under a key another process does not have would make erasure silently incomplete. The
price: a copy of the Redis data holds the key, so whoever has that copy can test
whether a given number is indexed (about 10^10 HMACs for every 10-digit number). The
same copy holds the dead letters, phone numbers in clear, anyway; the index only finds
what is there, and its entries leave with what they index.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading

from dispatcher.store.backend import Backend
from dispatcher.store.connection import broker_errors

__all__ = ["KEY_BYTES", "cached_index_key", "index_key", "phone_key"]

KEY_BYTES = 32
_keys: dict[tuple[str, str], bytes] = {}
_lock = threading.Lock()


def index_key(backend: Backend, *, fresh: bool = False) -> bytes:
    """The deployment's index key (made in Redis on first use; cached per process).

    ``fresh``: read it from Redis again (the enqueue script refuses a key that is not
    the one Redis holds: a Redis emptied and indexed anew since it was cached).
    """
    settings = backend.settings
    place = (settings.redis_url, settings.key_prefix)
    key = None if fresh else _keys.get(place)
    if key is not None:
        return key
    with _lock, broker_errors(settings):
        name = backend.keys.index_key
        backend.redis.set(name, secrets.token_hex(KEY_BYTES), nx=True)
        key = bytes.fromhex(str(backend.redis.get(name)))
    _keys[place] = key
    return key


def cached_index_key(backend: Backend) -> bytes | None:
    """The deployment's index key if this process read it already (no Redis I/O), else
    None (an event loop asks :func:`index_key` on a thread first)."""
    settings = backend.settings
    return _keys.get((settings.redis_url, settings.key_prefix))


def phone_key(key: bytes, phone: str) -> str:
    """The index's name for a normalised phone number (32 hex: 128 bits of HMAC-SHA256)."""
    return hmac.new(key, phone.encode(), hashlib.sha256).hexdigest()[:32]
