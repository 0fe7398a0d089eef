"""The HTTP client for VICIdial's ``external_add_lead`` and its answer parser.

Follows ``shared/vicidial/external_add_lead.md``:

* POST form-encoded, always with ``value`` set to the phone number: without it,
  VICIdial's POST path stores the *last form field's value* as the phone number
  and still answers SUCCESS.
* Never ``format=debug``, ``DB`` or ``close_window_link``.
* Every line of the answer is scanned: an ``alt_user`` miss prints an ERROR line
  and carries on to SUCCESS, and misconfigured PHP prints warnings first.
* SUCCESS fields are split from the right (the first number is the phone).
* The auth error echoes the password, and a PHP error page may show the SQL with
  it: every text that leaves here is redacted first, whatever the HTTP status.
* Bounded: at most :data:`MAX_ANSWER_BYTES` of an answer are read, and a call
  ends within its deadline (``DISPATCHER_HTTP_TIMEOUT_S``) however slowly the
  answer trickles in (:mod:`workers.http_deadline`), so it never outlives the
  worker's claim on the job. A call cut after sending is ambiguous.

One :class:`VicidialClient` (one keep-alive connection pool) per dialer per worker
process, shared by its threads.

The call goes straight to httpcore's connection pool (the engine under
``httpx.Client``) with a request built once per dialer and filled per lead: the
hot path of a worker is one POST of a handful of form fields, and httpx's
per-request machinery (URL merging, header and cookie models, auth and redirect
flows, event hooks) cost more CPU than the rest of the call (measured:
1.07 ms against 0.63 ms per call; docs/BENCHMARKS.md). Timeouts, the overall
deadline and the exceptions are httpcore's, mapped below as httpx maps them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode

import httpcore
import httpx

from dispatcher.config.logs import redact_vicidial_line
from dispatcher.config.settings import Settings
from dispatcher.model.dialers import Dialer
from dispatcher.model.errors import (
    AmbiguousFailure,
    CallFailed,
    ConfigError,
    NetworkError,
    UnknownResponse,
)
from dispatcher.model.lead import Lead
from dispatcher.store.execution import Fence
from workers.classify import STATUS_RULES, classify_line
from workers.http_deadline import deadline, deadline_pool

__all__ = [
    "HTTPCORE_ERRORS",
    "MAX_ANSWER_BYTES",
    "USER_AGENT",
    "AddLeadResult",
    "VicidialClient",
    "add_lead_form",
    "call_failed",
    "call_timeouts",
    "decode_answer",
    "encode_form",
    "host_header",
    "parse_add_lead",
    "post_capped",
    "post_request",
]

_RESULT_LINE = re.compile(r"^(SUCCESS|ERROR|NOTICE): ")
_SUCCESS = "SUCCESS: lead added - "
_SNIPPET = 300
#: The most of an answer a worker reads. A real answer is one or two lines; a
#: misconfigured PHP may print a few KiB of warnings first.
MAX_ANSWER_BYTES = 64 * 1024
USER_AGENT = b"vicidial-lead-dispatcher/0.1"


@dataclass(frozen=True)
class AddLeadResult:
    lead_id: str
    list_id: str
    campaign: str
    phone: str
    agent_user: str
    line: str
    #: ERROR/NOTICE lines that preceded SUCCESS (e.g. "no user found" for alt_user).
    notes: tuple[str, ...] = ()


def _snippet(body: str) -> str:
    text = " ".join(body.split())
    return text[:_SNIPPET] + ("…" if len(text) > _SNIPPET else "")


def parse_add_lead(
    body: str,
    *,
    http_status: int = 200,
    secrets: tuple[str, ...] = (),
    truncated: bool = False,
) -> AddLeadResult:
    """Read an external_add_lead answer; raise the matching CallFailed if it is not SUCCESS.

    ``truncated``: only the first :data:`MAX_ANSWER_BYTES` were read; with no result
    line among them the answer is ambiguous (a SUCCESS may have followed).
    """
    if http_status != 200:
        error_type = STATUS_RULES.get(http_status, UnknownResponse)
        shown = _snippet(redact_vicidial_line(body, secrets))
        raise error_type(
            f"HTTP {http_status}" + (f": {shown}" if body.strip() else ""),
            http_status=http_status,
        )
    lines = [line.strip() for line in body.splitlines()]
    results = [line for line in lines if _RESULT_LINE.match(line)]
    for line in results:
        if line.startswith(_SUCCESS):
            fields = line[len(_SUCCESS) :].rsplit("|", 4)
            notes = tuple(redact_vicidial_line(x, secrets) for x in results if x is not line)
            if len(fields) == 5:
                phone, campaign, list_id, lead_id, agent_user = fields
                return AddLeadResult(lead_id, list_id, campaign, phone, agent_user, line, notes)
            # Inserted, whatever the rest says: never retry a SUCCESS.
            return AddLeadResult("", "", "", "", "", line, notes)
    best: tuple[int, type[CallFailed], str] | None = None
    for line in results:
        if line.startswith("ERROR: "):
            hit = classify_line(line)
            if hit is not None and (best is None or hit[0] < best[0]):
                best = (hit[0], hit[1], line)
    if best is not None:
        errors = [x for x in results if x.startswith("ERROR: ")]
        # Both DNC lines (system first) are kept: compliance wants the whole answer.
        text = " / ".join(errors) if len(errors) > 1 else best[2]
        raise best[1](redact_vicidial_line(text, secrets), http_status=200)
    if truncated:
        raise AmbiguousFailure(
            f"answer larger than {MAX_ANSWER_BYTES} bytes, cut before any result line: "
            "the lead may have been added",
            http_status=200,
        )
    if not body.strip():
        raise UnknownResponse("empty answer", http_status=200)
    shown = next((x for x in results), None) or body
    raise UnknownResponse(
        "unrecognised answer: " + _snippet(redact_vicidial_line(shown, secrets)), http_status=200
    )


_CHARSET = re.compile(rb"charset=[\"']?([\w.:-]+)", re.IGNORECASE)


def _charset(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"content-type":
            found = _CHARSET.search(value)
            return found.group(1).decode("ascii") if found else None
    return None


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", "replace")
    except LookupError:  # a charset Python does not know: VICIdial speaks UTF-8
        return body.decode("utf-8", "replace")


def decode_answer(body: bytes, headers: list[tuple[bytes, bytes]]) -> str:
    """The answer's text, in the charset its Content-Type names (UTF-8 otherwise)."""
    return _decode(body, _charset(headers))


