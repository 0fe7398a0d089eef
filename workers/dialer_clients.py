"""The worker's clients of each dialer: one per dialer, made on first use.

:class:`PerDialer` keeps them (the agent API's for the runner, the Non-Agent API's for
the reconciler), shared by the threads of a worker process. :func:`nonagent_client`
makes a Non-Agent API client (look-ups, the permission check, the deletion of
duplicates: :class:`dispatcher.vicidial.nonagent.NonAgentClient`) whose every request
ends within ``DISPATCHER_HTTP_TIMEOUT_S`` however slowly the answer comes
(:mod:`workers.http_deadline`), as a call to the agent API does, so a look-up never
outlives the claim it runs under.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import httpx

from dispatcher.config.settings import Settings
from dispatcher.model.dialers import Dialer
from dispatcher.vicidial.nonagent import NonAgentClient
from workers.http_deadline import DeadlineTransport, deadline

__all__ = ["PerDialer", "nonagent_client"]


class _Closable(Protocol):
    def close(self) -> None: ...


_C = TypeVar("_C", bound=_Closable)


class PerDialer(Generic[_C]):
    """One client per dialer (``make(dialer)`` on first use), shared by threads."""

    def __init__(self, make: Callable[[Dialer], _C]) -> None:
        self._make = make
        self._clients: dict[str, _C] = {}
        self._lock = threading.Lock()

    def get(self, dialer: Dialer) -> _C:
        client = self._clients.get(dialer.name)
        if client is None:
            with self._lock:
                client = self._clients.get(dialer.name)
                if client is None:
                    client = self._make(dialer)
                    self._clients[dialer.name] = client
        return client

    def put(self, name: str, client: _C) -> None:
        """Use ``client`` for the dialer ``name`` (one made elsewhere: a test's)."""
        self._clients[name] = client

    def close(self) -> None:
        for client in list(self._clients.values()):
            client.close()


def nonagent_client(settings: Settings, dialer: Dialer | None = None) -> NonAgentClient:
    """A Non-Agent API client of ``dialer`` (default: the default one) whose requests end
    within the HTTP timeout (as calls do); closing it closes its connections."""
    timeout = settings.http_timeout_s
    limits = httpx.Limits(max_connections=10, max_keepalive_connections=10, keepalive_expiry=4.0)
    http = httpx.Client(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0), pool=min(timeout, 5.0)),
        limits=limits,
        headers={"User-Agent": "vicidial-lead-dispatcher/0.1"},
        transport=DeadlineTransport(limits=limits),
    )
    return NonAgentClient(
        settings, dialer=dialer, http=http, bound=lambda: deadline(timeout), owns_http=True
    )
