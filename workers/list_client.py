"""The clients of the Non-Agent API's ``add_lead``: a lead for a list, threaded or on the engine.

The request follows shared/vicidial/non_agent_add_lead.md ("For a dispatcher: what to
rely on", point 6), built once per call by :func:`list_form`:

* POSTed, form-encoded, to the dialer's ``vicidial/non_agent_api.php``
  (:attr:`~dispatcher.model.dialers.Dialer.lookup_url`, without a query string: the
  query string would win over the form's fields). Never ``HEAD`` (it runs the function:
  it adds the lead), never GET (the password would sit in proxies' URL logs).
* **The last field is a constant**, ``function=add_lead``: the server writes the last
  POST field's raw value into its API log with a statement that breaks on a ``'`` or a
  trailing ``\\`` (HTTP 500 *after* the INSERT, so a retry would add the lead again).
* The lead's fields as validated (:mod:`dispatcher.model.list_lead`: never a ``\\``, a
  ``'`` only where add_lead stores it), an explicit 3+ digit ``list_id`` and
  ``phone_code``; the marker is in the lead (``mark()``, as for agent jobs); switches as
  ``Y`` (``YES`` is off); ``campaign_id`` whenever the job has one; ``duplicate_check``
  as the job gives it; custom fields as plain fields after ``custom_fields=Y``.

The answer is read by :func:`workers.list_answer.parse_list_answer` (every line, whatever
the status). The transport is the agent clients': the threaded :class:`ListClient` runs
on the same deadline-bounded httpcore pool as :class:`workers.vicidial.VicidialClient`
(same headers, 64 KiB cap, overall deadline, the claim fence right before the bytes
leave, httpcore's errors mapped the same way: nothing sent is a NetworkError, sent and
unanswered an AmbiguousFailure); :class:`AsyncListClient` is
:class:`workers.async_vicidial.AsyncVicidialClient`'s connection handling pointed at the
Non-Agent URL. One client per dialer per worker process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import urlencode, urlsplit

import httpcore
import httpx

from dispatcher.config.settings import Settings
from dispatcher.model.dialers import Dialer
from dispatcher.model.errors import ConfigError, InvalidPhone
from dispatcher.model.lead import Lead
from dispatcher.model.list_options import ListOptions
from dispatcher.store.execution import Fence
from workers.async_vicidial import AsyncVicidialClient
from workers.http_deadline import deadline_pool
from workers.list_answer import DuplicateFound, ListLeadAdded, parse_list_answer
from workers.vicidial import (
    call_timeouts,
    encode_form,
    host_header,
    post_capped,
    post_request,
)

__all__ = ["AsyncListClient", "ListClient", "ListOutcome", "list_form", "nonagent_url"]

#: What one add_lead call ends in when it does not raise a CallFailed.
ListOutcome = ListLeadAdded | DuplicateFound

#: The field sent last: a constant (see the module's notes).
_LAST = ("function", "add_lead")


def nonagent_url(settings: Settings, dialer: Dialer) -> str:
    """The dialer's Non-Agent API URL, as add_lead calls need it; ConfigError if none."""
    url = dialer.lookup_url
    where = (
        f"nonagent_url of dialers.{dialer.name} in {settings.dialers.origin}"
        if settings.dialers_file
        else "DISPATCHER_VICIDIAL_NONAGENT_URL"
    )
    if url is None:
        raise ConfigError(
            f"dialer {dialer.name}: leads for a list need the Non-Agent API's URL: set {where}"
        )
    if urlsplit(url).query:
        raise ConfigError(
            f"dialer {dialer.name}: {where} has a query string; VICIdial would read its fields "
            "before the request's (remove it)"
        )
    return url


def list_form(
    dialer: Dialer,
    lead: Lead,
    options: ListOptions,
    *,
    dnc_check: bool,
    campaign_dnc_check: bool,
) -> bytes:
    """The urlencoded POST body of one add_lead call (see the module's notes).

    ``lead`` is the lead to send (a list's, its marker already in place).
    """
    if not lead.list_id:
        raise ValueError("add_lead needs a lead for a list (list_id)")
    fields: list[tuple[str, str]] = [
        ("source", dialer.source),
        ("user", str(dialer.user)),
        ("pass", str(dialer.password)),
    ]
    fields += lead.vicidial_params().items()
    if dnc_check:
        fields.append(("dnc_check", "Y"))
    if campaign_dnc_check:
        fields.append(("campaign_dnc_check", "Y"))
    fields += options.form()
    for name, value in fields[3:]:
        # The lead rules never let one through; a trailing backslash would escape
        # VICIdial's closing quote (HTTP 500), so it is refused here too, whatever made it.
        if value.endswith("\\"):
            raise ValueError(f"{name} ends with a backslash: VICIdial's INSERT would break")
    fields.append(_LAST)
    return encode_form(fields)


def _probe_form(dialer: Dialer, list_id: str | None) -> bytes:
    fields = [("source", dialer.source), ("user", str(dialer.user)), ("pass", str(dialer.password))]
    if list_id:
        fields += [("list_id", list_id), ("list_exists_check", "Y")]
    # A phone of one digit: add_lead stops at its length check, after the login, the
    # permissions and the list's checks, before anything is stored.
    fields += [("phone_number", "0"), _LAST]
    return urlencode(fields).encode("ascii")


