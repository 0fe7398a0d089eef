"""Console sessions and login throttling, both in Redis (written by ``sessions.lua``).

A session is a random token in an HttpOnly cookie; Redis keeps only its SHA-256
(``session:{digest}``: user, role, CSRF token, login time, a flash), so a copy of
the Redis data does not hold usable cookies. The key's TTL is the idle timeout and
is renewed on every request; the login time caps the session's whole life. A
user's sessions are listed in ``user_sessions:{name}`` (a sorted set scored by each
session's end, trimmed on every login, with a TTL) so that removing the user (or
replacing their password or role) ends them at once. Every key gets its TTL in the
script command that writes it; a flash is never written into a session that ended.

Logins are throttled (DESIGN.md, "Security and personal data"): each attempt is
counted *before* the password is checked, in one atomic script command that also
refuses it when a limit is reached, so concurrent guesses cannot get past the
limit. The counters, per fixed window of :data:`WINDOW_S` from the first attempt:

* :data:`PAIR_LIMIT` checks per user name per client address: a stranger locks out
  only their own address;
* :data:`USER_LIMIT` checks per user name from every address: bounds how much a
  spread-out guesser can try (30 per 15 minutes), at the price that such an attack
  can lock the user out everywhere until the window ends (at most 15 minutes; the
  attempts refused meanwhile are not counted, so they do not push the window out);
* :data:`CLIENT_LIMIT` checks per client address across user names (spraying names).

A right password undoes its own count and ends its address's pair counter (the
operator's own typos are forgiven there), but not the user's counter.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

from dispatcher.store.backend import Backend
from dispatcher.store.connection import broker_errors
from dispatcher.store.users import Role, User

__all__ = [
    "CLIENT_LIMIT",
    "PAIR_LIMIT",
    "USER_LIMIT",
    "WINDOW_S",
    "Attempt",
    "LoginThrottle",
    "Session",
    "SessionStore",
]

#: Failed password checks allowed in one window: per user name and client address,
#: per user name in all, and per client address across names.
PAIR_LIMIT = 5
USER_LIMIT = 30
CLIENT_LIMIT = 20
WINDOW_S = 15 * 60

_SOURCE = resources.files(__package__).joinpath("sessions.lua").read_text(encoding="utf-8")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _script(backend: Backend) -> Any:
    return backend.redis.register_script(_SOURCE)


@dataclass(frozen=True)
class Session:
    token_digest: str
    user: str
    role: Role
    csrf: str
    created_at: float
    flash: str = ""

    @property
    def can_act(self) -> bool:
        return self.role == "operator"


class SessionStore:
    def __init__(self, backend: Backend, *, idle_s: float, lifetime_s: float) -> None:
        self.backend = backend
        self.keys = backend.keys
        self.idle_s = int(idle_s)
        self.lifetime_s = lifetime_s
        self._script = _script(backend)

    def create(self, user: User, *, now: float | None = None) -> tuple[str, Session]:
        """A new session for ``user``: (cookie token, session)."""
        now = time.time() if now is None else now
        token = secrets.token_urlsafe(32)
        digest = _digest(token)
        session = Session(digest, user.name, user.role, secrets.token_urlsafe(32), now)
        with broker_errors(self.backend.settings):
            self._script(
                keys=[self.keys.session(digest), self.keys.user_sessions(user.name)],
                args=[
                    "session_create",
                    digest,
                    user.name,
                    user.role,
                    session.csrf,
                    f"{now:.3f}",
                    max(1, self.idle_s),
                    max(1, int(self.lifetime_s)),
                ],
            )
        return token, session

    def load(self, token: str | None, *, now: float | None = None) -> Session | None:
        """The live session of a cookie token (its idle timer renewed), else None."""
        if not token or len(token) > 100:
            return None
        now = time.time() if now is None else now
        digest = _digest(token)
        key = self.keys.session(digest)
        with broker_errors(self.backend.settings):
            pipe = self.backend.redis.pipeline(transaction=False)
            pipe.hgetall(key)
            pipe.expire(key, self.idle_s)  # a key that is gone stays gone: EXPIRE makes none
            data, _ = pipe.execute()
        if not data or not data.get("user") or not data.get("csrf"):
            return None
        created = float(data.get("created_at") or 0)
        if now - created > self.lifetime_s:
            self.destroy(digest, data["user"])
            return None
        role: Role = "operator" if data.get("role") == "operator" else "viewer"
        return Session(digest, data["user"], role, data["csrf"], created, data.get("flash", ""))

    def destroy(self, digest: str, user: str) -> None:
        with broker_errors(self.backend.settings):
            self._script(
                keys=[self.keys.session(digest), self.keys.user_sessions(user)],
                args=["session_destroy", digest],
            )

    def set_flash(self, session: Session, message: str) -> None:
        """A one-time message shown on the next page (after a redirect); nothing if the
        session ended meanwhile (a logout in another tab)."""
        with broker_errors(self.backend.settings):
            self._script(
                keys=[self.keys.session(session.token_digest)], args=["session_flash", message]
            )

    def pop_flash(self, session: Session) -> str:
        if not session.flash:
            return ""
        with broker_errors(self.backend.settings):
            self.backend.redis.hdel(self.keys.session(session.token_digest), "flash")
        return session.flash


@dataclass(frozen=True)
class Attempt:
    """What the throttle said about one login attempt."""

    allowed: bool
    #: which limit refused it: pair (this user from this address), user, client
    scope: str = ""
    retry_after_s: float = 0.0


_SCOPES = ("pair", "user", "client")


class LoginThrottle:
    def __init__(
        self,
        backend: Backend,
        *,
        pair_limit: int = PAIR_LIMIT,
        user_limit: int = USER_LIMIT,
        client_limit: int = CLIENT_LIMIT,
        window_s: int = WINDOW_S,
    ) -> None:
        self.backend = backend
        self.keys = backend.keys
        self.limits = (pair_limit, user_limit, client_limit)
        self.window_s = window_s
        self._script = _script(backend)

    def _keys(self, user: str, client: str) -> list[str]:
        # A name is hashed: whatever was typed in the name field stays out of key names.
        who = hashlib.sha256(user.encode()).hexdigest()[:32]
        return [
            self.keys.pair_failures(who, client),
            self.keys.user_failures(who),
            self.keys.client_failures(client),
        ]

    def attempt(self, user: str, client: str) -> Attempt:
        """Count one attempt before its password check; refused (not counted) past a limit."""
        with broker_errors(self.backend.settings):
            reply = self._script(
                keys=self._keys(user, client),
                args=["login_attempt", self.window_s, *self.limits],
            )
        verdict = [x.decode() if isinstance(x, bytes) else x for x in reply]
        if verdict[0] == "ok":
            return Attempt(True)
        return Attempt(False, _SCOPES[int(verdict[1]) - 1], max(1.0, float(verdict[2])))

    def uncount(self, user: str, client: str) -> None:
        """The attempt was never checked (the hashing pool was full): not a failure."""
        with broker_errors(self.backend.settings):
            self._script(keys=self._keys(user, client), args=["login_uncount"])

    def succeeded(self, user: str, client: str) -> None:
        """The password was right: its attempt is no failure; its address is forgiven."""
        with broker_errors(self.backend.settings):
            self._script(keys=self._keys(user, client), args=["login_succeeded"])
