"""The worker's clients of VICIdial's Non-Agent API: one per dialer, deadline-bound.

Look-ups (workers/reconciler.py), the permission check (workers/lookup_check.py) and
the deletion of duplicates ask the Non-Agent API
(:class:`dispatcher.vicidial.nonagent.NonAgentClient`); here each request ends within
``DISPATCHER_HTTP_TIMEOUT_S`` however slowly the answer comes (:mod:`workers.http_deadline`),
as a call to the agent API does, so a look-up never outlives the claim it runs under.
"""

from __future__ import annotations

import threading

import httpx

from dispatcher.config.settings import Settings
from dispatcher.model.dialers import Dialer
from dispatcher.vicidial.nonagent import NonAgentClient
from workers.http_deadline import DeadlineTransport, deadline

__all__ = ["NonAgentClients", "nonagent_client"]


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


class NonAgentClients:
    """One :func:`nonagent_client` per dialer, made on first use, shared by threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients: dict[str, NonAgentClient] = {}
        self._lock = threading.Lock()

    def get(self, dialer: Dialer) -> NonAgentClient:
        client = self._clients.get(dialer.name)
        if client is None:
            with self._lock:
                client = self._clients.get(dialer.name)
                if client is None:
                    client = nonagent_client(self.settings, dialer)
                    self._clients[dialer.name] = client
        return client

    def close(self) -> None:
        for client in list(self._clients.values()):
            client.close()
