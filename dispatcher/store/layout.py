"""The Redis layout's version, checked by every process that starts, and its migrations.

A fleet is upgraded while Redis holds its jobs: queued, retrying, in flight, dead.
Redis records which layout it holds in ``{prefix}:layout`` (``layout.lua`` beside
this file documents the keys), and each release knows one version,
:data:`LAYOUT_VERSION`. At start:

* a **worker** (``workers/celery_app.py``) migrates an older layout in place, one
  step at a time (:data:`MIGRATIONS`), and refuses a newer one (exit 1, an error
  naming both versions);
* the **intake** (``dispatcher serve``), the **CLI** and the **producers** (once per
  process, before the first enqueue) refuse a newer layout, and an older one that
  still needs a migration (the workers are upgraded first and migrate it: README
  "Upgrading"). Their error is a :class:`~dispatcher.model.errors.LayoutMismatch`, a kind of
  ``BrokerUnavailable``: exit 1, HTTP 503, or a producer's retry later.

Writers (workers, producers) record the version where it is missing; readers (the
intake at start, the CLI) only look, so that a dry run or ``dispatcher status``
changes nothing in Redis.

What "holds an older layout" means without the key: release 1c0038d wrote none, so a
Redis with no version but with dispatcher data is version 1. "Has data" is one
``EXISTS`` of a few keys that any use leaves behind (the stats hash that every
enqueue counts in, the console users, the workers seen, the retry set, the queue's
lists): never a ``SCAN``. With no version and none of them, the Redis is fresh, and
the first writer to check writes its own version in the same script step.

Migrations run under a lock (``{prefix}:layout:lock``, ``SET NX PX``): one process
migrates, the others starting at the same moment wait until the version is the
one they know (or the lock lapses: a migrator that died). Each step must be
idempotent (a migrator killed half-way leaves the version where it was, and the
next one runs the step again), and the version moves only while the migrator's
token still holds the lock (fenced, in the same script step). Each step is logged
as ``layout.migrated`` (``from_version``, ``to_version``).

Versions:

1. The layout of release 1c0038d (no version key), and of this release: it reads
   everything 1c0038d wrote as 1c0038d did, and writes nothing that a 1c0038d worker
   would misread during a rolling restart (``tests/upgrade`` proves both, with the
   fixture of 1c0038d's Redis and both releases' workers on one Redis). So there
   is no migration yet; a release that changes a key, a value or a job message in
   a way the previous release's workers would misread raises the version and adds
   its step here.
"""

from __future__ import annotations

import secrets
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from dispatcher.config import logs
from dispatcher.config.settings import redact_url
from dispatcher.model.errors import LayoutMismatch, LayoutNotMigrated, LayoutTooNew
from dispatcher.store.backend import Backend
from dispatcher.store.connection import broker_errors
from dispatcher.store.replies import text

__all__ = [
    "LAYOUT_VERSION",
    "MIGRATIONS",
    "LayoutState",
    "Migration",
    "check_layout",
    "ensure_layout",
    "read_layout",
    "stored_version",
]

#: The layout version this release reads and writes.
LAYOUT_VERSION = 1
#: The version of a Redis that holds dispatcher data and no version key (release
#: 1c0038d and earlier).
UNVERSIONED = 1

_SOURCE = resources.files("dispatcher.store").joinpath("layout.lua").read_text(encoding="utf-8")
_log = logs.get_logger("dispatcher.store.layout")


@dataclass(frozen=True)
class Migration:
    """One step, from ``from_version`` to ``from_version + 1``; ``run`` is idempotent."""

    from_version: int
    summary: str
    run: Callable[[Backend], None]


#: The steps, by the version they start from. Empty: version 1 is the only one so far.
MIGRATIONS: Mapping[int, Migration] = {}


@dataclass(frozen=True)
class LayoutState:
    """What a check found and did."""

    #: the version Redis holds now
    version: int
    #: the version it held when the check began; None for a fresh Redis
    found: int | None
    #: the versions this process migrated from (in order)
    migrated: tuple[int, ...] = ()
    #: True when the version key was absent and this process wrote it
    recorded: bool = False


