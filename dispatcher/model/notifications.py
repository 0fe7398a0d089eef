"""Outcome notifications (webhooks): the event, its JSON body, its signature, and which
receiver URLs a job may name.

A producer learns a job's final outcome without polling (DESIGN.md, third round): one
POST per outcome to the job's receiver, signed, at least once, in order per job. This
module is the plain-Python part of that contract; the outbox that holds events until
they are sent is :mod:`dispatcher.store.outbox` (written by the job's outcome command
in ``execution.lua``, in the same atomic step as the outcome), the sender is
``workers/notifier.py``.

The body (JSON, UTF-8, keys in this order, absent facts null)::

    {"id", "type", "created_at", "job_id", "idempotency_key", "dialer", "state",
     "lead_id", "list_id", "campaign", "existing_lead_id", "reason", "error"}

``type`` is one of :data:`EVENT_TYPES`; no phone number and no lead field is in it (the
``error`` line is scrubbed of them before it is stored). The same event is sent with the
same body every time: receivers deduplicate by ``id`` (also the ``Dispatcher-Event-Id``
header).

The signature: ``Dispatcher-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`` over the
bytes ``f"{t}.".encode() + body`` with ``DISPATCHER_NOTIFY_SECRET``. ``t`` is the time of
the attempt (a retry is signed anew); a receiver refuses a ``t`` more than
:data:`TOLERANCE_S` away from its clock (replays of an old request), and compares the
signature in constant time (README "Notifications" has receivers in Python and PHP).

Receivers: ``DISPATCHER_NOTIFY_URL`` for every job, or a job's own ``notify_url``, which
must lie under one of the prefixes of ``DISPATCHER_NOTIFY_ALLOWED`` (:func:`allowed`):
same scheme, host and port, and a path under the prefix's path at a ``/`` boundary.
A string comparison would let ``https://hooks.example.com.evil.net/`` or
``https://hooks.example.com@evil.net/`` through; URLs with user info, a fragment,
dot segments, backslashes or control characters are refused outright. The dispatcher
never follows a redirect (a 3xx answer is a failed attempt): no open redirect of its
POSTs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

__all__ = [
    "ADDED",
    "BODY_KEYS",
    "DEAD_LETTERED",
    "DUPLICATE",
    "EVENT_ID_HEADER",
    "EVENT_TYPES",
    "MAX_URL_LENGTH",
    "REPLAYED_ADDED",
    "SIGNATURE_HEADER",
    "TOLERANCE_S",
    "Event",
    "allowed",
    "notify_url_problem",
    "origin",
    "sign",
    "signature_header",
]

ADDED = "lead.added"
DUPLICATE = "lead.duplicate"
DEAD_LETTERED = "lead.dead_lettered"
#: a job whose dead letter was later added (replayed, reconciled, or a copy's success)
REPLAYED_ADDED = "lead.replayed_added"
EVENT_TYPES = (ADDED, DUPLICATE, DEAD_LETTERED, REPLAYED_ADDED)

SIGNATURE_HEADER = "Dispatcher-Signature"
EVENT_ID_HEADER = "Dispatcher-Event-Id"
#: How far a receiver should accept ``t`` from its own clock (seconds), either way.
TOLERANCE_S = 300
MAX_URL_LENGTH = 2000

BODY_KEYS = (
    "id",
    "type",
    "created_at",
    "job_id",
    "idempotency_key",
    "dialer",
    "state",
    "lead_id",
    "list_id",
    "campaign",
    "existing_lead_id",
    "reason",
    "error",
)


def _split(url: str) -> SplitResult | str:
    """The URL's parts, or why it is not a receiver URL."""
    if not isinstance(url, str):
        return "must be a string"
    if not url or len(url) > MAX_URL_LENGTH:
        return f"must be 1-{MAX_URL_LENGTH} characters"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url) or "\\" in url:
        return "must not hold white space, control characters or backslashes"
    if not url.isascii():
        return "must be ASCII (percent-encode the path; punycode the host)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if "@" in parts.netloc:
        return "must not hold a user name or password"
    if parts.fragment or url.endswith("#"):
        return "must not hold a fragment (#...)"
    path = unquote(parts.path)
    if "\\" in path or any(segment in (".", "..") for segment in path.split("/")):
        return "must not hold . or .. path segments (nor encoded ones)"
    return parts


def notify_url_problem(url: str, *, prefix: bool = False) -> str | None:
    """Why ``url`` cannot be a receiver URL (``prefix``: an allow-list entry, which also
    may not hold a query), or None."""
    parts = _split(url)
    if isinstance(parts, str):
        return parts
    if prefix and parts.query:
        return "an allowed prefix must not hold a query (?...)"
    return None


def _port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def origin(url: str) -> str:
    """``scheme://host:port`` of a receiver URL: what concurrency and the breaker are per
    (and what logs show of a URL, whose path or query may hold a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{_port(parts)}"


def allowed(url: str, prefixes: Iterable[str]) -> bool:
    """Whether ``url`` lies under one of ``prefixes`` (same scheme, host and port; the
    path under the prefix's path at a ``/`` boundary; the query free)."""
    parts = _split(url)
    if isinstance(parts, str):
        return False
    for prefix in prefixes:
        base = _split(prefix)
        if isinstance(base, str) or base.query:
            continue
        if (parts.scheme, (parts.hostname or "").lower(), _port(parts)) != (
            base.scheme,
            (base.hostname or "").lower(),
            _port(base),
        ):
            continue
        want = base.path or "/"
        path = parts.path or "/"
        if want.endswith("/"):
            if path.startswith(want) or path == want.rstrip("/"):
                return True
        elif path == want or path.startswith(want + "/"):
            return True
    return False


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``f"{timestamp}."`` + ``body`` with ``secret``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, str(int(timestamp)).encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The ``Dispatcher-Signature`` header's value: ``t=<unix seconds>,v1=<hex>``."""
    return f"t={int(timestamp)},v1={sign(secret, timestamp, body)}"


@dataclass(frozen=True)
class Event:
    """One outcome notification, as the outbox holds it and the receiver gets it."""

    id: str
    type: str
    #: when the outcome was recorded (ISO 8601, UTC, milliseconds)
    created_at: str | None
    job_id: str
    idempotency_key: str | None
    dialer: str | None
    #: the job's final state: added, duplicate or dead
    state: str
    lead_id: str | None = None
    list_id: str | None = None
    campaign: str | None = None
    existing_lead_id: str | None = None
    reason: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in BODY_KEYS}

    def body(self) -> bytes:
        """The POST body: compact JSON, keys in contract order, the same on every attempt."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_fields(
        cls, event_id: str, fields: Mapping[str, str], *, created_at: str | None
    ) -> Event:
        """From the outbox's hash (empty strings are absent facts)."""

        def get(key: str) -> str | None:
            value = fields.get(key)
            return value if value else None

        return cls(
            id=event_id,
            type=fields.get("type", ""),
            created_at=created_at,
            job_id=fields.get("job_id", ""),
            idempotency_key=get("idempotency_key"),
            dialer=get("dialer"),
            state=fields.get("state", ""),
            lead_id=get("lead_id"),
            list_id=get("list_id"),
            campaign=get("campaign"),
            existing_lead_id=get("existing_lead_id"),
            reason=get("reason"),
            error=get("error"),
        )
