"""The operator console: dead letters, the fleet and job lookup in a browser, at ``/ui/``.

Served by ``dispatcher serve`` beside the HTTP intake (mounted by
:func:`dispatcher.intake.app.create_app`): Starlette routes, Jinja2 templates,
plain HTML forms, its style and one small script inline, nothing fetched from
anywhere (it must work on a call center's closed network), no build step.

* :mod:`.app`: the route table (which room answers which path);
* :mod:`.gate`: login, CSRF, Origin and security headers, for every route;
* :mod:`.context`: what the rooms share (settings, stores, the page frame);
* the rooms: :mod:`.auth` (login, logout), :mod:`.overview`, :mod:`.dead_letters`
  (the list, one letter), :mod:`.actions` (replay, purge, reconcile),
  :mod:`.exports`, :mod:`.forget` (erasure requests), :mod:`.jobs` (job lookup);
* what they use: :mod:`.filters` (a page's filters as a Selection), :mod:`.forms`
  (a request's fields and cookies), :mod:`.formatting` (times, ages, rates),
  :mod:`.lookups` (whether reconciliation's look-ups work), :mod:`.chart` (the
  overview's last-hour chart, as inline SVG);
* :mod:`.sessions`: server-side sessions and login throttling in Redis;
  :mod:`.hashing`: the small pool password checks run on.

Users and roles live in :mod:`dispatcher.store.users` (``dispatcher users ...``).
"""

from dispatcher.intake.console.app import console_app
from dispatcher.intake.console.auth import SESSION_COOKIE

__all__ = ["SESSION_COOKIE", "console_app"]