#: Backends whose layout this process found current already, by (id, written): producers
#: and the CLI check once per process.
_checked: weakref.WeakValueDictionary[tuple[int, bool], Backend] = weakref.WeakValueDictionary()


class _Script:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._script: Any = backend.redis.register_script(_SOURCE)
        self._keys = [backend.keys.prefix, backend.keys.queue]

    def call(self, command: str, *args: Any) -> Any:
        with broker_errors(self.backend.settings):
            return self._script(keys=self._keys, args=[command, *args])


def _version(raw: Any, key: str) -> int:
    value = text(raw)
    if not value.isdigit() or int(value) < 1:
        raise LayoutMismatch(
            f"{key} holds {value!r}, not a layout version (a whole number from 1): "
            "something else wrote it; check what shares this Redis and prefix",
            found=0,
            supported=LAYOUT_VERSION,
        )
    return int(value)


def stored_version(backend: Backend) -> int | None:
    """The version key's value alone (None when absent): one GET, for a running worker's
    periodic look (workers/scheduler.py)."""
    with broker_errors(backend.settings):
        raw = backend.redis.get(backend.keys.layout)
    return None if raw is None else _version(raw, backend.keys.layout)


def read_layout(backend: Backend) -> int | None:
    """The layout version Redis holds (1 when the key is absent but data is there), or
    None for a fresh Redis. Read only: `dispatcher status` and the tests use it."""
    with broker_errors(backend.settings):
        raw = backend.redis.get(backend.keys.layout)
        if raw is not None:
            return _version(raw, backend.keys.layout)
        markers = [
            backend.keys.stats,
            backend.keys.users,
            backend.keys.workers,
            backend.keys.scheduled,
            backend.keys.queue,
        ]
        for name in backend.settings.dialers.names:
            markers += [backend.keys.lane(name, "realtime"), backend.keys.lane(name, "bulk")]
        return UNVERSIONED if backend.redis.exists(*markers) else None


def _too_new(backend: Backend, found: int, current: int, role: str) -> LayoutTooNew:
    return LayoutTooNew(
        f"the Redis layout at {redact_url(backend.settings.redis_url)} is version {found} "
        f"({backend.keys.layout}), newer than version {current}, the one this release "
        f"of the {role} knows: a newer release wrote it, and this one would misread it. "
        "Run that release (or a newer one); to go back to this one, see README "
        '"Upgrading" (rolling back)',
        found=found,
        supported=current,
    )


def check_layout(
    backend: Backend,
    *,
    role: str,
    migrate: bool = False,
    write: bool = False,
    current: int = LAYOUT_VERSION,
    migrations: Mapping[int, Migration] = MIGRATIONS,
    lock_ms: int = 600_000,
    poll_s: float = 0.1,
) -> LayoutState:
    """Check (and with ``migrate``, bring up to ``current``) the layout of ``backend``.

    ``role`` names the process in errors and logs (worker, intake, CLI, producer).
    ``write`` (implied by ``migrate``): record the version where it is missing (a fresh
    Redis, or the previous release's); a reader changes nothing. Raises LayoutTooNew
    for a newer layout, LayoutNotMigrated for an older one when not ``migrate``,
    BrokerUnavailable when Redis cannot be reached.
    ``current`` and ``migrations`` are this release's; tests give others.
    """
    write = write or migrate
    state = _check(backend, role, migrate, write, current, migrations, lock_ms, poll_s)
    if state.version == LAYOUT_VERSION:
        _checked[(id(backend), write)] = backend
    return state


