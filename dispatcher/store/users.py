"""Operator-console users: names, roles, and passwords kept only as Argon2id hashes.

Layout in Redis (under the key prefix, see :class:`~dispatcher.store.keys.Keys`):

* ``user:{name}`` a hash: ``role``, ``password_hash`` (Argon2id, salted, in the
  PHC string format argon2-cffi writes), ``created_at``;
* ``users`` the set of every name, so listing never SCANs.

Roles (DESIGN.md, "Operator console"): a ``viewer`` reads; an ``operator`` also
replays, purges and reconciles. The hash parameters are argon2-cffi's defaults
(RFC 9106's low-memory profile: 64 MiB, 3 passes), slow on purpose; a hash made
with older parameters is upgraded at the next successful login.

A wrong name and a wrong password cost the same time: an unknown name is checked
against a dummy hash, so timing does not tell which names exist.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from dispatcher.config.settings import Settings
from dispatcher.model.errors import UnknownUser, UserError, UserExists
from dispatcher.model.jobs import iso
from dispatcher.store.backend import Backend, get_backend
from dispatcher.store.connection import broker_errors

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "ROLES",
    "Role",
    "User",
    "UserStore",
    "check_name",
    "check_password",
]

Role = Literal["viewer", "operator"]
ROLES: tuple[Role, ...] = ("viewer", "operator")
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
_NAME_RE = re.compile(r"^[-_.@0-9a-zA-Z]{1,64}$")
_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified when the name is unknown, so that both cases cost one Argon2 check.

    Made on first use, not at import: every `dispatcher` command imports this module.
    """
    return _hasher.hash("not a password of anyone")


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    created_at: str | None = None

    @property
    def can_act(self) -> bool:
        """Replay, purge, reconcile: operators only."""
        return self.role == "operator"

    def to_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "role": self.role, "created_at": self.created_at}


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise UserError(f"name {name!r}: must be 1-64 of letters, digits, '-', '_', '.', '@'")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password: must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UserError(f"password: must be at most {MAX_PASSWORD_LENGTH} characters")
    return password


def _role(value: str | None) -> Role:
    return "operator" if value == "operator" else "viewer"


class UserStore:
    """Add, remove, list and authenticate console users."""

    def __init__(self, backend: Backend | None = None, *, settings: Settings | None = None):
        self.backend = backend or get_backend(settings)
        self.keys = self.backend.keys
        self.redis = self.backend.redis

    def add(self, name: str, *, role: str, password: str, replace: bool = False) -> User:
        """Create a user (``replace``: overwrite one, ending its sessions); UserError if bad."""
        check_name(name)
        if role not in ROLES:
            raise UserError(f"role {role!r}: must be one of {', '.join(ROLES)}")
        check_password(password)
        hashed = _hasher.hash(password)
        now = time.time()
        key = self.keys.user(name)
        with broker_errors(self.backend.settings):
            if replace:
                self.end_sessions(name)
                pipe = self.redis.pipeline(transaction=True)
                pipe.hset(
                    key,
                    mapping={"role": role, "password_hash": hashed, "created_at": f"{now:.3f}"},
                )
                pipe.sadd(self.keys.users, name)
                pipe.execute()
            else:
                # HSETNX on the role decides who created the user, atomically.
                if not self.redis.hsetnx(key, "role", role):
                    raise UserExists(
                        f"user {name!r} exists (add --replace to set a new password or role)"
                    )
                pipe = self.redis.pipeline(transaction=True)
                pipe.hset(key, mapping={"password_hash": hashed, "created_at": f"{now:.3f}"})
                pipe.sadd(self.keys.users, name)
                pipe.execute()
        return User(name=name, role=_role(role), created_at=iso(now))

    def remove(self, name: str) -> None:
        """Delete a user and end every session of theirs; UserError if there is none."""
        with broker_errors(self.backend.settings):
            self.end_sessions(name)
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(self.keys.user(name))
            pipe.srem(self.keys.users, name)
            deleted, _ = pipe.execute()
        if not deleted:
            raise UnknownUser(f"no user {name!r}")

    def end_sessions(self, name: str) -> int:
        """Log a user out everywhere; returns how many sessions ended."""
        index = self.keys.user_sessions(name)
        with broker_errors(self.backend.settings):
            # A sorted set (scored by each session's end); a set from the previous release.
            members: Any = (
                self.redis.smembers(index)
                if self.redis.type(index) == "set"
                else self.redis.zrange(index, 0, -1)
            )
            digests = [str(d) for d in members]
            pipe = self.redis.pipeline(transaction=True)
            for digest in digests:
                pipe.delete(self.keys.session(str(digest)))
            pipe.delete(index)
            pipe.execute()
        return len(digests)

    def get(self, name: str) -> User | None:
        if not _NAME_RE.match(name):
            return None
        with broker_errors(self.backend.settings):
            data: dict[str, str] = self.redis.hgetall(self.keys.user(name))  # type: ignore[assignment]
        if not data.get("password_hash"):
            return None
        created = data.get("created_at")
        return User(
            name=name,
            role=_role(data.get("role")),
            created_at=iso(float(created)) if created else None,
        )

    def list(self) -> list[User]:
        with broker_errors(self.backend.settings):
            names = sorted(str(n) for n in self.redis.smembers(self.keys.users))
        return [u for u in (self.get(n) for n in names) if u is not None]

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if ``password`` is theirs, else None (same cost either way)."""
        data: dict[str, str] = {}
        if _NAME_RE.match(name) and len(password) <= MAX_PASSWORD_LENGTH:
            with broker_errors(self.backend.settings):
                data = self.redis.hgetall(self.keys.user(name))  # type: ignore[assignment]
        stored = data.get("password_hash")
        hashed = stored or _dummy_hash()
        try:
            _hasher.verify(hashed, password[:MAX_PASSWORD_LENGTH])
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if not stored:
            return None
        if _hasher.check_needs_rehash(hashed):
            with broker_errors(self.backend.settings):
                self.redis.hset(self.keys.user(name), "password_hash", _hasher.hash(password))
        created = data.get("created_at")
        return User(
            name=name,
            role=_role(data.get("role")),
            created_at=iso(float(created)) if created else None,
        )

    def count(self) -> int:
        with broker_errors(self.backend.settings):
            return int(self.redis.scard(self.keys.users))
