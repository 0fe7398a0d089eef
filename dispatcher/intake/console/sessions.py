"""Console sessions and login throttling, both in Redis.

A session is a random token in an HttpOnly cookie; Redis keeps only its SHA-256
(``session:{digest}``: user, role, CSRF token, login time), so a copy of the
Redis data does not hold usable cookies. The key's TTL is the idle timeout and
is renewed on every request; the login time caps the session's whole life. A
user's sessions are listed in ``user_sessions:{name}`` so that removing the user
(or replacing their password or role) ends them at once.

Failed logins are counted per user name and per client address in fixed windows
(``login_failures:{user|client}:{who}``). Past the limit, logins are refused
before the password is even checked, until the window ends: guessing is limited
to a handful of tries per window however the attacker spreads them.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from dispatcher.backend import Backend
from dispatcher.connection import broker_errors
from dispatcher.users import Role, User

__all__ = [
    "CLIENT_LIMIT",
    "USER_LIMIT",
    "WINDOW_S",
    "LoginThrottle",
    "Session",
    "SessionStore",
]

#: Failed logins allowed per user name, and per client address, in one window.
USER_LIMIT = 5
CLIENT_LIMIT = 20
WINDOW_S = 15 * 60


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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

    def create(self, user: User, *, now: float | None = None) -> tuple[str, Session]:
        """A new session for ``user``: (cookie token, session)."""
        now = time.time() if now is None else now
        token = secrets.token_urlsafe(32)
        digest = _digest(token)
        session = Session(digest, user.name, user.role, secrets.token_urlsafe(32), now)
        key = self.keys.session(digest)
        with broker_errors(self.backend.settings):
            pipe = self.backend.redis.pipeline(transaction=True)
            pipe.hset(
                key,
                mapping={
                    "user": user.name,
                    "role": user.role,
                    "csrf": session.csrf,
                    "created_at": f"{now:.3f}",
                },
            )
            pipe.expire(key, self.idle_s)
            pipe.sadd(self.keys.user_sessions(user.name), digest)
            pipe.expire(self.keys.user_sessions(user.name), int(self.lifetime_s) + 60)
            pipe.execute()
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
            pipe.expire(key, self.idle_s)
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
            pipe = self.backend.redis.pipeline(transaction=True)
            pipe.delete(self.keys.session(digest))
            pipe.srem(self.keys.user_sessions(user), digest)
            pipe.execute()

    def set_flash(self, session: Session, message: str) -> None:
        """A one-time message shown on the next page (after a redirect)."""
        with broker_errors(self.backend.settings):
            self.backend.redis.hset(self.keys.session(session.token_digest), "flash", message)

    def pop_flash(self, session: Session) -> str:
        if not session.flash:
            return ""
        with broker_errors(self.backend.settings):
            self.backend.redis.hdel(self.keys.session(session.token_digest), "flash")
        return session.flash


class LoginThrottle:
    def __init__(
        self,
        backend: Backend,
        *,
        user_limit: int = USER_LIMIT,
        client_limit: int = CLIENT_LIMIT,
        window_s: int = WINDOW_S,
    ) -> None:
        self.backend = backend
        self.keys = backend.keys
        self.user_limit = user_limit
        self.client_limit = client_limit
        self.window_s = window_s

    def _keys(self, user: str, client: str) -> tuple[str, str]:
        # A name is hashed: whatever was typed in the name field stays out of key names.
        who = hashlib.sha256(user.encode()).hexdigest()[:32]
        return self.keys.login_failures("user", who), self.keys.login_failures("client", client)

    def blocked_for(self, user: str, client: str) -> float:
        """Seconds until a login for ``user`` from ``client`` may be tried (0: now)."""
        user_key, client_key = self._keys(user, client)
        with broker_errors(self.backend.settings):
            pipe = self.backend.redis.pipeline(transaction=False)
            pipe.get(user_key)
            pipe.get(client_key)
            pipe.ttl(user_key)
            pipe.ttl(client_key)
            by_user, by_client, user_ttl, client_ttl = pipe.execute()
        wait = 0.0
        if int(by_user or 0) >= self.user_limit:
            wait = max(wait, float(user_ttl), 1.0)
        if int(by_client or 0) >= self.client_limit:
            wait = max(wait, float(client_ttl), 1.0)
        return wait

    def failed(self, user: str, client: str) -> None:
        with broker_errors(self.backend.settings):
            pipe = self.backend.redis.pipeline(transaction=False)
            for key in self._keys(user, client):
                pipe.set(key, 0, ex=self.window_s, nx=True)
                pipe.incr(key)
            pipe.execute()

    def succeeded(self, user: str, client: str) -> None:
        user_key, _ = self._keys(user, client)
        with broker_errors(self.backend.settings):
            self.backend.redis.delete(user_key)