def host_header(url: httpx.URL | httpcore.URL) -> bytes:
    """The Host header for a dialer's URL (IPv6 in brackets, the port if it has one)."""
    host = url.raw_host if isinstance(url, httpx.URL) else url.host
    host = b"[" + host + b"]" if b":" in host else host
    port = url.port
    return host + (b":%d" % port if port else b"")


def add_lead_form(
    dialer: Dialer, lead: Lead, *, dnc_check: bool, campaign_dnc_check: bool
) -> bytes:
    """The urlencoded POST body of one external_add_lead call (see the module's notes)."""
    data = {
        "source": dialer.source,
        "user": str(dialer.user),
        "pass": str(dialer.password),
        "function": "external_add_lead",
    }
    data.update(lead.vicidial_params())
    data["value"] = lead.phone_number
    if dnc_check:
        data["dnc_check"] = "YES"
    if campaign_dnc_check:
        data["campaign_dnc_check"] = "YES"
    return encode_form(data.items())


def encode_form(fields: Iterable[tuple[str, Any]]) -> bytes:
    """urllib's ``urlencode(fields)``, byte for byte, as the ASCII body of a POST: each
    key and value quoted only when it needs it (both clients build their forms so)."""
    return "&".join([_quote(k) + "=" + _quote(v) for k, v in fields]).encode("ascii")


#: What quote_plus leaves as it is: a field name, a phone number, most names.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


def _quote(value: Any) -> str:
    """urllib's ``urlencode`` for one key or value, byte for byte: quote_plus of its
    text, skipped when there is nothing to quote (a call's form is built on the
    event loop of a busy worker, and most of its values need none)."""
    if type(value) is str:
        if _UNRESERVED.fullmatch(value):
            return value
        return quote_plus(value)
    return quote_plus(value if isinstance(value, bytes) else str(value))


#: What httpcore raises for a call that failed on the network (mapped by :func:`call_failed`).
HTTPCORE_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
)


def call_failed(exc: Exception) -> CallFailed:
    """The CallFailed for one of httpcore's :data:`HTTPCORE_ERRORS`, as httpx maps them.

    Nothing sent (no connection) is a NetworkError, to retry; once the request may
    have reached VICIdial, an AmbiguousFailure. httpcore's exceptions bear httpx's
    names (ReadTimeout, ...): the texts in dead letters stay as they were.
    """
    name = type(exc).__name__
    if isinstance(exc, httpcore.ConnectError | httpcore.ConnectTimeout | httpcore.PoolTimeout):
        return NetworkError(f"{name}: could not connect")
    if isinstance(exc, httpcore.TimeoutException):
        # The request was (at least partly) sent: VICIdial may have added the lead.
        return AmbiguousFailure(f"{name}: no answer in time")
    if isinstance(exc, httpcore.RemoteProtocolError | httpcore.ReadError | httpcore.WriteError):
        return AmbiguousFailure(f"{name}: connection dropped after the request was sent")
    return NetworkError(name)


def post_request(
    target: httpcore.URL, host: bytes, body: bytes, timeouts: dict[str, float]
) -> httpcore.Request:
    """The POST of one form to ``target``: the headers every call sends."""
    return httpcore.Request(
        b"POST",
        target,
        headers=[
            (b"Host", host),
            (b"User-Agent", USER_AGENT),
            (b"Accept", b"*/*"),
            (b"Content-Type", b"application/x-www-form-urlencoded"),
            (b"Content-Length", str(len(body)).encode("ascii")),
        ],
        content=body,
        extensions={"timeout": timeouts},
    )


