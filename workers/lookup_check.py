"""The look-ups' permissions, checked ahead of need by every worker's scheduler thread.

Reconciliation needs the Non-Agent API's lead_all_info and lead_search; a missing
permission shows in ``dispatcher status``/``health`` before any job needs a look-up
(the record of each server's look-ups: :mod:`dispatcher.vicidial.lookup`).
"""

from __future__ import annotations

import threading
import time

from dispatcher.config import logs
from dispatcher.config.settings import Settings
from dispatcher.model.dialers import Dialer
from dispatcher.model.errors import LookupFailed
from dispatcher.store.backend import Backend
from dispatcher.vicidial.lookup import LookupCheck, check_lookups
from workers.dialer_clients import nonagent_client

__all__ = ["LookupChecker"]

_log = logs.get_logger("workers.lookup_check")


class LookupChecker:
    """Checks the look-up's permissions now and then, in a thread of its own.

    Run from each worker's scheduler thread (:meth:`maybe_start`): a few seconds
    after start and then every minute it asks Redis, and one worker of the fleet at
    a time asks VICIdial when the last result is older than
    :data:`~dispatcher.vicidial.lookup.CHECK_EVERY_S` (a refusal is held longer), so
    ``dispatcher status``/``health`` show a missing permission before any job needs
    a look-up. Never while the server's calls are paused for refused credentials:
    the check's login would count toward VICIdial's lock too.
    """

    #: The first check waits this long after start: a wrong password shows in the
    #: first calls, which pause the server, and then the check does not log in.
    FIRST_DELAY_S = 5.0

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend
        self._thread: threading.Thread | None = None
        self._next = time.monotonic() + self.FIRST_DELAY_S
        self.last: LookupCheck | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.ambiguous == "reconcile"

    def maybe_start(self) -> None:
        now = time.monotonic()
        if not self.enabled or now < self._next:
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._next = now + 60.0
        self._thread = threading.Thread(target=self.run_all, name="lookup-check", daemon=True)
        self._thread.start()

    def run_all(self) -> None:
        """Check the look-ups of every dialer this worker serves."""
        for dialer in self.settings.served_dialers():
            self.run_once(dialer)

    def run_once(self, dialer: Dialer | None = None) -> LookupCheck | None:
        dialer = dialer or self.settings.dialers.resolve(None)
        if dialer is None:
            return None
        server = dialer.name
        try:
            if self.backend.redis.hget(self.backend.keys.pause(server), "kind") == "refused":
                return None
            client = nonagent_client(self.settings, dialer)
        except LookupFailed as exc:
            _log.warning("reconcile.unavailable", server=server, error=exc.line, fix=exc.fix)
            return None
        except Exception as exc:  # Redis away: the next minute tries again
            _log.warning("reconcile.check_failed", error=f"{type(exc).__name__}: {exc}")
            return None
        try:
            check = check_lookups(self.backend, client, server=server)
        except Exception as exc:
            _log.warning("reconcile.check_failed", error=f"{type(exc).__name__}: {exc}")
            return None
        finally:
            client.close()
        self.last = check
        if check.state in ("denied", "refused"):
            _log.warning(
                "reconcile.not_permitted",
                server=server,
                state=check.state,
                error=check.error,
                missing=check.missing,
                fix=check.fix,
            )
        elif check.state == "unavailable":
            _log.warning("reconcile.unavailable", server=server, error=check.error, fix=check.fix)
        elif check.state == "ok" and check.missing:
            _log.warning(
                "reconcile.search_not_permitted",
                server=server,
                error=check.error,
                missing=check.missing,
                fix=check.fix,
            )
        elif check.state == "ok":
            _log.info("reconcile.permitted", server=server)
        return check
