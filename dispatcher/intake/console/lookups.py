"""Whether reconciliation's look-ups work, per dialer, as rows for the console's pages.

The overview shows every dialer's row; a dead letter's page and the reconcile
preview show the rows that matter to them (what to fix before a reconcile can
work). The facts come from :func:`dispatcher.ops.status.fleet_status`
(``["reconcile"]["lookups"]``), as workers record them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dispatcher.config.settings import Settings

__all__ = ["LOOKUP_STATES", "lookup_rows"]

#: What a look-up state means (fleet_status()["reconcile"]["lookups"]).
LOOKUP_STATES = {
    "ok": "permitted",
    "denied": "NOT permitted",
    "refused": "REFUSED (login)",
    "unavailable": "unavailable",
    None: "not checked yet",
}


def lookup_rows(
    settings: Settings, status: dict[str, Any], *, redact: Callable[[object], str]
) -> list[dict[str, Any]]:
    """Whether each dialer's look-ups work (reconciliation), and what to fix if not.

    The configured dialers first, in their order, then any other server a worker
    recorded; VICIdial's error line goes through ``redact``.
    """
    lookups: dict[str, dict[str, Any]] = status["reconcile"]["lookups"]
    names = [*settings.dialers.names]
    names += sorted(s for s in lookups if s not in settings.dialers.by_name)
    rows = []
    for name in names:
        data = lookups.get(name, {})
        state = data.get("state")
        rows.append(
            {
                "server": name,
                "state": state,
                "label": LOOKUP_STATES.get(state, str(state))
                # lead_search missing: found leads are found, absent ones never proven
                + (", but not lead_search" if state == "ok" and data.get("missing") else ""),
                "checked_at": data.get("checked_at"),
                "missing": data.get("missing") or "",
                "error": redact(data.get("error") or ""),
                "fix": data.get("fix") or "",
            }
        )
    return rows