def post_capped(
    pool: httpcore.ConnectionPool,
    request: httpcore.Request,
    *,
    deadline_s: float,
    before_send: Callable[[], None] | None = None,
) -> tuple[int, str, bool]:
    """Send ``request`` on ``pool``; (status, text, truncated): at most MAX_ANSWER_BYTES
    read, everything within ``deadline_s``. Both threaded clients (the agent's and the
    list's) post through here.

    ``before_send``: run right before the request's bytes leave (the claim fence);
    what it raises propagates, and nothing was sent."""
    try:
        with deadline(deadline_s, before_send=before_send):
            reply = pool.handle_request(request)
            try:
                chunks: list[bytes] = []
                size = 0
                for chunk in reply.stream:  # type: ignore[union-attr]
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_ANSWER_BYTES:
                        break  # closing the reply unread drops the connection
            finally:
                reply.close()
    except HTTPCORE_ERRORS as exc:
        raise call_failed(exc) from None
    text = decode_answer(b"".join(chunks)[:MAX_ANSWER_BYTES], reply.headers)
    return reply.status, text, size > MAX_ANSWER_BYTES


def call_timeouts(timeout: float) -> dict[str, float]:
    """httpcore's per-phase timeouts of a call whose overall deadline is ``timeout``."""
    return {
        "connect": min(timeout, 5.0),
        "read": timeout,
        "write": timeout,
        "pool": min(timeout, 5.0),
    }


class VicidialClient:
    """Calls external_add_lead on one dialer over one keep-alive connection pool."""

    def __init__(
        self,
        settings: Settings,
        *,
        dialer: Dialer | None = None,
        max_connections: int = 100,
    ) -> None:
        if dialer is None:
            settings.require_vicidial()
            dialer = settings.dialers.resolve(None)
        if dialer is None or dialer.missing():
            missing = dialer.missing() if dialer else ["a default dialer"]
            raise ConfigError(f"dialer {dialer.name if dialer else '?'}: needs {missing}")
        self.settings = settings
        self.dialer = dialer
        self.url = str(dialer.url)
        #: where the fleet keeps this dialer's pause, breaker and rate limit
        self.server = dialer.name
        self._secrets = settings.secrets
        timeout = settings.http_timeout_s
        #: A call (connect, send, answer) ends within this, however the answer trickles.
        self.deadline_s = timeout
        # Below Apache's default KeepAliveTimeout (5 s): reusing a connection
        # the server is closing would turn a clean call into an ambiguous one.
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=4.0,
        )
        self._pool = deadline_pool(limits=limits)
        # The URL's scheme was checked with the settings (dialers.py, settings.py).
        self._target = httpcore.URL(self.url)
        self._host = host_header(self._target)
        self._timeouts = call_timeouts(timeout)

    def close(self) -> None:
        self._pool.close()

    def _base_fields(self) -> dict[str, str]:
        return {
            "source": self.dialer.source,
            "user": str(self.dialer.user),
            "pass": str(self.dialer.password),
            "function": "external_add_lead",
        }

    def _post(
        self, body: bytes, *, before_send: Callable[[], None] | None = None
    ) -> tuple[int, str, bool]:
        """POST; (status, text, truncated): see :func:`post_capped`."""
        request = post_request(self._target, self._host, body, self._timeouts)
        return post_capped(self._pool, request, deadline_s=self.deadline_s, before_send=before_send)

    def add_lead(
        self,
        lead: Lead,
        *,
        dnc_check: bool,
        campaign_dnc_check: bool,
        fence: Fence | None = None,
    ) -> tuple[AddLeadResult, float]:
        """Add one lead; return the result and the call's latency in ms, or raise CallFailed.

        ``fence``: the claim's fence, checked right before the request leaves (raises
        ClaimLapsed, nothing sent, when the claim could lapse before the call ends).
        """
        body = add_lead_form(
            self.dialer, lead, dnc_check=dnc_check, campaign_dnc_check=campaign_dnc_check
        )
        started = time.perf_counter()
        check = fence.check if fence is not None else None
        status, text, truncated = self._post(body, before_send=check)
        latency_ms = (time.perf_counter() - started) * 1000
        result = parse_add_lead(
            text, http_status=status, secrets=self._secrets, truncated=truncated
        )
        return result, latency_ms

    def probe_credentials(self) -> None:
        """Check user/pass/source with no side effect; raise CallFailed if VICIdial refuses.

        Without phone_code, external_add_lead stops at authentication (bad
        credentials) or at the validity check (`not valid`): nothing is inserted.
        Each failed probe still counts as a failed login at VICIdial.
        """
        data = self._base_fields()
        data.update({"agent_user": "probe", "phone_number": "0", "value": "0"})
        status, text, truncated = self._post(urlencode(data).encode("ascii"))
        try:
            parse_add_lead(text, http_status=status, secrets=self._secrets, truncated=truncated)
        except CallFailed as exc:
            if exc.reason == "invalid_request":
                return  # authenticated; stopped at the validity check as intended
            raise