def _probe_answer(text: str, status: int, truncated: bool, secrets: tuple[str, ...]) -> None:
    try:
        outcome = parse_list_answer(text, http_status=status, secrets=secrets, truncated=truncated)
    except InvalidPhone as exc:
        if "INVALID PHONE NUMBER LENGTH" in exc.line:
            return  # every check before the phone's passed
        raise
    # A lead with phone "0" cannot be added or found: this is not VICIdial's add_lead.
    raise ConfigError(f"unexpected answer to the add_lead check: {outcome.line[:200]}")


class ListClient:
    """Calls add_lead on one dialer over one keep-alive connection pool (threads share it)."""

    def __init__(self, settings: Settings, *, dialer: Dialer, max_connections: int = 100) -> None:
        if dialer.missing():
            raise ConfigError(f"dialer {dialer.name}: needs {dialer.missing()}")
        self.settings = settings
        self.dialer = dialer
        self.url = nonagent_url(settings, dialer)
        #: where the fleet keeps this dialer's pause, breaker and rate limit
        self.server = dialer.name
        self._secrets = settings.secrets
        self.deadline_s = settings.http_timeout_s
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=4.0,  # below Apache's KeepAliveTimeout (workers.vicidial)
        )
        self._pool = deadline_pool(limits=limits)
        self._target = httpcore.URL(self.url)
        self._host = host_header(self._target)
        self._timeouts = call_timeouts(settings.http_timeout_s)

    def close(self) -> None:
        self._pool.close()

    def post(
        self, body: bytes, *, before_send: Callable[[], None] | None = None
    ) -> tuple[int, str, bool]:
        """POST a form; (status, text, truncated): at most 64 KiB, within the deadline.

        ``before_send`` runs right before the request's bytes leave (the claim fence);
        what it raises propagates, and nothing was sent."""
        request = post_request(self._target, self._host, body, self._timeouts)
        return post_capped(self._pool, request, deadline_s=self.deadline_s, before_send=before_send)

    def add_lead(
        self,
        lead: Lead,
        options: ListOptions,
        *,
        dnc_check: bool,
        campaign_dnc_check: bool,
        fence: Fence | None = None,
    ) -> tuple[ListOutcome, float]:
        """Add one lead to its list: (the lead added or the duplicate found, latency in
        ms), or raise CallFailed. ``fence``: the claim's fence, checked right before the
        request leaves (ClaimLapsed, nothing sent)."""
        body = list_form(
            self.dialer,
            lead,
            options,
            dnc_check=dnc_check,
            campaign_dnc_check=campaign_dnc_check,
        )
        started = time.perf_counter()
        status, text, truncated = self.post(
            body, before_send=fence.check if fence is not None else None
        )
        latency_ms = (time.perf_counter() - started) * 1000
        outcome = parse_list_answer(
            text, http_status=status, secrets=self._secrets, truncated=truncated
        )
        return outcome, latency_ms

    def probe(self, list_id: str | None = None) -> None:
        """Check, with a request that stores nothing, that add_lead would take this
        dialer's leads: the login, the source, the function's permission, the right to
        add leads and, with ``list_id``, that the list exists and the user may add to it.
        Raises the CallFailed VICIdial's answer means (AuthFailed, PermissionDenied,
        ListNotAllowed, ListUndefined, ...). A refused login counts toward VICIdial's
        10-failure lock, as any call's does."""
        status, text, truncated = self.post(_probe_form(self.dialer, list_id))
        _probe_answer(text, status, truncated, self._secrets)


class AsyncListClient:
    """Calls add_lead on one dialer from one event loop (the lead engine's), over the
    agent engine client's kept-alive connections to the Non-Agent URL."""

    def __init__(self, settings: Settings, *, dialer: Dialer) -> None:
        url = nonagent_url(settings, dialer)
        self.settings = settings
        self.dialer = dialer
        self.url = url
        self.server = dialer.name
        self._secrets = settings.secrets
        # The agent client's connections, head and error mapping, pointed at the
        # Non-Agent URL (its form is ours).
        self._http = AsyncVicidialClient(settings, dialer=replace(dialer, url=url))
        self.deadline_s = self._http.deadline_s

    async def aclose(self) -> None:
        await self._http.aclose()

    async def add_lead(
        self,
        lead: Lead,
        options: ListOptions,
        *,
        dnc_check: bool,
        campaign_dnc_check: bool,
        fence: Fence | None = None,
    ) -> tuple[ListOutcome, float]:
        """As :meth:`ListClient.add_lead` (the held log lines are written, and the fence
        checked, right before the request's bytes leave)."""
        body = list_form(
            self.dialer,
            lead,
            options,
            dnc_check=dnc_check,
            campaign_dnc_check=campaign_dnc_check,
        )
        started = time.perf_counter()
        status, text, truncated = await self._http.post(body, fence=fence)
        latency_ms = (time.perf_counter() - started) * 1000
        outcome = parse_list_answer(
            text, http_status=status, secrets=self._secrets, truncated=truncated
        )
        return outcome, latency_ms

    async def probe(self, list_id: str | None = None) -> None:
        """As :meth:`ListClient.probe`."""
        status, text, truncated = await self._http.post(_probe_form(self.dialer, list_id))
        _probe_answer(text, status, truncated, self._secrets)
