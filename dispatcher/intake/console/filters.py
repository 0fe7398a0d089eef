"""Which dead letters a page or a form means: its filter fields as a Selection.

The list page, the action previews and confirmations, and the export read the
same fields (:data:`FILTERS`, plus ``scope`` and ``id`` for an action).
:func:`selection` checks each one (a :class:`~.forms.BadInput` names the field)
and returns the :class:`~dispatcher.ops.selection.Selection` with its canonical
fields: relative ages (``within``, ``older``) become absolute times
(``since_ts``, ``until_ts``), so that a confirmation acts on the same window it
previewed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from dispatcher.intake.console.formatting import utc
from dispatcher.intake.console.forms import MAX_IDS, BadInput, Form, every, first
from dispatcher.model.errors import all_reasons
from dispatcher.ops.selection import Selection, parse_duration

__all__ = ["FILTERS", "OLDER", "WITHIN", "describe", "selection"]

#: The list's filter fields, in the order they are shown and kept in links.
FILTERS = ("reason", "dialer", "agent", "phone4", "within", "older")
#: The choices of the list's age filters: (value, label).
WITHIN: tuple[tuple[str, str], ...] = (
    ("", "any time"),
    ("15m", "15 minutes"),
    ("1h", "1 hour"),
    ("6h", "6 hours"),
    ("24h", "24 hours"),
    ("7d", "7 days"),
    ("30d", "30 days"),
)
OLDER: tuple[tuple[str, str], ...] = (
    ("", "any age"),
    ("1h", "1 hour"),
    ("24h", "24 hours"),
    ("7d", "7 days"),
    ("30d", "30 days"),
)
_AGENT_RE = re.compile(r"^[-_0-9a-zA-Z]{1,20}$")
_PHONE4_RE = re.compile(r"^[0-9]{1,4}$")


def selection(
    params: Form, *, dialers: Sequence[str], now: float | None = None
) -> tuple[Selection, Form]:
    """The Selection a filter form or an action form means, and its canonical fields.

    ``dialers``: the names a ``dialer`` filter may take. BadInput for a field that
    cannot be used.
    """
    now = time.time() if now is None else now
    items: Form = []
    scope = first(params, "scope", "matching")
    if scope not in ("matching", "selected"):
        raise BadInput("scope", "must be matching or selected")
    items.append(("scope", scope))
    ids: tuple[str, ...] = ()
    if scope == "selected":
        ids = tuple(dict.fromkeys(i.strip() for i in every(params, "id") if i.strip()))
        if not ids:
            raise BadInput("id", "select at least one dead letter")
        if len(ids) > MAX_IDS:
            raise BadInput("id", f"at most {MAX_IDS} letters at once; use a filter")
        if any(len(i) > 200 or not i.isprintable() for i in ids):
            raise BadInput("id", "not a dead-letter id")
        items += [("id", i) for i in ids]
    reason = first(params, "reason").strip() or None
    if reason is not None and reason not in all_reasons():
        raise BadInput("reason", f"unknown reason {reason!r}")
    agent = first(params, "agent").strip() or None
    if agent is not None and not _AGENT_RE.match(agent):
        raise BadInput("agent", "2-20 of letters, digits, '-' and '_'")
    phone4 = first(params, "phone4").strip() or None
    if phone4 is not None and not _PHONE4_RE.match(phone4):
        raise BadInput("phone4", "the last 1-4 digits of the phone number")
    dialer = first(params, "dialer").strip() or None
    if dialer is not None and dialer not in dialers:
        raise BadInput("dialer", f"unknown dialer {dialer!r} (known: {', '.join(dialers)})")
    since = _time(params, "since_ts", "within", now)
    until = _time(params, "until_ts", "older", now)
    for key, value in (
        ("reason", reason),
        ("dialer", dialer),
        ("agent", agent),
        ("phone4", phone4),
    ):
        if value is not None:
            items.append((key, value))
    if since is not None:
        items.append(("since_ts", repr(since)))
    if until is not None:
        items.append(("until_ts", repr(until)))
    chosen = Selection(
        ids=ids,
        reason=reason,
        agent_user=agent,
        since=since,
        until=until,
        phone_last4=phone4,
        dialer=dialer,
    )
    return chosen, items


def _time(params: Form, absolute: str, relative: str, now: float) -> float | None:
    """An epoch from ``absolute`` (a confirmation's canonical field) or ``relative``
    (an age like ``1h``, counted back from ``now``); None if neither is given."""
    text = first(params, absolute).strip()
    if text:
        try:
            value = float(text)
        except ValueError:
            raise BadInput(absolute, "not a time") from None
        if not 0 <= value < 1e11:
            raise BadInput(absolute, "not a time")
        return value
    text = first(params, relative).strip()
    if not text:
        return None
    try:
        return now - parse_duration(text)
    except ValueError as exc:
        raise BadInput(relative, str(exc)) from None


def describe(chosen: Selection) -> str:
    """The selection in one sentence, for a preview and the log."""
    parts = []
    if chosen.ids:
        parts.append(f"{len(chosen.ids)} selected letter(s)")
    else:
        parts.append("every dead letter")
    if chosen.reason:
        parts.append(f"with reason {chosen.reason}")
    if chosen.dialer:
        parts.append(f"of dialer {chosen.dialer}")
    if chosen.agent_user:
        parts.append(f"for agent {chosen.agent_user}")
    if chosen.phone_last4:
        parts.append(f"whose phone ends with {chosen.phone_last4}")
    if chosen.since is not None:
        parts.append(f"failed since {utc(chosen.since)}")
    if chosen.until is not None:
        parts.append(f"failed before {utc(chosen.until)}")
    text = " ".join(parts)
    return text[:1].upper() + text[1:] + "."