def _check(
    backend: Backend,
    role: str,
    migrate: bool,
    write: bool,
    current: int,
    migrations: Mapping[int, Migration],
    lock_ms: int,
    poll_s: float,
) -> LayoutState:
    script = _Script(backend)
    # A plain GET first: once the version is set (every start but the first), the
    # check is a read, which a read-only replica or a Redis out of memory still answers.
    with broker_errors(backend.settings):
        stored = backend.redis.get(backend.keys.layout)
    if stored is not None:
        reply = ["set", text(stored)]
    else:
        dialers = backend.settings.dialers.names
        reply = [text(x) for x in script.call("check", current, int(write), *dialers)]
    if reply[0] == "empty":
        return LayoutState(version=current, found=None)
    if reply[0] == "fresh":
        _log.info("layout.initialised", version=current, role=role)
        return LayoutState(version=current, found=None, recorded=True)
    found = UNVERSIONED if reply[0] == "absent" else _version(reply[1], backend.keys.layout)
    if found > current:
        raise _too_new(backend, found, current, role)
    if found == current:
        if reply[0] != "absent" or not write:
            return LayoutState(version=found, found=found)
        now = _version(script.call("record", current), backend.keys.layout)
        if now > current:  # a newer process wrote its version in between
            raise _too_new(backend, now, current, role)
        _log.info("layout.recorded", version=now, role=role, found="absent")
        return LayoutState(version=now, found=found, recorded=True)
    missing = [v for v in range(found, current) if v not in migrations]
    if missing:
        raise LayoutMismatch(
            f"this release has no migration from layout version {missing[0]} "
            f"(Redis holds {found}, this release needs {current}): a defect of the release",
            found=found,
            supported=current,
        )
    if not migrate:
        raise LayoutNotMigrated(
            f"the Redis layout at {redact_url(backend.settings.redis_url)} is version {found}, "
            f"older than version {current}, the one this release of the {role} writes; "
            "this release's workers migrate it when they start: upgrade and start the "
            f'workers first, then the {role} (README "Upgrading")',
            found=found,
            supported=current,
        )
    return _migrate(backend, script, role, found, current, migrations, lock_ms, poll_s)


def _migrate(
    backend: Backend,
    script: _Script,
    role: str,
    found: int,
    current: int,
    migrations: Mapping[int, Migration],
    lock_ms: int,
    poll_s: float,
) -> LayoutState:
    token = secrets.token_hex(16)
    waiting_logged = False
    while True:
        version = read_layout(backend) or current
        if version > current:
            raise _too_new(backend, version, current, role)
        if version == current:
            # Another process migrated while this one waited.
            return LayoutState(version=version, found=found)
        if int(script.call("lock", token, lock_ms)) == 1:
            break
        if not waiting_logged:
            waiting_logged = True
            _log.info("layout.migration_waiting", version=version, to_version=current, role=role)
        time.sleep(poll_s)
    done: list[int] = []
    try:
        version = read_layout(backend) or current
        while version < current:
            step = migrations[version]
            started = time.monotonic()
            step.run(backend)
            answer = [text(x) for x in script.call("advance", token, version, version + 1)]
            if answer[0] == "fenced":
                raise LayoutMismatch(
                    f"the layout migration from version {version} took longer than its lock "
                    f"({lock_ms / 1000:g} s) and another process may have taken over: "
                    "start the worker again (each step is idempotent)",
                    found=version,
                    supported=current,
                )
            if answer[0] == "moved":  # not while we hold the lock; never seen
                version = _version(answer[1], backend.keys.layout)
                continue
            _log.info(
                "layout.migrated",
                from_version=version,
                to_version=version + 1,
                summary=step.summary,
                role=role,
                seconds=round(time.monotonic() - started, 3),
            )
            done.append(version)
            version += 1
    finally:
        script.call("unlock", token)
    return LayoutState(version=version, found=found, migrated=tuple(done))


def ensure_layout(backend: Backend, *, role: str, write: bool = False) -> None:
    """:func:`check_layout` without migrating, once per backend and process: what
    producers (``write``), the intake and the CLI run before they first touch Redis
    (a backend a worker checked at start is not checked again)."""
    if _checked.get((id(backend), True)) is backend:
        return
    if _checked.get((id(backend), write)) is not backend:
        check_layout(backend, role=role, write=write)
